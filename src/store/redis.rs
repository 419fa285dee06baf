//! Redis: the total under the tutorial's key (`hits`, INCR semantics), so a deployment of
//! the original app carries on counting, and beside it a hash of visits per replica and a
//! sorted set of replica heartbeats.
//!
//! A multiplexed connection serves each runtime thread (see `server`): the thread that
//! sends a command also reads its answer, so no answer crosses threads. Connections are
//! opened lazily and re-opened with backoff, so the service starts and reports not-ready
//! while Redis is still coming up.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{
    Client, IntoConnectionInfo, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
    io::tcp::{TcpSettings, socket2::TcpKeepalive},
};

use super::{ALIVE_WINDOW, ReplicaStats, Snapshot, StoreError, StoreErrorKind, backoff::Backoff};

/// Adds ARGV[1] visits to the total and to this replica's share, atomically — unless the
/// command reached Redis after ARGV[3], a deadline on Redis's own clock. A write held up
/// (a paused Redis, a stalled network) until its visits were answered 503 is then refused
/// instead of counting them late.
const ADD_VISITS: &str = r"
local deadline = tonumber(ARGV[3])
if deadline > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now > deadline then
    return redis.error_reply('EXPIRED write reached Redis after its deadline')
  end
end
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[1])
return total
";

/// Records this replica as alive at the server's clock, so replicas on hosts with skewed
/// clocks agree, and forgets replicas silent for a day.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
return now
";

/// Everything needed to reach Redis.
pub struct RedisOptions {
    pub url: String,
    pub password: Option<String>,
    pub counter_key: String,
    pub replica: String,
    pub version: String,
    /// Bound on connecting and on each command.
    pub timeout: Duration,
}

pub struct RedisStore {
    connection: ConnectionManager,
    /// What `another_connection` needs to open one more.
    client: Client,
    config: ConnectionManagerConfig,
    keys: Keys,
    replica: String,
    version: String,
    add_visits: Script,
    heartbeat: Script,
    /// Shared by all connections: whether Redis is down is a fact about Redis.
    backoff: Arc<Backoff>,
    /// How long after sending a write Redis may still apply it: half the store timeout,
    /// so that any write applied is answered before the caller gives up on it.
    write_deadline: Duration,
    /// Redis's clock minus ours, in ms, measured by each heartbeat; `i64::MIN` until the
    /// first one. Deadlines are set on Redis's clock, so clock skew between hosts does not
    /// matter. Shared by all connections; the heartbeat's connection measures it.
    clock_offset_ms: Arc<AtomicI64>,
}

#[derive(Clone)]
struct Keys {
    total: String,
    replicas: String,
    heartbeats: String,
    versions: String,
}

impl RedisStore {
    /// Prepares the connection without waiting for Redis to answer.
    pub fn new(options: RedisOptions) -> Result<Self, StoreError> {
        let mut info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| StoreError::new(StoreErrorKind::Failed, e.to_string()))?;
        if let Some(password) = &options.password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        // Keepalive probes keep the idle connection known to every middlebox (Swarm's IPVS
        // drops connections idle for 900 s) and detect a vanished peer.
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        info = info.set_tcp_settings(
            TcpSettings::default()
                .set_nodelay(true)
                .set_keepalive(keepalive),
        );
        let client = Client::open(info).map_err(classify)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            // One attempt per reconnect: `Backoff` spaces the attempts and lets calls fail
            // fast meanwhile, instead of queueing behind a retry loop.
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(classify)?;
        let key = options.counter_key;
        Ok(Self {
            connection,
            client,
            config,
            keys: Keys {
                replicas: format!("{key}:replicas"),
                heartbeats: format!("{key}:heartbeats"),
                versions: format!("{key}:versions"),
                total: key,
            },
            replica: options.replica,
            version: options.version,
            add_visits: Script::new(ADD_VISITS),
            heartbeat: Script::new(HEARTBEAT),
            backoff: Arc::new(Backoff::new()),
            write_deadline: options.timeout / 2,
            clock_offset_ms: Arc::new(AtomicI64::new(i64::MIN)),
        })
    }

    /// The same store over a connection of its own, sharing the backoff and the clock
    /// reading. Its connection tasks run on the Tokio runtime this is called on.
    pub fn another_connection(&self) -> Result<Self, StoreError> {
        let connection =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                .map_err(classify)?;
        Ok(Self {
            connection,
            client: self.client.clone(),
            config: self.config.clone(),
            keys: self.keys.clone(),
            replica: self.replica.clone(),
            version: self.version.clone(),
            add_visits: self.add_visits.clone(),
            heartbeat: self.heartbeat.clone(),
            backoff: self.backoff.clone(),
            write_deadline: self.write_deadline,
            clock_offset_ms: self.clock_offset_ms.clone(),
        })
    }

    /// Runs `call` unless the backoff says Redis is down, and records how it went.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        self.backoff.check()?;
        let result = call.await.map_err(classify);
        self.backoff.record(&result);
        result
    }

    pub async fn add_visits(&self, count: u64) -> Result<u64, StoreError> {
        let mut connection = self.connection.clone();
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        // Without a clock reading yet (the first moments after start), no deadline.
        let deadline = if offset == i64::MIN {
            0
        } else {
            now_ms() + offset + self.write_deadline.as_millis() as i64
        };
        let mut invocation = self.add_visits.key(&self.keys.total);
        invocation
            .key(&self.keys.replicas)
            .arg(count)
            .arg(&self.replica)
            .arg(deadline);
        self.guarded(invocation.invoke_async(&mut connection)).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        self.guarded(redis::cmd("PING").query_async::<()>(&mut connection))
            .await
    }

    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.heartbeat.key(&self.keys.heartbeats);
        invocation
            .key(&self.keys.versions)
            .arg(&self.replica)
            .arg(&self.version);
        let sent = now_ms();
        let redis_now = self
            .guarded(invocation.invoke_async::<i64>(&mut connection))
            .await?;
        // Redis read its clock about halfway through the round trip.
        let midway = sent + (now_ms() - sent) / 2;
        self.clock_offset_ms
            .store(redis_now - midway, Ordering::Relaxed);
        Ok(())
    }

    pub async fn depart(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("ZREM");
        command.arg(&self.keys.heartbeats).arg(&self.replica);
        self.guarded(command.query_async::<()>(&mut connection))
            .await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut connection = self.connection.clone();
        type Reply = (
            Option<u64>,
            BTreeMap<String, u64>,
            Vec<(String, i64)>,
            BTreeMap<String, String>,
            (i64, i64),
        );
        let mut pipeline = redis::pipe();
        pipeline
            .get(&self.keys.total)
            .hgetall(&self.keys.replicas)
            .cmd("ZRANGE")
            .arg(&self.keys.heartbeats)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .hgetall(&self.keys.versions)
            .cmd("TIME");
        let (total, visits, heartbeats, versions, (secs, micros)): Reply =
            self.guarded(pipeline.query_async(&mut connection)).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let window = ALIVE_WINDOW.as_millis() as i64;
        let alive: BTreeMap<String, bool> = heartbeats
            .into_iter()
            .map(|(name, at)| (name, now_ms - at <= window))
            .collect();
        let mut names: Vec<&String> = visits.keys().chain(alive.keys()).collect();
        names.sort();
        names.dedup();
        let replicas = names
            .into_iter()
            .map(|name| ReplicaStats {
                name: name.clone(),
                visits: visits.get(name).copied().unwrap_or(0),
                alive: alive.get(name).copied().unwrap_or(false),
                version: versions.get(name).cloned(),
            })
            .collect();
        Ok(Snapshot {
            total: total.unwrap_or(0),
            replicas,
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sorts a Redis error into what a client may be told; the full text stays in the detail.
fn classify(error: RedisError) -> StoreError {
    let kind = match error.code() {
        Some("LOADING") => StoreErrorKind::Loading,
        Some("MISCONF" | "READONLY" | "MASTERDOWN") => StoreErrorKind::ReadOnly,
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => StoreErrorKind::Auth,
        Some("OOM") => StoreErrorKind::OutOfMemory,
        Some("BUSY") => StoreErrorKind::Busy,
        // Refused by our own deadline check: certainly not applied.
        Some("EXPIRED") => return StoreError::new(StoreErrorKind::Timeout, error.to_string()),
        _ if error.kind() == redis::ErrorKind::AuthenticationFailed => StoreErrorKind::Auth,
        _ if error.is_timeout() => StoreErrorKind::Timeout,
        _ if error.is_io_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped() =>
        {
            StoreErrorKind::Unreachable
        }
        _ => StoreErrorKind::Failed,
    };
    let error_text = error.to_string();
    if error.is_timeout() || error.is_connection_dropped() {
        StoreError::new(kind, error_text).with_doubt()
    } else {
        StoreError::new(kind, error_text)
    }
}
