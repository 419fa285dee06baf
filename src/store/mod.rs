//! The counter stores: Redis for a stack of replicas, an embedded database for one process.
//!
//! Both keep the same three things: the total (`hits`), visits per replica, and which
//! replicas are alive. Every call is bounded by the store timeout, so a store that hangs
//! turns into a fast 503 instead of a hung request.

mod backoff;
mod embedded;
mod error;
pub mod redis;

use std::{future::Future, sync::Arc, time::Duration};

use serde::Serialize;

pub use self::{
    embedded::EmbeddedStore,
    error::{StoreError, StoreErrorKind},
    redis::RedisStore,
};

/// A replica counts as alive while its last heartbeat is at most this old.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(3);

/// What a store knows about the visits, as reported by `/api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub total: u64,
    pub replicas: Vec<ReplicaStats>,
}

/// One replica's share of the visits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStats {
    pub name: String,
    pub visits: u64,
    pub alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Where visits are recorded. The visit batcher is generic over this so that its logic
/// can be tested on its own.
pub trait VisitLog: Send + Sync + 'static {
    /// Adds `count` visits for this replica in one atomic step and returns the new total.
    fn add_visits(&self, count: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The store chosen by configuration.
pub enum Store {
    Redis(Box<RedisStore>),
    /// One database and writer thread, however many handles share it.
    Embedded(Arc<EmbeddedStore>),
}

impl Store {
    /// A handle for one runtime thread: the same data, with a Redis connection of its own
    /// whose tasks run on the runtime this is called on.
    pub fn for_worker(&self) -> Result<Store, StoreError> {
        Ok(match self {
            Store::Redis(s) => Store::Redis(Box::new(s.another_connection()?)),
            Store::Embedded(s) => Store::Embedded(s.clone()),
        })
    }

    /// Short name for logs and readiness answers.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Embedded(_) => "embedded",
        }
    }

    /// Answers when the store can serve requests.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        bounded(timeout, async {
            match self {
                Store::Redis(s) => s.ping().await,
                Store::Embedded(s) => s.ping().await,
            }
        })
        .await
    }

    /// Totals, visits per replica and liveness.
    pub async fn snapshot(&self, timeout: Duration) -> Result<Snapshot, StoreError> {
        bounded(timeout, async {
            match self {
                Store::Redis(s) => s.snapshot().await,
                Store::Embedded(s) => s.snapshot().await,
            }
        })
        .await
    }

    /// Marks this replica alive (and records its version) for `ALIVE_WINDOW`.
    pub async fn heartbeat(&self, timeout: Duration) -> Result<(), StoreError> {
        bounded(timeout, async {
            match self {
                Store::Redis(s) => s.heartbeat().await,
                Store::Embedded(_) => Ok(()),
            }
        })
        .await
    }

    /// Removes this replica from the alive set, so pages stop showing it at once.
    pub async fn depart(&self, timeout: Duration) -> Result<(), StoreError> {
        bounded(timeout, async {
            match self {
                Store::Redis(s) => s.depart().await,
                Store::Embedded(_) => Ok(()),
            }
        })
        .await
    }
}

impl VisitLog for Store {
    async fn add_visits(&self, count: u64) -> Result<u64, StoreError> {
        match self {
            Store::Redis(s) => s.add_visits(count).await,
            Store::Embedded(s) => s.add_visits(count).await,
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::timeout()))
}
