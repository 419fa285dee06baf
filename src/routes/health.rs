//! Liveness and readiness. Liveness touches nothing; readiness asks the store.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn live() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the store answers, 503 with a short reason when it does not.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.kind();
    match state.store.ping(state.store_timeout).await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "store": store })),
        ),
        Err(error) => {
            tracing::debug!(cause = error.detail(), "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "store": store, "reason": error.reason() })),
            )
        }
    }
}
