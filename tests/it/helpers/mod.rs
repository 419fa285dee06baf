//! What the integration tests share: real redis-server and sentinel processes, the
//! service in-process on port 0 or as the built binary, clients whose calls assert their
//! status, the one checker of the counting promise, and the time limits of every wait.
//!
//! Nothing here blocks a test's async runtime: processes are Tokio children, Redis is
//! asked through async connections, and waits sleep on Tokio's timer.

pub mod admin;
pub mod app;
pub mod checker;
pub mod client;
pub mod disk;
pub mod hang_up;
pub mod limits;
pub mod process;
pub mod redis;
pub mod sentinel;

use std::time::{Duration, Instant};

pub use self::{
    app::{Backend, TestApp},
    checker::Load,
    client::TestClient,
    limits::allowed,
    process::ServiceProcess,
    redis::RedisServer,
};

/// How often a wait checks its condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits until `condition` holds, checking every 20 ms; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_or_explain(what, limit, condition, || async { String::new() }).await;
}

/// `wait_until`, with `explain` saying, when the limit passes, what the test saw.
pub async fn wait_or_explain<F, Fut, E, EFut>(
    what: &str,
    limit: Duration,
    mut condition: F,
    explain: E,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
    E: FnOnce() -> EFut,
    EFut: std::future::Future<Output = String>,
{
    let start = Instant::now();
    while !condition().await {
        if start.elapsed() >= limit {
            let seen = explain().await;
            panic!("timed out after {limit:?} waiting for {what}\n{seen}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The path of a program the tests need: `$env_var` if set, else `name` on the PATH.
/// Panics with how to install it when it does not run, so that a missing part fails the
/// test rather than skipping it.
pub async fn require_program(name: &str, env_var: &str, package: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env_var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| name.into());
    // `--version`, or `-V` for the tools that spell it so (e2fsprogs).
    let mut runs = false;
    for flag in ["--version", "-V"] {
        runs |= tokio::process::Command::new(&path)
            .arg(flag)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .is_ok_and(|status| status.success());
    }
    assert!(
        runs,
        "{name} is needed by these tests and was not found. Install it with \
         `apt-get install -y {package}` (or set {env_var} to its path)."
    );
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
