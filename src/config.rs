//! Command line and environment configuration.
//!
//! Every setting is both a flag and an environment variable. Values are checked once,
//! before anything is bound or opened; a bad value stops start-up with exit code 2 and a
//! message that names the setting.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::verify::VerifyArgs;

/// The visit counter of the Docker Swarm tutorial, on Redis or an embedded store.
#[derive(Debug, Parser)]
#[command(name = "stackdemo", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default when no subcommand is given).
    Serve,
    /// Exit 0 when the service on the configured listen address is ready, 1 otherwise.
    /// Meant for container HEALTHCHECKs in images without curl.
    Healthcheck,
    /// Send visits to a deployment and check the counter's invariants.
    Verify(VerifyArgs),
}

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

/// Settings of the service. `global` lets them follow a subcommand too
/// (`stackdemo serve --listen …`).
#[derive(Clone, Args)]
pub struct Settings {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "STACKDEMO_LISTEN",
        default_value = "0.0.0.0:8000",
        global = true
    )]
    pub listen: SocketAddr,

    /// Redis URL (redis://host:port/db). Unset: the embedded store in --data-dir.
    #[arg(long, env = "REDIS_URL", global = true, value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    /// File holding the Redis password (a Docker secret). Its content is never logged.
    #[arg(long, env = "REDIS_PASSWORD_FILE", global = true)]
    pub redis_password_file: Option<PathBuf>,

    /// Folder of the embedded store. Used when no Redis URL is set.
    #[arg(
        long,
        env = "STACKDEMO_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Name of the counter key (Redis) or record (embedded store).
    #[arg(long, env = "STACKDEMO_COUNTER_KEY", default_value = "hits", global = true,
          value_parser = parse_counter_key)]
    pub counter_key: String,

    /// This replica's name, shown in X-Served-By. Default: the hostname.
    #[arg(long, env = "STACKDEMO_REPLICA", global = true, value_parser = parse_replica)]
    pub replica: Option<String>,

    /// Version reported in X-App-Version and /api/stats. Empty: the built-in version.
    #[arg(long, env = "STACKDEMO_VERSION", default_value = env!("CARGO_PKG_VERSION"),
          global = true, value_parser = parse_version)]
    pub app_version: String,

    /// Log format.
    #[arg(
        long,
        env = "STACKDEMO_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub log_format: LogFormat,

    /// How long shutdown waits for in-flight requests (e.g. 10s, 500ms).
    #[arg(long, env = "STACKDEMO_SHUTDOWN_TIMEOUT", default_value = "10s", global = true,
          value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// A client that has not sent its request headers after this long is disconnected.
    #[arg(long, env = "STACKDEMO_HEADER_READ_TIMEOUT", default_value = "10s", global = true,
          value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A request not answered after this long gets 503.
    #[arg(long, env = "STACKDEMO_REQUEST_TIMEOUT", default_value = "5s", global = true,
          value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long a store command may take before the visit is answered 503.
    #[arg(long, env = "STACKDEMO_STORE_TIMEOUT", default_value = "400ms", global = true,
          value_parser = parse_duration)]
    pub store_timeout: Duration,

    /// Open connections at most; further connections wait to be accepted.
    #[arg(long, env = "STACKDEMO_MAX_CONNECTIONS", default_value_t = 4096, global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Threads serving connections, each with a runtime of its own. Default: one per CPU
    /// this process may use.
    #[arg(long, env = "STACKDEMO_WORKERS", global = true,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

impl Settings {
    /// Worker threads to run: the setting, or the CPUs available (container limits
    /// included).
    pub fn worker_count(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            usize::from,
        )
    }

    /// Checks that settings agree with each other. The error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A visit may wait for the batch ahead of it and then for its own: both must end
        // before the request timeout, or a visit could be answered 503 and still be counted.
        if self.store_timeout * 2 >= self.request_timeout {
            return Err(ConfigError::new(
                "STACKDEMO_STORE_TIMEOUT",
                "must be less than half of STACKDEMO_REQUEST_TIMEOUT",
            ));
        }
        if self.redis_password_file.is_some() && self.redis_url.is_none() {
            return Err(ConfigError::new(
                "REDIS_PASSWORD_FILE",
                "is set but REDIS_URL is not; the embedded store takes no password",
            ));
        }
        if self.shutdown_timeout.is_zero() {
            return Err(ConfigError::new(
                "STACKDEMO_SHUTDOWN_TIMEOUT",
                "must be above zero",
            ));
        }
        Ok(())
    }

    /// Reads the Redis password file, if one is configured.
    pub fn redis_password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.redis_password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "REDIS_PASSWORD_FILE",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(ConfigError::new(
                "REDIS_PASSWORD_FILE",
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(password.to_owned()))
    }

    /// The replica name: the configured one, or the hostname.
    pub fn replica_name(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            if host.is_empty() {
                "stackdemo".to_owned()
            } else {
                host
            }
        })
    }
}

// Manual Debug so that a future secret never reaches a log line through `{:?}`.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_password_file", &self.redis_password_file)
            .field("data_dir", &self.data_dir)
            .field("counter_key", &self.counter_key)
            .field("replica", &self.replica)
            .field("app_version", &self.app_version)
            .field("log_format", &self.log_format)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("store_timeout", &self.store_timeout)
            .field("max_connections", &self.max_connections)
            .field("workers", &self.workers)
            .finish()
    }
}

/// A Redis URL with any password replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A setting that cannot be used, with the setting's name.
#[derive(Debug)]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Parses durations such as `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (examples: 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit '{unit}' (use ms, s or m)")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_redis_url(text: &str) -> Result<String, String> {
    redis::IntoConnectionInfo::into_connection_info(text)
        .map(|_| text.to_owned())
        .map_err(|_| "expected redis://[:password@]host[:port][/db]".to_owned())
}

fn parse_counter_key(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 200 || text.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must be 1 to 200 characters without spaces or control characters".into());
    }
    Ok(text.to_owned())
}

fn parse_replica(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 100 || text.chars().any(char::is_control) {
        return Err("must be 1 to 100 characters without control characters".into());
    }
    Ok(text.to_owned())
}

fn parse_version(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Ok(env!("CARGO_PKG_VERSION").to_owned());
    }
    if text.len() > 64 || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be at most 64 visible ASCII characters".into());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn redacted_urls_hide_the_password() {
        assert_eq!(
            redact_url("redis://:secret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
    }

    #[test]
    fn store_timeout_must_be_shorter_than_request_timeout() {
        let cli = Cli::try_parse_from(["stackdemo", "--store-timeout", "6s"]).unwrap();
        let err = cli.settings.validate().unwrap_err();
        assert_eq!(err.setting, "STACKDEMO_STORE_TIMEOUT");
    }
}
