//! Clients that hang up mid-visit, as browsers and proxies with timeouts do all day: a
//! visit the store counted whose answer did not reach its client is reported in doubt,
//! every time, and a client that only half-closes its connection still gets its answer.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{RedisServer, ServiceProcess, allowed, client::parse_raw, limits, wait_until};

const VISIT: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// How a client leaves after sending its request.
#[derive(Clone, Copy, Debug)]
enum Leaving {
    /// Closes with a reset (SO_LINGER 0), as a killed browser tab's socket does.
    Reset,
    /// Closes normally (FIN) without reading the answer.
    Close,
}

/// Sends one visit and leaves `after` later; returns whether the answer had come by then
/// (then the service delivered it, whether or not the client reads it).
async fn hang_up(port: u16, leaving: Leaving, after: Duration) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(VISIT).await.unwrap();
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    let mut buffer = [0u8; 256];
    let answered = matches!(stream.try_read(&mut buffer), Ok(1..));
    if let Leaving::Reset = leaving {
        stream.set_zero_linger().unwrap();
    }
    drop(stream);
    answered
}

async fn in_doubt(service: &ServiceProcess) -> i64 {
    service
        .client
        .metric("stackdemo_visits_in_doubt_total")
        .await as i64
}

/// 200 visits, 8 at a time, each closed (reset or FIN) right after its request or at a
/// generated moment soon after: some before they are counted, some while, some after
/// their answer came. Every visit the store counted whose answer had not reached its
/// client when it left must be reported in doubt.
#[tokio::test(flavor = "multi_thread")]
async fn every_counted_visit_whose_client_hung_up_is_reported_in_doubt() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let service = ServiceProcess::start(&args).await;
    let deadlines = limits::deadlines(&args);
    let seed = fastrand::u64(..);
    eprintln!("hang-ups: seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let counted_before = redis.get_i64("hits").await;
    let doubt_before = in_doubt(&service).await;

    let plans: Vec<(Leaving, Duration)> = (0..200)
        .map(|_| {
            let leaving = if rng.bool() {
                Leaving::Reset
            } else {
                Leaving::Close
            };
            let after = if rng.bool() {
                Duration::ZERO
            } else {
                Duration::from_micros(rng.u64(0..3_000))
            };
            (leaving, after)
        })
        .collect();
    let mut answered = 0;
    for batch in plans.chunks(8) {
        answered += futures_util::future::join_all(
            batch
                .iter()
                .map(|(leaving, after)| hang_up(service.port, *leaving, *after)),
        )
        .await
        .into_iter()
        .filter(|answered| *answered)
        .count() as i64;
    }
    // Every visit is decided within the visit bound of its arrival: wait until neither
    // the count nor the in-doubt metric has moved for that long.
    let last = std::sync::Mutex::new(((i64::MIN, i64::MIN), Instant::now()));
    wait_until(
        "the count and the in-doubt metric to settle",
        allowed(deadlines.visit() * 4),
        || async {
            let now = (redis.get_i64("hits").await, in_doubt(&service).await);
            let mut last = last.lock().unwrap();
            if now != last.0 {
                *last = (now, Instant::now());
            }
            last.1.elapsed() > deadlines.visit()
        },
    )
    .await;

    let counted = redis.get_i64("hits").await - counted_before;
    let reported = in_doubt(&service).await - doubt_before;
    assert!(
        counted - answered <= reported,
        "{counted} visits counted, {answered} answered before their client left, only \
         {reported} reported in doubt (seed {seed})"
    );
    // A client that read its answer and closed at once may close before the service
    // has looked whether it did: that answer is reported in doubt too, never one the
    // store did not count.
    assert!(
        reported <= counted,
        "{reported} reported in doubt, but only {counted} counted"
    );
    eprintln!(
        "hang-ups: {counted} of 200 counted, {answered} answered before the client left, \
         {reported} reported in doubt"
    );
}

/// A client that sends its request and then shuts down its sending side (a half-close,
/// which some HTTP clients and `nc -N` do) gets its answer, and the visit counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_half_closes_after_its_request_gets_its_answer() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let service = ServiceProcess::start(&args).await;
    let answer_by = allowed(limits::deadlines(&args).request);
    let first = service.client.visit().await;

    for expected in first + 1..first + 21 {
        let mut stream = TcpStream::connect(("127.0.0.1", service.port))
            .await
            .unwrap();
        stream.write_all(VISIT).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(answer_by, stream.read_to_end(&mut answer))
            .await
            .expect("the service answers and closes")
            .unwrap();
        let answer = parse_raw(&String::from_utf8_lossy(&answer)).expect("an answer");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.body,
            format!("Hello World! I have been seen {expected} times.\n")
        );
    }
    assert_eq!(redis.get_i64("hits").await, first + 20);
}
