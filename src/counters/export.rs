//! The export format: one JSON object per line, one line per counter, read back by import
//! (`GET /api/admin/export`, `POST /api/admin/import`).
//!
//! ```json
//! {"name":"owner/repo","total":1234,"days":{"2026-11-29":40,"2026-11-30":12},
//!  "unique":{"2026-11-30":{"estimate":9,"format":"redis-hll","sketch":"SFlMTAE..."}}}
//! ```
//!
//! Totals and days move between any stores. A unique-visitor sketch moves only to a store
//! of the same kind (`format`: `redis-hll` is Redis's own HyperLogLog, `hllpp-p14` the
//! embedded store's); elsewhere the day's estimate stays in the file, and the day starts
//! again from no visitors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The sketch format of Redis's HyperLogLog.
pub const REDIS_HLL: &str = "redis-hll";
/// The sketch format of the embedded store (`counters::sketch`).
pub const HLLPP: &str = "hllpp-p14";

/// The longest line import reads.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One counter, as exported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterExport {
    pub name: String,
    pub total: i64,
    /// Visits per day (`YYYY-MM-DD`).
    #[serde(default)]
    pub days: BTreeMap<String, u64>,
    /// Unique visitors per day.
    #[serde(default)]
    pub unique: BTreeMap<String, UniqueExport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniqueExport {
    /// About how many distinct visitors came that day.
    pub estimate: u64,
    /// Which sketch `sketch` holds.
    pub format: String,
    /// The sketch, base64.
    pub sketch: String,
}
