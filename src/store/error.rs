//! Store failures, sorted into the few kinds a client may be told about.

use std::fmt;

/// Declares the kinds once, each with its stable code and its reason, so that the list
/// of every kind (`ALL`, for metrics at zero) cannot miss one.
macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident => $code:literal, $reason:literal;)*) => {
        /// What went wrong, coarse enough to tell a client. Each kind has a stable code
        /// (metric labels, readiness answers) and a short reason (503 bodies).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum StoreErrorKind {
            $($(#[$doc])* $kind,)*
        }

        impl StoreErrorKind {
            /// Every kind, so that metrics can show each at zero before it first happens.
            pub const ALL: &'static [StoreErrorKind] = &[$(StoreErrorKind::$kind,)*];

            /// A stable name, for metric labels and readiness answers.
            pub fn code(self) -> &'static str {
                match self {
                    $(StoreErrorKind::$kind => $code,)*
                }
            }

            /// The short reason sent to clients.
            pub fn reason(self) -> &'static str {
                match self {
                    $(StoreErrorKind::$kind => $reason,)*
                }
            }
        }
    };
}

kinds! {
    Unreachable => "unreachable", "counter store unreachable";
    Timeout => "timeout", "counter store timed out";
    Loading => "loading", "counter store is loading its data";
    ReadOnly => "read_only", "counter store refuses writes";
    Auth => "auth", "counter store rejected our credentials";
    /// The server knows who we are but does not allow a command or key we need (an ACL).
    Permission => "permission", "counter store does not allow what counting needs";
    OutOfMemory => "out_of_memory", "counter store is out of memory";
    /// The server may delete keys when memory runs short (a `maxmemory-policy` other than
    /// `noeviction`), which would lose counts.
    Eviction => "eviction", "counter store may evict counts";
    Busy => "busy", "counter store is busy";
    WrongType => "wrong_type", "counter store holds a key of the wrong type";
    /// The total is at the largest (or smallest) number it can hold.
    Limit => "limit", "the counter is at its limit";
    /// This replica's share of the visits is at the largest number it can hold.
    ShareLimit => "share_limit", "this replica's tally of visits is at its limit";
    /// The write did not reach enough replicas in time.
    Replication => "replication", "counter store could not replicate the visit in time";
    /// The server lacks a command a setting needs (WAITAOF on a server before 7.2).
    Unsupported => "unsupported", "counter store lacks a feature the configuration needs";
    /// The sentinels that answered monitor no primary under the configured name.
    UnknownPrimary => "unknown_primary", "counter store's sentinels know no primary of that name";
    /// A failover is under way: writes are held back until the new primary is known.
    Failover => "failover", "counter store is failing over";
    /// The server has no database of the number the URL names.
    NoDatabase => "no_database", "counter store has no such database";
    /// Redis no longer holds the data the service counted in (`redis::dataset`).
    DataLost => "data_lost", "counter store no longer holds the counts";
    /// A counter in the registry whose total is gone (deleted or renamed by hand).
    TotalGone => "total_gone", "counter store no longer holds this counter's total";
    DiskFull => "disk_full", "counter store's disk is full";
    Damaged => "damaged", "counter store's data is damaged";
    /// The data file is no longer at the configured path (deleted, moved or replaced).
    FileGone => "file_gone", "counter store's data file is missing or replaced";
    Failed => "failed", "counter store failed";
}

/// A store failure: a kind whose reason is safe to send, a detail that only goes to logs,
/// and whether the write it ended may have been applied anyway.
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    detail: String,
    in_doubt: bool,
    /// Refused before anything was sent: no words of the store's in `detail`.
    not_tried: bool,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            in_doubt: false,
            not_tried: false,
        }
    }

    /// A call refused before anything was sent (a reconnection to wait for), for `why`.
    pub fn not_tried(kind: StoreErrorKind, why: &str) -> Self {
        Self {
            not_tried: true,
            ..Self::new(kind, format!("not tried: {why}"))
        }
    }

    /// Whether the call reached the point of sending anything: the store's own words are
    /// in the detail of one that did.
    pub fn was_tried(&self) -> bool {
        !self.not_tried
    }

    /// A call that got no answer in time: it may or may not have taken effect.
    pub fn timeout() -> Self {
        Self::new(
            StoreErrorKind::Timeout,
            "no answer within the store timeout",
        )
        .with_doubt()
    }

    /// Marks the error as one after which the write may have been applied anyway (no
    /// answer in time, connection lost while waiting for the answer).
    pub fn with_doubt(mut self) -> Self {
        self.in_doubt = true;
        self
    }

    /// Marks the error in doubt when `in_doubt` is set; never clears it.
    pub fn doubt_if(mut self, in_doubt: bool) -> Self {
        self.in_doubt |= in_doubt;
        self
    }

    pub fn in_doubt(&self) -> bool {
        self.in_doubt
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The short reason sent to clients.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    /// Whether the failure lasts until an operator acts (mends a key, a setting, the data),
    /// so that a client is not told to try again in a moment.
    pub fn awaits_an_operator(&self) -> bool {
        use StoreErrorKind::*;
        match self.kind {
            Auth | Permission | Eviction | WrongType | Limit | ShareLimit | Unsupported
            | UnknownPrimary | NoDatabase | DataLost | TotalGone | Damaged => true,
            // A data file deleted or moved away is written back within a second.
            Unreachable | Timeout | Loading | ReadOnly | OutOfMemory | Busy | Replication
            | Failover | DiskFull | FileGone | Failed => false,
        }
    }

    /// The stable code, for metric labels.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The internal cause, for logs only.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason(), self.detail)
    }
}

impl std::error::Error for StoreError {}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_kind_has_its_own_code_and_reason() {
        let codes: HashSet<_> = StoreErrorKind::ALL.iter().map(|k| k.code()).collect();
        let reasons: HashSet<_> = StoreErrorKind::ALL.iter().map(|k| k.reason()).collect();
        assert_eq!(codes.len(), StoreErrorKind::ALL.len());
        assert_eq!(reasons.len(), StoreErrorKind::ALL.len());
        for kind in StoreErrorKind::ALL {
            assert!(
                kind.code()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{kind:?}: a code is a metric label value"
            );
        }
    }
}
