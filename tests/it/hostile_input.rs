//! Generated hostile input against a running service: random raw requests (methods,
//! targets, versions, headers, bodies, line endings), pipelined, cut short, sent in
//! fragments or not at all. Whatever comes, the service answers with a status from a
//! fixed set, never panics, stays within its memory, and only a well-formed `GET /` (any
//! query string) moves the count: every counted visit is answered with its own number.
//!
//! The seed is printed first; `HOSTILE_SEED=<seed>` replays a run.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use fastrand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use stackdemo::deadlines::Deadlines;

use crate::helpers::{RedisServer, ServiceProcess, allowed, limits};

/// Statuses the service may answer with: its own, and hyper's for requests it cannot
/// parse (made whole by the service). 100 is the interim answer to `Expect: 100-continue`.
const ALLOWED: [u16; 12] = [100, 200, 400, 404, 405, 408, 413, 414, 431, 501, 503, 505];

const CONNECTIONS: usize = 240;
const AT_ONCE: usize = 24;

/// One generated connection: what is sent, how, and how many clean visits lead it.
struct Script {
    bytes: Vec<u8>,
    /// Well-formed `GET /` requests at the start, before anything else: each must be
    /// answered 200 with a number.
    clean_visits: usize,
    /// Split the bytes into fragments sent with pauses between them.
    fragments: usize,
}

/// The most fragments a script is sent in, and the pause between two.
const MAX_FRAGMENTS: u32 = 5;
const FRAGMENT_PAUSE: Duration = Duration::from_millis(150);

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.u8(..)).collect()
}

fn clean_visit(rng: &mut Rng) -> Vec<u8> {
    let target = pick(rng, &["/", "/?q=1", "/?a=b&c=%20d", "/?"]);
    let accept = pick(rng, &["", "Accept: */*\r\n", "Accept: text/plain\r\n"]);
    format!("GET {target} HTTP/1.1\r\nHost: x\r\n{accept}\r\n").into_bytes()
}

fn hostile_request(rng: &mut Rng) -> Vec<u8> {
    let method = match rng.u8(0..14) {
        0 => "GET",
        1 => "HEAD",
        2 => "POST",
        3 => "PUT",
        4 => "DELETE",
        5 => "OPTIONS",
        6 => "PATCH",
        7 => "TRACE",
        8 => "CONNECT",
        9 => "get",
        10 => "",
        11 => "G\u{e9}T",
        12 => "X-CUSTOM-METHOD",
        _ => "BREW",
    }
    .to_owned();
    let long = format!("/{}", "a".repeat(rng.usize(100..20_000)));
    let target = match rng.u8(0..14) {
        0 => "/".to_owned(),
        1 => "/?q=<script>".to_owned(),
        2 => "/healthz".to_owned(),
        3 => "/readyz".to_owned(),
        4 => "/metrics".to_owned(),
        5 => "/api/stats".to_owned(),
        6 => "//".to_owned(),
        7 => "/%00%ff".to_owned(),
        8 => "*".to_owned(),
        9 => "http://evil.example/".to_owned(),
        10 => long,
        11 => "/../../etc/passwd".to_owned(),
        12 => String::from_utf8_lossy(&random_bytes(rng, 12)).into_owned(),
        _ => "/nope".to_owned(),
    };
    let version = pick(
        rng,
        &[
            "HTTP/1.1",
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/2.0",
            "HTTP/9.9",
            "HTTP/1.1x",
            "",
        ],
    );
    let eol = if rng.u8(0..8) == 0 { "\n" } else { "\r\n" };
    let mut head = format!("{method} {target} {version}{eol}");
    let body_len = match rng.u8(0..6) {
        0 => Some(rng.usize(0..64)),
        1 => Some(rng.usize(16_000..40_000)),
        _ => None,
    };
    let chunked = rng.u8(0..6) == 0;
    for _ in 0..rng.usize(0..8) {
        let header = match rng.u8(0..14) {
            0 => "Host: x".to_owned(),
            1 => format!(
                "Content-Length: {}",
                pick(rng, &["-1", "abc", "99999999999999999999", "5, 6"])
            ),
            2 => "Transfer-Encoding: gzip".to_owned(),
            3 => "Transfer-Encoding: chunked, identity".to_owned(),
            4 => "Connection: upgrade\r\nUpgrade: websocket".to_owned(),
            5 => "Expect: 100-continue".to_owned(),
            6 => "Accept: text/html".to_owned(),
            7 => format!("X-Long: {}", "l".repeat(rng.usize(1..20_000))),
            8 => format!("X-Bin: {}", String::from_utf8_lossy(&random_bytes(rng, 16))),
            9 => "Content-Length: 3\r\nContent-Length: 4".to_owned(),
            10 => "no colon here".to_owned(),
            11 => " leading-space: x".to_owned(),
            12 => "Connection: close".to_owned(),
            _ => format!("X-{}: {}", rng.u32(..), rng.u64(..)),
        };
        head.push_str(&header);
        head.push_str(eol);
    }
    let mut bytes = head.into_bytes();
    match (body_len, chunked) {
        (_, true) => {
            bytes.extend_from_slice(format!("Transfer-Encoding: chunked{eol}{eol}").as_bytes());
            match rng.u8(0..3) {
                0 => bytes.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n"),
                1 => bytes.extend_from_slice(b"zz\r\nhello\r\n"),
                _ => bytes.extend_from_slice(format!("{:x}\r\n", 20_000).as_bytes()),
            }
        }
        (Some(len), false) => {
            bytes.extend_from_slice(format!("Content-Length: {len}{eol}{eol}").as_bytes());
            // Sometimes less than announced: the rest never comes.
            let sent = if rng.bool() { len } else { len / 2 };
            bytes.extend(random_bytes(rng, sent));
        }
        (None, false) => bytes.extend_from_slice(eol.as_bytes()),
    }
    bytes
}

fn script(rng: &mut Rng) -> Script {
    let mut bytes = Vec::new();
    let clean_visits = if rng.u8(0..3) == 0 {
        rng.usize(1..4)
    } else {
        0
    };
    for _ in 0..clean_visits {
        bytes.extend(clean_visit(rng));
    }
    let clean_end = bytes.len();
    match rng.u8(0..10) {
        // Silence: nothing more at all.
        0 => {}
        // Garbage bytes.
        1 => {
            let len = rng.usize(1..3000);
            bytes.extend(random_bytes(rng, len));
        }
        // The start of the HTTP/2 preface, and nothing after it.
        2 => bytes.extend_from_slice(b"PRI * HTTP/2.0\r\n"),
        _ => {
            for _ in 0..rng.usize(1..4) {
                bytes.extend(hostile_request(rng));
            }
            // Cut short somewhere after the clean visits.
            if rng.u8(0..4) == 0 {
                let cut = rng.usize(clean_end..=bytes.len());
                bytes.truncate(cut);
            }
        }
    }
    Script {
        bytes,
        clean_visits,
        fragments: if rng.u8(0..5) == 0 {
            rng.usize(2..=MAX_FRAGMENTS as usize)
        } else {
            1
        },
    }
}

/// What stands before the number in the page.
const PAGE_COUNT: &str = r#"<strong class="count" id="count">"#;

/// What came back on one connection.
struct Exchange {
    statuses: Vec<u16>,
    numbers: Vec<i64>,
}

/// How long one connection may stay open: its fragments sent, then at most the idle
/// limit (a request that never ends) and the request timeout (one being answered).
fn longest_connection(deadlines: &Deadlines) -> Duration {
    allowed(FRAGMENT_PAUSE * MAX_FRAGMENTS + deadlines.header_read + deadlines.request)
}

async fn play(address: SocketAddr, script: Script, deadlines: Deadlines) -> Exchange {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("a connection");
    let (mut reader, mut writer) = stream.split();
    let send = async {
        let size = script.bytes.len().div_ceil(script.fragments).max(1);
        for fragment in script.bytes.chunks(size) {
            if writer.write_all(fragment).await.is_err() {
                return;
            }
            if script.fragments > 1 {
                tokio::time::sleep(FRAGMENT_PAUSE).await;
            }
        }
    };
    let mut received = Vec::new();
    let receive = async {
        let mut buffer = [0u8; 8192];
        while let Ok(n @ 1..) = reader.read(&mut buffer).await {
            received.extend_from_slice(&buffer[..n]);
        }
    };
    let ended = tokio::time::timeout(longest_connection(&deadlines), async {
        tokio::join!(send, receive);
    })
    .await;
    assert!(ended.is_ok(), "a connection stayed open past every limit");
    let text = String::from_utf8_lossy(&received);
    let statuses = text
        .split("HTTP/1.")
        .skip(1)
        .filter_map(|rest| rest.get(2..5)?.parse().ok())
        .collect();
    // The number as text, or in the page a browser gets (`Accept: text/html`).
    let numbers = text
        .split("Hello World! I have been seen ")
        .skip(1)
        .map(|rest| {
            let rest = rest.strip_prefix(PAGE_COUNT).unwrap_or(rest);
            let end = rest.find(|c: char| !c.is_ascii_digit() && c != '-');
            rest[..end.unwrap_or(rest.len())]
                .parse()
                .unwrap_or_else(|_| {
                    panic!(
                        "a number that does not parse: {:?}",
                        &rest[..rest.len().min(40)]
                    )
                })
        })
        .collect();
    Exchange { statuses, numbers }
}

async fn total_now(service: &ServiceProcess) -> i64 {
    // A visit tells the total exactly: one more than before it.
    service.client.visit().await
}

async fn hostile_input_moves_the_count_only_for_well_formed_visits(args: &[&str]) {
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("hostile input: seed {seed} (replay with HOSTILE_SEED={seed})");
    let service = ServiceProcess::start(args).await;
    let deadlines = limits::deadlines(args);
    let mut rng = Rng::with_seed(seed);
    let address: SocketAddr = format!("127.0.0.1:{}", service.port).parse().unwrap();
    let before = total_now(&service).await;
    let started = Instant::now();

    let scripts: Vec<Script> = (0..CONNECTIONS).map(|_| script(&mut rng)).collect();
    let expected_clean: usize = scripts.iter().map(|s| s.clean_visits).sum();
    let mut exchanges = Vec::new();
    let mut scripts = scripts.into_iter();
    loop {
        let batch: Vec<Script> = scripts.by_ref().take(AT_ONCE).collect();
        if batch.is_empty() {
            break;
        }
        let runs = batch.into_iter().map(|script| {
            let clean = script.clean_visits;
            async move { (clean, play(address, script, deadlines).await) }
        });
        exchanges.extend(futures_util::future::join_all(runs).await);
    }
    let after = total_now(&service).await;

    let mut numbers = BTreeSet::new();
    for (clean, exchange) in &exchanges {
        for status in &exchange.statuses {
            assert!(ALLOWED.contains(status), "status {status} (seed {seed})");
        }
        assert!(
            exchange.numbers.len() >= *clean,
            "a well-formed visit went unanswered (seed {seed}): {:?}",
            exchange.statuses
        );
        for number in &exchange.numbers {
            assert!(
                numbers.insert(*number),
                "number {number} answered twice (seed {seed})"
            );
        }
    }
    assert!(numbers.len() >= expected_clean);
    assert_eq!(
        (after - 1 - before) as usize,
        numbers.len(),
        "counted visits and answered numbers differ (seed {seed})"
    );
    let rss_mb = service.rss_kib() / 1024;
    assert!(
        rss_mb < 64,
        "{rss_mb} MB resident after the run (seed {seed})"
    );
    assert!(
        service.logged_no_panic(),
        "the service panicked (seed {seed})"
    );
    eprintln!(
        "hostile input: {CONNECTIONS} connections, {} visits counted, in {:?} (seed {seed})",
        numbers.len(),
        started.elapsed()
    );
}

/// A short header read timeout, so that the connections that never finish end soon; a
/// store timeout well above a write's time on a loaded machine, so that every clean visit
/// is counted (a write past it is refused, rightly, and the test is not about that).
const LIMITS: [&str; 6] = [
    "--header-read-timeout",
    "1s",
    "--request-timeout",
    "4s",
    "--store-timeout",
    "1500ms",
];

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--data-dir", dir.path().to_str().unwrap()];
    args.extend(LIMITS);
    hostile_input_moves_the_count_only_for_well_formed_visits(&args).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_on_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend(LIMITS);
    hostile_input_moves_the_count_only_for_well_formed_visits(&args).await;
}
