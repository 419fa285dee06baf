//! Reconnect backoff for one Redis connection. After a connection attempt fails, calls
//! fail at once (with the kind of that failure, and never in doubt: nothing was sent) for
//! a short, growing delay (`Deadlines::RECONNECT_BACKOFF_FIRST`, doubling up to
//! `Deadlines::RECONNECT_BACKOFF_MAX`), instead of each trying to connect;
//! the first call after the delay tries again. A connection that broke while in use is
//! tried again at once: after a Redis restart or an idle timeout, the next call finds
//! Redis up. Each worker's connection has its own backoff, so one idle worker's stale
//! connection does not hold back the others.
//!
//! Each delay is drawn between half and all of its nominal length (jitter), so that the
//! workers of every replica, which all lost Redis at the same moment, do not try again
//! in lockstep when it returns. A delay also ends as soon as another worker of the same
//! process has connected since the failure: the server answers again, and a worker must
//! not refuse visits for half a second more while readiness already says ready.

use std::time::Duration;

use tokio::time::Instant;

use super::{StoreError, StoreErrorKind};
use crate::deadlines::Deadlines;

const FIRST_DELAY: Duration = Deadlines::RECONNECT_BACKOFF_FIRST;
const MAX_DELAY: Duration = Deadlines::RECONNECT_BACKOFF_MAX;

/// The delays of one connection. `connected` in its calls counts the connections every
/// worker of the store has opened so far.
#[derive(Debug)]
pub struct Backoff {
    /// While set and in the future, no attempt is made.
    closed_until: Option<Instant>,
    delay: Duration,
    last: StoreErrorKind,
    /// `connected` when the last attempt failed.
    connected_at_failure: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            closed_until: None,
            delay: FIRST_DELAY,
            last: StoreErrorKind::Unreachable,
            connected_at_failure: 0,
        }
    }
}

impl Backoff {
    /// The error to answer with instead of trying, while the delay runs and no other
    /// worker has connected since.
    pub fn check(&self, connected: u64) -> Result<(), StoreError> {
        match self.closed_until {
            Some(until) if Instant::now() < until && connected == self.connected_at_failure => Err(
                StoreError::not_tried(self.last, "waiting before the next connection attempt"),
            ),
            _ => Ok(()),
        }
    }

    /// A connection attempt failed with `kind`.
    pub fn failed(&mut self, kind: StoreErrorKind, connected: u64) {
        self.closed_until = Some(Instant::now() + jittered(self.delay));
        self.delay = (self.delay * 2).min(MAX_DELAY);
        self.last = kind;
        self.connected_at_failure = connected;
    }

    /// A connection attempt succeeded.
    pub fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// A delay between half and all of `nominal`.
fn jittered(nominal: Duration) -> Duration {
    nominal / 2 + nominal.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_holds_calls_back_for_a_growing_delay() {
        let mut backoff = Backoff::default();
        assert!(backoff.check(0).is_ok());

        backoff.failed(StoreErrorKind::Auth, 0);
        let error = backoff.check(0).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Auth);
        assert!(!error.in_doubt(), "nothing was sent");

        tokio::time::advance(FIRST_DELAY).await;
        assert!(
            backoff.check(0).is_ok(),
            "a retry is allowed after the delay"
        );
        backoff.failed(StoreErrorKind::Unreachable, 0);
        // The second delay is twice the first, jitter included at least the first.
        tokio::time::advance(FIRST_DELAY - Duration::from_millis(1)).await;
        assert!(backoff.check(0).is_err(), "the second delay is longer");
        tokio::time::advance(FIRST_DELAY + Duration::from_millis(1)).await;
        assert!(backoff.check(0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn another_worker_connecting_ends_the_delay() {
        let mut backoff = Backoff::default();
        backoff.failed(StoreErrorKind::Unreachable, 7);
        assert!(backoff.check(7).is_err());

        assert!(backoff.check(8).is_ok(), "a connection was opened since");
    }

    #[test]
    fn delays_are_spread_between_half_and_all_of_their_length() {
        let nominal = Duration::from_millis(400);
        let delays: Vec<Duration> = (0..200).map(|_| jittered(nominal)).collect();
        assert!(delays.iter().all(|d| *d >= nominal / 2 && *d <= nominal));
        let spread = delays
            .iter()
            .max()
            .unwrap()
            .saturating_sub(*delays.iter().min().unwrap());
        assert!(
            spread > nominal / 4,
            "200 delays within {spread:?} of each other"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_delay() {
        let mut backoff = Backoff::default();
        backoff.failed(StoreErrorKind::Unreachable, 0);
        backoff.failed(StoreErrorKind::Unreachable, 0);
        backoff.succeeded();
        assert!(backoff.check(0).is_ok());
        backoff.failed(StoreErrorKind::Unreachable, 0);
        tokio::time::advance(FIRST_DELAY).await;
        assert!(backoff.check(0).is_ok());
    }
}
