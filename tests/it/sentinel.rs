//! Redis with Sentinel: a primary, two replicas and three sentinels on loopback, with the
//! service following failovers under load. Losing the primary (killed, or paused long
//! enough to be failed over), a replica, or a minority of sentinels loses no acknowledged
//! visit and repeats no number; visits during a failover get 503s; service resumes within
//! a bound; every worker serves again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{
    Load, RedisServer, ServiceProcess, TestClient, redis::Flavor, sentinel::RedisGroup, wait_until,
};

/// Longest time without any acknowledged visit that a failover may cause: the sentinels'
/// failure detection, their election and promotion, and the service moving over.
const OUTAGE_BOUND: Duration = Duration::from_secs(8);
/// The same with WAITAOF, which also waits for the remaining replica's append-only file.
const OUTAGE_BOUND_WAITAOF: Duration = Duration::from_secs(20);

/// Two service processes (replicas of the web service) following the group's sentinels.
async fn services(group: &RedisGroup, extra: &[&str]) -> Vec<ServiceProcess> {
    let sentinels = group.sentinel_list();
    let mut args = vec!["--redis-sentinels", sentinels.as_str(), "--workers", "2"];
    args.extend_from_slice(extra);
    vec![
        ServiceProcess::start(&args).await,
        ServiceProcess::start(&args).await,
    ]
}

async fn in_doubt(services: &[ServiceProcess]) -> u64 {
    let mut total = 0;
    for service in services {
        total += service
            .client
            .metric("stackdemo_visits_in_doubt_total")
            .await as u64;
    }
    total
}

/// Waits until the group's total has grown by `visits` from now.
async fn more_visits(group: &RedisGroup, visits: i64, limit: Duration) {
    let from = group.total();
    wait_until("visits to be counted", limit, || async {
        group
            .primary()
            .is_some_and(|p| group.nodes[p].get_i64("hits") >= from + visits)
    })
    .await;
}

/// Every worker of every service serves again: twelve clients on connections of their
/// own per service, spread over its workers, all get a number within a few seconds.
async fn every_worker_serves(services: &[ServiceProcess]) {
    for service in services {
        let clients: Vec<TestClient> = (0..12)
            .map(|_| TestClient::with_base(service.client.base.clone()))
            .collect();
        let mut pending: Vec<&TestClient> = clients.iter().collect();
        let started = Instant::now();
        while !pending.is_empty() {
            let answers =
                futures_util::future::join_all(pending.iter().map(|c| c.try_visit())).await;
            pending = pending
                .into_iter()
                .zip(answers)
                .filter(|(_, answer)| answer.status != Some(StatusCode::OK))
                .map(|(client, _)| client)
                .collect();
            assert!(
                pending.is_empty() || started.elapsed() < Duration::from_secs(5),
                "{} connections still refused after 5 s; the service logged:\n{}",
                pending.len(),
                service.log()
            );
        }
    }
}

async fn primary_killed_under_load(flavor: Flavor, extra: &[&str], outage_bound: Duration) {
    let mut group = RedisGroup::start(flavor);
    let services = services(&group, extra).await;
    let entries: Vec<_> = services.iter().map(|s| s.client.clone()).collect();
    let load = Load::start_on(&entries, 16);
    more_visits(&group, 300, Duration::from_secs(10)).await;

    let old = group.primary().expect("a primary");
    let killed = Instant::now();
    group.nodes[old].kill();
    let new = group.wait_for_failover(old, Duration::from_secs(15));
    let elected = killed.elapsed();
    more_visits(&group, 300, Duration::from_secs(10)).await;
    let history = load.stop().await;

    let end = group.nodes[new].get_i64("hits");
    let report = history.assert_counting_held(0, end, in_doubt(&services).await);
    let outage = history.longest_outage();
    assert!(
        outage < outage_bound,
        "no visit counted for {outage:?}; the servers now:\n{}",
        group.state()
    );
    every_worker_serves(&services).await;
    eprintln!(
        "{flavor:?} primary killed: new primary elected after {elected:?}, longest time \
         without a 200 {outage:?}; {} visits, {} acknowledged, {} refused, {} counted \
         without a 200",
        report.requests,
        report.succeeded,
        report.failed,
        end - report.succeeded as i64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_primary_killed_under_load_loses_no_acknowledged_visit() {
    primary_killed_under_load(Flavor::Redis, &[], OUTAGE_BOUND).await;
}

/// Valkey acknowledges a visit only once it is in the append-only file of the primary and
/// of a replica (WAITAOF). Two fsyncs in a row need more than the default store timeout
/// on a disk shared with other tests, as they would on a busy host. After the failover a
/// visit also waits until the remaining replica has resynchronised with the new primary
/// and fsyncs its append-only file again, which takes seconds more when the disk and the
/// CPUs are busy (12 s without an acknowledged visit in one run of the whole suite).
#[tokio::test(flavor = "multi_thread")]
async fn on_valkey_with_waitaof_the_primary_killed_under_load_loses_no_acknowledged_visit() {
    primary_killed_under_load(
        Flavor::Valkey,
        &["--redis-wait-aof", "--store-timeout", "1s"],
        OUTAGE_BOUND_WAITAOF,
    )
    .await;
}

/// A primary paused long enough to be failed over, then resumed: it comes back as a
/// replica, and nothing it took alone is acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_paused_past_its_failover_comes_back_as_a_replica_and_loses_nothing() {
    let group = RedisGroup::start(Flavor::Redis);
    let services = services(&group, &[]).await;
    let entries: Vec<_> = services.iter().map(|s| s.client.clone()).collect();
    let load = Load::start_on(&entries, 16);
    more_visits(&group, 300, Duration::from_secs(10)).await;

    let old = group.primary().expect("a primary");
    group.nodes[old].pause();
    let new = group.wait_for_failover(old, Duration::from_secs(15));
    more_visits(&group, 200, Duration::from_secs(10)).await;
    group.nodes[old].resume();
    wait_until(
        "the old primary to become a replica",
        Duration::from_secs(15),
        || async { group.nodes[old].replication("role").as_deref() == Some("slave") },
    )
    .await;
    more_visits(&group, 200, Duration::from_secs(10)).await;
    let history = load.stop().await;

    let end = group.nodes[new].get_i64("hits");
    history.assert_counting_held(0, end, in_doubt(&services).await);
    let outage = history.longest_outage();
    assert!(outage < OUTAGE_BOUND, "no visit counted for {outage:?}");
    every_worker_serves(&services).await;
}

/// With two replicas and `--redis-min-replicas 1`, losing one replica costs nothing: the
/// other confirms every write.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_load_costs_no_visit() {
    let mut group = RedisGroup::start(Flavor::Redis);
    let services = services(&group, &["--redis-min-replicas", "1"]).await;
    let entries: Vec<_> = services.iter().map(|s| s.client.clone()).collect();
    let load = Load::start_on(&entries, 16);
    more_visits(&group, 300, Duration::from_secs(10)).await;

    let primary = group.primary().expect("a primary");
    let replica = (0..3).find(|&n| n != primary).unwrap();
    group.nodes[replica].kill();
    more_visits(&group, 500, Duration::from_secs(10)).await;
    let history = load.stop().await;

    let report = history.assert_counting_held(0, group.total(), in_doubt(&services).await);
    assert_eq!(report.failed, 0, "{:?}", report.failures);
}

/// Sentinels killed one at a time (never a majority) while visits go on: the service
/// keeps counting, and a failover still happens with one sentinel down.
#[tokio::test(flavor = "multi_thread")]
async fn a_minority_of_sentinels_lost_stops_nothing() {
    let mut group = RedisGroup::start(Flavor::Redis);
    let services = services(&group, &[]).await;
    let entries: Vec<_> = services.iter().map(|s| s.client.clone()).collect();
    let load = Load::start_on(&entries, 16);
    more_visits(&group, 200, Duration::from_secs(10)).await;

    for index in 0..3 {
        group.sentinels[index].kill();
        more_visits(&group, 200, Duration::from_secs(10)).await;
        group.sentinels[index].start_again();
    }
    let quiet = load.stop().await;
    let report = quiet.assert_counting_held(0, group.total(), in_doubt(&services).await);
    assert_eq!(report.failed, 0, "{:?}", report.failures);

    // One sentinel down, and the primary lost: the other two still fail over.
    let start = group.total();
    let load = Load::start_on(&entries, 16);
    group.sentinels[0].kill();
    let old = group.primary().expect("a primary");
    group.nodes[old].kill();
    let new = group.wait_for_failover(old, Duration::from_secs(15));
    more_visits(&group, 200, Duration::from_secs(10)).await;
    let history = load.stop().await;
    history.assert_counting_held(
        start,
        group.nodes[new].get_i64("hits"),
        in_doubt(&services).await,
    );
}

/// The write script applies a batch once however often it is sent: a second send of the
/// same batch gets the total the first one was given, also after the write's deadline.
#[test]
fn a_batch_sent_twice_is_applied_once() {
    let redis = RedisServer::start();
    let script = stackdemo::store::redis::scripts::ADD_VISITS;
    let send = |batch: &str, deadline: &str| -> redis::RedisResult<redis::Value> {
        redis.query(&[
            "EVAL",
            script,
            "3",
            "hits",
            "hits:replicas",
            "hits:batches:t",
            "5",
            "r",
            deadline,
            batch,
            "64",
            "600000",
        ])
    };
    let far = "99999999999999";

    let first: (String, i64, i64) = redis::from_redis_value(send("1", far).unwrap()).unwrap();
    let again: (String, i64, i64) = redis::from_redis_value(send("1", "0").unwrap()).unwrap();
    let next: (String, i64, i64) = redis::from_redis_value(send("2", far).unwrap()).unwrap();
    let late = send("3", "0");

    assert_eq!((first.0.as_str(), first.2), ("5", 0));
    assert_eq!(
        (again.0.as_str(), again.2),
        ("5", 1),
        "the second send replays the first"
    );
    assert_eq!(next.0, "10");
    assert!(late.is_err(), "a write past its deadline is refused");
    assert_eq!(redis.get_i64("hits"), 10);
    assert_eq!(
        redis.query(&["HGET", "hits:replicas", "r"]).unwrap(),
        redis::Value::BulkString(b"10".to_vec())
    );
}

/// The image sets `REDIS_URL` for the tutorial's stack; a stack file that adds
/// `REDIS_SENTINELS` cannot unset it on every Docker client. The sentinels win.
#[tokio::test(flavor = "multi_thread")]
async fn sentinels_win_over_a_redis_url_from_the_image() {
    let group = RedisGroup::start(Flavor::Redis);
    let sentinels = group.sentinel_list();
    let service = ServiceProcess::start_with_env(
        &["--workers", "1"],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1/0"),
            ("REDIS_SENTINELS", sentinels.as_str()),
        ],
    )
    .await;
    let before = group.total();
    assert_eq!(service.client.visit().await, before + 1);
    assert_eq!(group.total(), before + 1);
}
