//! `GET /api/stats`: the total, visits per replica, which replicas are alive, and who
//! answered. Reading it never counts a visit.

use axum::{Json, extract::State};
use serde::Serialize;

use super::ApiError;
use crate::{state::AppState, store::ReplicaStats};

#[derive(Debug, Serialize)]
pub struct Stats {
    pub total: u64,
    pub replicas: Vec<ReplicaStats>,
    pub replica: String,
    pub version: String,
}

pub async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let snapshot = state
        .stats
        .get(&state.store, state.store_timeout)
        .await
        .map_err(|error| {
            tracing::warn!(cause = error.detail(), "stats read failed");
            ApiError::Unavailable(error.reason())
        })?;
    Ok(Json(Stats {
        total: snapshot.total,
        replicas: snapshot.replicas,
        replica: state.replica.to_string(),
        version: state.version.to_string(),
    }))
}
