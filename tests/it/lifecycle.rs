//! Process lifecycle and connections: graceful shutdown, signals, slow and silent
//! clients, the connection bound, memory under half-sent requests, the healthcheck
//! subcommand.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use stackdemo::{
    deadlines::Deadlines,
    routes::UNROUTED,
    telemetry::{DROPPED_MESSAGE, FLUSH_EVERY},
};

use crate::helpers::{
    Backend, RedisServer, ServiceProcess, TestApp, TestClient, allowed,
    client::{metric_in, raw_bytes, raw_exchange},
    limits::{self, PROCESS_START},
    process, wait_until,
};

/// The memory the stack file gives the service (`docker-compose.yml`).
const STACK_MEMORY_MB: u64 = 128;

/// What the service's own memory may take of that: the kernel's buffers for its
/// connections count against the container's limit too.
const SERVICE_MEMORY_MB: u64 = STACK_MEMORY_MB - 4;

/// How long the healthcheck subcommand waits for `/readyz` (its `--timeout` default).
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Batches sent to the store so far, from the service's own metrics.
async fn batches_sent(service: &ServiceProcess) -> f64 {
    service
        .client
        .metric("stackdemo_visit_batch_size_count")
        .await
}

/// The service on `redis`, with a 3 s store timeout and an 8 s request timeout, so that a
/// visit held in a paused Redis is still waiting when the test signals it; then `extra`.
/// Returns the service and the time bounds it keeps.
async fn start_on(redis: &RedisServer, extra: &[&str]) -> (ServiceProcess, Deadlines) {
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
    (ServiceProcess::start(&args).await, limits::deadlines(&args))
}

/// Reads until the peer closes the connection (or resets it); false if it stays open
/// for `limit`.
async fn closed_by_peer(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 256];
    let closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(limit, closed).await.unwrap_or(false)
}

/// Reads what is there to read within `limit`: `None` if nothing came.
async fn read_some(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buffer = [0u8; 1024];
    match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_visit_finish_and_exits_0() {
    let redis = RedisServer::start().await;
    let (mut service, deadlines) = start_on(&redis, &[]).await;
    // Hold writes in Redis so that the visit is still waiting for its answer (for less than
    // the write deadline, half the store timeout, after which Redis would refuse it).
    let pause = Duration::from_millis(800);
    redis
        .query(&["CLIENT", "PAUSE", &pause.as_millis().to_string(), "WRITE"])
        .await
        .unwrap();
    let client = service.client.clone();
    let visit = tokio::spawn(async move { client.try_visit().await });
    wait_until(
        "the visit to reach the store",
        allowed(deadlines.queue_wait()),
        || async { batches_sent(&service).await >= 1.0 },
    )
    .await;

    service.signal(Signal::SIGTERM);

    let answer = visit.await.unwrap();
    assert_eq!(
        answer.status,
        Some(StatusCode::OK),
        "the in-flight visit completes"
    );
    assert_eq!(answer.count, Some(1));
    let exit = service.wait(allowed(pause + PROCESS_START)).await;
    assert_eq!(exit.code(), Some(0));
    assert_eq!(redis.get_i64("hits").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visit_still_running_at_the_shutdown_deadline_is_cut_off_and_not_counted() {
    let redis = RedisServer::start().await;
    let (mut service, deadlines) = start_on(&redis, &["--shutdown-timeout", "300ms"]).await;
    let cut_by = allowed(deadlines.shutdown);
    assert!(
        cut_by < deadlines.store,
        "with STACKDEMO_TEST_SLOWNESS this high, a cut at the shutdown deadline cannot be \
         told from an answer at the store timeout"
    );
    assert_eq!(service.client.visit().await, 1);
    redis
        .query(&["CLIENT", "PAUSE", "20000", "WRITE"])
        .await
        .unwrap();
    let mut stuck = TcpStream::connect(("127.0.0.1", service.port))
        .await
        .unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until(
        "the visit to reach the store",
        allowed(deadlines.queue_wait()),
        || async { batches_sent(&service).await >= 2.0 },
    )
    .await;

    let started = Instant::now();
    service.signal(Signal::SIGTERM);
    let answer = read_some(&mut stuck, allowed(deadlines.visit())).await;
    let cut_after = started.elapsed();

    assert_eq!(
        answer.as_deref(),
        Some(""),
        "the connection is closed without an answer"
    );
    assert!(
        cut_after < cut_by,
        "cut at the 300 ms deadline, not when the 3 s store timeout answered: {cut_after:?}"
    );
    let exit = service.wait(allowed(deadlines.exit())).await;
    assert_eq!(exit.code(), Some(0));
    redis.query(&["CLIENT", "UNPAUSE"]).await.unwrap();
    wait_until(
        "Redis to take writes again",
        allowed(PROCESS_START),
        || async { redis.query(&["SET", "probe", "1"]).await.is_ok() },
    )
    .await;
    assert_eq!(
        redis.get_i64("hits").await,
        1,
        "the cut-off visit was not counted"
    );
}

/// A Redis that hangs holds the exit no longer than the shutdown timeout and the bound on
/// removing this replica's heartbeat: a heartbeat under way is given up, and the removal
/// does not wait the store timeout (both did, one after the other).
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_does_not_hold_the_exit_for_the_store_timeout() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--store-timeout",
        "4s",
        "--request-timeout",
        "9s",
        "--shutdown-timeout",
        "300ms",
    ];
    let mut service = ServiceProcess::start(&args).await;
    let deadlines = limits::deadlines(&args);
    service.client.visit().await;
    redis.pause();

    service.signal(Signal::SIGTERM);
    let exit = service
        .wait(allowed(
            deadlines.shutdown + Deadlines::LINGER_QUIET + deadlines.depart(),
        ))
        .await;
    redis.resume();

    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown_timeout = Duration::from_secs(20);
    let exit_by = allowed(PROCESS_START);
    assert!(
        exit_by < shutdown_timeout,
        "STACKDEMO_TEST_SLOWNESS too high"
    );
    let mut service = ServiceProcess::start(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--shutdown-timeout",
        "20s",
    ])
    .await;
    let mut idle = TcpStream::connect(("127.0.0.1", service.port))
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_some(&mut idle, exit_by).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    let started = Instant::now();
    service.signal(Signal::SIGTERM);
    let exit = service.wait(exit_by).await;

    assert_eq!(exit.code(), Some(0));
    assert!(
        started.elapsed() < exit_by,
        "shutdown waited {:?}",
        started.elapsed()
    );
    assert!(
        closed_by_peer(&mut idle, exit_by).await,
        "the idle connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_and_sighup_stop_the_service_cleanly() {
    for signal in [Signal::SIGINT, Signal::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let mut service =
            ServiceProcess::start(&["--data-dir", dir.path().to_str().unwrap()]).await;
        service.client.visit().await;

        service.signal(signal);

        assert_eq!(
            service.wait(allowed(PROCESS_START)).await.code(),
            Some(0),
            "{signal}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let args = ["--header-read-timeout", "1s"];
    let app = TestApp::spawn_with(Backend::Embedded, &args).await;
    let mut slow = TcpStream::connect(app.address).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();

    let closed = closed_by_peer(&mut slow, allowed(limits::deadlines(&args).header_read)).await;

    assert!(
        closed,
        "the connection stayed open past the header read timeout"
    );
    assert_eq!(
        app.client.visit().await,
        1,
        "the unfinished request was not counted"
    );
}

/// Sockets that never send a byte (not even enough to tell HTTP/1 from HTTP/2) are closed
/// after the header read timeout, so that they cannot hold every connection slot.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_that_fill_every_slot_are_closed_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--max-connections",
        "20",
        "--header-read-timeout",
        "1s",
    ];
    let service = ServiceProcess::start(&args).await;
    let limit = allowed(limits::deadlines(&args).header_read);
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(
            TcpStream::connect(("127.0.0.1", service.port))
                .await
                .unwrap(),
        );
    }
    // Two with a first byte or the start of the HTTP/2 preface, then silence.
    silent[0].write_all(b"G").await.unwrap();
    silent[1].write_all(b"PRI * HTTP/2").await.unwrap();

    let started = Instant::now();
    let client = TestClient::with_timeout(service.client.base.clone(), limit);
    let health = client.get("/healthz").await;

    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        started.elapsed() < limit,
        "a new client waited {:?}",
        started.elapsed()
    );
    for stream in &mut silent {
        assert!(
            closed_by_peer(stream, limit).await,
            "a silent connection stayed open"
        );
    }
}

/// A visit whose body ends too late to be counted within the request timeout is refused
/// before it joins a batch: never answered 408 and counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_ends_near_the_request_timeout_is_refused_and_not_counted() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--request-timeout",
        "2s",
        "--store-timeout",
        "400ms",
    ];
    let service = ServiceProcess::start(&args).await;
    let answer_by = allowed(limits::deadlines(&args).request);
    // Late bodies end just before the request timeout; early ones well before it.
    let visits = (0..24).map(|i| {
        let address: std::net::SocketAddr = format!("127.0.0.1:{}", service.port).parse().unwrap();
        let late = i % 2 == 0;
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream
                .write_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
                )
                .await
                .unwrap();
            let wait = if late { 1_950 + 2 * i } else { 300 };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let _ = stream.write_all(b"ok").await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(answer_by, stream.read_to_end(&mut answer)).await;
            crate::helpers::client::parse_raw(&String::from_utf8_lossy(&answer))
        })
    });
    let answers = futures_util::future::join_all(visits).await;

    // An early body is counted, as a rule; on a loaded host its write may miss the store
    // timeout (503, counted only if it says it may have been).
    let (mut counted, mut in_doubt) = (0, 0);
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap().expect("an answer");
        if i % 2 == 0 {
            assert_eq!(answer.status, 408, "a late body: {answer:?}");
        } else if answer.status == 503 {
            in_doubt += i64::from(answer.body.contains("may have been counted"));
        } else {
            assert_eq!(answer.status, 200, "an early body: {answer:?}");
            counted += 1;
        }
    }
    assert!(counted > 0, "no early body was counted");
    let total = redis.get_i64("hits").await;
    assert!(
        (counted..=counted + in_doubt).contains(&total),
        "{total} counted, {counted} answered 200 and {in_doubt} in doubt: a refused visit was counted"
    );
}

/// Every connection holding a half-sent request head of nearly the size limit: the
/// service's memory stays within what the stack file gives it (128 MB), at the default
/// connection bound.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_on_every_connection_fit_the_stack_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let service = ServiceProcess::start(&["--data-dir", dir.path().to_str().unwrap()]).await;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}",
        "f".repeat(16_000)
    );
    let address = format!("127.0.0.1:{}", service.port);

    let mut open = Vec::new();
    for _ in 0..1024 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        open.push(stream);
    }
    // 16 MB of heads, read from loopback in well under a second.
    wait_until(
        "the service to read every head",
        allowed(Duration::from_secs(1)),
        || async { queued_bytes(service.port, Queue::Receive) == 0 },
    )
    .await;
    let rss_mb = service.rss_kib() / 1024;

    assert!(
        rss_mb < SERVICE_MEMORY_MB,
        "{rss_mb} MB resident with 1024 half-sent heads"
    );
    drop(open);
}

/// Every connection but a few asking for the largest answers a client can get without
/// the token (the metrics page, after requests of every kind on every route have grown it
/// as far as they can, and a history of 400 days) and taking nothing of them: the
/// service's memory and what its sockets hold stay within what the stack file gives it.
/// (Before the metrics page was bounded, such requests grew it to hundreds of kilobytes,
/// and a thousand unread copies to 400 MB.)
#[tokio::test(flavor = "multi_thread")]
async fn answers_nobody_takes_on_every_connection_fit_the_stack_memory_limit() {
    const CONNECTIONS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let service = ServiceProcess::start(&["--data-dir", dir.path().to_str().unwrap()]).await;
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", service.port).parse().unwrap();
    let paths = [
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/stats",
        "/c/a",
        "/badge/a.svg",
        "/api/counters/a",
        "/api/counters/a/history",
        "/api/counters",
        "/ignore-me",
        "/api/admin/export",
        "/api/admin/import",
        "/nope",
    ];
    let methods = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW",
    ];
    for path in paths {
        for method in methods {
            for extra in [
                "",
                "Content-Length: 20000\r\n",
                "Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            ] {
                let request = format!(
                    "{method} {path}?days=0&cursor=%ff HTTP/1.1\r\nHost: x\r\n\
                     Connection: close\r\n{extra}\r\n"
                );
                raw_bytes(address, request.as_bytes(), allowed(Duration::from_secs(5))).await;
            }
        }
    }
    let page = service.client.get("/metrics").await.text().await.unwrap();
    assert!(
        page.len() < 32 * 1024,
        "a metrics page of {} bytes",
        page.len()
    );

    let mut open = Vec::new();
    for i in 0..CONNECTIONS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        let path = if i % 2 == 0 {
            "/metrics"
        } else {
            "/api/counters/hits/history?days=400"
        };
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        open.push(stream);
    }
    // Every answer has begun to arrive: the service holds the rest.
    for stream in &open {
        tokio::time::timeout(allowed(Duration::from_secs(1)), stream.peek(&mut [0u8; 1]))
            .await
            .expect("an answer begins")
            .unwrap();
    }
    let used_mb =
        (service.rss_kib() * 1024 + queued_bytes(service.port, Queue::Send)) / (1024 * 1024);

    assert!(
        used_mb < STACK_MEMORY_MB,
        "{used_mb} MB resident and unsent with {CONNECTIONS} answers nobody takes"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_is_healthy_when_ready_or_when_only_the_store_went_away() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let service = ServiceProcess::start(&["--redis-url", &url]).await;
    let listen = format!("0.0.0.0:{}", service.port);
    let within = allowed(PROCESS_START + HEALTHCHECK_TIMEOUT);
    let run = |args: &'static [&'static str], env: Vec<(&'static str, String)>| async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        process::run_within(within, args, &env).await
    };

    let ready = process::run_within(within, &["healthcheck", "--listen", &listen], &[]).await;
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );

    // One that counted a visit but was never asked whether it is ready: ready before all
    // the same.
    let counted = ServiceProcess::start(&["--redis-url", &url]).await;
    counted.client.visit().await;

    // Ready before: a Redis outage leaves it healthy (not ready), so Swarm does not
    // restart every replica at once.
    redis.kill().await;
    assert_eq!(
        service.client.ready_status().await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let outage = run(&["healthcheck"], vec![("STACKDEMO_LISTEN", listen.clone())]).await;
    assert_eq!(outage.status.code(), Some(0));
    let counted_outage = run(
        &["healthcheck"],
        vec![("STACKDEMO_LISTEN", format!("127.0.0.1:{}", counted.port))],
    )
    .await;
    assert_eq!(
        counted_outage.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&counted_outage.stderr)
    );

    // Never ready: unhealthy, so that a rolling update to it rolls back.
    let never = ServiceProcess::start(&["--redis-url", &url]).await;
    let never_ready = run(
        &["healthcheck"],
        vec![("STACKDEMO_LISTEN", format!("127.0.0.1:{}", never.port))],
    )
    .await;
    assert_eq!(never_ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&never_ready.stderr).contains("503"));

    let nothing = run(
        &["healthcheck"],
        vec![(
            "STACKDEMO_LISTEN",
            format!("127.0.0.1:{}", crate::helpers::free_port()),
        )],
    )
    .await;
    assert_eq!(nothing.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_bound_wait_until_one_closes() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--max-connections", "2"]).await;
    let answer_by = allowed(limits::deadlines(&[]).request);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two keep-alive connections take both slots.
    let mut first = TcpStream::connect(app.address).await.unwrap();
    first.write_all(request).await.unwrap();
    assert!(
        read_some(&mut first, answer_by)
            .await
            .is_some_and(|a| !a.is_empty())
    );
    let mut second = TcpStream::connect(app.address).await.unwrap();
    second.write_all(request).await.unwrap();
    assert!(
        read_some(&mut second, answer_by)
            .await
            .is_some_and(|a| !a.is_empty())
    );

    // A third is accepted by the kernel but not served while both are open.
    let mut third = TcpStream::connect(app.address).await.unwrap();
    third.write_all(request).await.unwrap();
    assert_eq!(
        read_some(&mut third, Duration::from_millis(300)).await,
        None,
        "served beyond the bound"
    );

    drop(first);
    let answer = read_some(&mut third, answer_by).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

/// Which of its sockets' queues.
#[derive(Clone, Copy, PartialEq)]
enum Queue {
    /// Bytes written that the client has not taken yet: kernel memory that counts against
    /// the container's limit too.
    Send,
    /// Bytes received that the service has not read yet.
    Receive,
}

/// The bytes in one queue of the service's established connections on `port`, from
/// /proc/net/tcp.
fn queued_bytes(port: u16, queue: Queue) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let established = *fields.get(3)? == "01";
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            let bytes = if queue == Queue::Send { tx } else { rx };
            let bytes = u64::from_str_radix(bytes, 16).ok()?;
            (local_port == port && established).then_some(bytes)
        })
        .sum()
}

/// The lines of the service's log that tell of requests to paths under `prefix`.
fn request_lines<'a>(log: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> {
    let path = format!("\"path\":\"{prefix}");
    log.lines()
        .filter(move |line| line.contains("\"request served\"") && line.contains(&path))
}

/// Every request gets its line, also those answered just before the service is told to
/// stop: what the workers hold back is written out before the process exits.
#[tokio::test(flavor = "multi_thread")]
async fn every_request_answered_before_a_sigterm_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = ServiceProcess::start_with_env(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[("RUST_LOG", "info")],
    )
    .await;
    let requests = 400;
    let mut answers = tokio::task::JoinSet::new();
    for i in 0..requests {
        let client = service.client.clone();
        answers.spawn(async move { client.get(&format!("/logged/{i}")).await.status() });
    }
    while let Some(status) = answers.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::NOT_FOUND);
    }

    service.signal(Signal::SIGTERM);
    assert_eq!(service.wait(allowed(PROCESS_START)).await.code(), Some(0));

    let log = service.log();
    let mut seen = vec![0; requests];
    for line in request_lines(&log, "/logged/") {
        let fields: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(fields["status"], 404, "{line}");
        let path = fields["path"].as_str().unwrap();
        seen[path["/logged/".len()..].parse::<usize>().unwrap()] += 1;
    }
    let wrong: Vec<_> = seen.iter().enumerate().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "(request, lines) not logged once: {wrong:?}"
    );
}

/// The service with its standard output on a pipe that the test reads, or not, logging
/// in `format`, and an administrator's token (whose refusals are logged as warnings).
async fn start_with_piped_log(dir: &Path, format: &str) -> (tokio::process::Child, TestClient) {
    let listen = format!("127.0.0.1:{}", crate::helpers::free_port());
    let token = dir.join("admin-token");
    std::fs::write(&token, "an administrator's token").unwrap();
    let child = tokio::process::Command::new(process::binary())
        .args([
            "--listen",
            &listen,
            "--log-format",
            format,
            "--admin-token-file",
        ])
        .arg(&token)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the service starts");
    let client = TestClient::new(listen.parse().unwrap());
    wait_until("the service to answer", allowed(PROCESS_START), || async {
        client.answers_ok("/healthz").await
    })
    .await;
    (child, client)
}

/// Sends `requests` requests (`method`, to `prefix` and a number), 8 at a time; each must
/// be refused (a 4xx: no such path, no administrator's token) well within the request
/// timeout, so that none waits for the log.
async fn refused_in_time(
    client: &TestClient,
    method: reqwest::Method,
    prefix: &'static str,
    requests: usize,
) {
    let limit = allowed(limits::deadlines(&[]).request);
    let mut clients = tokio::task::JoinSet::new();
    for first in 0..8 {
        let (client, method) = (client.clone(), method.clone());
        clients.spawn(async move {
            for i in (first..requests).step_by(8) {
                let started = Instant::now();
                let status = client
                    .request(method.clone(), &format!("{prefix}{i}"))
                    .await
                    .status();
                assert!(status.is_client_error(), "{method} {prefix}{i}: {status}");
                assert!(started.elapsed() < limit, "a request waited for the log");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
}

/// Reads the service's whole output, from now until it exits.
fn read_all(mut output: tokio::process::ChildStdout) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut text = Vec::new();
        output
            .read_to_end(&mut text)
            .await
            .expect("the output is read");
        text
    })
}

/// Stops the service with SIGTERM, expects it to exit 0 in time, and returns its output
/// (read by `reader`) as text.
async fn stopped_with_sigterm(
    child: &mut tokio::process::Child,
    reader: tokio::task::JoinHandle<Vec<u8>>,
) -> String {
    sigterm(child);
    let status = tokio::time::timeout(allowed(PROCESS_START), child.wait()).await;
    assert_eq!(status.expect("exits in time").unwrap().code(), Some(0));
    String::from_utf8_lossy(&reader.await.unwrap()).into_owned()
}

fn sigterm(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("the signal is sent");
}

/// Far more lines than fit while nobody reads: a pipe holds 64 KiB, the queues about a
/// megabyte each, a line some 230 bytes.
const UNREAD_REQUESTS: usize = 20_000;

/// A log reader that stops reading (a stuck `docker logs`): the service serves on as
/// before, holds a bounded queue of lines, drops what does not fit and counts it
/// (`stackdemo_log_lines_dropped_total`). Once the reader reads again, every line is
/// either in the output or counted in the last line, which says how many were dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_reader_that_stops_reading_stalls_nothing_and_loses_no_line_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, client) = start_with_piped_log(dir.path(), "json").await;
    let output = child.stdout.take().expect("its output");

    refused_in_time(&client, reqwest::Method::GET, "/unread/", UNREAD_REQUESTS).await;
    let dropped = client.metric("stackdemo_log_lines_dropped_total").await;
    assert!(dropped > 0.0, "lines were dropped while nobody read them");
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    assert!(
        rss_kib < SERVICE_MEMORY_MB * 1024,
        "{rss_kib} KiB resident, over the stack's limit"
    );

    let reader = read_all(output);
    let text = stopped_with_sigterm(&mut child, reader).await;
    let written = request_lines(&text, "/").count();
    let summary = text
        .lines()
        .find(|line| line.contains(DROPPED_MESSAGE))
        .expect("a line says how many lines were dropped");
    let summary: serde_json::Value = serde_json::from_str(summary).expect("a JSON line");
    let dropped = summary["dropped"].as_u64().expect("a count") as usize;
    // Requests: the first `/healthz`, the unread ones, `/metrics`; a few other lines
    // (start, stop) may be among the dropped ones.
    let logged = UNREAD_REQUESTS + 2;
    assert!(
        (logged..logged + 8).contains(&(written + dropped)),
        "{written} request lines written and {dropped} dropped, of {logged}"
    );
    assert!(
        request_lines(&text, "/unread/").count() > 0,
        "lines queued before the output blocked are written"
    );
}

/// A log reader that never reads again: requests that log warnings are answered as
/// before (their warnings dropped and counted), and the service still stops when told
/// to, in time, and with exit code 0, rather than wait for an output that does not move.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_reader_stuck_for_good_does_not_keep_the_service_from_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, client) = start_with_piped_log(dir.path(), "json").await;
    // Held, never read.
    let _output = child.stdout.take().expect("its output");

    refused_in_time(&client, reqwest::Method::GET, "/unread/", UNREAD_REQUESTS).await;
    // Each logged as a warning.
    refused_in_time(
        &client,
        reqwest::Method::DELETE,
        "/api/counters/page-",
        2_000,
    )
    .await;
    assert!(client.answers_ok("/healthz").await);
    sigterm(&child);

    let status = tokio::time::timeout(allowed(PROCESS_START), child.wait()).await;
    assert_eq!(
        status.expect("the service stopped in time").unwrap().code(),
        Some(0)
    );
}

/// A request hyper refuses before the router sees it (bad syntax, a head over the limit)
/// is logged and counted like any other, so that an operator sees garbage arrive.
#[tokio::test]
async fn requests_refused_before_routing_are_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, client) = start_with_piped_log(dir.path(), "json").await;
    let output = child.stdout.take().expect("its output");
    let reader = read_all(output);
    let address = client.base["http://".len()..].parse().unwrap();
    let bad_syntax = raw_exchange(address, b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(bad_syntax.status, 400);
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
        "c".repeat(17 * 1024)
    );
    assert_eq!(raw_exchange(address, big_head.as_bytes()).await.status, 431);
    // Garbage on a keep-alive connection that has been idle: the line's latency is the
    // garbage's own, not the idle time before it.
    let idle = Duration::from_millis(1500);
    let mut kept = TcpStream::connect(address).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = kept.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the first answer came");
        answer.extend_from_slice(&chunk[..n]);
    }
    tokio::time::sleep(idle).await;
    kept.write_all(b"GET /a\x02b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).await.unwrap();
    assert!(
        String::from_utf8_lossy(&rest).contains("400 Bad Request"),
        "{}",
        String::from_utf8_lossy(&rest)
    );

    // Counted as its connection closes, just after the answer.
    let series = |status: &str| {
        format!("http_requests_total{{route=\"{UNROUTED}\",method=\"other\",status=\"{status}\"}}")
    };
    wait_until(
        "the refusals to be counted",
        allowed(PROCESS_START),
        || async {
            let metrics = client.get("/metrics").await.text().await.unwrap();
            metric_in(&metrics, &series("400")) == 2.0 && metric_in(&metrics, &series("431")) == 1.0
        },
    )
    .await;
    let text = stopped_with_sigterm(&mut child, reader).await;
    // Each worker writes its own lines: in no order between workers.
    let mut refused: Vec<u64> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .filter(|line| line["route"] == UNROUTED)
        .map(|line| {
            assert_eq!(line["method"], "-");
            assert_eq!(line["path"], "-");
            let took = Duration::from_micros(line["latency_us"].as_u64().expect("a latency"));
            assert!(took < idle, "the request's own time: {line}");
            line["status"].as_u64().expect("a status")
        })
        .collect();
    refused.sort_unstable();
    assert_eq!(refused, [400, 400, 431], "{text}");
}

/// An empty `RUST_LOG` is unset, as an empty value of any setting is: the default level,
/// not a filter that logs nothing (a stack file's `RUST_LOG=` silenced the service).
#[tokio::test]
async fn an_empty_log_filter_logs_at_the_default_level() {
    let service = ServiceProcess::start_with_env(&[], &[("RUST_LOG", "")]).await;
    assert_eq!(service.client.get("/").await.status(), StatusCode::OK);
    wait_until("the request's line", allowed(FLUSH_EVERY * 2), || async {
        service.log().contains("\"status\":200")
    })
    .await;
    assert!(service.log().contains("listening"), "{}", service.log());
}

/// Text logs read from a pipe (`docker logs`, a file, `grep`) are plain text: terminal
/// colour codes only where the output is a terminal.
#[tokio::test]
async fn text_logs_written_to_a_pipe_carry_no_terminal_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, client) = start_with_piped_log(dir.path(), "text").await;
    let output = child.stdout.take().expect("its output");
    let reader = read_all(output);
    // A visit (a line per request) and a refused administrator's request (a warning).
    assert_eq!(client.get("/").await.status(), StatusCode::OK);
    refused_in_time(&client, reqwest::Method::DELETE, "/api/counters/", 1).await;
    let text = stopped_with_sigterm(&mut child, reader).await;
    assert!(text.contains("WARN"), "a warning was logged: {text}");
    assert!(
        text.contains("INFO"),
        "the request lines were logged: {text}"
    );
    assert!(!text.contains('\x1b'), "no escape codes: {text:?}");
}

/// In readable text (a terminal, or `--log-format text`) as in JSON, the last line says
/// how many lines an output that could not keep up cost.
#[tokio::test(flavor = "multi_thread")]
async fn in_text_too_the_last_line_says_how_many_lines_were_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, client) = start_with_piped_log(dir.path(), "text").await;
    let output = child.stdout.take().expect("its output");

    refused_in_time(&client, reqwest::Method::GET, "/unread/", UNREAD_REQUESTS).await;
    let dropped = client.metric("stackdemo_log_lines_dropped_total").await;
    assert!(dropped > 0.0, "lines were dropped while nobody read them");

    let reader = read_all(output);
    let text = stopped_with_sigterm(&mut child, reader).await;
    let last = text.lines().last().expect("lines");
    assert!(last.contains(DROPPED_MESSAGE), "the last line: {last}");
}

/// The process's file descriptors run out: every try to accept a connection fails, twenty
/// times a second. The log says so once a second, with how many failures it left out,
/// rather than at every try, and the service serves again once connections close.
#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_file_descriptors_is_logged_once_a_second() {
    let service = ServiceProcess::start(&[]).await;
    let pid = service.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Room for a few more descriptors.
    service.set_soft_limit("nofile", &(open + 4).to_string());

    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(
            TcpStream::connect(("127.0.0.1", service.port))
                .await
                .unwrap(),
        );
    }
    let lines = || {
        service
            .log()
            .lines()
            .filter(|line| line.contains("accept failed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    // A line after the first comes a second later, and says what it left out.
    let says_what_it_left_out = |line: &String| {
        line.contains("\"failures_not_logged\":") && !line.contains("\"failures_not_logged\":0")
    };
    wait_until(
        "a line about accepting that says how many failures it left out",
        allowed(3 * stackdemo::telemetry::THROTTLE_EVERY),
        || async { lines().iter().any(says_what_it_left_out) },
    )
    .await;
    let seconds = started.elapsed().as_secs();
    let logged = lines();

    assert!(
        logged.len() as u64 <= seconds + 2,
        "{} lines in {seconds} s: {logged:#?}",
        logged.len()
    );
    drop(held);
    service
        .client
        .wait_ready(allowed(Duration::from_secs(1)))
        .await;
}
