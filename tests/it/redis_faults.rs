//! Redis-specific behaviour: compatibility with the original app's data, and what happens
//! when Redis is missing, stopped, restarted or refusing writes.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::helpers::{RedisServer, TestApp, TestClient, wait_until};

/// Sends `n` visits, each of which must be refused with 503 in under a second.
async fn assert_fast_503s(client: &TestClient, n: usize) {
    for _ in 0..n {
        let started = Instant::now();
        let (status, count, _) = client.try_visit().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(count, None);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "a 503 took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counting_carries_on_from_the_original_apps_hits_key() {
    let redis = RedisServer::start();
    redis.set("hits", "41");
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;

    assert_eq!(app.client.visit().await, 42);
    assert_eq!(redis.get_u64("hits"), 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_counter_key_setting_picks_the_key() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &["--counter-key", "visits"]).await;

    app.client.visit().await;
    app.client.visit().await;

    assert_eq!(redis.get_u64("visits"), 2);
    assert_eq!(redis.get_u64("hits"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_starts_without_redis_and_recovers_when_it_appears() {
    let mut redis = RedisServer::start();
    redis.kill();
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;

    assert_eq!(
        app.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, _, body) = app.client.try_visit().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "Service Unavailable: counter store unreachable\n");

    redis.start_again();
    app.client.wait_ready(Duration::from_secs(3)).await;

    assert_eq!(
        app.client.visit().await,
        1,
        "the refused visit was not counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_away_gives_fast_503s_and_recovery_loses_and_invents_nothing() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    for expected in 1..=5 {
        assert_eq!(app.client.visit().await, expected);
    }

    redis.kill();
    assert_fast_503s(&app.client, 5).await;
    assert_eq!(
        app.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE
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
    assert_eq!(redis.get_u64("hits"), 6);
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
    let (status, _, body) = app.client.try_visit().await;
    redis.query(&["CONFIG", "SET", "maxmemory", "0"]).unwrap();

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "Service Unavailable: counter store is out of memory\n"
    );
    assert!(
        !body.contains("OOM command not allowed"),
        "internal error text must not leak"
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
    let (status, _, body) = without.client.try_visit().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "Service Unavailable: counter store rejected our credentials\n"
    );
    assert_eq!(app.client.visit().await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_redis_under_load_loses_no_acknowledged_visit_and_repeats_no_number() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    let stop_at = Instant::now() + Duration::from_secs(4);

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (Vec::new(), 0u64);
            while Instant::now() < stop_at {
                match client.try_visit().await {
                    (StatusCode::OK, Some(n), _) => ok.push(n),
                    (StatusCode::SERVICE_UNAVAILABLE, None, _) => refused += 1,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            (ok, refused)
        }));
    }
    let client = app.client.clone();
    wait_until(
        "some visits before the fault",
        Duration::from_secs(2),
        || {
            let client = client.clone();
            async move { client.total().await >= 200 }
        },
    )
    .await;
    redis.kill();
    redis.start_again();

    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (ok, r) = task.await.unwrap();
        assert!(
            ok.windows(2).all(|w| w[0] < w[1]),
            "a client saw its count go down"
        );
        acknowledged.extend(ok);
        refused += r;
    }
    let distinct: BTreeSet<u64> = acknowledged.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        acknowledged.len(),
        "a number was handed out twice"
    );
    let stored = redis.get_u64("hits");
    let highest = *distinct.last().unwrap();
    assert!(
        stored >= highest,
        "acknowledged visit {highest} lost: Redis holds {stored}"
    );
    // A write cut off by the kill may have reached Redis although its visits were refused;
    // such visits can only come from those answered 503.
    assert!(
        stored - acknowledged.len() as u64 <= refused,
        "stored {stored}, acknowledged {}, refused {refused}",
        acknowledged.len()
    );
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

    let mut polls = Vec::new();
    for _ in 0..100 {
        let client = app.client.clone();
        polls.push(tokio::spawn(async move {
            client.stats().await["total"].as_u64()
        }));
    }
    for poll in polls {
        assert_eq!(poll.await.unwrap(), Some(1));
    }

    let reads = command_calls(&redis, "zrange") - before;
    assert!(
        reads <= 2,
        "100 concurrent polls read the store {reads} times"
    );
    assert_eq!(app.client.visit().await, 2, "polling counted no visit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_gives_fast_503s_that_are_not_counted_when_it_wakes() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis.url(), &[]).await;
    // The first heartbeat reads Redis's clock; the replica shows alive once it is done.
    let client = app.client.clone();
    wait_until("the first heartbeat", Duration::from_secs(3), || {
        let client = client.clone();
        async move { client.stats().await["replicas"][0]["alive"] == true }
    })
    .await;
    for expected in 1..=3 {
        assert_eq!(app.client.visit().await, expected);
    }

    redis.pause();
    assert_fast_503s(&app.client, 3).await;
    // Redis now holds the refused writes in its socket buffer; waking up, it runs them.
    redis.resume();
    app.client.wait_ready(Duration::from_secs(3)).await;

    assert_eq!(
        app.client.visit().await,
        4,
        "visits answered 503 were counted when Redis woke"
    );
    assert_eq!(redis.get_u64("hits"), 4);
}
