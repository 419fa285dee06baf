//! The administrator's changes, and reading every counter for export. Each change is one
//! script or one MULTI, so a batch of visits sees a counter before or after it, never
//! half changed.

use std::collections::BTreeMap;

use base64::Engine;
use redis::Value;
use tokio::time::Instant;

use super::{scripts, session::RedisSession};
use crate::{
    counters::{
        CounterName, Day,
        export::{CounterExport, REDIS_HLL, UniqueExport, is_redis_hll, with_stale_cache},
    },
    store::{AdminError, Previous, StoreError, StoreErrorKind},
};

/// Counters read per page when listing.
const PAGE: usize = 200;

impl RedisSession {
    /// Sets a counter's total; the total before, if there was one.
    pub async fn set_total(
        &self,
        name: &CounterName,
        total: i64,
        answer_by: Instant,
    ) -> Result<Previous, AdminError> {
        let store = &self.store;
        store.dataset.check_held().map_err(AdminError::Store)?;
        let tutorial = *name == store.tutorial;
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(scripts::SET_TOTAL)
            .arg(2)
            .arg(&store.keys.registry)
            .arg(store.keys.counter_total(name.as_str()))
            .arg(name.as_str())
            .arg(total)
            .arg(if tutorial { "1" } else { "0" })
            .arg(store.policy.max_counters)
            .arg(store.tutorial.as_str());
        match self.change::<(Option<String>,)>(&pipe, answer_by).await {
            Ok((previous,)) => Ok(match previous {
                None => Previous::Absent,
                Some(text) => text.parse().map_or(Previous::Unreadable, Previous::Total),
            }),
            Err(error) if error.detail().contains("TOOMANY") => Err(AdminError::TooMany),
            Err(error) => Err(self.admin_error(error, answer_by).await),
        }
    }

    /// Deletes a counter with its history; whether anything of it was there. Its keys go
    /// whatever they hold: deleting is how a counter whose key has the wrong type starts
    /// again. Its unique visitors go for every day its history names and every day that
    /// may still have them (a sketch outlives its day by the days kept).
    pub async fn delete(
        &self,
        name: &CounterName,
        answer_by: Instant,
    ) -> Result<Previous, AdminError> {
        self.store.dataset.check_held().map_err(AdminError::Store)?;
        let keys = &self.store.keys;
        let hash = keys.counter_days(name.as_str());
        let mut pipe = redis::pipe();
        pipe.cmd("HKEYS").arg(&hash);
        let mut days: Vec<Day> = match self.query::<(Vec<String>,)>(&pipe, answer_by).await {
            Ok((fields,)) => fields
                .iter()
                .filter_map(|field| Day::parse(field))
                .collect(),
            Err(error) if error.kind() == StoreErrorKind::WrongType => Vec::new(),
            Err(error) => return Err(AdminError::Store(error)),
        };
        let today = self.today();
        days.extend((0..=self.store.policy.retention_days).map(|back| today.minus(back)));
        days.sort_unstable();
        days.dedup();
        let uniques: Vec<String> = days
            .into_iter()
            .map(|day| keys.uniques(name.as_str(), day))
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(scripts::DELETE)
            .arg(2 + uniques.len())
            .arg(&keys.registry)
            .arg(&hash)
            .arg(&uniques)
            .arg(name.as_str());
        let ((existed, total),): ((i64, String),) = match self.change(&pipe, answer_by).await {
            Ok(deleted) => deleted,
            Err(error) => return Err(self.admin_error(error, answer_by).await),
        };
        Ok(match (existed, total.as_str()) {
            (0, _) => Previous::Absent,
            // Registered, not counted yet: made by a first visit whose count was undone.
            (_, "") => Previous::Total(0),
            (_, total) => total.parse().map_or(Previous::Unreadable, Previous::Total),
        })
    }

    /// A page of counters' names, from `cursor` (0: the first page); the cursor of the
    /// next page, if any. In no particular order.
    pub async fn list(
        &self,
        cursor: u64,
        answer_by: Instant,
    ) -> Result<(Vec<CounterName>, Option<String>), StoreError> {
        self.store.dataset.check_held()?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSCAN")
            .arg(&self.store.keys.registry)
            .arg(cursor)
            .arg("COUNT")
            .arg(PAGE);
        let ((next, entries),): ((String, Vec<String>),) = self.query(&pipe, answer_by).await?;
        let names = entries
            .chunks(2)
            .filter_map(|pair| CounterName::parse(&pair[0]).ok())
            .collect();
        Ok((names, (next != "0").then_some(next)))
    }

    /// Totals of `names`, in order (0 for a counter without one), each or why it could
    /// not be read: one counter's key of another type fails that counter only.
    pub async fn totals(
        &self,
        names: &[CounterName],
        answer_by: Instant,
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        // A page of none (no counter yet; HSCAN may give an empty page before the end):
        // nothing to ask, and an empty pipeline is refused.
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let store = &self.store;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for name in names {
            if *name == store.tutorial {
                pipe.get(&store.keys.total);
            } else {
                pipe.hget(store.keys.counter_total(name.as_str()), "total");
            }
        }
        let totals: Vec<redis::RedisResult<Option<String>>> = self.query(&pipe, answer_by).await?;
        Ok(totals
            .into_iter()
            .map(|total| match total {
                Ok(None) => Ok(0),
                Ok(Some(total)) => total.parse().map_err(|_| {
                    StoreError::new(StoreErrorKind::WrongType, "the total is not an integer")
                }),
                Err(error) => Err(super::classify(error)),
            })
            .collect())
    }

    /// Everything a counter holds, for export; `None` when there is no such counter. The
    /// total and the days are read at one moment (a named counter's are fields of one
    /// hash; the tutorial's total is read in the same transaction), so that a line never
    /// holds a total older than its days; the unique-visitor sketches, estimates, are
    /// read just after.
    pub async fn export(
        &self,
        name: &CounterName,
        answer_by: Instant,
    ) -> Result<Option<CounterExport>, StoreError> {
        self.store.dataset.check_held()?;
        let keys = &self.store.keys;
        let days_key = keys.counter_days(name.as_str());
        let (total, fields): (Option<String>, BTreeMap<String, String>) =
            if *name == self.store.tutorial {
                let mut pipe = redis::pipe();
                pipe.atomic().get(&keys.total).hgetall(&days_key);
                self.query(&pipe, answer_by).await?
            } else {
                let mut pipe = redis::pipe();
                pipe.hgetall(&days_key);
                let (fields,): (BTreeMap<String, String>,) = self.query(&pipe, answer_by).await?;
                (fields.get("total").cloned(), fields)
            };
        let total: i64 = match total {
            None => 0,
            Some(total) => total.parse().map_err(|_| {
                StoreError::new(StoreErrorKind::WrongType, "the total is not an integer")
            })?,
        };
        // A day whose visits are not a count (changed by hand) stops the export, as an
        // unreadable total does: left out, the export would look whole without it.
        let mut days: BTreeMap<String, u64> = BTreeMap::new();
        for (field, visits) in fields {
            if Day::parse(&field).is_none() {
                continue;
            }
            let visits = visits.parse().map_err(|_| {
                StoreError::new(
                    StoreErrorKind::WrongType,
                    format!("the visits of {field} are not a whole number from 0"),
                )
            })?;
            days.insert(field, visits);
        }
        let mut pipe = redis::pipe();
        for day in days.keys().filter_map(|d| Day::parse(d)) {
            let key = keys.uniques(name.as_str(), day);
            pipe.cmd("PFCOUNT").arg(&key).get(&key);
        }
        let replies: Vec<Value> = if days.is_empty() {
            Vec::new()
        } else {
            self.query(&pipe, answer_by).await?
        };
        let mut unique = BTreeMap::new();
        for (day, reply) in days.keys().zip(replies.chunks(2)) {
            let estimate: u64 = redis::from_redis_value(reply[0].clone()).unwrap_or(0);
            let sketch: Option<Vec<u8>> = redis::from_redis_value(reply[1].clone()).ok().flatten();
            if let Some(sketch) = sketch {
                unique.insert(
                    day.clone(),
                    UniqueExport {
                        estimate,
                        format: REDIS_HLL.to_owned(),
                        sketch: base64::engine::general_purpose::STANDARD.encode(sketch),
                    },
                );
            }
        }
        Ok(Some(CounterExport {
            name: name.to_string(),
            total,
            days,
            unique,
        }))
    }

    /// Writes an exported counter in one MULTI: its total, its days, and the unique
    /// sketches Redis can take (`redis-hll`), each kept as long as the history is. The
    /// counter is then one the administrator created.
    pub async fn import(
        &self,
        counter: &CounterExport,
        name: &CounterName,
        answer_by: Instant,
    ) -> Result<(), AdminError> {
        let store = &self.store;
        store.dataset.check_held().map_err(AdminError::Store)?;
        let keys = &store.keys;
        let hash = keys.counter_days(name.as_str());
        // The days the counter has now, whose sketches go with them. Asked before the
        // transaction, which applies the commands that do not fail: a hash of the wrong
        // type refuses the import here, before the name is registered.
        let mut check = redis::pipe();
        check
            .hexists(&keys.registry, name.as_str())
            .cmd("HLEN")
            .arg(&keys.registry)
            .hexists(&keys.registry, store.tutorial.as_str())
            .cmd("HKEYS")
            .arg(&hash);
        let (known, registered, tutorial_known, fields): (bool, u64, bool, Vec<String>) =
            match self.query(&check, answer_by).await {
                Ok(checked) => checked,
                Err(error) => return Err(self.admin_error(error, answer_by).await),
            };
        // The tutorial's counter always has its place among the most allowed.
        let reserved = u64::from(!tutorial_known);
        if !known && *name != store.tutorial && registered + reserved >= store.policy.max_counters {
            return Err(AdminError::TooMany);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.hset(&keys.registry, name.as_str(), "admin").ignore();
        // The counter becomes the line's: days and sketches it does not give are gone,
        // those of the days it had and today's (a visit since may have made it).
        pipe.del(&hash).ignore();
        let mut days: Vec<Day> = fields
            .iter()
            .filter_map(|field| Day::parse(field))
            .collect();
        days.push(self.today());
        days.sort_unstable();
        days.dedup();
        for day in days {
            pipe.del(keys.uniques(name.as_str(), day)).ignore();
        }
        if *name == store.tutorial {
            pipe.set(&keys.total, counter.total).ignore();
        } else {
            pipe.hset(&hash, "total", counter.total).ignore();
        }
        for (day, visits) in &counter.days {
            pipe.hset(&hash, day, visits).ignore();
        }
        for (day, unique) in &counter.unique {
            let Some(day) = Day::parse(day) else { continue };
            if unique.format != REDIS_HLL {
                continue;
            }
            let Ok(sketch) = base64::engine::general_purpose::STANDARD.decode(&unique.sketch)
            else {
                continue;
            };
            if !is_redis_hll(&sketch) {
                continue;
            }
            let until = day
                .plus(store.policy.retention_days)
                .end()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let key = keys.uniques(name.as_str(), day);
            pipe.set(&key, with_stale_cache(sketch)).ignore();
            pipe.cmd("EXPIREAT").arg(&key).arg(until).ignore();
        }
        match self.change::<()>(&pipe, answer_by).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.admin_error(error, answer_by).await),
        }
    }

    /// What an administrator's change that failed with `error` is refused for: a key of
    /// the wrong type is the registry's when the registry is not a hash (then no change
    /// can be made until it is fixed in Redis), or one of the counter's.
    async fn admin_error(&self, error: StoreError, answer_by: Instant) -> AdminError {
        if error.kind() != StoreErrorKind::WrongType {
            return AdminError::Store(error);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("TYPE").arg(&self.store.keys.registry);
        match self.query::<(String,)>(&pipe, answer_by).await {
            Ok((kind,)) if kind != "hash" && kind != "none" => AdminError::Registry,
            _ => AdminError::Store(error),
        }
    }
}
