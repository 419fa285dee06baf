//! The failover rule: how many replicas a write must reach before its visits are
//! acknowledged, so that no failover the sentinels can carry out discards it.
//!
//! A failover promotes one replica; the writes that replica lacks are lost, and their
//! numbers are handed out again by the new primary. The sentinels promote only a replica
//! they consider fit: one they list, can reach and do not consider down, whose priority
//! is not 0, and whose link to the primary has not been down for long (sentinel.c,
//! `sentinelSelectSlave`). They do not ask whether it replicates at all: a replica
//! restarted with its old data counts as never cut off until its first copy of the
//! primary, and may be promoted meanwhile. So a write is acknowledged only once every
//! such server has it (`WAIT n`, n = all of them, and at least `--redis-min-replicas`):
//! whichever is promoted, the write is there; a restarted replica that has not copied the
//! primary yet cannot confirm it, so visits are refused until it has. A replica they
//! would not promote (priority 0) is counted all the same: `WAIT` takes any replica's
//! acknowledgement, so with n short of it, its acknowledgement could stand in for that of
//! a replica that may be promoted. For the same reason, so is every replica connected to
//! the primary (as the primary says, every second) that the sentinels do not count: one
//! they see as down (a password or an announced address they cannot reach it by) or do
//! not know yet, and each beyond the first that gives one address as another does; not
//! one the primary has not heard from for `Deadlines::REPLICA_SILENT` (hung, it confirms
//! nothing, and waiting for it would refuse every visit until the primary drops it).
//!
//! A server listed as a replica that reports itself a primary is not waited for: the old
//! primary after a planned failover does so until the sentinels convert it (seconds
//! later), and waiting for it would refuse every visit after every planned failover. The
//! sentinels could promote it in that time, in a second failover: one of the windows
//! below.
//!
//! The count comes from the sentinels' own view (`SENTINEL REPLICAS`), asked of all of
//! them; only the views of those that name the same primary as the service count, and a
//! replica fit in any one of them counts. The count may rise at any time, but it falls
//! only when the view is clear: every sentinel has answered or given up, none leads a
//! failover of this primary, and no replica of it reports itself a primary (a promotion
//! the others have not yet understood as one; a former primary, which reports itself one
//! until it is converted, is known and excepted). While a failover of the primary is
//! under way (the leading sentinel's `failover_in_progress`), writes are refused before
//! they are sent. A count that is too high costs refused visits, never lost ones: a write
//! that waited for a replica that was promoted meanwhile gets too few acknowledgements.
//! Once a majority names the new primary, its count comes from their views of it, so
//! counting resumes without waiting for the leading sentinel to finish.
//!
//! What stays open with two faults at once: the primary and every replica that has a
//! write lost together; a second failover within seconds of another, before the sentinels
//! have converted the old primary, if it promotes the old primary; a replica that was
//! down while writes were acknowledged, back with its old data, and promoted before it
//! has copied the primary (deploy/redis-node.sh brings a server back as a replica of the
//! current primary with `replica-priority 0` until its copy is done, which closes this
//! for servers it starts); a replica that comes back and
//! is promoted before the service has asked the sentinels again (every second, and at
//! once on their events); a replica whose link to the primary has been down a little
//! longer than ten times `down-after-milliseconds` when the primary fails (the sentinels
//! may still promote it, the count no longer waits for it); a replica that announces the
//! address of another, once that other is cut off (the primary then lists one replica at
//! that address, which the sentinels count as the one they know), if the cut-off one is
//! promoted.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use crate::{
    deadlines::Deadlines,
    store::{StoreError, StoreErrorKind},
};

/// A Redis server's address, as the sentinels name it.
pub type Address = (String, u16);

/// How many times `down-after-milliseconds` a replica's link to the primary may have been
/// down for the sentinels still to promote it (sentinel.c).
const LINK_DOWN_FACTOR: u64 = 10;

/// What one sentinel said about the primary and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelReport {
    pub primary: Address,
    /// This sentinel leads a failover of the primary now.
    pub failover_in_progress: bool,
    pub replicas: Vec<ReplicaReport>,
}

/// One replica as a sentinel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub address: Address,
    /// A promotion is under way to it (only the leading sentinel says so).
    pub promoted: bool,
    /// Writes wait for it: the sentinel may promote it in a failover (but for a former
    /// primary that reports itself one, see above), or it may confirm a write in place of
    /// one that may be promoted (priority 0).
    pub fit: bool,
    /// It says it is a primary.
    pub reports_primary: bool,
}

impl SentinelReport {
    /// Reads the answers to `SENTINEL MASTER` and `SENTINEL REPLICAS`, each as field →
    /// value maps.
    pub fn from_replies(
        master: &HashMap<String, String>,
        replicas: &[HashMap<String, String>],
    ) -> Option<Self> {
        let address = |fields: &HashMap<String, String>| -> Option<Address> {
            Some((fields.get("ip")?.clone(), fields.get("port")?.parse().ok()?))
        };
        let flags = |fields: &HashMap<String, String>| -> Vec<String> {
            fields
                .get("flags")
                .map(|f| f.split(',').map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let number = |fields: &HashMap<String, String>, name: &str| -> Option<u64> {
            fields.get(name)?.parse().ok()
        };
        let down_after = number(master, "down-after-milliseconds").unwrap_or(30_000);
        let replicas = replicas
            .iter()
            .filter_map(|fields| {
                let flags = flags(fields);
                let has = |flag: &str| flags.iter().any(|f| f == flag);
                let reports_primary =
                    fields.get("role-reported").map(String::as_str) != Some("slave");
                let link_ok = fields.get("master-link-status").map(String::as_str) == Some("ok");
                // A replica whose link has never been up since it started reports -1 s,
                // which the sentinels take as not down at all: a server restarted with
                // old data, not yet synchronised, is promotable.
                let link_down = fields
                    .get("master-link-down-time")
                    .and_then(|t| t.parse::<i64>().ok())
                    .map_or(u64::MAX, |t| t.max(0) as u64);
                let fit = !has("s_down")
                    && !has("o_down")
                    && !has("disconnected")
                    && !reports_primary
                    && (link_ok || link_down <= LINK_DOWN_FACTOR * down_after);
                Some(ReplicaReport {
                    address: address(fields)?,
                    promoted: has("promoted"),
                    fit,
                    reports_primary,
                })
            })
            .collect();
        let master_flags = flags(master);
        Some(Self {
            primary: address(master)?,
            failover_in_progress: master_flags.iter().any(|f| f == "failover_in_progress"),
            replicas,
        })
    }
}

/// The number of replicas writes wait for, kept by the rule above.
#[derive(Debug, Default)]
pub struct ReplicaTarget {
    state: Mutex<TargetState>,
}

#[derive(Debug, Default)]
struct TargetState {
    /// The primary the count is for.
    primary: Option<Address>,
    replicas: usize,
    /// The addresses of the replicas counted in `replicas`.
    fit: BTreeSet<Address>,
    /// The replicas the primary itself last said were connected and current (its
    /// `INFO replication`), by the address it gives each.
    online: Vec<Address>,
    /// A sentinel leads a failover now: nothing may be acknowledged.
    failing_over: bool,
    /// Primaries followed before, which report themselves primaries until converted.
    former_primaries: BTreeSet<Address>,
}

impl ReplicaTarget {
    /// Takes the reports of the sentinels that answered about `primary`; `complete` when
    /// every sentinel has answered or given up, so that none that leads a failover can
    /// be missing from them. A partial view only raises the count and only starts a
    /// failover; a complete, clear one may lower the count and ends a failover.
    pub fn observe(&self, primary: &Address, reports: &[SentinelReport], complete: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.primary.as_ref() != Some(primary) {
            if let Some(old) = state.primary.replace(primary.clone()) {
                state.former_primaries.insert(old);
            }
            state.former_primaries.remove(primary);
            // What was seen of the old primary says nothing of the new one's failover,
            // nor of its replicas.
            state.failing_over = false;
            state.online.clear();
        }
        let about_ours: Vec<&SentinelReport> =
            reports.iter().filter(|r| &r.primary == primary).collect();
        let failing_over = about_ours.iter().any(|r| r.failover_in_progress);
        if complete {
            state.failing_over = failing_over;
        } else {
            state.failing_over |= failing_over;
        }
        let fit: BTreeSet<&Address> = about_ours
            .iter()
            .flat_map(|r| r.replicas.iter())
            .filter(|replica| replica.fit)
            .map(|replica| &replica.address)
            .collect();
        let clear = complete
            && !failing_over
            && !about_ours.is_empty()
            && about_ours
                .iter()
                .flat_map(|r| r.replicas.iter())
                .all(|replica| {
                    !replica.promoted
                        && (!replica.reports_primary
                            || state.former_primaries.contains(&replica.address))
                });
        if fit.len() > state.replicas || clear {
            state.replicas = fit.len();
            state.fit = fit.into_iter().cloned().collect();
        } else {
            state.fit.extend(fit.into_iter().cloned());
        }
    }

    /// Takes what `primary` said of its replicas: the address of each that is connected
    /// and current (`state=online`), as `INFO replication` gives it. Returns how many of
    /// them the sentinels do not count, when that changed.
    pub fn observe_primary(&self, primary: &Address, online: Vec<Address>) -> Option<usize> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.primary.as_ref() != Some(primary) {
            return None;
        }
        let before = state.standing_in();
        state.online = online;
        let after = state.standing_in();
        (after != before).then_some(after)
    }

    /// How many replicas a write must reach: all the sentinels could promote, and at
    /// least `at_least`; an error while a failover is under way.
    pub fn replicas_to_wait(&self, at_least: u8) -> Result<u8, StoreError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.failing_over {
            return Err(StoreError::new(
                StoreErrorKind::Failover,
                "a sentinel is failing the primary over; writes wait for the new one",
            ));
        }
        Ok(at_least.max(u8::try_from(state.replicas + state.standing_in()).unwrap_or(u8::MAX)))
    }
}

impl TargetState {
    /// The replicas connected to the primary that could confirm a write in place of one
    /// a failover could promote: each the sentinels do not count as fit (down in their
    /// view, never seen by them, announcing an address they cannot reach), and each
    /// beyond the first that gives the same address as another.
    fn standing_in(&self) -> usize {
        let mut counted = BTreeSet::new();
        self.online
            .iter()
            .filter(|address| !(self.fit.contains(*address) && counted.insert(*address)))
            .count()
    }
}

/// The replicas `INFO replication` says are connected and current: the address of each
/// `slaveN:ip=…,port=…,state=online,…,lag=…` line whose lag is under
/// `Deadlines::REPLICA_SILENT` (a hung replica confirms nothing).
pub fn online_replicas(info: &str) -> Vec<Address> {
    info.lines()
        .filter(|line| {
            line.strip_prefix("slave")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|line| {
            let (_, fields) = line.split_once(':')?;
            let field = |name: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
            };
            let lag: u64 = field("lag")?.parse().ok()?;
            (field("state")? == "online" && lag < Deadlines::REPLICA_SILENT.as_secs())
                .then(|| Some((field("ip")?.to_owned(), field("port")?.parse().ok()?)))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> Address {
        ("10.0.0.1".to_owned(), port)
    }

    fn replica(port: u16) -> ReplicaReport {
        ReplicaReport {
            address: address(port),
            promoted: false,
            fit: true,
            reports_primary: false,
        }
    }

    fn report(primary: u16, replicas: Vec<ReplicaReport>) -> SentinelReport {
        SentinelReport {
            primary: address(primary),
            failover_in_progress: false,
            replicas,
        }
    }

    #[test]
    fn a_replica_the_sentinels_cannot_use_confirms_every_write_beside_the_fit_ones() {
        let target = ReplicaTarget::default();
        let unfit = ReplicaReport {
            fit: false,
            ..replica(4)
        };
        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3), unfit])],
            true,
        );
        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);

        // Down in the sentinels' view, or not known to them at all, but connected.
        target.observe_primary(&address(1), vec![address(2), address(3), address(4)]);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 3);
        target.observe_primary(&address(1), vec![address(2), address(3), address(9)]);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 3);
        // A fit one cut off: the other two cannot stand in for it.
        target.observe_primary(&address(1), vec![address(2), address(4)]);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 3);
        // Two that give one address: either could be the one the sentinels know.
        target.observe_primary(&address(1), vec![address(2), address(3), address(3)]);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 3);
        target.observe_primary(&address(1), vec![address(2), address(3)]);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);
        // What another server said is not this primary's.
        target.observe_primary(&address(7), vec![address(5), address(6)]);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);
    }

    #[test]
    fn the_replicas_online_and_heard_from_are_read_from_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:4\r\n\
                    slave0:ip=10.0.0.2,port=6379,state=online,offset=100,lag=0\r\n\
                    slave1:ip=10.0.0.3,port=6380,state=wait_bgsave,offset=0,lag=0\r\n\
                    slave2:ip=10.0.0.4,port=6381,state=online,offset=100,lag=1\r\n\
                    slave3:ip=10.0.0.5,port=6382,state=online,offset=90,lag=7\r\n\
                    slave_read_repl_offset:5\r\nmaster_repl_offset:100\r\n";

        assert_eq!(
            online_replicas(info),
            vec![("10.0.0.2".to_owned(), 6379), ("10.0.0.4".to_owned(), 6381)]
        );
    }

    #[test]
    fn writes_wait_for_every_replica_a_failover_could_promote() {
        let target = ReplicaTarget::default();
        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3)])],
            true,
        );

        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);
        assert_eq!(
            target.replicas_to_wait(3).unwrap(),
            3,
            "never below the setting"
        );
    }

    #[test]
    fn a_replica_down_in_the_view_of_every_sentinel_is_not_waited_for() {
        let target = ReplicaTarget::default();
        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3)])],
            true,
        );
        let down = ReplicaReport {
            fit: false,
            ..replica(3)
        };

        let reports = [
            report(1, vec![replica(2), down.clone()]),
            report(1, vec![replica(2), down]),
        ];
        target.observe(&address(1), &reports, false);
        assert_eq!(
            target.replicas_to_wait(1).unwrap(),
            2,
            "not while a sentinel may still answer"
        );

        target.observe(&address(1), &reports, true);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 1);
    }

    #[test]
    fn one_sentinel_that_still_sees_a_replica_fit_keeps_it_waited_for() {
        let target = ReplicaTarget::default();
        let down = ReplicaReport {
            fit: false,
            ..replica(3)
        };

        target.observe(
            &address(1),
            &[
                report(1, vec![replica(2), down]),
                report(1, vec![replica(2), replica(3)]),
            ],
            true,
        );

        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);
    }

    /// A planned failover as the sentinels report it: the leader alone says a failover
    /// is under way and which replica it promotes; the others see that replica report
    /// itself a primary while still listing it as a replica.
    #[test]
    fn during_a_failover_nothing_is_acknowledged_and_the_count_does_not_fall() {
        let target = ReplicaTarget::default();
        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3)])],
            true,
        );

        let leading = SentinelReport {
            failover_in_progress: true,
            ..report(
                1,
                vec![
                    replica(2),
                    ReplicaReport {
                        promoted: true,
                        ..replica(3)
                    },
                ],
            )
        };
        target.observe(&address(1), &[leading], true);
        assert_eq!(
            target.replicas_to_wait(1).unwrap_err().kind(),
            StoreErrorKind::Failover
        );

        // The leader no longer answers; another sentinel sees the promoted replica
        // report itself a primary: not fit, but the count must not fall to 1.
        let promoted = ReplicaReport {
            fit: false,
            reports_primary: true,
            ..replica(3)
        };
        target.observe(&address(1), &[report(1, vec![replica(2), promoted])], true);
        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);
    }

    #[test]
    fn after_the_switch_a_down_old_primary_does_not_hold_the_count() {
        let target = ReplicaTarget::default();
        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3)])],
            true,
        );
        let old_primary = ReplicaReport {
            fit: false,
            reports_primary: true,
            ..replica(1)
        };

        target.observe(
            &address(3),
            &[report(3, vec![replica(2), old_primary])],
            true,
        );

        assert_eq!(target.replicas_to_wait(1).unwrap(), 1);
    }

    /// An old primary back with its old data, before the sentinels convert it: they list
    /// it as a replica and may promote it, and it has none of the new primary's writes.
    /// Writes must wait for it, which they cannot: refused, not lost.
    #[test]
    fn an_old_primary_back_as_a_primary_holds_the_count_until_it_replicates() {
        let target = ReplicaTarget::default();
        target.observe(&address(3), &[report(3, vec![replica(2)])], true);
        let back = ReplicaReport {
            reports_primary: true,
            ..replica(1)
        };

        target.observe(
            &address(3),
            &[report(3, vec![replica(2), back.clone()])],
            true,
        );
        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);

        let converted = ReplicaReport {
            reports_primary: false,
            ..back
        };
        target.observe(&address(3), &[report(3, vec![replica(2), converted])], true);
        assert_eq!(
            target.replicas_to_wait(1).unwrap(),
            2,
            "and then waited for"
        );
    }

    /// The majority has moved to the new primary while the leading sentinel still
    /// finishes the failover of the old one: the new primary's count comes from the
    /// views of it, and counting resumes.
    #[test]
    fn the_new_primary_counts_as_soon_as_the_sentinels_that_name_it_see_it_clear() {
        let target = ReplicaTarget::default();
        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3)])],
            true,
        );
        let still_leading = SentinelReport {
            failover_in_progress: true,
            ..report(1, vec![replica(2), replica(3)])
        };
        target.observe(&address(1), std::slice::from_ref(&still_leading), true);
        let old_primary = ReplicaReport {
            fit: false,
            reports_primary: true,
            ..replica(1)
        };

        target.observe(
            &address(3),
            &[still_leading, report(3, vec![replica(2), old_primary])],
            true,
        );

        assert_eq!(target.replicas_to_wait(1).unwrap(), 1);
    }

    #[test]
    fn a_view_of_another_primary_never_lowers_the_count_of_ours() {
        let target = ReplicaTarget::default();
        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3)])],
            true,
        );

        target.observe(&address(1), &[report(3, vec![replica(2)])], true);

        assert_eq!(target.replicas_to_wait(1).unwrap(), 2);
    }

    #[test]
    fn a_partial_view_does_not_end_a_failover() {
        let target = ReplicaTarget::default();
        let leading = SentinelReport {
            failover_in_progress: true,
            ..report(1, vec![replica(2), replica(3)])
        };
        target.observe(&address(1), &[leading], true);

        target.observe(
            &address(1),
            &[report(1, vec![replica(2), replica(3)])],
            false,
        );

        assert!(target.replicas_to_wait(1).is_err(), "still failing over");
    }

    #[test]
    fn the_sentinels_replies_are_read_into_a_report() {
        let fields = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let master = fields(&[
            ("ip", "10.0.0.1"),
            ("port", "6379"),
            ("flags", "master,failover_in_progress,force_failover"),
            ("down-after-milliseconds", "500"),
        ]);
        let healthy = fields(&[
            ("ip", "10.0.0.2"),
            ("port", "6379"),
            ("flags", "slave"),
            ("role-reported", "slave"),
            ("master-link-status", "ok"),
            ("master-link-down-time", "0"),
            ("slave-priority", "100"),
        ]);
        let long_cut_off = fields(&[
            ("ip", "10.0.0.3"),
            ("port", "6379"),
            ("flags", "slave"),
            ("role-reported", "slave"),
            ("master-link-status", "err"),
            ("master-link-down-time", "6000"),
            ("slave-priority", "100"),
        ]);
        // Never promoted, but WAIT counts its acknowledgement like any other's.
        let never_promoted = fields(&[
            ("ip", "10.0.0.4"),
            ("port", "6379"),
            ("flags", "slave"),
            ("role-reported", "slave"),
            ("master-link-status", "ok"),
            ("slave-priority", "0"),
        ]);
        let down = fields(&[
            ("ip", "10.0.0.5"),
            ("port", "6379"),
            ("flags", "slave,s_down,disconnected"),
            ("role-reported", "slave"),
        ]);
        // A replica restarted with its old data, not yet synchronised.
        let never_synchronised = fields(&[
            ("ip", "10.0.0.7"),
            ("port", "6379"),
            ("flags", "slave"),
            ("role-reported", "slave"),
            ("master-link-status", "err"),
            ("master-link-down-time", "-1000"),
            ("slave-priority", "100"),
        ]);
        // A former primary restarted with its old data, not yet converted.
        let back_as_primary = fields(&[
            ("ip", "10.0.0.6"),
            ("port", "6379"),
            ("flags", "slave"),
            ("role-reported", "master"),
            ("master-link-status", "err"),
            ("master-link-down-time", "0"),
            ("slave-priority", "100"),
        ]);

        let report = SentinelReport::from_replies(
            &master,
            &[
                healthy,
                long_cut_off,
                never_promoted,
                down,
                back_as_primary,
                never_synchronised,
            ],
        )
        .unwrap();

        assert_eq!(report.primary, ("10.0.0.1".to_owned(), 6379));
        assert!(report.failover_in_progress);
        let fit: Vec<bool> = report.replicas.iter().map(|r| r.fit).collect();
        assert_eq!(fit, [true, false, true, false, false, true]);
        assert!(report.replicas[4].reports_primary);
    }
}
