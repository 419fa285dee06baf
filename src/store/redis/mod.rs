//! Redis: the total under the tutorial's key (`hits`, INCR semantics), so a deployment of
//! the original app carries on counting, and beside it a hash of visits per replica, a
//! sorted set of replica heartbeats, and each writer's records of the batches it applied.
//!
//! `RedisStore` is what all workers share: where the primary is (a fixed address, or
//! followed through sentinels), the key names, the scripts. Each worker thread has its
//! own `RedisSession` (see `server`): the thread that sends a command also reads its
//! answer, and one worker's broken connection is its own business.
//!
//! - `session`: a worker's connection, opened once for all its callers, opened again
//!   after a failure (with backoff) or when the primary moves;
//! - `write`: the exactly-once write of a batch of visits;
//! - `reads`: readiness, the snapshot for `/api/stats`, heartbeats, counters' readings;
//! - `admin`: the administrator's changes, and export;
//! - `clock`: Redis's clock as seen from here, for write deadlines;
//! - `eviction`: whether Redis may evict keys, which refuses visits;
//! - `dataset`: the mark of the data counted in, gone when Redis lost it;
//! - `locate`: where the primary is; `failover`: how many replicas a write must reach so
//!   that no failover discards it; `scripts`: the Lua scripts.

mod admin;
mod clock;
mod dataset;
mod eviction;
mod failover;
mod locate;
mod reads;
pub mod scripts;
mod session;
mod write;

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

pub use self::session::RedisSession;
use self::{dataset::DatasetMark, eviction::EvictionWatch, locate::Locator, scripts::Scripts};
use super::{Identity, StoreError, StoreErrorKind};
use crate::{
    config::{RedisSettings, RedisTarget},
    counters::{CounterName, CounterPolicy, Day},
};

/// Batch records each writer keeps, in a ring: far more than the writes it ever has under
/// way, so a retried batch always finds its record if it was applied.
const BATCH_RECORDS_KEPT: u64 = 64;
/// How long a writer's batch records outlive its last write: long enough for any retry,
/// short enough that the records of replicas long gone do not pile up.
const BATCH_RECORDS_TTL: Duration = Duration::from_secs(600);
/// How long after the write or probe that last renewed it a process's number of its last
/// write (which lasts `BATCH_RECORDS_TTL`) is sure to be in Redis still, though this
/// process's clocks and Redis's run at different rates: past it, on either clock
/// (`dataset::Moment`), the process does not ask for it, so that Redis out of reach for
/// longer, or a host suspended, is not taken for an older copy.
const OWN_WRITE_SURE: Duration = Duration::from_secs(BATCH_RECORDS_TTL.as_secs() / 2);

/// What every worker's session shares.
pub struct RedisStore {
    locator: Arc<Locator>,
    keys: Keys,
    scripts: Scripts,
    identity: Identity,
    /// The tutorial's counter, the one named by the counter key.
    tutorial: CounterName,
    policy: CounterPolicy,
    /// Replicas a write must reach before it is acknowledged (WAIT / WAITAOF).
    min_replicas: u8,
    wait_aof: bool,
    /// Bound on connecting and on each call.
    timeout: Duration,
    /// Connections the workers' sessions have opened so far: one opened by any ends
    /// every other session's reconnect delay.
    connections_opened: AtomicU64,
    /// Whether Redis may evict keys, as last read.
    eviction: EvictionWatch,
    /// The mark of the data this process counts in.
    dataset: DatasetMark,
}

/// The keys, all under the counter key. A counter's name has no `:`, so no counter's
/// keys meet another's or the service's own.
struct Keys {
    /// The tutorial counter's total.
    total: String,
    replicas: String,
    heartbeats: String,
    versions: String,
    /// Followed by a writer's token: that writer's batch records.
    batches_prefix: String,
    /// Every counter, with who created it (`visit` or `admin`).
    registry: String,
    /// Followed by a counter's name: its hash of visits per day (and, but for the
    /// tutorial's, its total, field `total`).
    counter_prefix: String,
    /// Followed by a day and a counter's name: that day's unique-visitor HyperLogLog.
    uniques_prefix: String,
    /// Followed by a day: that day's salt for visitors' hashes.
    salt_prefix: String,
    /// The mark of the data the service counts in (`dataset`).
    dataset: String,
    /// The number of the last write (`writes`, checked as `dataset` says).
    writes: String,
    /// The number of this process's last write, under a token of its own (`dataset`).
    written: String,
}

impl Keys {
    fn new(key: &str) -> Self {
        Self {
            total: key.to_owned(),
            replicas: format!("{key}:replicas"),
            heartbeats: format!("{key}:heartbeats"),
            versions: format!("{key}:versions"),
            batches_prefix: format!("{key}:batches:"),
            registry: format!("{key}:counters"),
            counter_prefix: format!("{key}:c:"),
            uniques_prefix: format!("{key}:u:"),
            salt_prefix: format!("{key}:salt:"),
            dataset: format!("{key}:dataset"),
            writes: format!("{key}:writes"),
            written: format!("{key}:written:{:016x}", fastrand::u64(..)),
        }
    }

    /// Where a counter's total is: the tutorial's key, or its hash (field `total`).
    fn counter_total(&self, name: &str) -> String {
        if name == self.total {
            self.total.clone()
        } else {
            self.counter_days(name)
        }
    }

    fn counter_days(&self, name: &str) -> String {
        format!("{}{name}", self.counter_prefix)
    }

    fn uniques(&self, name: &str, day: Day) -> String {
        self.uniques_on(name, &day.to_string())
    }

    /// `uniques`, with the day already written out (`YYYY-MM-DD`).
    fn uniques_on(&self, name: &str, date: &str) -> String {
        format!("{}{date}:{name}", self.uniques_prefix)
    }

    fn salt(&self, day: Day) -> String {
        format!("{}{day}", self.salt_prefix)
    }
}

impl RedisStore {
    /// Prepares the connections without waiting for Redis to answer.
    pub fn new(
        settings: &RedisSettings,
        identity: &Identity,
        policy: CounterPolicy,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let locator = match &settings.target {
            RedisTarget::Url(url) => {
                let info = url.expose().into_connection_info().map_err(classify)?;
                Locator::fixed(with_password(info, settings.password.as_ref()))
            }
            RedisTarget::Sentinels {
                sentinels,
                master_name,
                password,
            } => {
                let placeholder = ConnectionAddr::Tcp(String::new(), 0)
                    .into_connection_info()
                    .map_err(classify)?;
                let primary = with_password(placeholder, settings.password.as_ref());
                let sentinel_template = with_password(
                    primary.clone(),
                    password.as_ref().or(settings.password.as_ref()),
                );
                let sentinels = sentinels
                    .iter()
                    .map(|s| locate::sentinel_info(&s.host, s.port, &sentinel_template))
                    .collect::<Result<_, _>>()?;
                let password_inherited = password.is_none() && settings.password.is_some();
                Locator::sentinels(sentinels, master_name.clone(), primary, password_inherited)
            }
        };
        Ok(Self {
            locator: Arc::new(locator),
            keys: Keys::new(&identity.counter_key),
            scripts: Scripts::default(),
            identity: identity.clone(),
            tutorial: identity.tutorial(),
            policy,
            min_replicas: settings.min_replicas,
            wait_aof: settings.wait_aof,
            timeout,
            connections_opened: AtomicU64::new(0),
            eviction: EvictionWatch::default(),
            dataset: DatasetMark::default(),
        })
    }

    /// A worker's session, connected on first use; its tasks run on the Tokio runtime it
    /// is first used on.
    pub fn session(self: &Arc<Self>) -> RedisSession {
        RedisSession::new(self.clone())
    }

    /// Follows failovers announced by the sentinels until `stop`; returns at once for a
    /// single Redis.
    pub async fn follow_failovers(&self, stop: CancellationToken) {
        self.locator.clone().watch(stop).await;
    }
}

/// Connection settings with keepalive on, and the password from the secret file, if any.
fn with_password(info: ConnectionInfo, password: Option<&secrecy::SecretString>) -> ConnectionInfo {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    // Keepalive probes keep the idle connection known to every middlebox (an IPVS virtual
    // IP drops connections idle for 900 s) and detect a vanished peer.
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let info = info.set_tcp_settings(
        TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive),
    );
    match password {
        Some(password) => {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose_secret());
            info.set_redis_settings(settings)
        }
        None => info,
    }
}

/// Sorts a Redis error into what a client may be told; the full text stays in the detail.
/// Whether a write may have been applied is for the caller to say (it knows whether the
/// command was sent), but for a script's `PARTIAL`: applied in part, and so in doubt.
fn classify(error: RedisError) -> StoreError {
    // A command of a pipeline that failed: its server error, not the pipeline's.
    let first = error
        .clone()
        .into_server_errors()
        .and_then(|errors| errors.first().map(|(_, error)| error.clone()));
    let code = first
        .as_ref()
        .map(|error| error.code())
        .or_else(|| error.code());
    let detail = first
        .as_ref()
        .and_then(|error| error.details())
        .or_else(|| error.detail())
        .unwrap_or_default();
    let kind = match code {
        Some("LOADING") => StoreErrorKind::Loading,
        Some("MISCONF" | "READONLY" | "MASTERDOWN") => StoreErrorKind::ReadOnly,
        Some("NOAUTH" | "WRONGPASS") => StoreErrorKind::Auth,
        Some("NOPERM") => StoreErrorKind::Permission,
        // An ACL that denies a command the script runs (`TIME`): Redis 7.0 says so as ERR.
        Some("ERR") if detail.contains("can't run this command") => StoreErrorKind::Permission,
        // A command renamed away (`rename-command`), as good as denied.
        Some("ERR") if detail.starts_with("unknown command") => StoreErrorKind::Permission,
        Some("OOM") => StoreErrorKind::OutOfMemory,
        Some("BUSY") => StoreErrorKind::Busy,
        // A key of another type, or a unique-visitor sketch that is not a valid one.
        Some("WRONGTYPE" | "INVALIDOBJ") => StoreErrorKind::WrongType,
        Some("NOREPLICAS") => StoreErrorKind::Replication,
        // Refused by the write's own deadline check: certainly not applied.
        Some("EXPIRED") => StoreErrorKind::Timeout,
        Some("LIMIT") => StoreErrorKind::Limit,
        Some("SHARELIMIT") => StoreErrorKind::ShareLimit,
        Some("DATALOST") => StoreErrorKind::DataLost,
        Some("GONE") => StoreErrorKind::TotalGone,
        Some("ERR") if detail.contains("overflow") => StoreErrorKind::Limit,
        _ if error.to_string().contains("refused to switch database") => StoreErrorKind::NoDatabase,
        Some("ERR") if detail.contains("not an integer") => StoreErrorKind::WrongType,
        _ if error.kind() == redis::ErrorKind::AuthenticationFailed => StoreErrorKind::Auth,
        _ if error.is_timeout() => StoreErrorKind::Timeout,
        _ if error.is_io_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped() =>
        {
            StoreErrorKind::Unreachable
        }
        _ => StoreErrorKind::Failed,
    };
    // The failed command's own error, without the pipeline's wrapping around it.
    let text = match &first {
        Some(server) if detail.is_empty() => server.code().to_owned(),
        Some(server) => format!("{} {detail}", server.code()),
        None => error.to_string(),
    };
    // A script that could not undo what it began: the change may have been made.
    StoreError::new(kind, text).doubt_if(code == Some("PARTIAL"))
}
