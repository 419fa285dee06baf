//! Redis-specific behaviour: compatibility with the original app's data, the full range of
//! its integer, and what happens when Redis is missing, stopped, restarted, paused, closes
//! idle connections, refuses writes or holds keys of the wrong type.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{Load, RedisServer, ServiceProcess, TestApp, TestClient, wait_until};

/// Sends `n` visits, each of which must be refused with 503 in under a second.
async fn assert_fast_503s(client: &TestClient, n: usize) {
    for _ in 0..n {
        let started = Instant::now();
        let answer = client.try_visit().await;
        assert_eq!(
            answer.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{answer:?}"
        );
        assert_eq!(answer.count, None);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "a 503 took {took:?}");
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

/// Runs `clients` clients against `app` until the total has grown by `visits`, and
/// returns their answers checked against what Redis holds.
async fn load_until(
    app: &ServiceProcess,
    redis: &RedisServer,
    start: i64,
    clients: u64,
    visits: i64,
) {
    let load = Load::start(&app.client, clients);
    wait_until("visits under load", Duration::from_secs(20), || async {
        redis.get_i64("hits") >= start.saturating_add(visits)
    })
    .await;
    let history = load.stop().await;
    history.assert_counting_held(start, redis.get_i64("hits"), in_doubt(&app.client).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn counting_carries_on_from_the_original_apps_hits_key() {
    let redis = RedisServer::start();
    redis.set("hits", "41");
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;

    assert_eq!(app.client.visit().await, 42);
    assert_eq!(redis.get_i64("hits"), 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_counter_key_setting_picks_the_key() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &["--counter-key", "visits"]).await;

    app.client.visit().await;
    app.client.visit().await;

    assert_eq!(redis.get_i64("visits"), 2);
    assert_eq!(redis.get_i64("hits"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_past_2_to_the_53_are_exact_and_never_repeated() {
    // Lua numbers are doubles: a total returned through one would be rounded here.
    let start = 9_007_199_254_740_990;
    let redis = RedisServer::start();
    redis.set("hits", &start.to_string());
    let app = service_on(&redis, &[]).await;

    assert_eq!(app.client.visit().await, start + 1);
    load_until(&app, &redis, start + 1, 8, 500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_total_below_zero_counts_up_through_zero_as_incr_does() {
    let redis = RedisServer::start();
    redis.set("hits", "-300");
    let app = service_on(&redis, &[]).await;

    assert_eq!(app.client.visit().await, -299);
    load_until(&app, &redis, -299, 8, 600).await;
    assert!(redis.get_i64("hits") > 0, "the load crossed zero");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_limit_of_a_64_bit_total_visits_get_503_and_nothing_is_counted() {
    let redis = RedisServer::start();
    redis.set("hits", &(i64::MAX - 2).to_string());
    let app = service_on(&redis, &[]).await;

    assert_eq!(app.client.visit().await, i64::MAX - 1);
    assert_eq!(app.client.visit().await, i64::MAX);
    let refused = app.client.try_visit().await;

    assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        refused.body,
        "Service Unavailable: the counter is at its limit\n"
    );
    assert_eq!(redis.get_i64("hits"), i64::MAX);
    assert_eq!(in_doubt(&app.client).await, 0);
}

/// Every key a write touches, given a value of the wrong type: the visit is refused, and
/// nothing at all is counted (Lua does not roll back on its own: the write script must).
#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_the_wrong_type_refuses_the_visit_and_nothing_is_counted() {
    let redis = RedisServer::start();
    let app = service_on(&redis, &["--workers", "1"]).await;
    assert_eq!(app.client.visit().await, 1);
    let redis::Value::Array(records) = redis.query(&["KEYS", "hits:batches:*"]).unwrap() else {
        panic!("KEYS answers an array");
    };
    let records: Vec<String> = records
        .into_iter()
        .map(|key| redis::from_redis_value(key).unwrap())
        .collect();
    assert!(!records.is_empty(), "the write keeps batch records");
    // (key, the wrong value, whether readiness can see it)
    let mut cases = vec![
        ("hits", vec!["RPUSH", "hits", "a list"], true),
        ("hits", vec!["SET", "hits", "not a number"], true),
        (
            "hits:replicas",
            vec!["SET", "hits:replicas", "a string"],
            true,
        ),
        (
            "hits:replicas",
            vec!["HSET", "hits:replicas", "process", "x"],
            false,
        ),
    ];
    for record in &records {
        cases.push((
            record.as_str(),
            vec!["SET", record.as_str(), "a string"],
            false,
        ));
    }

    let mut expected = 1;
    for (key, wrong, visible) in cases {
        let saved = redis.query(&["DUMP", key]).unwrap();
        redis.query(&["DEL", key]).unwrap();
        redis.query(&wrong).unwrap();
        let before = redis.query(&["DUMP", "hits"]).unwrap();
        let replicas_before = redis.query(&["DUMP", "hits:replicas"]).unwrap();

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
        assert_eq!(
            redis.query(&["DUMP", "hits"]).unwrap(),
            before,
            "{key}: hits changed"
        );
        assert_eq!(
            redis.query(&["DUMP", "hits:replicas"]).unwrap(),
            replicas_before,
            "{key}: the per-replica hash changed"
        );
        assert_eq!(in_doubt(&app.client).await, 0, "{key}");
        if visible {
            assert_eq!(
                app.client.ready_status().await,
                StatusCode::SERVICE_UNAVAILABLE,
                "{key}: not ready while a write cannot succeed"
            );
        }

        redis.query(&["DEL", key]).unwrap();
        if let redis::Value::BulkString(dump) = saved {
            redis
                .query_bytes(&[b"RESTORE", key.as_bytes(), b"0", &dump])
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
    let mut redis = RedisServer::start();
    redis.kill();
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

    redis.start_again();
    app.client.wait_ready(Duration::from_secs(3)).await;

    assert_eq!(
        app.client.visit().await,
        1,
        "the refused visit was not counted"
    );
    assert_eq!(in_doubt(&app.client).await, 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_away_gives_fast_503s_and_recovery_loses_and_invents_nothing() {
    let mut redis = RedisServer::start();
    let app = service_on(&redis, &[]).await;
    for expected in 1..=5 {
        assert_eq!(app.client.visit().await, expected);
    }

    redis.kill();
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

    redis.start_again();
    let back = Instant::now();
    app.client.wait_ready(Duration::from_secs(2)).await;
    assert!(back.elapsed() < Duration::from_secs(2));

    assert_eq!(
        app.client.visit().await,
        6,
        "no visit lost, none answered 503 counted"
    );
    assert_eq!(redis.get_i64("hits"), 6);
}

/// After Redis comes back, every worker serves within two seconds: no worker is held back
/// by the connection it had before, or by another worker's failures.
#[tokio::test(flavor = "multi_thread")]
async fn every_worker_serves_within_two_seconds_of_redis_returning() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &["--workers", "4"]).await;
    // Twelve clients, each on a connection of its own, spread over the four workers.
    let clients: Vec<TestClient> = (0..12)
        .map(|_| TestClient::with_base(app.client.base.clone()))
        .collect();
    for client in &clients {
        client.visit().await;
    }

    redis.kill();
    redis.start_again();
    let back = Instant::now();
    wait_until(
        "every connection to count again",
        Duration::from_secs(2),
        || async {
            let answers =
                futures_util::future::join_all(clients.iter().map(TestClient::try_visit)).await;
            answers
                .iter()
                .all(|answer| answer.status == Some(StatusCode::OK))
        },
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
    let redis = RedisServer::start();
    redis.query(&["CONFIG", "SET", "timeout", "1"]).unwrap();
    let app = service_on(&redis, &["--workers", "3"]).await;
    let clients: Vec<TestClient> = (0..9)
        .map(|_| TestClient::with_base(app.client.base.clone()))
        .collect();
    for client in &clients {
        client.visit().await;
    }
    let connected = || match redis.query(&["INFO", "clients"]) {
        Ok(value) => {
            let info: String = redis::from_redis_value(value).unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
                .unwrap_or(0)
        }
        Err(_) => 0,
    };

    // Wait for Redis to close the service's idle connections (the heartbeat's stays busy).
    wait_until(
        "Redis to close idle connections",
        Duration::from_secs(5),
        || async { connected() <= 2 },
    )
    .await;

    for answer in futures_util::future::join_all(clients.iter().map(TestClient::try_visit)).await {
        assert_eq!(answer.status, Some(StatusCode::OK), "{answer:?}");
    }
    assert_eq!(in_doubt(&app.client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_a_redis_restart_with_aof() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    for _ in 0..10 {
        app.client.visit().await;
    }

    redis.restart();
    app.client.wait_ready(Duration::from_secs(3)).await;

    assert_eq!(app.client.visit().await, 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_refusing_writes_gives_503_with_a_reason_and_counts_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    app.client.visit().await;

    redis
        .query(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    redis.query(&["CONFIG", "SET", "maxmemory", "1"]).unwrap();
    let refused = app.client.try_visit().await;
    redis.query(&["CONFIG", "SET", "maxmemory", "0"]).unwrap();

    assert_eq!(refused.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        refused.body,
        "Service Unavailable: counter store is out of memory\n"
    );
    assert_eq!(app.client.visit().await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_comes_from_a_file() {
    let redis = RedisServer::start_with_password(Some("s3cret-pass"));
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
    let mut redis = RedisServer::start();
    let app = service_on(&redis, &[]).await;
    let load = Load::start(&app.client, 16);
    wait_until(
        "some visits before the fault",
        Duration::from_secs(5),
        || async { redis.get_i64("hits") >= 200 },
    )
    .await;

    redis.kill();
    redis.start_again();
    app.client.wait_ready(Duration::from_secs(3)).await;
    let restarted_at = redis.get_i64("hits");
    wait_until(
        "visits after the restart",
        Duration::from_secs(5),
        || async { redis.get_i64("hits") >= restarted_at + 200 },
    )
    .await;
    let history = load.stop().await;

    history.assert_counting_held(0, redis.get_i64("hits"), in_doubt(&app.client).await);
}

/// Calls of one command that Redis has served so far, from `INFO commandstats`.
fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String =
        redis::from_redis_value(redis.query(&["INFO", "commandstats"]).unwrap()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn many_pages_polling_stats_cost_the_store_few_reads() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    app.client.visit().await;
    let before = command_calls(&redis, "zrange");

    let polls = futures_util::future::join_all((0..100).map(|_| app.client.stats())).await;

    for poll in polls {
        assert_eq!(poll["total"].as_i64(), Some(1));
    }
    let reads = command_calls(&redis, "zrange") - before;
    assert!(
        reads <= 2,
        "100 concurrent polls read the store {reads} times"
    );
    assert_eq!(app.client.visit().await, 2, "polling counted no visit");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_answer_within_a_second_while_redis_hangs() {
    let redis = RedisServer::start();
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
        assert!(took < Duration::from_secs(1), "a poll took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_gives_fast_503s_that_are_not_counted_when_it_wakes() {
    let redis = RedisServer::start();
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
    let first = loop {
        if let Some(number) = app.client.try_visit().await.acknowledged() {
            break number;
        }
        assert!(
            woke.elapsed() < Duration::from_secs(2),
            "no visit counted since Redis woke"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    assert_eq!(first, 4, "visits answered 503 were counted when Redis woke");
    assert_eq!(redis.get_i64("hits"), 4);
}

/// `stackdemo_count` shows the total the store holds, also after the key is reset.
#[tokio::test(flavor = "multi_thread")]
async fn the_count_metric_follows_the_total_down_when_it_is_reset() {
    let redis = RedisServer::start();
    let service = service_on(&redis, &[]).await;
    for _ in 0..5 {
        service.client.visit().await;
    }
    let client = &service.client;
    wait_until("the metric to show 5", Duration::from_secs(3), || async {
        client.metric("stackdemo_count").await == 5.0
    })
    .await;

    redis.set("hits", "0");

    wait_until(
        "the metric to show the reset",
        Duration::from_secs(3),
        || async { client.metric("stackdemo_count").await == 0.0 },
    )
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
    let first_client = TestClient::with_base(service.client.base.clone());
    let first = tokio::spawn(async move { first_client.try_visit().await });
    let mut held = Vec::new();
    wait_until("the worker to connect", Duration::from_secs(5), || {
        while let Ok((stream, _)) = silent.accept() {
            held.push(stream);
        }
        let connected = held.len();
        async move { connected >= 2 }
    })
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
            *took < Duration::from_millis(700),
            "a visit waited {took:?} for another write's connection attempt"
        );
    }
    let first = first.await.unwrap();
    assert_eq!(first.status, Some(StatusCode::SERVICE_UNAVAILABLE));
}
