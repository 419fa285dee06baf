//! A short-lived cache of the store's snapshot, so that many open pages polling
//! `/api/stats` cost the store one read per interval, not one per poll.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::store::{Snapshot, Store, StoreError};

/// How long a snapshot is served before the store is asked again.
pub const STATS_TTL: Duration = Duration::from_millis(500);

pub struct StatsCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, Snapshot)>>,
}

impl StatsCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: Mutex::new(None),
        }
    }

    /// A snapshot at most `ttl` old. Concurrent callers wait on the one read in progress
    /// (the lock is held across it) rather than each reading the store.
    pub async fn get(&self, store: &Store, timeout: Duration) -> Result<Snapshot, StoreError> {
        let mut last = self.last.lock().await;
        if let Some((at, snapshot)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(snapshot.clone());
        }
        let snapshot = store.snapshot(timeout).await?;
        *last = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }
}
