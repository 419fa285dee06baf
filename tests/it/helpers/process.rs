//! The built `stackdemo` binary as a child process, for what only a real process shows:
//! signals, exit codes, `kill -9`, memory.

use std::{
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use super::{TestClient, free_port};

/// The binary under test: this build's, or another given in `STACKDEMO_BIN` (to run the
/// process tests against an earlier build, say).
pub fn binary() -> std::ffi::OsString {
    std::env::var_os("STACKDEMO_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_stackdemo").into())
}

pub struct ServiceProcess {
    pub port: u16,
    pub client: TestClient,
    child: Option<Child>,
    /// What the service logged (its standard output).
    log: tempfile::NamedTempFile,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl ServiceProcess {
    /// Starts `stackdemo serve` on a free port with the given settings and waits until
    /// it answers `/healthz`.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        match Self::launch(args, env).await {
            Ok(process) => process,
            Err(output) => panic!(
                "the service exited: {:?} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// Starts the service like `start`; if it exits instead, returns what it printed.
    pub async fn try_start(args: &[&str]) -> Result<Self, Output> {
        Self::launch(args, &[]).await
    }

    /// Kills the service (if it runs) and starts it again with the same settings on the
    /// same port.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match Self::launch_on(self.port, &args, &env).await {
            Ok(started) => *self = started,
            Err(output) => panic!(
                "the service did not start again: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    async fn launch(args: &[&str], env: &[(&str, &str)]) -> Result<Self, Output> {
        Self::launch_on(free_port(), args, env).await
    }

    async fn launch_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> Result<Self, Output> {
        let listen = format!("127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = Command::new(binary())
            .args([
                "--listen",
                &listen,
                "--log-format",
                "json",
                "--replica",
                "process",
            ])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(log.reopen().expect("the log file"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let client = TestClient::new(listen.parse().expect("an address"));
        let mut process = Self {
            port,
            client,
            child: Some(child),
            log,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let probe = process.client.clone();
        let started = Instant::now();
        loop {
            if probe.answers_ok("/healthz").await {
                return Ok(process);
            }
            if !process.running() {
                let child = process.child.take().expect("a child");
                return Err(child.wait_with_output().expect("the output"));
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the service did not answer /healthz within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal to the service.
    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.pid()), signal).expect("the signal is sent");
    }

    /// What the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Whether the service's log has no panic in it.
    pub fn logged_no_panic(&self) -> bool {
        let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        !log.contains("panicked")
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is running");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("try_wait").is_none())
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

/// Runs the binary to completion with arguments and extra environment (and no
/// `REDIS_URL` but what `env` gives). One still running after 20 s (a command expected to
/// exit that serves instead) is killed, and the test fails.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let output = child.wait_with_output().expect("the output");
            panic!(
                "`stackdemo {}` was still running after 20 s: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("the output")
}
