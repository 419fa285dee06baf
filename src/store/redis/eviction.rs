//! Whether Redis may evict keys. Under a `maxmemory` limit with any `maxmemory-policy`
//! but `noeviction`, Redis deletes keys when memory runs short: a total (counting would
//! start again at 1), the registry of counters, or a writer's batch records (they expire,
//! so even the `volatile-*` policies take them, and a batch sent again would be applied
//! twice). So while eviction is possible, visits are refused and the service is not
//! ready, with the reason; counting resumes once the policy is `noeviction` (or there is
//! no limit).
//!
//! The policy is read with `INFO memory` when a connection opens, and with `INFO` by
//! every readiness probe and with every heartbeat (each second), so a change made while
//! serving is noticed within a second. A server that does not allow `INFO` (an ACL)
//! cannot be checked: that is logged once, and counting goes on.
//!
//! A limit set below what Redis holds evicts keys at once, before any reading can see
//! the policy, and the policy may be undone as fast: the counters whose keys went would
//! count from 1 again. So every reading also takes how many keys the server has evicted
//! (`evicted_keys`, with the server's `run_id`): one more than the last reading of the
//! same server saw, and the data counted in is taken for lost, as when Redis loses what
//! it holds (`dataset`): a new mark is put in place, and every service process refuses
//! until the latest data is restored or the services are restarted.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use tokio::time::Instant;

use super::session::RedisSession;
use crate::store::{StoreError, StoreErrorKind};

/// The eviction policy as last read, shared by every worker's session.
#[derive(Default)]
pub(super) struct EvictionWatch {
    /// Set while the last reading allowed eviction; read before every write.
    evicting: AtomicBool,
    /// What the last reading that allowed eviction said, for the error's detail.
    reading: Mutex<String>,
    /// Whether the server refusing `INFO` has been logged.
    unknown_logged: AtomicBool,
    /// The keys evicted as last read, and by which server.
    evictions: Mutex<Option<Evictions>>,
}

/// How many keys a server has evicted since it started (or its statistics were reset).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Evictions {
    run_id: String,
    evicted: u64,
}

impl Evictions {
    fn from_info(info: &str) -> Option<Self> {
        Some(Self {
            run_id: info_field(info, "run_id")?.to_owned(),
            evicted: info_field(info, "evicted_keys")?.parse().ok()?,
        })
    }
}

/// A field of `INFO`'s text.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl EvictionWatch {
    /// Refuses a write while the last reading allowed eviction.
    pub fn check(&self) -> Result<(), StoreError> {
        if !self.evicting.load(Ordering::Acquire) {
            return Ok(());
        }
        let reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        Err(StoreError::new(StoreErrorKind::Eviction, reading.clone()))
    }

    /// Takes the text of `INFO memory`; logs when eviction becomes possible or stops being.
    fn observe(&self, info: &str) -> Result<(), StoreError> {
        match Policy::from_info(info) {
            Some(policy) if policy.may_evict() => {
                let reading = format!(
                    "Redis may evict keys (maxmemory-policy {}, maxmemory {}): visits are \
                     refused until maxmemory-policy is noeviction",
                    policy.name, policy.maxmemory
                );
                *self.reading.lock().unwrap_or_else(|e| e.into_inner()) = reading.clone();
                if !self.evicting.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        policy = policy.name,
                        maxmemory = policy.maxmemory,
                        "Redis may evict keys, which would lose counts: visits are refused \
                         until maxmemory-policy is noeviction"
                    );
                }
                Err(StoreError::new(StoreErrorKind::Eviction, reading))
            }
            _ => {
                if self.evicting.swap(false, Ordering::AcqRel) {
                    tracing::info!("Redis no longer evicts keys: visits are counted again");
                }
                Ok(())
            }
        }
    }

    /// Keys the server that answered `info` evicted since the last reading of it that was
    /// `seen`; 0 at the first.
    fn evicted(&self, info: &str) -> u64 {
        let Some(now) = Evictions::from_info(info) else {
            return 0;
        };
        match &*self.evictions.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(last) if last.run_id == now.run_id => {
                match now.evicted.checked_sub(last.evicted) {
                    Some(more) => more,
                    // The statistics were reset (`CONFIG RESETSTAT`) since: what it counts now
                    // was evicted after.
                    None => now.evicted,
                }
            }
            _ => 0,
        }
    }

    /// Takes `info` as the reading the next ones are compared with.
    fn seen(&self, info: &str) {
        *self.evictions.lock().unwrap_or_else(|e| e.into_inner()) = Evictions::from_info(info);
    }

    /// A server that refused `INFO`: it cannot be checked; said once.
    fn unknown(&self, error: &StoreError) {
        if !self.unknown_logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                cause = error.detail(),
                "cannot read Redis's maxmemory-policy (INFO is not allowed): counts are \
                 safe only under noeviction"
            );
        }
    }
}

/// The part of `INFO memory` that says whether keys may be evicted.
#[derive(Debug, PartialEq)]
struct Policy<'a> {
    name: &'a str,
    maxmemory: u64,
}

impl<'a> Policy<'a> {
    fn from_info(info: &'a str) -> Option<Self> {
        Some(Policy {
            name: info_field(info, "maxmemory_policy")?,
            maxmemory: info_field(info, "maxmemory")?.parse().ok()?,
        })
    }

    /// Without a limit (`maxmemory 0`) nothing is evicted, whatever the policy.
    fn may_evict(&self) -> bool {
        self.maxmemory > 0 && self.name != "noeviction"
    }
}

impl RedisSession {
    /// Reads the eviction policy now: an error while Redis may evict keys. Keys evicted
    /// since the last reading put a new mark in place (the module's comment).
    pub(super) async fn check_eviction(&self, answer_by: Instant) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        // The default sections: the server's run_id, memory, stats.
        pipe.cmd("INFO");
        let watch = &self.store.eviction;
        match self.query::<(String,)>(&pipe, answer_by).await {
            Ok((info,)) => {
                let evicted = watch.evicted(&info);
                // Seen once the mark is replaced: until then, the next reading tries again.
                if evicted == 0 || self.lost_to_eviction(evicted, answer_by).await.is_ok() {
                    watch.seen(&info);
                }
                watch.observe(&info)
            }
            Err(error) if refused(&error) => {
                watch.unknown(&error);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

impl RedisSession {
    /// Keys were evicted: the data counted in is taken for lost, by every process.
    async fn lost_to_eviction(&self, evicted: u64, answer_by: Instant) -> Result<(), StoreError> {
        let store = &self.store;
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(super::scripts::REPLACE_MARK)
            .arg(1)
            .arg(&store.keys.dataset)
            .arg(store.dataset.id())
            .arg(store.dataset.replacement());
        let (replaced,): (i64,) = self.query(&pipe, answer_by).await?;
        if replaced == 1 {
            tracing::error!(
                evicted,
                "Redis evicted keys (a maxmemory limit under an eviction policy, however \
                 briefly): counts may be lost, and counting on would hand out numbers \
                 again, so visits are refused, by every service process. Restore the \
                 latest data, or restart the services to count from what Redis holds now"
            );
        }
        Ok(())
    }
}

/// The server answered, but will not run `INFO` (an ACL, or the command renamed away):
/// an error about another command (a pipeline's first, `SCRIPT` renamed away) is not.
fn refused(error: &StoreError) -> bool {
    error.kind() == StoreErrorKind::Permission
        && error.detail().to_ascii_lowercase().contains("'info'")
}

impl EvictionWatch {
    /// Takes the answer to `INFO memory` on a connection just opened: recorded for the
    /// writes (the connection itself is good), or, if the server refused it, said once.
    pub fn observe_on_open(&self, info: Result<String, StoreError>) -> Result<(), StoreError> {
        match info {
            Ok(info) => {
                let _ = self.observe(&info);
                Ok(())
            }
            Err(error) if refused(&error) => {
                self.unknown(&error);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_error_about_info_says_info_is_refused() {
        let refusal = |detail: &str| StoreError::new(StoreErrorKind::Permission, detail.to_owned());
        assert!(refused(&refusal(
            "unknown command 'INFO', with args beginning with: 'memory' "
        )));
        assert!(refused(&refusal(
            "this user has no permissions to run the 'info' command"
        )));
        assert!(!refused(&refusal(
            "unknown command 'SCRIPT', with args beginning with: 'LOAD' "
        )));
        assert!(!refused(&StoreError::new(
            StoreErrorKind::Failed,
            "unknown command 'INFO'"
        )));
    }

    const INFO: &str = "# Memory\r\nused_memory:1022448\r\nmaxmemory:1000000\r\n\
        maxmemory_human:976.56K\r\nmaxmemory_policy:allkeys-lru\r\nlazyfree_pending_objects:0\r\n";

    #[test]
    fn the_policy_and_the_limit_are_read_from_info() {
        assert_eq!(
            Policy::from_info(INFO),
            Some(Policy {
                name: "allkeys-lru",
                maxmemory: 1_000_000
            })
        );
        assert_eq!(Policy::from_info("# Memory\r\nused_memory:1\r\n"), None);
    }

    #[test]
    fn only_noeviction_or_no_limit_is_safe() {
        let safe = [("noeviction", 1_000_000), ("allkeys-lru", 0)];
        for (name, maxmemory) in safe {
            assert!(
                !Policy { name, maxmemory }.may_evict(),
                "{name} {maxmemory}"
            );
        }
        for name in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert!(Policy { name, maxmemory: 1 }.may_evict(), "{name}");
        }
    }

    #[test]
    fn keys_evicted_since_the_last_reading_of_the_same_server_are_told() {
        let info = |run_id: &str, evicted: u64| {
            format!("# Server\r\nrun_id:{run_id}\r\n# Stats\r\nevicted_keys:{evicted}\r\n")
        };
        let watch = EvictionWatch::default();
        assert_eq!(watch.evicted(&info("a", 5)), 0, "the first reading");
        watch.seen(&info("a", 5));
        assert_eq!(watch.evicted(&info("a", 5)), 0);
        assert_eq!(watch.evicted(&info("a", 8)), 3);
        assert_eq!(watch.evicted(&info("a", 9)), 4, "until seen");
        watch.seen(&info("a", 9));
        assert_eq!(watch.evicted(&info("b", 20)), 0, "another server");
        assert_eq!(watch.evicted(&info("a", 0)), 0, "statistics reset");
        assert_eq!(
            watch.evicted(&info("a", 3)),
            3,
            "evicted since the statistics were reset"
        );
        assert_eq!(watch.evicted("# Stats\r\n"), 0, "nothing to tell by");
    }

    #[test]
    fn writes_are_refused_while_the_last_reading_allows_eviction_and_resume_after() {
        let watch = EvictionWatch::default();
        assert!(watch.check().is_ok());

        let refused = watch.observe(INFO).unwrap_err();
        assert_eq!(refused.kind(), StoreErrorKind::Eviction);
        assert!(refused.detail().contains("allkeys-lru"), "{refused}");
        assert_eq!(watch.check().unwrap_err().kind(), StoreErrorKind::Eviction);

        watch
            .observe(&INFO.replace("allkeys-lru", "noeviction"))
            .unwrap();
        assert!(watch.check().is_ok());
    }
}
