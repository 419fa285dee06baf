//! Prometheus metrics: requests by route, method and status, and their latency; and the
//! one log line per request.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Level;

use crate::{
    counter::VisitError,
    state::AppState,
    store::StoreErrorKind,
    telemetry::{LoggedPath, REQUEST_TARGET, RequestLine, RequestLog},
};

/// The process-wide recorder. Installed once; later calls return the same handle, so
/// several apps in one test process share it.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const BUCKETS: &[f64] = &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
            ];
            const VISITS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("stackdemo_store_write_seconds".into()),
                        BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("stackdemo_visit_queue_seconds".into()),
                        BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("stackdemo_visit_batch_size".into()),
                        VISITS_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("stackdemo_embedded_commit_visits".into()),
                        VISITS_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; then ours stays unused
            // and the page shows what the handle has.
            let _ = metrics::set_global_recorder(recorder);
            // Series that exist from the start, so that a dashboard or an alert on a rate
            // sees zero rather than nothing.
            for kind in StoreErrorKind::ALL {
                counter!("stackdemo_store_errors_total", "reason" => kind.code()).absolute(0);
            }
            for code in VisitError::CODES {
                counter!("stackdemo_visits_refused_total", "reason" => code).absolute(0);
            }
            counter!("stackdemo_visits_total").absolute(0);
            counter!("stackdemo_visits_in_doubt_total").absolute(0);
            counter!("stackdemo_log_lines_dropped_total").absolute(0);
            handle
        })
        .clone()
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Middleware recording every request in the metrics, and in one log line (`request
/// served`: method, path, route, replica, status, latency) when it is answered. Every
/// label takes its value from a small fixed set, so that no request can create new
/// series: unmatched paths share one route label (as requests refused before routing
/// share `UNROUTED`), methods no route serves share one method label (as do requests
/// refused for their method or form), statuses are the service's own, and the latency
/// is by route alone. However clients vary their requests, the page stays some tens of
/// kilobytes, which every connection may hold while its client is slow to take it.
pub async fn track(
    request: Request,
    next: Next,
    replica: Arc<str>,
    log: Option<Arc<RequestLog>>,
) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    // A clone of the URI shares its bytes.
    let uri = tracing::enabled!(target: REQUEST_TARGET, Level::INFO).then(|| request.uri().clone());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let request = Served {
        method: method.as_str(),
        method_label: method_label(&method, response.status()),
        path: uri.as_ref().map(Uri::path),
        route,
        status,
        latency: start.elapsed(),
    };
    request.record(&replica, log.as_deref());
    response
}

/// The route label (and the line's `route`) of a request refused before routing.
pub const UNROUTED: &str = "unrouted";

/// Records a request hyper refused before it reached the router (bad syntax, a head over
/// the limit): its line (method and path `-`, as they could not be read) and its metrics,
/// as `track` does for the router's requests.
pub fn record_unrouted(
    replica: &str,
    log: Option<&RequestLog>,
    status: StatusCode,
    took: Duration,
) {
    let logged = tracing::enabled!(target: REQUEST_TARGET, Level::INFO);
    Served {
        method: "-",
        method_label: "other",
        path: logged.then_some("-"),
        route: UNROUTED.to_owned(),
        status: status.as_u16(),
        latency: took,
    }
    .record(replica, log);
}

/// One answered request: what its line and its metrics say.
struct Served<'a> {
    method: &'a str,
    method_label: &'static str,
    /// The path, when the line is logged.
    path: Option<&'a str>,
    route: String,
    status: u16,
    latency: Duration,
}

impl Served<'_> {
    fn record(self, replica: &str, log: Option<&RequestLog>) {
        if let Some(path) = self.path {
            let line = RequestLine {
                method: self.method,
                path,
                route: &self.route,
                replica,
                status: self.status,
                latency_us: self.latency.as_micros() as u64,
            };
            match log {
                Some(log) => log.record(&line),
                None => {
                    tracing::info!(
                        target: REQUEST_TARGET,
                        method = %LoggedPath::method(line.method),
                        path = %LoggedPath::of(line.path),
                        route = line.route,
                        replica = line.replica,
                        status = line.status,
                        latency_us = line.latency_us,
                        "request served"
                    );
                }
            }
        }
        // The latency by route alone: a histogram is a dozen series, and one for every
        // method and status a client can provoke would let clients grow the page.
        histogram!("http_request_duration_seconds", "route" => self.route.clone())
            .record(self.latency.as_secs_f64());
        let labels = [
            ("route", self.route),
            ("method", self.method_label.to_owned()),
            ("status", self.status.to_string()),
        ];
        counter!("http_requests_total", &labels).increment(1);
    }
}

/// The method as a metric label: one of the methods some route serves, or `other`; also
/// `other` for a request refused for its method or its form whatever the method (405, 408,
/// 413), so that clients cannot make a series for every method on every route.
fn method_label(method: &Method, status: StatusCode) -> &'static str {
    if matches!(
        status,
        StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::PAYLOAD_TOO_LARGE
    ) {
        return "other";
    }
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
