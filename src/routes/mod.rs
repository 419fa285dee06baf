//! The HTTP interface: which path goes to which handler, and the layers around them.

mod body_limit;
mod error;
mod headers;
mod health;
mod metrics;
mod stats;
mod visit;

#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::{
    Router,
    error_handling::HandleErrorLayer,
    extract::{MatchedPath, Request},
    http::StatusCode,
    middleware,
    response::IntoResponse,
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use self::{error::ApiError, headers::ServiceHeaders, metrics::install_recorder};
use crate::state::AppState;

/// Requests with a larger body are refused with 413; no route takes a body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Builds the router. Unit tests drive it without a socket (`tower::ServiceExt::oneshot`)
/// over the in-memory store.
pub fn router(state: AppState) -> Router {
    let headers = ServiceHeaders::new(&state.replica, &state.version);
    let replica: std::sync::Arc<str> = state.replica.as_str().into();
    // Every route but the visit is cut off at the request timeout. A visit keeps to it by
    // itself (see `deadlines`): cut off while its write is under way, it could be counted
    // after being answered 503.
    let timed = Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::render))
        .route("/api/stats", get(stats::stats))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::Unavailable("request timed out")
                }))
                .timeout(state.deadlines.request),
        );
    Router::new()
        .route("/", get(visit::visit).head(visit::head))
        .merge(timed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(move |request: &Request| request_span(request, &replica))
                        .on_request(())
                        .on_response(log_response)
                        .on_failure(()),
                )
                .layer(middleware::from_fn(metrics::track))
                .map_response(move |mut response: axum::response::Response| {
                    headers.apply(response.headers_mut());
                    response
                })
                .layer(body_limit::RefuseLargeBodiesLayer),
        )
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "Not Found\n")
}

async fn method_not_allowed() -> impl IntoResponse {
    (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

fn request_span(request: &Request, replica: &str) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        route,
        replica,
    )
}

fn log_response(response: &axum::response::Response, latency: Duration, _span: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_us = latency.as_micros() as u64,
        "request served"
    );
}
