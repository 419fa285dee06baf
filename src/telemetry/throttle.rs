//! A line that may repeat thousands of times a second (a store write failing under load)
//! written at most once a second for each of its reasons: each line says how many like it
//! were left out since the one before. A new reason is written at once. Metrics count
//! every occurrence; the log says that it happens, and why.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How often a throttled line is written at most, for one reason.
pub const THROTTLE_EVERY: Duration = Duration::from_secs(1);

/// One kind of line, throttled for each of its reasons (`R`: a fixed set, error codes).
pub struct Throttle<R> {
    /// Per reason: when its last line was written, and how many were left out since.
    reasons: Mutex<Option<HashMap<R, (Instant, u64)>>>,
}

impl<R: Eq + Hash> Throttle<R> {
    pub const fn new() -> Self {
        Self {
            reasons: Mutex::new(None),
        }
    }

    /// Whether a line for `reason` may be written now: `Some(n)`, with the `n` lines for
    /// it left out since its last one, or `None`, and this one is counted as left out.
    pub fn allow(&self, reason: R, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        let reasons = reasons.get_or_insert_with(HashMap::new);
        match reasons.get_mut(&reason) {
            Some((at, left_out)) if now.saturating_duration_since(*at) < THROTTLE_EVERY => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                reasons.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

impl<R: Eq + Hash> Default for Throttle<R> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_for_each_reason_says_how_many_were_left_out() {
        let throttle = Throttle::new();
        let start = Instant::now();
        assert_eq!(throttle.allow("timeout", start), Some(0));
        for ms in [1, 500, 999] {
            assert_eq!(
                throttle.allow("timeout", start + Duration::from_millis(ms)),
                None
            );
        }
        assert_eq!(
            throttle.allow("permission", start + Duration::from_millis(2)),
            Some(0),
            "a new reason at once"
        );
        assert_eq!(throttle.allow("timeout", start + THROTTLE_EVERY), Some(3));
        assert_eq!(
            throttle.allow("timeout", start + THROTTLE_EVERY * 3),
            Some(0)
        );
    }
}
