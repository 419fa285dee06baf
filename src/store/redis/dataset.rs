//! Which data the service counts in. Redis can lose all it holds while the service runs:
//! restarted without persistence, `FLUSHALL` or `FLUSHDB`, a `REPLICAOF` to a server with
//! other data, a failover to a server that never copied the primary. Counting on from
//! what it holds then would hand out numbers again that were acknowledged before.
//!
//! So the data carries a mark: a random id under `<key>:dataset`, made by the first
//! connection to find none, and taken by every service process when it first connects.
//! Every write carries the mark the process took, and the write script refuses one whose
//! mark Redis no longer holds (`DATALOST`): visits are refused and the service is not
//! ready, saying the store no longer holds the counts, until the latest data is restored
//! (a copy of Redis's files taken after the last visit counted: an older one is refused
//! as below) or the service is restarted, which takes what Redis holds as it is.
//!
//! Data can also go back in time with its mark: a snapshot loaded after a crash, a backup
//! restored, a server that fell behind made primary. So every write is numbered too, and
//! each process remembers the number of the last write acknowledged to it: a write that
//! finds Redis at a lower number puts a new mark in place (`scripts::ADD_VISITS`), and
//! every process then refuses as above. Other processes' writes can carry the number
//! past that one before the process writes again, so each process also remembers its own
//! last acknowledged write, whose number its writes leave under a key of its own: a copy
//! without that write holds a lower number there, whatever the others wrote since.

use std::sync::{
    Mutex, OnceLock,
    atomic::{AtomicBool, AtomicI64, Ordering},
};

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::OWN_WRITE_SURE;
use crate::store::{StoreError, StoreErrorKind};

/// What a connection's setup asked of the mark.
pub(super) enum Pending {
    /// Set this one if there is none, and return what there was.
    Take(String),
    /// Read it.
    Read,
}

/// The mark this process counts in, shared by every worker's session.
pub(super) struct DatasetMark {
    id: OnceLock<String>,
    /// The number of the last write acknowledged to this process.
    acknowledged: AtomicI64,
    /// This process's own last acknowledged write, while Redis is sure to hold its number.
    own: Mutex<Option<OwnWrite>>,
    /// The mark a write puts in place when it finds an older copy of the data.
    replacement: String,
    /// Whether the mark's loss has been logged (and not its return since).
    lost_said: AtomicBool,
}

impl Default for DatasetMark {
    fn default() -> Self {
        Self {
            id: OnceLock::new(),
            acknowledged: AtomicI64::new(0),
            own: Mutex::new(None),
            replacement: fresh_mark(),
            lost_said: AtomicBool::new(false),
        }
    }
}

/// A write of this process acknowledged to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnWrite {
    number: i64,
    /// When the last write or probe that renewed the number's key in Redis was sent.
    renewed: Moment,
}

/// A moment on both of this process's clocks. The monotonic clock stands still while the
/// host is suspended, and Redis's expiries do not (on a laptop running both, a closed
/// lid); the wall clock moves on through a suspension but may be set back or forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    monotonic: Instant,
    wall: SystemTime,
}

impl Moment {
    pub fn now() -> Self {
        Self {
            monotonic: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// How long since `earlier`, as the clock that moved most tells it; `None` when the
    /// wall clock went back, and how long it has been cannot be told.
    fn since(&self, earlier: &Moment) -> Option<Duration> {
        let wall = self.wall.duration_since(earlier.wall).ok()?;
        Some(wall.max(self.monotonic.saturating_duration_since(earlier.monotonic)))
    }

    /// Whether Redis is sure to hold still what was renewed at `renewed`.
    fn sure_since(&self, renewed: &Moment) -> bool {
        self.since(renewed)
            .is_some_and(|past| past < OWN_WRITE_SURE)
    }

    #[cfg(test)]
    fn plus(&self, past: Duration) -> Self {
        Self {
            monotonic: self.monotonic + past,
            wall: self.wall + past,
        }
    }
}

/// A mark no data has yet.
fn fresh_mark() -> String {
    crate::counters::visitor::new_salt()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl DatasetMark {
    /// The number of the last write acknowledged to this process: Redis holding a lower
    /// one has gone back to an older copy.
    pub fn acknowledged(&self) -> i64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// A write numbered `number` was acknowledged (its replicas, if any, confirmed it):
    /// its script found the mark and the number of the last write in place, so Redis
    /// holds the data again if it was found not to (restored without a new connection).
    pub fn acknowledge(&self, number: i64) {
        self.acknowledged.fetch_max(number, Ordering::AcqRel);
        if self.lost_said.swap(false, Ordering::AcqRel) {
            tracing::info!("Redis holds the counts again: visits are counted");
        }
    }

    /// The number of this process's own last acknowledged write, which Redis must hold
    /// under this process's key; 0 when there is none it is sure to hold (no write yet, or
    /// none renewed for `OWN_WRITE_SURE`).
    pub fn own(&self, now: Moment) -> i64 {
        match *self.own.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(own) if now.sure_since(&own.renewed) => own.number,
            _ => 0,
        }
    }

    /// A write of this process numbered `number`, or a probe (`None`), sent at `sent`,
    /// was acknowledged: either renewed the key of this process's number.
    pub fn own_renewed(&self, number: Option<i64>, sent: Moment) {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        let sure = own.filter(|own| sent.sure_since(&own.renewed));
        *own = match (sure, number) {
            (Some(own), number) => Some(OwnWrite {
                number: own.number.max(number.unwrap_or(0)),
                // The later of the two: answers come in any order.
                renewed: if sent.since(&own.renewed).is_some() {
                    sent
                } else {
                    own.renewed
                },
            }),
            (None, Some(number)) => Some(OwnWrite {
                number,
                renewed: sent,
            }),
            // Redis may have dropped the key meanwhile: nothing to ask for until a write.
            (None, None) => None,
        };
    }

    /// The mark a write puts in place when it finds an older copy of the data.
    pub fn replacement(&self) -> &str {
        &self.replacement
    }

    /// The mark every write carries; empty, and so refused by every store, until a
    /// connection has taken one.
    pub fn id(&self) -> &str {
        self.id.get().map_or("", String::as_str)
    }

    /// Adds to a connection's setup what checks the mark: the first time, takes the mark
    /// Redis holds or makes one (processes starting together all take the one the
    /// first of them set); after that, reads it.
    pub fn add_check(&self, key: &str, pipe: &mut redis::Pipeline) -> Pending {
        match self.id.get() {
            Some(_) => {
                pipe.cmd("GET").arg(key);
                Pending::Read
            }
            None => {
                let fresh = fresh_mark();
                pipe.cmd("SET").arg(key).arg(&fresh).arg("NX").arg("GET");
                Pending::Take(fresh)
            }
        }
    }

    /// Takes the answer to `add_check`'s command, on a connection to the primary: the
    /// mark taken, or said once that Redis no longer holds it (writes are then refused
    /// by the script).
    pub fn observe(&self, key: &str, pending: Pending, held: Option<String>) {
        match pending {
            Pending::Take(fresh) => {
                let _ = self.id.set(held.unwrap_or(fresh));
            }
            Pending::Read if held.as_deref() == self.id.get().map(String::as_str) => {
                if self.lost_said.swap(false, Ordering::AcqRel) {
                    tracing::info!("Redis holds the counts again: visits are counted");
                }
            }
            Pending::Read => self.said_lost(key, held.is_some()),
        }
    }

    /// Refuses what reads every count or changes one while Redis is known not to hold
    /// the data counted in (as visits are): an export would look whole and hold what
    /// is left, and a change would be made to data that is to be restored or replaced.
    pub fn check_held(&self) -> Result<(), StoreError> {
        if self.lost_said.load(Ordering::Acquire) {
            return Err(StoreError::not_tried(
                StoreErrorKind::DataLost,
                "Redis no longer holds the data counted in",
            ));
        }
        Ok(())
    }

    /// A write refused because Redis holds another mark or none, or an older copy of
    /// the data.
    pub fn lost(&self, key: &str, detail: &str) -> StoreError {
        if detail.contains("older copy") {
            if !self.lost_said.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    mark = key,
                    acknowledged = self.acknowledged(),
                    "Redis holds an older copy of the data this service counted in (a \
                     snapshot loaded after a crash, a backup restored, a server that fell \
                     behind made primary), or lost the record of a write (keys evicted, or \
                     deleted by hand): counting on would hand out numbers again, so \
                     visits are refused, by every service process. Restore the latest data \
                     (an older copy is refused the same way), or restart the services to \
                     count from what Redis holds now"
                );
            }
        } else {
            self.said_lost(key, !detail.contains("no mark"));
        }
        StoreError::new(StoreErrorKind::DataLost, detail.to_owned())
    }

    fn said_lost(&self, key: &str, another: bool) {
        if !self.lost_said.swap(true, Ordering::AcqRel) {
            tracing::error!(
                mark = key,
                found = if another { "another" } else { "none" },
                "Redis no longer holds the data this service counted in (restarted without \
                 persistence, flushed, keys evicted, another server in the primary's place; \
                 or a service process, this one's readiness probe included, found an older \
                 copy or the record of a write lost, and put a new mark in place): counting \
                 on would hand out \
                 numbers again, so visits are refused. Restore the latest data (an older \
                 copy is refused the same way), or restart the service to count from what \
                 Redis holds now"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_asks_for_its_own_last_write_while_redis_is_sure_to_hold_it() {
        let mark = DatasetMark::default();
        let start = Moment::now();
        assert_eq!(mark.own(start), 0, "no write yet");

        mark.own_renewed(Some(7), start);
        mark.own_renewed(Some(5), start);
        assert_eq!(mark.own(start), 7, "the last write, answers out of order");
        mark.own_renewed(None, start.plus(Duration::from_secs(200)));
        assert_eq!(
            mark.own(start.plus(OWN_WRITE_SURE)),
            7,
            "renewed by a probe"
        );

        let silent = start.plus(Duration::from_secs(200) + OWN_WRITE_SURE);
        assert_eq!(mark.own(silent), 0, "Redis may have dropped it");
        mark.own_renewed(None, silent);
        assert_eq!(mark.own(silent), 0, "a probe does not bring it back");
        mark.own_renewed(Some(9), silent);
        assert_eq!(mark.own(silent), 9, "the next write sets it again");
    }

    /// The monotonic clock stands still while the host is suspended; Redis's expiries run
    /// on. Nor is a wall clock set back taken for time that has not passed.
    #[test]
    fn a_suspended_host_or_a_clock_set_back_does_not_ask_for_what_may_have_expired() {
        let mark = DatasetMark::default();
        let start = Moment::now();
        mark.own_renewed(Some(7), start);

        let resumed = Moment {
            monotonic: start.monotonic + Duration::from_secs(1),
            wall: start.wall + OWN_WRITE_SURE,
        };
        assert_eq!(mark.own(resumed), 0, "suspended for longer than it is sure");
        let set_back = Moment {
            monotonic: start.monotonic + Duration::from_secs(1),
            wall: start.wall - Duration::from_secs(1),
        };
        assert_eq!(mark.own(set_back), 0, "the wall clock set back");
        assert_eq!(mark.own(start.plus(Duration::from_secs(1))), 7);
    }
}
