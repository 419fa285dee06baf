//! The exactly-once write of a batch of visits.
//!
//! Each batch has a sequence number, and the write script keeps a record of the batches
//! this writer applied (per writer, for a few minutes). When a connection breaks with a
//! batch under way (Redis restarted, an idle timeout closed it, the primary died or was
//! demoted), the batch is sent again on a fresh connection: if the first attempt was
//! applied, its recorded total comes back; if not, it is applied now. A write is sent
//! with a deadline on Redis's clock (`Deadlines::arrival_by`), after which the script
//! refuses it. With replicas to wait for, `WAIT` (or `WAITAOF`) follows the script in the
//! same round trip. Only a batch whose answer never came back in time, or whose replicas
//! did not confirm it, is *in doubt*.

use std::sync::atomic::{AtomicU64, Ordering};

use redis::{FromRedisValue, Pipeline, RedisError, RedisResult, Value};
use tokio::time::{Instant, timeout_at};

use super::{
    BATCH_RECORDS_KEPT, BATCH_RECORDS_TTL, classify,
    session::{MAX_ATTEMPTS, RedisSession, Tried},
};
use crate::{
    deadlines::Deadlines,
    store::{StoreError, StoreErrorKind},
};

/// This writer's identity in Redis: its batch records, and the number of its next batch.
pub(super) struct BatchWriter {
    records_key: String,
    next_batch: AtomicU64,
}

impl BatchWriter {
    /// A writer with a random token of its own under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            records_key: format!("{prefix}{:016x}", fastrand::u64(..)),
            next_batch: AtomicU64::new(1),
        }
    }
}

impl RedisSession {
    /// Adds `count` visits in one write and returns the total after them. An error that
    /// is not `in_doubt` means nothing was applied, nor will be. With no visits, checks
    /// that a write would succeed now, replicas included, and changes nothing.
    pub async fn add_visits(&self, count: u64, answer_by: Instant) -> Result<i64, StoreError> {
        // A probe records nothing, so it takes no batch number (0 is never a batch's).
        let batch = if count == 0 {
            0
        } else {
            self.writer.next_batch.fetch_add(1, Ordering::Relaxed)
        };
        let mut maybe_applied = false;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            match self.write_once(count, batch, answer_by).await {
                Tried::Done(total) => return Ok(total),
                Tried::Failed(error) => return Err(error.doubt_if(maybe_applied)),
                Tried::Retry { error, maybe_sent } => {
                    maybe_applied |= maybe_sent;
                    last = Some(error);
                }
            }
        }
        Err(last
            .unwrap_or_else(StoreError::timeout)
            .doubt_if(maybe_applied))
    }

    async fn write_once(&self, count: u64, batch: u64, answer_by: Instant) -> Tried<i64> {
        let live = match self.live(answer_by).await {
            Ok(live) => live,
            Err(error) => return Tried::Failed(error),
        };
        let now = Instant::now();
        if now >= answer_by {
            return Tried::Failed(StoreError::new(
                StoreErrorKind::Timeout,
                "no time left to send the write",
            ));
        }
        let arrive_by = self.clock.at(Deadlines::arrival_by(now, answer_by));
        let store = &self.store;
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("EVALSHA")
            .arg(store.scripts.add_visits.get_hash())
            .arg(3)
            .arg(&store.keys.total)
            .arg(&store.keys.replicas)
            .arg(&self.writer.records_key)
            .arg(count)
            .arg(&store.identity.replica)
            .arg(arrive_by)
            .arg(batch)
            .arg(BATCH_RECORDS_KEPT)
            .arg(BATCH_RECORDS_TTL.as_millis() as u64);
        let replicas_wanted = match self.add_replication_wait(&mut pipe, now, answer_by) {
            Ok(wanted) => wanted,
            // A failover is under way: nothing is sent.
            Err(error) => return Tried::Failed(error),
        };
        let mut connection = live.connection.clone();
        let replies =
            match timeout_at(answer_by, pipe.query_async::<Vec<Value>>(&mut connection)).await {
                Ok(Ok(replies)) => replies,
                Ok(Err(error)) => return self.failed_attempt(&live, error, true),
                Err(_) => {
                    // The write may be applied, its answer late: Redis paused, or the network
                    // stalled. Later calls should not queue behind it on this connection.
                    self.broken(&live, false);
                    return Tried::Failed(StoreError::timeout());
                }
            };
        let received = Instant::now();
        let mut replies = replies.into_iter();
        let script = replies.next().unwrap_or(Value::Nil);
        let (total, redis_now, _replayed) =
            match <RedisResult<(String, i64, i64)>>::from_redis_value(script) {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    if let Some(now) = expired_at(&error) {
                        self.clock.observe(now, received);
                    }
                    return self.failed_attempt(&live, error, false);
                }
                Err(error) => {
                    return Tried::Failed(StoreError::new(
                        StoreErrorKind::Failed,
                        format!("unexpected reply to the write: {error}"),
                    ));
                }
            };
        self.clock.observe(redis_now, received);
        let Ok(total) = total.parse::<i64>() else {
            return Tried::Failed(StoreError::new(
                StoreErrorKind::WrongType,
                format!("the total is not an integer: {total:?}"),
            ));
        };
        if let Some(wanted) = replicas_wanted {
            let reached = replies.next().map(replicas_reached);
            match reached {
                Some(Ok(reached)) if reached >= wanted => {}
                Some(Ok(reached)) => {
                    self.store.locator.replicas_fell_short();
                    return Tried::Failed(
                        StoreError::new(
                            StoreErrorKind::Replication,
                            format!("the write reached {reached} of {wanted} replicas in time"),
                        )
                        .with_doubt(),
                    );
                }
                Some(Err(error)) => return Tried::Failed(classify(error).with_doubt()),
                None => {
                    return Tried::Failed(
                        StoreError::new(StoreErrorKind::Failed, "no answer to WAIT").with_doubt(),
                    );
                }
            }
        }
        Tried::Done(total)
    }

    /// Adds WAIT (or WAITAOF) after the write when replicas must confirm it (the setting,
    /// and with sentinels the failover rule); returns how many must. Redis waits at most
    /// until halfway to the answer deadline, so that its answer is back in time. An
    /// error, and nothing to send, while a failover is under way.
    fn add_replication_wait(
        &self,
        pipe: &mut Pipeline,
        now: Instant,
        answer_by: Instant,
    ) -> Result<Option<i64>, StoreError> {
        let store = &self.store;
        let replicas = store.locator.replicas_to_wait(store.min_replicas)?;
        if replicas == 0 && !store.wait_aof {
            return Ok(None);
        }
        let wait_ms = (answer_by.saturating_duration_since(now).as_millis() as u64 / 2).max(1);
        if store.wait_aof {
            pipe.cmd("WAITAOF").arg(1).arg(replicas).arg(wait_ms);
        } else {
            pipe.cmd("WAIT").arg(replicas).arg(wait_ms);
        }
        Ok(Some(i64::from(replicas)))
    }
}

/// Redis's clock when it refused a write for arriving after its deadline.
fn expired_at(error: &RedisError) -> Option<i64> {
    if error.code() != Some("EXPIRED") {
        return None;
    }
    error.detail()?.split_whitespace().last()?.parse().ok()
}

/// How many replicas WAIT (an integer) or WAITAOF (local and replica counts) confirmed.
fn replicas_reached(reply: Value) -> RedisResult<i64> {
    match reply {
        Value::Int(replicas) => Ok(replicas),
        Value::Array(counts) => {
            let counts: Vec<i64> = FromRedisValue::from_redis_value(Value::Array(counts))?;
            match counts[..] {
                // WAITAOF: without the primary's own fsync, no replica counts.
                [local, replicas] if local >= 1 => Ok(replicas),
                _ => Ok(-1),
            }
        }
        other => <RedisResult<i64>>::from_redis_value(other)?,
    }
}
