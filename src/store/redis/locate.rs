//! Where the Redis primary is: a fixed address (`REDIS_URL`), or the one the sentinels
//! name (`REDIS_SENTINELS`), followed through failovers; and, with sentinels, how many
//! replicas a write must reach (`failover`).
//!
//! A lookup asks every sentinel at once (every address their names resolve to: one Swarm
//! service name stands for all its tasks) for the primary and its replicas, each with a
//! timeout. The primary is taken as soon as a majority of the sentinels name the same
//! one, so a hung sentinel costs nothing; when no majority agrees, the address most of
//! those that answered give wins once all have answered or timed out. A lookup runs as a
//! task of its own that every caller waiting for it shares: a caller whose deadline
//! passes stops waiting, and the lookup goes on for the next caller. It runs whenever a
//! connection finds the server gone or no longer the primary (`distrust`), every
//! second, and at once when a sentinel publishes an event (`follow`); a `+switch-master`
//! announcement replaces the address at once. Every change of address bumps a
//! generation number; each worker's session compares it on every call and moves.
//!
//! redis-rs (1.8) has a `Sentinel` client: it asks up to three sentinels at once, with
//! connect and response timeouts, and takes the first valid answer in the configured
//! order. This locator is kept beside it for what that client does not do: a sentinel
//! name that resolves to several addresses stands here for each of them, not for the
//! first that connects; the address most sentinels name wins, so a stale sentinel that
//! names another primary is outvoted rather than believed because it comes first
//! (`tests/it/sentinel.rs`, `a_sentinel_that_names_another_primary_is_outvoted`); the
//! replicas' state, which the failover rule needs, comes with every answer; and
//! announcements reach every worker's session at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    aio::MultiplexedConnection,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    classify,
    failover::{Address, ReplicaTarget, SentinelReport},
};
use crate::{
    deadlines::Deadlines,
    store::{StoreError, StoreErrorKind},
};

/// How long one sentinel may take to answer a lookup.
const SENTINEL_TIMEOUT: Duration = Deadlines::SENTINEL_ANSWER;
/// Pause before subscribing again to a sentinel whose subscription ended.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// How often the sentinels are asked again, events or not.
const REFRESH_INTERVAL: Duration = Deadlines::SENTINEL_REFRESH;

/// The outcome of a lookup, once it has one.
type LookupOutcome = Option<Result<(), StoreError>>;

pub struct Locator {
    kind: Kind,
    /// The primary's address as last learnt; `None` until asked, or after it was found
    /// wrong.
    current: Mutex<Option<ConnectionInfo>>,
    generation: AtomicU64,
    /// The lookup under way, if any: its outcome, once there.
    lookup: Mutex<Option<watch::Receiver<LookupOutcome>>>,
    /// How many replicas writes wait for (sentinels only).
    target: ReplicaTarget,
    /// Wakes the follower to ask the sentinels again now.
    refresh: Notify,
    /// Whether sentinels that know no primary of the configured name have been logged.
    unknown_said: AtomicBool,
    /// Whether a primary that does not allow `INFO replication` has been logged.
    info_denied_said: AtomicBool,
}

enum Kind {
    Fixed,
    Sentinels(Box<Sentinels>),
}

struct Sentinels {
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    /// Applied to the address the sentinels give: password, database.
    primary_template: ConnectionInfo,
    /// The sentinels are asked with the Redis password, having none set of their own. A
    /// sentinel that has no password refuses a connection that gives one; it is asked
    /// again without.
    password_inherited: bool,
}

impl Locator {
    pub fn fixed(info: ConnectionInfo) -> Self {
        Self::with(Kind::Fixed, Some(info))
    }

    /// `primary_template` carries the settings (password, TCP options) for the primary;
    /// its address is replaced by what the sentinels say.
    pub fn sentinels(
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
        primary_template: ConnectionInfo,
        password_inherited: bool,
    ) -> Self {
        Self::with(
            Kind::Sentinels(Box::new(Sentinels {
                sentinels,
                master_name,
                primary_template,
                password_inherited,
            })),
            None,
        )
    }

    fn with(kind: Kind, current: Option<ConnectionInfo>) -> Self {
        Self {
            kind,
            current: Mutex::new(current),
            generation: AtomicU64::new(0),
            lookup: Mutex::new(None),
            target: ReplicaTarget::default(),
            refresh: Notify::new(),
            unknown_said: AtomicBool::new(false),
            info_denied_said: AtomicBool::new(false),
        }
    }

    /// Whether the primary may move (sentinels).
    pub fn follows_failovers(&self) -> bool {
        matches!(self.kind, Kind::Sentinels(_))
    }

    /// Changes whenever the primary's address does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many replicas a write must reach before it is acknowledged: `at_least`, and
    /// with sentinels every replica a failover could promote (`failover`). An error
    /// while a failover is under way.
    pub fn replicas_to_wait(&self, at_least: u8) -> Result<u8, StoreError> {
        match self.kind {
            Kind::Fixed => Ok(at_least),
            Kind::Sentinels(_) => self.target.replicas_to_wait(at_least),
        }
    }

    /// A write reached fewer replicas than it waited for: the sentinels are asked again
    /// soon, so that a replica they now know to be gone is no longer waited for.
    pub fn replicas_fell_short(&self) {
        self.refresh.notify_one();
    }

    /// The primary's address and the generation it belongs to, asking the sentinels when
    /// it is not known. The lookup goes on if the caller stops waiting.
    pub async fn primary(self: &Arc<Self>) -> Result<(ConnectionInfo, u64), StoreError> {
        if let Some(known) = self.known() {
            return Ok(known);
        }
        self.look_up().await?;
        self.known().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Unreachable,
                "the primary the sentinels named was found wrong meanwhile",
            )
        })
    }

    /// Runs a lookup, or joins the one under way, and waits for its outcome.
    async fn look_up(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut outcome = {
            let mut lookup = self.lookup.lock().unwrap_or_else(|e| e.into_inner());
            match &*lookup {
                Some(under_way) => under_way.clone(),
                None => {
                    let (tell, outcome) = watch::channel(None);
                    *lookup = Some(outcome.clone());
                    tokio::spawn(self.clone().run_lookup(tell));
                    outcome
                }
            }
        };
        match outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
            // The task ended without an outcome: its runtime is shutting down.
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Unreachable,
                "the lookup of the primary was stopped",
            )),
        }
    }

    /// Asks every sentinel; tells the waiting callers as soon as a majority agrees (or,
    /// failing that, once all have answered), and applies the replicas' state once all
    /// have.
    async fn run_lookup(self: Arc<Self>, tell: watch::Sender<LookupOutcome>) {
        let Kind::Sentinels(target) = &self.kind else {
            let _ = tell.send(Some(Ok(())));
            self.end_lookup();
            return;
        };
        let sentinels = resolved(&target.sentinels).await;
        let majority = sentinels.len() / 2 + 1;
        let master_name = target.master_name.as_str();
        let inherited = target.password_inherited;
        let mut answers: FuturesUnordered<_> = sentinels
            .iter()
            .map(|sentinel| async move {
                tokio::time::timeout(SENTINEL_TIMEOUT, ask_one(sentinel, master_name, inherited))
                    .await
                    .unwrap_or_else(|_| Err(StoreError::timeout()))
            })
            .collect();
        let mut reports: Vec<SentinelReport> = Vec::new();
        let mut votes: HashMap<Address, usize> = HashMap::new();
        let mut last_error = None;
        let mut unknown = 0;
        let mut told = false;
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(Some(report)) => {
                    *votes.entry(report.primary.clone()).or_default() += 1;
                    reports.push(report);
                }
                Ok(None) => unknown += 1,
                Err(error) => last_error = Some(error),
            }
            if !told && let Some((primary, _)) = votes.iter().find(|(_, n)| **n >= majority) {
                self.adopt(primary.clone(), &reports, false);
                told = true;
                let _ = tell.send(Some(Ok(())));
            }
        }
        drop(answers);
        let winner = votes.into_iter().max_by_key(|(_, n)| *n).map(|(a, _)| a);
        match winner {
            Some(primary) => {
                self.adopt(primary.clone(), &reports, true);
                if !told {
                    let _ = tell.send(Some(Ok(())));
                }
                self.ask_primary(target, &primary).await;
            }
            // Sentinels answered, and none knows the name: most likely a wrong name (or
            // sentinels not yet told to monitor it); after a primary was found, sentinels
            // told to forget it (`SENTINEL REMOVE`) or restarted without their
            // configuration. Said once, until a primary is found.
            None if unknown > 0 => {
                let answered = format!(
                    "{unknown} of {} sentinels answered and monitor no primary named {:?}",
                    sentinels.len(),
                    target.master_name
                );
                let detail = match self.known() {
                    Some((last, _)) => format!(
                        "{answered} any more (removed with SENTINEL REMOVE, or sentinels \
                         restarted without their configuration): visits are counted on at \
                         the last primary they named, {}, and a failover is not followed \
                         until they monitor it again under that name",
                        last.addr()
                    ),
                    None => format!("{answered}: check REDIS_MASTER_NAME (--redis-master-name)"),
                };
                let error = StoreError::new(StoreErrorKind::UnknownPrimary, detail);
                if !self.unknown_said.swap(true, Ordering::AcqRel) {
                    tracing::warn!(cause = error.detail(), "no primary found");
                }
                let _ = tell.send(Some(Err(error)));
            }
            None => {
                let error = last_error.unwrap_or_else(|| {
                    StoreError::new(StoreErrorKind::Unreachable, "no sentinel answered")
                });
                let _ = tell.send(Some(Err(error)));
            }
        }
        self.end_lookup();
    }

    /// Asks `primary` which replicas are connected to it and current: any of them can
    /// confirm a write (`WAIT`), the ones the sentinels cannot use too (see `failover`).
    /// What it said before stands when it does not answer.
    async fn ask_primary(&self, target: &Sentinels, primary: &Address) {
        let info = target
            .primary_template
            .clone()
            .set_addr(ConnectionAddr::Tcp(primary.0.clone(), primary.1));
        let asked = tokio::time::timeout(SENTINEL_TIMEOUT, async {
            let mut connection = connect(&info).await?;
            redis::cmd("INFO")
                .arg("replication")
                .query_async::<String>(&mut connection)
                .await
                .map_err(classify)
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::timeout()));
        match asked {
            Ok(info) => {
                let online = super::failover::online_replicas(&info);
                match self.target.observe_primary(primary, online) {
                    Some(0) => tracing::info!(
                        "every replica connected to the primary is one the sentinels know"
                    ),
                    Some(unknown) => tracing::warn!(
                        replicas = unknown,
                        "replicas the sentinels do not count are connected to the primary \
                         (new to them, or ones they cannot reach: check each replica's \
                         password and announced address); writes wait for them too"
                    ),
                    None => {}
                }
            }
            // Said once: without it, a replica the sentinels cannot use may confirm
            // writes in place of one they can promote.
            Err(error)
                if error.kind() == StoreErrorKind::Permission
                    && !self.info_denied_said.swap(true, Ordering::AcqRel) =>
            {
                tracing::warn!(
                    cause = error.detail(),
                    "the primary does not allow INFO replication: writes wait only for the \
                     replicas the sentinels count"
                );
            }
            Err(error) => tracing::debug!(
                cause = error.detail(),
                "asking the primary for its replicas failed"
            ),
        }
    }

    fn end_lookup(&self) {
        *self.lookup.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Takes `primary` as the sentinels' answer, with what they said of its replicas.
    fn adopt(&self, primary: Address, reports: &[SentinelReport], complete: bool) {
        let Kind::Sentinels(target) = &self.kind else {
            return;
        };
        self.unknown_said.store(false, Ordering::Release);
        // The count is updated before the address: a session that moves to a new
        // primary finds the count for it.
        self.target.observe(&primary, reports, complete);
        let (host, port) = primary;
        self.replace(Some(
            target
                .primary_template
                .clone()
                .set_addr(ConnectionAddr::Tcp(host, port)),
        ));
    }

    /// A connection made at `generation` found the server gone or not the primary: the
    /// next call asks the sentinels again. Nothing changes for a fixed address.
    pub fn distrust(&self, generation: u64) {
        if self.follows_failovers() && self.generation() == generation {
            self.replace(None);
        }
    }

    fn known(&self) -> Option<(ConnectionInfo, u64)> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.clone().map(|info| (info, self.generation()))
    }

    fn replace(&self, info: Option<ConnectionInfo>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let unchanged = match (&*current, &info) {
            (Some(old), Some(new)) => old.addr() == new.addr(),
            _ => false,
        };
        if !unchanged {
            if let Some(new) = &info {
                tracing::info!(primary = %new.addr(), "redis primary");
            }
            *current = info;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Until `stop`: follows every sentinel's announcements, and asks the sentinels again
    /// every second and after each announcement. Returns at once for a fixed address.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let Kind::Sentinels(target) = &self.kind else {
            return;
        };
        let mut tasks: Vec<_> = target
            .sentinels
            .iter()
            .map(|sentinel| {
                let locator = self.clone();
                let sentinel = sentinel.clone();
                let stop = stop.clone();
                tokio::spawn(async move { locator.watch_one(sentinel, stop).await })
            })
            .collect();
        tasks.push(tokio::spawn({
            let locator = self.clone();
            let stop = stop.clone();
            async move { locator.keep_asking(stop).await }
        }));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Asks the sentinels every `REFRESH_INTERVAL`, and at once when woken.
    async fn keep_asking(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH_INTERVAL) => {}
                () = self.refresh.notified() => {}
                () = stop.cancelled() => return,
            }
            if let Err(error) = self.look_up().await {
                tracing::debug!(cause = error.detail(), "asking the sentinels failed");
            }
        }
    }

    /// Follows one configured sentinel: every address its name resolves to (one name may
    /// stand for several, as a Swarm service's does), resolved again whenever one of the
    /// subscriptions ends.
    async fn watch_one(&self, sentinel: ConnectionInfo, stop: CancellationToken) {
        loop {
            let addresses = resolved(std::slice::from_ref(&sentinel)).await;
            let subscriptions = addresses
                .into_iter()
                .map(|address| Box::pin(self.follow(address)))
                .collect::<Vec<_>>();
            tokio::select! {
                _ = futures_util::future::select_all(subscriptions) => {}
                () = stop.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Takes one sentinel's announcements until its subscription ends: a
    /// `+switch-master` for our primary moves to the new one at once; any other event
    /// (a server down or back, a failover's steps) has the sentinels asked again.
    async fn follow(&self, sentinel: ConnectionInfo) {
        let Kind::Sentinels(target) = &self.kind else {
            return;
        };
        let (master_name, primary_template) = (&target.master_name, &target.primary_template);
        let subscribe = |sentinel: ConnectionInfo| async move {
            let client = Client::open(sentinel).map_err(classify)?;
            tokio::time::timeout(SENTINEL_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| StoreError::timeout())?
                .map_err(classify)
        };
        let subscribed = async {
            let mut pubsub = match subscribe(sentinel.clone()).await {
                Err(error) if refused_password(&error, target.password_inherited) => {
                    subscribe(without_password(&sentinel)).await?
                }
                subscribed => subscribed?,
            };
            pubsub.psubscribe("*").await.map_err(classify)?;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let channel = message.get_channel_name();
                if channel == "__sentinel__:hello" {
                    continue;
                }
                if channel == "+switch-master"
                    && let Ok(payload) = message.get_payload::<String>()
                {
                    // "<name> <old ip> <old port> <new ip> <new port>"
                    let fields: Vec<&str> = payload.split(' ').collect();
                    if let [name, _, _, host, port] = fields[..]
                        && name == master_name
                        && let Ok(port) = port.parse()
                    {
                        let address = ConnectionAddr::Tcp(host.to_owned(), port);
                        self.replace(Some(primary_template.clone().set_addr(address)));
                    }
                }
                self.refresh.notify_one();
            }
            Ok::<(), StoreError>(())
        };
        if let Err(error) = subscribed.await {
            tracing::debug!(sentinel = %sentinel.addr(), cause = error.detail(), "sentinel subscription failed");
        }
    }
}

/// Every address the sentinels' names resolve to, each as a sentinel of its own; a name
/// that does not resolve now is kept as it is.
async fn resolved(sentinels: &[ConnectionInfo]) -> Vec<ConnectionInfo> {
    let mut addresses: Vec<ConnectionInfo> = Vec::new();
    for sentinel in sentinels {
        let ConnectionAddr::Tcp(host, port) = sentinel.addr() else {
            addresses.push(sentinel.clone());
            continue;
        };
        let lookup = tokio::time::timeout(
            SENTINEL_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), *port)),
        )
        .await;
        match lookup {
            Ok(Ok(found)) => {
                for address in found {
                    let tcp = ConnectionAddr::Tcp(address.ip().to_string(), address.port());
                    if !addresses.iter().any(|known| *known.addr() == tcp) {
                        addresses.push(sentinel.clone().set_addr(tcp));
                    }
                }
            }
            _ => addresses.push(sentinel.clone()),
        }
    }
    addresses
}

/// A connection of its own to a sentinel, or to the primary, for one question: made and
/// answered each within `SENTINEL_TIMEOUT`.
async fn connect(info: &ConnectionInfo) -> Result<MultiplexedConnection, StoreError> {
    let client = Client::open(info.clone()).map_err(classify)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(classify)
}

/// One instance as `SENTINEL MASTER` and `SENTINEL REPLICAS` describe it: field → value.
type Fields = HashMap<String, String>;

/// One sentinel's view of the primary named `master_name` and its replicas; `None` when
/// it knows no such primary.
async fn ask_one(
    sentinel: &ConnectionInfo,
    master_name: &str,
    password_inherited: bool,
) -> Result<Option<SentinelReport>, StoreError> {
    let mut connection = match connect(sentinel).await {
        Err(error) if refused_password(&error, password_inherited) => {
            connect(&without_password(sentinel)).await?
        }
        connected => connected?,
    };
    let mut pipe = redis::pipe();
    pipe.cmd("SENTINEL")
        .arg("MASTER")
        .arg(master_name)
        .cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(master_name);
    let answer: redis::RedisResult<(Fields, Vec<Fields>)> = pipe.query_async(&mut connection).await;
    match answer {
        Ok((master, replicas)) => Ok(SentinelReport::from_replies(&master, &replicas)),
        // "ERR No such master with that name"
        Err(error) if error.code() == Some("ERR") => Ok(None),
        Err(error) => Err(classify(error)),
    }
}

/// Whether a sentinel refused the Redis password it was given for want of one of its own:
/// one without a password refuses any (`AUTH … called without any password configured`),
/// which the client reports as a failed authentication.
fn refused_password(error: &StoreError, password_inherited: bool) -> bool {
    password_inherited && error.kind() == StoreErrorKind::Auth
}

/// `sentinel`'s connection settings without a password.
fn without_password(sentinel: &ConnectionInfo) -> ConnectionInfo {
    sentinel
        .clone()
        .set_redis_settings(redis::RedisConnectionInfo::default())
}

/// The connection settings of one sentinel.
pub fn sentinel_info(
    host: &str,
    port: u16,
    template: &ConnectionInfo,
) -> Result<ConnectionInfo, StoreError> {
    let info = ConnectionAddr::Tcp(host.to_owned(), port)
        .into_connection_info()
        .map_err(classify)?;
    Ok(info
        .set_redis_settings(template.redis_settings().clone())
        .set_tcp_settings(template.tcp_settings().clone()))
}
