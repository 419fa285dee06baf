//! The built `stackdemo` binary as a child process, for what only a real process shows:
//! signals, exit codes, `kill -9`, memory.

use std::{
    process::{ExitStatus, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::process::{Child, Command};

use super::{
    TestClient, free_port,
    limits::{PROCESS_START, allowed},
};

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
    /// The embedded store's folder unless the settings name one: never the repository's
    /// `data`, which every test started without a data dir would share.
    data: Arc<tempfile::TempDir>,
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
            let _ = child.kill().await;
        }
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match Self::launch_on(self.port, &args, &env, self.data.clone()).await {
            Ok(started) => *self = started,
            Err(output) => panic!(
                "the service did not start again: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    async fn launch(args: &[&str], env: &[(&str, &str)]) -> Result<Self, Output> {
        let data = Arc::new(tempfile::tempdir().expect("a data folder"));
        Self::launch_on(free_port(), args, env, data).await
    }

    async fn launch_on(
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
        data: Arc<tempfile::TempDir>,
    ) -> Result<Self, Output> {
        let listen = format!("127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().expect("a log file");
        // Named `process` unless the test names it.
        let replica = if args.contains(&"--replica") {
            &[][..]
        } else {
            &["--replica", "process"][..]
        };
        let child = Command::new(binary())
            .args(["--listen", &listen, "--log-format", "json"])
            .args(replica)
            .args(args)
            .env("RUST_LOG", "warn")
            .env("STACKDEMO_DATA_DIR", data.path())
            .envs(env.iter().copied())
            .stdout(log.reopen().expect("the log file"))
            .stderr(Stdio::piped())
            .kill_on_drop(true)
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
            data,
        };
        // Its own client, so that no probe connection stays open and takes a slot.
        let probe = TestClient::without_keep_alive(process.client.base.clone());
        let started = Instant::now();
        let limit = allowed(PROCESS_START);
        loop {
            if probe.answers_ok("/healthz").await {
                return Ok(process);
            }
            if !process.running() {
                let child = process.child.take().expect("a child");
                return Err(child.wait_with_output().await.expect("the output"));
            }
            assert!(
                started.elapsed() < limit,
                "the service did not answer /healthz within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(Child::id).expect("running") as i32
    }

    /// Sends a signal to the service.
    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.pid()), signal).expect("the signal is sent");
    }

    /// Sets the soft limit of `resource` (a `prlimit` option: `fsize`, `nofile`) of the
    /// running service, `unlimited` lifting it again: the hard limit stays as it is, so
    /// that no privilege is needed, to lower it or to raise it back.
    pub fn set_soft_limit(&self, resource: &str, soft: &str) {
        let option = format!("--{resource}={soft}:");
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &self.pid().to_string(), &option])
            .status()
            .expect("prlimit runs (util-linux: apt-get install util-linux)");
        assert!(status.success(), "prlimit {option}: {status}");
    }

    /// What the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Whether the service's log has no panic in it.
    pub fn logged_no_panic(&self) -> bool {
        !self.log().contains("panicked")
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
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .unwrap_or_else(|_| panic!("the service did not exit within {limit:?}"))
            .expect("wait");
        self.child = None;
        status
    }
}

/// Runs the binary to completion with arguments and extra environment (and no
/// `REDIS_URL` but what `env` gives). One still running after `limit` (a command expected
/// to exit that serves instead) is killed, and the test fails.
pub async fn run_within(limit: Duration, args: &[&str], env: &[(&str, &str)]) -> Output {
    // Not the repository's `data` (see `ServiceProcess`).
    let data = tempfile::tempdir().expect("a data folder");
    let child = Command::new(binary())
        .args(args)
        .env_remove("REDIS_URL")
        .env("STACKDEMO_DATA_DIR", data.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary runs");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.expect("the output"),
        Err(_) => panic!(
            "`stackdemo {}` was still running after {limit:?}",
            args.join(" ")
        ),
    }
}

/// `run_within` for a command that needs nothing but its own start: refusing settings,
/// printing help, checking health.
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_within(allowed(PROCESS_START), args, env).await
}
