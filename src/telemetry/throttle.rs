//! A line that may repeat thousands of times a second (a store write failing under load)
//! written at most once a second: each line says how many like it were left out since
//! the one before. Metrics count every occurrence; the log says that it happens, and why.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How often a throttled line is written at most.
pub const THROTTLE_EVERY: Duration = Duration::from_secs(1);

/// One kind of line, throttled.
pub struct Throttle {
    /// When the last line was written.
    last: Mutex<Option<Instant>>,
    /// Lines left out since.
    left_out: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Self {
            last: Mutex::new(None),
            left_out: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)`, with the `n` lines left out since the
    /// last one, or `None`, and this one is counted as left out.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.saturating_duration_since(at) < THROTTLE_EVERY => {
                self.left_out.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.left_out.swap(0, Ordering::Relaxed))
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_says_how_many_were_left_out() {
        let throttle = Throttle::new();
        let start = Instant::now();
        assert_eq!(throttle.allow(start), Some(0));
        for ms in [1, 500, 999] {
            assert_eq!(throttle.allow(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.allow(start + THROTTLE_EVERY), Some(3));
        assert_eq!(throttle.allow(start + THROTTLE_EVERY * 3), Some(0));
    }
}
