//! The page in a real headless Chromium: the scripts run, the DOM shows the count, who
//! served it and the replicas at work, and a screenshot is taken.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use tokio::process::Command;

use crate::helpers::{RedisServer, TestApp, allowed, require_program};

/// How long Chromium may take to load, run and dump a page: it starts in about a second
/// and runs the page's scripts for up to its virtual time budget (3 s).
const CHROMIUM_RUN: Duration = Duration::from_secs(5);

/// Runs headless Chromium on `url` with the given extra flags (flags from
/// shared/ENVIRONMENT.md: without the background-networking ones it stalls here).
async fn headless(url: &str, extra: &[&str]) -> Output {
    let chromium: PathBuf = require_program("chromium", "CHROMIUM", "chromium").await;
    let profile = tempfile::tempdir().unwrap();
    let run = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(allowed(CHROMIUM_RUN), run)
        .await
        .expect("chromium ends within its bound")
        .expect("chromium runs")
}

fn screenshot_path() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    dir.join("page.png")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_the_count_the_replica_and_the_live_view() {
    let redis = RedisServer::start().await;
    let web1 = TestApp::spawn_on_redis(&redis.url(), &["--replica", "web.1<script>"]).await;
    // Names that are also names of every JavaScript object's own properties.
    let web2 = TestApp::spawn_on_redis(&redis.url(), &["--replica", "__proto__"]).await;
    let mut web3 = TestApp::spawn_on_redis(&redis.url(), &["--replica", "constructor"]).await;
    for _ in 0..3 {
        web1.client.visit().await;
    }
    web2.client.visit().await;
    web3.client.visit().await;
    // A replica that stopped stays in the totals but is shown as gone.
    web3.stop().await;
    let url = format!("{}/", web1.client.base);

    let dumped = headless(&url, &["--dump-dom"]).await;

    let dom = String::from_utf8_lossy(&dumped.stdout);
    let log = String::from_utf8_lossy(&dumped.stderr);
    assert!(dumped.status.success(), "chromium failed: {log}");
    assert!(
        dom.contains(r#"id="count">6</strong>"#),
        "the page counted visit 6:\n{dom}"
    );
    assert!(
        dom.contains(r#"id="served-by">web.1&lt;script&gt;</code>"#),
        "served-by, escaped:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-live="ok""#),
        "the live view loaded /api/stats:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-replica="__proto__""#),
        "the other replica is listed:\n{dom}"
    );
    assert!(
        dom.contains("6 visits in all; 2 of 3 replicas alive now."),
        "summary:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-replica="constructor""#)
            && dom.contains("1 visits (17%), v0.1.0, gone"),
        "the stopped replica is listed as gone:\n{dom}"
    );
    assert!(!log.contains("Uncaught"), "JavaScript errors:\n{log}");
    assert_eq!(
        web2.client.visit().await,
        7,
        "the live view's polling counted no visit"
    );

    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    let taken = headless(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
        ],
    )
    .await;
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let png = std::fs::read(screenshot_path()).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
}
