//! Liveness and readiness. Liveness touches nothing; readiness asks the store whether a
//! visit could be counted now.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn live() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the store could count a visit now, 503 with a short reason and
/// its code when not. `was_ready` tells the container health check whether this replica
/// has been ready since it started: answered a readiness probe 200, or counted a visit.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.kind();
    match state.store.ready(state.deadlines.store).await {
        Ok(()) => {
            state.was_ready.mark();
            (
                StatusCode::OK,
                Json(json!({ "status": "ready", "store": store })),
            )
        }
        Err(error) => {
            tracing::debug!(reason = error.code(), cause = error.detail(), "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unavailable",
                    "store": store,
                    "reason": error.reason(),
                    "code": error.code(),
                    "was_ready": state.was_ready.get(),
                })),
            )
        }
    }
}
