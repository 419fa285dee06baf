//! The reads of the Redis store: readiness, the snapshot behind `/api/stats`, and this
//! replica's heartbeat. Each may run twice without harm, so each runs on a fresh
//! connection when the one at hand turns out broken (`RedisSession::query`).

use tokio::time::Instant;

use super::session::RedisSession;
use crate::{
    counters::{CounterName, CounterReading, DayReading},
    store::{ALIVE_WINDOW, ReplicaStats, Snapshot, StoreError, StoreErrorKind},
};

impl RedisSession {
    /// Answers when Redis could take a visit now: a write of no visits, through the same
    /// script with the same keys and the same wait for replicas, succeeds. So readiness
    /// follows whatever refuses visits: the server gone, a replica instead of the
    /// primary, too few replicas, a full memory, an ACL, a key of the wrong type, a total
    /// at its limit. And today's salt for visitors' hashes can be read: a key of another
    /// type in its place refuses every visit to named counters. And Redis may not evict
    /// keys (`eviction`), read afresh.
    pub async fn ready(&self, answer_by: Instant) -> Result<(), StoreError> {
        self.check_eviction(answer_by).await?;
        self.probe(answer_by).await?;
        self.salt(self.today(), answer_by).await.map(|_| ())
    }

    /// The total, visits per replica and which replicas are alive.
    pub async fn snapshot(&self, answer_by: Instant) -> Result<Snapshot, StoreError> {
        let keys = &self.store.keys;
        let mut pipe = redis::pipe();
        pipe.get(&keys.total)
            .hgetall(&keys.replicas)
            .cmd("ZRANGE")
            .arg(&keys.heartbeats)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .hgetall(&keys.versions)
            .cmd("TIME");
        type Reply = (
            Option<String>,
            Vec<(String, String)>,
            Vec<(String, f64)>,
            Vec<(String, String)>,
            (i64, i64),
        );
        let (total, visits, heartbeats, versions, (secs, micros)): Reply =
            self.query(&pipe, answer_by).await?;
        let total = match total {
            None => 0,
            Some(total) => total.parse().map_err(|_| {
                StoreError::new(StoreErrorKind::WrongType, "the total is not an integer")
            })?,
        };
        let now_ms = secs * 1000 + micros / 1000;
        let window = ALIVE_WINDOW.as_millis() as i64;
        let mut replicas: std::collections::BTreeMap<String, ReplicaStats> = visits
            .into_iter()
            .filter_map(|(name, visits)| Some((name, visits.parse::<i64>().ok()?)))
            .map(|(name, visits)| {
                let stats = ReplicaStats {
                    name: name.clone(),
                    visits,
                    alive: false,
                    version: None,
                };
                (name, stats)
            })
            .collect();
        for (name, at) in heartbeats {
            replicas
                .entry(name.clone())
                .or_insert_with(|| ReplicaStats::new(name))
                .alive = now_ms - at as i64 <= window;
        }
        for (name, version) in versions {
            if let Some(stats) = replicas.get_mut(&name) {
                stats.version = Some(version);
            }
        }
        Ok(Snapshot {
            total,
            replicas: replicas.into_values().collect(),
        })
    }

    /// A counter's total and its last `days` days (today last); `None` when there is no
    /// such counter.
    pub async fn counter(
        &self,
        name: &CounterName,
        days: u32,
        answer_by: Instant,
    ) -> Result<Option<CounterReading>, StoreError> {
        let keys = &self.store.keys;
        let name = name.as_str();
        let tutorial = name == self.store.tutorial.as_str();
        // Connected first: the day is read from Redis's clock, which a connection measures.
        self.live(answer_by).await?;
        let today = self.today();
        let dates: Vec<_> = (0..days.max(1)).rev().map(|ago| today.minus(ago)).collect();
        let mut pipe = redis::pipe();
        pipe.hexists(&keys.registry, name);
        if tutorial {
            pipe.get(&keys.total);
        } else {
            pipe.hget(keys.counter_total(name), "total");
        }
        pipe.cmd("HMGET").arg(keys.counter_days(name));
        for date in &dates {
            pipe.arg(date.to_string());
        }
        for date in &dates {
            pipe.cmd("PFCOUNT").arg(keys.uniques(name, *date));
        }
        let mut replies: Vec<redis::Value> = self.query(&pipe, answer_by).await?;
        let wrong = |what: &str| {
            StoreError::new(
                StoreErrorKind::WrongType,
                format!("counter {name}: {what} is not a counter's"),
            )
        };
        let uniques = replies.split_off(3.min(replies.len()));
        let [registered, total, visits]: [redis::Value; 3] =
            replies.try_into().map_err(|_| wrong("the reply"))?;
        let registered: bool =
            redis::from_redis_value(registered).map_err(|_| wrong("registry"))?;
        let total: Option<String> = redis::from_redis_value(total).map_err(|_| wrong("total"))?;
        if !registered && total.is_none() && !tutorial {
            return Ok(None);
        }
        if registered && total.is_none() {
            // Deleted or renamed by hand: visits are refused for it (`ADD_VISITS`).
            return Err(StoreError::new(
                StoreErrorKind::TotalGone,
                format!("counter {name}: its total is gone, yet the registry holds it"),
            ));
        }
        let total = match total {
            Some(total) => total.parse().map_err(|_| wrong("the total"))?,
            None => 0,
        };
        let visits: Vec<Option<u64>> =
            redis::from_redis_value(visits).map_err(|_| wrong("its days"))?;
        let days = dates
            .iter()
            .zip(visits)
            .zip(uniques)
            .map(|((date, visits), unique)| {
                DayReading::new(
                    date.to_string(),
                    visits.unwrap_or(0),
                    redis::from_redis_value(unique).unwrap_or(0),
                )
            })
            .collect();
        Ok(Some(CounterReading { total, days }))
    }

    /// Makes a write of no visits, as a visit's (see `dataset`), then marks this replica
    /// alive (and records its version) and reads the eviction policy again; returns the
    /// total.
    ///
    /// The write keeps this process's number of the last acknowledged write up with
    /// every process's writes, not only its own: Redis gone back to a copy older than what
    /// any process had acknowledged a second before is found by every process, and at
    /// once, though the ones that counted those visits are idle or gone.
    pub async fn heartbeat(&self, answer_by: Instant) -> Result<Option<i64>, StoreError> {
        if let Err(error) = self.probe(answer_by).await {
            tracing::debug!(cause = error.detail(), "the heartbeat's write failed");
        }
        let store = &self.store;
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(store.scripts.heartbeat.get_hash())
            .arg(3)
            .arg(&store.keys.heartbeats)
            .arg(&store.keys.versions)
            .arg(&store.keys.total)
            .arg(&store.identity.replica)
            .arg(&store.identity.version);
        let ((_now, total),): ((i64, Option<String>),) = self.query(&pipe, answer_by).await?;
        // A policy that allows eviction is logged and refuses writes; the heartbeat stands.
        let _ = self.check_eviction(answer_by).await;
        Ok(total.and_then(|total| total.parse().ok()))
    }

    /// Removes this replica from the alive set, so pages stop showing it at once.
    pub async fn depart(&self, answer_by: Instant) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(&self.store.keys.heartbeats)
            .arg(&self.store.identity.replica)
            .ignore();
        self.query::<()>(&pipe, answer_by).await
    }
}
