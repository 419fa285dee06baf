//! One worker's session with the Redis primary: a connection opened on first use, by one
//! call for all the callers waiting on it, and opened again when it breaks or the
//! primary moves.
//!
//! A call that finds no usable connection starts an attempt; calls meanwhile wait for it,
//! but at most `Deadlines::CONNECT_WAIT` after it began, so that an attempt that hangs (a
//! vanished address, a paused server) turns into prompt 503s rather than every visit
//! waiting out the store timeout. After a failed attempt, calls fail at once for a
//! growing delay (`backoff`). Each connection belongs to a generation of the primary's
//! address (`locate`); a newer generation retires it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use redis::{
    AsyncConnectionConfig, Client, FromRedisValue, Pipeline, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value, aio::MultiplexedConnection,
};
use tokio::time::{Instant, timeout_at};

use super::{RedisStore, classify, clock::RedisClock, write::BatchWriter};
use crate::{
    counters::Day,
    deadlines::Deadlines,
    store::{StoreError, StoreErrorKind, backoff::Backoff},
};

/// One reply of a pipeline sent with `ignore_errors`: its value, or its server error.
fn reply<T: FromRedisValue>(value: Value) -> Result<T, StoreError> {
    match <redis::RedisResult<T>>::from_redis_value(value) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(classify(error)),
        Err(error) => Err(StoreError::new(
            StoreErrorKind::Failed,
            format!("unexpected reply: {error}"),
        )),
    }
}

/// Attempts of one call at most: the first on the connection at hand, then, if that
/// connection turns out broken, on fresh ones (a new primary's, after a failover).
pub(super) const MAX_ATTEMPTS: usize = 3;

pub struct RedisSession {
    pub(super) store: Arc<RedisStore>,
    /// Never held across an await.
    link: std::sync::Mutex<Link>,
    /// Woken when a connection attempt ends.
    connected: tokio::sync::Notify,
    pub(super) clock: RedisClock,
    pub(super) writer: BatchWriter,
    /// Today's salt for visitors' hashes, once read (`write::salt`).
    pub(super) salt: std::sync::Mutex<Option<(Day, [u8; 16])>>,
}

#[derive(Default)]
struct Link {
    live: Option<Live>,
    backoff: Backoff,
    opened: u64,
    /// When the connection attempt under way began.
    connecting: Option<Instant>,
}

/// Marks the one connection attempt under way. Dropped however its call ends (a dropped
/// call included), so that the next call can try again.
struct Connecting<'a> {
    session: &'a RedisSession,
    generation: u64,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.session.lock().connecting = None;
        self.session.connected.notify_waiters();
    }
}

/// An open connection to the primary.
#[derive(Clone)]
pub(super) struct Live {
    pub connection: MultiplexedConnection,
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
pub(super) enum Tried<T> {
    Done(T),
    /// The connection broke or the server is not the primary: try a fresh connection.
    /// `maybe_sent` says whether the command may have reached Redis.
    Retry {
        error: StoreError,
        maybe_sent: bool,
    },
    Failed(StoreError),
}

/// Whether a pipeline is sent again after an attempt that may have reached Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads and heartbeats: running twice changes nothing.
    Always,
    /// Changes: only an attempt that cannot have reached Redis.
    OnlyUnsent,
}

impl RedisSession {
    pub(super) fn new(store: Arc<RedisStore>) -> Self {
        let writer = BatchWriter::new(&store.keys.batches_prefix);
        Self {
            store,
            link: std::sync::Mutex::new(Link::default()),
            connected: tokio::sync::Notify::new(),
            clock: RedisClock::default(),
            writer,
            salt: std::sync::Mutex::new(None),
        }
    }

    /// Sorts a failed attempt: a broken connection or a demoted primary is worth another
    /// attempt on a fresh connection; anything else is the answer.
    pub(super) fn failed_attempt<T>(
        &self,
        live: &Live,
        error: RedisError,
        on_the_wire: bool,
    ) -> Tried<T> {
        if error.code() == Some("NOSCRIPT") {
            // The script cache was flushed: load it again and retry; nothing ran.
            self.broken(live, false);
            return Tried::Retry {
                error: classify(error),
                maybe_sent: false,
            };
        }
        if error.code() == Some("READONLY") && self.store.locator.follows_failovers() {
            // A demoted primary: refused, so certainly not applied.
            self.broken(live, true);
            return Tried::Retry {
                error: classify(error),
                maybe_sent: false,
            };
        }
        if error.is_timeout() {
            // The client's own response timeout (the store timeout), which can fire in
            // the same tick as the call's deadline and win: a call on the wire may have
            // been applied, as when the deadline fires first. Later calls should not
            // queue behind it on this connection.
            self.broken(live, false);
            return Tried::Failed(classify(error).doubt_if(on_the_wire));
        }
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            self.broken(live, true);
            return Tried::Retry {
                error: classify(error),
                maybe_sent: on_the_wire,
            };
        }
        Tried::Failed(classify(error))
    }

    /// Runs a pipeline that may safely run twice (reads, heartbeats), on a fresh
    /// connection if the one at hand turns out broken.
    pub(super) async fn query<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        answer_by: Instant,
    ) -> Result<T, StoreError> {
        self.attempts(pipe, answer_by, Resend::Always).await
    }

    /// Runs a pipeline that changes something (an administrator's change), whose answer
    /// says what it changed: sent again on a fresh connection only when the attempt
    /// before cannot have reached Redis. An attempt that may have been applied, and whose
    /// answer did not come, ends in an error in doubt. As a visit's write, a change is
    /// done only once the replicas a write waits for have it (`WAIT` after it, on the
    /// same connection): else a failover could take back a change answered as made.
    pub(super) async fn change<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        answer_by: Instant,
    ) -> Result<T, StoreError> {
        self.attempts(pipe, answer_by, Resend::OnlyUnsent).await
    }

    /// Waits, on `connection`, for the replicas a write waits for to have what it
    /// wrote: an error in doubt if they do not confirm it in time.
    async fn replicated(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        answer_by: Instant,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let wanted = match self.add_replication_wait(&mut pipe, Instant::now(), answer_by) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => return Ok(()),
            Err(error) => return Err(error.with_doubt()),
        };
        let reached = match timeout_at(answer_by, pipe.query_async::<(Value,)>(connection)).await {
            Ok(Ok((reply,))) => super::write::replicas_reached(reply).map_err(classify),
            Ok(Err(error)) => Err(classify(error)),
            Err(_) => Err(StoreError::timeout()),
        };
        match reached {
            Ok(reached) if reached >= wanted => Ok(()),
            Ok(reached) => Err(StoreError::new(
                StoreErrorKind::Replication,
                format!("the change reached {reached} of {wanted} replicas in time"),
            )
            .with_doubt()),
            Err(error) => Err(error.with_doubt()),
        }
    }

    async fn attempts<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        answer_by: Instant,
        resend: Resend,
    ) -> Result<T, StoreError> {
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let live = self.live(answer_by).await?;
            let mut connection = live.connection.clone();
            match timeout_at(answer_by, pipe.query_async::<T>(&mut connection)).await {
                Ok(Ok(value)) if resend == Resend::OnlyUnsent => {
                    return self
                        .replicated(&mut connection, answer_by)
                        .await
                        .map(|()| value);
                }
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => match self.failed_attempt::<T>(&live, error, true) {
                    Tried::Retry { error, maybe_sent } => {
                        if maybe_sent && resend == Resend::OnlyUnsent {
                            return Err(error.with_doubt());
                        }
                        last = Some(error);
                    }
                    Tried::Failed(error) => return Err(error),
                    Tried::Done(value) => return Ok(value),
                },
                Err(_) => {
                    self.broken(&live, false);
                    // In doubt: it may have been applied.
                    return Err(StoreError::timeout());
                }
            }
        }
        Err(last.unwrap_or_else(StoreError::timeout))
    }

    /// The connection to use, opened if there is none or the primary has moved.
    pub(super) async fn live(&self, answer_by: Instant) -> Result<Live, StoreError> {
        let locator = &self.store.locator;
        let connecting = loop {
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
                    Some(began) => (began + Deadlines::CONNECT_WAIT).min(answer_by),
                    None => {
                        link.live = None;
                        link.backoff.check(self.connections_opened())?;
                        link.connecting = Some(Instant::now());
                        break Connecting {
                            session: self,
                            generation: locator.generation(),
                        };
                    }
                }
            };
            if timeout_at(wait_until, connected).await.is_err() {
                return Err(StoreError::not_tried(
                    StoreErrorKind::Unreachable,
                    "another call is still connecting",
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
                self.store.connections_opened.fetch_add(1, Ordering::AcqRel);
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
                link.backoff.failed(error.kind(), self.connections_opened());
                if matches!(
                    error.kind(),
                    StoreErrorKind::Unreachable
                        | StoreErrorKind::Timeout
                        | StoreErrorKind::ReadOnly
                ) {
                    locator.distrust(connecting.generation);
                }
                Err(error)
            }
        };
        drop(link);
        drop(connecting);
        result
    }

    fn connections_opened(&self) -> u64 {
        self.store.connections_opened.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects to the primary, loads the scripts, checks the server's role (when
    /// following sentinels), reads its clock, its eviction policy and the data's mark,
    /// and registers the tutorial's counter if only its total is there (`adopt_tutorial`).
    async fn open(&self) -> Result<(MultiplexedConnection, Arc<AtomicBool>, u64), StoreError> {
        let store = &self.store;
        let (info, generation) = store.locator.primary().await?;
        // RESP3, for the notice that the server closed the connection.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(classify)?;
        let closed = Arc::new(AtomicBool::new(false));
        let notice = closed.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(store.timeout))
            .set_response_timeout(Some(store.timeout))
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
        // Before anything is written: the mark's SET is a write.
        self.check_capabilities(&mut connection).await?;
        // Everything a connection needs to know first, in one round trip.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for code in [super::scripts::ADD_VISITS, super::scripts::HEARTBEAT] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(code);
        }
        pipe.cmd("ROLE").cmd("TIME").cmd("INFO").arg("memory");
        let mark = store.dataset.add_check(&store.keys.dataset, &mut pipe);
        pipe.cmd("GET").arg(&store.keys.total);
        let sent = Instant::now();
        let replies: Vec<Value> = pipe.query_async(&mut connection).await.map_err(classify)?;
        let received = Instant::now();
        let [
            load_visits,
            load_heartbeat,
            role,
            time,
            info,
            held,
            tutorial,
        ]: [Value; 7] = replies.try_into().map_err(|_| {
            StoreError::new(StoreErrorKind::Failed, "unexpected reply to the setup")
        })?;
        reply::<String>(load_visits)?;
        reply::<String>(load_heartbeat)?;
        let (secs, micros): (i64, i64) = reply(time)?;
        self.clock
            .observe(secs * 1000 + micros / 1000, sent, received);
        let role: Vec<Value> = reply(role)?;
        let role_name = role
            .first()
            .and_then(|v| String::from_redis_value(v.clone()).ok());
        if store.locator.follows_failovers() && role_name.as_deref() != Some("master") {
            return Err(StoreError::new(
                StoreErrorKind::ReadOnly,
                "the server the sentinels named is not the primary",
            ));
        }
        store.eviction.observe_on_open(reply(info))?;
        match reply(held) {
            Ok(held) => store.dataset.observe(&store.keys.dataset, mark, held),
            // A replica refuses the mark's SET (a fixed address that is not the primary);
            // it refuses writes all the same, and reads are good.
            Err(error) if error.kind() == StoreErrorKind::ReadOnly => {}
            Err(error) => return Err(error),
        }
        self.adopt_tutorial(&mut connection, tutorial).await;
        Ok((connection, closed, generation))
    }

    /// Registers the tutorial's counter when its total (`tutorial`, as read) holds
    /// anything but 0 and the registry may lack it: a Redis that the tutorial's own app
    /// counted in (its `INCR hits`) holds the total alone, and the counter is then listed
    /// and exported before its first visit here (a total that is not a count is listed
    /// with its error, and cuts an export short). A total of 0, which the service's own
    /// start writes, stays unlisted, as on the embedded store. Plain commands, which any
    /// user that may count may run; a refusal (a replica) is left to the listing to find.
    async fn adopt_tutorial(&self, connection: &mut MultiplexedConnection, tutorial: Value) {
        let counted = match tutorial {
            Value::Nil => false,
            Value::BulkString(total) => total != b"0",
            // A key of another type: WRONGTYPE.
            _ => true,
        };
        if counted {
            let store = &self.store;
            let _: redis::RedisResult<Value> = redis::cmd("HSETNX")
                .arg(&store.keys.registry)
                .arg(store.tutorial.as_str())
                .arg("visit")
                .query_async(connection)
                .await;
        }
    }

    /// Refuses a server that cannot honour the settings: one without `WAITAOF` (before
    /// Redis or Valkey 7.2, or with the command renamed away) when writes must wait for
    /// append-only files. Nothing is written to such a server.
    async fn check_capabilities(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), StoreError> {
        if !self.store.wait_aof {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("COMMAND")
            .arg("INFO")
            .arg("WAITAOF")
            .cmd("INFO")
            .arg("server");
        let (waitaof, server): (Vec<Value>, String) =
            pipe.query_async(connection).await.map_err(classify)?;
        if matches!(waitaof.first(), None | Some(Value::Nil)) {
            let version = server
                .lines()
                .find_map(|line| line.strip_prefix("redis_version:"))
                .unwrap_or("unknown")
                .trim();
            return Err(StoreError::new(
                StoreErrorKind::Unsupported,
                format!(
                    "the server (version {version}) has no WAITAOF, which waiting for \
                     append-only files needs (Redis or Valkey 7.2 and later)"
                ),
            ));
        }
        Ok(())
    }

    /// Forgets a connection that failed; `moved` also has the primary's address looked up
    /// again (it may have failed over).
    pub(super) fn broken(&self, live: &Live, moved: bool) {
        let mut link = self.lock();
        if link
            .live
            .as_ref()
            .is_some_and(|current| current.id == live.id)
        {
            link.live = None;
        }
        if moved {
            self.store.locator.distrust(live.generation);
        }
    }
}
