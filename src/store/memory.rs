//! A store in memory, for tests of the HTTP layer (`routes::tests`): the same interface
//! with nothing to start. Its counts are gone with the process.

use std::{collections::BTreeMap, sync::Mutex};

use super::{Identity, ReplicaStats, Snapshot, StoreError, StoreErrorKind};

pub struct MemoryStore {
    identity: Identity,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: i64,
    replicas: BTreeMap<String, i64>,
}

impl MemoryStore {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Starts the total at `total`, as a store with history would.
    pub fn with_total(identity: Identity, total: i64) -> Self {
        let store = Self::new(identity);
        store.lock().total = total;
        store
    }

    pub fn add_visits(&self, count: u64) -> Result<i64, StoreError> {
        let mut counts = self.lock();
        let total = i64::try_from(count)
            .ok()
            .and_then(|count| counts.total.checked_add(count))
            .ok_or_else(|| StoreError::new(StoreErrorKind::Limit, "the total is at its maximum"))?;
        counts.total = total;
        *counts
            .replicas
            .entry(self.identity.replica.clone())
            .or_default() += count as i64;
        Ok(total)
    }

    pub fn snapshot(&self) -> Snapshot {
        let counts = self.lock();
        let mut replicas: BTreeMap<&str, ReplicaStats> = counts
            .replicas
            .iter()
            .map(|(name, visits)| {
                let stats = ReplicaStats {
                    visits: *visits,
                    ..ReplicaStats::new(name.clone())
                };
                (name.as_str(), stats)
            })
            .collect();
        let me = replicas
            .entry(&self.identity.replica)
            .or_insert_with(|| ReplicaStats::new(self.identity.replica.clone()));
        me.alive = true;
        me.version = Some(self.identity.version.clone());
        Snapshot {
            total: counts.total,
            replicas: replicas.into_values().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}
