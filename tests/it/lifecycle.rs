//! Process lifecycle: graceful shutdown, slow clients, the healthcheck subcommand.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::helpers::{Backend, RedisServer, ServiceProcess, TestApp, process, wait_until};

/// Batches sent to the store so far, from the service's own metrics.
async fn batches_sent(service: &ServiceProcess) -> f64 {
    service
        .client
        .metric("stackdemo_visit_batch_size_count")
        .await
}

/// The service on `redis`, with a 3 s store timeout and an 8 s request timeout, so that a
/// visit held in a paused Redis is still waiting when the test signals it; then `extra`.
async fn start_on(redis: &RedisServer, extra: &[&str]) -> ServiceProcess {
    let url = redis.url();
    let mut args = vec![
        "--redis-url",
        &url,
        "--store-timeout",
        "3s",
        "--request-timeout",
        "8s",
    ];
    args.extend_from_slice(extra);
    ServiceProcess::start(&args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_visit_finish_and_exits_0() {
    let redis = RedisServer::start();
    let mut service = start_on(&redis, &[]).await;
    // Hold writes in Redis so that the visit is still waiting for its answer (for less than
    // the write deadline, half the store timeout, after which Redis would refuse it).
    redis.query(&["CLIENT", "PAUSE", "800", "WRITE"]).unwrap();
    let client = service.client.clone();
    let visit = tokio::spawn(async move { client.try_visit().await });
    wait_until(
        "the visit to reach the store",
        Duration::from_secs(3),
        || async { batches_sent(&service).await >= 1.0 },
    )
    .await;

    service.signal("TERM");

    let (status, count, _) = visit.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the in-flight visit completes");
    assert_eq!(count, Some(1));
    let exit = service.wait(Duration::from_secs(5));
    assert_eq!(exit.code(), Some(0));
    assert_eq!(redis.get_u64("hits"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visit_still_running_at_the_shutdown_deadline_is_cut_off_and_not_counted() {
    let redis = RedisServer::start();
    let mut service = start_on(&redis, &["--shutdown-timeout", "300ms"]).await;
    assert_eq!(service.client.visit().await, 1);
    // A heartbeat has measured Redis's clock, so writes now carry a deadline.
    wait_until("a heartbeat", Duration::from_secs(3), || async {
        matches!(redis.query(&["ZCARD", "hits:heartbeats"]), Ok(redis::Value::Int(n)) if n > 0)
    })
    .await;
    redis.query(&["CLIENT", "PAUSE", "20000", "WRITE"]).unwrap();
    let mut stuck = TcpStream::connect(("127.0.0.1", service.port)).unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_until(
        "the visit to reach the store",
        Duration::from_secs(3),
        || async { batches_sent(&service).await >= 2.0 },
    )
    .await;

    let started = Instant::now();
    service.signal("TERM");
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = stuck.read(&mut buffer).unwrap_or(0);
    let cut_after = started.elapsed();

    assert_eq!(
        n,
        0,
        "the connection is closed without an answer, got {:?}",
        String::from_utf8_lossy(&buffer[..n])
    );
    assert!(
        cut_after < Duration::from_secs(2),
        "cut at the 300 ms deadline, not when the 3 s store timeout answered: {cut_after:?}"
    );
    assert_eq!(service.wait(Duration::from_secs(15)).code(), Some(0));
    redis.query(&["CLIENT", "UNPAUSE"]).unwrap();
    wait_until(
        "Redis to take writes again",
        Duration::from_secs(3),
        || async { redis.query(&["SET", "probe", "1"]).is_ok() },
    )
    .await;
    assert_eq!(
        redis.get_u64("hits"),
        1,
        "the cut-off visit was not counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = ServiceProcess::start(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--shutdown-timeout",
        "10s",
    ])
    .await;
    let mut idle = TcpStream::connect(("127.0.0.1", service.port)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = idle.read(&mut buffer).unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));

    let started = Instant::now();
    service.signal("TERM");
    let exit = service.wait(Duration::from_secs(5));

    assert_eq!(exit.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?}",
        started.elapsed()
    );
    idle.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(
        idle.read(&mut buffer).unwrap_or(0),
        0,
        "the idle connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_the_service_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = ServiceProcess::start(&["--data-dir", dir.path().to_str().unwrap()]).await;

    service.signal("INT");

    assert_eq!(service.wait(Duration::from_secs(5)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--header-read-timeout", "1s"]).await;
    let mut slow = TcpStream::connect(app.address).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let started = Instant::now();
    let mut buffer = [0u8; 256];
    let closed = loop {
        match slow.read(&mut buffer) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };

    assert!(closed, "the connection stayed open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.client.visit().await,
        1,
        "the unfinished request was not counted"
    );
}

#[test]
fn the_default_header_read_timeout_is_ten_seconds() {
    use clap::Parser;
    let cli = stackdemo::config::Cli::try_parse_from(["stackdemo"]).unwrap();
    assert_eq!(cli.settings.header_read_timeout, Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_exits_0_when_ready_and_1_when_not() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let service = ServiceProcess::start(&["--redis-url", &url]).await;
    let listen = format!("0.0.0.0:{}", service.port);

    let ready = process::run(&["healthcheck", "--listen", &listen], &[]);
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );

    redis.kill();
    let not_ready = process::run(&["healthcheck"], &[("STACKDEMO_LISTEN", &listen)]);
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("503"));

    let nothing = process::run(
        &[
            "healthcheck",
            "--listen",
            &format!("127.0.0.1:{}", crate::helpers::free_port()),
        ],
        &[],
    );
    assert_eq!(nothing.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_bound_wait_until_one_closes() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--max-connections", "2"]).await;
    let open = |address| {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    };
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buffer = [0u8; 512];
    // Two keep-alive connections take both slots.
    let mut first = open(app.address);
    first.write_all(request).unwrap();
    assert!(first.read(&mut buffer).unwrap() > 0);
    let mut second = open(app.address);
    second.write_all(request).unwrap();
    assert!(second.read(&mut buffer).unwrap() > 0);

    // A third is accepted by the kernel but not served while both are open.
    let mut third = open(app.address);
    third.write_all(request).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(third.read(&mut buffer).is_err(), "served beyond the bound");

    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = third.read(&mut buffer).unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
}
