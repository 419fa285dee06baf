//! The behaviour users rely on, run once per store.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};

use crate::helpers::{Backend, TestApp, client::raw_exchange};

/// Generates one test per store for each listed scenario.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod on_redis {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(crate::helpers::Backend::Redis).await })*
        }
        mod on_embedded_store {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(crate::helpers::Backend::Embedded).await })*
        }
    };
}

for_each_backend!(
    a_visit_answers_the_tutorial_text_and_headers,
    sequential_visits_count_up_by_one,
    concurrent_visits_get_distinct_contiguous_numbers,
    unknown_paths_get_404_and_do_not_count,
    wrong_methods_get_405_and_do_not_count,
    head_requests_do_not_count,
    oversized_bodies_get_413_and_do_not_count,
    broken_chunked_bodies_get_400_and_do_not_count,
    oversized_headers_get_431_and_do_not_count,
    stats_report_visits_per_replica_without_counting,
    health_endpoints_answer,
    metrics_report_requests_and_the_count,
    a_browser_gets_the_page_with_the_count,
);

async fn a_visit_answers_the_tutorial_text_and_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let response = app.client.get("/").await;

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["x-served-by"], "test-replica");
    assert_eq!(headers["x-app-version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(
        response.text().await.unwrap(),
        "Hello World! I have been seen 1 times.\n"
    );
}

async fn sequential_visits_count_up_by_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let counts: Vec<u64> = {
        let mut counts = Vec::new();
        for _ in 0..20 {
            counts.push(app.client.visit().await);
        }
        counts
    };

    assert_eq!(counts, (1..=20).collect::<Vec<_>>());
}

async fn concurrent_visits_get_distinct_contiguous_numbers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    const CLIENTS: usize = 50;
    const EACH: usize = 20;

    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..EACH {
                seen.push(client.visit().await);
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "one client saw its count go down: {seen:?}"
        );
        all.extend(seen);
    }

    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    let total = (CLIENTS * EACH) as u64;
    assert_eq!(
        distinct.len() as u64,
        total,
        "some numbers were handed out twice"
    );
    assert_eq!(
        distinct,
        (1..=total).collect(),
        "numbers are not 1..={total}"
    );
    assert_eq!(app.client.visit().await, total + 1);
}

async fn unknown_paths_get_404_and_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.client.visit().await;

    for path in ["/nope", "/favicon.ico", "/../etc/passwd", "/api/stats/x"] {
        let response = app.client.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(response.text().await.unwrap(), "Not Found\n");
    }

    assert_eq!(app.client.visit().await, 2);
}

async fn wrong_methods_get_405_and_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = app.client.request(method.clone(), "/").await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert!(
            response.headers()["allow"]
                .to_str()
                .unwrap()
                .contains("GET")
        );
        assert_eq!(response.text().await.unwrap(), "Method Not Allowed\n");
    }

    assert_eq!(app.client.visit().await, 1);
}

async fn head_requests_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let response = app.client.request(Method::HEAD, "/").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.client.visit().await, 1);
}

/// Refused whether the length is announced or the body comes in chunks, which has no
/// announced length to refuse it by: it is read, up to the limit, before the visit counts.
async fn oversized_bodies_get_413_and_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let half = "x".repeat(9 * 1024);
    let chunked = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {len:x}\r\n{half}\r\n{len:x}\r\n{half}\r\n0\r\n\r\n",
        len = half.len()
    );

    let announced = reqwest::Client::new()
        .get(format!("{}/", app.client.base))
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    let (status, body) = raw_exchange(app.address, chunked.as_bytes()).await;

    assert_eq!(announced.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(status, 413, "a chunked body over the limit");
    assert_eq!(
        body,
        announced.text().await.unwrap(),
        "the same answer both ways"
    );
    assert_eq!(app.client.visit().await, 1);
}

async fn broken_chunked_bodies_get_400_and_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\nnot-a-size\r\nhello\r\n0\r\n\r\n";

    let (status, body) = raw_exchange(app.address, request).await;

    assert_eq!(status, 400);
    assert_eq!(body, "Bad Request: unreadable body\n");
    assert_eq!(app.client.visit().await, 1);
}

/// Headers of up to 16 KiB are served (big cookies happen); more are refused, so that a
/// connection cannot hold hundreds of kilobytes of them.
async fn oversized_headers_get_431_and_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = |header_bytes: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            "c".repeat(header_bytes)
        )
    };

    let (status, body) = raw_exchange(app.address, request(12 * 1024).as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(body, "Hello World! I have been seen 1 times.\n");

    let (status, _) = raw_exchange(app.address, request(17 * 1024).as_bytes()).await;
    assert_eq!(status, 431);

    assert_eq!(app.client.visit().await, 2);
}

async fn stats_report_visits_per_replica_without_counting(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for _ in 0..3 {
        app.client.visit().await;
    }

    let stats = app.client.stats().await;
    let again = app.client.stats().await;

    assert_eq!(stats["total"], 3);
    assert_eq!(stats["replica"], "test-replica");
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
    let me = stats["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "test-replica")
        .expect("this replica is listed");
    assert_eq!(me["visits"], 3);
    assert_eq!(again["total"], 3);
    assert_eq!(app.client.visit().await, 4);
}

async fn health_endpoints_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let live = app.client.get("/healthz").await;
    assert_eq!(live.status(), StatusCode::OK);
    let ready = app.client.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");

    assert_eq!(app.client.visit().await, 1, "health checks must not count");
}

async fn metrics_report_requests_and_the_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.client.visit().await;
    app.client.get("/nope").await;

    let text = app.client.get("/metrics").await.text().await.unwrap();

    assert!(
        text.contains(r#"http_requests_total{route="/",method="GET",status="200"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched",method="GET",status="404""#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("stackdemo_count "), "{text}");
    assert!(
        text.contains(r#"stackdemo_store_errors_total{reason="counter store unreachable"}"#),
        "store errors are reported, at zero until they happen:\n{text}"
    );
    assert_eq!(app.client.visit().await, 2);
}

async fn a_browser_gets_the_page_with_the_count(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--replica", "<b>web.1</b>"]).await;
    app.client.visit().await;

    let response = reqwest::Client::new()
        .get(format!("{}/", app.client.base))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = response.text().await.unwrap();
    assert!(
        body.contains(r#"id="count">2</strong>"#),
        "the page shows visit 2"
    );
    assert!(
        body.contains("&lt;b&gt;web.1&lt;/b&gt;"),
        "the replica name is escaped"
    );
    assert!(
        !body.contains("<b>web.1</b>"),
        "raw markup from a name must not reach the page"
    );
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no external assets"
    );
}
