//! Days as the history counts them: whole UTC days, numbered from 1970-01-01, written
//! `YYYY-MM-DD`.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const SECONDS_PER_DAY: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub u32);

impl Day {
    pub fn today() -> Self {
        Self::of(SystemTime::now())
    }

    pub fn of(time: SystemTime) -> Self {
        let seconds = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self((seconds / SECONDS_PER_DAY) as u32)
    }

    /// `days` earlier (not before 1970-01-01).
    pub fn minus(self, days: u32) -> Self {
        Self(self.0.saturating_sub(days))
    }

    /// `days` later.
    pub fn plus(self, days: u32) -> Self {
        Self(self.0.saturating_add(days))
    }

    /// The moment the day after this one begins.
    pub fn end(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs((u64::from(self.0) + 1) * SECONDS_PER_DAY)
    }

    /// Reads `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 10 || text.as_bytes()[4] != b'-' || text.as_bytes()[7] != b'-' {
            return None;
        }
        let time = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
        let day = Self::of(time);
        (day.to_string() == text).then_some(day)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = UNIX_EPOCH + Duration::from_secs(u64::from(self.0) * SECONDS_PER_DAY);
        let stamp = humantime::format_rfc3339_seconds(start).to_string();
        f.write_str(&stamp[..10])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_written_and_read_as_dates() {
        let day = Day::parse("2026-11-30").unwrap();
        assert_eq!(day.to_string(), "2026-11-30");
        assert_eq!(day.minus(30).to_string(), "2026-10-31");
        assert_eq!(Day(0).to_string(), "1970-01-01");
        assert_eq!(Day::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        for bad in [
            "2026-13-01",
            "2026-11-31",
            "20261130",
            "2026-1-30",
            "yesterday",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
    }
}
