//! What the integration tests share: a real redis-server per test, the service in-process
//! on port 0 or as the built binary, and an HTTP client whose calls assert their status.

pub mod app;
pub mod client;
pub mod process;
pub mod redis;

use std::time::{Duration, Instant};

pub use self::{
    app::{Backend, TestApp},
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

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
