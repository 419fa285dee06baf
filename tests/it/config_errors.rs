//! Bad configuration stops start-up with exit code 2 and a message naming the setting as
//! the user gave it: the flag on the command line, the variable in the environment. A
//! password never shows, whether in help, in errors or in logs.

use crate::helpers::{RedisServer, free_port, process::run, redis::Flavor};

const SECRET: &str = "s3cret-Pa55";

async fn assert_refused(args: &[&str], env: &[(&str, &str)], setting: &str) -> String {
    let output = run(args, env).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(
        stderr.contains(setting),
        "the message should name {setting}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(SECRET), "a password was printed: {stderr}");
    stderr
}

#[tokio::test]
async fn a_bad_value_names_the_flag_when_given_as_a_flag() {
    assert_refused(&["--listen", "not-an-address"], &[], "--listen").await;
    assert_refused(&["serve", "--workers", "0"], &[], "--workers").await;
}

/// Every setting given a bad value in the environment: the message names the variable.
#[tokio::test]
async fn a_bad_value_from_the_environment_names_the_variable() {
    let cases = [
        ("STACKDEMO_LISTEN", "localhost:port"),
        ("STACKDEMO_WORKERS", "many"),
        ("STACKDEMO_MAX_CONNECTIONS", "0"),
        ("STACKDEMO_SHUTDOWN_TIMEOUT", "soon"),
        ("STACKDEMO_HEADER_READ_TIMEOUT", "-1s"),
        ("STACKDEMO_REQUEST_TIMEOUT", "5 parsecs"),
        ("STACKDEMO_STORE_TIMEOUT", "x"),
        // Long enough for a deadline past it to overflow a point in time.
        ("STACKDEMO_STORE_TIMEOUT", "18446744073709551615"),
        ("STACKDEMO_REQUEST_TIMEOUT", "9223372036854775807"),
        ("STACKDEMO_HEADER_READ_TIMEOUT", "300000000000y"),
        ("STACKDEMO_SEND_TIMEOUT", "18446744073709551615"),
        ("STACKDEMO_RATE_LIMIT", "60/1m/2"),
        ("STACKDEMO_LOG_FORMAT", "xml"),
        ("STACKDEMO_REPLICA", ""),
        ("STACKDEMO_COUNTER_KEY", "has space"),
        // A Redis-style key: the tutorial's counter is read, set and exported by its
        // name, and an export holding it could not be imported.
        ("STACKDEMO_COUNTER_KEY", "app:hits"),
        ("STACKDEMO_REDIS_MIN_REPLICAS", "17"),
        ("REDIS_SENTINELS", "s1:notaport"),
        ("REDIS_URL", "http://example"),
        ("RUST_LOG", "stackdemo=loud"),
        ("RUST_LOG", "warn,,=x"),
    ];
    for (variable, value) in cases {
        let stderr = assert_refused(&[], &[(variable, value)], variable).await;
        assert!(!stderr.contains("--"), "{variable}: names a flag: {stderr}");
    }
}

/// A variable whose value is not UTF-8 text is named, as any other bad value is.
#[tokio::test]
async fn a_variable_that_is_not_utf8_text_is_named() {
    use std::os::unix::ffi::OsStringExt;

    for variable in ["STACKDEMO_MAX_COUNTERS", "REDIS_URL", "STACKDEMO_REPLICA"] {
        let output = tokio::process::Command::new(crate::helpers::process::binary())
            .env(variable, std::ffi::OsString::from_vec(vec![0xff, 0xfe]))
            .env("STACKDEMO_LISTEN", "127.0.0.1:0")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(
            crate::helpers::allowed(crate::helpers::limits::PROCESS_START),
            output,
        )
        .await
        .expect("refused at once")
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variable}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {variable}: not UTF-8 text")),
            "{variable}: {stderr}"
        );
    }
}

#[tokio::test]
async fn settings_that_would_break_the_service_are_refused() {
    let listen = ("STACKDEMO_LISTEN", "127.0.0.1:0");
    assert_refused(
        &[],
        &[listen, ("STACKDEMO_STORE_TIMEOUT", "0")],
        "STACKDEMO_STORE_TIMEOUT",
    )
    .await;
    assert_refused(
        &[],
        &[listen, ("STACKDEMO_STORE_TIMEOUT", "2ms")],
        "STACKDEMO_STORE_TIMEOUT",
    )
    .await;
    assert_refused(
        &[],
        &[listen, ("STACKDEMO_HEADER_READ_TIMEOUT", "0")],
        "STACKDEMO_HEADER_READ_TIMEOUT",
    )
    .await;
    assert_refused(
        &[],
        &[listen, ("STACKDEMO_SHUTDOWN_TIMEOUT", "0s")],
        "STACKDEMO_SHUTDOWN_TIMEOUT",
    )
    .await;
    let stderr = assert_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--store-timeout",
            "5s",
            "--request-timeout",
            "2s",
        ],
        &[],
        "--store-timeout",
    )
    .await;
    assert!(stderr.contains("--request-timeout"), "{stderr}");
}

#[tokio::test]
async fn a_listen_address_that_cannot_be_used_is_refused_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let stderr = assert_refused(&[], &[("STACKDEMO_LISTEN", &in_use)], "STACKDEMO_LISTEN").await;
    assert!(stderr.contains("in use"), "{stderr}");

    // 192.0.2.0/24 is reserved for documentation: never an address of this host.
    let stderr = assert_refused(&["--listen", "192.0.2.1:8000"], &[], "--listen").await;
    assert!(stderr.contains("not an address of this host"), "{stderr}");
}

#[tokio::test]
async fn a_redis_url_with_a_password_never_shows_it() {
    let url = format!("redis://:{SECRET}@redis:6379/0");
    let help = run(&["serve", "--help"], &[("REDIS_URL", &url)]).await;
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("REDIS_URL"), "{text}");
    assert!(!text.contains(SECRET), "help shows the password: {text}");

    let bad = format!("redis://:{SECRET}@redis:notaport/0");
    assert_refused(&[], &[("REDIS_URL", &bad)], "REDIS_URL").await;
    assert_refused(&["--redis-url", &bad], &[], "--redis-url").await;
}

#[tokio::test]
async fn tls_urls_are_refused_saying_tls_is_not_supported() {
    let stderr = assert_refused(
        &[],
        &[("REDIS_URL", &format!("rediss://:{SECRET}@redis:6379"))],
        "REDIS_URL",
    )
    .await;
    assert!(stderr.contains("TLS"), "{stderr}");
}

#[tokio::test]
async fn an_unreadable_password_file_is_refused() {
    assert_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ],
        &[("REDIS_PASSWORD_FILE", "/nonexistent/secret")],
        "REDIS_PASSWORD_FILE",
    )
    .await;
}

/// Files that cannot hold a secret are refused at once: a named pipe (opening it would
/// wait for a writer, and start-up with it), a folder; and an administrator's token that
/// no request could send (blank, a line break or another control character inside, a
/// space at either end).
#[tokio::test]
async fn secret_files_that_cannot_be_used_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    let folder = dir.path().to_str().unwrap();
    let listen = ("STACKDEMO_LISTEN", "127.0.0.1:0");
    let redis = ("REDIS_URL", "redis://127.0.0.1:1");
    for path in [fifo, folder] {
        for (variable, with) in [
            ("STACKDEMO_ADMIN_TOKEN_FILE", None),
            ("REDIS_PASSWORD_FILE", Some(redis)),
        ] {
            let mut env = vec![listen, (variable, path)];
            env.extend(with);
            let stderr = assert_refused(&[], &env, variable).await;
            assert!(
                stderr.contains("is not a file"),
                "{variable}={path}: {stderr}"
            );
        }
    }
    for token in [
        " ".repeat(20),
        "an-administrator\ntoken".to_owned(),
        "an-administrator\0token".to_owned(),
        "an-administrator\ttoken".to_owned(),
        " an-administrator-token".to_owned(),
        "an-administrator-token ".to_owned(),
    ] {
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let stderr = assert_refused(
            &[],
            &[
                listen,
                ("STACKDEMO_ADMIN_TOKEN_FILE", file.to_str().unwrap()),
            ],
            "STACKDEMO_ADMIN_TOKEN_FILE",
        )
        .await;
        assert!(
            stderr.contains("no request can send"),
            "{token:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn redis_settings_without_redis_are_refused() {
    let listen = ("STACKDEMO_LISTEN", "127.0.0.1:0");
    assert_refused(
        &[],
        &[listen, ("REDIS_PASSWORD_FILE", "/etc/hostname")],
        "REDIS_PASSWORD_FILE",
    )
    .await;
    assert_refused(
        &[],
        &[listen, ("STACKDEMO_REDIS_MIN_REPLICAS", "1")],
        "STACKDEMO_REDIS_MIN_REPLICAS",
    )
    .await;
    assert_refused(
        &[],
        &[
            listen,
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("REDIS_SENTINEL_PASSWORD_FILE", "/etc/hostname"),
        ],
        "REDIS_SENTINEL_PASSWORD_FILE",
    )
    .await;
}

#[tokio::test]
async fn an_unusable_data_dir_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let inside_a_file = file.path().join("data");
    assert_refused(
        &[],
        &[
            ("STACKDEMO_LISTEN", "127.0.0.1:0"),
            ("STACKDEMO_DATA_DIR", inside_a_file.to_str().unwrap()),
        ],
        "STACKDEMO_DATA_DIR",
    )
    .await;
    let stderr = assert_refused(
        &[],
        &[
            ("STACKDEMO_LISTEN", "127.0.0.1:0"),
            ("STACKDEMO_DATA_DIR", file.path().to_str().unwrap()),
        ],
        "STACKDEMO_DATA_DIR",
    )
    .await;
    assert!(stderr.contains("is not a folder"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("data");
    std::os::unix::fs::symlink(dir.path().join("gone"), &link).unwrap();
    let stderr = assert_refused(
        &[],
        &[
            ("STACKDEMO_LISTEN", "127.0.0.1:0"),
            ("STACKDEMO_DATA_DIR", link.to_str().unwrap()),
        ],
        "STACKDEMO_DATA_DIR",
    )
    .await;
    assert!(
        stderr.contains("is a symbolic link to") && stderr.contains("which does not exist"),
        "{stderr}"
    );
}

/// A client subcommand takes only its own settings: a server setting in the environment
/// (bad, or holding a password) does not touch it.
#[tokio::test]
async fn verify_ignores_the_servers_environment() {
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}/");
    let output = run(
        &["verify", "--url", &url, "--requests", "1", "--json"],
        &[
            ("STACKDEMO_LISTEN", "garbage"),
            ("STACKDEMO_STORE_TIMEOUT", "0"),
        ],
    )
    .await;
    // Nothing listens there: the visit fails (exit 1), but the settings were not refused.
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let help = run(&["verify", "--help"], &[]).await;
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        !text.contains("--listen") && !text.contains("REDIS"),
        "{text}"
    );
}

/// Waiting for append-only files (`--redis-wait-aof`) on a server without `WAITAOF`
/// (Redis before 7.2, or the command renamed away, as here on Valkey, whatever the
/// installed Redis's version):
/// refused at start with exit 2, naming the setting as given and the server's version, and
/// nothing written to the server.
#[tokio::test]
async fn waiting_for_append_only_files_on_a_server_without_waitaof_is_refused_at_start() {
    let redis =
        RedisServer::start_with(Flavor::Valkey, None, &["--rename-command", "WAITAOF", ""]).await;
    let url = redis.url();
    let stderr = assert_refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &url,
            "--redis-wait-aof",
        ],
        &[],
        "--redis-wait-aof",
    )
    .await;
    assert!(
        stderr.contains("(version "),
        "the server's version: {stderr}"
    );
    assert!(stderr.contains("WAITAOF"), "{stderr}");
    let stderr = assert_refused(
        &[],
        &[
            ("STACKDEMO_LISTEN", "127.0.0.1:0"),
            ("REDIS_URL", &url),
            ("STACKDEMO_REDIS_WAIT_AOF", "true"),
        ],
        "STACKDEMO_REDIS_WAIT_AOF",
    )
    .await;
    assert!(!stderr.contains("--"), "names a flag: {stderr}");
    let keys = redis.query(&["DBSIZE"]).await.unwrap();
    assert_eq!(
        keys,
        redis::Value::Int(0),
        "nothing is written to the server"
    );
}

/// A database number the server has not (it has 16 unless configured otherwise): refused
/// at start with exit 2, naming the setting, in words and not in the client library's.
#[tokio::test]
async fn a_database_the_server_lacks_is_refused_at_start() {
    let redis = RedisServer::start().await;
    let url = format!("redis://127.0.0.1:{}/20", redis.port);
    let stderr = assert_refused(
        &[],
        &[("STACKDEMO_LISTEN", "127.0.0.1:0"), ("REDIS_URL", &url)],
        "REDIS_URL",
    )
    .await;
    assert!(stderr.contains("no database of the number"), "{stderr}");
    assert!(!stderr.contains("ResponseError"), "{stderr}");
}
