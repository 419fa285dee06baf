//! Bad configuration stops start-up with exit code 2 and a message naming the setting.

use crate::helpers::process::run;

fn assert_refused(args: &[&str], env: &[(&str, &str)], setting: &str) {
    let output = run(args, env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(
        stderr.contains(setting),
        "the message should name {setting}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_invalid_listen_address_is_refused() {
    assert_refused(&["--listen", "not-an-address"], &[], "--listen");
}

#[test]
fn an_invalid_listen_address_from_the_environment_is_refused() {
    assert_refused(&[], &[("STACKDEMO_LISTEN", "localhost:port")], "--listen");
}

#[test]
fn an_invalid_redis_url_is_refused() {
    assert_refused(&["--redis-url", "http://example"], &[], "--redis-url");
}

#[test]
fn an_unreadable_password_file_is_refused() {
    assert_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-password-file",
            "/nonexistent/secret",
        ],
        &[],
        "REDIS_PASSWORD_FILE",
    );
}

#[test]
fn a_store_timeout_longer_than_the_request_timeout_is_refused() {
    assert_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--store-timeout",
            "5s",
            "--request-timeout",
            "2s",
        ],
        &[],
        "STACKDEMO_STORE_TIMEOUT",
    );
}

#[test]
fn an_invalid_duration_is_refused() {
    assert_refused(
        &[],
        &[("STACKDEMO_SHUTDOWN_TIMEOUT", "soon")],
        "--shutdown-timeout",
    );
}

#[test]
fn an_unusable_data_dir_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let inside_a_file = file.path().join("data");
    assert_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            inside_a_file.to_str().unwrap(),
        ],
        &[],
        "STACKDEMO_DATA_DIR",
    );
}

#[test]
fn zero_workers_are_refused() {
    assert_refused(&["--workers", "0"], &[], "--workers");
}

#[test]
fn a_worker_count_that_is_not_a_number_is_refused() {
    assert_refused(&[], &[("STACKDEMO_WORKERS", "many")], "--workers");
}
