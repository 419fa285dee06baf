//! The state every handler shares.

use std::{ops::Deref, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::{counter::VisitCounter, stats::StatsCache, store::Store};

/// Cloned into each handler: one reference count, however many parts it holds.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub counter: VisitCounter,
    pub store: Arc<Store>,
    /// Shared by all workers, so the store is read once per interval in all.
    pub stats: Arc<StatsCache>,
    pub metrics: PrometheusHandle,
    pub replica: String,
    pub version: String,
    /// Bound on readiness pings and stats reads.
    pub store_timeout: Duration,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
