//! Named counters: one per page or repository, beside the tutorial's own (the one named
//! by `--counter-key`, `hits`). Every counter has a total (INCR semantics, like `hits`),
//! its visits per day, and its unique visitors per day; visits to any mix of counters are
//! batched into one store write, exactly once, as the tutorial's are.
//!
//! - `name`: what a counter may be called;
//! - `day`: days as the history counts them (UTC);
//! - `visitor`: who a visitor is, for unique counts, without keeping who it was;
//! - `sketch`: the unique-visitor sketch the embedded store keeps;
//! - `rate_limit`: how many visits one client may count;
//! - `admin`: the administrator's token; `export`: the format of export and import.

pub mod admin;
pub mod day;
pub mod export;
pub mod name;
pub mod rate_limit;
pub mod sketch;
pub mod visitor;

use self::{admin::AdminToken, rate_limit::RateLimiter, visitor::TrustedProxies};
pub use self::{day::Day, name::CounterName};
use crate::config::CounterSettings;

/// What a query's `count=` says: `Some(false)` declines counting (`0`, `false`, `no`,
/// `off`, in any case; a zero written with more digits), `Some(true)` counts (`1` or
/// another number, `true`, `yes`, `on`, or nothing after `=`), and `None` is neither, which
/// a request is refused for rather than guessed at: `count=flase` meant not to count.
pub fn count_flag(value: &str) -> Option<bool> {
    let word = |words: [&str; 3]| words.iter().any(|word| value.eq_ignore_ascii_case(word));
    if word(["false", "no", "off"]) {
        Some(false)
    } else if value.is_empty() || word(["true", "yes", "on"]) {
        Some(true)
    } else if value.bytes().all(|digit| digit.is_ascii_digit()) {
        Some(value.bytes().any(|digit| digit != b'0'))
    } else {
        None
    }
}

/// What the counting and reading routes of every worker share.
pub struct CounterRules {
    /// The tutorial's counter, the one named by the counter key.
    pub tutorial: CounterName,
    pub policy: CounterPolicy,
    pub trusted_proxies: TrustedProxies,
    /// For named counters and badges.
    pub rate_limit: Option<RateLimiter>,
    /// For the tutorial's `GET /`.
    pub tutorial_rate_limit: Option<RateLimiter>,
    /// `None`: administration is off.
    pub admin: Option<AdminToken>,
}

impl CounterRules {
    pub fn new(tutorial: CounterName, settings: &CounterSettings) -> Self {
        Self {
            tutorial,
            policy: settings.policy,
            trusted_proxies: settings.trusted_proxies.clone(),
            rate_limit: settings.rate_limit.map(RateLimiter::new),
            tutorial_rate_limit: settings.tutorial_rate_limit.map(RateLimiter::new),
            admin: settings.admin_token.clone().map(AdminToken::new),
        }
    }

    /// Forgets clients of the rate limits that are back at a full allowance.
    pub fn upkeep(&self) {
        for limiter in [&self.rate_limit, &self.tutorial_rate_limit]
            .into_iter()
            .flatten()
        {
            limiter.upkeep();
        }
    }
}

/// One counter's part of a store write: how many visits, and who made them (each
/// visitor as `visitor::Visitor::raw`, not yet salted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub counter: CounterName,
    pub visits: u64,
    pub visitors: Vec<u64>,
}

/// What the store did with one tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TallyResult {
    /// Counted: the total after it.
    Counted(i64),
    /// The counter is not one the administrator created, and only those count
    /// (`--counters closed`).
    Unknown,
    /// A new counter, and there are as many as allowed (`--max-counters`).
    TooMany,
    /// The counter's total is at the largest number it can hold.
    AtLimit,
    /// This replica's share of the tutorial counter is at the largest number it can hold.
    ShareAtLimit,
    /// One of the counter's keys holds something that is not a counter's (an operator
    /// wrote it); nothing of the tally was applied.
    WrongType,
    /// The counter is in the registry but its total is gone (an operator deleted or
    /// renamed it): counting from 1 again would repeat its numbers; nothing was applied.
    Gone,
}

/// Which counters count a visit, and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterPolicy {
    /// Only counters the administrator created count visits; others are 404.
    pub closed: bool,
    /// Counters at most; a new name beyond it is refused.
    pub max_counters: u64,
    /// Days of history kept.
    pub retention_days: u32,
}

impl Default for CounterPolicy {
    fn default() -> Self {
        Self {
            closed: false,
            max_counters: 50_000,
            retention_days: 400,
        }
    }
}

/// A counter as read, without counting a visit: its total and its last days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterReading {
    pub total: i64,
    /// The days asked for, oldest first, today (UTC) last; days without visits too.
    pub days: Vec<DayReading>,
}

impl CounterReading {
    /// Today's visits and unique visitors.
    pub fn today(&self) -> DayReading {
        self.days.last().cloned().unwrap_or_default()
    }
}

/// One day of a counter's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DayReading {
    pub date: String,
    pub visits: u64,
    /// About how many distinct visitors came (a HyperLogLog estimate, about 1 %), never
    /// more than the visits.
    pub unique: u64,
}

impl DayReading {
    /// A day's reading from its visits and the estimate of its distinct visitors, which
    /// can be a little above the visits (1 000 visits by as many visitors may be estimated
    /// at 1 008): capped at them.
    pub fn new(date: String, visits: u64, estimate: u64) -> Self {
        Self {
            date,
            visits,
            unique: estimate.min(visits),
        }
    }
}
