//! `stackdemo verify` against a running service: its report and its exit code.

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
    let output = process::run(&["verify", "--url", "not a url"], &[]).await;
    assert_eq!(output.status.code(), Some(2));
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
