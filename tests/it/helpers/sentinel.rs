//! A Redis group on loopback as Sentinel runs one: a primary, two replicas and three
//! sentinels, each a real process with its own port and folder, with short failure
//! detection so that failovers happen within seconds.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use super::{RedisServer, free_port, redis::Flavor};

pub const MASTER_NAME: &str = "mymaster";

/// How long sentinels wait before calling an unanswering primary down.
pub const DOWN_AFTER: Duration = Duration::from_millis(500);

pub struct RedisGroup {
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
}

pub struct SentinelProcess {
    pub port: u16,
    flavor: Flavor,
    dir: TempDir,
    child: Option<Child>,
}

/// Settings every data node gets: a primary refuses writes unless one replica is
/// connected and current (so an isolated old primary stops taking writes), and AOF with
/// fsync on every write.
const NODE_SETTINGS: [&str; 4] = [
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "2",
];

impl RedisGroup {
    /// Starts the group and waits until the primary has both replicas and every sentinel
    /// knows the others and the replicas.
    pub fn start(flavor: Flavor) -> Self {
        let primary = RedisServer::start_with(flavor, None, &NODE_SETTINGS);
        let primary_port = primary.port.to_string();
        let mut replica_settings = NODE_SETTINGS.to_vec();
        replica_settings.extend(["--replicaof", "127.0.0.1", &primary_port]);
        let replicas = [
            RedisServer::start_with(flavor, None, &replica_settings),
            RedisServer::start_with(flavor, None, &replica_settings),
        ];
        let mut nodes = vec![primary];
        nodes.extend(replicas);
        wait("both replicas in sync", Duration::from_secs(10), || {
            nodes[1..]
                .iter()
                .all(|n| n.replication("master_link_status").as_deref() == Some("up"))
        });
        let sentinels = (0..3)
            .map(|_| SentinelProcess::start(flavor, nodes[0].port))
            .collect();
        let group = Self { nodes, sentinels };
        wait(
            "sentinels to know each other and the replicas",
            Duration::from_secs(15),
            || {
                group.sentinels.iter().all(|sentinel| {
                    let master = sentinel.master();
                    master.get("num-other-sentinels").map(String::as_str) == Some("2")
                        && master.get("num-slaves").map(String::as_str) == Some("2")
                })
            },
        );
        group
    }

    /// `host:port,…` of the sentinels, for `--redis-sentinels`.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Which node the sentinels name as primary, by a majority of those that answer.
    pub fn primary(&self) -> Option<usize> {
        let mut votes = vec![0; self.nodes.len()];
        for sentinel in &self.sentinels {
            if let Some(port) = sentinel.primary_port()
                && let Some(index) = self.nodes.iter().position(|n| n.port == port)
            {
                votes[index] += 1;
            }
        }
        let (index, count) = votes.iter().enumerate().max_by_key(|(_, c)| **c)?;
        (*count >= 2).then_some(index)
    }

    /// Waits until the sentinels name a primary other than `old`, and it takes writes.
    pub fn wait_for_failover(&self, old: usize, limit: Duration) -> usize {
        let mut new = None;
        wait("a new primary", limit, || {
            new = self.primary().filter(|&p| p != old);
            new.is_some_and(|p| self.nodes[p].replication("role").as_deref() == Some("master"))
        });
        new.expect("a new primary")
    }

    /// Each server's replication and append-only-file state, for failure messages.
    pub fn state(&self) -> String {
        self.nodes
            .iter()
            .map(|node| {
                let field = |section, name| node.info(section, name).unwrap_or_else(|| "-".into());
                format!(
                    "port {}: role {}, link {}, aof rewrite {} (scheduled {}), last fsync status {}",
                    node.port,
                    field("replication", "role"),
                    field("replication", "master_link_status"),
                    field("persistence", "aof_rewrite_in_progress"),
                    field("persistence", "aof_rewrite_scheduled"),
                    field("persistence", "aof_last_write_status"),
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The total as the current primary holds it.
    pub fn total(&self) -> i64 {
        let primary = self.primary().expect("a primary");
        self.nodes[primary].get_i64("hits")
    }
}

impl SentinelProcess {
    fn start(flavor: Flavor, primary_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let port = free_port();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = dir.path().display(),
                down = DOWN_AFTER.as_millis(),
            ),
        )
        .expect("the sentinel's config");
        let mut sentinel = Self {
            port,
            flavor,
            dir,
            child: None,
        };
        sentinel.launch();
        sentinel
    }

    fn launch(&mut self) {
        let child = Command::new(self.flavor.sentinel())
            .arg(self.dir.path().join("sentinel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sentinel starts");
        self.child = Some(child);
        wait("the sentinel to answer", Duration::from_secs(10), || {
            self.query(&["PING"]).is_ok()
        });
    }

    /// Starts the sentinel again after `kill`, with the configuration it rewrote.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the sentinel is still running");
        self.launch();
    }

    pub fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    /// The sentinel's view of the primary (`SENTINEL MASTER`), as field → value.
    pub fn master(&self) -> std::collections::HashMap<String, String> {
        self.query(&["SENTINEL", "MASTER", MASTER_NAME])
            .ok()
            .and_then(|value| redis::from_redis_value(value).ok())
            .unwrap_or_default()
    }

    pub fn primary_port(&self) -> Option<u16> {
        let value = self
            .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
            .ok()?;
        let (_, port): (String, String) = redis::from_redis_value(value).ok()?;
        port.parse().ok()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits, checking every 20 ms, until `condition` holds; panics with `what` after
/// `limit`. For conditions that need no async client.
fn wait(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
