//! Generated schedules of faults under load, one per store: while clients record every
//! answer (and some hang up mid-visit), faults drawn at random strike one after another,
//! with calm spells between them. The faults are what breaks and what operators do:
//! processes killed and paused, connections cut, a planned failover, a hung sentinel, a
//! lagging replica, the server's memory limit, replica requirement or ACL changed under
//! load, a key of the wrong type, a disk that fills, a data file deleted, moved or
//! replaced. A fault that refuses every visit until it is undone must make every service
//! say it is not ready within a second. At the end the checker holds the answers against
//! what the store holds: no number answered twice, every acknowledged number at most the
//! final count, and what was counted without a 200 no more than what the services
//! reported in doubt (plus, across kills of a service, the visits it had in flight).
//!
//! The clients visit many counters at once, as a counter service's clients do: the
//! tutorial's and 2000 named ones, a few hot and many cold (a Zipf law), so that each
//! store write carries visits of many counters; the promise is checked per counter.
//!
//! The seed is printed before the first fault; `FAULT_SEED=<seed>` replays a schedule.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use fastrand::Rng;
use nix::sys::signal::Signal;
use reqwest::StatusCode;

use stackdemo::deadlines::Deadlines;

use crate::helpers::{
    Load, RedisServer, ServiceProcess, TestClient, allowed,
    checker::{Counters, History, Kill, Totals},
    disk::{SmallDisk, fill},
    limits::{self, PROCESS_START, for_visits, redis_return},
    redis::Flavor,
    sentinel::{FAILOVER, RedisGroup},
    wait_or_explain,
};

/// Counters the clients visit, the tutorial's among them.
const COUNTERS: usize = 2000;
/// How long faults are drawn for; the whole test takes a few seconds more.
const SCHEDULE: Duration = Duration::from_secs(12);
/// Clients that send visits one after another, and clients that hang up.
const CLIENTS: u64 = 12;
const HANG_UPS: u64 = 4;
/// How soon a service must say it is not ready once every visit is refused: readiness
/// asks the store with a write of no visits, so as soon as it is asked.
const NOT_READY_WITHIN: Duration = Duration::from_secs(1);
/// How long the embedded store waits before it opens its database again after a failed
/// write, and how often an idle one looks at its data file.
const EMBEDDED_REOPEN: Duration = Duration::from_secs(1);

/// The schedule's seed, printed at once so that a schedule that fails can be replayed.
fn seed(schedule: &str) -> u64 {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{schedule} fault schedule: seed {seed} (replay with FAULT_SEED={seed})");
    seed
}

fn millis(rng: &mut Rng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

/// Each counter the clients visited, with its total as `client`'s service reads it
/// now; every one began at 0. A read refused (503: a read past the store timeout on a
/// loaded machine) is asked again, a few times.
async fn totals(client: &TestClient, history: &History) -> Totals {
    const READS: usize = 5;
    let mut totals = Totals::new();
    for index in history.visited() {
        let name = history.counters().name(index);
        let path = format!("/api/counters/{name}");
        let mut response = client.get(&path).await;
        for _ in 1..READS {
            if response.status() != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            response = client.get(&path).await;
        }
        let total = match response.status() {
            StatusCode::NOT_FOUND => 0,
            StatusCode::OK => {
                let json: serde_json::Value = response.json().await.expect("JSON");
                json["total"].as_i64().expect("a total")
            }
            other => panic!("reading {name}: {other}"),
        };
        totals.insert(index, (0, total));
    }
    totals
}

/// The services' settings for a load on many counters from one address.
const NO_RATE_LIMIT: [&str; 2] = ["--rate-limit", "off"];

async fn in_doubt(service: &ServiceProcess) -> u64 {
    service
        .client
        .metric("stackdemo_visits_in_doubt_total")
        .await as u64
}

/// Kills `service` (entry `entry` of the load) with SIGKILL after reading what it has
/// reported in doubt into `reported`; returns when its reports were being lost: from a
/// visit's length before that reading to the kill.
async fn kill(
    load: &Load,
    service: &ServiceProcess,
    entry: usize,
    deadlines: &Deadlines,
    reported: &mut u64,
) -> Kill {
    let from = load.elapsed().saturating_sub(deadlines.visit());
    *reported += in_doubt(service).await;
    service.signal(Signal::SIGKILL);
    Kill {
        entry,
        from,
        to: load.elapsed(),
    }
}

/// A fault that refuses every visit until it is undone: each service says it is not
/// ready within `NOT_READY_WITHIN`.
async fn assert_not_ready(services: &[ServiceProcess], fault: &str) {
    for service in services {
        wait_or_explain(
            &format!("/readyz to say not ready while: {fault}"),
            allowed(NOT_READY_WITHIN),
            || async { service.client.ready_status().await == StatusCode::SERVICE_UNAVAILABLE },
            || async { format!("/readyz answered {}", service.client.readiness().await) },
        )
        .await;
    }
}

/// Changes that refuse every visit on a Redis server until undone: (what, change, undo).
const LASTING: [(&str, &[&str], &[&str]); 3] = [
    (
        "memory full",
        &["CONFIG", "SET", "maxmemory", "1"],
        &["CONFIG", "SET", "maxmemory", "0"],
    ),
    (
        "replicas required that are not there",
        &["CONFIG", "SET", "min-replicas-to-write", "3"],
        &["CONFIG", "SET", "min-replicas-to-write", "MIN"],
    ),
    (
        "scripts taken away by an ACL",
        &["ACL", "SETUSER", "default", "-evalsha"],
        &["ACL", "SETUSER", "default", "+evalsha"],
    ),
];

/// Applies one of `LASTING` to `server`, checks readiness, holds it a moment, undoes it.
/// `min_replicas` is what `min-replicas-to-write` goes back to.
async fn lasting_fault(
    rng: &mut Rng,
    server: &RedisServer,
    services: &[ServiceProcess],
    min_replicas: &str,
) -> &'static str {
    let (what, change, undo) = LASTING[rng.usize(..LASTING.len())];
    let _ = server
        .query(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    server.query(change).await.expect("the change is made");
    assert_not_ready(services, what).await;
    tokio::time::sleep(millis(rng, 100..600)).await;
    let undo: Vec<&str> = undo
        .iter()
        .map(|arg| if *arg == "MIN" { min_replicas } else { arg })
        .collect();
    server.query(&undo).await.expect("the change is undone");
    what
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_on_redis_under_load_never_break_the_counting_promise() {
    let seed = seed("redis");
    let mut rng = Rng::with_seed(seed);
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--workers",
        "2",
        NO_RATE_LIMIT[0],
        NO_RATE_LIMIT[1],
    ];
    let deadlines = limits::deadlines(&args);
    let mut services = [
        ServiceProcess::start(&args).await,
        ServiceProcess::start(&args).await,
    ];
    let entries: Vec<_> = services.iter().map(|s| s.client.clone()).collect();
    let load = Load::start_on_counters(&entries, CLIENTS, HANG_UPS, Counters::zipf(COUNTERS));
    let mut doubt_of_killed = 0;
    let mut kills = Vec::new();
    let mut faults = Vec::new();

    let started = Instant::now();
    while started.elapsed() < SCHEDULE {
        let fault = match rng.u8(0..7) {
            0 => {
                redis.kill().await;
                tokio::time::sleep(millis(&mut rng, 0..500)).await;
                redis.start_again().await;
                "redis killed"
            }
            1 => {
                redis.pause();
                tokio::time::sleep(millis(&mut rng, 100..900)).await;
                redis.resume();
                "redis paused"
            }
            2 => {
                let _ = redis.query(&["CLIENT", "KILL", "TYPE", "normal"]).await;
                "client connections killed"
            }
            3 => {
                let _ = redis.query(&["CONFIG", "SET", "timeout", "1"]).await;
                tokio::time::sleep(millis(&mut rng, 1000..2000)).await;
                let _ = redis.query(&["CONFIG", "SET", "timeout", "0"]).await;
                "idle timeout"
            }
            4 => {
                let saved = redis.query(&["DUMP", "hits:replicas"]).await;
                let _ = redis.query(&["SET", "hits:replicas", "not a hash"]).await;
                assert_not_ready(&services, "a wrong-typed key").await;
                tokio::time::sleep(millis(&mut rng, 100..500)).await;
                let _ = redis.query(&["DEL", "hits:replicas"]).await;
                if let Ok(redis::Value::BulkString(dump)) = saved {
                    let _ = redis
                        .query_bytes(&[b"RESTORE", b"hits:replicas", b"0", &dump])
                        .await;
                }
                "wrong-typed key"
            }
            5 => lasting_fault(&mut rng, &redis, &services, "0").await,
            _ => {
                let entry = rng.usize(0..2);
                let victim = &mut services[entry];
                kills.push(kill(&load, victim, entry, &deadlines, &mut doubt_of_killed).await);
                victim.restart().await;
                "service killed"
            }
        };
        faults.push(fault);
        tokio::time::sleep(millis(&mut rng, 200..900)).await;
    }
    // Counting resumes after the last fault, on every service.
    load.wait_for_acknowledged(
        100,
        allowed(redis_return(&deadlines) + PROCESS_START) + for_visits(100),
        || async { format!("faults: {faults:?}") },
    )
    .await;
    let history = load.stop().await;

    let reported = doubt_of_killed + in_doubt(&services[0]).await + in_doubt(&services[1]).await;
    let totals = totals(&services[0].client, &history).await;
    let counted: i64 = totals.values().map(|(_, end)| end).sum();
    let report = history.assert_counters_held_across_kills(&totals, reported, &kills);
    eprintln!(
        "redis fault schedule (seed {seed}): {faults:?}; {} visits of {} counters, {} \
         acknowledged, {} refused, {reported} reported in doubt, {} counted without a 200",
        report.requests,
        totals.len(),
        report.succeeded,
        report.failed,
        counted - report.succeeded as i64,
    );
}

/// A Redis group with sentinels under what operators and failures do to it.
#[tokio::test(flavor = "multi_thread")]
async fn faults_on_a_sentinel_group_under_load_never_break_the_counting_promise() {
    let seed = seed("sentinel");
    let mut rng = Rng::with_seed(seed);
    let mut group = RedisGroup::start(Flavor::Redis).await;
    let sentinels = group.sentinel_list();
    let args = [
        "--redis-sentinels",
        sentinels.as_str(),
        "--workers",
        "2",
        NO_RATE_LIMIT[0],
        NO_RATE_LIMIT[1],
    ];
    let deadlines = limits::deadlines(&args);
    let services = [
        ServiceProcess::start(&args).await,
        ServiceProcess::start(&args).await,
    ];
    let entries: Vec<_> = services.iter().map(|s| s.client.clone()).collect();
    let load = Load::start_on_counters(&entries, CLIENTS, HANG_UPS, Counters::zipf(COUNTERS));
    let mut faults = Vec::new();
    let mut killed: Option<usize> = None;
    // The old primary of a planned failover reports itself a primary until the sentinels
    // convert it (about 10 s later). A failover meanwhile may promote it, with none of
    // the writes since the first one: two faults at once (see the failover rule), so
    // none is drawn until it replicates the new primary.
    let mut unconverted: Option<usize> = None;

    let started = Instant::now();
    while started.elapsed() < SCHEDULE {
        // A node killed earlier comes back first, as a replica of the new primary, and
        // has copied it before anything else happens: one fault at a time.
        if let Some(node) = killed.take() {
            group.rejoin(node).await;
        }
        if let Some(old) = unconverted
            && group.nodes[old]
                .replication("master_link_status")
                .await
                .as_deref()
                == Some("up")
        {
            unconverted = None;
        }
        let primary = group.primary().await.expect("a primary");
        let began = load.elapsed();
        let draw = loop {
            let draw = rng.u8(0..6);
            if unconverted.is_none() || draw > 1 {
                break draw;
            }
        };
        let fault = match draw {
            0 => {
                let new = group.planned_failover().await;
                unconverted = Some(primary);
                format!("planned failover, node {primary} to node {new}")
            }
            1 => {
                group.nodes[primary].kill().await;
                let new = group.wait_for_failover(primary, allowed(FAILOVER)).await;
                killed = Some(primary);
                format!("primary killed, node {primary} to node {new}")
            }
            2 => {
                let sentinel = &group.sentinels[rng.usize(0..3)];
                sentinel.pause();
                tokio::time::sleep(millis(&mut rng, 300..2000)).await;
                sentinel.resume();
                "a sentinel hung".to_owned()
            }
            3 => {
                let replica = (primary + 1 + rng.usize(0..2)) % 3;
                group.nodes[replica].pause();
                tokio::time::sleep(millis(&mut rng, 200..1500)).await;
                group.nodes[replica].resume();
                "a replica lagging".to_owned()
            }
            4 => {
                // Writes waiting for replicas are sent again on fresh connections.
                let _ = group.nodes[primary]
                    .query(&["CLIENT", "KILL", "TYPE", "normal"])
                    .await;
                "the primary's client connections killed".to_owned()
            }
            _ => lasting_fault(&mut rng, &group.nodes[primary], &services, "1")
                .await
                .to_owned(),
        };
        faults.push(format!("{fault} (at {:.3}s)", began.as_secs_f64()));
        tokio::time::sleep(millis(&mut rng, 200..900)).await;
    }
    if let Some(node) = killed.take() {
        group.rejoin(node).await;
    }
    load.wait_for_acknowledged(
        100,
        allowed(FAILOVER + redis_return(&deadlines)) + for_visits(100),
        || async { format!("faults: {faults:?}\n{}", group.state().await) },
    )
    .await;
    let history = load.stop().await;

    let reported = in_doubt(&services[0]).await + in_doubt(&services[1]).await;
    let totals = totals(&services[0].client, &history).await;
    let counted: i64 = totals.values().map(|(_, end)| end).sum();
    eprintln!("sentinel fault schedule (seed {seed}): {faults:?}");
    let report = history.assert_counters_held(&totals, reported);
    eprintln!(
        "sentinel fault schedule (seed {seed}): {} visits of {} counters, {} acknowledged, \
         {} refused, {reported} reported in doubt, {} counted without a 200; refused:\n{}",
        report.requests,
        totals.len(),
        report.succeeded,
        report.failed,
        counted - report.succeeded as i64,
        history.refusals()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_on_the_embedded_store_under_load_never_break_the_counting_promise() {
    let seed = seed("embedded");
    let mut rng = Rng::with_seed(seed);
    let disk = SmallDisk::mount(16 * 1024 * 1024);
    let data = disk.path.join("data");
    let file = data.join("stackdemo.redb");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--store-timeout",
        "50ms",
        "--request-timeout",
        "1s",
        NO_RATE_LIMIT[0],
        NO_RATE_LIMIT[1],
    ];
    let deadlines = limits::deadlines(&args);
    let mut service = ServiceProcess::start(&args).await;
    let load = Load::start_on_counters(
        std::slice::from_ref(&service.client),
        CLIENTS,
        HANG_UPS,
        Counters::zipf(COUNTERS),
    );
    let mut doubt_of_killed = 0;
    let mut kills = Vec::new();
    let mut faults = Vec::new();
    // The data file as it was early on, to put back in its place later.
    load.wait_for_acknowledged(50, for_visits(50), || async { String::new() })
        .await;
    let older = disk.path.join("older.redb");
    tokio::fs::copy(&file, &older).await.unwrap();
    let back_in_place = allowed(EMBEDDED_REOPEN * 2 + deadlines.store * 2);

    let started = Instant::now();
    while started.elapsed() < SCHEDULE {
        let fault = match rng.u8(0..6) {
            0 => {
                service.signal(Signal::SIGSTOP);
                tokio::time::sleep(millis(&mut rng, 50..700)).await;
                service.signal(Signal::SIGCONT);
                "service paused"
            }
            1 => {
                let filler = disk.path.join("filler");
                fill(&filler).await;
                tokio::time::sleep(millis(&mut rng, 200..1200)).await;
                tokio::fs::remove_file(&filler).await.unwrap();
                "disk full"
            }
            2 => {
                tokio::fs::remove_file(&file).await.unwrap();
                wait_in_place(&service, &file, back_in_place).await;
                "data file deleted"
            }
            3 => {
                let moved = disk.path.join("moved");
                tokio::fs::rename(&data, &moved).await.unwrap();
                wait_in_place(&service, &file, back_in_place).await;
                tokio::fs::remove_dir_all(&moved).await.unwrap();
                "data folder moved"
            }
            4 => {
                let copy = disk.path.join("copy.redb");
                tokio::fs::copy(&older, &copy).await.unwrap();
                tokio::fs::rename(&copy, &file).await.unwrap();
                assert_not_ready(std::slice::from_ref(&service), "an older data file").await;
                tokio::time::sleep(millis(&mut rng, 100..600)).await;
                tokio::fs::remove_file(&file).await.unwrap();
                wait_in_place(&service, &file, back_in_place).await;
                "data file replaced by an older copy"
            }
            _ => {
                kills.push(kill(&load, &service, 0, &deadlines, &mut doubt_of_killed).await);
                service.restart().await;
                "service killed"
            }
        };
        faults.push(fault);
        tokio::time::sleep(millis(&mut rng, 200..900)).await;
    }
    // Counting resumes after the last fault: the writer reopens the database a second
    // after a failed write, and the store timeout bounds each write.
    load.wait_for_acknowledged(
        100,
        allowed(EMBEDDED_REOPEN + deadlines.store * 2) + for_visits(100),
        || async { format!("faults: {faults:?}") },
    )
    .await;
    let history = load.stop().await;
    service.client.wait_ready(back_in_place).await;

    let reported = doubt_of_killed + in_doubt(&service).await;
    let totals = totals(&service.client, &history).await;
    let counted: i64 = totals.values().map(|(_, end)| end).sum();
    let report = history.assert_counters_held_across_kills(&totals, reported, &kills);
    eprintln!(
        "embedded fault schedule (seed {seed}): {faults:?}; {} visits of {} counters, {} \
         acknowledged, {} refused, {reported} reported in doubt, {} counted without a 200",
        report.requests,
        totals.len(),
        report.succeeded,
        report.failed,
        counted - report.succeeded as i64,
    );
}

/// Waits until the service has put its data file back at the path and is ready.
async fn wait_in_place(service: &ServiceProcess, file: &Path, limit: Duration) {
    wait_or_explain(
        "the data file back in place, and the service ready",
        limit,
        || async {
            tokio::fs::try_exists(file).await.unwrap_or(false)
                && service.client.ready_status().await == StatusCode::OK
        },
        || async { service.log() },
    )
    .await;
}
