//! What the embedded database holds, and the transaction that counts a batch.
//!
//! - `counts`: `(name, "")` a counter's total; `(counter key, replica)` a replica's share
//!   of the tutorial counter's visits;
//! - `counters`: every counter, with who created it (`visit` or `admin`);
//! - `days`: `(name, day)` a counter's visits that day;
//! - `uniques`: `(name, day)` that day's unique-visitor sketch (`counters::sketch`);
//! - `salts`: today's salt for visitors' hashes, and no other day's.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

use super::{classify, to_i64};
use crate::{
    counters::{
        CounterName, CounterPolicy, CounterReading, Day, DayReading, Tally, TallyResult,
        export::{CounterExport, HLLPP, UniqueExport},
        sketch::Sketch,
        visitor,
    },
    store::{AdminError, Identity, Previous, StoreError},
};

pub(super) const COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("counts");
pub(super) const COUNTERS: TableDefinition<&str, &str> = TableDefinition::new("counters");
pub(super) const DAYS: TableDefinition<(&str, u32), u64> = TableDefinition::new("days");
pub(super) const UNIQUES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("uniques");
pub(super) const SALTS: TableDefinition<u32, &[u8]> = TableDefinition::new("salts");

/// The field of a counter's total in `counts`.
pub(super) const TOTAL: &str = "";

/// Who created a counter: a visit, or the administrator.
pub(super) const BY_VISIT: &str = "visit";
pub(super) const BY_ADMIN: &str = "admin";

/// Sketches kept decoded between commits at most: the hot counters' of today.
const SKETCHES_CACHED: usize = 256;

/// Creates every table, so that readers never meet a missing one.
pub(super) fn create(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(COUNTS).map_err(classify)?;
    txn.open_table(COUNTERS).map_err(classify)?;
    txn.open_table(DAYS).map_err(classify)?;
    txn.open_table(UNIQUES).map_err(classify)?;
    txn.open_table(SALTS).map_err(classify)?;
    Ok(())
}

/// What a commit needs to know besides the tallies.
pub(super) struct Rules<'a> {
    pub identity: &'a Identity,
    pub tutorial: &'a CounterName,
    pub policy: &'a CounterPolicy,
    /// The administrator's changes so far.
    pub changes: &'a AtomicU64,
}

/// Today's sketches as last committed, decoded, so that a hot counter's is not read and
/// decoded for every commit. Only the writer thread has it; it is emptied whenever a
/// commit fails, as the sketches in it may then hold visitors that were not committed,
/// and when an administrator's change was committed since it was filled.
#[derive(Default)]
pub(super) struct SketchCache {
    sketches: HashMap<(CounterName, Day), Sketch>,
    /// The administrator's changes counted when it was last emptied.
    changes_seen: u64,
}

impl SketchCache {
    pub fn clear(&mut self) {
        self.sketches.clear();
    }

    /// Empties it if an administrator's change came since. Called with the write lock
    /// held: a change counts itself while it holds that lock.
    fn sync(&mut self, changes: &AtomicU64) {
        let now = changes.load(Ordering::Acquire);
        if now != self.changes_seen {
            self.sketches.clear();
            self.changes_seen = now;
        }
    }
}

/// Begins an administrator's change: takes the write lock, then counts the change, so
/// that no commit after it uses a sketch decoded before it.
fn begin_change(db: &Database, changes: &AtomicU64) -> Result<WriteTransaction, StoreError> {
    let txn = db.begin_write().map_err(classify)?;
    changes.fetch_add(1, Ordering::AcqRel);
    Ok(txn)
}

/// Counts every tally of every write in one durable transaction; for each write, what
/// became of each of its tallies. A write of no visits (the writer's recovery probe)
/// changes nothing but fails where a visit would.
pub(super) fn commit(
    db: &Database,
    rules: &Rules<'_>,
    writes: &[&[Tally]],
    sketches: &mut SketchCache,
) -> Result<Vec<Vec<TallyResult>>, StoreError> {
    let day = Day::today();
    let txn = db.begin_write().map_err(classify)?;
    sketches.sync(rules.changes);
    let results = {
        let mut tables = Tables::open(&txn)?;
        let any_visitors = writes
            .iter()
            .flat_map(|w| w.iter())
            .any(|t| !t.visitors.is_empty());
        let salt = if any_visitors {
            Some(tables.salt(day)?)
        } else {
            None
        };
        let mut results = Vec::with_capacity(writes.len());
        for tallies in writes {
            let mut these = Vec::with_capacity(tallies.len());
            for tally in *tallies {
                these.push(tables.count(rules, tally, day, salt.as_ref(), sketches)?);
            }
            results.push(these);
        }
        results
    };
    // The default durability is Immediate: commit returns after the data is on disk. A
    // commit that fails may have reached the disk in part: its visits are in doubt.
    txn.commit().map_err(|e| classify(e).with_doubt())?;
    if sketches.sketches.len() > SKETCHES_CACHED {
        sketches.clear();
    }
    Ok(results)
}

struct Tables<'txn> {
    counts: Table<'txn, (&'static str, &'static str), u64>,
    counters: Table<'txn, &'static str, &'static str>,
    days: Table<'txn, (&'static str, u32), u64>,
    uniques: Table<'txn, (&'static str, u32), &'static [u8]>,
    salts: Table<'txn, u32, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            counts: txn.open_table(COUNTS).map_err(classify)?,
            counters: txn.open_table(COUNTERS).map_err(classify)?,
            days: txn.open_table(DAYS).map_err(classify)?,
            uniques: txn.open_table(UNIQUES).map_err(classify)?,
            salts: txn.open_table(SALTS).map_err(classify)?,
        })
    }

    /// Today's salt, made if there is none; any other day's is removed.
    fn salt(&mut self, day: Day) -> Result<[u8; 16], StoreError> {
        if let Some(held) = self.salts.get(day.0).map_err(classify)? {
            return Ok(visitor::salt_from(held.value()));
        }
        self.salts.retain(|_, _| false).map_err(classify)?;
        let salt = visitor::new_salt();
        self.salts.insert(day.0, &salt[..]).map_err(classify)?;
        Ok(visitor::salt_from(&salt))
    }

    fn get(&self, name: &str, field: &str) -> Result<u64, StoreError> {
        Ok(self
            .counts
            .get((name, field))
            .map_err(classify)?
            .map_or(0, |v| v.value()))
    }

    /// Whether a new counter would be one too many: the tutorial's counter always has its
    /// place among the most allowed, made yet or not.
    fn full(&self, rules: &Rules<'_>) -> Result<bool, StoreError> {
        let tutorial_made = self
            .counters
            .get(rules.tutorial.as_str())
            .map_err(classify)?
            .is_some();
        let counters = self.counters.len().map_err(classify)?;
        Ok(counters + u64::from(!tutorial_made) >= rules.policy.max_counters)
    }

    fn count(
        &mut self,
        rules: &Rules<'_>,
        tally: &Tally,
        day: Day,
        salt: Option<&[u8; 16]>,
        sketches: &mut SketchCache,
    ) -> Result<TallyResult, StoreError> {
        let name = tally.counter.as_str();
        let tutorial = tally.counter == *rules.tutorial;
        let registered = self.counters.get(name).map_err(classify)?.is_some();
        if !registered && !tutorial {
            if rules.policy.closed {
                return Ok(TallyResult::Unknown);
            }
            if self.full(rules)? {
                return Ok(TallyResult::TooMany);
            }
        }
        let visits = tally.visits as i64;
        let Some(total) = to_i64(self.get(name, TOTAL)?)
            .ok()
            .and_then(|total| total.checked_add(visits))
        else {
            return Ok(TallyResult::AtLimit);
        };
        // Today's visits stay within what Redis and an export hold too (i64), checked
        // before anything of the tally is written.
        let before = self
            .days
            .get((name, day.0))
            .map_err(classify)?
            .map_or(0, |v| v.value());
        let Some(today) = i64::try_from(before)
            .ok()
            .and_then(|before| before.checked_add(visits))
        else {
            return Ok(TallyResult::AtLimit);
        };
        if tutorial {
            let replica = rules.identity.replica.as_str();
            let Some(share) = to_i64(self.get(name, replica)?)
                .ok()
                .and_then(|share| share.checked_add(visits))
            else {
                return Ok(TallyResult::ShareAtLimit);
            };
            self.counts
                .insert((name, replica), share as u64)
                .map_err(classify)?;
        }
        self.counts
            .insert((name, TOTAL), total as u64)
            .map_err(classify)?;
        if tally.visits == 0 {
            return Ok(TallyResult::Counted(total));
        }
        if !registered {
            self.counters.insert(name, BY_VISIT).map_err(classify)?;
        }
        self.days
            .insert((name, day.0), today as u64)
            .map_err(classify)?;
        if before == 0 {
            self.forget_before(
                name,
                day.minus(rules.policy.retention_days.saturating_sub(1)),
            )?;
        }
        if let Some(salt) = salt
            && !tally.visitors.is_empty()
        {
            let key = (tally.counter.clone(), day);
            let mut sketch = match sketches.sketches.remove(&key) {
                Some(sketch) => sketch,
                None => self
                    .uniques
                    .get((name, day.0))
                    .map_err(classify)?
                    .and_then(|bytes| Sketch::from_bytes(bytes.value()))
                    .unwrap_or_default(),
            };
            for &raw in &tally.visitors {
                sketch.add(visitor::salted(salt, raw));
            }
            self.uniques
                .insert((name, day.0), sketch.to_bytes().as_slice())
                .map_err(classify)?;
            sketches.sketches.insert(key, sketch);
        }
        Ok(TallyResult::Counted(total))
    }

    /// Removes a counter's days before `first`, and their sketches.
    fn forget_before(&mut self, name: &str, first: Day) -> Result<(), StoreError> {
        self.days
            .retain_in((name, 0)..(name, first.0), |_, _| false)
            .map_err(classify)?;
        self.uniques
            .retain_in((name, 0)..(name, first.0), |_, _| false)
            .map_err(classify)?;
        Ok(())
    }
}

/// A counter's total and its last `days` days (today last); `None` when there is no
/// such counter.
pub(super) fn read_counter(
    db: &Database,
    tutorial: &CounterName,
    name: &CounterName,
    days: u32,
) -> Result<Option<CounterReading>, StoreError> {
    let txn = db.begin_read().map_err(classify)?;
    let counts = txn.open_table(COUNTS).map_err(classify)?;
    let counters = txn.open_table(COUNTERS).map_err(classify)?;
    let day_table = txn.open_table(DAYS).map_err(classify)?;
    let uniques = txn.open_table(UNIQUES).map_err(classify)?;
    let key = name.as_str();
    let total = counts
        .get((key, TOTAL))
        .map_err(classify)?
        .map(|v| v.value());
    let registered = counters.get(key).map_err(classify)?.is_some();
    if total.is_none() && !registered && name != tutorial {
        return Ok(None);
    }
    let today = Day::today();
    let first = today.minus(days.max(1) - 1);
    let mut visits: HashMap<u32, u64> = HashMap::new();
    for entry in day_table
        .range((key, first.0)..=(key, today.0))
        .map_err(classify)?
    {
        let (at, count) = entry.map_err(classify)?;
        visits.insert(at.value().1, count.value());
    }
    let mut unique: HashMap<u32, u64> = HashMap::new();
    for entry in uniques
        .range((key, first.0)..=(key, today.0))
        .map_err(classify)?
    {
        let (at, bytes) = entry.map_err(classify)?;
        if let Some(mut sketch) = Sketch::from_bytes(bytes.value()) {
            unique.insert(at.value().1, sketch.count());
        }
    }
    let days = (first.0..=today.0)
        .map(|d| {
            DayReading::new(
                Day(d).to_string(),
                visits.get(&d).copied().unwrap_or(0),
                unique.get(&d).copied().unwrap_or(0),
            )
        })
        .collect();
    Ok(Some(CounterReading {
        total: to_i64(total.unwrap_or(0))?,
        days,
    }))
}

/// Sets a counter's total, making it (as the administrator's) if there is none; the total
/// before, if there was one.
pub(super) fn set_total(
    db: &Database,
    rules: &Rules<'_>,
    name: &CounterName,
    total: i64,
) -> Result<Option<i64>, AdminError> {
    let txn = begin_change(db, rules.changes)?;
    let previous = {
        let mut tables = Tables::open(&txn)?;
        let key = name.as_str();
        let known = tables.counters.get(key).map_err(classify)?.is_some();
        if !known && name != rules.tutorial && tables.full(rules)? {
            return Err(AdminError::TooMany);
        }
        let previous = tables
            .counts
            .insert((key, TOTAL), total.max(0) as u64)
            .map_err(classify)?
            .map(|v| v.value());
        tables.counters.insert(key, BY_ADMIN).map_err(classify)?;
        previous
    };
    txn.commit().map_err(|e| classify(e).with_doubt())?;
    Ok(previous.map(|p| p as i64))
}

/// Deletes a counter with its history; whether there was one.
pub(super) fn delete(
    db: &Database,
    rules: &Rules<'_>,
    name: &CounterName,
) -> Result<Previous, StoreError> {
    let txn = begin_change(db, rules.changes)?;
    let previous = {
        let mut tables = Tables::open(&txn)?;
        let key = name.as_str();
        let registered = tables.counters.remove(key).map_err(classify)?.is_some();
        let total = tables
            .counts
            .remove((key, TOTAL))
            .map_err(classify)?
            .map(|total| total.value() as i64);
        tables.forget_before(key, Day(u32::MAX))?;
        match total {
            Some(total) => Previous::Total(total),
            // Counted from 0: a counter made holds its total from its first change.
            None if registered => Previous::Total(0),
            None => Previous::Absent,
        }
    };
    txn.commit().map_err(|e| classify(e).with_doubt())?;
    Ok(previous)
}

/// Up to `limit` counters' names after `after`, in name order, with their totals.
pub(super) fn list(
    db: &Database,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(CounterName, i64)>, StoreError> {
    let txn = db.begin_read().map_err(classify)?;
    let counters = txn.open_table(COUNTERS).map_err(classify)?;
    let counts = txn.open_table(COUNTS).map_err(classify)?;
    let range = match after {
        Some(after) => {
            counters.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        }
        None => counters.range::<&str>(..),
    }
    .map_err(classify)?;
    let mut page = Vec::new();
    for entry in range.take(limit) {
        let (name, _) = entry.map_err(classify)?;
        let name = CounterName::of_key(name.value());
        let total = counts
            .get((name.as_str(), TOTAL))
            .map_err(classify)?
            .map_or(0, |v| v.value());
        page.push((name, to_i64(total)?));
    }
    Ok(page)
}

/// Everything a counter holds, for export; `None` when there is no such counter.
pub(super) fn export(
    db: &Database,
    tutorial: &CounterName,
    name: &CounterName,
) -> Result<Option<CounterExport>, StoreError> {
    use base64::Engine;

    let txn = db.begin_read().map_err(classify)?;
    let counts = txn.open_table(COUNTS).map_err(classify)?;
    let counters = txn.open_table(COUNTERS).map_err(classify)?;
    let days = txn.open_table(DAYS).map_err(classify)?;
    let uniques = txn.open_table(UNIQUES).map_err(classify)?;
    let key = name.as_str();
    let total = counts
        .get((key, TOTAL))
        .map_err(classify)?
        .map(|v| v.value());
    if total.is_none() && counters.get(key).map_err(classify)?.is_none() && name != tutorial {
        return Ok(None);
    }
    let mut export = CounterExport {
        name: key.to_owned(),
        total: to_i64(total.unwrap_or(0))?,
        ..CounterExport::default()
    };
    for entry in days.range((key, 0)..=(key, u32::MAX)).map_err(classify)? {
        let (at, visits) = entry.map_err(classify)?;
        export
            .days
            .insert(Day(at.value().1).to_string(), visits.value());
    }
    for entry in uniques
        .range((key, 0)..=(key, u32::MAX))
        .map_err(classify)?
    {
        let (at, bytes) = entry.map_err(classify)?;
        let Some(mut sketch) = Sketch::from_bytes(bytes.value()) else {
            continue;
        };
        export.unique.insert(
            Day(at.value().1).to_string(),
            UniqueExport {
                estimate: sketch.count(),
                format: HLLPP.to_owned(),
                sketch: base64::engine::general_purpose::STANDARD.encode(bytes.value()),
            },
        );
    }
    Ok(Some(export))
}

/// Writes an exported counter in one transaction: its total, its days, and the sketches
/// this store can take (`hllpp-p14`). The counter is then one the administrator created.
pub(super) fn import(
    db: &Database,
    rules: &Rules<'_>,
    name: &CounterName,
    counter: &CounterExport,
) -> Result<(), AdminError> {
    use base64::Engine;

    let txn = begin_change(db, rules.changes)?;
    {
        let mut tables = Tables::open(&txn)?;
        let key = name.as_str();
        let known = tables.counters.get(key).map_err(classify)?.is_some();
        if !known && name != rules.tutorial && tables.full(rules)? {
            return Err(AdminError::TooMany);
        }
        tables.counters.insert(key, BY_ADMIN).map_err(classify)?;
        tables
            .counts
            .insert((key, TOTAL), counter.total.max(0) as u64)
            .map_err(classify)?;
        // The counter becomes the line's: days and sketches it does not give are gone.
        tables.forget_before(key, Day(u32::MAX))?;
        for (day, visits) in &counter.days {
            if let Some(day) = Day::parse(day) {
                tables
                    .days
                    .insert((key, day.0), *visits)
                    .map_err(classify)?;
            }
        }
        for (day, unique) in &counter.unique {
            let Some(day) = Day::parse(day) else { continue };
            if unique.format != HLLPP {
                continue;
            }
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&unique.sketch) else {
                continue;
            };
            if Sketch::from_bytes(&bytes).is_some() {
                tables
                    .uniques
                    .insert((key, day.0), bytes.as_slice())
                    .map_err(classify)?;
            }
        }
    }
    txn.commit().map_err(|e| classify(e).with_doubt())?;
    Ok(())
}
