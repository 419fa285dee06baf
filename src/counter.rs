//! The visit counter: coalesces concurrent visits into one store write.
//!
//! A single task takes visits off the queue. While store writes are under way (at most
//! `max_in_flight` of them), new visits queue up; when a slot frees, the next batch takes
//! everything queued and sends one `add_visits(k)`. The store returns the new total `n`, and the k visits of the
//! batch get `n-k+1 ..= n` in arrival order. So every acknowledged visit carries a distinct
//! number, the numbers are contiguous, nothing is acknowledged before the store confirmed
//! it, and a visit answered with an error was never part of a confirmed batch. A client's
//! next visit is sent only after its previous answer, so it lands in a later write and
//! gets a larger number.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::{counter, gauge, histogram};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::JoinHandle,
};

use crate::store::{StoreError, VisitLog};

/// Why a visit was not counted.
#[derive(Debug, Clone)]
pub enum VisitError {
    /// The store failed or did not answer; nothing was acknowledged.
    Store(StoreError),
    /// Too many visits are already waiting; this one was turned away.
    Overloaded,
    /// The visit waited longer than the store timeout before its batch could start.
    Expired,
    /// The service is shutting down.
    Closed,
}

impl VisitError {
    /// The short reason sent to clients.
    pub fn reason(&self) -> &'static str {
        match self {
            VisitError::Store(e) => e.reason(),
            VisitError::Overloaded => "too many visits waiting",
            VisitError::Expired => "counter store is slow to answer",
            VisitError::Closed => "shutting down",
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
    /// Bound on one store write, and on how long a visit may wait for its batch to start.
    pub timeout: Duration,
}

impl BatchOptions {
    pub fn new(timeout: Duration) -> Self {
        Self {
            max_batch: 4096,
            max_queue: 16_384,
            max_in_flight: 1,
            timeout,
        }
    }
}

struct Visit {
    arrived: Instant,
    reply: oneshot::Sender<Result<u64, VisitError>>,
}

/// The highest total any batch has confirmed, published as the `stackdemo_count` gauge.
/// One is shared by the counters of all runtime threads: their writes finish in any order,
/// and the gauge only moves forward.
#[derive(Clone, Default)]
pub struct CountGauge(Arc<AtomicU64>);

impl CountGauge {
    fn observe(&self, total: u64) {
        let highest = self.0.fetch_max(total, Ordering::Relaxed).max(total);
        gauge!("stackdemo_count").set(highest as f64);
    }
}

/// Hands out visit numbers. Cheap to clone; the batching task ends when the last clone is
/// dropped and the queue is drained.
#[derive(Clone)]
pub struct VisitCounter {
    queue: mpsc::Sender<Visit>,
}

impl VisitCounter {
    /// Starts the batching task on the current Tokio runtime. Each runtime thread has its
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

    /// Counts one visit and returns its number once the store has confirmed it.
    pub async fn visit(&self) -> Result<u64, VisitError> {
        let (reply, answer) = oneshot::channel();
        let visit = Visit {
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
            commit(&*log, &mut batch, options.timeout, &gauge).await;
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
    timeout: Duration,
    gauge: &CountGauge,
) {
    // A client that hung up is not counted; one that waited too long is told so and not
    // counted either, so the answer stays within a bound even behind a slow batch.
    batch.retain(|visit| !visit.reply.is_closed());
    let (fresh, stale): (Vec<Visit>, Vec<Visit>) = batch
        .drain(..)
        .partition(|visit| visit.arrived.elapsed() < timeout);
    for visit in stale {
        let _ = visit.reply.send(Err(VisitError::Expired));
    }
    if fresh.is_empty() {
        return;
    }
    let count = fresh.len() as u64;
    histogram!("stackdemo_visit_batch_size").record(count as f64);
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, log.add_visits(count)).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::timeout()),
    };
    histogram!("stackdemo_store_write_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(total) => {
            counter!("stackdemo_visits_total").increment(count);
            gauge.observe(total);
            let first = total + 1 - count;
            for (number, visit) in (first..=total).zip(fresh) {
                let _ = visit.reply.send(Ok(number));
            }
        }
        Err(error) => {
            // The store did not confirm: the visits are not acknowledged. A timed-out or
            // broken write may still have reached the store; that cannot be told apart here,
            // so it is logged and counted as in doubt.
            counter!("stackdemo_store_errors_total", "reason" => error.reason()).increment(1);
            if error.in_doubt() {
                counter!("stackdemo_visits_in_doubt_total").increment(count);
            }
            tracing::warn!(
                visits = count,
                reason = error.reason(),
                cause = error.detail(),
                "store write failed"
            );
            for visit in fresh {
                let _ = visit.reply.send(Err(VisitError::Store(error.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        sync::{
            Mutex,
            atomic::{AtomicU64, Ordering},
        },
    };

    use super::*;
    use crate::store::StoreErrorKind;

    /// An in-memory log that fails some writes (deterministically pseudo-random) and takes
    /// a little time per write, so that batches form.
    struct FlakyLog {
        total: Mutex<u64>,
        calls: AtomicU64,
        fail_one_in: u64,
        delay: Duration,
    }

    impl FlakyLog {
        fn new(fail_one_in: u64, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                total: Mutex::new(0),
                calls: AtomicU64::new(0),
                fail_one_in,
                delay,
            })
        }
    }

    impl VisitLog for FlakyLog {
        async fn add_visits(&self, count: u64) -> Result<u64, StoreError> {
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
            let mut total = self.total.lock().unwrap();
            *total += count;
            Ok(*total)
        }
    }

    async fn hammer(counter: &VisitCounter, tasks: usize, each: usize) -> (Vec<Vec<u64>>, u64) {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let counter = counter.clone();
            handles.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (Vec::new(), 0u64);
                for _ in 0..each {
                    match counter.visit().await {
                        Ok(n) => ok.push(n),
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        let (mut per_task, mut failed) = (Vec::new(), 0);
        for handle in handles {
            let (ok, f) = handle.await.unwrap();
            per_task.push(ok);
            failed += f;
        }
        (per_task, failed)
    }

    /// `hammer` on a counter of its own over `log`, with at most `in_flight` writes under
    /// way; returns once every visit is answered and the batching task has ended.
    async fn hammer_to_the_end<L: VisitLog>(
        log: Arc<L>,
        in_flight: usize,
        tasks: usize,
        each: usize,
    ) -> (Vec<Vec<u64>>, u64) {
        let mut options = BatchOptions::new(Duration::from_secs(2));
        options.max_in_flight = in_flight;
        let (counter, task) = VisitCounter::start(log, options, CountGauge::default());
        let result = hammer(&counter, tasks, each).await;
        drop(counter);
        task.await.unwrap();
        result
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_concurrency_and_failures_numbers_are_distinct_contiguous_and_all_confirmed() {
        let cases = [(0, 0, 1), (3, 50, 1), (7, 200, 2), (2, 0, 2), (5, 100, 3)];
        for (fail_one_in, delay_us, in_flight) in cases {
            let log = FlakyLog::new(fail_one_in, Duration::from_micros(delay_us));

            let (per_task, failed) = hammer_to_the_end(log.clone(), in_flight, 64, 50).await;

            let mut all = BTreeSet::new();
            for seen in &per_task {
                assert!(
                    seen.windows(2).all(|w| w[0] < w[1]),
                    "a client's numbers went down"
                );
                for n in seen {
                    assert!(all.insert(*n), "number {n} handed out twice");
                }
            }
            let total = *log.total.lock().unwrap();
            assert_eq!(
                all.len() as u64,
                total,
                "every confirmed visit was handed out, nothing else"
            );
            assert_eq!(all, (1..=total).collect(), "numbers are contiguous");
            assert_eq!(
                total + failed,
                64 * 50,
                "each visit either counted or refused"
            );
            if fail_one_in > 0 {
                assert!(failed > 0, "failures were injected");
            }
        }
    }

    #[test]
    fn counters_on_separate_runtime_threads_sharing_one_log_never_collide() {
        // As the server runs them: one counter per worker thread, each on a single-threaded
        // runtime of its own, all writing to one store.
        const THREADS: usize = 3;
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
                        let mut options = BatchOptions::new(Duration::from_secs(2));
                        options.max_in_flight = 2;
                        let (counter, task) = VisitCounter::start(log, options, gauge);
                        let result = hammer(&counter, 32, 40).await;
                        drop(counter);
                        task.await.unwrap();
                        result
                    })
                })
            })
            .collect();

        let (mut all, mut failed) = (BTreeSet::new(), 0);
        for worker in workers {
            let (per_task, f) = worker.join().unwrap();
            failed += f;
            for seen in per_task {
                assert!(
                    seen.windows(2).all(|w| w[0] < w[1]),
                    "a client's numbers went down"
                );
                for n in seen {
                    assert!(all.insert(n), "number {n} handed out twice");
                }
            }
        }
        let total = *log.total.lock().unwrap();
        assert!(failed > 0, "failures were injected");
        assert_eq!(
            all,
            (1..=total).collect(),
            "numbers are contiguous and all confirmed"
        );
        assert_eq!(
            total + failed,
            (THREADS * 32 * 40) as u64,
            "each visit counted or refused"
        );
        assert_eq!(
            gauge.0.load(Ordering::Relaxed),
            total,
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
        async fn add_visits(&self, count: u64) -> Result<u64, StoreError> {
            let now = self.under_way.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let result = self.inner.add_visits(count).await;
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

            let (per_task, failed) = hammer_to_the_end(log.clone(), limit, 64, 10).await;

            assert_eq!(failed, 0);
            assert_eq!(per_task.iter().map(Vec::len).sum::<usize>(), 640);
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
            BatchOptions::new(Duration::from_secs(2)),
            CountGauge::default(),
        );

        hammer(&counter, 100, 10).await;

        let writes = log.calls.load(Ordering::Relaxed);
        assert_eq!(*log.total.lock().unwrap(), 1000);
        assert!(writes < 200, "1000 visits took {writes} writes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn visits_stuck_behind_a_slow_store_are_refused_and_not_counted() {
        let log = FlakyLog::new(0, Duration::from_millis(300));
        let (counter, _task) = VisitCounter::start(
            log.clone(),
            BatchOptions::new(Duration::from_millis(100)),
            CountGauge::default(),
        );

        let (per_task, failed) = hammer(&counter, 8, 3).await;

        let acknowledged: usize = per_task.iter().map(Vec::len).sum();
        assert_eq!(acknowledged, 0, "no write finished within the timeout");
        assert_eq!(failed, 24);
    }

    #[tokio::test]
    async fn a_full_queue_turns_visits_away_at_once() {
        let log = FlakyLog::new(0, Duration::from_millis(200));
        let options = BatchOptions {
            max_batch: 1,
            max_queue: 1,
            max_in_flight: 1,
            timeout: Duration::from_secs(1),
        };
        let (counter, _task) = VisitCounter::start(log.clone(), options, CountGauge::default());

        let mut pending = Vec::new();
        for _ in 0..8 {
            let counter = counter.clone();
            pending.push(tokio::spawn(async move { counter.visit().await }));
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
        assert_eq!(
            counted,
            *log.total.lock().unwrap(),
            "refused visits were not counted"
        );
        assert_eq!(counted + overloaded, 8);
    }
}
