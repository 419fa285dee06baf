//! Named counters, badges, unique visitors, history and the administrator's changes,
//! over a real connection, on both stores where both apply.

use std::{collections::BTreeSet, time::Duration};

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use stackdemo::{
    cli::{Cli, Command},
    deadlines::MIN_HEADER_READ,
    store::{Identity, Store},
    telemetry::THROTTLE_EVERY,
};

use crate::helpers::{
    Backend, Load, RedisServer, ServiceProcess, TestApp, TestClient,
    admin::{TOKEN, as_admin, token_file},
    allowed,
    checker::{Counters, Totals},
    client::{parse_raw, raw_bytes, raw_exchange},
    limits::{self, for_visits},
    wait_until,
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
    named_counters_count_apart_and_read_without_counting,
    many_counters_under_concurrency_get_distinct_contiguous_numbers_each,
    the_history_comes_by_day_as_json_and_csv,
    unique_visitors_are_told_apart_by_address_and_agent_and_forwarded_only_by_a_trusted_proxy,
    unique_visitors_are_estimated_within_the_sketchs_error,
    the_administrator_sets_resets_and_deletes_and_no_one_else_can,
    closed_counters_count_only_what_the_administrator_created,
    over_the_rate_limit_a_visit_is_refused_with_429_and_not_counted,
    beyond_the_most_counters_a_new_name_is_refused_with_507,
    a_browser_that_asked_not_to_be_counted_is_not,
    a_badge_counts_and_shows_the_count_and_is_fetched_again_every_time,
    bad_administration_is_refused_with_a_clear_reason_and_changes_nothing,
    an_administrators_change_whose_body_stalls_gets_408_and_changes_nothing,
    head_and_preflight_are_answered_as_browsers_expect,
    a_day_at_its_limit_refuses_visits_as_at_the_limit_and_exports_what_imports,
    an_import_of_days_in_the_future_is_refused_and_todays_visits_stay_in_the_history,
    an_import_takes_lines_up_to_the_limit_and_days_the_history_keeps_each_once,
    each_exported_line_holds_its_total_and_days_of_one_moment,
    the_tutorials_counter_at_its_limit_is_not_ready_until_the_administrator_lowers_it,
    an_imported_counter_replaces_the_one_of_its_name_whole,
);

/// A worker's handle on the store `args` configure, without the service around it.
fn open_store(args: &[&str]) -> stackdemo::store::WorkerStore {
    let Command::Serve(settings) = Cli::parse_args(args).expect("valid settings").command else {
        unreachable!("options alone are serve's");
    };
    let checked = settings.check().expect("valid settings");
    let identity = Identity {
        counter_key: "hits".into(),
        replica: "test".into(),
        version: "test".into(),
    };
    Store::open(
        &checked.store,
        &identity,
        checked.counters.policy,
        &checked.deadlines,
    )
    .expect("the store opens")
    .for_worker()
}

async fn json(client: &TestClient, method: Method, path: &str) -> (StatusCode, Value) {
    let response = client.request(method, path).await;
    let status = response.status();
    let value = response.json().await.unwrap_or(Value::Null);
    (status, value)
}

/// A counter's total, read through the API. A read may be refused (503) when the store
/// is slower than the read bound, as on a loaded machine: it is asked again.
async fn total(client: &TestClient, name: &str) -> i64 {
    let path = format!("/api/counters/{name}");
    let answer = std::sync::Mutex::new((StatusCode::SERVICE_UNAVAILABLE, String::new()));
    crate::helpers::wait_or_explain(
        &format!("a reading of {name}"),
        allowed(Duration::from_secs(2)),
        || async {
            let response = client.get(&path).await;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            *answer.lock().unwrap() = (status, body);
            status != StatusCode::SERVICE_UNAVAILABLE
        },
        || async { format!("the last answer: {:?}", answer.lock().unwrap()) },
    )
    .await;
    let (status, body) = answer.into_inner().unwrap();
    assert_eq!(status, StatusCode::OK, "reading {name}: {body}");
    let value: Value = serde_json::from_str(&body).expect("JSON");
    value["total"].as_i64().expect("a total")
}

async fn text(client: &TestClient, path: &str) -> (StatusCode, String) {
    let response = client.get(path).await;
    (response.status(), response.text().await.unwrap_or_default())
}

/// Sends `lines` to the import as the administrator: the status and the body.
async fn import(client: &TestClient, lines: impl Into<String>) -> (StatusCode, String) {
    let response = as_admin(client, Method::POST, "/api/admin/import")
        .body(lines.into())
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Imports `lines` (each ending in a newline) in parts of a few hundred, each part an
/// import of its own that must succeed: a part's store calls fit the client's wait on a
/// loaded machine, where thousands of lines in one import may not.
async fn import_in_parts(client: &TestClient, lines: &str) {
    let lines: Vec<&str> = lines.split_inclusive('\n').collect();
    for part in lines.chunks(500) {
        let (status, body) = import(client, part.concat()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// A store timeout well above a store call's time on a loaded machine, for tests of
/// exports and imports of thousands of counters, which are not about the timeout: one
/// call past it would cut an export short or stop an import, rightly.
const PATIENT_STORE: [&str; 4] = ["--store-timeout", "2s", "--request-timeout", "10s"];

/// The whole export, as the administrator; panics if it is cut short.
async fn export(client: &TestClient) -> String {
    as_admin(client, Method::GET, "/api/admin/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .expect("the whole export, to its end")
}

/// The service on `backend` with the administrator's token, no rate limit and `extra`;
/// the token's file, which must live as long as the service.
async fn spawn_with_admin(backend: Backend, extra: &[&str]) -> (TestApp, tempfile::NamedTempFile) {
    let token = token_file();
    let path = token.path().to_str().unwrap().to_owned();
    let mut args = vec!["--rate-limit", "off", "--admin-token-file", &path];
    args.extend_from_slice(extra);
    (TestApp::spawn_with(backend, &args).await, token)
}

/// A day's visits at the most a total can hold (an import can put them there): the next
/// visit is refused as at the limit, on either store, and nothing beyond it is kept, so
/// that the export still imports.
async fn a_day_at_its_limit_refuses_visits_as_at_the_limit_and_exports_what_imports(
    backend: Backend,
) {
    let (app, _token) = spawn_with_admin(backend, &[]).await;
    let client = &app.client;
    text(client, "/c/today").await;
    let (_, history) = json(client, Method::GET, "/api/counters/today/history?days=1").await;
    let date = history["days"][0]["date"].as_str().unwrap().to_owned();
    let line = json!({ "name": "full", "total": 5, "days": { date.clone(): i64::MAX } });
    let admin =
        |method: Method, path: &str, body: String| as_admin(client, method, path).body(body).send();
    let imported = admin(Method::POST, "/api/admin/import", format!("{line}\n"))
        .await
        .unwrap();
    assert_eq!(
        imported.status(),
        StatusCode::OK,
        "{}",
        imported.text().await.unwrap()
    );

    let (status, body) = text(client, "/c/full").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("at its limit"), "{body}");
    assert_eq!(
        total(client, "full").await,
        5,
        "nothing of the visit is kept"
    );

    let export = admin(Method::GET, "/api/admin/export", String::new())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let again = admin(Method::POST, "/api/admin/import", export.clone())
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "{export}: {}",
        again.text().await.unwrap()
    );
}

/// Days after tomorrow in an import are refused, naming the line and the day: kept, they
/// would stay in the history for good and, in Redis (which keeps a counter's latest days),
/// push today's out when its first visit made the history one day too long.
async fn an_import_of_days_in_the_future_is_refused_and_todays_visits_stay_in_the_history(
    backend: Backend,
) {
    let (app, _token) = spawn_with_admin(backend, &["--history-days", "3"]).await;
    let client = &app.client;
    let future: serde_json::Map<String, Value> = (1..=4)
        .map(|day| (format!("2099-01-0{day}"), json!(1)))
        .collect();
    let line = json!({ "name": "page", "total": 4, "days": future });
    let (status, body) = import(client, format!("{line}\n")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("line 1") && body.contains("2099-01-01 is after"),
        "{body}"
    );

    let (status, body) = text(client, "/c/page").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, history) = json(client, Method::GET, "/api/counters/page/history?days=3").await;
    assert_eq!(history["days"][2]["visits"], 1, "today's visit: {history}");
    assert_eq!(
        total(client, "page").await,
        1,
        "nothing of the line was kept"
    );
}

/// An import reads each line up to `MAX_LINE_BYTES` however the body is cut, refuses a
/// longer one even when its newline comes right after, leaves out days older than the
/// history keeps (and says how many), and refuses a day given twice in a line instead of
/// keeping one of its two values.
async fn an_import_takes_lines_up_to_the_limit_and_days_the_history_keeps_each_once(
    backend: Backend,
) {
    use stackdemo::counters::{Day, export::MAX_LINE_BYTES};

    let (app, _token) = spawn_with_admin(backend, &["--history-days", "3"]).await;
    let client = &app.client;
    let padded = |line: &str, bytes: usize| format!("{line}{}", " ".repeat(bytes - line.len()));
    // The longest line taken, then one a byte longer whose last byte and newline come
    // in a chunk of their own.
    let exact = padded(r#"{"name":"exact","total":1}"#, MAX_LINE_BYTES);
    let long = padded(r#"{"name":"long","total":1}"#, MAX_LINE_BYTES + 1);
    let body = format!("{exact}\n{long}");
    let mut chunks: Vec<&[u8]> = body.as_bytes()[..body.len() - 1]
        .chunks(64 * 1024)
        .collect();
    chunks.push(&body.as_bytes()[body.len() - 1..]);
    let mut request = format!(
        "POST /api/admin/import HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for (i, chunk) in chunks.iter().enumerate() {
        let newline: &[u8] = if i == chunks.len() - 1 { b"\n" } else { b"" };
        request.extend(format!("{:x}\r\n", chunk.len() + newline.len()).as_bytes());
        request.extend(*chunk);
        request.extend(newline);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    let answer = raw_exchange(app.address, &request).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer
            .body
            .contains(&format!("line 2 is longer than {MAX_LINE_BYTES} bytes"))
            && answer.body.contains("after 1 counter"),
        "{answer:?}"
    );
    assert_eq!(total(client, "exact").await, 1);
    let (status, _) = json(client, Method::GET, "/api/counters/long").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the long line was not imported"
    );

    let today = Day::today();
    let days = json!({
        today.minus(5).to_string(): 4,
        today.minus(3).to_string(): 3,
        today.minus(1).to_string(): 2,
        today.to_string(): 1,
    });
    let line = json!({ "name": "moved", "total": 10, "days": days });
    let (status, body) = import(client, format!("{line}\n")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "imported": 1, "days_left_out": 2 })
    );
    let (_, history) = json(client, Method::GET, "/api/counters/moved/history?days=3").await;
    let visits: Vec<&Value> = history["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|day| &day["visits"])
        .collect();
    assert_eq!(visits, [&json!(0), &json!(2), &json!(1)], "{history}");
    let export = export(client).await;
    let moved: Value = export
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|counter| counter["name"] == "moved")
        .expect("the counter is exported");
    assert_eq!(moved["total"], 10, "the total is not the days' sum");
    assert_eq!(
        moved["days"].as_object().unwrap().len(),
        2,
        "only the days the history keeps: {moved}"
    );

    let twice = format!(r#"{{"name":"moved","total":99,"days":{{"{today}":5,"{today}":6}}}}"#);
    let (status, said) = import(client, format!("{twice}\n")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        said.contains("line 1") && said.contains(&format!("{today} is given twice")),
        "{said}"
    );
    assert_eq!(
        total(client, "moved").await,
        10,
        "nothing of the line was kept"
    );
}

/// Every line of an export taken while visits count is one moment of its counter: its
/// total is the sum of its days (nothing set by hand, nothing older than the history).
async fn each_exported_line_holds_its_total_and_days_of_one_moment(backend: Backend) {
    let (app, _token) = spawn_with_admin(backend, &PATIENT_STORE).await;
    let client = &app.client;
    text(client, "/").await;
    let visiting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let visitors: Vec<_> = (0..6)
        .map(|visitor| {
            let (client, visiting) = (client.clone(), visiting.clone());
            tokio::spawn(async move {
                let mut visit = visitor;
                while visiting.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = if visit % 5 == 0 {
                        "/".to_owned()
                    } else {
                        format!("/c/moment/{}", visit % 20)
                    };
                    client.get(&path).await;
                    visit += 1;
                }
            })
        })
        .collect();

    let mut lines = 0;
    for _ in 0..15 {
        let export = export(client).await;
        for line in export.lines() {
            let counter: Value = serde_json::from_str(line).unwrap();
            let days: i64 = counter["days"]
                .as_object()
                .unwrap()
                .values()
                .map(|visits| visits.as_i64().unwrap())
                .sum();
            assert_eq!(counter["total"].as_i64().unwrap(), days, "{line}");
            lines += 1;
        }
    }
    visiting.store(false, std::sync::atomic::Ordering::Relaxed);
    for visitor in visitors {
        visitor.await.unwrap();
    }
    assert!(
        lines > 15,
        "the exports held the counters visited: {lines} lines"
    );
}

/// An export longer than the header read timeout is written whole: the connection is
/// idle only once nothing has been written for that long (it was closed that long after
/// the answer began, cutting the file at a line boundary, so that it looked whole). The
/// timeout is a third of how long an export of the same counters takes on this machine
/// now, so that the whole export outlasts it while each page (of 30) is written well
/// within it.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_that_lasts_longer_than_the_idle_limit_is_written_whole() {
    let (measuring, token) = spawn_with_admin(Backend::Redis, &PATIENT_STORE).await;
    let counters = 6000;
    let lines: String = (0..counters)
        .map(|i| format!("{{\"name\":\"long/export-{i}\",\"total\":{i}}}\n"))
        .collect();
    import_in_parts(&measuring.client, &lines).await;
    let started = std::time::Instant::now();
    export(&measuring.client).await;
    let idle_limit = (started.elapsed() / 3).max(MIN_HEADER_READ);

    let limit = format!("{}ms", idle_limit.as_millis());
    let redis = measuring.redis.as_ref().unwrap().url();
    let app = TestApp::spawn_on_redis(
        &redis,
        &[
            "--rate-limit",
            "off",
            "--admin-token-file",
            token.path().to_str().unwrap(),
            "--header-read-timeout",
            &limit,
            PATIENT_STORE[0],
            PATIENT_STORE[1],
            PATIENT_STORE[2],
            PATIENT_STORE[3],
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let export = export(&app.client).await;
    let took = started.elapsed();
    let names: BTreeSet<String> = export
        .lines()
        .filter_map(|line| {
            let counter: Value = serde_json::from_str(line).unwrap();
            counter["name"].as_str().map(str::to_owned)
        })
        .filter(|name| name.starts_with("long/export-"))
        .collect();
    assert_eq!(
        names.len(),
        counters,
        "every counter, in {took:?} with an idle limit of {limit}"
    );
}

/// A client that stops reading an export for longer than the header read timeout, as one
/// reading slowly through a large receive buffer seems to (TCP shows the service no
/// progress until a sixteenth of that buffer is free), gets it whole: the send timeout,
/// not the header read timeout, bounds a wait for the client to take an answer.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_whose_client_pauses_past_the_header_read_timeout_is_written_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const COUNTERS: usize = 600;
    let args = [
        &["--header-read-timeout", "200ms", "--send-timeout", "10s"][..],
        &PATIENT_STORE,
    ]
    .concat();
    let (app, _token) = spawn_with_admin(Backend::Embedded, &args).await;
    let deadlines = limits::deadlines(&args);
    let today = stackdemo::counters::Day::today();
    let days: String = (0..100)
        .map(|back| format!("\"{}\":1", today.minus(back)))
        .collect::<Vec<_>>()
        .join(",");
    let lines: String = (0..COUNTERS)
        .map(|i| format!("{{\"name\":\"paused/export-{i}\",\"total\":100,\"days\":{{{days}}}}}\n"))
        .collect();
    import_in_parts(&app.client, &lines).await;

    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/admin/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut received = vec![0u8; 64 * 1024];
    stream.read_exact(&mut received).await.unwrap();
    // The client's pause: several header read timeouts, well within the send timeout.
    tokio::time::sleep(deadlines.header_read * 5).await;
    stream.read_to_end(&mut received).await.unwrap();
    let text = String::from_utf8_lossy(&received);

    assert_eq!(
        text.matches("\"name\":\"paused/export-").count(),
        COUNTERS,
        "{} bytes",
        received.len()
    );
    assert!(text.ends_with("0\r\n\r\n"), "the export's end");
}

/// With the tutorial's counter at the most a total can hold every `GET /` is refused, so
/// the replica says it is not ready, why, and is ready again once the total is lowered.
async fn the_tutorials_counter_at_its_limit_is_not_ready_until_the_administrator_lowers_it(
    backend: Backend,
) {
    let (app, _token) = spawn_with_admin(backend, &[]).await;
    let client = &app.client;
    let set = |total: i64| async move {
        let response = as_admin(client, Method::PUT, "/api/counters/hits")
            .json(&json!({ "total": total }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "setting {total}");
    };
    set(i64::MAX).await;

    let refused = client.try_visit().await;
    assert_eq!(
        refused.status,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{refused:?}"
    );
    let readiness = client.readiness().await;
    assert!(
        readiness.starts_with("503 ") && readiness.contains("the counter is at its limit"),
        "/readyz answered {readiness}"
    );

    set(41).await;
    assert_eq!(
        client.ready_status().await,
        StatusCode::OK,
        "{}",
        client.readiness().await
    );
    assert_eq!(client.visit().await, 42);
}

async fn named_counters_count_apart_and_read_without_counting(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "off"]).await;
    let client = &app.client;

    let (_, first) = text(client, "/c/owner/repo").await;
    let (_, second) = text(client, "/c/owner/repo").await;
    let (_, other) = text(client, "/c/example.com/docs/intro").await;
    let (status, counted) = json(client, Method::POST, "/api/counters/owner/repo").await;
    let tutorial = client.visit().await;

    assert_eq!(first, "Hello World! I have been seen 1 times.\n");
    assert_eq!(second, "Hello World! I have been seen 2 times.\n");
    assert_eq!(other, "Hello World! I have been seen 1 times.\n");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counted, json!({ "name": "owner/repo", "total": 3 }));
    assert_eq!(tutorial, 1, "the tutorial's counter is apart");

    let (status, read) = json(client, Method::GET, "/api/counters/owner/repo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["total"], 3);
    assert_eq!(read["today"]["visits"], 3);
    let head = client
        .request(Method::HEAD, "/api/counters/owner/repo")
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    let head = client.request(Method::HEAD, "/c/owner/repo").await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        total(client, "owner/repo").await,
        3,
        "reads and HEAD never count"
    );
    assert_eq!(total(client, "hits").await, 1, "the tutorial's, by its key");
    let response = client.get("/api/counters/owner/repo").await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "*",
        "pages may read counts from scripts"
    );

    let (status, _) = json(client, Method::GET, "/api/counters/never/visited").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let too_long = format!("/c/{}", "a".repeat(129));
    for bad in [
        "/c/a//b",
        "/c/a/../b",
        "/c/a/.",
        "/c/..",
        "/c/a%20b",
        "/c/a:b",
        "/c/a/history",
        too_long.as_str(),
        "/api/counters/a%00b",
    ] {
        // As sent: an HTTP client would take the dot segments out of the path.
        let request = format!("GET {bad} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(app.address, request.as_bytes()).await;
        assert_eq!(answer.status, 400, "{bad}: {answer:?}");
        assert!(
            answer.body.starts_with("Bad Request: "),
            "{bad}: {answer:?}"
        );
    }
    assert_eq!(
        total(client, "owner/repo").await,
        3,
        "nothing refused was counted"
    );
}

/// In a process of its own: the in-doubt count is process-wide, and other tests' services
/// in this one report theirs.
async fn many_counters_under_concurrency_get_distinct_contiguous_numbers_each(backend: Backend) {
    let (dir, redis) = (tempfile::tempdir().unwrap(), RedisServer::start().await);
    let url = redis.url();
    let mut args = match backend {
        Backend::Redis => vec!["--redis-url", url.as_str()],
        Backend::Embedded => vec!["--data-dir", dir.path().to_str().unwrap()],
    };
    args.extend(["--rate-limit", "off"]);
    // Not about timeouts: every visit is to be counted, a store call past the default
    // timeout on a loaded machine too.
    args.extend(PATIENT_STORE);
    let app = ServiceProcess::start(&args).await;
    let load = Load::start_on_counters(
        std::slice::from_ref(&app.client),
        16,
        0,
        Counters::zipf(500),
    );
    load.wait_for_acknowledged(3000, for_visits(3000), || async { String::new() })
        .await;
    let history = load.stop().await;

    let mut totals = Totals::new();
    for index in history.visited() {
        let name = history.counters().name(index).to_owned();
        totals.insert(index, (0, total(&app.client, &name).await));
    }
    let in_doubt = app.client.metric("stackdemo_visits_in_doubt_total").await as u64;
    let report = history.assert_counters_held(&totals, in_doubt);

    assert_eq!(
        report.failed,
        0,
        "{}\n{}",
        history.refusals(),
        app.log()
            .lines()
            .filter(|line| !line.contains("\"GET\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(totals.len() > 100, "{} counters visited", totals.len());
    let counted: i64 = totals.values().map(|(_, end)| end).sum();
    assert_eq!(counted, report.succeeded as i64, "every visit counted once");
}

async fn the_history_comes_by_day_as_json_and_csv(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "off"]).await;
    let client = &app.client;
    for _ in 0..4 {
        text(client, "/c/blog/post").await;
    }

    let (status, history) = json(
        client,
        Method::GET,
        "/api/counters/blog/post/history?days=3",
    )
    .await;
    let (csv_status, csv) = text(client, "/api/counters/blog/post/history?days=3&format=csv").await;
    let (_, default) = json(client, Method::GET, "/api/counters/blog/post/history").await;
    let (_, encoded) = json(
        client,
        Method::GET,
        "/api/counters/blog/post/history?days=%33&format=%6Ason",
    )
    .await;
    assert_eq!(encoded, history, "a query is read percent-decoded");

    assert_eq!(status, StatusCode::OK);
    let days = history["days"].as_array().unwrap();
    assert_eq!(days.len(), 3, "{history}");
    assert_eq!(days[0]["visits"], 0);
    assert_eq!(days[2]["visits"], 4, "today last: {history}");
    assert_eq!(days[2]["unique"], 1);
    assert!(days[0]["date"].as_str().unwrap() < days[2]["date"].as_str().unwrap());
    assert_eq!(csv_status, StatusCode::OK);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "date,visits,unique");
    assert_eq!(lines.len(), 4, "{csv}");
    assert_eq!(
        lines[3],
        format!("{},4,1", days[2]["date"].as_str().unwrap())
    );
    assert_eq!(default["days"].as_array().unwrap().len(), 30);
    for bad in ["days=0", "days=401", "days=x", "format=xml"] {
        let (status, body) = text(client, &format!("/api/counters/blog/post/history?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = json(client, Method::POST, "/api/counters/blog/post/history").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

async fn unique_visitors_are_told_apart_by_address_and_agent_and_forwarded_only_by_a_trusted_proxy(
    backend: Backend,
) {
    let edge = TestApp::spawn_with(
        backend,
        &["--rate-limit", "off", "--trusted-proxies", "127.0.0.0/8"],
    )
    .await;
    let untrusting = TestApp::spawn_with(backend, &["--rate-limit", "off"]).await;
    let visit = async |app: &TestApp, forwarded: &str, agent: &str| {
        let response = app
            .client
            .request_builder(Method::GET, "/c/landing")
            .header("x-forwarded-for", forwarded)
            .header(header::USER_AGENT, agent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    };
    for app in [&edge, &untrusting] {
        for round in 0..3 {
            for n in 0..10 {
                visit(app, &format!("203.0.113.{n}"), "Mozilla/5.0").await;
            }
            // A client's own header is not believed: the rightmost entry the edge added is.
            visit(
                app,
                &format!("198.51.100.{round}, 203.0.113.1"),
                "Mozilla/5.0",
            )
            .await;
        }
        visit(app, "203.0.113.1", "curl/8").await;
    }
    let unique = async |app: &TestApp| {
        let (_, read) = json(&app.client, Method::GET, "/api/counters/landing").await;
        (
            read["today"]["visits"].as_i64(),
            read["today"]["unique"].as_i64(),
        )
    };

    assert_eq!(
        unique(&edge).await,
        (Some(34), Some(11)),
        "ten addresses, and one of them with another agent"
    );
    assert_eq!(
        unique(&untrusting).await,
        (Some(34), Some(2)),
        "X-Forwarded-For from an untrusted peer is ignored: one address, two agents"
    );
}

/// A HyperLogLog of 2^14 registers, Redis's and the embedded store's: 1.04 / sqrt(2^14).
const SKETCH_STANDARD_ERROR: f64 = 0.0081;

async fn unique_visitors_are_estimated_within_the_sketchs_error(backend: Backend) {
    // Through the store, as the batcher sends them: 100 000 visitors in batches.
    let (dir, redis) = (tempfile::tempdir().unwrap(), RedisServer::start().await);
    let url = redis.url();
    let args: Vec<&str> = match backend {
        Backend::Redis => vec!["stackdemo", "--redis-url", url.as_str()],
        Backend::Embedded => vec!["stackdemo", "--data-dir", dir.path().to_str().unwrap()],
    };
    let store = open_store(&args);
    for (name, visitors) in [("ten-thousand", 10_000u64), ("hundred-thousand", 100_000)] {
        let counter = stackdemo::counters::CounterName::parse(name).unwrap();
        let all: Vec<u64> = (0..visitors)
            .map(|v| v.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for batch in all.chunks(4096) {
            let tally = stackdemo::counters::Tally {
                counter: counter.clone(),
                visits: batch.len() as u64,
                visitors: batch.to_vec(),
            };
            let by = tokio::time::Instant::now() + Duration::from_secs(10);
            store.add_visits(&[tally], by).await.expect("a write");
        }
        let reading = store
            .counter(&counter, 1, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        let estimate = reading.today().unique as f64;
        let error = (estimate - visitors as f64).abs() / visitors as f64;
        // The salt changes with every run, and the estimate with it: a bound of about two
        // standard errors fails one run in twenty; 4.5 of them, one in 150 000.
        assert!(
            error < 4.5 * SKETCH_STANDARD_ERROR,
            "{estimate} for {visitors} visitors ({backend:?})"
        );
        assert_eq!(reading.total, visitors as i64);
        assert!(
            reading.today().unique <= reading.today().visits,
            "never more visitors than visits: {:?}",
            reading.today()
        );
    }
}

async fn the_administrator_sets_resets_and_deletes_and_no_one_else_can(backend: Backend) {
    let (app, _token) = spawn_with_admin(backend, &[]).await;
    let client = &app.client;
    text(client, "/c/page").await;
    let admin = |method: Method, path: &str, body: Option<Value>| {
        let mut request = as_admin(client, method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };

    let anonymous = client
        .request_builder(Method::PUT, "/api/counters/page")
        .json(&json!({ "total": 1000 }))
        .send()
        .await
        .unwrap();
    let wrong = client
        .request_builder(Method::DELETE, "/api/counters/page")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(total(client, "page").await, 1, "nothing changed");

    let set = admin(
        Method::PUT,
        "/api/counters/page",
        Some(json!({ "total": 1000 })),
    )
    .await
    .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(set.json::<Value>().await.unwrap()["previous"], 1);
    assert_eq!(
        text(client, "/c/page").await.1,
        "Hello World! I have been seen 1001 times.\n"
    );
    let reset = admin(
        Method::PUT,
        "/api/counters/page",
        Some(json!({ "total": 0 })),
    )
    .await
    .unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    assert_eq!(
        text(client, "/c/page").await.1,
        "Hello World! I have been seen 1 times.\n"
    );
    for bad in [
        json!({ "total": -1 }),
        json!({ "total": "x" }),
        json!({ "count": 3 }),
    ] {
        let refused = admin(Method::PUT, "/api/counters/page", Some(bad.clone()))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let deleted = admin(Method::DELETE, "/api/counters/page", None)
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(
        deleted.json::<Value>().await.unwrap()["previous"],
        1,
        "the total it held"
    );
    let (status, _) = json(client, Method::GET, "/api/counters/page").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted with its history");
    let again = admin(Method::DELETE, "/api/counters/page", None)
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let tutorial = admin(Method::DELETE, "/api/counters/hits", None)
        .await
        .unwrap();
    assert_eq!(tutorial.status(), StatusCode::BAD_REQUEST);

    let without_admin = TestApp::spawn_with(backend, &[]).await;
    let off = as_admin(&without_admin.client, Method::GET, "/api/admin/export")
        .send()
        .await
        .unwrap();
    assert_eq!(
        off.status(),
        StatusCode::NOT_FOUND,
        "administration is off without a token"
    );
}

async fn closed_counters_count_only_what_the_administrator_created(backend: Backend) {
    let (app, _token) = spawn_with_admin(backend, &["--counters", "closed"]).await;
    let client = &app.client;

    let (unknown, _) = text(client, "/c/someone/else").await;
    let created = as_admin(client, Method::PUT, "/api/counters/mine")
        .json(&json!({ "total": 0 }))
        .send()
        .await
        .unwrap();
    let (mine, body) = text(client, "/c/mine").await;

    assert_eq!(unknown, StatusCode::NOT_FOUND);
    assert_eq!(created.status(), StatusCode::OK);
    assert_eq!(
        (mine, body.as_str()),
        (StatusCode::OK, "Hello World! I have been seen 1 times.\n")
    );
    assert_eq!(
        client.visit().await,
        1,
        "the tutorial's counter counts as ever"
    );
    let (status, _) = json(client, Method::GET, "/api/counters/someone/else").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "and nothing was made of the unknown name"
    );
}

async fn over_the_rate_limit_a_visit_is_refused_with_429_and_not_counted(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "5/1m"]).await;
    let client = &app.client;
    for n in 1..=5 {
        assert_eq!(
            text(client, "/c/limited").await.1,
            format!("Hello World! I have been seen {n} times.\n")
        );
    }

    let refused = client.get("/badge/limited.svg").await;

    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        total(client, "limited").await,
        5,
        "the refused visit was not counted"
    );
    for _ in 0..10 {
        client.visit().await;
    }
    assert_eq!(
        client.visit().await,
        11,
        "the tutorial's / is not limited unless set"
    );

    // The tutorial's limit holds for its counter on every route, the named ones too.
    let app = TestApp::spawn_with(
        backend,
        &["--tutorial-rate-limit", "2/1m", "--rate-limit", "off"],
    )
    .await;
    let client = &app.client;
    client.visit().await;
    client.visit().await;
    for path in ["/", "/c/hits", "/badge/hits.svg"] {
        let refused = client.get(path).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
    }
    let refused = client
        .request_builder(Method::POST, "/api/counters/hits")
        .header(header::ORIGIN, "https://example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "retry-after",
        "a page's script can read when to try again"
    );
    assert_eq!(total(client, "hits").await, 2);
    assert_eq!(text(client, "/c/other").await.0, StatusCode::OK);
}

/// The most counters include the tutorial's, whether it was visited before the others or
/// after: it always has its place.
async fn beyond_the_most_counters_a_new_name_is_refused_with_507(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "off", "--max-counters", "3"]).await;
    let client = &app.client;
    text(client, "/c/one").await;
    text(client, "/c/two").await;

    let (status, body) = text(client, "/c/three").await;

    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body.contains("STACKDEMO_MAX_COUNTERS"), "{body}");
    assert_eq!(
        text(client, "/c/one").await.0,
        StatusCode::OK,
        "known names still count"
    );
    let (status, _) = json(client, Method::GET, "/api/counters/three").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        client.visit().await,
        1,
        "the tutorial's counter has its place"
    );
    let (_, listed) = json(client, Method::GET, "/api/counters").await;
    assert_eq!(
        listed["counters"].as_array().map(Vec::len),
        Some(3),
        "no more counters than allowed: {listed}"
    );
}

async fn a_browser_that_asked_not_to_be_counted_is_not(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "off"]).await;
    let client = &app.client;
    text(client, "/c/home").await;

    let ignored = client.get("/ignore-me").await;
    let cookie = ignored.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = client
        .request_builder(Method::GET, "/c/home")
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, flagged) = text(client, "/c/home?count=0").await;
    let (_, badge) = text(client, "/badge/home.svg?count=0").await;
    // A misspelt flag is refused, not taken for a visit to count.
    let mut misspelt = Vec::new();
    for path in [
        "/c/home?count=flase",
        "/badge/home.svg?count=flase",
        "/api/counters/home?count=flase",
    ] {
        let method = if path.starts_with("/api") {
            Method::POST
        } else {
            Method::GET
        };
        let answer = client.request(method, path).await;
        misspelt.push((path, answer.status(), answer.text().await.unwrap()));
    }
    // The tutorial's `/` counts every visit, as it always has.
    let tutorial = [
        text(client, "/?count=0").await.1,
        text(client, "/?count=flase").await.1,
    ];

    assert_eq!(pair, "stackdemo_nocount=1");
    assert_eq!(
        with_cookie, "Hello World! I have been seen 1 times.\n",
        "shown, not counted"
    );
    assert_eq!(flagged, "Hello World! I have been seen 1 times.\n");
    assert!(badge.contains(">1</text>"), "{badge}");
    for (path, status, body) in &misspelt {
        assert_eq!(*status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.contains("count= takes 0, false"), "{path}: {body}");
    }
    assert_eq!(
        tutorial,
        [1, 2].map(|n| format!("Hello World! I have been seen {n} times.\n"))
    );
    assert_eq!(total(client, "home").await, 1);
    let undo = client.get("/ignore-me?undo=1").await;
    let cleared = undo.headers()[header::SET_COOKIE].to_str().unwrap();
    // Out of reach of a page's scripts, as the cookie it clears is.
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("HttpOnly"),
        "{cleared}"
    );
}

async fn a_badge_counts_and_shows_the_count_and_is_fetched_again_every_time(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "off"]).await;
    let client = &app.client;

    let first = client.get("/badge/owner/repo.svg").await;
    let headers = first.headers().clone();
    let first = first.text().await.unwrap();
    let second = client
        .get("/badge/owner/repo.svg?label=hits&style=flat-square")
        .await;
    let second = second.text().await.unwrap();
    let shown = client
        .get("/badge/owner/repo.svg?count=0&show=unique")
        .await;
    let tag = shown.headers()[header::ETAG].clone();
    let shown = shown.text().await.unwrap();
    let unchanged = client
        .request_builder(Method::GET, "/badge/owner/repo.svg?count=0&show=unique")
        .header(header::IF_NONE_MATCH, tag)
        .send()
        .await
        .unwrap();

    assert_eq!(
        headers[header::CONTENT_TYPE],
        "image/svg+xml; charset=utf-8"
    );
    let cache = headers[header::CACHE_CONTROL].to_str().unwrap();
    assert!(
        cache.contains("no-cache") && cache.contains("max-age=0"),
        "{cache}"
    );
    assert!(headers.contains_key(header::ETAG));
    assert!(
        first.starts_with("<svg") && first.contains("visits: 1"),
        "{first}"
    );
    assert!(second.contains("hits: 2"), "{second}");
    assert!(shown.contains("visitors today: 1"), "{shown}");
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        total(client, "owner/repo").await,
        2,
        "count=0 counted nothing"
    );
    let head = client.request(Method::HEAD, "/badge/owner/repo.svg").await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(total(client, "owner/repo").await, 2, "HEAD counted nothing");
    for bad in ["style=round", "color=nope", "show=yesterday", "label=%01"] {
        let (status, _) = text(client, &format!("/badge/owner/repo.svg?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        text(client, "/badge/owner/repo.png").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        total(client, "owner/repo").await,
        2,
        "refused badges counted nothing"
    );
}

/// An import line of a counter with `visits` today and `sketch` (of `format`) as today's
/// unique visitors.
fn with_sketch_today(name: &str, visits: u64, format: &str, sketch: &[u8]) -> String {
    use base64::Engine;

    let today = today_utc();
    let line = json!({
        "name": name,
        "total": visits,
        "days": { today.clone(): visits },
        "unique": { today: {
            "estimate": visits,
            "format": format,
            "sketch": base64::engine::general_purpose::STANDARD.encode(sketch),
        }},
    });
    format!("{line}\n")
}

/// An embedded sketch of the right shape whose parts disagree (registers without their
/// words) is refused by import, naming the line and the day: taken, it made every later
/// visit of the counter panic in the store's writer, and every read of it after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_sketch_whose_parts_disagree_is_refused_by_import() {
    let (app, _token) = spawn_with_admin(Backend::Embedded, &[]).await;
    let client = &app.client;
    // Precision 14, its sizes, an empty sparse list and registers said to be 16 384, with
    // no word to hold them.
    let sketch: Vec<u8> = [
        &[
            0x0e, 0x80, 0x80, 0x01, 0x80, 0x80, 0x80, 0x08, 0xb3, 0x66, 0, 0, 0, 0, 1,
        ][..],
        &[0, 0x80, 0x80, 0x01, 0x80, 0x80, 0x01],
    ]
    .concat();
    let today = today_utc();
    let line = with_sketch_today("evil/sketch", 5, "hllpp-p14", &sketch);
    let (status, said) = import(client, line).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        said.contains(&format!(
            "line 1: unique: {today}: the sketch is not one the embedded store writes"
        )),
        "{said}"
    );

    let (status, body) = text(client, "/c/evil/sketch").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        total(client, "evil/sketch").await,
        1,
        "nothing of the line was kept"
    );
    client.wait_ready(allowed(Duration::from_secs(1))).await;
}

/// A Redis sketch whose header caches a count it does not hold (the cache says it is
/// fresh): imported, Redis would answer that number for the day's unique visitors, more
/// than the day's visits. The import marks the cache stale, so Redis counts the registers.
#[tokio::test(flavor = "multi_thread")]
async fn an_imported_redis_sketch_is_counted_from_its_registers_not_its_cached_count() {
    let (app, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    let client = &app.client;
    // Sparse, no register set, a cached count of 2^63 - 1 said to be fresh.
    let mut sketch = b"HYLL\x01\0\0\0".to_vec();
    sketch.extend(i64::MAX.to_le_bytes());
    sketch.extend([0x7f, 0xff]);
    let line = with_sketch_today("cached/count", 3, "redis-hll", &sketch);
    let (status, said) = import(client, line).await;
    assert_eq!(status, StatusCode::OK, "{said}");

    let (status, read) = json(client, Method::GET, "/api/counters/cached/count").await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["today"]["unique"], 0, "{read}");
}

/// A Redis the tutorial's own app counted in holds `hits` alone, registered nowhere: the
/// service started on it lists and exports the tutorial's counter before any visit
/// here, so that moving such a Redis elsewhere keeps its count; also as a user that may
/// not run scripts (it cannot count, but the administrator exports what is there).
#[tokio::test(flavor = "multi_thread")]
async fn the_tutorials_count_is_listed_and_exported_before_its_first_visit_here() {
    let redis = RedisServer::start().await;
    redis
        .query(&[
            "ACL",
            "SETUSER",
            "noscripts",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-eval",
            "-evalsha",
        ])
        .await
        .unwrap();
    let token = token_file();
    let path = token.path().to_str().unwrap().to_owned();
    let args = ["--rate-limit", "off", "--admin-token-file", path.as_str()];
    let without_scripts = format!("redis://noscripts:pw@127.0.0.1:{}", redis.port);
    for url in [without_scripts, redis.url()] {
        redis.query(&["FLUSHALL"]).await.unwrap();
        redis.query(&["SET", "hits", "41"]).await.unwrap();
        let app = TestApp::spawn_on_redis(&url, &args).await;

        let lines = export(&app.client).await;
        let (status, listed) = json(&app.client, Method::GET, "/api/counters").await;

        let exported: Vec<Value> = lines
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(exported.len(), 1, "{lines}");
        assert_eq!(exported[0]["name"], "hits", "{lines}");
        assert_eq!(exported[0]["total"], 41, "{lines}");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed["counters"][0]["name"], "hits", "{listed}");
        assert_eq!(listed["counters"][0]["total"], 41, "{listed}");
    }
    let app = TestApp::spawn_on_redis(&redis.url(), &args).await;
    assert_eq!(
        app.client.visit().await,
        42,
        "the tutorial's count carries on"
    );
}

/// Export from one store and import into the other: totals and days move; unique
/// sketches move between stores of one kind only.
#[tokio::test(flavor = "multi_thread")]
async fn counters_exported_from_one_store_are_imported_into_the_other() {
    let token = token_file();
    let path = token.path().to_str().unwrap().to_owned();
    let args = ["--rate-limit", "off", "--admin-token-file", path.as_str()];
    let redis = TestApp::spawn_with(Backend::Redis, &args).await;
    let embedded = TestApp::spawn_with(Backend::Embedded, &args).await;
    let again_redis = TestApp::spawn_with(Backend::Redis, &args).await;
    for (name, visits) in [("a", 3), ("b/c", 5)] {
        for n in 0..visits {
            let response = redis
                .client
                .request_builder(Method::GET, &format!("/c/{name}"))
                .header(header::USER_AGENT, format!("agent {n}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    }
    redis.client.visit().await;
    let lines = as_admin(&redis.client, Method::GET, "/api/admin/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: BTreeSet<&str> = parsed.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["a", "b/c", "hits"]));

    for target in [&embedded, &again_redis] {
        let imported = as_admin(&target.client, Method::POST, "/api/admin/import")
            .body(lines.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(imported.status(), StatusCode::OK);
        assert_eq!(imported.json::<Value>().await.unwrap()["imported"], 3);
        assert_eq!(total(&target.client, "b/c").await, 5);
        assert_eq!(
            target.client.visit().await,
            2,
            "the tutorial's counter carries on"
        );
        assert_eq!(
            text(&target.client, "/c/a").await.1,
            "Hello World! I have been seen 4 times.\n"
        );
        let (_, history) = json(
            &target.client,
            Method::GET,
            "/api/counters/b/c/history?days=1",
        )
        .await;
        assert_eq!(history["days"][0]["visits"], 5, "the day moved");
    }
    let (_, same_kind) = json(&again_redis.client, Method::GET, "/api/counters/b/c").await;
    assert_eq!(
        same_kind["today"]["unique"], 5,
        "a Redis sketch moves to Redis"
    );

    let garbage = as_admin(&embedded.client, Method::POST, "/api/admin/import")
        .body("{\"name\":\"ok\",\"total\":1}\nnot json\n{\"name\":\"never\",\"total\":1}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let said = garbage.text().await.unwrap();
    assert!(
        said.contains("line 2") && said.contains("after 1 counter"),
        "{said}"
    );
    assert_eq!(total(&embedded.client, "ok").await, 1);
    let (status, _) = json(&embedded.client, Method::GET, "/api/counters/never").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An operator's key of the wrong type on one counter refuses that counter alone, with
/// the reason; the others in the same batches count.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_typed_key_of_one_counter_refuses_that_counter_only() {
    let app = TestApp::spawn_with(Backend::Redis, &["--rate-limit", "off"]).await;
    let redis = app.redis.as_ref().unwrap();
    text(&app.client, "/c/broken").await;
    redis.query(&["DEL", "hits:c:broken"]).await.unwrap();
    redis
        .query(&["SET", "hits:c:broken", "not a hash"])
        .await
        .unwrap();

    let (status, body) = text(&app.client, "/c/broken").await;
    let (fine, _) = text(&app.client, "/c/fine").await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("wrong"), "{body}");
    assert_eq!(fine, StatusCode::OK);
    assert_eq!(app.client.visit().await, 1);
    // Reading it says why too, and the list flags it and shows the others.
    for path in [
        "/api/counters/broken",
        "/c/broken?count=0",
        "/badge/broken.svg?count=0",
    ] {
        let (status, body) = text(&app.client, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert!(body.contains("wrong type"), "{path}: {body}");
    }
    let (status, listed) = json(&app.client, Method::GET, "/api/counters").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let listed: Vec<&Value> = listed["counters"].as_array().unwrap().iter().collect();
    let broken = listed.iter().find(|c| c["name"] == "broken").unwrap();
    assert!(broken["total"].is_null(), "{broken}");
    assert!(broken["error"].as_str().unwrap().contains("wrong type"));
    assert!(
        listed
            .iter()
            .any(|c| c["name"] == "fine" && c["total"] == 1)
    );
    assert_eq!(
        redis.query(&["GET", "hits:c:broken"]).await.unwrap(),
        redis::Value::BulkString(b"not a hash".to_vec()),
        "the operator's key is left as it is"
    );
}

/// A counter whose key holds another kind of value (an operator's mistake) is repaired by
/// the administrator: setting its total is refused as a conflict (409, with what to do:
/// retrying cannot help), and deleting it removes its keys, whatever they hold, so that
/// it counts again from 1.
#[tokio::test(flavor = "multi_thread")]
async fn the_administrator_deletes_a_counter_whose_key_has_the_wrong_type() {
    let (app, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    let redis = app.redis.as_ref().unwrap();
    let client = &app.client;
    // A visitor of its own, whom the counter started again must not remember.
    let before = client
        .request_builder(Method::GET, "/c/broken")
        .header(header::USER_AGENT, "an earlier visitor")
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), StatusCode::OK);
    redis.query(&["DEL", "hits:c:broken"]).await.unwrap();
    redis
        .query(&["SET", "hits:c:broken", "not a hash"])
        .await
        .unwrap();
    let admin = |method: Method, body: Option<Value>| {
        let mut request = as_admin(client, method, "/api/counters/broken");
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };

    let set = admin(Method::PUT, Some(json!({ "total": 5 })))
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::CONFLICT);
    let reason = set.text().await.unwrap();
    assert!(
        reason.contains("wrong type") && reason.contains("deleting the counter"),
        "{reason}"
    );
    let (status, said) = import(
        client,
        "{\"name\":\"fine\",\"total\":3}\n{\"name\":\"broken\",\"total\":5}\n",
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        said.contains("line 2") && said.contains("after 1 counter") && said.contains("wrong type"),
        "the import says where it stopped and why: {said}"
    );
    assert_eq!(total(client, "fine").await, 3);
    assert_eq!(
        redis.query(&["GET", "hits:c:broken"]).await.unwrap(),
        redis::Value::BulkString(b"not a hash".to_vec()),
        "a refused change changes nothing"
    );
    // A name never counted, whose key was put there by hand: not registered either.
    redis.query(&["SET", "hits:c:stray", "x"]).await.unwrap();
    let (status, said) = import(client, "{\"name\":\"stray\",\"total\":5}\n").await;
    assert_eq!(status, StatusCode::CONFLICT, "{said}");
    assert_eq!(
        redis
            .query(&["HEXISTS", "hits:counters", "stray"])
            .await
            .unwrap(),
        redis::Value::Int(0),
        "a refused import registers nothing"
    );

    let deleted = admin(Method::DELETE, None).await.unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(
        deleted["previous"],
        Value::Null,
        "a total that was not a number: {deleted}"
    );
    let (status, body) = text(client, "/c/broken").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(total(client, "broken").await, 1);
    let history = client.get("/api/counters/broken/history?days=1").await;
    let history: Value = history.json().await.unwrap();
    assert_eq!(
        history["days"][0]["unique"], 1,
        "the earlier visitor is forgotten: {history}"
    );

    // Only a day's sketch, made by hand for a name that never counted: deleted too.
    let date = history["days"][0]["date"].as_str().unwrap();
    let sketch = format!("hits:u:{date}:ghost");
    redis
        .query(&["SET", &sketch, "not a sketch"])
        .await
        .unwrap();
    assert_eq!(
        text(client, "/c/ghost").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let ghost = as_admin(client, Method::DELETE, "/api/counters/ghost")
        .send()
        .await
        .unwrap();
    assert_eq!(ghost.status(), StatusCode::OK);
    assert_eq!(text(client, "/c/ghost").await.0, StatusCode::OK);
}

/// An export saved by an editor that puts a byte order mark before it imports as it is;
/// a mark anywhere else is not a counter.
#[tokio::test(flavor = "multi_thread")]
async fn an_import_saved_with_a_byte_order_mark_is_taken() {
    let (app, _token) = spawn_with_admin(Backend::Embedded, &[]).await;
    let lines = "\u{feff}{\"name\":\"marked\",\"total\":7}\n{\"name\":\"next\",\"total\":2}\n";

    let (status, body) = import(&app.client, lines).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(total(&app.client, "marked").await, 7);
    assert_eq!(total(&app.client, "next").await, 2);
    let (status, body) = import(&app.client, "{\"name\":\"a\",\"total\":1}\n\u{feff}{}\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("line 2"), "{body}");
}

/// A Redis total set below zero by hand counts up through zero, as `INCR` does: its
/// export imports into Redis as it was, and into the embedded store, which counts from
/// 0, not at all (the line and the reason said), rather than as another number.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_total_set_below_zero_moves_to_redis_whole_and_not_elsewhere() {
    let (from, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    text(&from.client, "/c/below").await;
    from.redis
        .as_ref()
        .unwrap()
        .query(&["HSET", "hits:c:below", "total", "-1500"])
        .await
        .unwrap();
    let (_, seen) = text(&from.client, "/c/below").await;
    assert_eq!(seen, "Hello World! I have been seen -1499 times.\n");

    let lines = export(&from.client).await;
    let below = lines
        .lines()
        .find(|line| line.contains("\"below\""))
        .expect("the counter exported");

    let (to_redis, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    let (status, body) = import(&to_redis.client, format!("{below}\n")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(total(&to_redis.client, "below").await, -1499);
    let (to_embedded, _token) = spawn_with_admin(Backend::Embedded, &[]).await;
    let (status, body) = import(&to_embedded.client, format!("{below}\n")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("line 1") && body.contains("below zero"),
        "{body}"
    );
    let (status, _) = json(&to_embedded.client, Method::GET, "/api/counters/below").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing imported");
}

/// A day of a counter whose visits are not a count (changed by hand in Redis: a word, a
/// number below zero or past what a count holds) cuts the export short, as an
/// unreadable total does: left out, the export would look whole without that day.
#[tokio::test(flavor = "multi_thread")]
async fn a_day_whose_visits_are_not_a_count_cuts_the_export_short() {
    let (app, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    let redis = app.redis.as_ref().unwrap();
    text(&app.client, "/c/kept").await;
    text(&app.client, "/c/edited").await;
    let yesterday = stackdemo::counters::Day::today().minus(1).to_string();
    export(&app.client).await;

    for visits in ["abc", "-3", "99999999999999999999"] {
        redis
            .query(&["HSET", "hits:c:edited", &yesterday, visits])
            .await
            .unwrap();
        let response = as_admin(&app.client, Method::GET, "/api/admin/export")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let ended = response.text().await;
        assert!(
            ended.is_err(),
            "{visits}: an export that looks whole: {ended:?}"
        );
    }
}

/// An import cut short while its body is still arriving, by the service stopping (at
/// the shutdown deadline its connection is cut) or by its client leaving: the log says
/// how far it got, where no answer can (the counters before stay imported).
#[tokio::test(flavor = "multi_thread")]
async fn an_import_cut_short_by_a_stop_or_its_client_leaving_says_in_the_log_how_far_it_got() {
    use tokio::io::AsyncWriteExt;

    for service_stops in [true, false] {
        let token = token_file();
        let token_path = token.path().to_str().unwrap();
        let args = ["--admin-token-file", token_path, "--shutdown-timeout", "1s"];
        let deadlines = limits::deadlines(&args);
        let mut service = ServiceProcess::start(&args).await;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
            .await
            .unwrap();
        let head = format!(
            "POST /api/admin/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Three lines, then nothing more for now (the import waits up to the request
        // timeout).
        for n in 1..=3 {
            let line = format!("{{\"name\":\"moved/{n}\",\"total\":{n}}}\n");
            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
            stream.write_all(chunk.as_bytes()).await.unwrap();
        }
        wait_until(
            "three lines imported",
            allowed(deadlines.store * 3),
            || async {
                let (_, read) = json(&service.client, Method::GET, "/api/counters/moved/3").await;
                read["total"] == 3
            },
        )
        .await;

        let stopped = "the import stopped before its end";
        if service_stops {
            service.signal(nix::sys::signal::Signal::SIGTERM);
            service
                .wait(allowed(deadlines.exit() + limits::PROCESS_START))
                .await;
            drop(stream);
        } else {
            drop(stream);
            wait_until("the log to say so", allowed(deadlines.request), || async {
                service.log().contains(stopped)
            })
            .await;
        }

        let log = service.log();
        let line = log
            .lines()
            .find(|line| line.contains(stopped))
            .unwrap_or_else(|| panic!("the log does not say how far the import got:\n{log}"));
        assert!(line.contains("\"counters\":3"), "{line}");
    }
}

/// An export cut short by a counter whose key holds another type: the log names the
/// counter and says why in Redis's own words (`WRONGTYPE …`), not wrapped in the text of
/// the client library's pipeline.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_cut_short_by_a_key_of_another_type_logs_why_in_redis_words() {
    let redis = RedisServer::start().await;
    let token = token_file();
    let url = redis.url();
    let token_path = token.path().to_str().unwrap();
    let args = [
        "--redis-url",
        url.as_str(),
        "--admin-token-file",
        token_path,
    ];
    let service = ServiceProcess::start(&args).await;
    text(&service.client, "/c/typed").await;
    redis.query(&["DEL", "hits:c:typed"]).await.unwrap();
    redis
        .query(&["SET", "hits:c:typed", "hello"])
        .await
        .unwrap();

    let response = as_admin(&service.client, Method::GET, "/api/admin/export")
        .send()
        .await
        .unwrap();
    assert!(response.text().await.is_err(), "an export that looks whole");
    let failed = "export failed; the transfer is cut short";
    wait_until(
        "the log to say why",
        allowed(limits::PROCESS_START),
        || async { service.log().contains(failed) },
    )
    .await;

    let log = service.log();
    let line = log.lines().find(|line| line.contains(failed)).unwrap();
    assert!(line.contains("\"counter\":\"typed\""), "{line}");
    assert!(line.contains("\"cause\":\"WRONGTYPE "), "{line}");
    assert!(!line.contains("Pipeline"), "{line}");
}

/// A total that is not a number is not listed as 0, which an export would carry and an
/// import make true; a cursor that no listing gave is 400.
#[tokio::test(flavor = "multi_thread")]
async fn a_total_that_is_not_a_number_is_not_listed_as_zero() {
    let app = TestApp::spawn_with(Backend::Redis, &["--rate-limit", "off"]).await;
    let redis = app.redis.as_ref().unwrap();
    text(&app.client, "/c/damaged").await;
    redis
        .query(&["HSET", "hits:c:damaged", "total", "abc"])
        .await
        .unwrap();

    let (status, listed) = json(&app.client, Method::GET, "/api/counters").await;

    assert_eq!(status, StatusCode::OK);
    let damaged = listed["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|counter| counter["name"] == "damaged")
        .unwrap_or_else(|| panic!("not listed: {listed}"));
    assert!(damaged["total"].is_null(), "{listed}");
    for cursor in ["abc", "-1", "99999999999999999999999", ""] {
        let (status, body) = text(&app.client, &format!("/api/counters?cursor={cursor}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "cursor {cursor:?}: {body}");
    }
}

/// Redis's registry of counters of the wrong type (set by hand) refuses every
/// administrator's change with a reason that says so, not with advice about a counter's
/// own keys; once it is fixed in Redis, changes go through.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_of_the_wrong_type_is_named_as_what_refuses_changes() {
    let (app, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    let redis = app.redis.as_ref().unwrap();
    let client = &app.client;
    text(client, "/c/page").await;
    redis.query(&["DEL", "hits:counters"]).await.unwrap();
    redis
        .query(&["SET", "hits:counters", "not a hash"])
        .await
        .unwrap();
    let admin = |method: Method, path: &'static str, body: &'static str| {
        as_admin(client, method, path).body(body).send()
    };

    for (method, path, body) in [
        (Method::PUT, "/api/counters/page", "{\"total\":5}"),
        (Method::DELETE, "/api/counters/page", ""),
        (
            Method::POST,
            "/api/admin/import",
            "{\"name\":\"page\",\"total\":5}\n",
        ),
    ] {
        let refused = admin(method.clone(), path, body).await.unwrap();
        assert_eq!(refused.status(), StatusCode::CONFLICT, "{method} {path}");
        let reason = refused.text().await.unwrap();
        assert!(
            reason.contains("registry of counters"),
            "{method} {path}: {reason}"
        );
    }
    assert_eq!(
        redis.query(&["GET", "hits:counters"]).await.unwrap(),
        redis::Value::BulkString(b"not a hash".to_vec()),
        "left as it is"
    );

    redis.query(&["DEL", "hits:counters"]).await.unwrap();
    let set = admin(Method::PUT, "/api/counters/page", "{\"total\":5}")
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
}

/// Setting a total tells whether the counter was made by it, also over a total that is
/// not a number (changed by hand): the counter was there, its total unreadable.
#[tokio::test(flavor = "multi_thread")]
async fn setting_a_total_over_one_that_is_not_a_number_says_the_counter_was_there() {
    let (app, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    let redis = app.redis.as_ref().unwrap();
    let client = &app.client;
    text(client, "/c/damaged").await;
    redis
        .query(&["HSET", "hits:c:damaged", "total", "abc"])
        .await
        .unwrap();
    let set = |name: &'static str| {
        as_admin(client, Method::PUT, &format!("/api/counters/{name}"))
            .json(&json!({ "total": 7 }))
            .send()
    };

    let over_damaged: Value = set("damaged").await.unwrap().json().await.unwrap();
    let made: Value = set("brand-new").await.unwrap().json().await.unwrap();

    assert_eq!(over_damaged["created"], false, "{over_damaged}");
    assert_eq!(over_damaged["previous"], Value::Null, "{over_damaged}");
    assert_eq!(made["created"], true, "{made}");
    assert_eq!(total(client, "damaged").await, 7);
}

/// A unique-visitor sketch that Redis finds damaged refuses its own counter's visits, and
/// the other counters of the same batches count.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_sketch_refuses_its_counter_only() {
    let app = TestApp::spawn_with(Backend::Redis, &["--rate-limit", "off"]).await;
    let redis = app.redis.as_ref().unwrap();
    text(&app.client, "/c/sketchy").await;
    let day = today_utc();
    // A sparse sketch without its runs: no register is where PFADD looks for it, so
    // whatever the visitor, Redis answers INVALIDOBJ.
    let mut damaged = b"HYLL\x01\0\0\0".to_vec();
    damaged.extend([0u8; 8]);
    let key = format!("hits:u:{day}:sketchy");
    redis
        .query_bytes(&[b"SET", key.as_bytes(), &damaged])
        .await
        .unwrap();

    // Together, so that they share batches.
    let paths: Vec<String> = (0..24)
        .map(|n| {
            if n % 2 == 0 {
                "/c/sketchy".into()
            } else {
                format!("/c/clean-{n}")
            }
        })
        .collect();
    let answers = futures_util::future::join_all(paths.iter().map(|path| {
        let client = &app.client;
        async move { (path.clone(), text(client, path).await) }
    }))
    .await;

    for (path, (status, body)) in answers {
        if path == "/c/sketchy" {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(body.contains("wrong type"), "{body}");
        } else {
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    }
    assert_eq!(
        total(&app.client, "sketchy").await,
        1,
        "nothing refused was counted"
    );
}

/// An import is a counter as it was: one of the same name is replaced whole, its total,
/// days and unique visitors those of the line, none of its own kept beside them (a
/// restored copy would otherwise carry days and visitors it never had).
async fn an_imported_counter_replaces_the_one_of_its_name_whole(backend: Backend) {
    let (app, _token) = spawn_with_admin(backend, &[]).await;
    let client = &app.client;
    let today = stackdemo::counters::Day::today();
    let yesterday = today.minus(1).to_string();
    let today = today.to_string();
    let (status, said) = import(
        client,
        format!("{{\"name\":\"page\",\"total\":7,\"days\":{{\"{yesterday}\":7}}}}\n"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{said}");
    for n in 0..3 {
        let visit = client
            .request_builder(Method::GET, "/c/page")
            .header(header::USER_AGENT, format!("visitor {n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(visit.status(), StatusCode::OK);
    }

    let (status, said) = import(
        client,
        format!("{{\"name\":\"page\",\"total\":5,\"days\":{{\"{today}\":5}}}}\n"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{said}");

    let (_, read) = json(client, Method::GET, "/api/counters/page").await;
    assert_eq!(read["total"], 5, "{read}");
    assert_eq!(read["today"]["visits"], 5, "{read}");
    assert_eq!(
        read["today"]["unique"], 0,
        "the visitors before are not kept: {read}"
    );
    let (_, history) = json(client, Method::GET, "/api/counters/page/history?days=2").await;
    assert_eq!(history["days"][0]["date"], yesterday.as_str(), "{history}");
    assert_eq!(
        history["days"][0]["visits"], 0,
        "the days before are not kept: {history}"
    );
    let line = export(client)
        .await
        .lines()
        .find(|line| line.contains("\"page\""))
        .map(str::to_owned)
        .unwrap();
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["days"], json!({ today.as_str(): 5 }), "{line}");
    assert_eq!(line["unique"], json!({}), "{line}");
}

/// Today, as the stores name days (UTC).
fn today_utc() -> String {
    stackdemo::counters::Day::today().to_string()
}

/// Every administrator's change is in the log with what it changed; the token never is.
#[tokio::test(flavor = "multi_thread")]
async fn the_administrators_changes_are_logged_and_the_token_is_not() {
    let token = token_file();
    let dir = tempfile::tempdir().unwrap();
    let service = ServiceProcess::start_with_env(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--admin-token-file",
            token.path().to_str().unwrap(),
        ],
        &[("RUST_LOG", "info")],
    )
    .await;
    for (method, body) in [
        (Method::PUT, Some(json!({ "total": 42 }))),
        (Method::DELETE, None),
    ] {
        let mut request = as_admin(&service.client, method, "/api/counters/docs");
        if let Some(body) = body {
            request = request.json(&body);
        }
        assert_eq!(request.send().await.unwrap().status(), StatusCode::OK);
    }
    let refused = service
        .client
        .request_builder(Method::PUT, "/api/counters/docs")
        .header(header::AUTHORIZATION, "Bearer guess")
        .json(&json!({ "total": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // Anyone may send a wrong token, many times a second: the log says so once a second
    // (`THROTTLE_EVERY`), and how many it left out.
    let guessing = std::time::Instant::now();
    for guess in 0..200 {
        let refused = service
            .client
            .request_builder(Method::DELETE, "/api/counters/docs")
            .header(header::AUTHORIZATION, format!("Bearer guess-{guess}"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
    let guessing_took = guessing.elapsed();
    // A HEAD of the export: its head, no export begun, none said to be cut short.
    let head = as_admin(&service.client, Method::HEAD, "/api/admin/export")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_TYPE], "application/x-ndjson");

    // Log lines are written a moment after the answer: warnings at once, the rest by the
    // log's writer thread, so the refusal may come before the changes.
    wait_until(
        "the changes and the refusal in the log",
        allowed(Duration::from_secs(2)),
        || async {
            let log = service.log();
            log.contains(r#""action":"delete""#)
                && log.contains("without the administrator's token")
        },
    )
    .await;
    let log = service.log();
    assert!(!log.contains("export"), "{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let logged = |action: &str| {
        lines
            .iter()
            .find(|line| line["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in the log: {log}"))
    };
    let set = logged("set");
    assert_eq!(
        (&set["counter"], &set["created"], &set["total"]),
        (&json!("docs"), &json!(true), &json!(42)),
        "{set}"
    );
    let delete = logged("delete");
    assert_eq!(
        (&delete["counter"], &delete["previous"]),
        (&json!("docs"), &json!(42)),
        "the total it held: {delete}"
    );
    let refusals = log
        .lines()
        .filter(|line| line.contains("without the administrator's token"))
        .count();
    let seconds = guessing_took.as_secs_f64() / THROTTLE_EVERY.as_secs_f64();
    assert!(
        (1..=seconds.ceil() as usize + 2).contains(&refusals),
        "{refusals} lines for 201 refusals in {guessing_took:?}"
    );
    assert!(!log.contains(TOKEN), "the token was logged");
}

/// What an administrator, or someone posing as one, may send wrong: each is refused with
/// its status and a reason in the service's words, and nothing is changed.
async fn bad_administration_is_refused_with_a_clear_reason_and_changes_nothing(backend: Backend) {
    let (app, _token) = spawn_with_admin(backend, &["--max-counters", "3"]).await;
    let client = &app.client;
    text(client, "/c/kept").await;
    let bearer = format!("bearer {TOKEN}");
    let send = |method: Method, path: &str, body: String| {
        let request = client
            .request_builder(method, path)
            .header(header::AUTHORIZATION, bearer.clone())
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap_or_default())
        }
    };

    // 20 000 bytes in chunks of 4 KiB, with the token: over the limit however it comes.
    let mut chunked = format!(
        "PUT /api/counters/kept HTTP/1.1\r\nHost: test\r\nAuthorization: {bearer}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let padded = format!("{{\"total\": 5{}}}", " ".repeat(20_000));
    for chunk in padded.as_bytes().chunks(4096) {
        chunked.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    chunked.push_str("0\r\n\r\n");
    let answer = raw_exchange(app.address, chunked.as_bytes()).await;
    assert_eq!(answer.status, 413, "a chunked body over 16 KiB: {answer:?}");
    assert!(
        !answer.body.contains("length limit"),
        "a library's words: {answer:?}"
    );
    for refused in ["[5]", r#"{"total":3,"total":4}"#] {
        let (status, body) = send(Method::PUT, "/api/counters/kept", refused.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}: {body}");
    }
    assert_eq!(
        total(client, "kept").await,
        1,
        "a refused change changes nothing"
    );
    let (status, body) = send(Method::PUT, "/api/counters/kept/history", "{}".into()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    let today = today_utc();
    let lines = [
        (
            r#"{"name":"kept","total":0,"days":{"total":1}}"#,
            "not a date",
        ),
        (r#"["kept",0,{}]"#, "not a JSON object"),
        (r#"{"name":"kept","total":"0"}"#, "invalid type"),
        (
            r#"{"name":"kept","total":0,"days":{"2026-13-45":1}}"#,
            "not a date",
        ),
        (
            &*format!(r#"{{"name":"kept","total":0,"days":{{"{today}":9223372036854775808}}}}"#),
            "at most",
        ),
        (
            &*format!(
                r#"{{"name":"kept","total":0,"unique":{{"{today}":{{"estimate":1,"format":"redis-hll","sketch":"SFlMTAEAAAAAAAAAAAAAAP//////"}}}}}}"#
            ),
            "not a Redis HyperLogLog",
        ),
    ];
    for (line, reason) in lines {
        let (status, body) = send(Method::POST, "/api/admin/import", line.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{line}: {body}");
        assert!(
            body.contains("line 1") && body.contains(reason),
            "{line}: {body}"
        );
    }
    assert_eq!(
        total(client, "kept").await,
        1,
        "nothing imported changed it"
    );

    // Three at most, the tutorial's among them: the second new one stops the import.
    let import = "{\"name\":\"new-1\",\"total\":7}\n{\"name\":\"new-2\",\"total\":8}\n";
    let (status, body) = send(Method::POST, "/api/admin/import", import.into()).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        body.contains("line 2") && body.contains("after 1 counter"),
        "{body}"
    );
    assert_eq!(total(client, "new-1").await, 7);

    let (status, body) = text(client, "/badge/kept.svg?count=0&label=%EF%BF%BE").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a character XML does not allow: {body}"
    );
    let (status, body) = text(client, "/badge/kept.svg?count=0&label=a&label=b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.starts_with("Bad Request: the query"), "{body}");
    let (status, body) = text(client, "/c/%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.starts_with("Bad Request: a counter's name"), "{body}");
    assert_eq!(total(client, "kept").await, 1);
}

/// A change whose body stops arriving is answered by the request timeout, as a visit is,
/// and not made: without a bound the request would hold its connection for ever (the
/// idle limit does not apply while a request is served).
async fn an_administrators_change_whose_body_stalls_gets_408_and_changes_nothing(backend: Backend) {
    const LIMITS: [&str; 4] = ["--request-timeout", "1s", "--store-timeout", "200ms"];
    let (app, _token) = spawn_with_admin(backend, &LIMITS).await;
    let deadlines = limits::deadlines(&LIMITS);
    text(&app.client, "/c/kept").await;
    let head =
        format!("PUT /api/counters/kept HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n");
    let announced = format!("{head}Content-Length: 14\r\n\r\n{{\"total\"");
    let chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n8\r\n{{\"total\"\r\n");
    // An import is read a line at a time, each part of it waited for as long as a
    // request may take.
    let import = format!(
        "POST /api/admin/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\n\r\n10\r\n{{\"name\":\"kept\",\"\r\n"
    );

    for request in [announced, chunked, import] {
        let answer = raw_bytes(app.address, request.as_bytes(), allowed(deadlines.request))
            .await
            .expect("an answer by the request timeout, and the connection closed");
        let answer = parse_raw(&answer).expect("a complete answer");
        assert_eq!(answer.status, 408, "{answer:?}");
        assert_eq!(answer.header("connection"), Some("close"));
    }
    assert_eq!(total(&app.client, "kept").await, 1);
}

/// `HEAD` is answered as the `GET` without counting would be (its status and headers, no
/// body, never a visit); a CORS preflight is answered for the API and the badges.
async fn head_and_preflight_are_answered_as_browsers_expect(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "off"]).await;
    let client = &app.client;
    text(client, "/badge/seen.svg").await;

    for (path, status) in [
        ("/c/bad:name", StatusCode::BAD_REQUEST),
        ("/badge/seen", StatusCode::NOT_FOUND),
        ("/badge/bad:name.svg", StatusCode::BAD_REQUEST),
        ("/badge/seen.svg", StatusCode::OK),
        ("/c/seen", StatusCode::OK),
        ("/badge/never-seen.svg", StatusCode::NOT_FOUND),
    ] {
        let head = client.request(Method::HEAD, path).await;
        assert_eq!(head.status(), status, "HEAD {path}");
    }
    let head = client.request(Method::HEAD, "/badge/seen.svg").await;
    assert!(head.headers().contains_key(header::ETAG));
    assert!(head.headers().contains_key(header::CONTENT_SECURITY_POLICY));
    assert_eq!(total(client, "seen").await, 1, "HEAD never counts");

    for path in ["/api/counters/seen", "/api/counters", "/badge/seen.svg"] {
        let preflight = client
            .request_builder(Method::OPTIONS, path)
            .header(header::ORIGIN, "https://page.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .send()
            .await
            .unwrap();
        assert!(
            preflight.status().is_success(),
            "{path}: {}",
            preflight.status()
        );
        assert_eq!(
            preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "*",
            "{path}"
        );
    }
    let posted = client
        .request_builder(Method::POST, "/api/counters/seen/history")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(posted.headers()[header::ALLOW], "GET,HEAD");
    // A history's preflight and `OPTIONS` say the methods a history takes, as its 405.
    let preflight = client
        .request_builder(Method::OPTIONS, "/api/counters/seen/history")
        .header(header::ORIGIN, "https://page.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()[header::ALLOW], "GET,HEAD");
    assert_eq!(
        preflight.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
        "GET,HEAD"
    );
    assert_eq!(total(client, "seen").await, 1);
}

/// Today's salt for visitors' hashes in a key of another type refuses every visit to a
/// named counter: readiness says so, with the reason, until the key is removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_salt_key_of_another_type_makes_the_service_not_ready_until_removed() {
    let redis = RedisServer::start().await;
    let salt = format!("hits:salt:{}", today_utc());
    redis
        .query(&["HSET", &salt, "not", "a salt"])
        .await
        .unwrap();
    let app = TestApp::spawn_on_redis(&redis.url(), &["--rate-limit", "off"]).await;

    let (status, body) = text(&app.client, "/c/page").await;
    let (ready, reason) = text(&app.client, "/readyz").await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{reason}");
    assert!(reason.contains("wrong type"), "{reason}");
    redis.query(&["DEL", &salt]).await.unwrap();
    wait_until("ready again", allowed(Duration::from_secs(2)), || async {
        text(&app.client, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(text(&app.client, "/c/page").await.0, StatusCode::OK);
}

/// An export that cannot start is 503, not a 200 with an empty, cut-off body.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_that_cannot_list_the_counters_is_refused_before_it_starts() {
    let (app, _token) = spawn_with_admin(Backend::Redis, &[]).await;
    let redis = app.redis.as_ref().unwrap();
    redis.query(&["SET", "hits:counters", "x"]).await.unwrap();

    let export = as_admin(&app.client, Method::GET, "/api/admin/export")
        .send()
        .await
        .unwrap();

    assert_eq!(export.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = export.text().await.unwrap();
    assert!(body.contains("wrong type"), "{body}");
}
