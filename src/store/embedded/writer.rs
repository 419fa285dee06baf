//! The embedded store's writer thread: it owns the write path, takes every write request
//! waiting when a commit ends, and makes them one transaction (group commit).
//!
//! A request is handed over through a small state machine: it is waiting for the writer,
//! taken by it, or called back by its caller. Taking and calling back are one
//! compare-and-swap each, so a request is either committed or called back, never both:
//! a caller that gives up before the writer took its write leaves it uncommitted, and a
//! caller whose write was taken waits for the commit.
//!
//! When a commit fails, the writer reports the failure before answering anyone, opens the
//! database again and writes to it until it works (`recover`), refusing what is sent to it
//! meanwhile. When the store is dropped, the writer makes sure the counts it holds are at
//! the configured path (or, where another file holding less is in the way, beside it)
//! before it ends (`at_exit`), so that the next start counts on from them.

use std::{
    num::NonZero,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use metrics::histogram;
use tokio::{sync::oneshot, time::Instant};

use super::{
    Inner, guarded, lock,
    tables::{self, SketchCache},
};
use crate::{
    counters::{Tally, TallyResult},
    store::{StoreError, StoreErrorKind},
    telemetry::Throttle,
};

/// How long the writer thread looks for the next request after a commit before it goes
/// to sleep, while visits arrive together: sleeping and being woken costs a trip through
/// the scheduler that, under load, holds up the next commit for longer than this
/// (`bench/README.md` has the measurements).
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(100);

/// Pause between attempts to open the database again after a failure.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// Failures in a row of a database found damaged, after which the store gives up.
const DAMAGED_FAILURES_TO_GIVE_UP: u32 = 3;

/// How often an idle writer checks that the configured path still names its file.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A write's state: waiting for the writer, taken by it, or called back by its caller.
pub(super) const WAITING: u8 = 0;
const TAKEN: u8 = 1;
pub(super) const CALLED_BACK: u8 = 2;

/// One request to count a batch's tallies; answered with what became of each.
pub(super) struct Write {
    pub tallies: Vec<Tally>,
    pub state: Arc<AtomicU8>,
    pub reply: oneshot::Sender<Result<Vec<TallyResult>, StoreError>>,
}

/// The writer thread: until the store is dropped, commit everything waiting as one
/// transaction and answer each request with its own part of the new range.
pub(super) fn write_loop(inner: &Inner, requests: &mpsc::Receiver<Write>, spin_limit: Duration) {
    let mut spin = Duration::ZERO;
    let mut damaged_in_a_row = 0;
    // A full disk fails every commit: a line a second for each reason says so.
    let failed_lines = Throttle::new();
    let mut sketches = SketchCache::default();
    loop {
        let first = match next_write(requests, spin) {
            Next::Write(write) => write,
            Next::Closed => return at_exit(inner),
            Next::Idle => {
                if let Err(error) = inner.check_file()
                    && !failed_write(inner, requests, &error, &mut damaged_in_a_row)
                {
                    return;
                }
                continue;
            }
        };
        let mut writes = vec![first];
        writes.extend(requests.try_iter());
        // A write its caller called back is dropped, never committed.
        writes.retain(|w| {
            w.state
                .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if writes.is_empty() {
            continue;
        }
        let count: u64 = writes
            .iter()
            .flat_map(|w| w.tallies.iter())
            .map(|t| t.visits)
            .sum();
        // A lone visit (a quiet service, or one client at a time) is not worth spinning for.
        spin = if count > 1 {
            spin_limit
        } else {
            Duration::ZERO
        };
        *lock(&inner.committing_since) = Some(Instant::now());
        // Durable at the configured path, or not acknowledged: the path is checked
        // before the commit (nothing is written elsewhere) and after it (a commit into a
        // file that was removed meanwhile is in doubt).
        let batches: Vec<&[Tally]> = writes.iter().map(|w| w.tallies.as_slice()).collect();
        let result = inner
            .check_file()
            .and_then(|()| inner.database())
            .and_then(|db| {
                inner.writers.own_write_with(&inner.path, || {
                    guarded(|| tables::commit(&db, &inner.rules(), &batches, &mut sketches))
                })
            })
            .and_then(|results| {
                inner
                    .check_file()
                    .map(|()| results)
                    .map_err(StoreError::with_doubt)
            });
        *lock(&inner.committing_since) = None;
        match result {
            Ok(results) => {
                histogram!("stackdemo_embedded_commit_visits").record(count as f64);
                *lock(&inner.failing) = None;
                damaged_in_a_row = 0;
                for (write, results) in writes.into_iter().zip(results) {
                    let _ = write.reply.send(Ok(results));
                }
            }
            Err(error) => {
                sketches.clear();
                if let Some(left_out) = failed_lines.allow(error.code(), std::time::Instant::now())
                {
                    tracing::error!(
                        visits = count,
                        reason = error.code(),
                        cause = error.detail(),
                        failed_writes_not_logged = left_out,
                        "embedded store write failed"
                    );
                }
                // Not ready before anyone hears of the failure: a client that got its 503
                // and asks /readyz at once must not find the store ready.
                *lock(&inner.failing) = Some(error.clone());
                for write in writes {
                    let _ = write.reply.send(Err(error.clone()));
                }
                if !failed_write(inner, requests, &error, &mut damaged_in_a_row) {
                    return;
                }
            }
        }
    }
}

/// After a failed write (or a data file found gone): reports the failure and recovers;
/// false when the writer is to end: the store gives up (a database that keeps failing as
/// damaged), or it was dropped meanwhile.
fn failed_write(
    inner: &Inner,
    requests: &mpsc::Receiver<Write>,
    error: &StoreError,
    damaged_in_a_row: &mut u32,
) -> bool {
    *lock(&inner.failing) = Some(error.clone());
    if error.kind() == StoreErrorKind::Damaged {
        *damaged_in_a_row += 1;
    }
    let recovered = if *damaged_in_a_row >= DAMAGED_FAILURES_TO_GIVE_UP {
        Recovery::GaveUp
    } else {
        recover(inner, requests)
    };
    match recovered {
        Recovery::Writes => true,
        Recovery::GaveUp => {
            tracing::error!("the embedded store's database keeps failing as damaged; giving up");
            inner.gave_up.cancel();
            false
        }
        Recovery::Closed => {
            at_exit(inner);
            false
        }
    }
}

/// How recovering ended.
enum Recovery {
    /// A write succeeded: counting goes on.
    Writes,
    /// The database keeps failing as damaged.
    GaveUp,
    /// The store was dropped (the service stopping).
    Closed,
}

/// Puts the data file right if the path no longer names it (`file`), opens the database
/// again and writes to it, until a write succeeds, pausing between attempts. Meanwhile
/// the store reports the failure (not ready), and a write sent to it is refused with it.
fn recover(inner: &Inner, requests: &mpsc::Receiver<Write>) -> Recovery {
    let mut damaged = 0;
    loop {
        if !refuse_until(inner, requests, std::time::Instant::now() + REOPEN_DELAY) {
            return Recovery::Closed;
        }
        // A write of no visits: it touches the same pages a visit does, so it fails as
        // long as a visit would.
        let probe = Tally {
            counter: inner.tutorial.clone(),
            visits: 0,
            visitors: Vec::new(),
        };
        let attempt = inner
            .put_file_right()
            .and_then(|()| inner.reopen())
            .and_then(|()| {
                let db = inner.database()?;
                let rules = inner.rules();
                let probe = [probe];
                inner.writers.own_write_with(&inner.path, || {
                    guarded(|| {
                        tables::commit(&db, &rules, &[&probe[..]], &mut SketchCache::default())
                    })
                })
            });
        match attempt {
            Ok(_) => {
                tracing::info!("embedded store writes again");
                *lock(&inner.failing) = None;
                return Recovery::Writes;
            }
            Err(error) => {
                tracing::warn!(
                    reason = error.code(),
                    cause = error.detail(),
                    "the embedded store cannot write yet"
                );
                if error.kind() == StoreErrorKind::Damaged {
                    damaged += 1;
                    if damaged >= DAMAGED_FAILURES_TO_GIVE_UP {
                        return Recovery::GaveUp;
                    }
                }
                *lock(&inner.failing) = Some(error);
            }
        }
    }
}

/// Until `until`, refuses every write sent (with the failure the store reports, as none
/// of them is committed); false as soon as the store has been dropped.
fn refuse_until(
    inner: &Inner,
    requests: &mpsc::Receiver<Write>,
    until: std::time::Instant,
) -> bool {
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match requests.recv_timeout(left) {
            Ok(write) => {
                let taken = write
                    .state
                    .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if taken {
                    let failure = lock(&inner.failing).clone().unwrap_or_else(|| {
                        StoreError::new(StoreErrorKind::Failed, "the store is recovering")
                    });
                    let _ = write.reply.send(Err(failure));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// The store is being dropped: the counts it holds must be where the next start looks,
/// or it would count from 1 again, or from an older copy. A data file gone since the
/// last look is written again; another file in the way that holds less is left alone,
/// and the counts are written beside it, for the operator to put in its place.
fn at_exit(inner: &Inner) {
    if inner.written_in_place() {
        inner.abandon();
        tracing::error!(
            path = %inner.path.display(),
            "the data file was written by another process while the service had it open: \
             the next start counts from what it holds"
        );
        return;
    }
    let Err(error) = inner.put_file_right() else {
        return;
    };
    match inner.save_beside() {
        Ok(saved) => tracing::error!(
            cause = error.detail(),
            saved = %saved.display(),
            "the data file is not where the next start looks for it; the counts this \
             service held are saved beside it: put that file in its place to count on \
             from them"
        ),
        Err(saving) => tracing::error!(
            cause = error.detail(),
            saving = saving.detail(),
            "the data file is not where the next start looks for it, and the counts this \
             service held could not be saved: they are lost"
        ),
    }
}

/// How long the writer may spin: not at all on a single CPU, where spinning would hold up
/// the thread that sends the next request.
pub(super) fn spin_limit() -> Duration {
    match thread::available_parallelism().map_or(1, NonZero::get) {
        1 => Duration::ZERO,
        _ => SPIN_BEFORE_SLEEP,
    }
}

/// What the writer does next.
enum Next {
    Write(Write),
    /// Nothing came for `FILE_CHECK_INTERVAL`.
    Idle,
    /// The store has been dropped.
    Closed,
}

/// The next write request, looked for without sleeping for up to `spin`, then waited for
/// up to `FILE_CHECK_INTERVAL`.
fn next_write(requests: &mpsc::Receiver<Write>, spin: Duration) -> Next {
    let start = std::time::Instant::now();
    while start.elapsed() < spin {
        match requests.try_recv() {
            Ok(write) => return Next::Write(write),
            Err(mpsc::TryRecvError::Disconnected) => return Next::Closed,
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    match requests.recv_timeout(FILE_CHECK_INTERVAL) {
        Ok(write) => Next::Write(write),
        Err(mpsc::RecvTimeoutError::Timeout) => Next::Idle,
        Err(mpsc::RecvTimeoutError::Disconnected) => Next::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(sender: &mpsc::Sender<Write>, count: u64) {
        let (reply, _) = oneshot::channel();
        sender
            .send(Write {
                tallies: vec![Tally {
                    counter: crate::counters::CounterName::parse("hits").unwrap(),
                    visits: count,
                    visitors: Vec::new(),
                }],
                state: Arc::new(AtomicU8::new(WAITING)),
                reply,
            })
            .unwrap();
    }

    #[test]
    fn the_writer_gets_requests_in_order_whether_it_spins_or_sleeps_and_stops_with_the_store() {
        let (sender, requests) = mpsc::channel();
        send(&sender, 1);
        send(&sender, 2);
        let count = |next: Next| match next {
            Next::Write(write) => Some(write.tallies[0].visits),
            Next::Idle => Some(0),
            Next::Closed => None,
        };
        assert_eq!(count(next_write(&requests, SPIN_BEFORE_SLEEP)), Some(1));
        assert_eq!(count(next_write(&requests, Duration::ZERO)), Some(2));

        // Sent from another thread: found while spinning, or after falling asleep.
        let late = thread::spawn(move || send(&sender, 3));
        assert_eq!(count(next_write(&requests, SPIN_BEFORE_SLEEP)), Some(3));
        late.join().unwrap();

        // The sender is gone with that thread, as when the store is dropped.
        assert_eq!(count(next_write(&requests, SPIN_BEFORE_SLEEP)), None);
        assert_eq!(count(next_write(&requests, Duration::ZERO)), None);
    }
}
