//! Generated schedules of faults under load, one per store: while clients record every
//! answer, faults drawn at random strike one after another, with calm spells between
//! them. At the end the checker holds the answers against what the store holds: no number
//! answered twice, every acknowledged number at most the final count, and what was
//! counted without a 200 no more than what the services reported in doubt (plus, across
//! kills of a service, the visits it had in flight).
//!
//! The seed is printed before the first fault; `FAULT_SEED=<seed>` replays a schedule.

use std::time::{Duration, Instant};

use fastrand::Rng;
use nix::sys::signal::Signal;

use crate::helpers::{
    Load, RedisServer, ServiceProcess, allowed,
    disk::{SmallDisk, fill},
    limits::{self, PROCESS_START, for_visits, redis_return},
};

/// How long faults are drawn for; the whole test takes a few seconds more.
const SCHEDULE: Duration = Duration::from_secs(12);

/// The schedule's seed, printed at once so that a schedule that fails can be replayed.
fn seed(schedule: &str) -> u64 {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{schedule} fault schedule: seed {seed} (replay with FAULT_SEED={seed})");
    seed
}

/// How long the embedded store waits before opening its database again after a failed
/// write.
const EMBEDDED_REOPEN: Duration = Duration::from_secs(1);

fn millis(rng: &mut Rng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

async fn in_doubt(service: &ServiceProcess) -> u64 {
    service
        .client
        .metric("stackdemo_visits_in_doubt_total")
        .await as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_on_redis_under_load_never_break_the_counting_promise() {
    let seed = seed("redis");
    let mut rng = Rng::with_seed(seed);
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--workers", "2"];
    let deadlines = limits::deadlines(&args);
    let mut services = [
        ServiceProcess::start(&args).await,
        ServiceProcess::start(&args).await,
    ];
    let entries: Vec<_> = services.iter().map(|s| s.client.clone()).collect();
    let load = Load::start_on(&entries, 16);
    let mut doubt_of_killed = 0;
    let mut faults = Vec::new();

    let started = Instant::now();
    while started.elapsed() < SCHEDULE {
        let fault = match rng.u8(0..6) {
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
                tokio::time::sleep(millis(&mut rng, 100..500)).await;
                let _ = redis.query(&["DEL", "hits:replicas"]).await;
                if let Ok(redis::Value::BulkString(dump)) = saved {
                    let _ = redis
                        .query_bytes(&[b"RESTORE", b"hits:replicas", b"0", &dump])
                        .await;
                }
                "wrong-typed key"
            }
            _ => {
                let victim = &mut services[rng.usize(0..2)];
                doubt_of_killed += in_doubt(victim).await;
                victim.signal(Signal::SIGKILL);
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
    let end = redis.get_i64("hits").await;
    let report = history.assert_counting_held_across_kills(0, end, reported);
    eprintln!(
        "redis fault schedule (seed {seed}): {faults:?}; {} visits, {} acknowledged, \
         {} refused, {reported} reported in doubt, {} counted without a 200",
        report.requests,
        report.succeeded,
        report.failed,
        end - report.succeeded as i64,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_on_the_embedded_store_under_load_never_break_the_counting_promise() {
    let seed = seed("embedded");
    let mut rng = Rng::with_seed(seed);
    let disk = SmallDisk::mount(16 * 1024 * 1024);
    let data = disk.path.join("data");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--store-timeout",
        "50ms",
        "--request-timeout",
        "1s",
    ];
    let deadlines = limits::deadlines(&args);
    let mut service = ServiceProcess::start(&args).await;
    let load = Load::start(&service.client, 16);
    let mut doubt_of_killed = 0;
    let mut faults = Vec::new();

    let started = Instant::now();
    while started.elapsed() < SCHEDULE {
        let fault = match rng.u8(0..3) {
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
                std::fs::remove_file(&filler).unwrap();
                "disk full"
            }
            _ => {
                doubt_of_killed += in_doubt(&service).await;
                service.signal(Signal::SIGKILL);
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

    let reported = doubt_of_killed + in_doubt(&service).await;
    let end = service.client.visit().await - 1;
    let report = history.assert_counting_held_across_kills(0, end, reported);
    eprintln!(
        "embedded fault schedule (seed {seed}): {faults:?}; {} visits, {} acknowledged, \
         {} refused, {reported} reported in doubt, {} counted without a 200",
        report.requests,
        report.succeeded,
        report.failed,
        end - report.succeeded as i64,
    );
}
