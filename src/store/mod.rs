//! The counter stores: Redis for a stack of replicas, an embedded database for one
//! process, and an in-memory store for tests of the HTTP layer.
//!
//! All keep the same three things: the total (`hits`), visits per replica, and which
//! replicas are alive. The `Store` is opened once at start; each worker thread takes a
//! `WorkerStore` of its own from it (`for_worker`): the same data, with a Redis session
//! of its own. Every call is bounded by a deadline, so a store that hangs turns into a
//! fast 503 instead of a hung request.

mod backoff;
mod embedded;
mod error;
mod memory;
pub mod redis;

use std::{future::Future, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::{
    embedded::EmbeddedStore,
    error::{StoreError, StoreErrorKind},
    memory::MemoryStore,
    redis::{RedisSession, RedisStore},
};
use crate::{
    config::StoreSettings,
    counters::{
        CounterName, CounterPolicy, CounterReading, Tally, TallyResult, export::CounterExport,
    },
    deadlines::Deadlines,
};

/// A replica counts as alive while its last heartbeat is at most this old.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(3);

/// Writes under way at once against Redis, per worker thread: one on the wire while the
/// next batch gathers, and one more so that a batch need not wait for the previous
/// answer. Redis answers them in the order they were sent.
const REDIS_WRITES_IN_FLIGHT: usize = 2;
/// Writes under way at once against the embedded store, per worker thread. Its writer
/// thread merges whatever waits into its next commit, so more in flight means fewer
/// visits waiting for a slot, not more fsyncs.
const EMBEDDED_WRITES_IN_FLIGHT: usize = 16;

/// Who is counting: the key of the total, this replica's name and version.
#[derive(Debug, Clone)]
pub struct Identity {
    pub counter_key: String,
    pub replica: String,
    pub version: String,
}

impl Identity {
    /// The tutorial's counter: the one the counter key names.
    pub fn tutorial(&self) -> CounterName {
        CounterName::of_key(&self.counter_key)
    }
}

/// What a store knows about the visits, as reported by `/api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub total: i64,
    pub replicas: Vec<ReplicaStats>,
}

/// One replica's share of the visits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStats {
    pub name: String,
    pub visits: i64,
    pub alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl ReplicaStats {
    /// A replica with no visits yet, not alive.
    pub fn new(name: String) -> Self {
        Self {
            name,
            visits: 0,
            alive: false,
            version: None,
        }
    }
}

/// Why an administrator's change was not made.
#[derive(Debug)]
pub enum AdminError {
    /// A new counter, and there are as many as allowed.
    TooMany,
    /// Redis's registry of counters holds a value of another type: no change can be made
    /// until it is fixed in Redis.
    Registry,
    Store(StoreError),
}

/// Why a page of counters was not listed.
#[derive(Debug)]
pub enum ListError {
    /// The cursor is not one a listing gave.
    BadCursor,
    Store(StoreError),
}

impl From<StoreError> for ListError {
    fn from(error: StoreError) -> Self {
        ListError::Store(error)
    }
}

/// A page of counters with their totals (or why one could not be read), and the cursor
/// of the next page, if there is one.
pub type CounterPage = (Vec<(CounterName, Result<i64, StoreError>)>, Option<String>);

/// A counter's total before the administrator set it or deleted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// There was no such counter: setting its total made it; deleting it found nothing.
    Absent,
    Total(i64),
    /// There was such a counter, but its total was not a number (changed by hand).
    Unreadable,
}

impl From<Option<i64>> for Previous {
    fn from(total: Option<i64>) -> Self {
        total.map_or(Previous::Absent, Previous::Total)
    }
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        AdminError::Store(error)
    }
}

/// The store chosen by configuration, opened once and shared by the workers.
pub enum Store {
    Redis(Arc<RedisStore>),
    /// One database and writer thread, however many workers share it.
    Embedded(Arc<EmbeddedStore>),
    Memory(Arc<MemoryStore>),
}

impl Store {
    /// Opens the configured store. Redis is not contacted yet: the service starts and
    /// reports not-ready while Redis is still coming up.
    pub fn open(
        settings: &StoreSettings,
        identity: &Identity,
        policy: CounterPolicy,
        deadlines: &Deadlines,
    ) -> Result<Self, StoreError> {
        Ok(match settings {
            StoreSettings::Redis(redis) => Store::Redis(Arc::new(RedisStore::new(
                redis,
                identity,
                policy,
                deadlines.store,
            )?)),
            StoreSettings::Embedded { data_dir } => Store::Embedded(Arc::new(EmbeddedStore::open(
                data_dir,
                identity,
                policy,
                deadlines.commit_grace(),
            )?)),
        })
    }

    /// Checks, where it can within `timeout`, that the store accepts the configuration: a
    /// Redis that answers but lacks a feature the settings need, or has no database of
    /// the number the URL names. Such an error is one no restart mends; a store that does
    /// not answer yet is none of them (the service starts, not ready).
    pub async fn check_configuration(&self, timeout: Duration) -> Result<(), StoreError> {
        let Store::Redis(redis) = self else {
            return Ok(());
        };
        let probe = redis.session();
        match probe.ready(Instant::now() + timeout).await {
            Err(error)
                if matches!(
                    error.kind(),
                    StoreErrorKind::Unsupported | StoreErrorKind::NoDatabase
                ) =>
            {
                Err(error)
            }
            _ => Ok(()),
        }
    }

    /// A handle for one worker thread: the same data, with a Redis session of its own
    /// whose tasks run on the runtime it is first used on.
    pub fn for_worker(&self) -> WorkerStore {
        match self {
            Store::Redis(s) => WorkerStore::Redis(Box::new(s.session())),
            Store::Embedded(s) => WorkerStore::Embedded(s.clone()),
            Store::Memory(s) => WorkerStore::Memory(s.clone()),
        }
    }

    /// Short name for logs and readiness answers.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Embedded(_) => "embedded",
            Store::Memory(_) => "memory",
        }
    }

    /// How many writes one worker may have under way at once.
    pub fn writes_in_flight(&self) -> usize {
        match self {
            Store::Redis(_) => REDIS_WRITES_IN_FLIGHT,
            Store::Embedded(_) => EMBEDDED_WRITES_IN_FLIGHT,
            Store::Memory(_) => 1,
        }
    }

    /// Resolves when the store cannot go on and the process should exit to be replaced;
    /// never for stores that recover by themselves.
    pub async fn gave_up(&self) {
        match self {
            Store::Embedded(s) => s.gave_up().await,
            _ => std::future::pending().await,
        }
    }

    /// Follows Redis failovers announced by the sentinels until `stop`; returns at once
    /// for the other stores and for a single Redis.
    pub async fn follow_failovers(&self, stop: CancellationToken) {
        if let Store::Redis(s) = self {
            s.follow_failovers(stop).await;
        }
    }
}

/// One worker's handle on the store.
pub enum WorkerStore {
    Redis(Box<RedisSession>),
    Embedded(Arc<EmbeddedStore>),
    Memory(Arc<MemoryStore>),
}

impl WorkerStore {
    /// Short name for logs and readiness answers.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerStore::Redis(_) => "redis",
            WorkerStore::Embedded(_) => "embedded",
            WorkerStore::Memory(_) => "memory",
        }
    }

    /// Whether a total below zero can be held: Redis's totals are `INCR`'s signed
    /// integers (a total set below zero by hand counts up through it), the other stores
    /// count from zero.
    pub fn holds_totals_below_zero(&self) -> bool {
        matches!(self, WorkerStore::Redis(_))
    }

    /// Answers when the store could count a visit now.
    pub async fn ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                WorkerStore::Redis(s) => s.ready(by).await,
                WorkerStore::Embedded(s) => s.ready(timeout).await,
                WorkerStore::Memory(_) => Ok(()),
            }
        })
        .await
    }

    /// Totals, visits per replica and liveness.
    pub async fn snapshot(&self, timeout: Duration) -> Result<Snapshot, StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                WorkerStore::Redis(s) => s.snapshot(by).await,
                WorkerStore::Embedded(s) => s.snapshot().await,
                WorkerStore::Memory(s) => Ok(s.snapshot()),
            }
        })
        .await
    }

    /// A counter's total and its last `days` days (today last); `None` when there is no
    /// such counter. The tutorial's counter always is.
    pub async fn counter(
        &self,
        name: &CounterName,
        days: u32,
        timeout: Duration,
    ) -> Result<Option<CounterReading>, StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                WorkerStore::Redis(s) => s.counter(name, days, by).await,
                WorkerStore::Embedded(s) => s.counter(name, days).await,
                WorkerStore::Memory(s) => Ok(s.counter(name, days)),
            }
        })
        .await
    }

    /// Sets a counter's total (the administrator's), making the counter if there is none;
    /// what it was before.
    pub async fn set_total(
        &self,
        name: &CounterName,
        total: i64,
        timeout: Duration,
    ) -> Result<Previous, AdminError> {
        let by = Instant::now() + timeout;
        let change = async {
            match self {
                WorkerStore::Redis(s) => s.set_total(name, total, by).await,
                WorkerStore::Embedded(s) => s.set_total(name, total).await.map(Previous::from),
                WorkerStore::Memory(s) => s.set_total(name, total).map(Previous::from),
            }
        };
        tokio::time::timeout_at(by, change)
            .await
            .unwrap_or_else(|_| Err(StoreError::timeout().with_doubt().into()))
    }

    /// Deletes a counter with its history; whether there was one.
    pub async fn delete(
        &self,
        name: &CounterName,
        timeout: Duration,
    ) -> Result<Previous, AdminError> {
        let by = Instant::now() + timeout;
        let change = async {
            match self {
                WorkerStore::Redis(s) => s.delete(name, by).await,
                WorkerStore::Embedded(s) => s.delete(name).await.map_err(AdminError::Store),
                WorkerStore::Memory(s) => Ok(s.delete(name).into()),
            }
        };
        tokio::time::timeout_at(by, change)
            .await
            .unwrap_or_else(|_| Err(AdminError::Store(StoreError::timeout())))
    }

    /// A page of counters with their totals, from `cursor` (`None`: the first); the
    /// cursor of the next page, if there is one. Each store has its own order.
    pub async fn list(
        &self,
        cursor: Option<String>,
        timeout: Duration,
    ) -> Result<CounterPage, ListError> {
        const PAGE: usize = 200;
        let by = Instant::now() + timeout;
        let listed = async {
            match self {
                WorkerStore::Redis(s) => {
                    // HSCAN's cursor: a number the last page gave.
                    let cursor = match cursor {
                        None => 0,
                        Some(cursor) => cursor.parse().map_err(|_| ListError::BadCursor)?,
                    };
                    let (names, next) = s.list(cursor, by).await?;
                    let totals = s.totals(&names, by).await?;
                    Ok((names.into_iter().zip(totals).collect(), next))
                }
                WorkerStore::Embedded(s) => {
                    // The last name of the page before.
                    if let Some(cursor) = &cursor {
                        CounterName::parse(cursor).map_err(|_| ListError::BadCursor)?;
                    }
                    let page = s.list(cursor, PAGE).await?;
                    let next = (page.len() == PAGE)
                        .then(|| page.last().map(|(name, _)| name.to_string()))
                        .flatten();
                    Ok((page.into_iter().map(|(n, t)| (n, Ok(t))).collect(), next))
                }
                WorkerStore::Memory(s) => Ok((
                    s.list().into_iter().map(|(n, t)| (n, Ok(t))).collect(),
                    None,
                )),
            }
        };
        tokio::time::timeout_at(by, listed)
            .await
            .unwrap_or_else(|_| Err(ListError::Store(StoreError::timeout())))
    }

    /// Everything a counter holds, for export; `None` when there is no such counter.
    pub async fn export(
        &self,
        name: &CounterName,
        timeout: Duration,
    ) -> Result<Option<CounterExport>, StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                WorkerStore::Redis(s) => s.export(name, by).await,
                WorkerStore::Embedded(s) => s.export(name).await,
                WorkerStore::Memory(s) => Ok(s.export(name)),
            }
        })
        .await
    }

    /// Writes an exported counter (the administrator's) under `name`.
    pub async fn import(
        &self,
        name: &CounterName,
        counter: CounterExport,
        timeout: Duration,
    ) -> Result<(), AdminError> {
        let by = Instant::now() + timeout;
        let change = async {
            match self {
                WorkerStore::Redis(s) => s.import(&counter, name, by).await,
                WorkerStore::Embedded(s) => s.import(name, counter).await,
                WorkerStore::Memory(s) => s.import(name, &counter),
            }
        };
        tokio::time::timeout_at(by, change)
            .await
            .unwrap_or_else(|_| Err(StoreError::timeout().with_doubt().into()))
    }

    /// Marks this replica alive (and records its version) for `ALIVE_WINDOW`; returns
    /// the total, if there is one.
    pub async fn heartbeat(&self, timeout: Duration) -> Result<Option<i64>, StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                WorkerStore::Redis(s) => s.heartbeat(by).await,
                WorkerStore::Embedded(s) => s.total().await.map(Some),
                WorkerStore::Memory(s) => Ok(Some(s.snapshot().total)),
            }
        })
        .await
    }

    /// Removes this replica from the alive set, so pages stop showing it at once.
    pub async fn depart(&self, timeout: Duration) -> Result<(), StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                WorkerStore::Redis(s) => s.depart(by).await,
                WorkerStore::Embedded(_) | WorkerStore::Memory(_) => Ok(()),
            }
        })
        .await
    }

    /// Counts every tally in one atomic step and returns what became of each, by
    /// `answer_by`. An error that is not `in_doubt` means nothing was applied, nor will be.
    pub async fn add_visits(
        &self,
        tallies: &[Tally],
        answer_by: Instant,
    ) -> Result<Vec<TallyResult>, StoreError> {
        match self {
            WorkerStore::Redis(s) => s.add_visits(tallies, answer_by).await,
            WorkerStore::Embedded(s) => s.add_visits(tallies, answer_by).await,
            WorkerStore::Memory(s) => Ok(s.add_visits(tallies)),
        }
    }
}

/// Runs a call that may be abandoned (a read, a ping): past `by` it is dropped.
async fn bounded<T>(
    by: Instant,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout_at(by, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::timeout()))
}
