//! The settings of `stackdemo serve`.
//!
//! Every setting is both a flag and an environment variable. Values are checked once,
//! before anything is bound or opened (`Settings::check`); a bad value stops start-up with
//! exit code 2 and a message that names the setting as the user gave it: the flag when it
//! was on the command line, the environment variable otherwise.

mod origin;
mod setting;
mod values;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use secrecy::SecretString;

use self::values::{RateLimitSetting, parse_rate_limit};
use self::values::{
    parse_counter_key, parse_host_port, parse_master_name, parse_redis_url, parse_replica,
    parse_version,
};
pub use self::{
    origin::{ConfigError, Origins},
    setting::Setting,
    values::{CounterMode, HostPort, LogFormat, RateLimit, RedisUrl, parse_duration, redact_url},
};
use crate::{
    counters::{CounterPolicy, visitor::TrustedProxies},
    deadlines::{DeadlineError, Deadlines, MIN_HEADER_READ, MIN_STORE},
};

/// Settings of the service.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address and port to listen on.
    #[arg(long, env = "STACKDEMO_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Redis URL (redis://host:port/db, or unix:///path?db=N) of a single Redis; not used
    /// when sentinels are set. Unset or empty, and no sentinels: the embedded store in
    /// --data-dir.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = parse_redis_url)]
    pub redis_url: Option<RedisUrl>,

    /// Redis Sentinels to ask for the primary, comma-separated host:port (default port
    /// 26379). The service follows failovers by itself.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',', value_parser = parse_host_port)]
    pub redis_sentinels: Vec<HostPort>,

    /// The name the sentinels know the primary by.
    #[arg(long, env = "REDIS_MASTER_NAME", default_value = "mymaster",
          value_parser = parse_master_name)]
    pub redis_master_name: String,

    /// File holding the Redis password (a Docker secret). Its content is never logged.
    #[arg(long, env = "REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// File holding the sentinels' password, when it differs from Redis's. Unset: the
    /// sentinels are asked with the Redis password, if any.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD_FILE")]
    pub redis_sentinel_password_file: Option<PathBuf>,

    /// Replicas that must have a write (Redis WAIT) before its visits are answered: at
    /// least this many, and with sentinels every replica a failover could promote.
    /// Default: 1 with sentinels, 0 with a single Redis.
    #[arg(long, env = "STACKDEMO_REDIS_MIN_REPLICAS",
          value_parser = clap::value_parser!(u8).range(0..=16))]
    pub redis_min_replicas: Option<u8>,

    /// Answer a visit only once its write is in the append-only file of the primary and
    /// of --redis-min-replicas replicas (WAITAOF; Redis or Valkey 7.2 and later).
    #[arg(long, env = "STACKDEMO_REDIS_WAIT_AOF")]
    pub redis_wait_aof: bool,

    /// Folder of the embedded store. Used when no Redis is configured.
    #[arg(long, env = "STACKDEMO_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Name of the counter key (Redis) or record (embedded store).
    #[arg(long, env = "STACKDEMO_COUNTER_KEY", default_value = "hits",
          value_parser = parse_counter_key)]
    pub counter_key: String,

    /// This replica's name, shown in X-Served-By. Default: the hostname.
    #[arg(long, env = "STACKDEMO_REPLICA", value_parser = parse_replica)]
    pub replica: Option<String>,

    /// Version reported in X-App-Version and /api/stats. Empty: the built-in version.
    #[arg(long, env = "STACKDEMO_VERSION", default_value = env!("CARGO_PKG_VERSION"),
          value_parser = parse_version)]
    pub app_version: String,

    /// Log format.
    #[arg(long, env = "STACKDEMO_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// How long shutdown waits for in-flight requests (e.g. 10s, 500ms).
    #[arg(long, env = "STACKDEMO_SHUTDOWN_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// A connection with no request under way is closed after this long: a client that
    /// sends nothing, sends its headers too slowly, or keeps an idle connection open.
    #[arg(long, env = "STACKDEMO_HEADER_READ_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection whose client takes none of an answer being written for this long is
    /// closed.
    #[arg(long, env = "STACKDEMO_SEND_TIMEOUT", default_value = "60s",
          value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// A request is answered by then (503 if it could not be served).
    #[arg(long, env = "STACKDEMO_REQUEST_TIMEOUT", default_value = "5s",
          value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long a store write may take before its visits are answered 503; a visit may
    /// also wait this long for its write to start.
    #[arg(long, env = "STACKDEMO_STORE_TIMEOUT", default_value = "400ms",
          value_parser = parse_duration)]
    pub store_timeout: Duration,

    /// Open connections at most; further connections wait to be accepted. Each may hold
    /// up to about 30 KB while its request head arrives (see the README on memory).
    #[arg(long, env = "STACKDEMO_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Threads serving connections, each with a runtime of its own. Default: one per CPU
    /// this process may use.
    #[arg(long, env = "STACKDEMO_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Named counters: `open` (any valid name counts), or `closed` (only counters the
    /// administrator created count; others are 404).
    #[arg(long, env = "STACKDEMO_COUNTERS", value_enum, default_value = "open")]
    pub counters: CounterMode,

    /// Counters at most, the tutorial's included; a visit to a new name beyond it is
    /// refused (507).
    #[arg(long, env = "STACKDEMO_MAX_COUNTERS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_counters: u64,

    /// Days of history kept per counter (visits and unique visitors per day).
    #[arg(long, env = "STACKDEMO_HISTORY_DAYS", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub history_days: u32,

    /// Visits one client may count on named counters and badges, per window (`60/1m`),
    /// or `off`. A client is an IPv4 address or an IPv6 /64. Over it: 429 with
    /// Retry-After, not counted.
    #[arg(long, env = "STACKDEMO_RATE_LIMIT", default_value = "120/1m",
          value_parser = parse_rate_limit)]
    pub rate_limit: RateLimitSetting,

    /// The same for the tutorial's `GET /`; off unless set.
    #[arg(long, env = "STACKDEMO_TUTORIAL_RATE_LIMIT", default_value = "off",
          value_parser = parse_rate_limit)]
    pub tutorial_rate_limit: RateLimitSetting,

    /// Proxies whose X-Forwarded-For is believed, comma-separated addresses or networks
    /// (the edge: `10.0.0.0/8`). X-Forwarded-For from anyone else is ignored.
    #[arg(long, env = "STACKDEMO_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// File holding the administrator's token (a Docker secret): it allows setting,
    /// resetting, deleting, exporting and importing counters. Unset: no administration.
    #[arg(long, env = "STACKDEMO_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Which of the settings above were given on the command line.
    #[arg(skip)]
    pub origins: Origins,
}

/// Where the count is kept, as configured.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    Embedded { data_dir: PathBuf },
    Redis(RedisSettings),
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub password: Option<SecretString>,
    /// Replicas a write must reach before it is acknowledged.
    pub min_replicas: u8,
    /// Whether a write must also be in the append-only files (WAITAOF).
    pub wait_aof: bool,
}

#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One Redis at a fixed address.
    Url(RedisUrl),
    /// The primary the sentinels name, followed through failovers.
    Sentinels {
        sentinels: Vec<HostPort>,
        master_name: String,
        password: Option<SecretString>,
    },
}

/// Settings checked against each other, in the shape the rest of the service uses.
#[derive(Debug, Clone)]
pub struct Checked {
    pub deadlines: Deadlines,
    pub store: StoreSettings,
    pub counters: CounterSettings,
}

/// How named counters are counted, read and administered.
#[derive(Debug, Clone, Default)]
pub struct CounterSettings {
    pub policy: CounterPolicy,
    pub rate_limit: Option<RateLimit>,
    pub tutorial_rate_limit: Option<RateLimit>,
    pub trusted_proxies: TrustedProxies,
    /// The administrator's token, if administration is on.
    pub admin_token: Option<SecretString>,
}

impl Settings {
    /// Checks the settings against each other and reads the password files.
    pub fn check(&self) -> Result<Checked, ConfigError> {
        Ok(Checked {
            deadlines: self.deadlines()?,
            store: self.store()?,
            counters: CounterSettings {
                policy: CounterPolicy {
                    closed: self.counters == CounterMode::Closed,
                    max_counters: self.max_counters,
                    retention_days: self.history_days,
                },
                rate_limit: self.rate_limit.0,
                tutorial_rate_limit: self.tutorial_rate_limit.0,
                trusted_proxies: self.trusted_proxies.clone(),
                admin_token: self.admin_token()?,
            },
        })
    }

    /// Worker threads to run: the setting, or the CPUs available (container limits
    /// included).
    pub fn worker_count(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            usize::from,
        )
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

    /// The error for `setting`, named as the user set it.
    pub fn error(&self, setting: Setting, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.origins.name(setting), reason)
    }

    fn deadlines(&self) -> Result<Deadlines, ConfigError> {
        Deadlines::new(
            self.header_read_timeout,
            self.send_timeout,
            self.request_timeout,
            self.store_timeout,
            self.shutdown_timeout,
        )
        .map_err(|error| match error {
            DeadlineError::StoreTooShort => self.error(
                Setting::StoreTimeout,
                format!("must be at least {}", humantime::format_duration(MIN_STORE)),
            ),
            DeadlineError::HeaderReadTooShort => self.error(
                Setting::HeaderReadTimeout,
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_HEADER_READ)
                ),
            ),
            DeadlineError::SendTooShort => self.error(
                Setting::SendTimeout,
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_HEADER_READ)
                ),
            ),
            // A visit may wait for its batch to start and then for its write: both must
            // end before the request timeout. The one the user set is at fault; of two,
            // the store timeout.
            DeadlineError::RequestNotAboveVisit => {
                let request = humantime::format_duration(self.request_timeout);
                let store = humantime::format_duration(self.store_timeout);
                if self.origins.given(Setting::RequestTimeout)
                    && !self.origins.given(Setting::StoreTimeout)
                {
                    self.error(
                        Setting::RequestTimeout,
                        format!("must be more than twice the store timeout ({store}, its default)"),
                    )
                } else {
                    let request = if self.origins.given(Setting::RequestTimeout) {
                        format!("{} ({request})", self.origins.name(Setting::RequestTimeout))
                    } else {
                        format!("the request timeout ({request}, its default)")
                    };
                    self.error(
                        Setting::StoreTimeout,
                        format!("must be less than half of {request}"),
                    )
                }
            }
            DeadlineError::ShutdownZero => {
                self.error(Setting::ShutdownTimeout, "must be above zero")
            }
        })
    }

    /// The Redis URL, unless none (or an empty one) was given.
    pub fn redis_url(&self) -> Option<&RedisUrl> {
        self.redis_url.as_ref().filter(|url| !url.is_empty())
    }

    fn store(&self) -> Result<StoreSettings, ConfigError> {
        // Sentinels win over a URL: the image sets REDIS_URL for the tutorial's stack, and
        // a stack file cannot unset it everywhere (older clients drop an empty override).
        let target = match (self.redis_url(), self.redis_sentinels.is_empty()) {
            (_, false) => Some(RedisTarget::Sentinels {
                sentinels: self.redis_sentinels.clone(),
                master_name: self.redis_master_name.clone(),
                password: self.read_secret(
                    Setting::RedisSentinelPasswordFile,
                    self.redis_sentinel_password_file.as_ref(),
                )?,
            }),
            (Some(url), true) => Some(RedisTarget::Url(url.clone())),
            (None, true) => None,
        };
        let Some(target) = target else {
            let redis_only = [
                (
                    Setting::RedisPasswordFile,
                    self.redis_password_file.is_some(),
                ),
                (
                    Setting::RedisSentinelPasswordFile,
                    self.redis_sentinel_password_file.is_some(),
                ),
                (Setting::RedisMinReplicas, self.redis_min_replicas.is_some()),
                (Setting::RedisWaitAof, self.redis_wait_aof),
            ];
            for (redis_only, set) in redis_only {
                if set {
                    return Err(self.error(
                        redis_only,
                        "is set but no Redis is (REDIS_URL or REDIS_SENTINELS); \
                         the embedded store does not use it",
                    ));
                }
            }
            return Ok(StoreSettings::Embedded {
                data_dir: self.data_dir.clone(),
            });
        };
        if matches!(target, RedisTarget::Url(_)) && self.redis_sentinel_password_file.is_some() {
            return Err(self.error(
                Setting::RedisSentinelPasswordFile,
                "is set but no sentinels are (REDIS_SENTINELS)",
            ));
        }
        let min_replicas = self
            .redis_min_replicas
            .unwrap_or(u8::from(matches!(target, RedisTarget::Sentinels { .. })));
        Ok(StoreSettings::Redis(RedisSettings {
            target,
            password: self.read_secret(
                Setting::RedisPasswordFile,
                self.redis_password_file.as_ref(),
            )?,
            min_replicas,
            wait_aof: self.redis_wait_aof,
        }))
    }

    /// The administrator's token, if its file is set. A token shorter than 16 characters
    /// is refused: it guards every count.
    fn admin_token(&self) -> Result<Option<SecretString>, ConfigError> {
        use secrecy::ExposeSecret;

        let token = self.read_secret(Setting::AdminTokenFile, self.admin_token_file.as_ref())?;
        if let Some(token) = &token {
            let token = token.expose_secret();
            if token.chars().count() < MIN_ADMIN_TOKEN {
                return Err(self.error(
                    Setting::AdminTokenFile,
                    format!("holds a token shorter than {MIN_ADMIN_TOKEN} characters"),
                ));
            }
            // What a request's header could not carry would make a token no request has.
            if token.chars().any(char::is_control) || token.trim() != token {
                return Err(self.error(
                    Setting::AdminTokenFile,
                    "holds a token no request can send: one with a control character (a \
                     line break inside it, a tab), or beginning or ending with a space",
                ));
            }
        }
        if self.counters == CounterMode::Closed && token.is_none() {
            return Err(self.error(
                Setting::Counters,
                "is closed, but no administrator can create counters: set the admin token \
                 file too",
            ));
        }
        Ok(token)
    }

    /// Reads a password file setting, if it is set. A file longer than a password can
    /// be (a wrong path, a log file) is refused without reading it whole.
    fn read_secret(
        &self,
        id: Setting,
        path: Option<&PathBuf>,
    ) -> Result<Option<SecretString>, ConfigError> {
        use std::io::Read;

        let Some(path) = path else {
            return Ok(None);
        };
        let cannot =
            |e: std::io::Error| self.error(id, format!("cannot read {}: {e}", path.display()));
        // Read only if it is a file: opening a named pipe would wait for a writer, and
        // start-up with it, for good.
        if !std::fs::metadata(path).map_err(cannot)?.is_file() {
            return Err(self.error(id, format!("{} is not a file", path.display())));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(cannot)?
            .take(MAX_PASSWORD_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_PASSWORD_FILE {
            return Err(self.error(
                id,
                format!(
                    "{} is longer than {MAX_PASSWORD_FILE} bytes; a password file holds one password",
                    path.display()
                ),
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| self.error(id, format!("{} is not UTF-8 text", path.display())))?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(self.error(id, format!("{} is empty", path.display())));
        }
        Ok(Some(SecretString::from(password)))
    }
}

/// The shortest administrator's token taken.
const MIN_ADMIN_TOKEN: usize = 16;

/// The longest password file taken, in bytes: far above any password, far below what
/// would strain the service's memory.
const MAX_PASSWORD_FILE: u64 = 4096;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Setting;
    use crate::cli::Cli;

    #[test]
    fn every_setting_is_an_argument_of_serve_and_every_argument_a_setting() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let arguments: Vec<&str> = serve
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .filter(|id| !matches!(*id, "help" | "origins"))
            .collect();
        let settings: Vec<&str> = Setting::ALL.iter().map(|s| s.id()).collect();
        for id in &settings {
            assert!(arguments.contains(id), "{id} is not an argument of serve");
        }
        for id in &arguments {
            assert!(settings.contains(id), "the argument {id} has no Setting");
        }
    }
}
