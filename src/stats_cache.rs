//! A short-lived cache of the store's snapshot, so that many open pages polling
//! `/api/stats` cost the store one read per interval, not one per poll, and answer at once
//! while the store is slow.

use std::time::Duration;

use tokio::time::Instant;

use crate::store::{Snapshot, StoreError, WorkerStore};

/// How long a snapshot (or a failure to read one) is served before the store is asked
/// again.
pub const STATS_TTL: Duration = Duration::from_millis(500);

/// What `/api/stats` answers with.
#[derive(Debug, Clone)]
pub struct Reading {
    pub snapshot: Snapshot,
    /// True when a newer read is under way and this is the last one that succeeded.
    pub stale: bool,
}

pub struct StatsCache {
    ttl: Duration,
    last: std::sync::Mutex<Last>,
    /// Held by the one caller that reads the store; the others do not queue behind it.
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Last {
    /// The last read's outcome and when it ended.
    outcome: Option<(Instant, Result<Snapshot, StoreError>)>,
    /// The last snapshot read successfully.
    good: Option<Snapshot>,
}

impl StatsCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: std::sync::Mutex::new(Last::default()),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// A snapshot at most `ttl` old, or the failure of a read at most `ttl` ago. While a
    /// read is under way, other callers get the last good snapshot marked stale at once,
    /// or, when there is none, wait for the read; a read takes at most `read_timeout`.
    pub async fn get(
        &self,
        store: &WorkerStore,
        read_timeout: Duration,
    ) -> Result<Reading, StoreError> {
        if let Some(recent) = self.recent() {
            return recent;
        }
        let reading = match self.reading.try_lock() {
            Ok(reading) => reading,
            Err(_) => {
                if let Some(snapshot) = self.lock().good.clone() {
                    return Ok(Reading {
                        snapshot,
                        stale: true,
                    });
                }
                let waited = tokio::time::timeout(read_timeout, self.reading.lock()).await;
                drop(waited);
                return self.recent().unwrap_or_else(|| Err(StoreError::timeout()));
            }
        };
        // Another caller may have read the store while this one took the lock.
        if let Some(recent) = self.recent() {
            return recent;
        }
        let outcome = store.snapshot(read_timeout).await;
        {
            let mut last = self.lock();
            if let Ok(snapshot) = &outcome {
                last.good = Some(snapshot.clone());
            }
            last.outcome = Some((Instant::now(), outcome.clone()));
        }
        drop(reading);
        outcome.map(|snapshot| Reading {
            snapshot,
            stale: false,
        })
    }

    fn recent(&self) -> Option<Result<Reading, StoreError>> {
        let last = self.lock();
        let (at, outcome) = last.outcome.as_ref()?;
        (at.elapsed() < self.ttl).then(|| {
            outcome.clone().map(|snapshot| Reading {
                snapshot,
                stale: false,
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}
