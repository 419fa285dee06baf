//! Store failures, sorted into the few kinds a client may be told about.

use std::fmt;

/// What went wrong, coarse enough to tell a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    Unreachable,
    Timeout,
    Loading,
    ReadOnly,
    Auth,
    OutOfMemory,
    Busy,
    Failed,
}

impl StoreErrorKind {
    /// Every kind, so that metrics can show each at zero before it first happens.
    pub const ALL: [StoreErrorKind; 8] = [
        StoreErrorKind::Unreachable,
        StoreErrorKind::Timeout,
        StoreErrorKind::Loading,
        StoreErrorKind::ReadOnly,
        StoreErrorKind::Auth,
        StoreErrorKind::OutOfMemory,
        StoreErrorKind::Busy,
        StoreErrorKind::Failed,
    ];
}

/// A store failure: a kind whose reason is safe to send, and a detail that only goes to logs.
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

    /// A call that got no answer: it may or may not have taken effect.
    pub fn timeout() -> Self {
        Self::new(
            StoreErrorKind::Timeout,
            "no answer within the store timeout",
        )
        .with_doubt()
    }

    /// Marks the error as one after which the write may have been applied anyway
    /// (timeout, connection dropped while waiting for the reply).
    pub fn with_doubt(mut self) -> Self {
        self.in_doubt = true;
        self
    }

    pub fn in_doubt(&self) -> bool {
        self.in_doubt
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The short reason sent to clients and used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            StoreErrorKind::Unreachable => "counter store unreachable",
            StoreErrorKind::Timeout => "counter store timed out",
            StoreErrorKind::Loading => "counter store is loading its data",
            StoreErrorKind::ReadOnly => "counter store refuses writes",
            StoreErrorKind::Auth => "counter store rejected our credentials",
            StoreErrorKind::OutOfMemory => "counter store is out of memory",
            StoreErrorKind::Busy => "counter store is busy",
            StoreErrorKind::Failed => "counter store failed",
        }
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
