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
    dataset::Moment,
    session::{MAX_ATTEMPTS, RedisSession, Tried},
};
use crate::{
    counters::{Day, Tally, TallyResult, visitor},
    deadlines::Deadlines,
    store::{StoreError, StoreErrorKind},
};

const MS_PER_DAY: i64 = 86_400_000;

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

/// A batch as sent: the same keys and arguments on every attempt, the deadline apart.
struct Prepared {
    batch: u64,
    keys: Vec<String>,
    /// Arguments 6 and on (see `scripts::ADD_VISITS`).
    args: Vec<Vec<u8>>,
    tallies: usize,
}

impl RedisSession {
    /// Adds every tally's visits in one write and returns what became of each. An error
    /// that is not `in_doubt` means nothing was applied, nor will be.
    pub async fn add_visits(
        &self,
        tallies: &[Tally],
        answer_by: Instant,
    ) -> Result<Vec<TallyResult>, StoreError> {
        // Connected first: the day is read from Redis's clock, which a connection measures.
        self.live(answer_by).await?;
        let batch = self.writer.next_batch.fetch_add(1, Ordering::Relaxed);
        let day = self.today();
        let salt = if tallies.iter().any(|t| !t.visitors.is_empty()) {
            Some(self.salt(day, answer_by).await?)
        } else {
            None
        };
        let prepared = self.prepare(batch, tallies, day, salt.as_ref());
        self.write(&prepared, answer_by).await
    }

    /// Checks that a visit of the tutorial counter could be written now, replicas
    /// included, and changes nothing (a probe takes batch number 0, never a batch's).
    pub(super) async fn probe(&self, answer_by: Instant) -> Result<(), StoreError> {
        let tutorial = Tally {
            counter: self.store.tutorial.clone(),
            visits: 0,
            visitors: Vec::new(),
        };
        self.live(answer_by).await?;
        let prepared = self.prepare(0, &[tutorial], self.today(), None);
        self.write(&prepared, answer_by).await.map(drop)
    }

    /// Today on Redis's clock, as near as this process knows it.
    pub(super) fn today(&self) -> Day {
        Day((self.clock.at(Instant::now()).max(0) / MS_PER_DAY) as u32)
    }

    fn prepare(
        &self,
        batch: u64,
        tallies: &[Tally],
        day: Day,
        salt: Option<&[u8; 16]>,
    ) -> Prepared {
        let store = &self.store;
        let keys = &store.keys;
        let policy = &store.policy;
        let mut names = vec![
            self.writer.records_key.clone(),
            keys.replicas.clone(),
            keys.registry.clone(),
            keys.dataset.clone(),
            keys.writes.clone(),
            keys.written.clone(),
        ];
        let unique_until = day
            .plus(policy.retention_days)
            .end()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Written once: a date is slow to format, and every tally's key holds it.
        let date = day.to_string();
        let mut args: Vec<Vec<u8>> = vec![
            date.clone().into_bytes(),
            policy.retention_days.to_string().into_bytes(),
            unique_until.to_string().into_bytes(),
            policy.max_counters.to_string().into_bytes(),
            if policy.closed {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            store.tutorial.as_str().as_bytes().to_vec(),
            store.dataset.id().as_bytes().to_vec(),
            store.dataset.acknowledged().to_string().into_bytes(),
            store.dataset.replacement().as_bytes().to_vec(),
            store.dataset.own(Moment::now()).to_string().into_bytes(),
        ];
        for tally in tallies {
            let name = tally.counter.as_str();
            names.push(keys.counter_total(name));
            names.push(keys.counter_days(name));
            names.push(keys.uniques_on(name, &date));
            let mut visitors: Vec<u64> = match salt {
                Some(salt) => tally
                    .visitors
                    .iter()
                    .map(|&raw| visitor::salted(salt, raw))
                    .collect(),
                None => Vec::new(),
            };
            visitors.sort_unstable();
            visitors.dedup();
            args.push(name.as_bytes().to_vec());
            args.push(tally.visits.to_string().into_bytes());
            args.push(visitors.len().to_string().into_bytes());
            args.extend(visitors.iter().map(|v| format!("{v:x}").into_bytes()));
        }
        Prepared {
            batch,
            keys: names,
            args,
            // A probe's answer has no results.
            tallies: if batch == 0 { 0 } else { tallies.len() },
        }
    }

    async fn write(
        &self,
        prepared: &Prepared,
        answer_by: Instant,
    ) -> Result<Vec<TallyResult>, StoreError> {
        self.store.eviction.check()?;
        let mut maybe_applied = false;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            match self.write_once(prepared, answer_by).await {
                Tried::Done(results) => return Ok(results),
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

    async fn write_once(&self, prepared: &Prepared, answer_by: Instant) -> Tried<Vec<TallyResult>> {
        let live = match self.live(answer_by).await {
            Ok(live) => live,
            Err(error) => return Tried::Failed(error),
        };
        let now = Instant::now();
        let sent = Moment::now();
        if now >= answer_by {
            return Tried::Failed(StoreError::new(
                StoreErrorKind::Timeout,
                "no time left to send the write",
            ));
        }
        let arrive_by = self.clock.at(Deadlines::arrival_by(now, answer_by));
        let store = &self.store;
        let mut pipe = redis::pipe();
        let script = pipe
            .ignore_errors()
            .cmd("EVALSHA")
            .arg(store.scripts.add_visits.get_hash())
            .arg(prepared.keys.len())
            .arg(&prepared.keys)
            .arg(&store.identity.replica)
            .arg(arrive_by)
            .arg(prepared.batch)
            .arg(BATCH_RECORDS_KEPT)
            .arg(BATCH_RECORDS_TTL.as_millis() as u64);
        for arg in &prepared.args {
            script.arg(arg);
        }
        let replicas_wanted = match self.add_replication_wait(&mut pipe, now, answer_by) {
            Ok(wanted) => wanted,
            // A failover is under way: nothing is sent.
            Err(error) => return Tried::Failed(error),
        };
        if replicas_wanted.is_some() {
            // Redis's clock after the wait, which may have lasted: the script's time,
            // taken before it, would set Redis's clock back by as long (`clock`), and the
            // next writes' deadlines would pass before they arrive.
            pipe.cmd("TIME");
        }
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
        let (redis_now, _replayed, results, number) =
            match <RedisResult<(i64, i64, String, i64)>>::from_redis_value(script) {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    if let Some(redis_now) = expired_at(&error) {
                        self.clock.observe(redis_now, now, received);
                    }
                    // A write the script could not undo whole: its visits may be counted.
                    if error.code() == Some("PARTIAL") {
                        return Tried::Failed(classify(error));
                    }
                    if error.code() == Some("DATALOST") {
                        let detail = error.detail().unwrap_or_default();
                        return Tried::Failed(self.store.dataset.lost(&store.keys.dataset, detail));
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
        let results = match parse_results(&results, prepared.tallies) {
            Ok(results) => results,
            Err(error) => return Tried::Failed(error),
        };
        let Some(wanted) = replicas_wanted else {
            self.clock.observe(redis_now, now, received);
            self.acknowledged(prepared, number, sent);
            return Tried::Done(results);
        };
        let reached = replies.next().map(replicas_reached);
        if let Some(Ok((secs, micros))) = replies.next().map(<(i64, i64)>::from_redis_value) {
            self.clock
                .observe(secs * 1000 + micros / 1000, now, received);
        }
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
        self.acknowledged(prepared, number, sent);
        Tried::Done(results)
    }

    /// A write (or probe) sent at `sent` was acknowledged: its number (a probe's, the
    /// last write's, whosever it was) is one Redis must not fall below, and this process's
    /// own number was renewed.
    fn acknowledged(&self, prepared: &Prepared, number: i64, sent: Moment) {
        let dataset = &self.store.dataset;
        dataset.acknowledge(number);
        let own = (prepared.batch != 0).then_some(number);
        dataset.own_renewed(own, sent);
    }

    /// Today's salt for visitors' hashes: the one Redis holds for the day (made by the
    /// first replica to need it, and gone with the day), cached for the day.
    pub(super) async fn salt(&self, day: Day, answer_by: Instant) -> Result<[u8; 16], StoreError> {
        if let Some((cached, salt)) = *self.salt.lock().unwrap_or_else(|e| e.into_inner())
            && cached == day
        {
            return Ok(salt);
        }
        let key = self.store.keys.salt(day);
        let ends = day
            .end()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let fresh: String = visitor::new_salt()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(fresh)
            .arg("NX")
            .arg("EXAT")
            .arg(ends)
            .ignore()
            .get(&key);
        let (held,): (Option<Vec<u8>>,) = self.query(&pipe, answer_by).await?;
        let salt = visitor::salt_from(&held.unwrap_or_default());
        *self.salt.lock().unwrap_or_else(|e| e.into_inner()) = Some((day, salt));
        Ok(salt)
    }

    /// Adds WAIT (or WAITAOF) after the write when replicas must confirm it (the setting,
    /// and with sentinels the failover rule); returns how many must. Redis waits at most
    /// until halfway to the answer deadline, so that its answer is back in time. An
    /// error, and nothing to send, while a failover is under way.
    pub(super) fn add_replication_wait(
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
pub(super) fn replicas_reached(reply: Value) -> RedisResult<i64> {
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

/// The script's results, one per tally.
fn parse_results(text: &str, tallies: usize) -> Result<Vec<TallyResult>, StoreError> {
    let results: Vec<TallyResult> = text
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part {
            "U" => Some(TallyResult::Unknown),
            "M" => Some(TallyResult::TooMany),
            "L" => Some(TallyResult::AtLimit),
            "S" => Some(TallyResult::ShareAtLimit),
            "W" => Some(TallyResult::WrongType),
            "G" => Some(TallyResult::Gone),
            total => total.parse().ok().map(TallyResult::Counted),
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::WrongType,
                format!("a total is not an integer: {text:?}"),
            )
        })?;
    if results.len() != tallies {
        return Err(StoreError::new(
            StoreErrorKind::Failed,
            format!("{} results for {tallies} tallies", results.len()),
        )
        .with_doubt());
    }
    Ok(results)
}
