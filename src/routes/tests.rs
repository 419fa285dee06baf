//! The HTTP layer on its own: the router driven without a socket, over the in-memory
//! store. What needs a real store or a real connection is in `tests/it`.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Method, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{install_recorder, router};
use crate::{
    config::CounterSettings,
    counter::{BatchOptions, CountGauge, VisitCounter},
    counters::CounterRules,
    deadlines::Deadlines,
    state::{AppState, StateParts},
    stats_cache::{STATS_TTL, StatsCache},
    store::{Identity, MemoryStore, Store},
};

struct TestRouter {
    router: Router,
    store: Arc<MemoryStore>,
}

impl TestRouter {
    fn new() -> Self {
        Self::starting_at(0)
    }

    fn starting_at(total: i64) -> Self {
        Self::with(total, CounterSettings::default())
    }

    fn with(total: i64, settings: CounterSettings) -> Self {
        let identity = Identity {
            counter_key: "hits".into(),
            replica: "unit-1".into(),
            version: "v9".into(),
        };
        let store = Arc::new(MemoryStore::with_total(
            identity.clone(),
            settings.policy,
            total,
        ));
        let shared = Store::Memory(store.clone());
        let deadlines = Deadlines::new(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(400),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        let worker_store = Arc::new(shared.for_worker());
        let (counter, _batcher) = VisitCounter::start(
            worker_store.clone(),
            BatchOptions::new(&deadlines, shared.writes_in_flight()),
            CountGauge::default(),
        );
        let state = AppState::new(StateParts {
            counter,
            store: worker_store,
            stats: Arc::new(StatsCache::new(STATS_TTL)),
            metrics: install_recorder(),
            replica: "unit-1".into(),
            version: "v9".into(),
            deadlines,
            was_ready: Arc::default(),
            counters: Arc::new(CounterRules::new(identity.tutorial(), &settings)),
            request_log: None,
        });
        Self {
            router: router(state),
            store,
        }
    }

    /// Sends `request` with a `Host`, as every HTTP/1.1 client sends one, unless it has.
    async fn send(
        &self,
        mut request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        request
            .headers_mut()
            .entry(header::HOST)
            .or_insert(HeaderValue::from_static("test"));
        self.send_as_is(request).await
    }

    async fn send_as_is(
        &self,
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        self.send(
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    fn total(&self) -> i64 {
        self.store.snapshot().total
    }
}

#[tokio::test]
async fn a_visit_answers_the_tutorial_text_with_the_service_headers() {
    let app = TestRouter::new();

    let (status, headers, body) = app.call(Method::GET, "/").await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Hello World! I have been seen 1 times.\n");
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(headers["x-served-by"], "unit-1");
    assert_eq!(headers["x-app-version"], "v9");
    assert_eq!(
        headers[header::CACHE_CONTROL],
        "max-age=0, no-cache, no-store, must-revalidate"
    );
    assert_eq!(headers[header::VARY], "Accept");
}

#[tokio::test]
async fn a_total_below_zero_counts_up_through_it_as_incr_does() {
    let app = TestRouter::starting_at(-2);

    let (_, _, first) = app.call(Method::GET, "/").await;
    let (_, _, second) = app.call(Method::GET, "/").await;

    assert_eq!(first, "Hello World! I have been seen -1 times.\n");
    assert_eq!(second, "Hello World! I have been seen 0 times.\n");
}

#[tokio::test]
async fn unknown_paths_get_404_with_the_service_headers_and_do_not_count() {
    let app = TestRouter::new();

    for path in ["/nope", "/favicon.ico", "/api/stats/x", "/%00", "/?"] {
        let (status, headers, body) = app.call(Method::GET, path).await;
        if path == "/?" {
            assert_eq!(status, StatusCode::OK, "a query string is still a visit");
            continue;
        }
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, "Not Found\n");
        assert_eq!(headers["x-served-by"], "unit-1");
    }

    assert_eq!(app.total(), 1);
}

#[tokio::test]
async fn other_methods_get_405_with_allow_and_do_not_count() {
    let app = TestRouter::new();

    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, headers, body) = app.call(method.clone(), "/").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert!(headers[header::ALLOW].to_str().unwrap().contains("GET"));
        assert_eq!(body, "Method Not Allowed\n", "{method}");
    }

    assert_eq!(app.total(), 0);
}

/// A counter's history is only read: another method is 405 with the two that work, the
/// administrator's `PUT` and `DELETE` too, whoever sends them.
#[tokio::test]
async fn a_history_allows_only_reading() {
    let app = TestRouter::new();

    for method in ["POST", "PATCH", "BREW", "PUT", "DELETE"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, headers, _) = app.call(method.clone(), "/api/counters/a/history").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(headers[header::ALLOW], "GET,HEAD", "{method}");
    }
    let (status, headers, _) = app.call(Method::PATCH, "/api/counters/a").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(headers[header::ALLOW].to_str().unwrap().contains("PUT"));
}

/// `?days=` on a counter's page is 30 or 90, whoever follows the link: anything else is
/// 400 and not counted, for a browser and for a script alike.
#[tokio::test]
async fn a_counters_page_refuses_days_it_does_not_draw_and_counts_nothing() {
    let app = TestRouter::new();
    let page = crate::counters::CounterName::parse("page").unwrap();

    for accept in ["text/html", "*/*"] {
        for days in ["abc", "7", "", "30x"] {
            let (status, _, body) = app
                .send(
                    Request::builder()
                        .uri(format!("/c/page?days={days}"))
                        .header(header::ACCEPT, accept)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{accept} days={days}");
            assert!(body.contains("30 or 90"), "{body}");
        }
    }
    assert!(app.store.counter(&page, 1).is_none(), "nothing counted");

    let (status, _, body) = app.call(Method::GET, "/c/page?days=90").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Hello World! I have been seen 1 times.\n");
}

/// A query key a route reads given twice is 400, whichever values (which one was meant
/// cannot be known), and counts nothing; a query that is not UTF-8 once percent-decoded
/// is 400 too, rather than its bytes replaced. The tutorial's `/` reads no query, and
/// counts whatever it holds, as the tutorial's app does.
#[tokio::test]
async fn a_query_key_given_twice_or_bytes_that_are_not_utf8_get_400_and_count_nothing() {
    let app = TestRouter::new();
    let page = crate::counters::CounterName::parse("page").unwrap();
    let twice = [
        (Method::GET, "/c/page", "count", ["0", "1"]),
        (Method::GET, "/c/page", "count", ["1", "0"]),
        (Method::GET, "/c/page", "days", ["30", "90"]),
        (Method::GET, "/badge/page.svg", "count", ["1", "1"]),
        (Method::POST, "/api/counters/page", "count", ["0", "0"]),
        (
            Method::GET,
            "/api/counters/page/history",
            "days",
            ["1", "2"],
        ),
        (
            Method::GET,
            "/api/counters/page/history",
            "format",
            ["csv", "json"],
        ),
        (Method::GET, "/api/counters", "cursor", ["0", "0"]),
    ];
    for (method, path, key, [first, second]) in twice {
        let uri = format!("{path}?{key}={first}&{key}={second}");
        let (status, _, body) = app.call(method.clone(), &uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {body}");
        assert!(
            body.contains(&format!("{key}= is given more than once")),
            "{body}"
        );
    }
    for query in ["label=%FF", "label=%ED%A0%80", "count=%FE", "x=%C3"] {
        for path in ["/badge/page.svg", "/c/page", "/api/counters/page/history"] {
            let uri = format!("{path}?{query}");
            let (status, _, body) = app.call(Method::GET, &uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body.contains("not UTF-8"), "{body}");
        }
    }
    assert!(app.store.counter(&page, 1).is_none(), "nothing counted");

    let (status, _, body) = app.call(Method::GET, "/?x=%FF&x=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Hello World! I have been seen 1 times.\n");
}

/// A counter's page draws no more days than the history keeps, and links its history
/// as the history takes it (`days` at most the days kept).
#[tokio::test]
async fn a_counters_page_draws_at_most_the_days_kept() {
    let mut settings = CounterSettings::default();
    settings.policy.retention_days = 2;
    let app = TestRouter::with(0, settings);

    let (status, _, page) = app
        .send(
            Request::builder()
                .uri("/c/page")
                .header(header::ACCEPT, "text/html")
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("The last 2 days"), "{page}");
    assert!(page.contains("history?days=2&amp;format=csv"), "{page}");
    let (status, _, _) = app
        .call(Method::GET, "/api/counters/page/history?days=2&format=csv")
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// A page's script may read the stats and the badges, and count through the counter API:
/// each preflight allows what its path takes, and each answer may be read across origins.
#[tokio::test]
async fn scripts_on_other_pages_may_use_what_each_path_takes() {
    let app = TestRouter::new();
    let preflight = |path: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(path)
            .header(header::ORIGIN, "https://page.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .body(Body::empty())
            .unwrap()
    };

    for (path, methods) in [
        ("/api/stats", "GET,HEAD"),
        ("/badge/page.svg", "GET,HEAD"),
        ("/api/counters/page", "GET,HEAD,POST"),
        ("/api/counters", "GET,HEAD"),
    ] {
        let (status, headers, _) = app.send(preflight(path)).await;
        assert!(status.is_success(), "{path}: {status}");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{path}");
        let allowed = headers[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .replace(' ', "");
        assert_eq!(allowed, methods, "{path}");
    }
    for path in ["/api/stats", "/badge/page.svg"] {
        let (status, headers, _) = app
            .send(
                Request::builder()
                    .uri(path)
                    .header(header::ORIGIN, "https://page.example")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{path}");
    }
    let (status, headers, _) = app.call(Method::POST, "/badge/page.svg").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET,HEAD");
}

/// HTTP/1.1 asks a server to refuse a request without a `Host`, or with more than one;
/// HTTP/1.0 has no such rule. A refused request counts nothing.
#[tokio::test]
async fn an_http_1_1_request_needs_one_host() {
    let app = TestRouter::new();
    let without = Request::builder().uri("/").body(Body::empty()).unwrap();
    let two = Request::builder()
        .uri("/c/page")
        .header(header::HOST, "a")
        .header(header::HOST, "b")
        .body(Body::empty())
        .unwrap();
    for request in [without, two] {
        let (status, _, body) = app.send_as_is(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            "Bad Request: an HTTP/1.1 request needs one Host header\n"
        );
    }
    let old = Request::builder()
        .uri("/")
        .version(axum::http::Version::HTTP_10)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = app.send_as_is(old).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "Hello World! I have been seen 1 times.\n",
        "the refused counted nothing"
    );
}

#[tokio::test]
async fn head_answers_like_get_without_counting() {
    let app = TestRouter::new();

    let (status, headers, body) = app.call(Method::HEAD, "/").await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(headers[header::VARY], "Accept");
    assert!(body.is_empty());

    // A browser's HEAD gets the page's headers, as its GET would.
    let (status, headers, body) = app
        .send(
            Request::builder()
                .method(Method::HEAD)
                .uri("/")
                .header(header::ACCEPT, "text/html")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[header::VARY], "Accept");
    assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
    assert!(body.is_empty());
    assert_eq!(app.total(), 0);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_does_not_count() {
    let app = TestRouter::new();
    let big = vec![b'x'; super::MAX_BODY_BYTES + 1];

    let announced = app
        .send(
            Request::get("/")
                .header(header::CONTENT_LENGTH, big.len())
                .body(Body::from(big.clone()))
                .unwrap(),
        )
        .await;
    // No announced length: refused as it is read.
    let streamed = app
        .send(
            Request::get("/")
                .body(Body::from_stream(futures_util::stream::iter(
                    big.chunks(1000)
                        .map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec()))
                        .collect::<Vec<_>>(),
                )))
                .unwrap(),
        )
        .await;
    let small = app
        .send(Request::get("/").body(Body::from("ok")).unwrap())
        .await;

    assert_eq!(announced.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(streamed.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        announced.2, "Payload Too Large\n",
        "the reason phrase, as elsewhere"
    );
    assert_eq!(announced.2, streamed.2, "the same answer both ways");
    assert_eq!(small.0, StatusCode::OK, "a small body is read and dropped");
    // A page's script posting to the counter API can read that answer too.
    let from_a_page = app
        .send(
            Request::post("/api/counters/blog")
                .header(header::ORIGIN, "https://example.org")
                .header(header::CONTENT_LENGTH, big.len())
                .body(Body::from(big.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(from_a_page.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        from_a_page.1[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "*",
        "{:?}",
        from_a_page.1
    );
    assert_eq!(app.total(), 1);
}

#[tokio::test]
async fn stats_report_the_total_and_this_replica_without_counting() {
    let app = TestRouter::starting_at(41);
    app.call(Method::GET, "/").await;

    let (status, _, body) = app.call(Method::GET, "/api/stats").await;

    assert_eq!(status, StatusCode::OK);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["total"], 42);
    assert_eq!(stats["replica"], "unit-1");
    assert_eq!(stats["version"], "v9");
    assert_eq!(stats["stale"], false);
    assert_eq!(stats["replicas"][0]["name"], "unit-1");
    assert_eq!(stats["replicas"][0]["visits"], 1);
    assert_eq!(app.total(), 42);
}

#[tokio::test]
async fn liveness_and_readiness_answer_without_counting() {
    let app = TestRouter::new();

    let (live, _, live_body) = app.call(Method::GET, "/healthz").await;
    let (ready, _, ready_body) = app.call(Method::GET, "/readyz").await;

    assert_eq!(live, StatusCode::OK);
    assert_eq!(live_body, "ok\n");
    assert_eq!(ready, StatusCode::OK);
    assert!(ready_body.contains(r#""status":"ready""#), "{ready_body}");
    assert_eq!(app.total(), 0);
}

#[tokio::test]
async fn metric_labels_come_from_a_fixed_set_whatever_the_request() {
    let app = TestRouter::new();
    let odd = Method::from_bytes(b"X-ODD-METHOD-1234").unwrap();
    // Letters no metric's name or value holds (a number's digits could: a latency sum).
    app.call(odd, "/some/odd/path-qzvx").await;

    let (_, _, metrics) = app.call(Method::GET, "/metrics").await;

    assert!(
        metrics.contains(r#"route="unmatched",method="other",status="404""#)
            || metrics.contains(r#"route="unmatched",method="other",status="405""#),
        "{metrics}"
    );
    assert!(!metrics.contains("X-ODD"), "a method reached a label");
    assert!(!metrics.contains("qzvx"), "a path reached a label");
    assert!(
        metrics.contains(r#"stackdemo_store_errors_total{reason="unreachable"}"#),
        "store errors are labelled by code, at zero until they happen:\n{metrics}"
    );
}
