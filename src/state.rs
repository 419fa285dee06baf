//! The state every handler of one worker shares.

use std::{
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    counter::VisitCounter, counters::CounterRules, deadlines::Deadlines, stats_cache::StatsCache,
    store::WorkerStore, telemetry::RequestLog,
};

/// Cloned into each handler: one reference count, however many parts it holds.
#[derive(Clone)]
pub struct AppState(Arc<StateParts>);

/// What a worker's handlers use: its counter and store handle, and what all workers
/// share.
pub struct StateParts {
    pub counter: VisitCounter,
    /// This worker's handle on the store, shared with its counter.
    pub store: Arc<WorkerStore>,
    /// Shared by all workers, so the store is read once per interval in all.
    pub stats: Arc<StatsCache>,
    pub metrics: PrometheusHandle,
    pub replica: String,
    pub version: String,
    pub deadlines: Deadlines,
    /// Shared by all workers: whether the service has been ready since it started.
    pub was_ready: Arc<WasReady>,
    /// Shared by all workers: the tutorial's counter, limits, who may administer.
    pub counters: Arc<CounterRules>,
    /// This worker's buffer of request lines, when they have a writer of their own.
    pub request_log: Option<Arc<RequestLog>>,
}

impl AppState {
    pub fn new(parts: StateParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl Deref for AppState {
    type Target = StateParts;

    fn deref(&self) -> &StateParts {
        &self.0
    }
}

/// Set the first time the service reports itself ready; the container health check tells
/// a store outage (ready before) from a replica that never could count.
#[derive(Debug, Default)]
pub struct WasReady(AtomicBool);

impl WasReady {
    pub fn mark(&self) {
        // Read first: every visit marks it, and a store would take the line from the
        // other workers' caches each time.
        if !self.0.load(Ordering::Relaxed) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
