//! One worker's connection to the Redis primary, opened on first use and opened again
//! when it breaks or the primary moves.
//!
//! Writes are exactly-once per batch: each batch has a sequence number, and the write
//! script keeps a record of the batches it applied (per writer, for a few minutes). When a
//! connection breaks with a batch under way (Redis restarted, an idle timeout closed it, the
//! primary died or was demoted), the batch is sent again on a fresh connection: if the
//! first attempt was applied, its recorded total comes back; if not, it is applied now.
//! Only a batch whose answer never came back in time is *in doubt*.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, FromRedisValue, Pipeline, ProtocolVersion, PushInfo, PushKind,
    RedisError, RedisResult, Value, aio::MultiplexedConnection,
};
use tokio::time::{Instant, timeout_at};

use super::{BATCH_RECORDS_KEPT, BATCH_RECORDS_TTL, Shared, classify};
use crate::{
    deadlines::Deadlines,
    store::{ALIVE_WINDOW, ReplicaStats, Snapshot, StoreError, StoreErrorKind, backoff::Backoff},
};

/// Attempts of one call at most: the first on the connection at hand, then, if that
/// connection turns out broken, on fresh ones (a new primary's, after a failover).
const MAX_ATTEMPTS: usize = 3;

/// How long a call waits for another call's connection attempt before giving up on it.
/// A healthy server is connected to in a few milliseconds.
const CONNECT_WAIT: Duration = Duration::from_millis(100);

/// The start of this process's monotonic clock, against which Redis's clock is measured.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn monotonic_ms(at: Instant) -> i64 {
    at.saturating_duration_since(*EPOCH).as_millis() as i64
}

pub struct RedisConnection {
    shared: Arc<Shared>,
    /// This writer's batch records.
    batches_key: String,
    next_batch: AtomicU64,
    /// Never held across an await.
    link: std::sync::Mutex<Link>,
    /// Woken when a connection attempt ends.
    connected: tokio::sync::Notify,
    /// Redis's clock minus this process's monotonic clock, in ms, never above the truth:
    /// each reading takes Redis's time as if it had been read when the answer arrived.
    /// Write deadlines set with it are therefore never later on Redis's clock than meant.
    clock_offset_ms: AtomicI64,
}

#[derive(Default)]
struct Link {
    live: Option<Live>,
    backoff: Backoff,
    opened: u64,
    /// When the connection attempt under way began.
    connecting: Option<Instant>,
}

/// The one connection attempt under way. Ended however its call ends (a dropped call
/// included), so that the next call can try again.
struct Attempt<'a> {
    connection: &'a RedisConnection,
    generation: u64,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.connection.lock().connecting = None;
        self.connection.connected.notify_waiters();
    }
}

#[derive(Clone)]
struct Live {
    connection: MultiplexedConnection,
    /// Set by the connection itself when it learns the server closed it, so that a write
    /// is never sent on a connection known dead (and then counted in doubt).
    closed: Arc<AtomicBool>,
    /// The locator's generation the address came from.
    generation: u64,
    /// Which opening of this link it is, so that a late failure report does not close a
    /// newer connection.
    id: u64,
}

/// What one attempt of a call ended with.
enum Outcome<T> {
    Done(T),
    /// The connection broke or the server is not the primary: try a fresh connection.
    /// `maybe_sent` says whether the command may have reached Redis.
    Reconnect {
        error: StoreError,
        maybe_sent: bool,
    },
    Failed(StoreError),
}

impl RedisConnection {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let batches_key = format!("{}{:016x}", shared.keys.batches_prefix, fastrand::u64(..));
        Self {
            shared,
            batches_key,
            next_batch: AtomicU64::new(1),
            link: std::sync::Mutex::new(Link::default()),
            connected: tokio::sync::Notify::new(),
            clock_offset_ms: AtomicI64::new(0),
        }
    }

    /// Adds `count` visits in one write and returns the total after them. An error that
    /// is not `in_doubt` means nothing was applied, nor will be.
    pub async fn add_visits(&self, count: u64, answer_by: Instant) -> Result<i64, StoreError> {
        let batch = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let mut maybe_applied = false;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let attempt = self.write_once(count, batch, answer_by).await;
            match attempt {
                Outcome::Done(total) => return Ok(total),
                Outcome::Failed(error) => return Err(error.doubt_if(maybe_applied)),
                Outcome::Reconnect { error, maybe_sent } => {
                    maybe_applied |= maybe_sent;
                    last = Some(error);
                }
            }
        }
        Err(last
            .unwrap_or_else(StoreError::timeout)
            .doubt_if(maybe_applied))
    }

    async fn write_once(&self, count: u64, batch: u64, answer_by: Instant) -> Outcome<i64> {
        let live = match self.live(answer_by).await {
            Ok(live) => live,
            Err(error) => return Outcome::Failed(error),
        };
        let now = Instant::now();
        if now >= answer_by {
            return Outcome::Failed(StoreError::new(
                StoreErrorKind::Timeout,
                "no time left to send the write",
            ));
        }
        let arrive_by = self.redis_ms(Deadlines::arrival_by(now, answer_by));
        let shared = &self.shared;
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("EVALSHA")
            .arg(shared.scripts.add_visits.get_hash())
            .arg(3)
            .arg(&shared.keys.total)
            .arg(&shared.keys.replicas)
            .arg(&self.batches_key)
            .arg(count)
            .arg(&shared.identity.replica)
            .arg(arrive_by)
            .arg(batch)
            .arg(BATCH_RECORDS_KEPT)
            .arg(BATCH_RECORDS_TTL.as_millis() as u64);
        let replicas_wanted = self.add_replication_wait(&mut pipe, now, answer_by);
        let mut connection = live.connection.clone();
        let replies =
            match timeout_at(answer_by, pipe.query_async::<Vec<Value>>(&mut connection)).await {
                Ok(Ok(replies)) => replies,
                Ok(Err(error)) => return self.failed_attempt(&live, error, true).await,
                Err(_) => {
                    // The write may be applied, its answer late: Redis paused, or the network
                    // stalled. Later calls should not queue behind it on this connection.
                    self.broken(&live, false).await;
                    return Outcome::Failed(StoreError::timeout());
                }
            };
        let received = Instant::now();
        let mut replies = replies.into_iter();
        let script = replies.next().unwrap_or(Value::Nil);
        let (total, redis_now, _replayed) =
            match <RedisResult<(String, i64, i64)>>::from_redis_value(script) {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    if let Some(now) = expired_at(&error) {
                        self.observe_clock(now, received);
                    }
                    return self.failed_attempt(&live, error, false).await;
                }
                Err(error) => {
                    return Outcome::Failed(StoreError::new(
                        StoreErrorKind::Failed,
                        format!("unexpected reply to the write: {error}"),
                    ));
                }
            };
        self.observe_clock(redis_now, received);
        let Ok(total) = total.parse::<i64>() else {
            return Outcome::Failed(StoreError::new(
                StoreErrorKind::WrongType,
                format!("the total is not an integer: {total:?}"),
            ));
        };
        if let Some(wanted) = replicas_wanted {
            let reached = replies.next().map(replicas_reached);
            match reached {
                Some(Ok(reached)) if reached >= wanted => {}
                Some(Ok(reached)) => {
                    return Outcome::Failed(
                        StoreError::new(
                            StoreErrorKind::Replication,
                            format!("the write reached {reached} of {wanted} replicas in time"),
                        )
                        .with_doubt(),
                    );
                }
                Some(Err(error)) => return Outcome::Failed(classify(error).with_doubt()),
                None => {
                    return Outcome::Failed(
                        StoreError::new(StoreErrorKind::Failed, "no answer to WAIT").with_doubt(),
                    );
                }
            }
        }
        Outcome::Done(total)
    }

    /// Adds WAIT (or WAITAOF) after the write when replicas must confirm it; returns how
    /// many must. Redis waits at most until halfway to the answer deadline, so that its
    /// answer is back in time.
    fn add_replication_wait(
        &self,
        pipe: &mut Pipeline,
        now: Instant,
        answer_by: Instant,
    ) -> Option<i64> {
        let shared = &self.shared;
        if shared.min_replicas == 0 && !shared.wait_aof {
            return None;
        }
        let wait_ms = (answer_by.saturating_duration_since(now).as_millis() as u64 / 2).max(1);
        if shared.wait_aof {
            pipe.cmd("WAITAOF")
                .arg(1)
                .arg(shared.min_replicas)
                .arg(wait_ms);
        } else {
            pipe.cmd("WAIT").arg(shared.min_replicas).arg(wait_ms);
        }
        Some(i64::from(shared.min_replicas))
    }

    /// Sorts a failed attempt: a broken connection or a demoted primary is worth another
    /// attempt on a fresh connection; anything else is the answer.
    async fn failed_attempt<T>(
        &self,
        live: &Live,
        error: RedisError,
        on_the_wire: bool,
    ) -> Outcome<T> {
        if error.code() == Some("NOSCRIPT") {
            // The script cache was flushed: load it again and retry; nothing ran.
            self.broken(live, false).await;
            return Outcome::Reconnect {
                error: classify(error),
                maybe_sent: false,
            };
        }
        if error.code() == Some("READONLY") && self.shared.locator.follows_failovers() {
            // A demoted primary: refused, so certainly not applied.
            self.broken(live, true).await;
            return Outcome::Reconnect {
                error: classify(error),
                maybe_sent: false,
            };
        }
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            self.broken(live, true).await;
            return Outcome::Reconnect {
                error: classify(error),
                maybe_sent: on_the_wire,
            };
        }
        Outcome::Failed(classify(error))
    }

    /// Answers when Redis could take a visit now: it answers, it is the primary with
    /// enough replicas, and the keys a write touches hold what a write expects.
    pub async fn ready(&self, answer_by: Instant) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ROLE")
            .get(&self.shared.keys.total)
            .cmd("TYPE")
            .arg(&self.shared.keys.replicas);
        let (role, total, replicas): (Vec<Value>, Option<String>, String) =
            self.query(&pipe, answer_by).await?;
        let role_name = role
            .first()
            .and_then(|v| String::from_redis_value(v.clone()).ok());
        if role_name.as_deref() != Some("master") {
            return Err(StoreError::new(
                StoreErrorKind::ReadOnly,
                "the server is not the primary",
            ));
        }
        let connected = match role.get(2) {
            Some(Value::Array(replicas)) => replicas.len(),
            _ => 0,
        };
        if connected < usize::from(self.shared.min_replicas) {
            return Err(StoreError::new(
                StoreErrorKind::Replication,
                format!(
                    "{connected} replicas connected, {} needed",
                    self.shared.min_replicas
                ),
            ));
        }
        if total.is_some_and(|total| total.parse::<i64>().is_err())
            || !matches!(replicas.as_str(), "hash" | "none")
        {
            return Err(StoreError::new(
                StoreErrorKind::WrongType,
                "the total or the per-replica hash holds something else",
            ));
        }
        Ok(())
    }

    /// The total, visits per replica and which replicas are alive.
    pub async fn snapshot(&self, answer_by: Instant) -> Result<Snapshot, StoreError> {
        let keys = &self.shared.keys;
        let mut pipe = redis::pipe();
        pipe.get(&keys.total)
            .hgetall(&keys.replicas)
            .cmd("ZRANGE")
            .arg(&keys.heartbeats)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .hgetall(&keys.versions)
            .cmd("TIME");
        type Reply = (
            Option<String>,
            Vec<(String, String)>,
            Vec<(String, f64)>,
            Vec<(String, String)>,
            (i64, i64),
        );
        let (total, visits, heartbeats, versions, (secs, micros)): Reply =
            self.query(&pipe, answer_by).await?;
        let total = match total {
            None => 0,
            Some(total) => total.parse().map_err(|_| {
                StoreError::new(StoreErrorKind::WrongType, "the total is not an integer")
            })?,
        };
        let now_ms = secs * 1000 + micros / 1000;
        let window = ALIVE_WINDOW.as_millis() as i64;
        let mut replicas: std::collections::BTreeMap<String, ReplicaStats> = visits
            .into_iter()
            .filter_map(|(name, visits)| Some((name, visits.parse::<i64>().ok()?)))
            .map(|(name, visits)| {
                let stats = ReplicaStats {
                    name: name.clone(),
                    visits,
                    alive: false,
                    version: None,
                };
                (name, stats)
            })
            .collect();
        for (name, at) in heartbeats {
            replicas
                .entry(name.clone())
                .or_insert_with(|| ReplicaStats::new(name))
                .alive = now_ms - at as i64 <= window;
        }
        for (name, version) in versions {
            if let Some(stats) = replicas.get_mut(&name) {
                stats.version = Some(version);
            }
        }
        Ok(Snapshot {
            total,
            replicas: replicas.into_values().collect(),
        })
    }

    /// Marks this replica alive (and records its version); returns the total.
    pub async fn heartbeat(&self, answer_by: Instant) -> Result<Option<i64>, StoreError> {
        let shared = &self.shared;
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(shared.scripts.heartbeat.get_hash())
            .arg(3)
            .arg(&shared.keys.heartbeats)
            .arg(&shared.keys.versions)
            .arg(&shared.keys.total)
            .arg(&shared.identity.replica)
            .arg(&shared.identity.version);
        let ((_now, total),): ((i64, Option<String>),) = self.query(&pipe, answer_by).await?;
        Ok(total.and_then(|total| total.parse().ok()))
    }

    /// Removes this replica from the alive set, so pages stop showing it at once.
    pub async fn depart(&self, answer_by: Instant) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(&self.shared.keys.heartbeats)
            .arg(&self.shared.identity.replica)
            .ignore();
        self.query::<()>(&pipe, answer_by).await
    }

    /// Runs a pipeline that may safely run twice (reads, heartbeats), on a fresh
    /// connection if the one at hand turns out broken.
    async fn query<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        answer_by: Instant,
    ) -> Result<T, StoreError> {
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let live = self.live(answer_by).await?;
            let mut connection = live.connection.clone();
            match timeout_at(answer_by, pipe.query_async::<T>(&mut connection)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => match self.failed_attempt::<T>(&live, error, true).await {
                    Outcome::Reconnect { error, .. } => last = Some(error),
                    Outcome::Failed(error) => return Err(error),
                    Outcome::Done(value) => return Ok(value),
                },
                Err(_) => {
                    self.broken(&live, false).await;
                    return Err(StoreError::timeout());
                }
            }
        }
        Err(last.unwrap_or_else(StoreError::timeout))
    }

    /// The connection to use, opened if there is none or the primary has moved. One call
    /// connects; calls meanwhile wait for it, but at most `CONNECT_WAIT` after it began:
    /// a connection attempt that hangs (a vanished address, a paused server) turns into
    /// prompt 503s rather than every visit waiting out the store timeout.
    async fn live(&self, answer_by: Instant) -> Result<Live, StoreError> {
        let locator = &self.shared.locator;
        let attempt = loop {
            let connected = self.connected.notified();
            let wait_until = {
                let mut link = self.lock();
                if let Some(live) = &link.live
                    && live.generation == locator.generation()
                    && !live.closed.load(Ordering::Acquire)
                {
                    return Ok(live.clone());
                }
                match link.connecting {
                    Some(began) => (began + CONNECT_WAIT).min(answer_by),
                    None => {
                        link.live = None;
                        link.backoff.check()?;
                        link.connecting = Some(Instant::now());
                        break Attempt {
                            connection: self,
                            generation: locator.generation(),
                        };
                    }
                }
            };
            if timeout_at(wait_until, connected).await.is_err() {
                return Err(StoreError::new(
                    StoreErrorKind::Unreachable,
                    "not tried: another call is still connecting",
                ));
            }
        };
        let opened = match timeout_at(answer_by, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                "connecting took too long",
            )),
        };
        let mut link = self.lock();
        let result = match opened {
            Ok((connection, closed, generation)) => {
                link.backoff.succeeded();
                link.opened += 1;
                let live = Live {
                    connection,
                    closed,
                    generation,
                    id: link.opened,
                };
                link.live = Some(live.clone());
                Ok(live)
            }
            Err(error) => {
                link.backoff.failed(error.kind());
                if matches!(
                    error.kind(),
                    StoreErrorKind::Unreachable
                        | StoreErrorKind::Timeout
                        | StoreErrorKind::ReadOnly
                ) {
                    locator.distrust(attempt.generation);
                }
                Err(error)
            }
        };
        drop(link);
        drop(attempt);
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects to the primary, loads the scripts, checks the server's role (when
    /// following sentinels) and reads its clock.
    async fn open(&self) -> Result<(MultiplexedConnection, Arc<AtomicBool>, u64), StoreError> {
        let shared = &self.shared;
        let (info, generation) = shared.locator.primary().await?;
        // RESP3, for the notice that the server closed the connection.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(classify)?;
        let closed = Arc::new(AtomicBool::new(false));
        let notice = closed.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(shared.timeout))
            .set_response_timeout(Some(shared.timeout))
            .set_push_sender(move |push: PushInfo| {
                if push.kind == PushKind::Disconnection {
                    notice.store(true, Ordering::Release);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(classify)?;
        let mut pipe = redis::pipe();
        for code in [super::scripts::ADD_VISITS, super::scripts::HEARTBEAT] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(code).ignore();
        }
        pipe.cmd("ROLE").cmd("TIME");
        let (role, (secs, micros)): (Vec<Value>, (i64, i64)) =
            pipe.query_async(&mut connection).await.map_err(classify)?;
        self.observe_clock(secs * 1000 + micros / 1000, Instant::now());
        let role_name = role
            .first()
            .and_then(|v| String::from_redis_value(v.clone()).ok());
        if shared.locator.follows_failovers() && role_name.as_deref() != Some("master") {
            return Err(StoreError::new(
                StoreErrorKind::ReadOnly,
                "the server the sentinels named is not the primary",
            ));
        }
        Ok((connection, closed, generation))
    }

    /// Forgets a connection that failed; `moved` also has the primary's address looked up
    /// again (it may have failed over).
    async fn broken(&self, live: &Live, moved: bool) {
        let mut link = self.lock();
        if link
            .live
            .as_ref()
            .is_some_and(|current| current.id == live.id)
        {
            link.live = None;
        }
        if moved {
            self.shared.locator.distrust(live.generation);
        }
    }

    /// Redis's clock at our monotonic instant `at`, in ms, never later than the truth.
    fn redis_ms(&self, at: Instant) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed) + monotonic_ms(at)
    }

    /// Redis said its clock read `redis_now`; the answer arrived at `received`.
    fn observe_clock(&self, redis_now: i64, received: Instant) {
        self.clock_offset_ms
            .store(redis_now - monotonic_ms(received), Ordering::Relaxed);
    }
}

/// Redis's clock when it refused a write for arriving after its deadline.
fn expired_at(error: &RedisError) -> Option<i64> {
    if error.code() != Some("EXPIRED") {
        return None;
    }
    error.detail()?.split_whitespace().last()?.parse().ok()
}

/// How many replicas WAIT (an integer) or WAITAOF (local and replica counts) confirmed.
fn replicas_reached(reply: Value) -> RedisResult<i64> {
    match reply {
        Value::Int(replicas) => Ok(replicas),
        Value::Array(counts) => {
            let counts: Vec<i64> = FromRedisValue::from_redis_value(Value::Array(counts))?;
            match counts[..] {
                // WAITAOF: without the primary's own fsync, no replica counts.
                [local, replicas] if local >= 1 => Ok(replicas),
                [_, _] => Ok(-1),
                _ => Ok(-1),
            }
        }
        other => <RedisResult<i64>>::from_redis_value(other)?,
    }
}
