//! Store failures, sorted into the few kinds a client may be told about.

use std::fmt;

/// What went wrong, coarse enough to tell a client. Each kind has a stable code (metric
/// labels, readiness answers) and a short reason (503 bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    Unreachable,
    Timeout,
    Loading,
    ReadOnly,
    Auth,
    OutOfMemory,
    Busy,
    WrongType,
    /// The total is at the largest (or smallest) number it can hold.
    Limit,
    /// The write did not reach enough replicas in time.
    Replication,
    DiskFull,
    Damaged,
    Failed,
}

impl StoreErrorKind {
    /// Every kind, so that metrics can show each at zero before it first happens.
    pub const ALL: [StoreErrorKind; 13] = [
        StoreErrorKind::Unreachable,
        StoreErrorKind::Timeout,
        StoreErrorKind::Loading,
        StoreErrorKind::ReadOnly,
        StoreErrorKind::Auth,
        StoreErrorKind::OutOfMemory,
        StoreErrorKind::Busy,
        StoreErrorKind::WrongType,
        StoreErrorKind::Limit,
        StoreErrorKind::Replication,
        StoreErrorKind::DiskFull,
        StoreErrorKind::Damaged,
        StoreErrorKind::Failed,
    ];

    /// A stable name, for metric labels and readiness answers.
    pub fn code(self) -> &'static str {
        match self {
            StoreErrorKind::Unreachable => "unreachable",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Loading => "loading",
            StoreErrorKind::ReadOnly => "read_only",
            StoreErrorKind::Auth => "auth",
            StoreErrorKind::OutOfMemory => "out_of_memory",
            StoreErrorKind::Busy => "busy",
            StoreErrorKind::WrongType => "wrong_type",
            StoreErrorKind::Limit => "limit",
            StoreErrorKind::Replication => "replication",
            StoreErrorKind::DiskFull => "disk_full",
            StoreErrorKind::Damaged => "damaged",
            StoreErrorKind::Failed => "failed",
        }
    }

    /// The short reason sent to clients.
    pub fn reason(self) -> &'static str {
        match self {
            StoreErrorKind::Unreachable => "counter store unreachable",
            StoreErrorKind::Timeout => "counter store timed out",
            StoreErrorKind::Loading => "counter store is loading its data",
            StoreErrorKind::ReadOnly => "counter store refuses writes",
            StoreErrorKind::Auth => "counter store rejected our credentials",
            StoreErrorKind::OutOfMemory => "counter store is out of memory",
            StoreErrorKind::Busy => "counter store is busy",
            StoreErrorKind::WrongType => "counter store holds a key of the wrong type",
            StoreErrorKind::Limit => "the counter is at its limit",
            StoreErrorKind::Replication => "counter store could not replicate the visit in time",
            StoreErrorKind::DiskFull => "counter store's disk is full",
            StoreErrorKind::Damaged => "counter store's data is damaged",
            StoreErrorKind::Failed => "counter store failed",
        }
    }
}

/// A store failure: a kind whose reason is safe to send, a detail that only goes to logs,
/// and whether the write it ended may have been applied anyway.
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    detail: String,
    in_doubt: bool,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            in_doubt: false,
        }
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

    /// Sets whether the write may have been applied.
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
