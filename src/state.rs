//! The state every handler shares.

use std::{sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::{counter::VisitCounter, stats::StatsCache, store::Store};

/// Cloned into each handler; everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    pub counter: VisitCounter,
    pub store: Arc<Store>,
    pub stats: Arc<StatsCache>,
    pub metrics: PrometheusHandle,
    pub replica: Arc<str>,
    pub version: Arc<str>,
    /// Bound on readiness pings and stats reads.
    pub store_timeout: Duration,
}
