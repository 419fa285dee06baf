//! `stackdemo verify` against a running service: its report and its exit code.

use std::time::Duration;

use crate::helpers::{
    Backend, RedisServer, TestApp, allowed,
    limits::{self, PROCESS_START, for_visits},
    process,
};

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_against_a_healthy_service_and_reports_replicas() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let url = format!("{}/", app.client.base);

    let output = process::run_within(
        allowed(for_visits(200)),
        &[
            "verify",
            "--url",
            &url,
            "--requests",
            "200",
            "--concurrency",
            "8",
            "--json",
        ],
        &[],
    )
    .await;

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requests"], 200);
    assert_eq!(report["succeeded"], 200);
    assert_eq!(report["duplicate_counts"], 0);
    assert_eq!(report["per_replica"]["test-replica"], 200);
    assert_eq!(report["lowest_count"], 1);
    assert_eq!(report["highest_count"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_when_visits_fail() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    redis.kill().await;
    let url = format!("{}/", app.client.base);

    // Each refused visit takes at most the store timeout.
    let output = process::run_within(
        allowed(PROCESS_START + limits::deadlines(&[]).store * 20),
        &["verify", "--url", &url, "--requests", "20", "--json"],
        &[],
    )
    .await;

    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["failures"]["http 503"], 20);
}

#[tokio::test]
async fn verify_refuses_bad_arguments_with_exit_code_2() {
    for (args, said) in [
        (
            &["--url", "not a url"][..],
            "invalid --url: 'not a url' is not a URL",
        ),
        (
            &["--url", "ftp://localhost/"],
            "invalid --url: 'ftp://localhost/' is not an http URL",
        ),
        (
            &["--url", "https://localhost/"],
            "invalid --url: 'https://localhost/' is an https URL: verify speaks plain HTTP",
        ),
        (
            &["--url", "http://127.0.0.1:1/", "--duration", "0s"],
            "invalid --duration: '0s' must be longer than 0",
        ),
        (
            &["--url", "http://127.0.0.1:1/", "--timeout", "0"],
            "invalid --timeout: '0' must be longer than 0",
        ),
        (
            &["--url", "http://127.0.0.1:1/badge/a.svg?abbreviated=true"],
            "verify reads each visit's own number",
        ),
    ] {
        let output = process::run(&[&["verify"][..], args].concat(), &[]).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    let output = process::run(
        &[
            "verify",
            "--url",
            "http://127.0.0.1:1/",
            "--requests",
            "5",
            "--duration",
            "1s",
        ],
        &[],
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "--requests and --duration exclude each other"
    );
}

/// A server that answers every request with a body without end (chunked): `verify` and
/// `healthcheck` read at most a bounded answer, fail those requests, and stay small.
#[tokio::test(flavor = "multi_thread")]
async fn answers_without_end_are_cut_off_and_memory_stays_small() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let timeout = Duration::from_secs(2);
    let url = format!("http://{address}/");
    let mut peak_kib = 0;

    let mut verify = tokio::process::Command::new(process::binary())
        .args([
            "verify",
            "--url",
            &url,
            "--requests",
            "20",
            "--concurrency",
            "2",
        ])
        .args(["--timeout", "2s", "--json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = verify.id().unwrap();
    let limit = allowed(PROCESS_START + timeout * 10);
    let started = std::time::Instant::now();
    while verify.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < limit,
            "verify still runs after {limit:?}"
        );
        if let Some(kib) = peak_rss_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = verify.wait_with_output().await.unwrap();
    let health = process::run_within(
        allowed(PROCESS_START + timeout),
        &["healthcheck", "--listen", &address.to_string()],
        &[],
    )
    .await;
    server.abort();

    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["failures"]["answer too large"], 20, "{report}");
    assert!(peak_kib < 64 * 1024, "verify grew to {peak_kib} KiB");
    assert_eq!(
        health.status.code(),
        Some(1),
        "a /readyz answer without end is not the service's: {}",
        String::from_utf8_lossy(&health.stderr)
    );
}

/// A server that answers every request with `answer` and closes the connection.
fn answering(answer: String) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (address, server)
}

fn http_answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The healthcheck takes only the service's own readiness for ready: a 200 from
/// something else on the port, a body cut short, or a redirect is unhealthy; a 503 of a
/// service that was ready before is healthy (a store outage), one that never was is not.
#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_is_healthy_only_on_the_services_own_readiness() {
    let cut_short =
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"status\":\"ready\"}".to_owned();
    for (answer, healthy) in [
        (http_answer("200 OK", "", r#"{"status":"ready"}"#), true),
        (http_answer("200 OK", "", "hello"), false),
        (
            http_answer("200 OK", "", r#"{"status":"unavailable"}"#),
            false,
        ),
        (cut_short, false),
        (
            http_answer("302 Found", "Location: http://127.0.0.1:1/\r\n", ""),
            false,
        ),
        (
            http_answer(
                "503 Service Unavailable",
                "",
                r#"{"status":"unavailable","was_ready":true}"#,
            ),
            true,
        ),
        (
            http_answer(
                "503 Service Unavailable",
                "",
                r#"{"status":"unavailable","was_ready":false}"#,
            ),
            false,
        ),
    ] {
        let (address, server) = answering(answer.clone());
        let health = process::run_within(
            allowed(PROCESS_START + Duration::from_secs(2)),
            &["healthcheck", "--listen", &address.to_string()],
            &[],
        )
        .await;
        server.abort();
        assert_eq!(
            health.status.code(),
            Some(if healthy { 0 } else { 1 }),
            "{answer:?}: {}",
            String::from_utf8_lossy(&health.stderr)
        );
    }
    let output = process::run(&["healthcheck", "--timeout", "0s"], &[]).await;
    assert_eq!(output.status.code(), Some(2));
}

/// `verify` does not follow a redirect: it is an answer without a visit's number, and
/// followed it could count a visit on another service and pass.
#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_on_a_redirect_rather_than_follow_it() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let location = format!("Location: {}/\r\n", app.client.base);
    let (address, server) = answering(http_answer("302 Found", &location, ""));

    let output = process::run_within(
        allowed(for_visits(10)),
        &[
            "verify",
            "--url",
            &format!("http://{address}/"),
            "--requests",
            "10",
            "--json",
        ],
        &[],
    )
    .await;
    server.abort();

    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["succeeded"], 0, "{report}");
    assert_eq!(app.client.visit().await, 1, "no visit reached the service");
}

/// The peak resident memory of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
