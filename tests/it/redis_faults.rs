//! Redis-specific behaviour: compatibility with the original app's data, the full range of
//! its integer, and what happens when Redis is missing, stopped, restarted, paused, closes
//! idle connections, refuses writes or holds keys of the wrong type.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use reqwest::{Method, StatusCode};
use stackdemo::{deadlines::Deadlines, routes::VISIT_IN_DOUBT, startup::HEARTBEAT_INTERVAL};

use crate::helpers::{
    Load, RedisServer, ServiceProcess, TestApp, TestClient,
    admin::{admin_change, token_file},
    allowed,
    client::Answer,
    limits::{self, PROCESS_START, for_visits, redis_return},
    redis::Flavor,
    wait_or_explain, wait_until,
};

/// The service's defaults: the bounds of a service started without timing settings.
fn defaults() -> Deadlines {
    limits::deadlines(&[])
}

/// Sends `n` visits, each of which must be refused with 503 within the store timeout:
/// a visit waits at most that long for its write, or for a connection attempt.
async fn assert_fast_503s(client: &TestClient, n: usize) {
    let limit = allowed(defaults().store);
    for _ in 0..n {
        let started = Instant::now();
        let answer = client.try_visit().await;
        assert_eq!(
            answer.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{answer:?}"
        );
        assert_eq!(answer.count, None);
        assert_eq!(
            answer.retry_after.as_deref(),
            Some("1"),
            "a refusal that passes says when to try again"
        );
        let took = started.elapsed();
        assert!(took < limit, "a 503 took {took:?}");
    }
}

/// The service as a process of its own on `redis`: its metrics are its own.
async fn service_on(redis: &RedisServer, extra: &[&str]) -> ServiceProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    ServiceProcess::start(&args).await
}

/// The visits reported in doubt by the service so far.
async fn in_doubt(client: &TestClient) -> u64 {
    client.metric("stackdemo_visits_in_doubt_total").await as u64
}

/// Runs `clients` clients against `app` until they have had `visits` visits
/// acknowledged, and checks their answers against what Redis holds.
async fn load_until(
    app: &ServiceProcess,
    redis: &RedisServer,
    start: i64,
    clients: u64,
    visits: u32,
) {
    let load = Load::start(&app.client, clients);
    load.wait_for_acknowledged(u64::from(visits), for_visits(visits), || async {
        String::new()
    })
    .await;
    let history = load.stop().await;
    history.assert_counting_held(
        start,
        redis.get_i64("hits").await,
        in_doubt(&app.client).await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn counting_carries_on_from_the_original_apps_hits_key() {
    let redis = RedisServer::start().await;
    redis.set("hits", "41").await;
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;

    assert_eq!(app.client.visit().await, 42);
    assert_eq!(redis.get_i64("hits").await, 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_counter_key_setting_picks_the_key() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &["--counter-key", "visits"]).await;

    app.client.visit().await;
    app.client.visit().await;

    assert_eq!(redis.get_i64("visits").await, 2);
    assert_eq!(redis.get_i64("hits").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_past_2_to_the_53_are_exact_and_never_repeated() {
    // Lua numbers are doubles: a total returned through one would be rounded here.
    let start = 9_007_199_254_740_990;
    let redis = RedisServer::start().await;
    redis.set("hits", &start.to_string()).await;
    let app = service_on(&redis, &[]).await;

    assert_eq!(app.client.visit().await, start + 1);
    load_until(&app, &redis, start + 1, 8, 500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_total_below_zero_counts_up_through_zero_as_incr_does() {
    let redis = RedisServer::start().await;
    redis.set("hits", "-300").await;
    let app = service_on(&redis, &[]).await;

    assert_eq!(app.client.visit().await, -299);
    load_until(&app, &redis, -299, 8, 600).await;
    assert!(redis.get_i64("hits").await > 0, "the load crossed zero");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_limit_of_a_64_bit_total_visits_get_503_and_nothing_is_counted() {
    let redis = RedisServer::start().await;
    redis.set("hits", &(i64::MAX - 2).to_string()).await;
    let app = service_on(&redis, &[]).await;

    assert_eq!(app.client.visit().await, i64::MAX - 1);
    assert_eq!(app.client.visit().await, i64::MAX);
    let refused = app.client.try_visit().await;

    assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        refused.body,
        "Service Unavailable: the counter is at its limit\n"
    );
    assert_eq!(
        refused.retry_after, None,
        "trying again in a moment cannot help"
    );
    assert_eq!(redis.get_i64("hits").await, i64::MAX);
    assert_eq!(in_doubt(&app.client).await, 0);
}

/// A counter's total deleted or renamed away by hand while the registry of counters still
/// holds the counter: counting on from 1 would hand out its numbers a second time. Its
/// visits are refused with the reason (the tutorial's counter: the service is not ready
/// either), nothing is written, other counters count, and counting goes on from where it
/// was once the total is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_total_deleted_by_hand_is_not_counted_from_1_again() {
    let redis = RedisServer::start().await;
    let app = service_on(&redis, &["--workers", "1", "--rate-limit", "off"]).await;
    for n in 1..=3 {
        assert_eq!(app.client.visit().await, n);
    }
    for n in 1..=2 {
        assert_eq!(app.client.try_visit_at("/c/page").await.count, Some(n));
    }
    let gone = "Service Unavailable: counter store no longer holds this counter's total\n";

    redis.query(&["RENAME", "hits", "saved"]).await.unwrap();
    let refused = app.client.try_visit().await;
    assert_eq!(
        refused.status,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{refused:?}"
    );
    assert_eq!(refused.body, gone);
    assert_eq!(
        app.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        redis.query(&["EXISTS", "hits"]).await.unwrap(),
        redis::Value::Int(0),
        "a total was written again"
    );
    assert_eq!(app.client.try_visit_at("/c/page").await.count, Some(3));
    redis.query(&["RENAME", "saved", "hits"]).await.unwrap();
    assert_eq!(app.client.visit().await, 4);
    assert_eq!(app.client.ready_status().await, StatusCode::OK);

    // A named counter's total, a field of its hash beside its days.
    redis
        .query(&["HDEL", "hits:c:page", "total"])
        .await
        .unwrap();
    let refused = app.client.try_visit_at("/c/page").await;
    assert_eq!(
        refused.status,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{refused:?}"
    );
    assert_eq!(refused.body, gone);
    let read = app.client.get("/api/counters/page").await;
    assert_eq!(read.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        read.text()
            .await
            .unwrap()
            .contains("no longer holds this counter's total"),
        "reading it says why"
    );
    assert_eq!(app.client.visit().await, 5, "other counters count");
    assert_eq!(app.client.ready_status().await, StatusCode::OK);
    redis
        .query(&["HSET", "hits:c:page", "total", "3"])
        .await
        .unwrap();
    assert_eq!(app.client.try_visit_at("/c/page").await.count, Some(4));
    assert_eq!(in_doubt(&app.client).await, 0);
    assert_eq!(
        app.client
            .metric("stackdemo_store_errors_total{reason=\"total_gone\"}")
            .await,
        2.0,
        "each refused write is counted by its reason"
    );
    assert!(
        app.log().contains("the total of counter hits is gone"),
        "the refusal is logged with its cause"
    );
}

/// Every key a write touches, given a value of the wrong type: the visit is refused,
/// nothing at all is counted (Lua does not roll back on its own: the write script must),
/// and the service is not ready until the key is mended.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_the_wrong_type_refuses_the_visit_and_nothing_is_counted() {
    let redis = RedisServer::start().await;
    let app = service_on(&redis, &["--workers", "1"]).await;
    assert_eq!(app.client.visit().await, 1);
    let records = redis.keys("hits:batches:*").await;
    assert!(!records.is_empty(), "the write keeps batch records");
    let written = redis.keys("hits:written:*").await;
    assert_eq!(written.len(), 1, "the process's number of its last write");
    // (key, the wrong value)
    let mut cases = vec![
        ("hits", vec!["RPUSH", "hits", "a list"]),
        ("hits", vec!["SET", "hits", "not a number"]),
        ("hits:replicas", vec!["SET", "hits:replicas", "a string"]),
        (
            "hits:replicas",
            vec!["HSET", "hits:replicas", "process", "x"],
        ),
        // The registry of counters, asked by every write of the tutorial's counter after
        // its total is added to.
        ("hits:counters", vec!["SET", "hits:counters", "a string"]),
    ];
    for record in &records {
        // Without an expiry: it would stay so for ever.
        cases.push((record.as_str(), vec!["SET", record.as_str(), "a string"]));
    }
    let own = written[0].as_str();
    cases.push((own, vec!["SET", own, "not a number"]));
    cases.push((own, vec!["HSET", own, "number", "1"]));

    let mut expected = 1;
    for (key, wrong) in cases {
        let saved = redis.query(&["DUMP", key]).await.unwrap();
        redis.query(&["DEL", key]).await.unwrap();
        redis.query(&wrong).await.unwrap();
        let before = redis.query(&["DUMP", "hits"]).await.unwrap();
        let replicas_before = redis.query(&["DUMP", "hits:replicas"]).await.unwrap();

        let refused = app.client.try_visit().await;

        assert_eq!(
            refused.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{key}: {refused:?}"
        );
        assert!(
            !refused.body.contains("WRONGTYPE"),
            "internal text leaked: {}",
            refused.body
        );
        assert_eq!(refused.retry_after, None, "{key}: lasts until mended");
        assert_eq!(
            redis.query(&["DUMP", "hits"]).await.unwrap(),
            before,
            "{key}: hits changed"
        );
        assert_eq!(
            redis.query(&["DUMP", "hits:replicas"]).await.unwrap(),
            replicas_before,
            "{key}: the per-replica hash changed"
        );
        assert_eq!(in_doubt(&app.client).await, 0, "{key}");
        assert_eq!(
            app.client.ready_status().await,
            StatusCode::SERVICE_UNAVAILABLE,
            "{key}: not ready while a write cannot succeed"
        );

        redis.query(&["DEL", key]).await.unwrap();
        if let redis::Value::BulkString(dump) = saved {
            redis
                .query_bytes(&[b"RESTORE", key.as_bytes(), b"0", &dump, b"REPLACE"])
                .await
                .unwrap();
        }
        expected += 1;
        assert_eq!(
            app.client.visit().await,
            expected,
            "{key}: counting resumes"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_starts_without_redis_and_recovers_when_it_appears() {
    let mut redis = RedisServer::start().await;
    redis.kill().await;
    let app = service_on(&redis, &[]).await;

    assert_eq!(
        app.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let refused = app.client.try_visit().await;
    assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        refused.body,
        "Service Unavailable: counter store unreachable\n"
    );

    redis.start_again().await;
    app.client
        .wait_ready(allowed(redis_return(&defaults())))
        .await;

    assert_eq!(
        app.client.visit().await,
        1,
        "the refused visit was not counted"
    );
    assert_eq!(in_doubt(&app.client).await, 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_away_gives_fast_503s_and_recovery_loses_and_invents_nothing() {
    let mut redis = RedisServer::start().await;
    let app = service_on(&redis, &[]).await;
    for expected in 1..=5 {
        assert_eq!(app.client.visit().await, expected);
    }

    redis.kill().await;
    assert_fast_503s(&app.client, 5).await;
    assert_eq!(
        app.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        in_doubt(&app.client).await,
        0,
        "no write was sent on a connection known closed"
    );

    redis.start_again().await;
    app.client
        .wait_ready(allowed(redis_return(&defaults())))
        .await;

    assert_eq!(
        app.client.visit().await,
        6,
        "no visit lost, none answered 503 counted"
    );
    assert_eq!(redis.get_i64("hits").await, 6);
}

/// After Redis comes back, every worker serves again within the time a write and a
/// reconnection take: no worker is held back by the connection it had before, or by
/// another worker's failures.
#[tokio::test(flavor = "multi_thread")]
async fn every_worker_serves_again_soon_after_redis_returns() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &["--workers", "4"]).await;
    // Twelve clients, each on a connection of its own, spread over the four workers.
    let clients: Vec<TestClient> = (0..12)
        .map(|_| TestClient::with_base(app.client.base.clone()))
        .collect();
    for client in &clients {
        client.visit().await;
    }

    redis.kill().await;
    redis.start_again().await;
    let back = Instant::now();
    let told = std::sync::Mutex::new(Vec::new());
    wait_or_explain(
        "every connection to count again",
        allowed(redis_return(&defaults())),
        || async {
            let answers =
                futures_util::future::join_all(clients.iter().map(TestClient::try_visit)).await;
            let refused: Vec<String> = answers
                .iter()
                .filter(|answer| answer.status != Some(StatusCode::OK))
                .map(|answer| answer.summary())
                .collect();
            let done = refused.is_empty();
            *told.lock().unwrap() = refused;
            done
        },
        || async { format!("still refused: {:?}", told.lock().unwrap()) },
    )
    .await;
    let took = back.elapsed();

    for _ in 0..3 {
        for answer in
            futures_util::future::join_all(clients.iter().map(TestClient::try_visit)).await
        {
            assert_eq!(
                answer.status,
                Some(StatusCode::OK),
                "after {took:?}: {answer:?}"
            );
        }
    }
}

/// Managed Redis often closes connections idle for a few seconds (`timeout`): the next
/// visit on each worker must not turn into an error.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_timeout_on_redis_does_not_turn_the_next_visit_into_an_error() {
    let redis = RedisServer::start().await;
    redis
        .query(&["CONFIG", "SET", "timeout", "1"])
        .await
        .unwrap();
    let app = service_on(&redis, &["--workers", "3"]).await;
    let clients: Vec<TestClient> = (0..9)
        .map(|_| TestClient::with_base(app.client.base.clone()))
        .collect();
    for client in &clients {
        client.visit().await;
    }
    let connected = || async {
        redis
            .info("clients", "connected_clients")
            .await
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };

    // Wait for Redis to close the service's idle connections (the heartbeat's stays busy):
    // it checks every client's idle time within a second or so after the timeout.
    wait_until(
        "Redis to close idle connections",
        allowed(Duration::from_secs(2)),
        || async { connected().await <= 2 },
    )
    .await;

    for answer in futures_util::future::join_all(clients.iter().map(TestClient::try_visit)).await {
        assert_eq!(answer.status, Some(StatusCode::OK), "{answer:?}");
    }
    assert_eq!(in_doubt(&app.client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_a_redis_restart_with_aof() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    for _ in 0..10 {
        app.client.visit().await;
    }

    redis.restart().await;
    app.client
        .wait_ready(allowed(redis_return(&defaults())))
        .await;

    assert_eq!(app.client.visit().await, 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_refusing_writes_gives_503_with_a_reason_and_counts_nothing() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    app.client.visit().await;

    redis
        .query(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await
        .unwrap();
    redis
        .query(&["CONFIG", "SET", "maxmemory", "1"])
        .await
        .unwrap();
    let refused = app.client.try_visit().await;
    redis
        .query(&["CONFIG", "SET", "maxmemory", "0"])
        .await
        .unwrap();

    assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        refused.body,
        "Service Unavailable: counter store is out of memory\n"
    );
    assert_eq!(app.client.visit().await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_comes_from_a_file() {
    let redis = RedisServer::start_with_password(Some("s3cret-pass")).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("redis_password");
    std::fs::write(&secret, "s3cret-pass\n").unwrap();

    let app = TestApp::spawn_on_redis(
        &redis.url(),
        &["--redis-password-file", secret.to_str().unwrap()],
    )
    .await;
    let without = TestApp::spawn_on_redis(&redis.url(), &[]).await;

    assert_eq!(app.client.visit().await, 1);
    let refused = without.client.try_visit().await;
    assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        refused.body,
        "Service Unavailable: counter store rejected our credentials\n"
    );
    assert_eq!(app.client.visit().await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_redis_under_load_loses_no_acknowledged_visit_and_repeats_no_number() {
    let mut redis = RedisServer::start().await;
    let app = service_on(&redis, &[]).await;
    let load = Load::start(&app.client, 16);
    load.wait_for_acknowledged(200, for_visits(200), || async { String::new() })
        .await;

    redis.kill().await;
    redis.start_again().await;
    load.wait_for_acknowledged(
        200,
        allowed(redis_return(&defaults())) + for_visits(200),
        || async { String::new() },
    )
    .await;
    let history = load.stop().await;

    history.assert_counting_held(0, redis.get_i64("hits").await, in_doubt(&app.client).await);
}

/// Calls of one command that Redis has served so far, from `INFO commandstats`.
async fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    redis
        .info("commandstats", &format!("cmdstat_{command}"))
        .await
        .and_then(|stats| {
            stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_pages_polling_stats_cost_the_store_few_reads() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    app.client.visit().await;
    let before = command_calls(&redis, "zrange").await;

    let polls = futures_util::future::join_all((0..100).map(|_| app.client.stats())).await;

    for poll in polls {
        assert_eq!(poll["total"].as_i64(), Some(1));
    }
    let reads = command_calls(&redis, "zrange").await - before;
    assert!(
        reads <= 2,
        "100 concurrent polls read the store {reads} times"
    );
    assert_eq!(app.client.visit().await, 2, "polling counted no visit");
}

/// Polls of `/api/stats` while Redis hangs each answer within the stats read bound, not
/// one after another behind the first read.
#[tokio::test(flavor = "multi_thread")]
async fn stats_answer_promptly_while_redis_hangs() {
    let limit = allowed(defaults().stats_read());
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    app.client.visit().await;

    // No reading is cached yet: the first poll reads the store, and the others must not
    // queue behind it one after another.
    redis.pause();
    let polls = futures_util::future::join_all((0..30).map(|_| async {
        let started = Instant::now();
        let response = app.client.get("/api/stats").await;
        (response.status(), started.elapsed())
    }))
    .await;
    redis.resume();

    for (status, took) in polls {
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        assert!(took < limit, "a poll took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_gives_fast_503s_that_are_not_counted_when_it_wakes() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    for expected in 1..=3 {
        assert_eq!(app.client.visit().await, expected);
    }

    redis.pause();
    assert_fast_503s(&app.client, 3).await;
    // Redis now holds the refused writes in its socket buffer; waking up, it runs them.
    redis.resume();
    // Until the connection is open again, visits may still be refused: not counted.
    let woke = Instant::now();
    let limit = allowed(redis_return(&defaults()));
    let first = loop {
        let answer = app.client.try_visit().await;
        if let Some(number) = answer.acknowledged() {
            break number;
        }
        assert!(
            woke.elapsed() < limit,
            "no visit counted since Redis woke: {}",
            answer.summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    assert_eq!(first, 4, "visits answered 503 were counted when Redis woke");
    assert_eq!(redis.get_i64("hits").await, 4);
}

/// A client can tell a visit that may have been counted from one that was not. A write
/// sent to a Redis that then hangs gets no answer: its 503 says the visit may have been
/// counted, and it is reported in doubt. The visits after it, refused before anything
/// was sent (the connection attempt to the hung server timed out), say only why, the same
/// reason without the doubt.
#[tokio::test(flavor = "multi_thread")]
async fn a_503_says_whether_the_visit_may_have_been_counted() {
    let redis = RedisServer::start().await;
    let service = service_on(&redis, &["--workers", "1"]).await;
    service.client.visit().await;

    redis.pause();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(service.client.try_visit().await);
    }
    redis.resume();

    assert_eq!(
        answers[0].body,
        format!("Service Unavailable: counter store timed out; {VISIT_IN_DOUBT}\n")
    );
    for later in &answers[1..] {
        assert_eq!(
            later.body, "Service Unavailable: counter store timed out\n",
            "nothing was sent: {later:?}"
        );
    }
    assert_eq!(in_doubt(&service.client).await, 1);
}

/// An administrator can tell a change that may have been made from one that was not, as
/// a visitor can: a `PUT` sent to a Redis that then hangs says the change may have been
/// made (it was: Redis runs it when it wakes); the one after it, refused before anything
/// was sent, says only why, and is not made.
#[tokio::test(flavor = "multi_thread")]
async fn an_administrators_change_to_a_hung_redis_says_whether_it_may_have_been_made() {
    let token = token_file();
    let redis = RedisServer::start().await;
    // One worker, whose connection to Redis the first change opens: with two, the next
    // change could come to the other, whose connection, opened only then, would not
    // reach the hung Redis, and nothing would be sent.
    let service = service_on(
        &redis,
        &[
            "--admin-token-file",
            token.path().to_str().unwrap(),
            "--workers",
            "1",
        ],
    )
    .await;
    let set = |total: i64| {
        let body = format!("{{\"total\": {total}}}");
        admin_change(&service.client, Method::PUT, "/api/counters/pzset", body)
    };
    assert_eq!(set(770).await.0, StatusCode::OK);

    redis.pause();
    let sent = set(771).await;
    let not_sent = set(772).await;
    redis.resume();

    assert_eq!(
        sent,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: counter store timed out; the change may have been made\n"
                .to_owned()
        )
    );
    assert_eq!(
        not_sent,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: counter store timed out\n".to_owned()
        ),
        "nothing was sent"
    );
    let limit = allowed(redis_return(&defaults()));
    wait_until("the change sent to be made", limit, || async {
        redis.query(&["HGET", "hits:c:pzset", "total"]).await.ok()
            == Some(redis::Value::BulkString(b"771".to_vec()))
    })
    .await;
}

/// `stackdemo_count` shows the total the store holds, also after the key is reset.
#[tokio::test(flavor = "multi_thread")]
async fn the_count_metric_follows_the_total_down_when_it_is_reset() {
    let redis = RedisServer::start().await;
    let service = service_on(&redis, &[]).await;
    for _ in 0..5 {
        service.client.visit().await;
    }
    let client = &service.client;
    // The total is read every heartbeat (each second).
    let limit = allowed(Duration::from_secs(2));
    wait_until("the metric to show 5", limit, || async {
        client.metric("stackdemo_count").await == 5.0
    })
    .await;

    redis.set("hits", "0").await;

    wait_until("the metric to show the reset", limit, || async {
        client.metric("stackdemo_count").await == 0.0
    })
    .await;
}

/// A Redis address that takes connections and never answers (a paused server, or a proxy
/// in front of a vanished one): one write waits on the connection attempt, and the visits
/// meanwhile are refused at once instead of each waiting out the store timeout.
#[tokio::test(flavor = "multi_thread")]
async fn visits_are_refused_at_once_while_a_connection_attempt_hangs() {
    // Connections are taken and held; nothing is ever read from them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let url = format!("redis://{}/0", silent.local_addr().unwrap());
    let service = ServiceProcess::start(&[
        "--redis-url",
        &url,
        "--workers",
        "1",
        "--store-timeout",
        "2s",
    ])
    .await;

    // The first visit opens the worker's connection (the heartbeat has one of its own).
    let store_timeout = Duration::from_secs(2);
    let limit = allowed(Deadlines::CONNECT_WAIT);
    assert!(
        limit < store_timeout,
        "with STACKDEMO_TEST_SLOWNESS this high, a refusal at once cannot be told from one \
         after the store timeout"
    );
    let first_client = TestClient::with_base(service.client.base.clone());
    let first = tokio::spawn(async move { first_client.try_visit().await });
    // Until the first visit's write has started (and with it the worker's connection
    // attempt): counting connections cannot tell the worker's from the heartbeat's.
    let mut held = Vec::new();
    wait_until(
        "the first visit's write to start",
        allowed(PROCESS_START),
        || {
            while let Ok((stream, _)) = silent.accept() {
                held.push(stream);
            }
            let client = &service.client;
            async move {
                let metrics = client
                    .get("/metrics")
                    .await
                    .text()
                    .await
                    .unwrap_or_default();
                metrics.lines().any(|line| {
                    line.strip_prefix("stackdemo_visit_batch_size_count ")
                        .and_then(|count| count.trim().parse::<f64>().ok())
                        .is_some_and(|count| count >= 1.0)
                })
            }
        },
    )
    .await;

    let clients: Vec<TestClient> = (0..15)
        .map(|_| TestClient::with_base(service.client.base.clone()))
        .collect();
    let answers = futures_util::future::join_all(clients.iter().map(|client| async move {
        let started = Instant::now();
        let answer = client.try_visit().await;
        (answer, started.elapsed())
    }))
    .await;
    for (answer, took) in &answers {
        assert_eq!(
            answer.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{answer:?}"
        );
        assert!(
            *took < limit,
            "a visit waited {took:?} for another write's connection attempt"
        );
    }
    let first = first.await.unwrap();
    assert_eq!(first.status, Some(StatusCode::SERVICE_UNAVAILABLE));
}

/// The service with one worker on `redis` as a user of its own, `counter`, allowed
/// everything, so that its permissions can be taken away (`ACL SETUSER counter -…`).
async fn service_as_acl_user(redis: &RedisServer, extra: &[&str]) -> ServiceProcess {
    redis
        .query(&[
            "ACL", "SETUSER", "counter", "on", ">pw", "~*", "&*", "+@all",
        ])
        .await
        .unwrap();
    let url = format!("redis://counter:pw@127.0.0.1:{}/0", redis.port);
    let mut args = vec!["--redis-url", url.as_str(), "--workers", "1"];
    args.extend_from_slice(extra);
    ServiceProcess::start(&args).await
}

/// What refuses every visit until an operator changes it (the server's memory full, too
/// few replicas for its `min-replicas-to-write`, an ACL that takes away the script, a
/// command it runs or the batch records, this replica's share at the 64-bit limit): each
/// visit is refused with the reason and not counted, `/readyz` says not ready with the
/// same reason, and both recover once the cause is undone.
#[tokio::test(flavor = "multi_thread")]
async fn what_refuses_every_visit_makes_the_service_not_ready_and_counts_nothing() {
    let redis = RedisServer::start().await;
    let service = service_as_acl_user(&redis, &[]).await;
    let mut expected = service.client.visit().await;
    // (what, the change, how it is undone, the reason clients are told)
    let cases: [(&str, &[&str], &[&str], &str); 6] = [
        (
            "memory full",
            &["CONFIG", "SET", "maxmemory", "1"],
            &["CONFIG", "SET", "maxmemory", "0"],
            "counter store is out of memory",
        ),
        (
            "no replica for min-replicas-to-write",
            &["CONFIG", "SET", "min-replicas-to-write", "1"],
            &["CONFIG", "SET", "min-replicas-to-write", "0"],
            "counter store could not replicate the visit in time",
        ),
        (
            "scripts not allowed",
            &["ACL", "SETUSER", "counter", "-evalsha", "-eval"],
            &["ACL", "SETUSER", "counter", "+@all"],
            "counter store does not allow what counting needs",
        ),
        (
            "a command the script runs not allowed",
            &["ACL", "SETUSER", "counter", "-time"],
            &["ACL", "SETUSER", "counter", "+@all"],
            "counter store does not allow what counting needs",
        ),
        (
            "only the counter's own keys allowed, not the batch records",
            &[
                "ACL",
                "SETUSER",
                "counter",
                "resetkeys",
                "~hits",
                "~hits:replicas",
            ],
            &["ACL", "SETUSER", "counter", "~*"],
            "counter store does not allow what counting needs",
        ),
        (
            "this replica's share at the limit",
            &["HSET", "hits:replicas", "process", "9223372036854775807"],
            &["HSET", "hits:replicas", "process", "0"],
            "this replica's tally of visits is at its limit",
        ),
    ];
    redis
        .query(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await
        .unwrap();
    let client = &service.client;
    for (what, change, undo, reason) in cases {
        let before = redis.get_i64("hits").await;
        redis.query(change).await.unwrap();

        refuses_every_visit(client, reason, what).await;

        redis.query(undo).await.unwrap();
        assert_eq!(
            redis.get_i64("hits").await,
            before,
            "{what}: a refused visit was counted"
        );
        client.wait_ready(allowed(defaults().store)).await;
        expected += 1;
        assert_eq!(client.visit().await, expected, "{what}: counting resumes");
    }
    assert_eq!(in_doubt(client).await, 0);
}

/// Every command a script runs, as it is written in the script.
fn commands_of(script: &str) -> BTreeSet<String> {
    script
        .split("call('")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once('\'')
                .map(|(command, _)| command.to_ascii_lowercase())
        })
        .collect()
}

/// A counter's total as Redis holds it, if it holds one: the tutorial's key, or a named
/// counter's hash.
async fn total_of(redis: &RedisServer, key: &str) -> Option<i64> {
    let value = if key == "hits" {
        redis.query(&["GET", key]).await
    } else {
        redis.query(&["HGET", key, "total"]).await
    };
    match value.unwrap() {
        redis::Value::Nil => None,
        value => Some(redis::from_redis_value::<i64>(value).unwrap()),
    }
}

/// An ACL that denies any one command the write runs, generated from the script itself:
/// a visit of the tutorial's counter, of a counter that exists, of one reset to 0 and of
/// a new one is either counted and answered, or refused with its total as it was (Lua
/// does not roll back: a command that fails after the tally's first write must be undone
/// by the script; a reset counter's total stays, at 0: deleted, it would leave the counter
/// refusing every visit as one whose total was gone), and
/// the service is ready exactly while visits of the tutorial's counter are counted (not
/// for a command only a new name's visit, or an undo, runs).
#[tokio::test(flavor = "multi_thread")]
async fn a_command_the_write_runs_denied_alone_counts_nothing_it_refuses() {
    let redis = RedisServer::start().await;
    let service = service_as_acl_user(&redis, &["--rate-limit", "off"]).await;
    let client = &service.client;
    client.visit().await;
    assert_eq!(client.get("/c/known").await.status(), StatusCode::OK);
    let commands = commands_of(stackdemo::store::redis::scripts::ADD_VISITS);
    assert!(
        commands.len() > 10 && commands.contains("hexists"),
        "{commands:?}"
    );

    for command in &commands {
        let new = format!("new-{command}");
        // Reset to 0, as the administrator's PUT leaves it.
        redis
            .query(&["HSET", "hits:c:zeroed", "total", "0"])
            .await
            .unwrap();
        redis
            .query(&["HSET", "hits:counters", "zeroed", "admin"])
            .await
            .unwrap();
        let visits = [
            ("/".to_owned(), "hits".to_owned()),
            ("/c/known".to_owned(), "hits:c:known".to_owned()),
            ("/c/zeroed".to_owned(), "hits:c:zeroed".to_owned()),
            (format!("/c/{new}"), format!("hits:c:{new}")),
        ];
        redis
            .query(&["ACL", "SETUSER", "counter", &format!("-{command}")])
            .await
            .unwrap();
        let mut tutorial_refused = false;
        for (path, key) in &visits {
            let before = total_of(&redis, key).await;
            let answer = client.get(path).await;
            let status = answer.status();
            let body = answer.text().await.unwrap();
            let after = total_of(&redis, key).await;
            match status {
                StatusCode::OK => assert_eq!(
                    after,
                    Some(before.unwrap_or(0) + 1),
                    "-{command}: {path} {body}"
                ),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(
                        after, before,
                        "-{command}: {path} refused ({body}) but counted"
                    );
                    tutorial_refused |= path == "/";
                }
                other => panic!("-{command}: {path} answered {other}: {body}"),
            }
        }
        let ready = client.ready_status().await;
        if tutorial_refused {
            assert_eq!(
                ready,
                StatusCode::SERVICE_UNAVAILABLE,
                "-{command}: ready while visits are refused"
            );
        } else {
            assert_eq!(
                ready,
                StatusCode::OK,
                "-{command}: not ready while visits are counted"
            );
        }
        redis
            .query(&["ACL", "SETUSER", "counter", "+@all"])
            .await
            .unwrap();
        client.wait_ready(allowed(defaults().store)).await;
    }
    assert_eq!(in_doubt(client).await, 0);
}

/// What Redis holds of a counter: its hash and its registration.
async fn counter_state(
    redis: &RedisServer,
    name: &str,
) -> (HashMap<String, String>, Option<String>) {
    let hash = redis
        .query(&["HGETALL", &format!("hits:c:{name}")])
        .await
        .unwrap();
    let registered = redis.query(&["HGET", "hits:counters", name]).await.unwrap();
    (
        redis::from_redis_value(hash).unwrap(),
        redis::from_redis_value(registered).unwrap(),
    )
}

/// An administrator's change is made whole, or refused and not made at all, or said to
/// have maybe been made, whatever one or two commands of its script an ACL denies (Lua
/// does not roll back: a change refused half way must be undone, and an undo refused too
/// must be told).
#[tokio::test(flavor = "multi_thread")]
async fn an_administrators_change_refused_half_way_is_undone_or_said_to_be_in_doubt() {
    let token = token_file();
    let redis = RedisServer::start().await;
    let token_path = token.path().to_str().unwrap();
    let extra = ["--rate-limit", "off", "--admin-token-file", token_path];
    let service = service_as_acl_user(&redis, &extra).await;
    let client = &service.client;
    let change = |method: Method, name: &str, body: &'static str| {
        admin_change(client, method, &format!("/api/counters/{name}"), body)
    };
    let scripts = [
        stackdemo::store::redis::scripts::SET_TOTAL,
        stackdemo::store::redis::scripts::DELETE,
    ];
    let commands: BTreeSet<String> = scripts.into_iter().flat_map(commands_of).collect();
    assert!(commands.contains("hdel"), "{commands:?}");
    // Each command denied alone, and each two together (an undo refused as well as what
    // it undoes). (Keys an ACL keeps read-only refuse a script that names them before it
    // runs: not a change half made.)
    let commands: Vec<&String> = commands.iter().collect();
    let mut faults: Vec<Vec<String>> = Vec::new();
    for (i, first) in commands.iter().enumerate() {
        faults.push(vec![format!("-{first}")]);
        for second in &commands[i + 1..] {
            faults.push(vec![format!("-{first}"), format!("-{second}")]);
        }
    }
    let mut in_doubt_seen = 0;
    for (i, fault) in faults.iter().enumerate() {
        let (new, set, deleted) = (format!("new{i}"), format!("set{i}"), format!("gone{i}"));
        for name in [&set, &deleted] {
            assert_eq!(
                client.get(&format!("/c/{name}")).await.status(),
                StatusCode::OK
            );
        }
        let mut acl = vec!["ACL", "SETUSER", "counter"];
        acl.extend(fault.iter().map(String::as_str));
        redis.query(&acl).await.unwrap();
        let changes = [
            (Method::PUT, new, "{\"total\": 7}"),
            (Method::PUT, set, "{\"total\": 7}"),
            (Method::DELETE, deleted, ""),
        ];
        for (method, name, body) in changes {
            let before = counter_state(&redis, &name).await;
            let (status, said) = change(method.clone(), &name, body).await;
            let (hash, registered) = counter_state(&redis, &name).await;
            let what = format!("{fault:?}: {method} {name} answered {status} {said:?}");
            if status == StatusCode::OK {
                let made = if method == Method::PUT {
                    hash.get("total").map(String::as_str) == Some("7") && registered.is_some()
                } else {
                    hash.is_empty() && registered.is_none()
                };
                assert!(made, "{what}, and is not made");
            } else if said.contains("the change may have been made") {
                in_doubt_seen += 1;
            } else {
                assert_eq!((hash, registered), before, "{what}, and is half made");
            }
        }
        redis
            .query(&["ACL", "SETUSER", "counter", "+@all"])
            .await
            .unwrap();
    }
    assert!(
        in_doubt_seen > 0,
        "a refused change whose undo is refused too is in doubt"
    );
}

/// A limit set below what Redis holds, under an eviction policy, evicts keys at once; undone
/// at once, no reading of the policy sees it, and the counters whose keys went would count
/// from 1 again, handing out their numbers again. Keys evicted are taken for counts lost:
/// every process refuses within a heartbeat, until the services are restarted; so too
/// after the statistics were reset, fewer keys evicted than before.
#[tokio::test(flavor = "multi_thread")]
async fn keys_evicted_under_a_limit_undone_at_once_are_taken_for_counts_lost() {
    let redis =
        RedisServer::start_with(Flavor::Redis, None, &["--enable-debug-command", "local"]).await;
    let service = service_on(&redis, &["--rate-limit", "off"]).await;
    let other = service_on(&redis, &["--rate-limit", "off"]).await;
    for page in 0..50 {
        let answer = service.client.try_visit_at(&format!("/c/page{page}")).await;
        assert_eq!(answer.count, Some(1), "{answer:?}");
    }
    // Other data beside the counts, as a shared Redis holds.
    redis
        .query(&["DEBUG", "POPULATE", "20000", "other"])
        .await
        .unwrap();
    let evicted = evict_at_once(&redis, 100_000).await;
    assert!(evicted > 0, "keys were evicted");

    let reason = "counter store no longer holds the counts";
    let refused_within_a_heartbeat = async |process: &ServiceProcess, what: &str| {
        wait_until(
            "visits refused for the keys evicted",
            allowed(HEARTBEAT_INTERVAL + defaults().store),
            || async { process.client.readiness().await.contains(reason) },
        )
        .await;
        refuses_every_visit(&process.client, reason, what).await;
    };
    refused_within_a_heartbeat(&service, "the process").await;
    refused_within_a_heartbeat(&other, "every other process").await;
    // The mark itself may be among the keys evicted, and found gone first.
    let log = service.log();
    assert!(
        log.contains("Redis evicted keys") || log.contains("keys evicted"),
        "the log says why: {log}"
    );

    let started = service_on(&redis, &[]).await;
    started.client.visit().await;
    // A readiness probe reads how many keys were evicted so far.
    started.client.wait_ready(allowed(defaults().store)).await;
    redis.query(&["CONFIG", "RESETSTAT"]).await.unwrap();
    let fewer = evict_at_once(&redis, 20_000).await;
    assert!(
        (1..evicted).contains(&fewer),
        "{fewer} keys evicted after {evicted}"
    );
    refused_within_a_heartbeat(&started, "after the statistics were reset").await;
}

/// Sets a limit `below` bytes under what Redis holds, with `allkeys-random`, and undoes
/// it at once; returns how many keys Redis has evicted.
async fn evict_at_once(redis: &RedisServer, below: u64) -> u64 {
    let used: u64 = redis
        .info("memory", "used_memory")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let limit = (used - below).to_string();
    redis
        .query(&[
            "CONFIG",
            "SET",
            "maxmemory-policy",
            "allkeys-random",
            "maxmemory",
            &limit,
        ])
        .await
        .unwrap();
    redis
        .query(&[
            "CONFIG",
            "SET",
            "maxmemory",
            "0",
            "maxmemory-policy",
            "noeviction",
        ])
        .await
        .unwrap();
    redis
        .info("stats", "evicted_keys")
        .await
        .unwrap()
        .parse()
        .unwrap()
}

/// A Redis that may evict keys (a `maxmemory` limit with any `maxmemory-policy` but
/// `noeviction`) deletes totals and batch records when its memory runs short, and
/// counting would start again at 1. Under each such policy every visit is refused with
/// the reason and `/readyz` says so at once, the log says what to change, also for a
/// service started on such a server; no limit, or `noeviction`, counts again.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_may_evict_keys_refuses_every_visit_until_it_may_not() {
    let redis = RedisServer::start().await;
    let service = ServiceProcess::start(&["--redis-url", &redis.url()]).await;
    let mut expected = service.client.visit().await;
    let reason = "counter store may evict counts";
    let policies = [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ];
    for policy in policies {
        redis
            .query(&[
                "CONFIG",
                "SET",
                "maxmemory-policy",
                policy,
                "maxmemory",
                "1gb",
            ])
            .await
            .unwrap();
        refuses_every_visit(&service.client, reason, &format!("{policy} with a limit")).await;

        redis
            .query(&["CONFIG", "SET", "maxmemory", "0"])
            .await
            .unwrap();
        service.client.wait_ready(allowed(defaults().store)).await;
        expected += 1;
        assert_eq!(
            service.client.visit().await,
            expected,
            "{policy} without a limit counts"
        );
    }
    assert!(
        service.log().contains("maxmemory-policy is noeviction"),
        "the log says what to change: {}",
        service.log()
    );

    redis
        .query(&[
            "CONFIG",
            "SET",
            "maxmemory-policy",
            "allkeys-lru",
            "maxmemory",
            "1gb",
        ])
        .await
        .unwrap();
    let started = ServiceProcess::start(&["--redis-url", &redis.url()]).await;
    refuses_every_visit(&started.client, reason, "started on allkeys-lru").await;
    redis
        .query(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await
        .unwrap();
    started.client.wait_ready(allowed(defaults().store)).await;
    expected += 1;
    assert_eq!(started.client.visit().await, expected);
    assert_eq!(
        redis.get_i64("hits").await,
        expected,
        "a refused visit was counted"
    );
}

/// Checks that `/readyz` and three visits are refused with `reason`.
async fn refuses_every_visit(client: &TestClient, reason: &str, what: &str) {
    let readiness = client.readiness().await;
    assert!(
        readiness.starts_with("503 ") && readiness.contains(reason),
        "{what}: /readyz answered {readiness}"
    );
    // A refusal that lasts until an operator acts does not ask to be tried again in a
    // moment; one that may pass (memory, replicas) does.
    let passes = [
        "counter store is out of memory",
        "counter store could not replicate the visit in time",
    ]
    .contains(&reason);
    for _ in 0..3 {
        let refused = client.try_visit().await;
        assert_eq!(
            refused.body,
            format!("Service Unavailable: {reason}\n"),
            "{what}: {refused:?}"
        );
        assert_eq!(refused.retry_after.is_some(), passes, "{what}: {refused:?}");
    }
}

/// A Redis with a command the service needs renamed away (`rename-command SCRIPT ""`)
/// refuses every visit, and readiness, for that reason, and the log does not blame
/// another command.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_renamed_away_is_the_reason_given() {
    let redis =
        RedisServer::start_with(Flavor::Redis, None, &["--rename-command", "SCRIPT", ""]).await;
    let service = ServiceProcess::start(&["--redis-url", &redis.url()]).await;

    refuses_every_visit(
        &service.client,
        "counter store does not allow what counting needs",
        "SCRIPT renamed away",
    )
    .await;
    assert_eq!(redis.get_i64("hits").await, 0);
    // Visits within the reconnection backoff are refused without trying; the first one
    // after it tries, and its refusal names the command.
    let client = &service.client;
    wait_until(
        "a refusal naming the command",
        allowed(redis_return(&defaults())),
        || async {
            client.try_visit().await;
            service.log().contains("unknown command 'SCRIPT'")
        },
    )
    .await;
    let log = service.log();
    assert!(!log.contains("INFO is not allowed"), "{log}");
}

/// A write that waited long for its replica does not set back this process's reading of
/// Redis's clock by the wait (a reading taken before the wait, and taken as if it were
/// taken when the answer came, would): once the replica confirms again, the next visit
/// is counted, instead of being refused for arriving after its deadline. A planned
/// failover, whose new primary has no replica for seconds, is a run of such waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_visit_after_a_long_wait_for_the_replica_is_counted_once_the_replica_confirms() {
    let primary =
        RedisServer::start_with(Flavor::Redis, None, &["--repl-diskless-sync-delay", "0"]).await;
    let port = primary.port.to_string();
    let replica =
        RedisServer::start_with(Flavor::Redis, None, &["--replicaof", "127.0.0.1", &port]).await;
    let service = service_on(&primary, &["--redis-min-replicas", "1", "--workers", "1"]).await;
    wait_until(
        "a visit confirmed by the replica",
        allowed(PROCESS_START),
        || async { service.client.try_visit().await.count.is_some() },
    )
    .await;

    for round in 0..10 {
        replica.pause();
        let refused = service.client.try_visit().await;
        replica.resume();
        assert_eq!(
            refused.body,
            format!(
                "Service Unavailable: counter store could not replicate the visit in time; \
                 {VISIT_IN_DOUBT}\n"
            ),
            "round {round}"
        );

        let next = service.client.try_visit().await;
        assert!(next.count.is_some(), "round {round}: {}", next.summary());
    }
}

/// An administrator's change, as a visit, is answered as made only once the replicas a
/// write waits for have it: with the replica hung, setting, deleting and importing are
/// each told they may have been made (they were, on the primary: a failover to the
/// replica would take them back), and with the replica back, made.
#[tokio::test(flavor = "multi_thread")]
async fn an_administrators_change_waits_for_the_replicas_a_visit_waits_for() {
    let token = token_file();
    let primary =
        RedisServer::start_with(Flavor::Redis, None, &["--repl-diskless-sync-delay", "0"]).await;
    let port = primary.port.to_string();
    let replica =
        RedisServer::start_with(Flavor::Redis, None, &["--replicaof", "127.0.0.1", &port]).await;
    let token_path = token.path().to_str().unwrap();
    let service = service_on(
        &primary,
        &[
            "--redis-min-replicas",
            "1",
            "--admin-token-file",
            token_path,
        ],
    )
    .await;
    wait_until(
        "a visit confirmed by the replica",
        allowed(PROCESS_START),
        || async { service.client.try_visit().await.count.is_some() },
    )
    .await;
    let change = |method: Method, path: &'static str, body: &'static str| {
        admin_change(&service.client, method, path, body)
    };
    let changes = [
        (Method::PUT, "/api/counters/page", "{\"total\": 5}"),
        (Method::DELETE, "/api/counters/page", ""),
        (
            Method::POST,
            "/api/admin/import",
            "{\"name\":\"page\",\"total\":9}\n",
        ),
    ];

    replica.pause();
    let mut refused = Vec::new();
    for (method, path, body) in changes.clone() {
        refused.push(change(method, path, body).await);
    }
    replica.resume();

    for (status, said) in &refused {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{said}");
        // "the change may have been made", or for an import's line "the line may have
        // been imported".
        assert!(said.contains("may have been"), "{said}");
    }
    wait_until(
        "a visit confirmed by the replica again",
        allowed(PROCESS_START),
        || async { service.client.try_visit().await.count.is_some() },
    )
    .await;
    for (method, path, body) in changes {
        let (status, said) = change(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {said}");
    }
}

/// Redis losing what it holds while the service runs (flushed, or made a copy of a server
/// with other data, as a restart without persistence or a failover to a server that never
/// copied the primary would do): counting on from what it holds would hand out
/// acknowledged numbers again. Each way, `/readyz` and every visit say the store no
/// longer holds the counts, the log says what happened and what to do, and nothing is
/// counted; once the data is restored (with its mark), counting carries on from it. A
/// service started on what Redis holds takes it as it is.
#[tokio::test(flavor = "multi_thread")]
async fn redis_losing_its_data_refuses_every_visit_until_the_data_is_back() {
    let redis = RedisServer::start().await;
    let empty =
        RedisServer::start_with(Flavor::Redis, None, &["--repl-diskless-sync-delay", "0"]).await;
    let empty_port = empty.port.to_string();
    let service = service_on(&redis, &[]).await;
    let mut expected = 0;
    for _ in 0..3 {
        expected = service.client.visit().await;
    }
    let redis::Value::BulkString(mark) = redis.query(&["GET", "hits:dataset"]).await.unwrap()
    else {
        panic!("no mark of the data in Redis");
    };
    let mark = String::from_utf8(mark).unwrap();
    let own = redis.keys("hits:written:*").await.remove(0);
    let reason = "counter store no longer holds the counts";

    let losses: [(&str, &[&[&str]]); 3] = [
        ("FLUSHALL", &[&["FLUSHALL"]]),
        ("FLUSHDB", &[&["FLUSHDB"]]),
        (
            "a copy of an empty server",
            &[&["REPLICAOF", "127.0.0.1", &empty_port]],
        ),
    ];
    for (what, commands) in losses {
        let writes = redis.get_i64("hits:writes").await;
        let own_writes = redis.get_i64(&own).await;
        for command in commands {
            redis.query(command).await.unwrap();
        }
        if what == "a copy of an empty server" {
            wait_until(
                "the copy of the empty server",
                allowed(PROCESS_START),
                || async { redis.replication("master_link_status").await.as_deref() == Some("up") },
            )
            .await;
            redis.query(&["REPLICAOF", "NO", "ONE"]).await.unwrap();
        }

        refuses_every_visit(&service.client, reason, what).await;
        assert_eq!(
            redis.get_i64("hits").await,
            0,
            "{what}: a refused visit counted"
        );

        // The data restored, as from a copy of Redis's files: the total, the number of
        // the last write and of this process's, the mark.
        redis.set("hits", &expected.to_string()).await;
        redis.set("hits:writes", &writes.to_string()).await;
        redis.set(&own, &own_writes.to_string()).await;
        redis.set("hits:dataset", &mark).await;
        service.client.wait_ready(allowed(defaults().store)).await;
        expected += 1;
        assert_eq!(service.client.visit().await, expected, "{what}: restored");
    }
    assert!(
        service
            .log()
            .contains("Redis no longer holds the data this service counted in"),
        "{}",
        service.log()
    );

    redis.query(&["FLUSHALL"]).await.unwrap();
    let started = service_on(&redis, &[]).await;
    assert_eq!(
        started.client.visit().await,
        1,
        "a new service takes what Redis holds"
    );
    refuses_every_visit(&service.client, reason, "the service that counted before").await;
}

/// While Redis no longer holds the data counted in (flushed), the administrator's changes
/// and the export are refused as visits are: an export of what is left looked whole, and
/// a change was made to data that is to be restored. The listing of counters is refused
/// too; on a Redis without counters yet, it lists none. Once the data is back, changes are
/// made again.
#[tokio::test(flavor = "multi_thread")]
async fn while_redis_no_longer_holds_the_counts_the_administrator_neither_changes_nor_exports_them()
{
    let token = token_file();
    let redis = RedisServer::start().await;
    let token_path = token.path().to_str().unwrap();
    let service = service_on(&redis, &["--admin-token-file", token_path]).await;
    let client = &service.client;
    // No counter yet: a listing of none.
    let (status, listed) = admin_change(client, Method::GET, "/api/counters", "").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    client.visit().await;
    let (status, _) =
        admin_change(client, Method::PUT, "/api/counters/kept", r#"{"total":5}"#).await;
    assert_eq!(status, StatusCode::OK);
    let reason = "counter store no longer holds the counts";
    let mark = redis.query(&["GET", "hits:dataset"]).await.unwrap();
    let mark: String = redis::from_redis_value(mark).unwrap();
    let own = redis.keys("hits:written:*").await.remove(0);
    let writes = redis.get_i64("hits:writes").await;
    let own_writes = redis.get_i64(&own).await;

    redis.query(&["FLUSHALL"]).await.unwrap();
    wait_or_explain(
        "the service to find the data gone",
        allowed(defaults().store),
        || async { client.readiness().await.contains(reason) },
        || async { client.readiness().await },
    )
    .await;
    let refused = [
        admin_change(client, Method::PUT, "/api/counters/kept", r#"{"total":9}"#).await,
        admin_change(client, Method::DELETE, "/api/counters/kept", "").await,
        admin_change(client, Method::GET, "/api/admin/export", "").await,
        admin_change(
            client,
            Method::POST,
            "/api/admin/import",
            "{\"name\":\"other\",\"total\":3}\n",
        )
        .await,
    ];

    for (status, body) in &refused {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains(reason), "{refused:?}");
    }
    assert!(
        redis.keys("hits:c:*").await.is_empty(),
        "nothing was written"
    );

    // The data restored in place, on the service's own connections: the number of the
    // last write and of this process's, the mark. Changes are made again.
    redis.set("hits:writes", &writes.to_string()).await;
    redis.set(&own, &own_writes.to_string()).await;
    redis.set("hits:dataset", &mark).await;
    client.wait_ready(allowed(defaults().store)).await;
    let (status, body) =
        admin_change(client, Method::PUT, "/api/counters/kept", r#"{"total":9}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Redis gone back to an older copy of its data, mark and all: here its snapshot, loaded
/// after a crash (Redis's default persistence; a restored backup, or a server that fell
/// behind made primary, are the same). Counting on from it would hand out acknowledged
/// numbers again. A service process that had a later write acknowledged finds it so, and
/// then every process refuses every visit, and is not ready, also one whose own writes
/// are all in the copy; the log says what happened and what to do. A service started on
/// what Redis holds takes it as it is.
#[tokio::test(flavor = "multi_thread")]
async fn redis_gone_back_to_an_older_copy_refuses_every_visit_in_every_process() {
    let mut redis = RedisServer::start_with(Flavor::Redis, None, &["--appendonly", "no"]).await;
    let first = service_on(&redis, &[]).await;
    let second = service_on(&redis, &[]).await;
    first.client.visit().await;
    second.client.visit().await;
    redis.query(&["SAVE"]).await.unwrap();
    let saved = first.client.visit().await;
    first.client.visit().await;

    redis.kill().await;
    redis.start_again().await;
    assert_eq!(
        redis.get_i64("hits").await,
        saved - 1,
        "the snapshot is loaded"
    );

    let reason = "counter store no longer holds the counts";
    refuses_every_visit(&first.client, reason, "the process that counted on").await;
    refuses_every_visit(
        &second.client,
        reason,
        "a process whose writes are all in the copy",
    )
    .await;
    assert_eq!(
        redis.get_i64("hits").await,
        saved - 1,
        "a refused visit counted"
    );
    assert!(
        first
            .log()
            .contains("Redis holds an older copy of the data"),
        "{}",
        first.log()
    );

    let started = service_on(&redis, &[]).await;
    assert_eq!(
        started.client.visit().await,
        saved,
        "a new service takes what Redis holds"
    );
}

/// Redis gone back to an older copy is found by a process that counted nothing since the
/// copy was taken, with the one that counted the visits the copy lacks gone: each process
/// keeps up, every second, with the writes of the others.
#[tokio::test(flavor = "multi_thread")]
async fn redis_gone_back_to_an_older_copy_is_found_by_a_process_that_did_not_count_since() {
    let mut redis = RedisServer::start_with(Flavor::Redis, None, &["--appendonly", "no"]).await;
    let counted = service_on(&redis, &["--replica", "counted"]).await;
    let idle = service_on(&redis, &["--replica", "idle"]).await;
    counted.client.visit().await;
    idle.client.visit().await;
    redis.query(&["SAVE"]).await.unwrap();
    let mut last = 0;
    for _ in 0..20 {
        last = counted.client.visit().await;
    }
    // The idle process's next heartbeat, which comes after its write of no visits.
    let time = |value: redis::Value| -> i64 {
        let redis::Value::Array(parts) = value else {
            panic!("TIME: {value:?}")
        };
        let part = |at: usize| match &parts[at] {
            redis::Value::BulkString(text) => String::from_utf8_lossy(text).parse::<i64>().unwrap(),
            other => panic!("TIME: {other:?}"),
        };
        part(0) * 1000 + part(1) / 1000
    };
    let after = time(redis.query(&["TIME"]).await.unwrap());
    wait_until(
        "the idle process's heartbeat",
        allowed(Duration::from_secs(2)),
        || async {
            match redis.query(&["ZSCORE", "hits:heartbeats", "idle"]).await {
                Ok(redis::Value::BulkString(at)) => {
                    String::from_utf8_lossy(&at).parse::<f64>().unwrap_or(0.0) > after as f64
                }
                Ok(redis::Value::Double(at)) => at > after as f64,
                _ => false,
            }
        },
    )
    .await;
    drop(counted);

    redis.kill().await;
    redis.start_again().await;
    assert!(redis.get_i64("hits").await < last, "the snapshot is loaded");

    refuses_every_visit(
        &idle.client,
        "counter store no longer holds the counts",
        "a process that counted nothing since the copy",
    )
    .await;
}

/// A copy taken just before one process's last visits, restored, and another process's
/// writes since carrying the number of the last write past theirs before the first
/// process writes again: that process finds the copy older all the same (its own last
/// write is not in it), and every process refuses. The other process, which heard of no
/// write after the copy (paused here), answers some of those numbers again before that:
/// the window the README states.
#[tokio::test(flavor = "multi_thread")]
async fn redis_gone_back_to_an_older_copy_is_found_though_other_writes_passed_its_number() {
    let mut redis = RedisServer::start_with(Flavor::Redis, None, &["--appendonly", "no"]).await;
    let counted = service_on(&redis, &["--replica", "counted"]).await;
    let other = service_on(&redis, &["--replica", "other"]).await;
    counted.client.visit().await;
    other.client.visit().await;
    other.signal(Signal::SIGSTOP);
    redis.query(&["SAVE"]).await.unwrap();
    let mut last = 0;
    for _ in 0..5 {
        last = counted.client.visit().await;
    }
    counted.signal(Signal::SIGSTOP);

    redis.kill().await;
    redis.start_again().await;
    assert!(redis.get_i64("hits").await < last, "the snapshot is loaded");
    other.signal(Signal::SIGCONT);
    other
        .client
        .wait_ready(allowed(redis_return(&defaults())))
        .await;
    for _ in 0..10 {
        other.client.visit().await;
    }
    counted.signal(Signal::SIGCONT);

    let reason = "counter store no longer holds the counts";
    refuses_every_visit(
        &counted.client,
        reason,
        "the process whose visits the copy lacks",
    )
    .await;
    refuses_every_visit(&other.client, reason, "every other process").await;
    assert!(
        counted
            .log()
            .contains("Redis holds an older copy of the data"),
        "{}",
        counted.log()
    );
}

/// A service process paused (SIGSTOP; a busy host stalls its threads the same way) while
/// Redis's answer to a write waits to be read: that answer tells Redis's time as if read
/// when it was, longer ago than it seems. A visit sent and answered after the pause, in
/// time, is not refused for arriving at Redis after its deadline (every pause that caught
/// an answer so refused the next visit: the deadlines were set early by the pause).
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_with_redis_answers_waiting_does_not_refuse_the_visits_after_it() {
    const PAUSES: usize = 5;
    const CLIENTS: usize = 16;
    let redis = RedisServer::start().await;
    let args = ["--store-timeout", "2s"];
    let service = service_on(&redis, &args).await;
    // Longer than half the store timeout, the time a write has to reach Redis: every
    // answer read after it would have set the deadlines past. (Half the timeout is also
    // the delay a write sent after a pause would need to be refused for itself: a loaded
    // machine does not come near it.)
    let pause = limits::deadlines(&args).store * 3 / 4;
    let running = pause;
    service.client.visit().await;

    // Enough clients that a write is under way whenever the process is paused.
    let stop = tokio_util::sync::CancellationToken::new();
    let visiting: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stop = stop.clone();
            let client = service.client.clone();
            tokio::spawn(async move {
                let mut visits = Vec::new();
                while !stop.is_cancelled() {
                    let sent = Instant::now();
                    let answer = client.try_visit().await;
                    visits.push((sent, Instant::now(), answer));
                }
                visits
            })
        })
        .collect();
    // When the process ran: from each continue to the next stop.
    let mut runs = Vec::new();
    let mut from = Instant::now();
    for _ in 0..PAUSES {
        tokio::time::sleep(running).await;
        service.signal(Signal::SIGSTOP);
        runs.push((from, Instant::now()));
        tokio::time::sleep(pause).await;
        service.signal(Signal::SIGCONT);
        from = Instant::now();
    }
    tokio::time::sleep(running).await;
    stop.cancel();
    let mut visits = Vec::new();
    for client in visiting {
        visits.extend(client.await.unwrap());
    }
    runs.push((from, Instant::now()));

    let within_a_run = |sent: Instant, answered: Instant| {
        runs.iter()
            .any(|&(from, until)| sent > from && answered < until)
    };
    let refused: Vec<&Answer> = visits
        .iter()
        .filter(|(sent, answered, _)| within_a_run(*sent, *answered))
        .map(|(_, _, answer)| answer)
        .filter(|answer| answer.status != Some(StatusCode::OK))
        .collect();
    let in_runs = visits
        .iter()
        .filter(|(sent, answered, _)| within_a_run(*sent, *answered))
        .count();
    assert!(in_runs > 0, "no visit went through while the process ran");
    assert!(
        refused.is_empty(),
        "{} of {in_runs} visits made while the process ran were refused, the first: {:?}\n{}",
        refused.len(),
        refused[0],
        service
            .log()
            .lines()
            .filter(|line| !line.contains("\"GET\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A store that fails every write fails thousands a second under load: the log says so
/// once a second (with how many failed writes it left out), not once a write, while the
/// metrics count each.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_failing_every_write_is_logged_once_a_second() {
    const VISITS: u64 = 200;
    let redis = RedisServer::start().await;
    let service = service_on(&redis, &[]).await;
    service.client.visit().await;
    redis
        .query(&["CONFIG", "SET", "maxmemory", "1"])
        .await
        .unwrap();

    let started = Instant::now();
    for _ in 0..VISITS {
        let refused = service.client.try_visit().await;
        assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    }
    let took = started.elapsed();
    let failed = service
        .client
        .metric("stackdemo_store_errors_total{reason=\"out_of_memory\"}")
        .await as u64;

    assert_eq!(failed, VISITS, "every failed write counted");
    let lines = service.log().matches("store write failed").count() as u64;
    let at_most = took.as_secs() + 1;
    assert!(
        (1..=at_most).contains(&lines),
        "{lines} lines for {VISITS} failed writes in {took:?}"
    );
}

/// A Redis reached through a unix socket (`unix:///path`), with the database in the query.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_on_a_unix_socket_counts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let socket = socket.to_str().unwrap();
    let redis = RedisServer::start_with(
        Flavor::Redis,
        None,
        &["--unixsocket", socket, "--unixsocketperm", "700"],
    )
    .await;
    let app = TestApp::spawn_on_redis(&format!("unix://{socket}?db=2"), &[]).await;

    assert_eq!(app.client.visit().await, 1);
    assert_eq!(app.client.visit().await, 2);
    redis.query(&["SELECT", "2"]).await.unwrap();
    let in_db_2 = redis
        .query(&[
            "EVAL",
            "redis.call('SELECT', 2) return redis.call('GET', 'hits')",
            "0",
        ])
        .await
        .unwrap();
    assert_eq!(in_db_2, redis::Value::BulkString(b"2".to_vec()));
    assert_eq!(redis.get_i64("hits").await, 0, "database 0 untouched");
}

/// The primary's connections killed (`CLIENT KILL`, as operators do, and the sentinels in
/// every failover) while a write waits for its replica: the write is sent again on a
/// fresh connection, where it is not applied twice, and it is acknowledged only once the
/// replica has it, as on its first connection. Here the replica is paused, so no visit
/// may be acknowledged; once it is back, counting carries on and holds. Valkey, like
/// Redis from 7.2, lets `WAIT` on a connection that has written nothing return at once:
/// the case this guards. Redis 7.0 (Debian's) makes such a `WAIT` wait, so its run is the
/// control that the test's steps hold on either server.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_sent_again_after_its_connection_was_killed_still_waits_for_the_replica() {
    for flavor in [Flavor::Redis, Flavor::Valkey] {
        killed_connections_while_a_write_waits_for_the_replica(flavor).await;
    }
}

async fn killed_connections_while_a_write_waits_for_the_replica(flavor: Flavor) {
    // The first copy at once, not after the default 5 s wait for more replicas.
    let primary = RedisServer::start_with(flavor, None, &["--repl-diskless-sync-delay", "0"]).await;
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(flavor, None, &["--replicaof", "127.0.0.1", &port]).await;
    wait_until(
        "the replica to copy the primary",
        allowed(PROCESS_START),
        || async { replica.replication("master_link_status").await.as_deref() == Some("up") },
    )
    .await;
    let service = service_on(&primary, &["--redis-min-replicas", "1"]).await;
    // The first visits after a start or a pause may find the replica slow to confirm on
    // a loaded machine.
    let confirmed_visit = async || {
        let counted = std::sync::Mutex::new(None);
        wait_until(
            "a visit confirmed by the replica",
            allowed(PROCESS_START),
            || async {
                let answer = service.client.try_visit().await;
                *counted.lock().unwrap() = answer.count;
                answer.count.is_some()
            },
        )
        .await;
        counted.into_inner().unwrap().expect("a counted visit")
    };
    let start = confirmed_visit().await;
    let blocked = async || {
        primary
            .info("clients", "blocked_clients")
            .await
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
            > 0
    };

    replica.pause();
    let mut killed = 0;
    let limit = Instant::now() + allowed(defaults().store * 40);
    while killed < 5 && Instant::now() < limit {
        let client = service.client.clone();
        let visit = tokio::spawn(async move { client.try_visit().await });
        // The write waits for the replica (WAIT) for about half the store timeout.
        while !visit.is_finished() && !blocked().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !visit.is_finished() {
            primary
                .query(&["CLIENT", "KILL", "TYPE", "normal"])
                .await
                .expect("the connections are killed");
            killed += 1;
        }
        let answer = visit.await.expect("the visit");
        assert_ne!(
            answer.status,
            Some(StatusCode::OK),
            "{flavor:?}: acknowledged while the only replica was paused: {answer:?}"
        );
    }
    assert_eq!(
        killed, 5,
        "a write was seen waiting for its replica 5 times"
    );
    replica.resume();
    // Counted before the next confirmed visit: those refused while the replica was paused.
    let refused_but_counted = confirmed_visit().await - 1 - start;
    let reported = in_doubt(&service.client).await;
    assert!(
        refused_but_counted as u64 <= reported,
        "{refused_but_counted} refused visits counted, {reported} reported in doubt"
    );

    let before = primary.get_i64("hits").await;
    let load = Load::start(&service.client, 4);
    // Each write waits for the replica: on a loaded machine a visit takes a while.
    load.wait_for_acknowledged(20, allowed(PROCESS_START) + for_visits(20), || async {
        String::new()
    })
    .await;
    let history = load.stop().await;
    history.assert_counting_held(
        before,
        primary.get_i64("hits").await,
        in_doubt(&service.client).await - reported,
    );
    wait_until(
        "the replica to have every visit",
        allowed(PROCESS_START),
        || async { replica.get_i64("hits").await == primary.get_i64("hits").await },
    )
    .await;
}
