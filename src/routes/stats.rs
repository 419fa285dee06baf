//! `GET /api/stats`: the total, visits per replica, which replicas are alive, and who
//! answered. Reading it never counts a visit.

use axum::{Json, extract::State};
use serde::Serialize;

use super::ApiError;
use crate::{state::AppState, store::ReplicaStats};

#[derive(Debug, Serialize)]
pub struct Stats {
    pub total: i64,
    pub replicas: Vec<ReplicaStats>,
    pub replica: String,
    pub version: String,
    /// True when the store is slow to answer and this is the last reading that succeeded.
    pub stale: bool,
}

pub async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let reading = state
        .stats
        .get(&state.store, state.deadlines.stats_read())
        .await
        .map_err(|error| {
            tracing::warn!(
                reason = error.code(),
                cause = error.detail(),
                "stats read failed"
            );
            ApiError::store_failed(&error)
        })?;
    Ok(Json(Stats {
        total: reading.snapshot.total,
        replicas: reading.snapshot.replicas,
        replica: state.replica.clone(),
        version: state.version.clone(),
        stale: reading.stale,
    }))
}
