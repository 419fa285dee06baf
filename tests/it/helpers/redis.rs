//! A real redis-server (or valkey-server) on a free loopback port with its own folder,
//! stopped on drop.

use std::{path::PathBuf, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use redis::{AsyncConnectionConfig, Value};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::limits::{PROCESS_START, allowed};

pub struct RedisServer {
    pub port: u16,
    pub flavor: Flavor,
    dir: TempDir,
    password: Option<String>,
    extra: Vec<String>,
    child: Option<Child>,
}

/// Which server: Redis, or Valkey (its fork, which has WAITAOF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Redis,
    Valkey,
}

impl Flavor {
    pub async fn server(self) -> PathBuf {
        match self {
            Flavor::Redis => {
                super::require_program("redis-server", "REDIS_SERVER", "redis-server").await
            }
            Flavor::Valkey => {
                super::require_program(
                    "valkey-server",
                    "VALKEY_SERVER",
                    "-t bookworm-backports valkey-server",
                )
                .await
            }
        }
    }

    pub async fn sentinel(self) -> PathBuf {
        match self {
            Flavor::Redis => {
                super::require_program("redis-sentinel", "REDIS_SENTINEL", "redis-sentinel").await
            }
            Flavor::Valkey => {
                super::require_program(
                    "valkey-sentinel",
                    "VALKEY_SENTINEL",
                    "-t bookworm-backports valkey-sentinel",
                )
                .await
            }
        }
    }
}

/// How long one command to a test's server may take before the query fails: a local
/// server answers in well under a millisecond.
fn command_timeout() -> Duration {
    allowed(Duration::from_millis(500))
}

impl RedisServer {
    /// Starts redis-server with AOF on (fsync always) and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with_password(None).await
    }

    pub async fn start_with_password(password: Option<&str>) -> Self {
        Self::start_with(Flavor::Redis, password, &[]).await
    }

    /// Starts a server of `flavor` with more settings (`--replicaof host port`, …).
    pub async fn start_with(flavor: Flavor, password: Option<&str>, extra: &[&str]) -> Self {
        let mut server = Self {
            port: super::free_port(),
            flavor,
            dir: tempfile::tempdir().expect("a temporary folder"),
            password: password.map(str::to_owned),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        server.launch().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn launch(&mut self) {
        let mut command = Command::new(self.flavor.server().await);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg("always")
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        self.child = Some(command.spawn().expect("redis-server starts"));
        let server = &*self;
        super::wait_until("redis-server to answer", allowed(PROCESS_START), || async {
            server.query(&["PING"]).await.is_ok()
        })
        .await;
    }

    /// Sends one command on a fresh connection and returns the reply.
    pub async fn query(&self, args: &[&str]) -> redis::RedisResult<Value> {
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        self.query_bytes(&args).await
    }

    /// `query` with arguments that need not be text (a DUMP to RESTORE).
    pub async fn query_bytes(&self, args: &[&[u8]]) -> redis::RedisResult<Value> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.url())?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        query_at(info, args).await
    }

    /// The keys matching `pattern` (`KEYS`).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let value = self.query(&["KEYS", pattern]).await.expect("KEYS answers");
        redis::from_redis_value(value).expect("KEYS answers names")
    }

    /// The integer under `key`, 0 when missing.
    pub async fn get_i64(&self, key: &str) -> i64 {
        match self.query(&["GET", key]).await.expect("GET answers") {
            Value::Nil => 0,
            value => redis::from_redis_value::<i64>(value).expect("an integer"),
        }
    }

    /// Sets a key, as a deployment of the original app would have left it.
    pub async fn set(&self, key: &str, value: &str) {
        self.query(&["SET", key, value]).await.expect("SET answers");
    }

    /// The server's `INFO replication` field `name`.
    pub async fn replication(&self, name: &str) -> Option<String> {
        self.info("replication", name).await
    }

    /// One field of a section of `INFO`, if the server answers.
    pub async fn info(&self, section: &str, name: &str) -> Option<String> {
        let value = self.query(&["INFO", section]).await.ok()?;
        let info: String = redis::from_redis_value(value).ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(|value| value.trim().to_owned())
    }

    /// Stops the server with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused server run again (SIGCONT); it then executes what it received.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is running");
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).expect("the signal is sent");
    }

    /// Starts the server again on the same port and folder (AOF replays the data).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }

    /// Starts the server again after `kill`.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.launch().await;
    }

    /// Starts the server again after `kill`, as a replica of the server on `primary` that
    /// no failover may promote (`replica-priority 0`), as deploy/redis-node.sh starts a
    /// node that comes back: its data is old until it has copied the primary.
    pub async fn start_again_replicating(&mut self, primary: u16) {
        for setting in ["--replicaof", "--replica-priority"] {
            if let Some(at) = self.extra.iter().position(|arg| arg == setting) {
                let values = if setting == "--replicaof" { 3 } else { 2 };
                self.extra.drain(at..at + values);
            }
        }
        self.extra.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
            "--replica-priority".into(),
            "0".into(),
        ]);
        self.start_again().await;
    }

    /// Lets failovers promote the server again (the default `replica-priority`), now and
    /// after a restart.
    pub async fn make_promotable(&mut self) {
        if let Some(at) = self
            .extra
            .iter()
            .position(|arg| arg == "--replica-priority")
        {
            self.extra.drain(at..at + 2);
        }
        self.query(&["CONFIG", "SET", "replica-priority", "100"])
            .await
            .expect("the priority is set");
    }
}

/// Sends one command to the server at `info` on a connection of its own.
pub async fn query_at(info: redis::ConnectionInfo, args: &[&[u8]]) -> redis::RedisResult<Value> {
    let client = redis::Client::open(info)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(command_timeout()))
        .set_response_timeout(Some(command_timeout()));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut command = redis::cmd(std::str::from_utf8(args[0]).expect("a command name"));
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query_async(&mut connection).await
}
