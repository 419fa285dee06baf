//! The visit counter: coalesces concurrent visits into one store write.
//!
//! A single task owns the store's write path. While one batch is on its way to the store,
//! new visits queue up; when the store answers, the next batch takes everything queued and
//! sends one `add_visits(k)`. The store returns the new total `n`, and the k visits of the
//! batch get `n-k+1 ..= n` in arrival order. So every acknowledged visit carries a distinct
//! number, the numbers are contiguous, nothing is acknowledged before the store confirmed
//! it, and a visit answered with an error was never part of a confirmed batch.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use metrics::{counter, gauge, histogram};
use tokio::{
    sync::{mpsc, oneshot},
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
    /// Bound on one store write, and on how long a visit may wait for its batch to start.
    pub timeout: Duration,
}

impl BatchOptions {
    pub fn new(timeout: Duration) -> Self {
        Self { max_batch: 4096, max_queue: 16_384, timeout }
    }
}

struct Visit {
    arrived: Instant,
    reply: oneshot::Sender<Result<u64, VisitError>>,
}

/// Hands out visit numbers. Cheap to clone; the batching task ends when the last clone is
/// dropped and the queue is drained.
#[derive(Clone)]
pub struct VisitCounter {
    queue: mpsc::Sender<Visit>,
}

impl VisitCounter {
    /// Starts the batching task on the current Tokio runtime.
    pub fn start<L: VisitLog>(log: Arc<L>, options: BatchOptions) -> (Self, JoinHandle<()>) {
        let (queue, incoming) = mpsc::channel(options.max_queue);
        let task = tokio::spawn(run(log, incoming, options));
        (Self { queue }, task)
    }

    /// Counts one visit and returns its number once the store has confirmed it.
    pub async fn visit(&self) -> Result<u64, VisitError> {
        let (reply, answer) = oneshot::channel();
        let visit = Visit { arrived: Instant::now(), reply };
        self.queue.try_send(visit).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => VisitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => VisitError::Closed,
        })?;
        answer.await.unwrap_or(Err(VisitError::Closed))
    }
}

async fn run<L: VisitLog>(log: Arc<L>, mut incoming: mpsc::Receiver<Visit>, options: BatchOptions) {
    let mut batch = Vec::with_capacity(options.max_batch);
    while incoming.recv_many(&mut batch, options.max_batch).await > 0 {
        commit(&*log, &mut batch, options.timeout).await;
        batch.clear();
    }
}

async fn commit<L: VisitLog>(log: &L, batch: &mut Vec<Visit>, timeout: Duration) {
    // A client that hung up is not counted; one that waited too long is told so and not
    // counted either, so the answer stays within a bound even behind a slow batch.
    batch.retain(|visit| !visit.reply.is_closed());
    let (fresh, stale): (Vec<Visit>, Vec<Visit>) =
        batch.drain(..).partition(|visit| visit.arrived.elapsed() < timeout);
    for visit in stale {
        let _ = visit.reply.send(Err(VisitError::Expired));
    }
    if fresh.is_empty() {
        return;
    }
    let count = fresh.len() as u64;
    histogram!("stackdemo_visit_batch_size").record(count as f64);
    let result = match tokio::time::timeout(timeout, log.add_visits(count)).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::timeout()),
    };
    match result {
        Ok(total) => {
            counter!("stackdemo_visits_total").increment(count);
            gauge!("stackdemo_count").set(total as f64);
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
            if matches!(error.kind(), crate::store::StoreErrorKind::Timeout) {
                counter!("stackdemo_visits_in_doubt_total").increment(count);
            }
            tracing::warn!(visits = count, reason = error.reason(), cause = error.detail(), "store write failed");
            for visit in fresh {
                let _ = visit.reply.send(Err(VisitError::Store(error.clone())));
            }
        }
    }
}
