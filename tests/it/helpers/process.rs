//! The built `stackdemo` binary as a child process, for what only a real process shows:
//! signals, exit codes, `kill -9`.

use std::{
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use super::{TestClient, free_port, wait_until};

pub const BINARY: &str = env!("CARGO_BIN_EXE_stackdemo");

pub struct ServiceProcess {
    pub port: u16,
    pub client: TestClient,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `stackdemo serve` on a free port with the given settings and waits until
    /// it answers `/healthz`.
    pub async fn start(args: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BINARY)
            .args([
                "--listen",
                &listen,
                "--log-format",
                "json",
                "--replica",
                "process",
            ])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let client = TestClient::new(listen.parse().expect("an address"));
        let process = Self {
            port,
            client,
            child: Some(child),
        };
        let probe = process.client.clone();
        wait_until(
            "the service to answer /healthz",
            Duration::from_secs(10),
            || {
                let probe = probe.clone();
                async move { reqwest_ok(&probe, "/healthz").await }
            },
        )
        .await;
        process
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the service did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn reqwest_ok(client: &TestClient, path: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{}{path}", client.base))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Runs the binary to completion with arguments and extra environment.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BINARY)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}
