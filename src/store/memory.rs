//! A store in memory, for tests of the HTTP layer (`routes::tests`): the same interface
//! with nothing to start. Its counts are gone with the process.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use super::{AdminError, Identity, ReplicaStats, Snapshot};
use crate::counters::{
    CounterName, CounterPolicy, CounterReading, Day, DayReading, Tally, TallyResult,
    export::CounterExport, sketch::Sketch,
};

pub struct MemoryStore {
    identity: Identity,
    policy: CounterPolicy,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    totals: HashMap<CounterName, i64>,
    replicas: BTreeMap<String, i64>,
    days: HashMap<(CounterName, Day), u64>,
    uniques: HashMap<(CounterName, Day), Sketch>,
}

impl MemoryStore {
    pub fn new(identity: Identity, policy: CounterPolicy) -> Self {
        Self {
            identity,
            policy,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Starts the tutorial counter's total at `total`, as a store with history would.
    pub fn with_total(identity: Identity, policy: CounterPolicy, total: i64) -> Self {
        let store = Self::new(identity, policy);
        let tutorial = store.identity.tutorial();
        store.lock().totals.insert(tutorial, total);
        store
    }

    pub fn add_visits(&self, tallies: &[Tally]) -> Vec<TallyResult> {
        let tutorial = self.identity.tutorial();
        let day = Day::today();
        let mut counts = self.lock();
        tallies
            .iter()
            .map(|tally| {
                let is_tutorial = tally.counter == tutorial;
                let known = counts.totals.contains_key(&tally.counter);
                if !known && !is_tutorial {
                    if self.policy.closed {
                        return TallyResult::Unknown;
                    }
                    if counts.totals.len() as u64 >= self.policy.max_counters {
                        return TallyResult::TooMany;
                    }
                }
                let before = counts.totals.get(&tally.counter).copied().unwrap_or(0);
                let Some(total) = before.checked_add(tally.visits as i64) else {
                    return TallyResult::AtLimit;
                };
                counts.totals.insert(tally.counter.clone(), total);
                if is_tutorial {
                    *counts
                        .replicas
                        .entry(self.identity.replica.clone())
                        .or_default() += tally.visits as i64;
                }
                let key = (tally.counter.clone(), day);
                *counts.days.entry(key.clone()).or_default() += tally.visits;
                let sketch = counts.uniques.entry(key).or_default();
                for &visitor in &tally.visitors {
                    sketch.add(visitor);
                }
                TallyResult::Counted(total)
            })
            .collect()
    }

    pub fn counter(&self, name: &CounterName, days: u32) -> Option<CounterReading> {
        let mut counts = self.lock();
        let total = *counts.totals.get(name)?;
        let today = Day::today();
        let days = (0..days.max(1))
            .rev()
            .map(|ago| {
                let key = (name.clone(), today.minus(ago));
                DayReading::new(
                    key.1.to_string(),
                    counts.days.get(&key).copied().unwrap_or(0),
                    counts.uniques.get_mut(&key).map_or(0, Sketch::count),
                )
            })
            .collect();
        Some(CounterReading { total, days })
    }

    pub fn set_total(&self, name: &CounterName, total: i64) -> Result<Option<i64>, AdminError> {
        let mut counts = self.lock();
        if !counts.totals.contains_key(name)
            && counts.totals.len() as u64 >= self.policy.max_counters
        {
            return Err(AdminError::TooMany);
        }
        Ok(counts.totals.insert(name.clone(), total))
    }

    /// Deletes a counter; returns its total, if there was one.
    pub fn delete(&self, name: &CounterName) -> Option<i64> {
        let mut counts = self.lock();
        counts.days.retain(|(counter, _), _| counter != name);
        counts.uniques.retain(|(counter, _), _| counter != name);
        counts.totals.remove(name)
    }

    pub fn list(&self) -> Vec<(CounterName, i64)> {
        let mut page: Vec<_> = self
            .lock()
            .totals
            .iter()
            .map(|(name, total)| (name.clone(), *total))
            .collect();
        page.sort();
        page
    }

    pub fn export(&self, name: &CounterName) -> Option<CounterExport> {
        let counts = self.lock();
        let total = *counts.totals.get(name)?;
        let days = counts
            .days
            .iter()
            .filter(|((counter, _), _)| counter == name)
            .map(|((_, day), visits)| (day.to_string(), *visits))
            .collect();
        Some(CounterExport {
            name: name.to_string(),
            total,
            days,
            unique: Default::default(),
        })
    }

    pub fn import(&self, name: &CounterName, counter: &CounterExport) -> Result<(), AdminError> {
        self.set_total(name, counter.total)?;
        let mut counts = self.lock();
        for (day, visits) in &counter.days {
            if let Some(day) = Day::parse(day) {
                counts.days.insert((name.clone(), day), *visits);
            }
        }
        Ok(())
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
            total: counts
                .totals
                .get(&self.identity.tutorial())
                .copied()
                .unwrap_or(0),
            replicas: replicas.into_values().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}
