//! Whether a counted visit's answer reached its client.
//!
//! A visit the store counted is `Counted` until its answer has been written to the
//! client's connection. Every way it can fail to get there drops the `Counted` on the way,
//! and a `Counted` dropped undelivered is reported in doubt
//! (`stackdemo_visits_in_doubt_total`): counted, but the client may never have seen its
//! number. That covers a client that hung up while its visit was being counted (its
//! request was cancelled), one that hung up after (writing the answer failed), and the
//! connections cut at the shutdown deadline.
//!
//! The answer's body carries the `Counted` (`AnsweredBody`). When hyper takes the body's
//! bytes to write them, the `Counted` is handed to its connection's `Handover`, which the
//! connection's I/O confirms once a flush has written everything out. A connection that
//! ends first reports what it still held in doubt. A client that closed its side before
//! the answer was written (a FIN) may still read it, if it only half-closed, or may be
//! gone; the service cannot tell which, so such answers are written and also reported in
//! doubt. A close found after they were written (the client read its answer and left, as
//! one-shot clients do at once) leaves them delivered.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use axum::body::{Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use metrics::counter;

/// Counts visits reported in doubt.
fn in_doubt(visits: u64) {
    counter!("stackdemo_visits_in_doubt_total").increment(visits);
}

/// A counted visit's number, until its answer is delivered.
#[must_use = "dropped undelivered, the visit is reported in doubt"]
#[derive(Debug)]
pub struct Counted {
    number: i64,
    settled: bool,
}

impl Counted {
    pub fn new(number: i64) -> Self {
        Self {
            number,
            settled: false,
        }
    }

    pub fn number(&self) -> i64 {
        self.number
    }

    /// The answer reached its client, as far as the service can know.
    pub fn delivered(mut self) {
        self.settled = true;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if !self.settled {
            in_doubt(1);
        }
    }
}

/// One connection's answers between the body handing them over and the connection
/// writing them out. Cloned into each request's extensions; its I/O holds one too.
///
/// Before it writes answers' bytes, the connection looks (without reading) whether the
/// client has closed its side: a client that left before its answer was written sent its
/// close first, and its answers are in doubt.
#[derive(Clone, Default)]
pub struct Handover(Arc<Pending>);

#[derive(Default)]
struct Pending {
    /// Answers handed over and not yet flushed.
    awaiting: AtomicU64,
    /// The client closed its side of the connection.
    peer_closed: AtomicBool,
    /// Bytes of the answers awaiting were written after the client had closed its side.
    written_after_close: AtomicBool,
}

impl Handover {
    /// Takes a counted visit whose answer's bytes are about to be written.
    pub(crate) fn take(&self, counted: Counted) {
        let mut counted = counted;
        counted.settled = true;
        self.0.awaiting.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether answers were handed over since the last flush.
    pub fn awaiting(&self) -> bool {
        self.0.awaiting.load(Ordering::Acquire) > 0
    }

    /// Bytes of the answers handed over are being written, the client's side looked at
    /// just before.
    pub fn writing(&self) {
        if self.0.peer_closed.load(Ordering::Acquire) {
            self.0.written_after_close.store(true, Ordering::Release);
        }
    }

    /// Everything written so far has been written out: the answers handed over are
    /// delivered, unless the client had closed its side before they were all written
    /// (then they are in doubt).
    pub fn flushed(&self) {
        let answers = self.0.awaiting.swap(0, Ordering::AcqRel);
        let after_close = self.0.written_after_close.swap(false, Ordering::AcqRel);
        if answers > 0 && after_close {
            in_doubt(answers);
        }
    }

    /// The client closed its side of the connection (a read found its end).
    pub fn peer_closed(&self) {
        self.0.peer_closed.store(true, Ordering::Release);
    }

    /// Whether the client was found to have closed its side.
    #[cfg(test)]
    pub(crate) fn found_peer_closed(&self) -> bool {
        self.0.peer_closed.load(Ordering::Acquire)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let answers = *self.awaiting.get_mut();
        if answers > 0 {
            in_doubt(answers);
        }
    }
}

/// The body of an answer that carries a visit's number: its bytes, and the `Counted` to
/// hand over when they are taken for writing.
pub struct AnsweredBody {
    data: Option<Bytes>,
    counted: Option<Counted>,
    handover: Option<Handover>,
}

impl AnsweredBody {
    /// `handover` is the connection's, when the service runs on one (not in tests that
    /// drive the router directly: there, taking the bytes delivers them).
    pub fn new(data: impl Into<Bytes>, counted: Counted, handover: Option<Handover>) -> Self {
        Self {
            data: Some(data.into()),
            counted: Some(counted),
            handover,
        }
    }
}

impl HttpBody for AnsweredBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(data) = self.data.take() else {
            return Poll::Ready(None);
        };
        if let Some(counted) = self.counted.take() {
            match &self.handover {
                Some(handover) => handover.take(counted),
                None => counted.delivered(),
            }
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Visits reported in doubt while `work` runs in this thread, on a recorder of its own
/// (the global one is shared by every test of the process).
#[cfg(test)]
pub(crate) fn in_doubt_during(work: impl FnOnce()) -> u64 {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, work);
    handle
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("stackdemo_visits_in_doubt_total "))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes the body's bytes, as hyper does to write them.
    fn take_bytes(body: &mut AnsweredBody) -> Bytes {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap(),
            other => panic!("no data: {other:?}"),
        }
    }

    #[test]
    fn a_number_dropped_undelivered_is_in_doubt_and_a_delivered_one_is_not() {
        assert_eq!(in_doubt_during(|| drop(Counted::new(1))), 1);
        assert_eq!(in_doubt_during(|| Counted::new(1).delivered()), 0);
    }

    #[test]
    fn an_answer_never_written_is_in_doubt() {
        let reported = in_doubt_during(|| {
            let handover = Handover::default();
            let body = AnsweredBody::new("7", Counted::new(7), Some(handover));
            drop(body);
        });
        assert_eq!(reported, 1);
    }

    #[test]
    fn an_answer_written_out_to_a_client_still_there_is_delivered() {
        let reported = in_doubt_during(|| {
            let handover = Handover::default();
            let mut body = AnsweredBody::new("7", Counted::new(7), Some(handover.clone()));
            assert_eq!(take_bytes(&mut body), "7");
            assert!(body.is_end_stream());
            handover.flushed();
        });
        assert_eq!(reported, 0);
    }

    #[test]
    fn an_answer_taken_but_not_flushed_before_the_connection_ends_is_in_doubt() {
        let reported = in_doubt_during(|| {
            let handover = Handover::default();
            let mut body = AnsweredBody::new("7", Counted::new(7), Some(handover.clone()));
            take_bytes(&mut body);
            drop(body);
            drop(handover);
        });
        assert_eq!(reported, 1);
    }

    #[test]
    fn answers_written_to_a_client_that_had_closed_its_side_are_in_doubt() {
        let reported = in_doubt_during(|| {
            let handover = Handover::default();
            for number in 1..=3 {
                let mut body = AnsweredBody::new("n", Counted::new(number), Some(handover.clone()));
                take_bytes(&mut body);
            }
            handover.peer_closed();
            handover.writing();
            handover.flushed();
        });
        assert_eq!(reported, 3);
    }

    #[test]
    fn answers_written_before_the_client_closed_its_side_are_delivered() {
        let reported = in_doubt_during(|| {
            let handover = Handover::default();
            let mut body = AnsweredBody::new("n", Counted::new(1), Some(handover.clone()));
            take_bytes(&mut body);
            handover.writing();
            // The client read its answer and left before the flush was confirmed.
            handover.peer_closed();
            handover.flushed();
        });
        assert_eq!(reported, 0);
    }
}
