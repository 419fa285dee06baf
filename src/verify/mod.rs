//! `stackdemo verify`: the tutorial's checks as a tool. It sends visits to a deployment and
//! reports failures, latency, which replicas and versions answered, and whether the
//! counter kept its promises: no number handed out twice, and every client seeing its
//! numbers increase.

mod report;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

pub use self::report::{Outcome, Report, Sample};
use crate::config::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// URL to visit, e.g. http://localhost:8000/ (or a named counter's /c/{name}, or its
    /// badge, /badge/{name}.svg)
    #[arg(long, value_parser = http_url)]
    pub url: reqwest::Url,

    /// Visits to send in all (default 1000 unless --duration is given).
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Send visits for this long instead (e.g. 30s). Ctrl-C or SIGTERM stops a run early
    /// and still prints the report.
    #[arg(long, value_parser = longer_than_zero)]
    pub duration: Option<Duration>,

    /// Clients sending at the same time, each on its own connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,

    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = longer_than_zero)]
    pub timeout: Duration,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// An `http` URL with a host: what `verify` can visit. It speaks plain HTTP, as the
/// service does (TLS ends in front of it, if anywhere).
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url: reqwest::Url = text
        .parse()
        .map_err(|_| "is not a URL (example: http://localhost:8000/)".to_owned())?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err("is an https URL: verify speaks plain HTTP (http://)".to_owned());
        }
        _ => return Err("is not an http URL".to_owned()),
    }
    if url.host().is_none() {
        return Err("names no host".to_owned());
    }
    // Each answer must carry its visit's number, whole: a badge may show another number
    // (today's, the visitors'), or an abbreviated one, and `count=0` counts nothing.
    for (key, value) in url.query_pairs() {
        if key == "count" && crate::counters::count_flag(&value).is_none() {
            return Err(format!(
                "asks for count={value}, which the service refuses (count=1 or count=0)"
            ));
        }
        let shows_the_number = match &*key {
            "abbreviated" => value == "false",
            "show" => value == "total",
            "count" => crate::counters::count_flag(&value) == Some(true),
            _ => true,
        };
        if !shows_the_number {
            return Err(format!(
                "asks for {key}={value}: verify reads each visit's own number, whole, \
                 from its answer"
            ));
        }
    }
    Ok(url)
}

/// A duration that leaves time for a visit.
pub fn longer_than_zero(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than 0 (examples: 5s, 500ms)".to_owned()),
        duration => Ok(duration),
    }
}

enum Limit {
    Requests(u64),
    Until(Instant),
}

/// Runs the visits and gathers the report.
pub async fn run(args: &VerifyArgs) -> Report {
    let limit = match (args.requests, args.duration) {
        (_, Some(duration)) => Limit::Until(Instant::now() + duration),
        (Some(n), None) => Limit::Requests(n),
        (None, None) => Limit::Requests(1000),
    };
    let progress = match &limit {
        Limit::Requests(n) => ProgressBar::new(*n),
        Limit::Until(_) => ProgressBar::new_spinner(),
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} visits {wide_bar} {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if args.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let limit = Arc::new(limit);
    let issued = Arc::new(AtomicU64::new(0));
    // Ctrl-C or SIGTERM ends the run early; the report covers what was sent.
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = match crate::shutdown::Signals::install() {
        Ok(signals) => {
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                signals.recv().await;
                stop.store(true, Ordering::Relaxed);
            }))
        }
        Err(error) => {
            eprintln!("warning: Ctrl-C will not stop the run early: {error}");
            None
        }
    };
    let started = Instant::now();
    let mut clients = Vec::new();
    for client_id in 0..args.concurrency {
        let limit = limit.clone();
        let issued = issued.clone();
        let stop = stop.clone();
        let progress = progress.clone();
        let url = args.url.clone();
        let timeout = args.timeout;
        clients.push(tokio::spawn(async move {
            // One connection per client, as separate users would have.
            // A redirect is an answer of its own, not a visit: followed, it could visit
            // another service and pass.
            let http = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(1)
                .no_proxy()
                .build()
                .expect("a client without TLS or proxies always builds");
            let mut samples = Vec::new();
            loop {
                let more = !stop.load(Ordering::Relaxed)
                    && match &*limit {
                        Limit::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < *n,
                        Limit::Until(end) => Instant::now() < *end,
                    };
                if !more {
                    break;
                }
                samples.push(visit(&http, &url, client_id, started).await);
                progress.inc(1);
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    let mut clients_failed = 0;
    for client in clients {
        match client.await {
            Ok(client_samples) => samples.extend(client_samples),
            // A client that panicked took its samples with it: the run cannot pass.
            Err(_) => clients_failed += 1,
        }
    }
    if let Some(stopper) = stopper {
        stopper.abort();
    }
    progress.finish_and_clear();
    let mut report = Report::from_samples(samples, started.elapsed());
    report.clients_failed = clients_failed;
    report
}

async fn visit(http: &reqwest::Client, url: &reqwest::Url, client: u64, run: Instant) -> Sample {
    let started = Instant::now();
    let outcome = match http
        .get(url.clone())
        .header("accept", "text/plain")
        .send()
        .await
    {
        Err(error) if error.is_timeout() => Outcome::Failed("timeout".into()),
        Err(error) if error.is_connect() => Outcome::Failed("connect".into()),
        Err(_) => Outcome::Failed("connection".into()),
        Ok(response) => {
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let replica = header("x-served-by");
            let version = header("x-app-version");
            match read_bounded(response, MAX_ANSWER).await {
                Err(error) => Outcome::Failed(error.reason().into()),
                Ok(body) if !status.is_success() => Outcome::Failed(failure_kind(status, &body)),
                Ok(body) => match parse_count(&body) {
                    Some(count) => Outcome::Counted {
                        count,
                        replica,
                        version,
                    },
                    None => Outcome::Failed("unexpected body".into()),
                },
            }
        }
    };
    Sample {
        client,
        latency: started.elapsed(),
        finished: run.elapsed(),
        outcome,
    }
}

/// A failure's kind: its status, and for a 503 that says the visit may have been counted
/// (its write's answer was lost), `in doubt`.
pub fn failure_kind(status: reqwest::StatusCode, body: &str) -> String {
    let in_doubt = status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        && body.contains(crate::routes::VISIT_IN_DOUBT);
    if in_doubt {
        format!("http {} in doubt", status.as_u16())
    } else {
        format!("http {}", status.as_u16())
    }
}

/// The largest answer read: a visit's is under a kilobyte, the page a few. A server that
/// sends more (or without end) gets a failure, not all of the client's memory.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Why an answer's body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// Cut off, or not valid text.
    Broken,
}

impl BodyError {
    /// What a report says of it.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge => "answer too large",
            BodyError::Broken => "body",
        }
    }
}

/// Reads an answer's body as text, at most `limit` bytes of it.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<String, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| BodyError::Broken)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| BodyError::Broken)
}

/// Reads N from `Hello World! I have been seen N times.` (`/`, `/c/{name}`), or from a
/// badge's title, `label: N` (`/badge/{name}.svg`, not abbreviated).
pub fn parse_count(body: &str) -> Option<i64> {
    if body.starts_with("<svg") {
        let title = body.split_once("<title>")?.1.split_once("</title>")?.0;
        return title.rsplit_once(": ")?.1.parse().ok();
    }
    body.trim_end()
        .strip_prefix("Hello World! I have been seen ")?
        .strip_suffix(" times.")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::{http_url, parse_count};

    #[test]
    fn urls_whose_answers_do_not_carry_the_visits_number_are_refused() {
        for url in [
            "http://h/badge/a.svg?abbreviated=true",
            "http://h/badge/a.svg?show=unique",
            "http://h/badge/a.svg?show=today",
            "http://h/c/a?count=0",
            "http://h/c/a?x=1&count=%30",
            "http://h/c/a?count=off",
        ] {
            let refused = http_url(url).unwrap_err();
            assert!(refused.contains("own number"), "{url}: {refused}");
        }
        let refused = http_url("http://h/c/a?count=maybe").unwrap_err();
        assert!(refused.contains("service refuses"), "{refused}");
        for url in [
            "http://h/badge/a.svg?abbreviated=false&show=total&label=x",
            "http://h/c/a?count=1",
            "http://h/",
        ] {
            assert!(http_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn counts_are_read_from_the_tutorial_text() {
        assert_eq!(
            parse_count("Hello World! I have been seen 42 times.\n"),
            Some(42)
        );
        assert_eq!(
            parse_count("Hello World! I have been seen x times.\n"),
            None
        );
        assert_eq!(parse_count("<html>"), None);
        let badge = crate::badge::Badge::from_query(Default::default()).unwrap();
        assert_eq!(parse_count(&badge.render("1234")), Some(1234));
        assert_eq!(parse_count(&badge.render("1.2k")), None);
        assert_eq!(
            parse_count("Hello World! I have been seen -2 times.\n"),
            Some(-2),
            "a total reset below zero counts up through it, as INCR does"
        );
    }
}
