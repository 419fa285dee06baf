//! Parsers and types for the values of single settings: durations, Redis addresses, the
//! log format. Checks that involve several settings live in `Settings::check`.

use std::{fmt, time::Duration};

use clap::ValueEnum;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when standard output is not a terminal, text when it is.
    Auto,
    /// One JSON object per line, for containers and log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// The longest duration any setting takes: far beyond any sensible timeout, and far
/// from where adding it to a point in time could overflow.
const LONGEST: Duration = Duration::from_secs(7 * 86_400);

/// Parses durations such as `10s`, `500ms`, `2m` or `1m 30s` (humantime's syntax), and a
/// bare number as seconds; at most 7 days.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = parse_any_duration(text)?;
    if parsed > LONGEST {
        return Err("is more than 7 days, the longest taken".to_owned());
    }
    Ok(parsed)
}

/// A duration in `parse_duration`'s forms, of any length.
fn parse_any_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("'{text}' is out of range"))
    } else {
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 10s, 500ms, 2m)"))
    }
}

/// How many visits one client may count per window (`--rate-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub visits: u32,
    pub per: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.visits,
            humantime::format_duration(self.per)
        )
    }
}

/// A rate limit setting: a limit, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSetting(pub Option<RateLimit>);

/// Parses `N/window` (`60/1m`: sixty visits a minute), or `off`.
pub fn parse_rate_limit(text: &str) -> Result<RateLimitSetting, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(RateLimitSetting(None));
    }
    let example = "(examples: 60/1m, 10/1s, off)";
    let (visits, per) = text
        .split_once('/')
        .ok_or_else(|| format!("'{text}' is not visits/window {example}"))?;
    let visits: u32 = visits
        .trim()
        .parse()
        .ok()
        .filter(|&v| (1..=1_000_000).contains(&v))
        .ok_or_else(|| format!("'{visits}' is not a number of visits from 1 to 1000000"))?;
    // Held to at most a day by the check below.
    let per = parse_any_duration(per)
        .map_err(|_| format!("has no window after / that is a duration {example}"))?;
    if per < Duration::from_millis(1) || per > Duration::from_secs(86_400) {
        return Err(format!("the window must be from 1ms to 1 day {example}"));
    }
    Ok(RateLimitSetting(Some(RateLimit { visits, per })))
}

/// Whether counters need the administrator to create them (`--counters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CounterMode {
    /// Any valid name counts; a new name makes a new counter.
    Open,
    /// Only counters the administrator created count; others are 404.
    Closed,
}

/// A Redis URL. It may hold a password, so it shows itself only with the password
/// masked; `expose` gives the real text to the one place that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no URL was given (an empty value).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", redact_url(&self.0))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// The largest database number a URL may name (Redis's `SELECT` takes a 32-bit index; a
/// server has 16 unless configured otherwise).
pub const MAX_DATABASE: i64 = i32::MAX as i64;

const REDIS_URL_FORMS: &str =
    "expected redis://[[user]:password@]host[:port][/db] or unix:///path/to/socket[?db=N]";

/// Parses `redis://[[user]:password@]host[:port][/db]`, or a unix socket as
/// `unix:///path[?db=N]` (also `redis+unix://`); empty means none (so that a stack file
/// can clear the image's default). The error never repeats the text, which may hold a
/// password.
pub fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    if text.is_empty() {
        return Ok(RedisUrl(String::new()));
    }
    let scheme = text.split_once("://").map_or("", |(scheme, _)| scheme);
    if scheme.eq_ignore_ascii_case("rediss") {
        return Err("TLS (rediss://) is not supported; use redis:// on a private network".into());
    }
    if !matches!(scheme, "redis" | "redis+unix" | "unix") {
        return Err(REDIS_URL_FORMS.into());
    }
    if !percent_encoding_is_valid(text) {
        return Err("a % must be followed by two hexadecimal digits (percent-encoding)".into());
    }
    // redis:// takes the database from the path alone: a `?db=` would be ignored.
    let query = text.split_once('?').map(|(_, query)| query);
    if scheme == "redis"
        && form_urlencoded::parse(query.unwrap_or_default().as_bytes()).any(|(key, _)| key == "db")
    {
        return Err(
            "the database goes in the path (redis://host:port/db); ?db= is for \
                    unix:///path sockets"
                .into(),
        );
    }
    let info = redis::IntoConnectionInfo::into_connection_info(text)
        .map_err(|_| REDIS_URL_FORMS.to_owned())?;
    if let redis::ConnectionAddr::Tcp(_, 0) = info.addr() {
        return Err("the port must be 1 to 65535".into());
    }
    let db = info.redis_settings().db();
    if !(0..=MAX_DATABASE).contains(&db) {
        return Err(format!("the database number must be 0 to {MAX_DATABASE}"));
    }
    Ok(RedisUrl(text.to_owned()))
}

/// Whether every `%` in `text` starts a `%XX` escape.
fn percent_encoding_is_valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Any text with the password of a URL (`scheme://user:password@host`) masked.
pub fn redact_url(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => text.to_owned(),
        },
        None => text.to_owned(),
    }
}

/// A `host:port` pair, such as a sentinel's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `host:port`, `[v6]:port`, or `host` alone (the sentinel port, 26379).
pub fn parse_host_port(text: &str) -> Result<HostPort, String> {
    const SENTINEL_PORT: u16 = 26379;
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after an IPv6 address".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected host:port".to_owned());
    }
    if host.parse::<std::net::IpAddr>().is_err() && !is_host_name(host) {
        return Err(
            "the host must be an IP address or a DNS name (letters, digits, '-', '_' and \
             dots, at most 63 characters between dots and 253 in all)"
                .to_owned(),
        );
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| "the port must be 1 to 65535".to_owned())?,
    };
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// Whether `host` could be a DNS name: what resolves on a Swarm's network too (a service's
/// name holds `_`).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The tutorial's counter is a counter like any other (read, set, exported and imported
/// under its name), so its key must be a counter name.
pub fn parse_counter_key(text: &str) -> Result<String, String> {
    crate::counters::CounterName::parse(text)
        .map(|name| name.as_str().to_owned())
        .map_err(|bad| format!("must be a counter name: {bad}"))
}

pub fn parse_replica(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 100 || text.chars().any(char::is_control) {
        return Err("must be 1 to 100 characters without control characters".into());
    }
    Ok(text.to_owned())
}

pub fn parse_version(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Ok(env!("CARGO_PKG_VERSION").to_owned());
    }
    if text.len() > 64 || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be at most 64 visible ASCII characters".into());
    }
    Ok(text.to_owned())
}

pub fn parse_master_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 100 || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be 1 to 100 visible ASCII characters".into());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        // Far longer, a deadline past it would overflow a point in time.
        for long in ["8d", "604801", "18446744073709551615", "300000000000y"] {
            let refused = parse_duration(long).unwrap_err();
            assert!(refused.contains("7 days"), "{long}: {refused}");
        }
    }

    #[test]
    fn rate_limits_take_visits_over_a_window_of_at_most_a_day() {
        let limit = parse_rate_limit("60/1m").unwrap().0.unwrap();
        assert_eq!((limit.visits, limit.per), (60, Duration::from_secs(60)));
        assert_eq!(parse_rate_limit("off").unwrap().0, None);
        for (written, says) in [
            ("60/8d", "from 1ms to 1 day"),
            ("60/1m/2", "no window after /"),
            ("0/1m", "from 1 to 1000000"),
        ] {
            let refused = parse_rate_limit(written).unwrap_err();
            assert!(refused.contains(says), "{written}: {refused}");
        }
    }

    #[test]
    fn redis_urls_never_show_their_password() {
        let url = parse_redis_url("redis://:s3cret@redis:6379/0").unwrap();
        assert_eq!(url.to_string(), "redis://***@redis:6379/0");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "redis://:s3cret@redis:6379/0");
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
    }

    #[test]
    fn unusable_redis_urls_are_refused_without_echoing_them() {
        let tls = parse_redis_url("rediss://:s3cret@h:6379").unwrap_err();
        assert!(tls.contains("TLS"), "{tls}");
        for bad in [
            "http://:s3cret@h",
            "redis://:s3cret@h:notaport",
            "s3cret",
            "redis://:s3cret@h:0/0",
            "redis://:s3cret@h:6379/99999999999",
            "redis://:s3cret@h:6379/-1",
            "redis://:s3cret%ZZ@h:6379/0",
            "redis://:s3cret@h:6379/0%",
            "redis://:s3cret@h:6379/1?db=3",
            "redis://:s3cret@h:6379?db=3",
        ] {
            let error = parse_redis_url(bad).expect_err(bad);
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn tcp_and_unix_socket_urls_are_taken() {
        for good in [
            "redis://h",
            "redis://:p%40ss@h:6380/3",
            "redis://user:pass@10.0.0.1:6379/0",
            "unix:///run/redis/redis.sock",
            "unix:///run/redis/redis.sock?db=2",
            "redis+unix:///tmp/r.sock",
        ] {
            assert!(parse_redis_url(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn sentinel_addresses_take_a_default_port() {
        assert_eq!(
            parse_host_port("s1").unwrap(),
            HostPort {
                host: "s1".into(),
                port: 26379
            }
        );
        assert_eq!(parse_host_port("10.0.0.2:5000").unwrap().port, 5000);
        assert_eq!(parse_host_port("[::1]:7").unwrap().host, "::1");
        assert!(parse_host_port("s1:0").is_err());
        assert!(parse_host_port(":26379").is_err());
        assert_eq!(
            parse_host_port("stackdemo_sentinel.").unwrap().host,
            "stackdemo_sentinel."
        );
        for junk in ["10/0s", "é∞☃", &"x".repeat(64), "a..b", "a b", "[::1"] {
            assert!(parse_host_port(junk).is_err(), "{junk}");
        }
    }
}
