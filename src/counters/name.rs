//! What a counter may be called: enough for `owner/repo`, a domain and a path, and
//! nothing a URL, a Redis key or a log line would have to escape.

use std::{fmt, sync::Arc};

/// The longest name, in bytes.
pub const MAX_LEN: usize = 128;

/// The last segment of a counter path that names its history instead
/// (`/api/counters/{name}/history`), so no counter may end with it.
pub const HISTORY: &str = "history";

/// What a path of the counter API names before `/history`, if it names a history.
pub fn history_of(path: &str) -> Option<&str> {
    path.strip_suffix(HISTORY)?.strip_suffix('/')
}

/// A counter's name: 1 to 128 characters of `A-Z a-z 0-9 . _ -` and `/`; slashes only
/// between segments (not first, not last, not two in a row); no segment `.` or `..`;
/// the last segment not `history`. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterName(Arc<str>);

/// Why a name is refused, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName(pub &'static str);

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl CounterName {
    pub fn parse(text: &str) -> Result<Self, BadName> {
        if text.is_empty() || text.len() > MAX_LEN {
            return Err(BadName("a counter name has 1 to 128 characters"));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        {
            return Err(BadName(
                "a counter name has only letters, digits, '.', '_', '-' and '/'",
            ));
        }
        let segments: Vec<&str> = text.split('/').collect();
        if segments
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
        {
            return Err(BadName(
                "the parts of a counter name between '/' are not empty, '.' or '..'",
            ));
        }
        if segments.last() == Some(&HISTORY) {
            return Err(BadName(
                "a counter name is not 'history' and does not end with /history",
            ));
        }
        Ok(Self(text.into()))
    }

    /// A name the store holds, or the counter key, as it is: both were checked as names
    /// before they were written or taken.
    pub fn of_key(key: &str) -> Self {
        Self(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CounterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_repositories_domains_and_paths_are_taken() {
        for good in [
            "hits",
            "octocat/hello-world",
            "example.com",
            "example.com/blog/2026/a-post",
            "a_b-c.d",
            &"x".repeat(MAX_LEN),
        ] {
            assert_eq!(CounterName::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            &"x".repeat(MAX_LEN + 1),
            "/leading",
            "trailing/",
            "two//slashes",
            "a/../b",
            "./a",
            "with space",
            "colon:key",
            "percent%20",
            "ünïcode",
            "query?x",
            "owner/repo/history",
            "history",
        ] {
            assert!(CounterName::parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}
