//! The HTTP interface: which path goes to which handler, and the layers around them.

mod admin;
mod badge;
mod client;
mod counters;
mod error;
mod headers;
mod health;
mod metrics;
mod refused_early;
mod stats;
mod visit;

#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::{
    Router,
    error_handling::HandleErrorLayer,
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    middleware,
    response::IntoResponse,
    routing::{MethodRouter, get},
};
use tower::ServiceBuilder;
use tower_http::cors::CorsLayer;

pub use self::{
    error::{ApiError, VISIT_IN_DOUBT},
    headers::ServiceHeaders,
    metrics::{UNROUTED, install_recorder, record_unrouted},
};
use crate::{counters::name::history_of, state::AppState};

/// Requests with a larger body are refused with 413, but for imports, which are read a
/// line at a time.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Where the administrator imports counters.
pub const IMPORT_PATH: &str = "/api/admin/import";

/// Builds the router. Unit tests drive it without a socket (`tower::ServiceExt::oneshot`)
/// over the in-memory store.
pub fn router(state: AppState) -> Router {
    let headers = ServiceHeaders::new(&state.replica, &state.version);
    let replica: std::sync::Arc<str> = state.replica.as_str().into();
    let request_log = state.request_log.clone();
    // Pages anywhere may read counts and badges from scripts (see `cors`); what is only
    // read allows only the methods that read.
    let reads = cors(&[Method::GET, Method::HEAD]);
    // Every route but the visit is cut off at the request timeout. A visit keeps to it by
    // itself (see `deadlines`): cut off while its write is under way, it could be counted
    // after being answered 503.
    let timed = Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::render))
        .route("/api/stats", read_only(get(stats::stats), &reads))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::Unavailable("request timed out")
                }))
                .timeout(state.deadlines.request),
        );
    let counters = Router::new()
        .route(
            "/api/counters/{*path}",
            get(counters::read_or_history)
                .post(counters::count_visit)
                .put(admin::set_total)
                .delete(admin::delete),
        )
        // Before the CORS layer, so that it wraps this answer too and a preflight
        // (`OPTIONS`), which no route takes, is answered by it rather than with 405.
        .method_not_allowed_fallback(counter_method_not_allowed)
        .layer(cors(&[Method::GET, Method::HEAD, Method::POST]))
        .layer(middleware::from_fn(history_preflight));
    Router::new()
        .route("/", get(visit::visit).head(visit::head))
        .route("/c/{*name}", get(counters::visit))
        .route("/badge/{*name}", read_only(get(badge::badge), &reads))
        .route("/api/counters", read_only(get(counters::list), &reads))
        .route("/ignore-me", get(ignore_me))
        .route("/api/admin/export", get(admin::export))
        .route(IMPORT_PATH, axum::routing::post(admin::import))
        .merge(counters)
        .merge(timed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(move |request, next| {
                    metrics::track(request, next, replica.clone(), request_log.clone())
                }))
                .map_response(move |mut response: axum::response::Response| {
                    headers.apply(response.headers_mut());
                    response
                })
                .layer(refused_early::RefuseEarlyLayer),
        )
        .with_state(state)
}

/// Any page's scripts may use `methods` (no cookie or credential is involved), and read
/// when to try again after a 429 or 503.
fn cors(methods: &[Method]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods(methods.to_vec())
        .allow_headers([header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(3600))
}

/// A route only read, open to scripts on any page. Its 405 is set before the CORS layer,
/// so that the layer wraps that answer too and answers a preflight (`OPTIONS`, which no
/// route takes) rather than the 405.
fn read_only(route: MethodRouter<AppState>, cors: &CorsLayer) -> MethodRouter<AppState> {
    route.fallback(method_not_allowed).layer(cors.clone())
}

/// `GET /ignore-me`: this browser's visits are no longer counted (a cookie); with
/// `?undo=1`, they are again.
async fn ignore_me(request: Request) -> impl IntoResponse {
    let undo = counters::query_pairs(request.uri().query())
        .iter()
        .any(|(key, _)| key == "undo");
    let (cookie, text) = if undo {
        (
            format!(
                "{}=; Path=/; Max-Age=0; SameSite=Lax; HttpOnly",
                client::NOCOUNT_COOKIE
            ),
            "This browser's visits are counted again.\n",
        )
    } else {
        (
            format!(
                "{}=1; Path=/; Max-Age=315360000; SameSite=Lax; HttpOnly",
                client::NOCOUNT_COOKIE
            ),
            "This browser's visits to named counters and badges are no longer counted. \
             Visit /ignore-me?undo=1 to be counted again.\n",
        )
    };
    (
        [
            (header::SET_COOKIE, cookie),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
        ],
        text,
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "Not Found\n")
}

async fn method_not_allowed() -> impl IntoResponse {
    (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

/// A method no route of the counter API takes: a counter's history says the methods it
/// takes itself (the route it shares with the counter takes more).
async fn counter_method_not_allowed(uri: axum::http::Uri) -> axum::response::Response {
    if history_of(uri.path()).is_some() {
        return ApiError::MethodNotAllowed.into_response();
    }
    method_not_allowed().await.into_response()
}

/// A preflight (`OPTIONS`) of a counter's history says the methods a history takes, as
/// its 405 does, not the ones of the route it shares with the counter. (The router adds
/// its own `Allow` only where there is none.)
async fn history_preflight(request: Request, next: middleware::Next) -> axum::response::Response {
    let history = request.method() == Method::OPTIONS && history_of(request.uri().path()).is_some();
    let mut response = next.run(request).await;
    if history {
        let headers = response.headers_mut();
        let methods = HeaderValue::from_static(counters::HISTORY_METHODS);
        headers.insert(header::ALLOW, methods.clone());
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    }
    response
}
