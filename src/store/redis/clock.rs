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
#[derive(Debug, Default)]
pub struct RedisClock {
    offset_ms: AtomicI64,
}

impl RedisClock {
    /// Redis's clock at our monotonic instant `at`, in ms, never later than the truth.
    pub fn at(&self, at: Instant) -> i64 {
        self.offset_ms.load(Ordering::Relaxed) + monotonic_ms(at)
    }

    /// Redis said its clock read `redis_now` (ms); the answer arrived at `received`.
    pub fn observe(&self, redis_now: i64, received: Instant) {
        self.offset_ms
            .store(redis_now - monotonic_ms(received), Ordering::Relaxed);
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
        clock.observe(1_000_000, received);

        assert_eq!(clock.at(received), 1_000_000);
        assert_eq!(clock.at(received + Duration::from_millis(250)), 1_000_250);
    }
}
