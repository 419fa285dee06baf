//! The counter stores: Redis for a stack of replicas, an embedded database for one
//! process, and an in-memory store for tests of the HTTP layer.
//!
//! All keep the same three things: the total (`hits`), visits per replica, and which
//! replicas are alive. `SharedStore` is opened once at start; each worker thread takes a
//! `Store` of its own from it (`for_worker`). Every call is bounded by a deadline, so a
//! store that hangs turns into a fast 503 instead of a hung request.

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
    redis::{RedisConnection, RedisStore},
};
use crate::{config::StoreSettings, counter::BatchOptions, deadlines::Deadlines};

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

/// Where visits are recorded. The visit batcher is generic over this so that its logic
/// can be tested on its own.
pub trait VisitLog: Send + Sync + 'static {
    /// Adds `count` visits in one atomic step and returns the total after them. Should
    /// answer by `answer_by`; an error that is not `in_doubt` means nothing was applied,
    /// nor will be.
    fn add_visits(
        &self,
        count: u64,
        answer_by: Instant,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
}

/// The store chosen by configuration, opened once and shared by the workers.
pub enum SharedStore {
    Redis(RedisStore),
    /// One database and writer thread, however many workers share it.
    Embedded(Arc<EmbeddedStore>),
    Memory(Arc<MemoryStore>),
}

impl SharedStore {
    /// Opens the configured store. Redis is not contacted yet: the service starts and
    /// reports not-ready while Redis is still coming up.
    pub fn open(
        settings: &StoreSettings,
        identity: &Identity,
        deadlines: &Deadlines,
    ) -> Result<Self, StoreError> {
        Ok(match settings {
            StoreSettings::Redis(redis) => {
                SharedStore::Redis(RedisStore::new(redis, identity, deadlines.store)?)
            }
            StoreSettings::Embedded { data_dir } => {
                SharedStore::Embedded(Arc::new(EmbeddedStore::open(data_dir, identity)?))
            }
        })
    }

    /// A handle for one worker thread: the same data, with a Redis connection of its own
    /// whose tasks run on the runtime it is first used on.
    pub fn for_worker(&self) -> Store {
        match self {
            SharedStore::Redis(s) => Store::Redis(Box::new(s.connect())),
            SharedStore::Embedded(s) => Store::Embedded(s.clone()),
            SharedStore::Memory(s) => Store::Memory(s.clone()),
        }
    }

    /// Short name for logs and readiness answers.
    pub fn kind(&self) -> &'static str {
        match self {
            SharedStore::Redis(_) => "redis",
            SharedStore::Embedded(_) => "embedded",
            SharedStore::Memory(_) => "memory",
        }
    }

    /// How the visit batcher should use this store.
    pub fn batch_options(&self, deadlines: &Deadlines) -> BatchOptions {
        let mut options = BatchOptions::new(deadlines);
        options.max_in_flight = match self {
            SharedStore::Redis(_) => REDIS_WRITES_IN_FLIGHT,
            SharedStore::Embedded(_) => EMBEDDED_WRITES_IN_FLIGHT,
            SharedStore::Memory(_) => 1,
        };
        options
    }

    /// Resolves when the store cannot go on and the process should exit to be replaced;
    /// never for stores that recover by themselves.
    pub async fn gave_up(&self) {
        match self {
            SharedStore::Embedded(s) => s.gave_up().await,
            _ => std::future::pending().await,
        }
    }

    /// Background work the store needs until `stop`: following Redis failovers.
    pub async fn maintain(&self, stop: CancellationToken) {
        if let SharedStore::Redis(s) = self {
            s.watch_failovers(stop).await;
        }
    }
}

/// One worker's handle on the store.
pub enum Store {
    Redis(Box<RedisConnection>),
    Embedded(Arc<EmbeddedStore>),
    Memory(Arc<MemoryStore>),
}

impl Store {
    /// Short name for logs and readiness answers.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Embedded(_) => "embedded",
            Store::Memory(_) => "memory",
        }
    }

    /// Answers when the store could count a visit now.
    pub async fn ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                Store::Redis(s) => s.ready(by).await,
                Store::Embedded(s) => s.ready(timeout).await,
                Store::Memory(_) => Ok(()),
            }
        })
        .await
    }

    /// Totals, visits per replica and liveness.
    pub async fn snapshot(&self, timeout: Duration) -> Result<Snapshot, StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                Store::Redis(s) => s.snapshot(by).await,
                Store::Embedded(s) => s.snapshot().await,
                Store::Memory(s) => Ok(s.snapshot()),
            }
        })
        .await
    }

    /// Marks this replica alive (and records its version) for `ALIVE_WINDOW`; returns
    /// the total, if there is one.
    pub async fn heartbeat(&self, timeout: Duration) -> Result<Option<i64>, StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                Store::Redis(s) => s.heartbeat(by).await,
                Store::Embedded(s) => s.total().await.map(Some),
                Store::Memory(s) => Ok(Some(s.snapshot().total)),
            }
        })
        .await
    }

    /// Removes this replica from the alive set, so pages stop showing it at once.
    pub async fn depart(&self, timeout: Duration) -> Result<(), StoreError> {
        let by = Instant::now() + timeout;
        bounded(by, async {
            match self {
                Store::Redis(s) => s.depart(by).await,
                Store::Embedded(_) | Store::Memory(_) => Ok(()),
            }
        })
        .await
    }
}

impl VisitLog for Store {
    async fn add_visits(&self, count: u64, answer_by: Instant) -> Result<i64, StoreError> {
        match self {
            Store::Redis(s) => s.add_visits(count, answer_by).await,
            Store::Embedded(s) => s.add_visits(count, answer_by).await,
            Store::Memory(s) => s.add_visits(count),
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
