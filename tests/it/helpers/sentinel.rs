//! A Redis group on loopback as Sentinel runs one: a primary, two replicas and three
//! sentinels, each a real process with its own port and folder, with short failure
//! detection so that failovers happen within seconds.

use std::{process::Stdio, time::Duration};

use redis::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::{
    RedisServer, free_port,
    limits::{PROCESS_START, allowed},
    redis::{Flavor, query_at},
    wait_or_explain, wait_until,
};

pub const MASTER_NAME: &str = "mymaster";

/// How long sentinels wait before calling an unanswering primary down. At 500 ms, a
/// loaded two-core machine had sentinels call each new primary down before its first
/// answer, failover after failover, promoting servers that had not copied anything.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// How long a failover may take before the sentinels give up on it; a sentinel that
/// lost an election (votes split between sentinels that started at once) tries again
/// after twice this.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a failover takes on an idle machine, from the primary's loss until the
/// sentinels name a new primary that takes writes: failure detection (`DOWN_AFTER`), the
/// random delay before a sentinel starts a failover (up to 1 s), one election lost to a
/// split vote and the retry after it, and the promotion, which a sentinel confirms from
/// the replica's `INFO`, asked every second while a failover is under way.
pub const FAILOVER: Duration = Duration::from_millis(
    DOWN_AFTER.as_millis() as u64 + 1_000 + 2 * FAILOVER_TIMEOUT.as_millis() as u64 + 2_000,
);

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

/// Settings every data node gets, as deploy/redis-node.sh gives them (beside AOF with
/// fsync on every write, which every `RedisServer` has): a primary refuses writes unless
/// one replica is connected and current, so an isolated old primary stops taking writes;
/// a replica that must copy a new primary whole starts at once.
const NODE_SETTINGS: [&str; 6] = [
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "2",
    "--repl-diskless-sync-delay",
    "0",
];

impl RedisGroup {
    /// Starts the group and waits until the primary has both replicas and every sentinel
    /// knows the others and the replicas.
    pub async fn start(flavor: Flavor) -> Self {
        Self::start_with(flavor, [&[], &[], &[]]).await
    }

    /// `start`, with settings of its own for each node (the primary first).
    pub async fn start_with(flavor: Flavor, extra: [&[&str]; 3]) -> Self {
        Self::start_servers(flavor, None, extra).await
    }

    /// `start`, every server asking for `password` and giving it to its primary, the
    /// sentinels given it to watch them (`auth-pass`) and having none of their own.
    pub async fn start_with_password(flavor: Flavor, password: &str) -> Self {
        Self::start_servers(flavor, Some(password), [&[], &[], &[]]).await
    }

    async fn start_servers(flavor: Flavor, password: Option<&str>, extra: [&[&str]; 3]) -> Self {
        let auth: Vec<&str> = password.map_or(vec![], |p| vec!["--masterauth", p]);
        let mut settings = NODE_SETTINGS.to_vec();
        settings.extend(&auth);
        settings.extend(extra[0]);
        let primary = RedisServer::start_with(flavor, password, &settings).await;
        let primary_port = primary.port.to_string();
        let mut nodes = vec![primary];
        for own in &extra[1..] {
            let mut settings = NODE_SETTINGS.to_vec();
            settings.extend(&auth);
            settings.extend(["--replicaof", "127.0.0.1", &primary_port]);
            settings.extend(*own);
            nodes.push(RedisServer::start_with(flavor, password, &settings).await);
        }
        let group_nodes = &nodes;
        wait_until("both replicas in sync", allowed(PROCESS_START), || async {
            for node in &group_nodes[1..] {
                if node.replication("master_link_status").await.as_deref() != Some("up") {
                    return false;
                }
            }
            true
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(SentinelProcess::start(flavor, nodes[0].port, password).await);
        }
        let group = Self { nodes, sentinels };
        // Sentinels find each other through hello messages every 2 s, and the replicas
        // through the primary's INFO, asked every 10 s at first.
        wait_until(
            "sentinels to know each other and the replicas",
            allowed(Duration::from_secs(10)),
            || async {
                for sentinel in &group.sentinels {
                    let master = sentinel.master().await;
                    if master.get("num-other-sentinels").map(String::as_str) != Some("2")
                        || master.get("num-slaves").map(String::as_str) != Some("2")
                    {
                        return false;
                    }
                }
                true
            },
        )
        .await;
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
    pub async fn primary(&self) -> Option<usize> {
        let mut votes = vec![0; self.nodes.len()];
        for sentinel in &self.sentinels {
            if let Some(port) = sentinel.primary_port().await
                && let Some(index) = self.nodes.iter().position(|n| n.port == port)
            {
                votes[index] += 1;
            }
        }
        let (index, count) = votes.iter().enumerate().max_by_key(|(_, c)| **c)?;
        (*count >= 2).then_some(index)
    }

    /// Waits until the sentinels name a primary other than `old`, and it takes writes;
    /// panics with each server's state after `limit`.
    pub async fn wait_for_failover(&self, old: usize, limit: Duration) -> usize {
        let new = std::sync::Mutex::new(None);
        wait_or_explain(
            "a new primary",
            limit,
            || async {
                let found = self.primary().await.filter(|&p| p != old);
                *new.lock().unwrap() = found;
                match found {
                    Some(p) => self.nodes[p].replication("role").await.as_deref() == Some("master"),
                    None => false,
                }
            },
            || self.state(),
        )
        .await;
        new.into_inner().unwrap().expect("a new primary")
    }

    /// A planned failover (`SENTINEL FAILOVER`), as an operator starts one: asked of one
    /// sentinel until it takes it (it refuses while another is under way, or before it
    /// has watched the replicas long enough), and asked again if it gives the failover
    /// up (no replica promoted within the failover timeout, which a loaded machine can
    /// take), as an operator would; returns the new primary once it takes writes.
    pub async fn planned_failover(&self) -> usize {
        let old = self.primary().await.expect("a primary");
        let asked = &self.sentinels[fastrand::usize(..self.sentinels.len())];
        let new = std::sync::Mutex::new(None);
        wait_or_explain(
            "a planned failover carried out",
            allowed(FAILOVER) * 2,
            || async {
                let found = self.primary().await.filter(|&p| p != old);
                if let Some(p) = found {
                    *new.lock().unwrap() = Some(p);
                    return self.nodes[p].replication("role").await.as_deref() == Some("master");
                }
                // Asked again only when the asked sentinel still names the old primary
                // and carries out no failover: it has given this one up.
                let old_port = self.nodes[old].port;
                if asked.primary_port().await == Some(old_port)
                    && !asked.failover_in_progress().await
                {
                    let _ = asked.query(&["SENTINEL", "FAILOVER", MASTER_NAME]).await;
                }
                false
            },
            || self.state(),
        )
        .await;
        new.into_inner().unwrap().expect("a new primary")
    }

    /// Brings a killed node back as an operator does with deploy/redis-node.sh: as a
    /// replica of the primary the sentinels name that no failover may promote until it
    /// has copied the primary (a server with old data), and only done once it has.
    pub async fn rejoin(&mut self, node: usize) {
        let primary = self.primary().await.expect("a primary");
        let port = self.nodes[primary].port;
        self.nodes[node].start_again_replicating(port).await;
        let group = &*self;
        wait_or_explain(
            "the node back to copy the primary",
            allowed(FAILOVER),
            || async {
                group.nodes[node]
                    .replication("master_link_status")
                    .await
                    .as_deref()
                    == Some("up")
            },
            || group.state(),
        )
        .await;
        self.nodes[node].make_promotable().await;
    }

    /// Each server's role, replication and append-only-file state, for failure messages.
    pub async fn state(&self) -> String {
        let mut lines = Vec::new();
        for node in &self.nodes {
            let mut fields = Vec::new();
            for (section, name) in [
                ("replication", "role"),
                ("replication", "master_link_status"),
                ("replication", "connected_slaves"),
                ("replication", "master_repl_offset"),
                ("persistence", "aof_rewrite_in_progress"),
                ("persistence", "aof_last_write_status"),
            ] {
                let value = node.info(section, name).await;
                fields.push(format!("{name} {}", value.as_deref().unwrap_or("-")));
            }
            lines.push(format!("port {}: {}", node.port, fields.join(", ")));
        }
        for sentinel in &self.sentinels {
            lines.push(format!(
                "sentinel {}: names port {:?}",
                sentinel.port,
                sentinel.primary_port().await
            ));
        }
        lines.join("\n")
    }

    /// The total as the current primary holds it.
    pub async fn total(&self) -> i64 {
        let primary = self.primary().await.expect("a primary");
        self.nodes[primary].get_i64("hits").await
    }
}

impl SentinelProcess {
    /// A sentinel of its own watching the server on `primary_port` as `mymaster`.
    pub async fn start_watching(flavor: Flavor, primary_port: u16) -> Self {
        Self::start(flavor, primary_port, None).await
    }

    /// A sentinel watching the server on `primary_port`, with `auth_pass` the password
    /// that server and its replicas ask for.
    async fn start(flavor: Flavor, primary_port: u16, auth_pass: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let port = free_port();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
                 sentinel failover-timeout {MASTER_NAME} {failover}\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n{auth}",
                dir = dir.path().display(),
                down = DOWN_AFTER.as_millis(),
                failover = FAILOVER_TIMEOUT.as_millis(),
                auth = auth_pass.map_or(String::new(), |password| {
                    format!("sentinel auth-pass {MASTER_NAME} {password}\n")
                }),
            ),
        )
        .expect("the sentinel's config");
        let mut sentinel = Self {
            port,
            flavor,
            dir,
            child: None,
        };
        sentinel.launch().await;
        sentinel
    }

    async fn launch(&mut self) {
        let child = Command::new(self.flavor.sentinel().await)
            .arg(self.dir.path().join("sentinel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the sentinel starts");
        self.child = Some(child);
        let sentinel = &*self;
        wait_until("the sentinel to answer", allowed(PROCESS_START), || async {
            sentinel.query(&["PING"]).await.is_ok()
        })
        .await;
    }

    /// Starts the sentinel again after `kill`, with the configuration it rewrote.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the sentinel is still running");
        self.launch().await;
    }

    pub async fn query(&self, args: &[&str]) -> redis::RedisResult<Value> {
        let info = redis::IntoConnectionInfo::into_connection_info(format!(
            "redis://127.0.0.1:{}",
            self.port
        ))?;
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        query_at(info, &args).await
    }

    /// The sentinel's view of the primary (`SENTINEL MASTER`), as field → value.
    pub async fn master(&self) -> std::collections::HashMap<String, String> {
        self.query(&["SENTINEL", "MASTER", MASTER_NAME])
            .await
            .ok()
            .and_then(|value| redis::from_redis_value(value).ok())
            .unwrap_or_default()
    }

    /// Whether this sentinel is carrying out a failover of the primary now.
    pub async fn failover_in_progress(&self) -> bool {
        let Ok(value) = self.query(&["SENTINEL", "MASTER", MASTER_NAME]).await else {
            return false;
        };
        let fields: Vec<String> = redis::from_redis_value(value).unwrap_or_default();
        fields
            .chunks(2)
            .any(|pair| pair[0] == "flags" && pair.get(1).is_some_and(|f| f.contains("failover")))
    }

    pub async fn primary_port(&self) -> Option<u16> {
        let value = self
            .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
            .await
            .ok()?;
        let (_, port): (String, String) = redis::from_redis_value(value).ok()?;
        port.parse().ok()
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Freezes the sentinel (SIGSTOP), as a hung host would: connections are accepted by
    /// the kernel, nothing is answered.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused sentinel run again.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the sentinel is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .expect("the signal is sent");
    }
}
