//! The behaviour users rely on over a real connection, run once per store. Plain HTTP
//! checks that need no socket (404, 405, HEAD, metric labels) are unit tests of the
//! router (`src/routes/tests.rs`).

use reqwest::{Method, StatusCode};

use crate::helpers::{
    Backend, Load, TestApp, allowed,
    client::{parse_raw, raw_bytes, raw_exchange},
    limits::{self, for_visits},
};

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
    oversized_bodies_get_413_and_do_not_count,
    broken_chunked_bodies_get_400_and_do_not_count,
    a_body_in_a_coding_other_than_chunked_gets_501_and_does_not_count,
    a_body_chunked_twice_gets_400_and_ends_the_connection,
    a_body_that_does_not_end_in_time_gets_408_and_does_not_count,
    oversized_headers_get_431_with_the_service_headers_and_do_not_count,
    header_lines_are_taken_up_to_the_documented_limit,
    requests_hyper_cannot_parse_get_400_with_the_service_headers,
    cleartext_http2_is_refused_and_counts_nothing,
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
    assert_eq!(
        headers["cache-control"],
        "max-age=0, no-cache, no-store, must-revalidate"
    );
    assert_eq!(
        response.text().await.unwrap(),
        "Hello World! I have been seen 1 times.\n"
    );

    // HEAD gets GET's headers and is not a visit. The length of a visit's answer depends
    // on its number: none is given, rather than a wrong one.
    let head = app.client.request(Method::HEAD, "/").await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(head.headers()["x-served-by"], "test-replica");
    assert_eq!(
        head.headers().get("content-length"),
        None,
        "HEAD / gave a length"
    );
    assert_eq!(app.client.visit().await, 2, "HEAD must not count");
}

async fn sequential_visits_count_up_by_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let mut counts = Vec::new();
    for _ in 0..20 {
        counts.push(app.client.visit().await);
    }

    assert_eq!(counts, (1..=20).collect::<Vec<_>>());
}

async fn concurrent_visits_get_distinct_contiguous_numbers(backend: Backend) {
    // Every visit is to be counted: a store timeout that a loaded machine's writes (an
    // embedded commit's fsync behind 50 clients) do not come near. Refusals past the
    // timeout are other tests' subject.
    let app = TestApp::spawn_with(backend, &["--store-timeout", "2s"]).await;
    let load = Load::start(&app.client, 50);
    load.wait_for_acknowledged(1000, for_visits(1000), || async { String::new() })
        .await;

    let history = load.stop().await;
    // The next visit tells the total exactly (stats are cached for half a second).
    let end = app.client.visit().await - 1;

    let report = history.assert_counting_held(0, end, 0);
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.lowest_count, Some(1));
    assert_eq!(report.highest_count, Some(end), "no gaps");
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

    let announced = app
        .client
        .request_builder(Method::GET, "/")
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    let streamed = raw_exchange(app.address, chunked.as_bytes()).await;

    assert_eq!(announced.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        announced
            .headers()
            .get(reqwest::header::CONNECTION)
            .unwrap(),
        "close",
        "the body is not read: the connection cannot carry another request"
    );
    assert_eq!(streamed.status, 413, "a chunked body over the limit");
    assert_eq!(
        streamed.body,
        announced.text().await.unwrap(),
        "the same answer both ways"
    );
    assert_eq!(app.client.visit().await, 1);
}

async fn broken_chunked_bodies_get_400_and_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\nnot-a-size\r\nhello\r\n0\r\n\r\n";

    let answer = raw_exchange(app.address, request).await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.body, "Bad Request: unreadable body\n");
    assert_eq!(app.client.visit().await, 1);
}

/// A transfer coding the service does not understand (`gzip` before `chunked`) is refused
/// with 501, as HTTP asks, not read as if the coded bytes were the body; on any route.
async fn a_body_in_a_coding_other_than_chunked_gets_501_and_does_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut answers = Vec::new();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/c/page"),
        ("POST", "/api/counters/page"),
    ] {
        for coding in ["gzip, chunked", "identity, chunked", "deflate,chunked"] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\
                 \r\n5\r\nhello\r\n0\r\n\r\n"
            );
            let answer = raw_exchange(app.address, request.as_bytes()).await;
            answers.push((method, path, coding, answer));
        }
    }
    let plain = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                  Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let chunked = raw_exchange(app.address, plain).await;
    // Not ended by chunked: the body's length cannot be known, 400 (RFC 9112, 6.3).
    let unframed = raw_exchange(
        app.address,
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
    )
    .await;

    for (method, path, coding, answer) in answers {
        assert_eq!(
            answer.status, 501,
            "{method} {path} in {coding}: {answer:?}"
        );
        assert_eq!(
            answer.body,
            "Not Implemented: a body's only transfer coding may be chunked\n"
        );
        assert_eq!(answer.header("connection"), Some("close"));
    }
    assert_eq!(unframed.status, 400, "{unframed:?}");
    assert_eq!(chunked.status, 200, "{chunked:?}");
    assert_eq!(chunked.body, "Hello World! I have been seen 1 times.\n");
    assert_eq!(app.client.visit().await, 2);
}

/// Chunked twice (in one header, or in two), which no sender may send: 400, and the
/// connection ends there, so that nothing after it is taken for another request (a
/// server on the way that unchunked the body twice would disagree about where it ends).
async fn a_body_chunked_twice_gets_400_and_ends_the_connection(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let after = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for codings in [
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked,,chunked\r\n",
        "Transfer-Encoding: chunked, , chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        for head in ["GET / HTTP/1.1", "POST /api/counters/page HTTP/1.1"] {
            let request = format!("{head}\r\nHost: x\r\n{codings}\r\n0\r\n\r\n{after}");
            let answer = raw_bytes(
                app.address,
                request.as_bytes(),
                allowed(limits::deadlines(&[]).request),
            )
            .await
            .expect("an answer, then the end of the connection");

            let first = parse_raw(&answer).unwrap_or_else(|| panic!("no answer: {answer:?}"));
            assert_eq!(first.status, 400, "{head} with {codings:?}: {answer:?}");
            assert_eq!(first.body, "Bad Request: a body may be chunked only once\n");
            assert_eq!(first.header("connection"), Some("close"));
            assert_eq!(
                answer.matches("HTTP/1.1 ").count(),
                1,
                "the request after it was served: {answer:?}"
            );
        }
    }
    assert_eq!(app.client.visit().await, 1, "nothing was counted");
}

/// The client's fault, not the store's: 408, not 503, and the connection closed, as the
/// rest of the body would be taken for the next request. A body still arriving after the
/// limit is not counted either, even if it ends before the connection closes.
async fn a_body_that_does_not_end_in_time_gets_408_and_does_not_count(backend: Backend) {
    const LIMITS: [&str; 4] = ["--request-timeout", "1s", "--store-timeout", "200ms"];
    let app = TestApp::spawn_with(backend, &LIMITS).await;
    let deadlines = limits::deadlines(&LIMITS);
    let body_limit = deadlines.request - deadlines.visit();
    let announced = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf";
    let chunked = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n";

    for request in [&announced[..], &chunked[..]] {
        let started = std::time::Instant::now();
        let answer = raw_bytes(app.address, request, allowed(deadlines.request))
            .await
            .expect("the service answers and closes the connection");
        let answer = parse_raw(&answer).expect("a complete answer");

        assert_eq!(answer.status, 408, "{answer:?}");
        assert_eq!(
            answer.body,
            "Request Timeout: the body did not arrive in time\n"
        );
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(started.elapsed() >= body_limit, "answered before the limit");
    }
    assert_eq!(app.client.visit().await, 1);
}

/// Headers of up to 16 KiB are served (big cookies happen); more are refused, so that a
/// connection cannot hold hundreds of kilobytes of them. The refusal is hyper's, made
/// whole: it carries the headers every answer carries.
async fn oversized_headers_get_431_with_the_service_headers_and_do_not_count(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = |header_bytes: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            "c".repeat(header_bytes)
        )
    };

    let served = raw_exchange(app.address, request(12 * 1024).as_bytes()).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, "Hello World! I have been seen 1 times.\n");

    let refused = raw_exchange(app.address, request(17 * 1024).as_bytes()).await;
    assert_eq!(refused.status, 431);
    assert_eq!(refused.body, "Request Header Fields Too Large\n");
    assert_eq!(refused.header("x-served-by"), Some("test-replica"));
    assert_eq!(
        refused.header("x-app-version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        refused.header("cache-control"),
        Some("max-age=0, no-cache, no-store, must-revalidate")
    );

    assert_eq!(app.client.visit().await, 2);
}

async fn requests_hyper_cannot_parse_get_400_with_the_service_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // A good request, then garbage on the same connection: the first is answered by the
    // service, the second by hyper, made whole.
    let answer = raw_bytes(
        app.address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        allowed(limits::deadlines(&[]).request),
    )
    .await
    .expect("the service closes the connection");

    let (first, rest) = answer.split_at(answer.find("HTTP/1.1 400").expect("a 400"));
    assert!(first.starts_with("HTTP/1.1 200"), "{answer}");
    let refused = parse_raw(rest).unwrap();
    assert_eq!(refused.body, "Bad Request\n");
    assert_eq!(refused.header("x-served-by"), Some("test-replica"));
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(app.client.visit().await, 1);
}

/// The service speaks HTTP/1.1 only. A client that starts HTTP/2 without asking (prior
/// knowledge: the preface, then frames) finds the connection closed at once, with nothing
/// served: one connection cannot hold many requests at once.
async fn cleartext_http2_is_refused_and_counts_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // The preface, an empty SETTINGS frame, and a HEADERS frame (stream 1, END_HEADERS)
    // for `GET /` with HPACK's static table: :method GET, :scheme http, :path /.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    let answer = raw_bytes(app.address, &bytes, allowed(limits::deadlines(&[]).request))
        .await
        .expect("the service closes the connection");

    assert_eq!(answer, "", "no HTTP/2 frames, no answer");
    assert_eq!(app.client.visit().await, 1);
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
    assert_eq!(app.client.visit().await, 2);
}

async fn a_browser_gets_the_page_with_the_count(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--replica", "<b>web.1</b>"]).await;
    app.client.visit().await;

    let response = app
        .client
        .request_builder(Method::GET, "/")
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

/// Up to 100 header lines (within the 16 KiB head, as the README says) are a visit; more
/// get 431 and do not count.
async fn header_lines_are_taken_up_to_the_documented_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = |lines: usize| {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..lines {
            head.push_str(&format!("X-H{i}: v\r\n"));
        }
        head.push_str("\r\n");
        head
    };

    // Host and Connection, and 98 more.
    let taken = raw_exchange(app.address, request(98).as_bytes()).await;
    let refused = raw_exchange(app.address, request(99).as_bytes()).await;

    assert_eq!(taken.status, 200, "{taken:?}");
    assert_eq!(taken.body, "Hello World! I have been seen 1 times.\n");
    assert_eq!(refused.status, 431, "{refused:?}");
    assert_eq!(app.client.visit().await, 2);
}
