//! What the integration tests share: a real redis-server per test, the service in-process
//! on port 0 or as the built binary, and an HTTP client whose calls assert their status.

pub mod app;
pub mod checker;
pub mod client;
pub mod disk;
pub mod process;
pub mod redis;
pub mod sentinel;

use std::time::{Duration, Instant};

pub use self::{
    app::{Backend, TestApp},
    checker::Load,
    client::TestClient,
    process::ServiceProcess,
    redis::RedisServer,
};

/// Waits until `condition` holds, checking every 20 ms; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The path of a program the tests need: `$env_var` if set, else `name` on the PATH.
/// Panics with how to install it when it does not run, so that a missing part fails the
/// test rather than skipping it.
pub fn require_program(name: &str, env_var: &str, package: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env_var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| name.into());
    let runs = std::process::Command::new(&path)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
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
