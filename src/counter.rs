//! The visit counter: coalesces concurrent visits, to any mix of counters, into one store
//! write.
//!
//! A single task takes visits off the queue. While store writes are under way (at most
//! `max_in_flight` of them), new visits queue up; when a slot frees, the next batch takes
//! everything queued, groups it by counter (a `Tally` each) and sends one `add_visits`.
//! For each counter the store returns the new total `n`, and that counter's k visits of
//! the batch get `n-k+1 ..= n` in arrival order. So every acknowledged visit carries a
//! number no other visit of its counter carries, the numbers are contiguous, nothing is
//! acknowledged before the store confirmed it, and a visit answered with an error was
//! never part of a confirmed batch. A client's next visit is sent only after its previous
//! answer, so it lands in a later write and gets a larger number.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use metrics::{counter, gauge, histogram};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    counters::{CounterName, Tally, TallyResult},
    deadlines::Deadlines,
    delivery::Counted,
    store::{StoreError, StoreErrorKind},
    telemetry::Throttle,
};

/// Where the batcher records visits: the store, or a stand-in in tests.
pub trait VisitLog: Send + Sync + 'static {
    /// Adds every tally's visits in one atomic step and returns, for each tally in order,
    /// what became of it (the total after it, if counted). Should answer by `answer_by`;
    /// an error that is not `in_doubt` means nothing was applied, nor will be.
    fn add_visits(
        &self,
        tallies: &[Tally],
        answer_by: Instant,
    ) -> impl Future<Output = Result<Vec<TallyResult>, StoreError>> + Send;
}

/// Why a visit was not counted.
#[derive(Debug, Clone)]
pub enum VisitError {
    /// The store failed or did not answer; nothing was acknowledged.
    Store(StoreError),
    /// Too many visits are already waiting; this one was turned away.
    Overloaded,
    /// The visit waited longer than the queue wait before its batch could start.
    Expired,
    /// The service is shutting down.
    Closed,
    /// No such counter, and only counters the administrator created count.
    UnknownCounter,
    /// A new counter, and there are as many as allowed.
    TooManyCounters,
}

impl VisitError {
    /// A stable name, for the `stackdemo_visits_refused_total` label.
    pub fn code(&self) -> &'static str {
        match self {
            VisitError::Store(_) => "store",
            VisitError::Overloaded => "overloaded",
            VisitError::Expired => "expired",
            VisitError::Closed => "closed",
            VisitError::UnknownCounter => "unknown_counter",
            VisitError::TooManyCounters => "too_many_counters",
        }
    }

    /// Every code, so that the metric shows each at zero before it first happens.
    pub const CODES: [&'static str; 6] = [
        "store",
        "overloaded",
        "expired",
        "closed",
        "unknown_counter",
        "too_many_counters",
    ];

    /// The short reason sent to clients.
    pub fn reason(&self) -> &'static str {
        match self {
            VisitError::Store(e) => e.reason(),
            VisitError::Overloaded => "too many visits waiting",
            VisitError::Expired => "counter store is slow to answer",
            VisitError::Closed => "shutting down",
            VisitError::UnknownCounter => "no such counter",
            VisitError::TooManyCounters => "too many counters",
        }
    }
}

/// Limits of the batching loop.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Visits in one store write at most.
    pub max_batch: usize,
    /// Visits waiting at most; more are answered `Overloaded` at once.
    pub max_queue: usize,
    /// Store writes under way at once. More than one lets a batch start while the previous
    /// one is still on the wire, which halves the wait of a visit behind it.
    pub max_in_flight: usize,
    /// How long a visit may wait for its batch's write to start.
    pub queue_wait: Duration,
    /// Bound on one store write.
    pub write: Duration,
}

impl BatchOptions {
    /// The service's limits, with at most `max_in_flight` writes under way (what the
    /// store takes).
    pub fn new(deadlines: &Deadlines, max_in_flight: usize) -> Self {
        Self {
            max_batch: 4096,
            max_queue: 16_384,
            max_in_flight,
            queue_wait: deadlines.queue_wait(),
            write: deadlines.store,
        }
    }
}

struct Visit {
    counter: CounterName,
    /// Who visited (`counters::visitor::raw`), for unique counts.
    visitor: u64,
    arrived: Instant,
    reply: oneshot::Sender<Result<Counted, VisitError>>,
}

/// The tutorial counter's total as last seen, published as the `stackdemo_count` gauge
/// (named counters are never metric labels). One is shared by the counters of all worker
/// threads: their writes finish in any order, so between readings of the store (`reset`,
/// every heartbeat) the gauge only moves forward.
#[derive(Clone)]
pub struct CountGauge {
    total: Arc<AtomicI64>,
    counter: CounterName,
}

impl Default for CountGauge {
    fn default() -> Self {
        Self::following(CounterName::parse("hits").expect("a valid name"))
    }
}

impl CountGauge {
    /// A gauge of `counter`'s total.
    pub fn following(counter: CounterName) -> Self {
        Self {
            total: Arc::new(AtomicI64::new(i64::MIN)),
            counter,
        }
    }

    fn observe(&self, total: i64) {
        let highest = self.total.fetch_max(total, Ordering::Relaxed).max(total);
        gauge!("stackdemo_count").set(highest as f64);
    }

    /// Sets the total as the store holds it now, also when it went down (the key was
    /// reset).
    pub fn reset(&self, total: i64) {
        self.total.store(total, Ordering::Relaxed);
        gauge!("stackdemo_count").set(total as f64);
    }

    /// The total last published, if any.
    pub fn get(&self) -> Option<i64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|&total| total != i64::MIN)
    }
}

/// Hands out visit numbers. Cheap to clone; the batching task ends when the last clone is
/// dropped and the queue is drained.
#[derive(Clone)]
pub struct VisitCounter {
    queue: mpsc::Sender<Visit>,
}

impl VisitCounter {
    /// Starts the batching task on the current Tokio runtime. Each worker thread has its
    /// own counter, so that a visit is queued, written and answered on one thread; their
    /// numbers do not collide because the store hands out each batch's range atomically.
    pub fn start<L: VisitLog>(
        log: Arc<L>,
        options: BatchOptions,
        gauge: CountGauge,
    ) -> (Self, JoinHandle<()>) {
        let (queue, incoming) = mpsc::channel(options.max_queue);
        let task = tokio::spawn(run(log, incoming, options, gauge));
        (Self { queue }, task)
    }

    /// Counts one visit of `counter` by `visitor` and returns its number once the store
    /// has confirmed it. The number is reported in doubt unless its answer is delivered
    /// (`delivery`).
    pub async fn visit(&self, counter: CounterName, visitor: u64) -> Result<Counted, VisitError> {
        let result = self.queued(counter, visitor).await;
        if let Err(error) = &result {
            counter!("stackdemo_visits_refused_total", "reason" => error.code()).increment(1);
        }
        result
    }

    async fn queued(&self, counter: CounterName, visitor: u64) -> Result<Counted, VisitError> {
        let (reply, answer) = oneshot::channel();
        let visit = Visit {
            counter,
            visitor,
            arrived: Instant::now(),
            reply,
        };
        self.queue.try_send(visit).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => VisitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => VisitError::Closed,
        })?;
        answer.await.unwrap_or(Err(VisitError::Closed))
    }
}

async fn run<L: VisitLog>(
    log: Arc<L>,
    mut incoming: mpsc::Receiver<Visit>,
    options: BatchOptions,
    gauge: CountGauge,
) {
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    loop {
        // Take a slot first: visits arriving meanwhile gather into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = Vec::with_capacity(64);
        if incoming.recv_many(&mut batch, options.max_batch).await == 0 {
            break;
        }
        let log = log.clone();
        let gauge = gauge.clone();
        tokio::spawn(async move {
            commit(&*log, &mut batch, &options, &gauge).await;
            drop(slot);
        });
    }
    // Wait for the writes still under way.
    let _ = slots
        .acquire_many(options.max_in_flight.max(1) as u32)
        .await;
}

async fn commit<L: VisitLog>(
    log: &L,
    batch: &mut Vec<Visit>,
    options: &BatchOptions,
    gauge: &CountGauge,
) {
    // A client that hung up is not counted; one that waited too long is told so and not
    // counted either, so the answer stays within a bound even behind a slow batch.
    batch.retain(|visit| !visit.reply.is_closed());
    let started = Instant::now();
    let (fresh, stale): (Vec<Visit>, Vec<Visit>) = batch
        .drain(..)
        .partition(|visit| started.duration_since(visit.arrived) < options.queue_wait);
    let queued = histogram!("stackdemo_visit_queue_seconds");
    for visit in &fresh {
        queued.record(started.duration_since(visit.arrived).as_secs_f64());
    }
    for visit in stale {
        let _ = visit.reply.send(Err(VisitError::Expired));
    }
    if fresh.is_empty() {
        return;
    }
    let count = fresh.len() as u64;
    histogram!("stackdemo_visit_batch_size").record(count as f64);
    let (tallies, visits) = by_counter(fresh);
    let result = log.add_visits(&tallies, started + options.write).await;
    histogram!("stackdemo_store_write_seconds").record(started.elapsed().as_secs_f64());
    let results = match result {
        Ok(results) if results.len() == tallies.len() => results,
        Ok(results) => {
            let error = StoreError::new(
                StoreErrorKind::Failed,
                format!("{} results for {} tallies", results.len(), tallies.len()),
            )
            .with_doubt();
            return refuse(visits.into_iter().flatten(), count, &error);
        }
        Err(error) => return refuse(visits.into_iter().flatten(), count, &error),
    };
    for ((tally, result), visits) in tallies.iter().zip(results).zip(visits) {
        let total = match result {
            TallyResult::Counted(total) => total,
            refused => {
                let error = match refused {
                    TallyResult::Unknown => VisitError::UnknownCounter,
                    TallyResult::TooMany => VisitError::TooManyCounters,
                    store => {
                        // The store's refusal of this counter alone, which an operator
                        // must put right: counted and logged as a failed write is.
                        let error = tally_refusal(store, &tally.counter);
                        refuse(visits.into_iter(), tally.visits, &error);
                        continue;
                    }
                };
                for visit in visits {
                    let _ = visit.reply.send(Err(error.clone()));
                }
                continue;
            }
        };
        counter!("stackdemo_visits_total").increment(tally.visits);
        if tally.counter == gauge.counter {
            gauge.observe(total);
        }
        let first = total - (tally.visits as i64 - 1);
        for (number, visit) in (first..=total).zip(visits) {
            // A request gone meanwhile (the client left, or shutdown cut the
            // connection) drops its number undelivered: reported in doubt.
            let _ = visit.reply.send(Ok(Counted::new(number)));
        }
    }
}

/// The visits of a batch grouped by counter, each group in arrival order, with the tally
/// the store writes for it.
/// Why the store refused one counter's tally, for a result that is not a count.
fn tally_refusal(result: TallyResult, counter: &CounterName) -> StoreError {
    match result {
        TallyResult::ShareAtLimit => StoreError::new(
            StoreErrorKind::ShareLimit,
            "this replica's share is at its limit",
        ),
        TallyResult::WrongType => StoreError::new(
            StoreErrorKind::WrongType,
            format!("a key of counter {counter} is not a counter's"),
        ),
        TallyResult::Gone => StoreError::new(
            StoreErrorKind::TotalGone,
            format!(
                "the total of counter {counter} is gone, yet the registry of counters holds \
                 it: restore the total, set it with the admin API, or delete the counter"
            ),
        ),
        _ => StoreError::new(StoreErrorKind::Limit, "the total is at its limit"),
    }
}

fn by_counter(visits: Vec<Visit>) -> (Vec<Tally>, Vec<Vec<Visit>>) {
    let mut tallies: Vec<Tally> = Vec::new();
    let mut groups: Vec<Vec<Visit>> = Vec::new();
    let mut index: HashMap<CounterName, usize> = HashMap::new();
    for visit in visits {
        let at = *index.entry(visit.counter.clone()).or_insert_with(|| {
            tallies.push(Tally {
                counter: visit.counter.clone(),
                visits: 0,
                visitors: Vec::new(),
            });
            groups.push(Vec::new());
            tallies.len() - 1
        });
        tallies[at].visits += 1;
        tallies[at].visitors.push(visit.visitor);
        groups[at].push(visit);
    }
    (tallies, groups)
}

/// The store did not confirm: the visits are not acknowledged. A write whose answer was
/// lost may have been applied anyway; the store says so, and those visits are counted as
/// in doubt.
fn refuse(visits: impl Iterator<Item = Visit>, count: u64, error: &StoreError) {
    counter!("stackdemo_store_errors_total", "reason" => error.code()).increment(1);
    if error.in_doubt() {
        counter!("stackdemo_visits_in_doubt_total").increment(count);
    }
    // A failing store fails every write: a line a second for each reason says so, apart
    // for writes tried and writes not tried (the store's own words are in the first), a
    // write in doubt always; the metrics count each.
    static FAILED: Throttle<(&'static str, bool)> = Throttle::new();
    let left_out = if error.in_doubt() {
        Some(0)
    } else {
        FAILED.allow((error.code(), error.was_tried()), std::time::Instant::now())
    };
    if let Some(left_out) = left_out {
        tracing::warn!(
            visits = count,
            reason = error.code(),
            in_doubt = error.in_doubt(),
            cause = error.detail(),
            failed_writes_not_logged = left_out,
            "store write failed"
        );
    }
    for visit in visits {
        let _ = visit.reply.send(Err(VisitError::Store(error.clone())));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        sync::{
            Mutex,
            atomic::{AtomicU64, Ordering},
        },
    };

    use super::*;
    use crate::store::StoreErrorKind;

    /// Every answer the clients got, each client's in the order it got them.
    type Answers = Vec<Vec<Result<i64, VisitError>>>;

    /// The number of a counted visit, whose answer the client got.
    fn answered(counted: Counted) -> i64 {
        let number = counted.number();
        counted.delivered();
        number
    }

    /// What the answers add up to.
    #[derive(Debug, Default)]
    struct Summary {
        requests: u64,
        succeeded: u64,
        failed: u64,
        /// Numbers handed out more than once.
        duplicates: u64,
        /// Numbers not above the same client's previous one.
        out_of_order: u64,
        lowest: Option<i64>,
        highest: Option<i64>,
    }

    impl Summary {
        fn of(answers: &Answers) -> Self {
            let mut tally = Summary::default();
            let mut seen = HashSet::new();
            for client in answers {
                let mut last = None;
                for answer in client {
                    tally.requests += 1;
                    let Ok(number) = *answer else {
                        tally.failed += 1;
                        continue;
                    };
                    tally.succeeded += 1;
                    if !seen.insert(number) {
                        tally.duplicates += 1;
                    }
                    if last.is_some_and(|last| number <= last) {
                        tally.out_of_order += 1;
                    }
                    last = Some(number);
                    tally.lowest = Some(tally.lowest.map_or(number, |l: i64| l.min(number)));
                    tally.highest = Some(tally.highest.map_or(number, |h: i64| h.max(number)));
                }
            }
            tally
        }
    }

    /// An in-memory log that fails some writes (deterministically pseudo-random) and takes
    /// a little time per write, so that batches form. Every counter starts at `start`.
    struct FlakyLog {
        totals: Mutex<HashMap<CounterName, i64>>,
        start: i64,
        calls: AtomicU64,
        fail_one_in: u64,
        delay: Duration,
    }

    impl FlakyLog {
        fn new(fail_one_in: u64, delay: Duration) -> Arc<Self> {
            Self::starting_at(0, fail_one_in, delay)
        }

        fn starting_at(start: i64, fail_one_in: u64, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                totals: Mutex::new(HashMap::new()),
                start,
                calls: AtomicU64::new(0),
                fail_one_in,
                delay,
            })
        }

        /// The total of `hits`, the counter most tests count.
        fn total(&self) -> i64 {
            self.total_of(&hits())
        }

        fn total_of(&self, counter: &CounterName) -> i64 {
            let totals = self.totals.lock().unwrap();
            totals.get(counter).copied().unwrap_or(self.start)
        }
    }

    impl VisitLog for FlakyLog {
        async fn add_visits(
            &self,
            tallies: &[Tally],
            _answer_by: Instant,
        ) -> Result<Vec<TallyResult>, StoreError> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.delay).await;
            // xorshift of the call number: failures spread without a pattern in time.
            let mut x = call.wrapping_add(0x9E37_79B9_7F4A_7C15);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if self.fail_one_in > 0 && x.is_multiple_of(self.fail_one_in) {
                return Err(StoreError::new(StoreErrorKind::Unreachable, "injected"));
            }
            let mut totals = self.totals.lock().unwrap();
            let results = tallies
                .iter()
                .map(|tally| {
                    let total = totals.entry(tally.counter.clone()).or_insert(self.start);
                    *total += tally.visits as i64;
                    TallyResult::Counted(*total)
                })
                .collect();
            Ok(results)
        }
    }

    fn hits() -> CounterName {
        CounterName::parse("hits").unwrap()
    }

    fn options(timeout: Duration, in_flight: usize) -> BatchOptions {
        BatchOptions {
            max_batch: 4096,
            max_queue: 16_384,
            max_in_flight: in_flight,
            queue_wait: timeout,
            write: timeout,
        }
    }

    /// `tasks` clients each sending `each` visits one after another; every answer, in the
    /// order each client got it.
    async fn hammer(counter: &VisitCounter, tasks: u64, each: usize) -> Answers {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let counter = counter.clone();
            handles.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..each {
                    answers.push(counter.visit(hits(), 1).await.map(answered));
                }
                answers
            }));
        }
        let mut answers = Vec::new();
        for handle in handles {
            answers.push(handle.await.unwrap());
        }
        answers
    }

    /// `hammer` on a counter of its own over `log`, with at most `in_flight` writes under
    /// way; returns once every visit is answered and the batching task has ended.
    async fn hammer_to_the_end<L: VisitLog>(
        log: Arc<L>,
        in_flight: usize,
        tasks: u64,
        each: usize,
    ) -> Summary {
        let (counter, task) = VisitCounter::start(
            log,
            options(Duration::from_secs(2), in_flight),
            CountGauge::default(),
        );
        let answers = hammer(&counter, tasks, each).await;
        drop(counter);
        task.await.unwrap();
        Summary::of(&answers)
    }

    /// The counter's promise, for a log that started at `start` and ended at `total`:
    /// numbers distinct and increasing per client, and every visit the log counted was
    /// acknowledged with exactly the numbers `start+1 ..= total`.
    fn assert_kept_its_promise(report: &Summary, start: i64, total: i64) {
        assert_eq!(report.duplicates, 0, "a number was handed out twice");
        assert_eq!(report.out_of_order, 0, "a client's numbers went down");
        assert_eq!(
            report.succeeded as i64,
            total - start,
            "every confirmed visit was handed out, nothing else"
        );
        if report.succeeded > 0 {
            assert_eq!(report.lowest, Some(start + 1), "numbers are contiguous");
            assert_eq!(report.highest, Some(total), "numbers are contiguous");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_concurrency_and_failures_numbers_are_distinct_contiguous_and_all_confirmed() {
        let cases = [(0, 0, 1), (3, 50, 1), (7, 200, 2), (2, 0, 2), (5, 100, 3)];
        for (fail_one_in, delay_us, in_flight) in cases {
            let log = FlakyLog::new(fail_one_in, Duration::from_micros(delay_us));

            let report = hammer_to_the_end(log.clone(), in_flight, 64, 50).await;

            assert_kept_its_promise(&report, 0, log.total());
            assert_eq!(report.requests, 64 * 50, "each visit counted or refused");
            if fail_one_in > 0 {
                assert!(report.failed > 0, "failures were injected");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn numbers_are_the_stores_own_also_near_the_limits_of_a_64_bit_total() {
        // Redis totals are signed 64-bit numbers: a key reset below zero counts up
        // through it, and a total past 2^53 is not rounded.
        for start in [-25, (1 << 53) - 10, i64::MAX - 10_000] {
            let log = FlakyLog::starting_at(start, 0, Duration::from_micros(50));

            let report = hammer_to_the_end(log.clone(), 2, 16, 20).await;

            assert_kept_its_promise(&report, start, log.total());
            assert_eq!(report.succeeded, 320);
        }
    }

    #[test]
    fn counters_on_separate_runtime_threads_sharing_one_log_never_collide() {
        // As the server runs them: one counter per worker thread, each on a single-threaded
        // runtime of its own, all writing to one store.
        const THREADS: u64 = 3;
        let log = FlakyLog::new(4, Duration::from_micros(100));
        let gauge = CountGauge::default();
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (log, gauge) = (log.clone(), gauge.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async move {
                        let (counter, task) =
                            VisitCounter::start(log, options(Duration::from_secs(2), 2), gauge);
                        let answers = hammer(&counter, 32, 40).await;
                        drop(counter);
                        task.await.unwrap();
                        answers
                    })
                })
            })
            .collect();

        // Clients of different threads are different clients.
        let answers: Answers = workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect();
        let report = Summary::of(&answers);

        assert!(report.failed > 0, "failures were injected");
        assert_kept_its_promise(&report, 0, log.total());
        assert_eq!(report.requests, THREADS * 32 * 40);
        assert_eq!(
            gauge.get(),
            Some(log.total()),
            "the gauge shows the highest total"
        );
    }

    /// Counts the writes under way at once, and the most seen.
    struct WatchedLog {
        inner: Arc<FlakyLog>,
        under_way: AtomicU64,
        most: AtomicU64,
    }

    impl VisitLog for WatchedLog {
        async fn add_visits(
            &self,
            tallies: &[Tally],
            answer_by: Instant,
        ) -> Result<Vec<TallyResult>, StoreError> {
            let now = self.under_way.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let result = self.inner.add_visits(tallies, answer_by).await;
            self.under_way.fetch_sub(1, Ordering::SeqCst);
            result
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_overlap_up_to_the_limit_and_never_beyond() {
        for limit in [1, 2, 4] {
            let log = Arc::new(WatchedLog {
                inner: FlakyLog::new(0, Duration::from_millis(2)),
                under_way: AtomicU64::new(0),
                most: AtomicU64::new(0),
            });

            let report = hammer_to_the_end(log.clone(), limit, 64, 10).await;

            assert_eq!(report.failed, 0);
            assert_eq!(report.succeeded, 640);
            assert_eq!(
                log.most.load(Ordering::SeqCst),
                limit as u64,
                "writes under way at once with a limit of {limit}"
            );
            assert_eq!(log.under_way.load(Ordering::SeqCst), 0, "all writes ended");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_visits_are_coalesced_into_fewer_writes() {
        let log = FlakyLog::new(0, Duration::from_millis(2));
        let (counter, _task) = VisitCounter::start(
            log.clone(),
            options(Duration::from_secs(2), 1),
            CountGauge::default(),
        );

        hammer(&counter, 100, 10).await;

        let writes = log.calls.load(Ordering::Relaxed);
        assert_eq!(log.total(), 1000);
        assert!(writes < 200, "1000 visits took {writes} writes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn visits_stuck_behind_a_slow_store_are_refused_and_not_counted() {
        // Writes take longer than the queue wait: visits behind the first write expire
        // before theirs can start, and are not sent.
        let log = FlakyLog::new(0, Duration::from_millis(300));
        let (counter, _task) = VisitCounter::start(
            log.clone(),
            options(Duration::from_millis(100), 1),
            CountGauge::default(),
        );

        let report = Summary::of(&hammer(&counter, 8, 3).await);

        assert_eq!(report.failed + report.succeeded, 24);
        assert!(report.failed > 0, "visits expired behind the slow write");
        assert_kept_its_promise(&report, 0, log.total());
    }

    #[tokio::test]
    async fn a_full_queue_turns_visits_away_at_once() {
        let log = FlakyLog::new(0, Duration::from_millis(200));
        let options = BatchOptions {
            max_batch: 1,
            max_queue: 1,
            ..options(Duration::from_secs(1), 1)
        };
        let (counter, _task) = VisitCounter::start(log.clone(), options, CountGauge::default());

        let mut pending = Vec::new();
        for _ in 0..8 {
            let counter = counter.clone();
            pending.push(tokio::spawn(async move {
                counter.visit(hits(), 1).await.map(answered)
            }));
        }
        let (mut counted, mut overloaded) = (0, 0);
        for visit in pending {
            match visit.await.unwrap() {
                Ok(_) => counted += 1,
                Err(VisitError::Overloaded) => overloaded += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }

        assert!(overloaded > 0, "visits beyond the queue bound are refused");
        assert_eq!(counted, log.total(), "refused visits were not counted");
        assert_eq!(counted + overloaded, 8);
    }

    /// The caller of a visit left (its request was cancelled) while the visit's batch was
    /// being written: the visit is counted, and reported in doubt.
    #[test]
    fn a_visit_whose_caller_left_while_it_was_written_is_reported_in_doubt() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let log = FlakyLog::new(0, Duration::from_millis(50));
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let options = options(Duration::from_secs(2), 1);
                let (counter, batcher) =
                    VisitCounter::start(log.clone(), options, CountGauge::default());
                let visit = tokio::spawn({
                    let counter = counter.clone();
                    async move { counter.visit(hits(), 1).await.map(answered) }
                });
                while log.calls.load(Ordering::Relaxed) == 0 {
                    tokio::task::yield_now().await;
                }
                visit.abort();
                drop(counter);
                batcher.await.unwrap();
            });
        });

        assert_eq!(log.total(), 1, "the visit was counted");
        let in_doubt = handle
            .render()
            .lines()
            .find_map(|line| line.strip_prefix("stackdemo_visits_in_doubt_total "))
            .map(|value| value.trim().to_owned());
        assert_eq!(in_doubt.as_deref(), Some("1"));
    }

    #[test]
    fn the_gauge_follows_the_store_down_when_the_total_is_reset() {
        let gauge = CountGauge::default();
        gauge.observe(40);
        gauge.observe(30);
        assert_eq!(
            gauge.get(),
            Some(40),
            "writes finishing out of order do not lower it"
        );

        gauge.reset(0);

        assert_eq!(gauge.get(), Some(0));
    }
}
