//! Redis's clock as seen from this process, for write deadlines.
//!
//! A write carries the time on Redis's clock after which Redis must refuse it. That time
//! comes from this process's monotonic clock plus an offset, measured from every answer
//! that carries Redis's time (`TIME` when a connection opens, and every write: the
//! script's time, or with replicas to wait for, `TIME` after `WAIT`, which may have waited
//! for hundreds of milliseconds since the script ran).

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::time::Instant;

/// How far a reading's bound from above may fall below the estimate by rounding alone:
/// both clocks are read in whole milliseconds, so the estimate (a bound from below) may
/// be up to a millisecond above the truth and the bound a millisecond below it.
const ROUNDING_MS: i64 = 1;

/// Redis's clock minus this process's monotonic clock, in ms, never above the truth by
/// more than the millisecond both clocks are read in: each reading takes Redis's time as
/// if it had been read when the answer arrived, which is later than when Redis read it.
/// Deadlines set with it are therefore never later on Redis's clock than meant.
///
/// An answer that waited to be read (the process paused, or its threads busy under load)
/// makes a reading too low by as long, and deadlines as much earlier: writes refused as
/// late though they arrived in time. So the estimate is the highest reading, as each is
/// a lower bound, and falls only when a reading proves it too high: Redis read its clock
/// after the request was sent, so its time minus the send time bounds the offset from
/// above (Redis's clock set back, or another server's after a failover: a server whose
/// clock is behind by less than a round trip leaves deadlines later by as much, a few
/// milliseconds at most). A bound below the estimate by no more than rounding proves
/// nothing: falling then to a reading that waited to be read would refuse the next
/// writes as late.
#[derive(Debug)]
pub struct RedisClock {
    /// This process's monotonic clock is measured from here.
    epoch: Instant,
    offset_ms: AtomicI64,
}

impl Default for RedisClock {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            offset_ms: AtomicI64::new(0),
        }
    }
}

impl RedisClock {
    /// Redis's clock at our monotonic instant `at`, in ms, never later than the truth.
    pub fn at(&self, at: Instant) -> i64 {
        self.offset_ms.load(Ordering::Relaxed) + self.monotonic_ms(at)
    }

    /// Redis said its clock read `redis_now` (ms), in answer to a request sent at `sent`;
    /// the answer arrived at `received`.
    pub fn observe(&self, redis_now: i64, sent: Instant, received: Instant) {
        let lower = redis_now - self.monotonic_ms(received);
        let upper = redis_now - self.monotonic_ms(sent);
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                Some(if current > upper + ROUNDING_MS {
                    lower
                } else {
                    current.max(lower)
                })
            });
    }

    fn monotonic_ms(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.epoch).as_millis() as i64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reading_maps_later_instants_onto_redis_time() {
        let clock = RedisClock::default();
        let received = Instant::now();
        clock.observe(1_000_000, received, received);

        assert_eq!(clock.at(received), 1_000_000);
        assert_eq!(clock.at(received + Duration::from_millis(250)), 1_000_250);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_read_late_does_not_set_deadlines_early() {
        let clock = RedisClock::default();
        let sent = Instant::now();
        clock.observe(1_000_000, sent, sent);
        // Redis read its clock at once; the answer was read 3 s later.
        let late = sent + Duration::from_secs(3);
        clock.observe(1_000_000, sent, late);

        assert_eq!(clock.at(late), 1_003_000, "the earlier reading stands");
        // A timelier reading raises it.
        clock.observe(1_003_010, late, late + Duration::from_millis(5));
        assert_eq!(clock.at(late), 1_003_005);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_read_late_and_a_millisecond_low_by_rounding_does_not_set_deadlines_early() {
        // Redis's clock runs 1000.8 ms ahead of ours; both are read in whole milliseconds.
        let clock = RedisClock::default();
        let base = Instant::now();
        let at = |us: u64| base + Duration::from_micros(us);
        // Redis read 1000.8 + 0.4 = 1001.2 → 1001; ours 0.5 → 0.
        clock.observe(1_001, at(300), at(500));
        // Sent at 10.1 ms, read by Redis at 10.15 (1010.95 → 1010), the answer read after
        // a 1.5 s pause: by rounding, its bound from above (1010 - 10) is below the
        // estimate (1001), though the estimate is within a millisecond of the truth.
        let late = at(1_510_000);
        clock.observe(1_010, at(10_100), late);

        assert!(
            clock.at(late) >= 1_000 + 1_510_000 / 1000,
            "deadlines set {} ms early",
            1_000 + 1_510 - clock.at(late)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_set_back_is_followed() {
        let clock = RedisClock::default();
        let sent = Instant::now();
        clock.observe(1_000_000, sent, sent);
        // Two seconds later Redis's clock reads a second less than it did: set back.
        let later = sent + Duration::from_secs(2);
        clock.observe(999_000, later, later + Duration::from_millis(1));

        assert_eq!(clock.at(later + Duration::from_millis(1)), 999_000);
    }
}
