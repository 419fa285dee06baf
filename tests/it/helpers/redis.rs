//! A real redis-server (or valkey-server) on a free loopback port with its own folder,
//! stopped on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tempfile::TempDir;

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
    pub fn server(self) -> PathBuf {
        match self {
            Flavor::Redis => super::require_program("redis-server", "REDIS_SERVER", "redis-server"),
            Flavor::Valkey => super::require_program(
                "valkey-server",
                "VALKEY_SERVER",
                "-t bookworm-backports valkey-server",
            ),
        }
    }

    pub fn sentinel(self) -> PathBuf {
        match self {
            Flavor::Redis => {
                super::require_program("redis-sentinel", "REDIS_SENTINEL", "redis-sentinel")
            }
            Flavor::Valkey => super::require_program(
                "valkey-sentinel",
                "VALKEY_SENTINEL",
                "-t bookworm-backports valkey-sentinel",
            ),
        }
    }
}

impl RedisServer {
    /// Starts redis-server with AOF on (fsync always) and waits until it answers.
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> Self {
        Self::start_with(Flavor::Redis, password, &[])
    }

    /// Starts a server of `flavor` with more settings (`--replicaof host port`, …).
    pub fn start_with(flavor: Flavor, password: Option<&str>, extra: &[&str]) -> Self {
        let mut server = Self {
            port: super::free_port(),
            flavor,
            dir: tempfile::tempdir().expect("a temporary folder"),
            password: password.map(str::to_owned),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn launch(&mut self) {
        let mut command = Command::new(self.flavor.server());
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
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        self.child = Some(command.spawn().expect("redis-server starts"));
        let start = Instant::now();
        while self.query(&["PING"]).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends one command on a fresh connection and returns the reply.
    pub fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        self.query_bytes(&args)
    }

    /// `query` with arguments that need not be text (a DUMP to RESTORE).
    pub fn query_bytes(&self, args: &[&[u8]]) -> redis::RedisResult<redis::Value> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.url())?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let mut command = redis::cmd(std::str::from_utf8(args[0]).expect("a command name"));
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    /// The integer under `key`, 0 when missing.
    pub fn get_i64(&self, key: &str) -> i64 {
        match self.query(&["GET", key]).expect("GET answers") {
            redis::Value::Nil => 0,
            value => redis::from_redis_value::<i64>(value).expect("an integer"),
        }
    }

    /// Sets a key, as a deployment of the original app would have left it.
    pub fn set(&self, key: &str, value: &str) {
        self.query(&["SET", key, value]).expect("SET answers");
    }

    /// The server's `INFO replication` field `name`.
    pub fn replication(&self, name: &str) -> Option<String> {
        self.info("replication", name)
    }

    /// One field of a section of `INFO`, if the server answers.
    pub fn info(&self, section: &str, name: &str) -> Option<String> {
        let info: String = redis::from_redis_value(self.query(&["INFO", section]).ok()?).ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(|value| value.trim().to_owned())
    }

    /// Stops the server with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
        let pid = self.child.as_ref().expect("redis-server is running").id();
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).expect("the signal is sent");
    }

    /// Starts the server again on the same port and folder (AOF replays the data).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Starts the server again after `kill`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
