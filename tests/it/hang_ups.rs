//! Clients that hang up mid-visit, as browsers and proxies with timeouts do all day: a
//! visit the store counted whose answer did not reach its client is reported in doubt,
//! every time, and a client that only half-closes its connection still gets its answer.

use std::time::Instant;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use nix::sys::signal::Signal;

use crate::helpers::{
    POLL, RedisServer, ServiceProcess, allowed,
    client::{RawAnswer, parse_raw},
    hang_up::{Left, hang_up},
    limits, wait_until,
};

const VISIT: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

async fn in_doubt(service: &ServiceProcess) -> i64 {
    service
        .client
        .metric("stackdemo_visits_in_doubt_total")
        .await as i64
}

/// Clients that close as soon as they have their whole answer, as one-shot clients do
/// (curl, health checkers, scripts): HTTP/1.0, `Connection: close`, and a keep-alive
/// request whose client leaves anyway. Their close often arrives before the service is
/// done with the connection; none of these visits is reported in doubt, as every answer
/// was written to a client still there.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_close_once_they_have_their_answer_are_not_reported_in_doubt() {
    const EACH: i64 = 40;
    const REQUESTS: [&[u8]; 3] = [
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let args = [];
    let service = ServiceProcess::start(&args).await;
    let deadlines = limits::deadlines(&args);
    let counted_before = service.client.visit().await;
    let doubt_before = in_doubt(&service).await;

    for request in REQUESTS {
        for _ in 0..EACH {
            let mut stream = TcpStream::connect(("127.0.0.1", service.port))
                .await
                .unwrap();
            stream.write_all(request).await.unwrap();
            let answer = read_one_answer(&mut stream).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            drop(stream);
        }
    }
    // Each connection is settled within the visit bound of its answer: wait until the
    // in-doubt metric has not moved for that long.
    let last = std::sync::Mutex::new((i64::MIN, Instant::now()));
    wait_until(
        "the in-doubt metric to settle",
        allowed(deadlines.visit() * 4),
        || async {
            let now = in_doubt(&service).await;
            let mut last = last.lock().unwrap();
            if now != last.0 {
                *last = (now, Instant::now());
            }
            last.1.elapsed() > deadlines.visit()
        },
    )
    .await;

    let counted = service.client.visit().await - 1 - counted_before;
    assert_eq!(counted, EACH * REQUESTS.len() as i64);
    assert_eq!(
        in_doubt(&service).await - doubt_before,
        0,
        "visits whose clients read their answers were reported in doubt"
    );
}

/// Reads one whole answer (its head and as many body bytes as its length says), and no
/// more, as a client that closes once it has it does.
async fn read_one_answer(stream: &mut TcpStream) -> RawAnswer {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received);
        if let Some(answer) = parse_raw(&text)
            && let Some(length) = answer.header("content-length")
            && answer.body.len() >= length.parse::<usize>().unwrap()
        {
            return answer;
        }
        let read = tokio::time::timeout(allowed(limits::deadlines(&[]).request), async {
            stream.read(&mut buffer).await
        })
        .await
        .expect("an answer in time")
        .unwrap();
        assert!(read > 0, "the answer ended early: {text:?}");
        received.extend_from_slice(&buffer[..read]);
    }
}

/// 200 visits, 8 at a time, each closed (reset or FIN) right after its request, as the
/// client of a browser tab closed or a proxy that gave up does: some are counted before
/// the service sees the client leave, some while. None was read, so every visit the store
/// counted must be reported in doubt, except those whose client was slow to leave and
/// may have had its answer written to it (`hang_up::Left::Late`).
#[tokio::test(flavor = "multi_thread")]
async fn every_counted_visit_whose_client_hung_up_is_reported_in_doubt() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let service = ServiceProcess::start(&args).await;
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", service.port).parse().unwrap();
    let deadlines = limits::deadlines(&args);
    let counted_before = redis.get_i64("hits").await;
    let doubt_before = in_doubt(&service).await;

    let mut late = 0;
    for round in 0..25 {
        let leaving = (0..8).map(|i| {
            let reset = (round + i) % 2 == 0;
            tokio::task::spawn_blocking(move || hang_up(address, reset))
        });
        for left in futures_util::future::join_all(leaving).await {
            match left.unwrap() {
                Left::Before => {}
                Left::Late => late += 1,
                Left::Unsent => panic!("the service did not take the connection"),
            }
        }
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
        counted - late <= reported,
        "{counted} visits counted, only {reported} reported in doubt ({late} clients slow \
         to leave)"
    );
    assert!(
        reported <= counted,
        "{reported} reported in doubt, but only {counted} counted"
    );
    eprintln!(
        "hang-ups: {counted} of 200 counted, {reported} reported in doubt, {late} slow to leave"
    );
}

/// Clients that leave while their visits are being counted, for certain: Redis holds
/// writes for a moment (`CLIENT PAUSE WRITE`), and every client has hung up long before
/// any answer can be written. Every visit counted when Redis goes on is reported in doubt.
#[tokio::test(flavor = "multi_thread")]
async fn visits_whose_clients_left_while_they_were_counted_are_reported_in_doubt() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    // Long enough a store timeout that writes held for the pause still arrive in time.
    let args = ["--redis-url", url.as_str(), "--store-timeout", "2s"];
    let service = ServiceProcess::start(&args).await;
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", service.port).parse().unwrap();
    let deadlines = limits::deadlines(&args);
    let counted_before = redis.get_i64("hits").await;
    let doubt_before = in_doubt(&service).await;

    redis
        .query(&["CLIENT", "PAUSE", "300", "WRITE"])
        .await
        .unwrap();
    let leaving =
        (0..16).map(|i| tokio::task::spawn_blocking(move || hang_up(address, i % 2 == 0)));
    for left in futures_util::future::join_all(leaving).await {
        assert_ne!(left.unwrap(), Left::Unsent);
    }
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
    assert!(counted > 0, "no visit was counted: the test saw nothing");
    assert_eq!(
        reported, counted,
        "{counted} visits counted after their clients left, {reported} reported in doubt"
    );
}

/// A client that sends its request and then shuts down its sending side (a half-close,
/// which some HTTP clients and `nc -N` do) gets its answer, and the visit counts. The
/// service cannot tell it from a client that left, so each such visit is reported in
/// doubt: the close is looked for on the socket itself when the answer is written, which
/// the runtime may not have seen yet.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_half_closes_after_its_request_gets_its_answer() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let service = ServiceProcess::start(&args).await;
    let answer_by = allowed(limits::deadlines(&args).request);
    let first = service.client.visit().await;
    let in_doubt_before = in_doubt(&service).await;

    for expected in first + 1..first + 21 {
        let mut stream = TcpStream::connect(("127.0.0.1", service.port))
            .await
            .unwrap();
        // The request and the close both there before the service reads either, as
        // when its workers are busy.
        service.signal(Signal::SIGSTOP);
        stream.write_all(VISIT).await.unwrap();
        stream.shutdown().await.unwrap();
        service.signal(Signal::SIGCONT);
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
    assert_eq!(in_doubt(&service).await - in_doubt_before, 20);
}

/// Visits asking for the page (8 KB of answer each): sent many at once, more than any
/// send buffer holds (4 MB at most by default).
const PAGE_VISIT: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n";
const PIPELINED_VISITS: usize = 1000;

/// A connection to `port` with a small receive buffer, on which `PIPELINED_VISITS` page
/// visits are being sent at once (by a thread, joined by the handle), none of them read.
fn pipelined_page_visits(port: u16) -> (std::net::TcpStream, std::thread::JoinHandle<()>) {
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    // Every request in the kernel at once, so that they reach the service while it
    // closes gracefully without this process having to run again first.
    socket.set_send_buffer_size(1 << 20).unwrap();
    socket.connect(&address.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    let mut sending = stream.try_clone().unwrap();
    let sent = std::thread::spawn(move || {
        use std::io::Write;
        // Refused part way when the service ends the connection: what was sent is sent.
        let _ = sending.write_all(&PAGE_VISIT.repeat(PIPELINED_VISITS));
    });
    (stream, sent)
}

/// Reads `stream` to its end (or an error, or `limit` without a byte): the numbers of the
/// whole page answers read, in order, and how the stream ended. An answer cut short at
/// the end tells its number but was not delivered.
async fn read_page_answers(
    mut stream: std::net::TcpStream,
    limit: std::time::Duration,
) -> (Vec<i64>, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        let ended = loop {
            match stream.read(&mut buffer) {
                Ok(0) => break "the end of the stream".to_owned(),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(error) => break error.to_string(),
            }
        };
        let numbers = String::from_utf8_lossy(&received)
            .split("HTTP/1.1 200 OK")
            .skip(1)
            .filter(|answer| answer.trim_end().ends_with("</html>"))
            .map(|answer| {
                let (_, rest) = answer.split_once("id=\"count\">").unwrap();
                rest.split('<').next().unwrap().parse().unwrap()
            })
            .collect();
        (numbers, ended)
    })
    .await
    .unwrap()
}

/// The stream `read_page_answers` read ended with the service's end of it, not a reset
/// that discarded answers on their way.
fn assert_ended_cleanly(ended: &str, answers: usize) {
    assert_eq!(ended, "the end of the stream", "{answers} answers read");
}

/// A client that sends many visits at once (pipelined, each asking for the page, 8 KB)
/// and reads its answers only later, with a small receive buffer: the service writes
/// what the connection takes and holds the rest, and the connection, idle past the limit,
/// is ended with answers in the kernel's send queue and requests unread. Ended
/// gracefully, every answer written out still reaches the client: the visits counted are
/// those whose answers it read and those reported in doubt (the answers the service
/// held), none lost in between to a reset.
#[tokio::test(flavor = "multi_thread")]
async fn answers_written_before_the_service_ends_a_connection_reach_a_client_that_reads_late() {
    let args = ["--header-read-timeout", "300ms", "--send-timeout", "300ms"];
    let service =
        ServiceProcess::start_with_env(&args, &[("RUST_LOG", "warn,stackdemo::server=debug")])
            .await;
    let deadlines = limits::deadlines(&args);
    let counted_before = service.client.visit().await;
    let doubt_before = in_doubt(&service).await;
    let visits = || service.client.metric("stackdemo_visits_total");

    let (stream, sent) = pipelined_page_visits(service.port);
    // The service counts the visits one after another until its answers fill the socket
    // buffers (some 300 page answers on loopback), each a store write, however long a
    // loaded disk takes for them; then it waits out the send timeout. So the wait is for
    // the service to stop counting and then end the connection.
    let ended_it = "closed a connection whose client took nothing";
    let stalled_for = allowed(deadlines.send * 4 + deadlines.visit());
    let (mut counted_so_far, mut since) = (visits().await, Instant::now());
    while !service.log().contains(ended_it) {
        let counted_now = visits().await;
        if counted_now > counted_so_far {
            (counted_so_far, since) = (counted_now, Instant::now());
        }
        assert!(
            since.elapsed() < stalled_for,
            "{stalled_for:?} after its last visit counted, the service has not ended the \
             connection whose client takes nothing\n{}",
            service.log()
        );
        tokio::time::sleep(POLL).await;
    }
    let (numbers, ended) = read_page_answers(stream, allowed(deadlines.header_read * 4)).await;
    sent.join().unwrap();
    let counted = service.client.visit().await - 1 - counted_before;
    let reported = in_doubt(&service).await - doubt_before;

    assert_ended_cleanly(&ended, numbers.len());
    assert!(
        (counted as usize) < PIPELINED_VISITS,
        "every visit was answered before the end: the test saw nothing"
    );
    assert_eq!(
        numbers.len() as i64 + reported,
        counted,
        "{counted} visits counted, {} answers read, {reported} reported in doubt",
        numbers.len()
    );
}

/// The same client at shutdown: the service stops after the answer it is writing, with
/// pipelined requests unread. The client, reading again, gets every answer written, in
/// order and none missing, then the end of the stream, not a reset; the service exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn at_shutdown_a_client_with_requests_unread_gets_every_answer_written_and_the_end() {
    let args = ["--shutdown-timeout", "5s"];
    let mut service = ServiceProcess::start(&args).await;
    let deadlines = limits::deadlines(&args);
    let counted_before = service.client.visit().await;
    let visits = || service.client.metric("stackdemo_visits_total");
    let visits_before = visits().await;

    let (stream, sent) = pipelined_page_visits(service.port);
    wait_until(
        "the service to answer visits of the connection",
        allowed(deadlines.visit()),
        || async { visits().await > visits_before },
    )
    .await;
    service.signal(Signal::SIGTERM);

    let (numbers, ended) = read_page_answers(stream, allowed(deadlines.shutdown)).await;
    sent.join().unwrap();
    let exit = service
        .wait(allowed(deadlines.exit() + limits::PROCESS_START))
        .await;

    assert_ended_cleanly(&ended, numbers.len());
    assert!(
        !numbers.is_empty() && numbers.len() < PIPELINED_VISITS,
        "{} of {PIPELINED_VISITS} answers read: the test saw nothing",
        numbers.len()
    );
    let expected: Vec<i64> = (counted_before + 1..).take(numbers.len()).collect();
    assert_eq!(numbers, expected, "answers missing or out of order");
    assert_eq!(exit.code(), Some(0));
}
