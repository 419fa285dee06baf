//! Redis's clock as seen from this process, for write deadlines.
//!
//! A write carries the time on Redis's clock after which Redis must refuse it. That time
//! comes from this process's monotonic clock plus an offset, measured from every answer
//! that carries Redis's time (`TIME` when a connection opens, and every write: the
//! script's time, or with replicas to wait for, `TIME` after `WAIT`, which may have waited
//! for hundreds of milliseconds since the script ran).

use std::sync::{
    LazyLock,
    atomic::{AtomicI64, Ordering},
};

use tokio::time::Instant;

/// The start of this process's monotonic clock, against which Redis's clock is measured.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn monotonic_ms(at: Instant) -> i64 {
    at.saturating_duration_since(*EPOCH).as_millis() as i64
}

/// Redis's clock minus this process's monotonic clock, in ms, never above the truth: each
/// reading takes Redis's time as if it had been read when the answer arrived, which is
/// later than when Redis read it. Deadlines set with it are therefore never later on
/// Redis's clock than meant.
///
/// An answer that waited to be read (the process paused, or its threads busy under load)
/// makes a reading too low by as long, and deadlines as much earlier: writes refused as
/// late though they arrived in time. So the estimate is the highest reading, as each is
/// a lower bound, and falls only when a reading proves it too high: Redis read its clock
/// after the request was sent, so its time minus the send time bounds the offset from
/// above (Redis's clock set back, or another server's after a failover: a server whose
/// clock is behind by less than a round trip leaves deadlines later by as much, a few
/// milliseconds at most).
#[derive(Debug, Default)]
pub struct RedisClock {
    offset_ms: AtomicI64,
}

impl RedisClock {
    /// Redis's clock at our monotonic instant `at`, in ms, never later than the truth.
    pub fn at(&self, at: Instant) -> i64 {
        self.offset_ms.load(Ordering::Relaxed) + monotonic_ms(at)
    }

    /// Redis said its clock read `redis_now` (ms), in answer to a request sent at `sent`;
    /// the answer arrived at `received`.
    pub fn observe(&self, redis_now: i64, sent: Instant, received: Instant) {
        let lower = redis_now - monotonic_ms(received);
        let upper = redis_now - monotonic_ms(sent);
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                Some(if current > upper {
                    lower
                } else {
                    current.max(lower)
                })
            });
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
