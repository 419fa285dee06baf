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

use std::{collections::BTreeMap, fmt, marker::PhantomData};

use base64::Engine;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{Error as _, MapAccess, Visitor},
};

use super::{Day, sketch::Sketch};

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
    #[serde(default, deserialize_with = "each_day_once")]
    pub days: BTreeMap<String, u64>,
    /// Unique visitors per day.
    #[serde(default, deserialize_with = "each_day_once")]
    pub unique: BTreeMap<String, UniqueExport>,
}

/// A map of days in which no day comes twice: JSON allows a repeated key, and a reader
/// would keep one of the two values without a word.
fn each_day_once<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Days<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for Days<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("an object of days")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut days = BTreeMap::new();
            while let Some((day, value)) = map.next_entry::<String, V>()? {
                if days.contains_key(&day) {
                    return Err(A::Error::custom(format_args!("{day} is given twice")));
                }
                days.insert(day, value);
            }
            Ok(days)
        }
    }

    deserializer.deserialize_map(Days(PhantomData))
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

impl CounterExport {
    /// A line of an export, or why it is not one, in words: not JSON, not an object (a
    /// list of the same values is not taken for one), a field missing, unknown or of
    /// another kind, a day given twice.
    pub fn from_line(line: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|error| format!("not JSON (column {})", error.column()))?;
        let Some(fields) = value.as_object() else {
            return Err("not a JSON object".to_owned());
        };
        if let Some(unique) = fields.get("unique")
            && !unique
                .as_object()
                .is_some_and(|days| days.values().all(serde_json::Value::is_object))
        {
            return Err(
                "unique: an object of days, each an object (estimate, format, sketch)".to_owned(),
            );
        }
        // From the text again, not the value: a value keeps one of a repeated key.
        serde_json::from_slice(line).map_err(|error| in_words(&error))
    }

    /// What import refuses in a line beyond its shape, in words: a day that is not a date,
    /// or later than the day after `today` (hosts' clocks may differ by a day, not more:
    /// a day in the future would stay in the history and, where it keeps the latest days,
    /// push the real ones out), a day's visits beyond what a total can hold, a sketch
    /// of a known format that its store would not take. The name and the total are checked by the caller.
    pub fn check(&self, today: Day) -> Result<(), String> {
        let latest = today.plus(1);
        let date = |field: &str, day: &str| match Day::parse(day) {
            // Shaped as a date, and before the first day a day's count is kept for.
            None if day
                .get(..4)
                .and_then(|year| year.parse::<u32>().ok())
                .is_some_and(|year| year < 1970)
                && day
                    .get(4..)
                    .is_some_and(|rest| Day::parse(&format!("1970{rest}")).is_some()) =>
            {
                Err(format!(
                    "{field}: {day} is before 1970-01-01, the first day a history holds"
                ))
            }
            None => Err(format!("{field}: {day:?} is not a date (YYYY-MM-DD)")),
            Some(parsed) if parsed > latest => Err(format!(
                "{field}: {day} is after {latest}, the day after today (UTC)"
            )),
            Some(_) => Ok(()),
        };
        for (day, visits) in &self.days {
            date("days", day)?;
            if i64::try_from(*visits).is_err() {
                return Err(format!("days: {day}: at most {} visits", i64::MAX));
            }
        }
        for (day, unique) in &self.unique {
            date("unique", day)?;
            if unique.format != REDIS_HLL && unique.format != HLLPP {
                return Err(format!(
                    "unique: {day}: {:?} is not a sketch format ({REDIS_HLL} or {HLLPP})",
                    unique.format
                ));
            }
            let decoded = || base64::engine::general_purpose::STANDARD.decode(&unique.sketch);
            if unique.format == REDIS_HLL && !decoded().is_ok_and(|sketch| is_redis_hll(&sketch)) {
                return Err(format!(
                    "unique: {day}: the sketch is not a Redis HyperLogLog"
                ));
            }
            if unique.format == HLLPP
                && !decoded().is_ok_and(|sketch| Sketch::from_bytes(&sketch).is_some())
            {
                return Err(format!(
                    "unique: {day}: the sketch is not one the embedded store writes"
                ));
            }
        }
        Ok(())
    }

    /// Leaves out the days before `first`, which a store keeping its history from `first`
    /// would not hold (it drops them at the counter's next new day); how many days were
    /// left out. Call after `check`: days that are not dates stay.
    pub fn keep_days_from(&mut self, first: Day) -> usize {
        let before = |day: &String| Day::parse(day).is_some_and(|day| day < first);
        let mut left_out: Vec<String> = self.days.keys().filter(|d| before(d)).cloned().collect();
        left_out.extend(self.unique.keys().filter(|d| before(d)).cloned());
        left_out.sort_unstable();
        left_out.dedup();
        for day in &left_out {
            self.days.remove(day);
            self.unique.remove(day);
        }
        left_out.len()
    }
}

/// serde's account of a field of the wrong kind, in the service's words: the numbers
/// named by what they hold rather than by Rust's types, the position left out (the
/// caller names the line).
fn in_words(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let mut text = text.split(" at line ").next().unwrap_or(&text).to_owned();
    // serde_json reads a whole number beyond 64 bits as a fraction, and says so.
    if let Some(rest) = text.strip_prefix("invalid type: floating point `")
        && let Some((_, expected)) = rest.split_once("`, ")
    {
        text = format!("a fraction, or a whole number out of range; {expected}");
    }
    [
        ("expected i64", "expected a whole number"),
        ("expected u64", "expected a whole number from 0"),
        ("struct CounterExport", "a counter"),
        ("struct UniqueExport", "an estimate, format and sketch"),
    ]
    .iter()
    .fold(text.to_owned(), |text, (rust, words)| {
        text.replace(rust, words)
    })
}

/// Registers in Redis's HyperLogLog.
const HLL_REGISTERS: usize = 1 << 14;
/// Its header: `HYLL`, the encoding, three unused bytes, the cached cardinality.
const HLL_HEADER: usize = 16;

/// Whether `bytes` are a HyperLogLog as Redis writes it, dense or sparse, so that Redis
/// will take it (`PFADD`, `PFCOUNT`) rather than answer `INVALIDOBJ`. A sparse sketch's
/// runs must cover the registers exactly, as Redis checks.
pub fn is_redis_hll(bytes: &[u8]) -> bool {
    if bytes.len() < HLL_HEADER || &bytes[..4] != b"HYLL" {
        return false;
    }
    let body = &bytes[HLL_HEADER..];
    match bytes[4] {
        // Dense: 6 bits a register.
        0 => body.len() == HLL_REGISTERS * 6 / 8,
        // Sparse: runs of zeros (ZERO, XZERO) and of one value (VAL).
        1 => {
            let mut registers = 0usize;
            let mut at = 0;
            while at < body.len() {
                let op = body[at];
                if op & 0xc0 == 0x00 {
                    registers += usize::from(op & 0x3f) + 1;
                    at += 1;
                } else if op & 0xc0 == 0x40 {
                    let Some(&low) = body.get(at + 1) else {
                        return false;
                    };
                    registers += ((usize::from(op & 0x3f) << 8) | usize::from(low)) + 1;
                    at += 2;
                } else {
                    registers += usize::from(op & 0x03) + 1;
                    at += 1;
                }
                if registers > HLL_REGISTERS {
                    return false;
                }
            }
            registers == HLL_REGISTERS
        }
        _ => false,
    }
}

/// `sketch` (a Redis HyperLogLog) with its cached cardinality marked stale, so that Redis
/// counts its registers at the next `PFCOUNT` rather than answering the cached number,
/// which an imported sketch could set to anything.
pub fn with_stale_cache(mut sketch: Vec<u8>) -> Vec<u8> {
    // The cache is the header's last 8 bytes, little-endian; the top bit of the last one
    // says it is stale.
    if let Some(last) = sketch.get_mut(HLL_HEADER - 1) {
        *last |= 0x80;
    }
    sketch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_of_the_wrong_kind_is_said_without_rust_types() {
        for line in [
            r#"{"name":"a","total":"0"}"#,
            r#"{"name":"a","total":1.5}"#,
            r#"{"name":"a","total":0,"days":{"2026-01-01":-1}}"#,
            r#"{"name":"a","total":0,"unique":{"2026-01-01":{"estimate":-1,"format":"x","sketch":""}}}"#,
            // Beyond 64 bits: read as a fraction by serde_json, not to be called one alone.
            r#"{"name":"a","total":18446744073709551616}"#,
        ] {
            let error = CounterExport::from_line(line.as_bytes()).unwrap_err();
            assert!(error.contains("whole number"), "{line}: {error}");
            for rust in ["i64", "u64", "struct", "line 1", "floating point", "e+19"] {
                assert!(!error.contains(rust), "{line}: {error}");
            }
        }
    }

    #[test]
    fn a_day_before_1970_is_refused_for_that_and_not_as_no_date() {
        let today = Day::parse("2026-11-30").unwrap();
        let refusal = |day: &str| {
            let mut counter = CounterExport {
                name: "a".into(),
                total: 1,
                ..CounterExport::default()
            };
            counter.days.insert(day.into(), 1);
            counter.check(today).unwrap_err()
        };
        for day in ["1969-12-31", "0001-01-01", "1900-02-28"] {
            let error = refusal(day);
            assert!(error.contains("before 1970-01-01"), "{day}: {error}");
        }
        for day in [
            "1969-13-01",
            "1969-02-30",
            "19é9-01-01",
            "é969-01-01",
            "2026-1-1",
        ] {
            let error = refusal(day);
            assert!(error.contains("is not a date"), "{day}: {error}");
        }
    }

    #[test]
    fn a_sketch_of_no_known_format_is_refused_not_left_out() {
        let mut counter = CounterExport {
            name: "a".into(),
            total: 1,
            ..CounterExport::default()
        };
        counter.unique.insert(
            "2026-11-30".into(),
            UniqueExport {
                estimate: 1,
                format: "foo".into(),
                sketch: String::new(),
            },
        );
        let said = counter
            .check(Day::parse("2026-11-30").unwrap())
            .unwrap_err();
        assert!(said.contains("\"foo\" is not a sketch format"), "{said}");
    }

    /// An empty sparse sketch: one XZERO run over every register, as `PFADD` of nothing
    /// makes it.
    fn empty_sparse() -> Vec<u8> {
        let mut sketch = b"HYLL\x01\0\0\0".to_vec();
        sketch.extend([0u8; 8]);
        sketch.extend([0x7f, 0xff]);
        sketch
    }

    #[test]
    fn redis_sketches_are_told_from_damaged_ones() {
        assert!(is_redis_hll(&empty_sparse()));
        let mut dense = b"HYLL\0\0\0\0".to_vec();
        dense.extend([0u8; 8]);
        dense.extend(vec![0u8; 12288]);
        assert!(is_redis_hll(&dense));

        // The probe's sketch: a sparse header and runs past the registers.
        let mut garbage = b"HYLL\x01\0\0\0".to_vec();
        garbage.extend([0u8; 8]);
        garbage.extend([0xff; 6]);
        assert!(!is_redis_hll(&garbage));
        assert!(
            !is_redis_hll(&dense[..dense.len() - 1]),
            "a dense sketch cut short"
        );
        assert!(
            !is_redis_hll(&empty_sparse()[..17]),
            "an XZERO without its second byte"
        );
        assert!(!is_redis_hll(b"HYLL"));
        assert!(!is_redis_hll(b"not a sketch at all!"));
    }

    #[test]
    fn a_line_with_days_that_are_not_dates_or_too_many_visits_is_refused() {
        let today = Day::parse("2026-11-30").unwrap();
        let mut counter = CounterExport {
            name: "a".into(),
            total: 1,
            ..CounterExport::default()
        };
        counter.days.insert("2026-11-30".into(), 3);
        assert_eq!(counter.check(today), Ok(()));
        counter.days.insert("total".into(), 1);
        assert!(counter.check(today).unwrap_err().contains("not a date"));
        counter.days.remove("total");
        counter.days.insert("2026-11-29".into(), u64::MAX);
        assert!(counter.check(today).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_line_is_read_as_an_object_and_refused_in_words() {
        let line = br#"{"name":"a","total":5,"days":{"2026-11-30":5}}"#;
        assert_eq!(CounterExport::from_line(line).unwrap().total, 5);
        let refused = |line: &str| CounterExport::from_line(line.as_bytes()).unwrap_err();

        assert_eq!(refused(r#"{"name":"a","#), "not JSON (column 12)");
        assert_eq!(refused(r#"["a",5,{}]"#), "not a JSON object");
        let list = r#"{"name":"a","total":1,"unique":{"2026-11-30":[1,"hllpp-p14",""]}}"#;
        assert!(refused(list).starts_with("unique: an object of days"));
        for line in [
            r#"{"name":"a","total":"x"}"#,
            r#"{"name":"a"}"#,
            r#"{"name":"a","total":1,"extra":1}"#,
            r#"{"name":"a","total":1,"unique":{"2026-11-30":{"estimate":1}}}"#,
        ] {
            let said = refused(line);
            assert!(
                !said.contains("struct") && !said.contains("Export"),
                "{said}"
            );
        }
    }

    #[test]
    fn a_day_given_twice_is_refused_not_taken_once() {
        let line = r#"{"name":"a","total":5,"days":{"2026-11-30":2,"2026-11-30":3}}"#;
        let error = serde_json::from_str::<CounterExport>(line).unwrap_err();
        assert!(
            error.to_string().contains("2026-11-30 is given twice"),
            "{error}"
        );

        let unique = r#"{"estimate":1,"format":"hllpp-p14","sketch":""}"#;
        let line = format!(
            r#"{{"name":"a","total":5,"unique":{{"2026-11-29":{unique},"2026-11-29":{unique}}}}}"#
        );
        let error = serde_json::from_str::<CounterExport>(&line).unwrap_err();
        assert!(
            error.to_string().contains("2026-11-29 is given twice"),
            "{error}"
        );

        let line = r#"{"name":"a","total":5,"days":{"2026-11-29":2,"2026-11-30":3}}"#;
        let counter: CounterExport = serde_json::from_str(line).unwrap();
        assert_eq!(counter.days.len(), 2);
    }

    #[test]
    fn days_before_the_history_are_left_out() {
        let mut counter = CounterExport {
            name: "a".into(),
            total: 9,
            ..CounterExport::default()
        };
        for day in ["2026-11-27", "2026-11-28", "2026-11-29", "2026-11-30"] {
            counter.days.insert(day.into(), 2);
        }
        let unique = UniqueExport {
            estimate: 1,
            format: HLLPP.into(),
            sketch: String::new(),
        };
        counter.unique.insert("2026-11-26".into(), unique.clone());
        counter.unique.insert("2026-11-28".into(), unique);

        let left_out = counter.keep_days_from(Day::parse("2026-11-29").unwrap());

        assert_eq!(left_out, 3, "26 (unique only), 27, 28 (both)");
        assert_eq!(
            counter.days.keys().collect::<Vec<_>>(),
            ["2026-11-29", "2026-11-30"]
        );
        assert!(counter.unique.is_empty());
        assert_eq!(counter.total, 9, "the total is not the days' sum");
    }

    #[test]
    fn a_line_with_days_after_tomorrow_is_refused() {
        let today = Day::parse("2026-11-30").unwrap();
        let mut counter = CounterExport {
            name: "a".into(),
            total: 1,
            ..CounterExport::default()
        };
        counter.days.insert("2026-12-01".into(), 3);
        assert_eq!(
            counter.check(today),
            Ok(()),
            "another host's clock a day ahead"
        );
        counter.days.insert("2026-12-02".into(), 1);
        assert!(
            counter
                .check(today)
                .unwrap_err()
                .contains("days: 2026-12-02 is after 2026-12-01")
        );
        counter.days.remove("2026-12-02");
        counter.unique.insert(
            "2099-01-01".into(),
            UniqueExport {
                estimate: 1,
                format: HLLPP.into(),
                sketch: String::new(),
            },
        );
        assert!(
            counter
                .check(today)
                .unwrap_err()
                .contains("unique: 2099-01-01 is after")
        );
    }
}
