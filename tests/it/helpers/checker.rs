//! Clients under load that record every answer, and the one check of the counting promise
//! against what the store holds at the end. Some clients may hang up: they send a visit
//! and close their connection at once or a moment later, reading only what had come by
//! then, as browsers and proxies with timeouts do.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use stackdemo::verify::{Outcome, Report, Sample, failure_kind};
use tokio::task::JoinHandle;

use super::{
    TestClient,
    client::Answer,
    hang_up::{Left, hang_up},
    wait_or_explain,
};

/// `clients` clients sending visits one after another through `client` until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    tasks: Vec<JoinHandle<Visits>>,
    started: Instant,
    entries: usize,
    counters: Counters,
}

/// Each counter's total before and after a load, by index (`Counters::name`).
pub type Totals = BTreeMap<u32, (i64, i64)>;

/// What one client saw: every answer, which counter each visit was of, and when each
/// acknowledged visit was answered.
type Visits = (Vec<Sample>, Vec<u32>, Vec<Instant>);

/// The counters the clients visit: the tutorial's alone (`GET /`), or many names, picked
/// by a Zipf law as real pages are (a few hot, many cold); the first name is the
/// tutorial's and is visited through `GET /`.
#[derive(Clone)]
pub struct Counters {
    names: Arc<Vec<String>>,
    /// Cumulative weights of the names, the last 1.
    cumulative: Arc<Vec<f64>>,
}

impl Counters {
    /// The tutorial's counter alone.
    pub fn tutorial() -> Self {
        Self {
            names: Arc::new(vec!["hits".to_owned()]),
            cumulative: Arc::new(vec![1.0]),
        }
    }

    /// `hits` and `count - 1` named counters, the k-th visited in proportion to
    /// 1 / k^1.1.
    pub fn zipf(count: usize) -> Self {
        let mut names = vec!["hits".to_owned()];
        names.extend((1..count).map(|n| format!("site{}/page-{n}", n % 7)));
        let weights: Vec<f64> = (1..=count).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
        let sum: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                running += w / sum;
                running
            })
            .collect();
        Self {
            names: Arc::new(names),
            cumulative: Arc::new(cumulative),
        }
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> u32 {
        let x = rng.f64();
        self.cumulative
            .partition_point(|&c| c < x)
            .min(self.names.len() - 1) as u32
    }

    /// The path that counts a visit of counter `index`.
    fn path(&self, index: u32) -> String {
        match index {
            0 => "/".to_owned(),
            n => format!("/c/{}", self.names[n as usize]),
        }
    }

    pub fn name(&self, index: u32) -> &str {
        &self.names[index as usize]
    }
}

/// What the clients have been answered so far, while they run.
#[derive(Default)]
struct Seen {
    acknowledged: AtomicU64,
    /// Every answer that was not a 200, by what it said ("503 Service Unavailable: …").
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl Seen {
    fn record(&self, answer: &Answer) {
        if answer.acknowledged().is_some() {
            self.acknowledged.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut refusals = self.refusals.lock().unwrap();
            *refusals.entry(answer.summary()).or_default() += 1;
        }
    }

    fn refusals(&self) -> BTreeMap<String, u64> {
        self.refusals.lock().unwrap().clone()
    }
}

impl Load {
    pub fn start(client: &TestClient, clients: u64) -> Self {
        Self::start_on(std::slice::from_ref(client), clients)
    }

    /// Clients spread over several entry points (replicas).
    pub fn start_on(entries: &[TestClient], clients: u64) -> Self {
        Self::start_with_hang_ups(entries, clients, 0)
    }

    /// `start_on`, and `hang_ups` more clients that hang up (`hang_up`). Client `id`
    /// sends to entry `id % entries.len()`.
    pub fn start_with_hang_ups(entries: &[TestClient], clients: u64, hang_ups: u64) -> Self {
        Self::start_on_counters(entries, clients, hang_ups, Counters::tutorial())
    }

    /// `start_with_hang_ups`, each visit of a counter picked from `counters` (the
    /// hang-ups visit the tutorial's).
    pub fn start_on_counters(
        entries: &[TestClient],
        clients: u64,
        hang_ups: u64,
        counters: Counters,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let started = Instant::now();
        let mut tasks: Vec<_> = (clients..clients + hang_ups)
            .map(|id| {
                let address = entries[id as usize % entries.len()]
                    .base
                    .trim_start_matches("http://")
                    .parse()
                    .expect("an address");
                tokio::spawn(hang_up_client(
                    id,
                    address,
                    started,
                    stop.clone(),
                    seen.clone(),
                ))
            })
            .collect();
        let steady = (0..clients).map(|id| {
            let client = entries[id as usize % entries.len()].clone();
            let stop = stop.clone();
            let seen = seen.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                let (mut samples, mut visited, mut acknowledged_at) =
                    (Vec::new(), Vec::new(), Vec::new());
                let mut rng = fastrand::Rng::with_seed(id);
                while !stop.load(Ordering::Relaxed) {
                    let counter = counters.pick(&mut rng);
                    let sent = Instant::now();
                    let answer = client.try_visit_at(&counters.path(counter)).await;
                    visited.push(counter);
                    if answer.acknowledged().is_some() {
                        acknowledged_at.push(Instant::now());
                    }
                    seen.record(&answer);
                    let mut sample = sample(id, sent.elapsed(), &answer);
                    sample.finished = started.elapsed();
                    samples.push(sample);
                    if answer.status.is_none() {
                        // Nothing listening (a killed process): do not spin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                (samples, visited, acknowledged_at)
            })
        });
        tasks.extend(steady);
        Self {
            stop,
            seen,
            tasks,
            started,
            entries: entries.len(),
            counters,
        }
    }

    /// Time since the load started, for marking when something happened.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Visits acknowledged (answered 200 with a number) so far.
    pub fn acknowledged(&self) -> u64 {
        self.seen.acknowledged.load(Ordering::Relaxed)
    }

    /// What every answer that was not a 200 said so far, with how many got it.
    pub fn refusals(&self) -> String {
        describe(&self.seen.refusals())
    }

    /// Waits until the clients have had `more` visits acknowledged from now, at most
    /// `limit`; panics with what the refused clients were told and `state`, what the
    /// test knows of the servers, if that does not happen.
    pub async fn wait_for_acknowledged<S, F>(&self, more: u64, limit: Duration, state: S)
    where
        S: FnOnce() -> F,
        F: std::future::Future<Output = String>,
    {
        let target = self.acknowledged() + more;
        wait_or_explain(
            &format!("{more} more visits acknowledged"),
            limit,
            || async { self.acknowledged() >= target },
            || async {
                format!(
                    "{} acknowledged; refused clients were told:\n{}\n{}",
                    self.acknowledged(),
                    self.refusals(),
                    state().await
                )
            },
        )
        .await;
    }

    /// Stops the clients and returns every answer they got.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let (mut samples, mut visited, mut acknowledged_at) = (Vec::new(), Vec::new(), Vec::new());
        for task in self.tasks {
            let (client_samples, client_counters, client_times) =
                task.await.expect("a client task");
            samples.extend(client_samples);
            visited.extend(client_counters);
            acknowledged_at.extend(client_times);
        }
        acknowledged_at.sort_unstable();
        History {
            samples,
            visited,
            acknowledged_at,
            refusals: self.seen.refusals(),
            entries: self.entries,
            counters: self.counters,
        }
    }
}

/// A client that hangs up (`hang_up`), again and again until stopped, with a pause of a
/// few milliseconds between, so that hang-ups are a share of the load and not all of it.
/// Each sample's `finished` is when its request was sent, from the start of the load.
async fn hang_up_client(
    id: u64,
    address: SocketAddr,
    started: Instant,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> Visits {
    let mut rng = fastrand::Rng::with_seed(id);
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = started.elapsed();
        let reset = rng.bool();
        let left = tokio::task::spawn_blocking(move || hang_up(address, reset))
            .await
            .expect("a hang-up");
        let kind = match left {
            Left::Before => "hung up",
            Left::Late => "hung up late",
            Left::Unsent => "no answer",
        };
        *seen
            .refusals
            .lock()
            .unwrap()
            .entry(kind.into())
            .or_default() += 1;
        samples.push(Sample {
            client: id,
            latency: Duration::ZERO,
            finished: sent,
            outcome: Outcome::Failed(kind.into()),
        });
        tokio::time::sleep(Duration::from_millis(rng.u64(5..20))).await;
    }
    let visited = vec![0; samples.len()];
    (samples, visited, Vec::new())
}

/// One line per kind of refusal: how many, and what they said.
fn describe(refusals: &BTreeMap<String, u64>) -> String {
    if refusals.is_empty() {
        return "  (none)".to_owned();
    }
    refusals
        .iter()
        .map(|(said, n)| format!("  {n} × {said}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sample(client: u64, latency: Duration, answer: &Answer) -> Sample {
    let outcome = match (answer.status, answer.acknowledged()) {
        (Some(StatusCode::OK), Some(count)) => Outcome::Counted {
            count,
            replica: answer.served_by.clone(),
            version: None,
        },
        (Some(status), _) => Outcome::Failed(failure_kind(status, &answer.body)),
        (None, _) => Outcome::Failed("no answer".into()),
    };
    Sample {
        client,
        latency,
        finished: Duration::ZERO,
        outcome,
    }
}

/// Every answer the clients got.
pub struct History {
    pub samples: Vec<Sample>,
    /// Which counter each sample's visit was of (an index into `counters`).
    visited: Vec<u32>,
    counters: Counters,
    /// When each acknowledged visit was answered, in order.
    acknowledged_at: Vec<Instant>,
    refusals: BTreeMap<String, u64>,
    /// How many entry points (services) the clients were spread over.
    entries: usize,
}

/// A service killed during a load: which entry point it was, and the time from which
/// what it would have reported in doubt was lost with it (its last reading of the
/// metric, less the longest a visit takes) to the kill, in time since the load started.
#[derive(Debug, Clone, Copy)]
pub struct Kill {
    pub entry: usize,
    pub from: Duration,
    pub to: Duration,
}

impl History {
    /// The first numbers answered more than once, each with when (since the load began),
    /// to which client and by which replica.
    fn duplicates(&self) -> String {
        let mut by_number: BTreeMap<(u32, i64), Vec<&Sample>> = BTreeMap::new();
        for (sample, counter) in self.samples.iter().zip(&self.visited) {
            if let Outcome::Counted { count, .. } = &sample.outcome {
                by_number
                    .entry((*counter, *count))
                    .or_default()
                    .push(sample);
            }
        }
        let twice: Vec<_> = by_number.iter().filter(|(_, s)| s.len() > 1).collect();
        let mut text = format!(
            "{} numbers, from {:?} to {:?}\n",
            twice.len(),
            twice.first().map(|(n, _)| **n),
            twice.last().map(|(n, _)| **n)
        );
        for (number, samples) in twice.iter().take(5) {
            let seen: Vec<String> = samples
                .iter()
                .map(|s| {
                    let replica = match &s.outcome {
                        Outcome::Counted { replica, .. } => replica.clone().unwrap_or_default(),
                        Outcome::Failed(_) => String::new(),
                    };
                    format!(
                        "at {:.3}s client {} via {replica}",
                        s.finished.as_secs_f64(),
                        s.client
                    )
                })
                .collect();
            let (counter, number) = number;
            let name = self.counters.name(*counter);
            text.push_str(&format!("  {name} {number}: {}\n", seen.join("; ")));
        }
        text
    }

    /// The longest time no client got a 200, between the first and the last that did.
    pub fn longest_outage(&self) -> Duration {
        self.acknowledged_at
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    pub fn report(&self) -> Report {
        Report::from_samples(self.samples.clone(), Duration::from_secs(1))
    }

    /// What every answer that was not a 200 said, with how many got it.
    pub fn refusals(&self) -> String {
        describe(&self.refusals)
    }

    /// Asserts the counting promise for a store whose total went from `start` to `end`
    /// over this history, with `in_doubt` visits reported in doubt by the services:
    ///
    /// - no number answered twice, and each client's numbers increase;
    /// - every acknowledged number is in `start+1 ..= end` (nothing acknowledged lost);
    /// - `0 ≤ (end − start) − acknowledged ≤ in_doubt ≤ not acknowledged`: what the store
    ///   counted beyond the acknowledged visits is reported in doubt, and no more visits
    ///   are reported in doubt than got no 200 (or hung up after they got one);
    /// - what the clients were told agrees: each visit counted without a 200 was answered
    ///   503 saying it may have been counted, or its client read no answer; and no more
    ///   were told so than the services reported in doubt.
    ///
    /// Only 200 and 503 answers, hang-ups, and none (from a killed process) are allowed.
    /// A visit whose client hung up before it could be answered, if the store counted it,
    /// must have been reported in doubt; one whose client was slow to hang up may have
    /// been answered (`hang_up::Left::Late`), and is excused.
    pub fn assert_counting_held(&self, start: i64, end: i64, in_doubt: u64) -> Report {
        self.assert_held(&Totals::from([(0, (start, end))]), in_doubt, 0, false)
    }

    /// `assert_counting_held` for each counter the clients visited, whose totals went
    /// from `totals[i].0` to `totals[i].1`: the promise per counter, what was counted
    /// without a 200 summed over all of them.
    pub fn assert_counters_held(&self, totals: &Totals, in_doubt: u64) -> Report {
        self.assert_held(totals, in_doubt, 0, false)
    }

    /// The counters visited, by index (`Counters::name`).
    pub fn visited(&self) -> BTreeSet<u32> {
        self.visited.iter().copied().collect()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Hang-ups sent to `kill.entry` while what its service reported was being lost.
    fn hang_ups_lost_with(&self, kill: &Kill) -> u64 {
        self.samples
            .iter()
            .filter(|sample| {
                sample.client as usize % self.entries == kill.entry
                    && (kill.from..=kill.to).contains(&sample.finished)
                    && matches!(&sample.outcome, Outcome::Failed(kind) if kind == "hung up")
            })
            .count() as u64
    }

    /// `assert_counters_held` across kills of the service itself: a visit in flight when
    /// its service was killed got no answer and may have been counted, and the killed
    /// process can no longer report it; nor what it reported after its last reading
    /// (`kills`). `in_doubt` should include what each killed service reported in its last
    /// reading.
    pub fn assert_counters_held_across_kills(
        &self,
        totals: &Totals,
        in_doubt: u64,
        kills: &[Kill],
    ) -> Report {
        let unanswered = self
            .report()
            .failures
            .get("no answer")
            .copied()
            .unwrap_or(0);
        let lost: u64 = kills.iter().map(|kill| self.hang_ups_lost_with(kill)).sum();
        self.assert_held(totals, in_doubt, unanswered + lost, !kills.is_empty())
    }

    fn assert_held(&self, totals: &Totals, in_doubt: u64, unanswered: u64, killed: bool) -> Report {
        let report = self.report();
        let unexpected: Vec<_> = report
            .failures
            .keys()
            .filter(|kind| {
                !matches!(
                    kind.as_str(),
                    "http 503" | "http 503 in doubt" | "no answer" | "hung up" | "hung up late"
                )
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected answers:\n{}",
            self.refusals()
        );
        let mut by_counter: BTreeMap<u32, Vec<Sample>> = BTreeMap::new();
        for (sample, counter) in self.samples.iter().zip(&self.visited) {
            by_counter.entry(*counter).or_default().push(sample.clone());
        }
        let mut counted = 0;
        for (counter, samples) in by_counter {
            let name = self.counters.name(counter);
            let one = Report::from_samples(samples, Duration::from_secs(1));
            let (start, end) = *totals.get(&counter).unwrap_or_else(|| {
                panic!("the test read no total of {name}, which the clients visited")
            });
            assert_eq!(
                one.duplicate_counts,
                0,
                "{name}: a number was answered twice; the first such:\n{}",
                self.duplicates()
            );
            assert_eq!(one.out_of_order, 0, "{name}: a client's numbers went down");
            if let (Some(low), Some(high)) = (one.lowest_count, one.highest_count) {
                assert!(
                    low > start,
                    "{name}: number {low} acknowledged, but the store began at {start}"
                );
                assert!(
                    high <= end,
                    "{name}: number {high} acknowledged, but the store holds {end}: lost"
                );
            }
            assert!(
                end - start >= one.succeeded as i64,
                "{name}: the store holds {} visits, {} were acknowledged",
                end - start,
                one.succeeded
            );
            counted += end - start;
        }
        let acknowledged = report.succeeded as i64;
        let late = report.failures.get("hung up late").copied().unwrap_or(0);
        let unanswered = unanswered + late;
        let extra = counted - acknowledged;
        assert!(
            extra >= 0,
            "the store holds {counted} visits, {acknowledged} were acknowledged"
        );
        assert!(
            extra as u64 <= in_doubt + unanswered,
            "{extra} visits counted without a 200, but only {in_doubt} reported in doubt \
             and {unanswered} cut off by a kill or hung up late ({} answered otherwise:\n{})",
            report.failed,
            self.refusals()
        );
        assert!(
            in_doubt <= report.failed,
            "{in_doubt} reported in doubt, but only {} visits got no 200",
            report.failed
        );
        // What the clients themselves were told: a visit counted without a 200 was
        // answered that it may have been counted, or its client read no answer.
        let kind = |kind: &str| report.failures.get(kind).copied().unwrap_or(0);
        let told = kind("http 503 in doubt");
        let not_read = kind("hung up") + late + kind("no answer");
        assert!(
            extra as u64 <= told + not_read,
            "{extra} visits counted without a 200, but only {told} clients were told theirs \
             may have been counted and {not_read} read no answer:\n{}",
            self.refusals()
        );
        if !killed {
            assert!(
                told <= in_doubt,
                "{told} clients were told their visit may have been counted, but only \
                 {in_doubt} visits were reported in doubt"
            );
        }
        report
    }
}
