//! Where the Redis primary is: a fixed address (`REDIS_URL`), or the one the sentinels
//! name (`REDIS_SENTINELS`), followed through failovers.
//!
//! With sentinels, the address is asked of all of them at once (every address their names
//! resolve to: one Swarm service name stands for all its tasks), each with a timeout, and
//! the one most of them name is taken; it is asked again whenever a connection finds the
//! server gone or no longer the primary (`distrust`), and replaced at once when a
//! sentinel announces `+switch-master` (`watch`). Every change bumps a generation number;
//! each worker's connection compares it on every call and moves to the new primary.
//!
//! redis-rs (1.8) has a `Sentinel` client: it asks up to three sentinels at once, with
//! connect and response timeouts, and takes the first valid answer in the configured
//! order. This locator is kept beside it for what that client does not do: a sentinel
//! name that resolves to several addresses (a Swarm service of sentinel tasks) stands
//! here for each of them, not for the first that connects; the address most sentinels
//! name wins, so a stale sentinel that still names an old primary is outvoted rather
//! than believed because it comes first; and `+switch-master` announcements reach every
//! worker's session at once instead of each finding out from a failed write.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio_util::sync::CancellationToken;

use super::classify;
use crate::store::{StoreError, StoreErrorKind};

/// How long one sentinel may take to answer a lookup.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause before subscribing again to a sentinel whose subscription ended.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

pub struct Locator {
    kind: Kind,
    /// The primary's address as last learnt; `None` until asked, or after it was found
    /// wrong.
    current: Mutex<Option<ConnectionInfo>>,
    generation: AtomicU64,
    /// One lookup at a time; callers that find one under way wait for its answer.
    lookup: tokio::sync::Mutex<()>,
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
    ) -> Self {
        Self::with(
            Kind::Sentinels(Box::new(Sentinels {
                sentinels,
                master_name,
                primary_template,
            })),
            None,
        )
    }

    fn with(kind: Kind, current: Option<ConnectionInfo>) -> Self {
        Self {
            kind,
            current: Mutex::new(current),
            generation: AtomicU64::new(0),
            lookup: tokio::sync::Mutex::new(()),
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

    /// The primary's address and the generation it belongs to, asking the sentinels when
    /// it is not known.
    pub async fn primary(&self) -> Result<(ConnectionInfo, u64), StoreError> {
        if let Some(known) = self.known() {
            return Ok(known);
        }
        let _one_at_a_time = self.lookup.lock().await;
        // Another caller may have looked it up while this one waited.
        if let Some(known) = self.known() {
            return Ok(known);
        }
        let Kind::Sentinels(target) = &self.kind else {
            unreachable!("a fixed address is always known");
        };
        let address = ask_sentinels(&target.sentinels, &target.master_name).await?;
        let info = target.primary_template.clone().set_addr(address);
        self.replace(Some(info.clone()));
        Ok((info, self.generation()))
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

    /// Follows `+switch-master` announcements of every sentinel until `stop`. Returns at
    /// once for a fixed address.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let Kind::Sentinels(target) = &self.kind else {
            return;
        };
        let watchers: Vec<_> = target
            .sentinels
            .iter()
            .map(|sentinel| {
                let locator = self.clone();
                let sentinel = sentinel.clone();
                let stop = stop.clone();
                tokio::spawn(async move { locator.watch_one(sentinel, stop).await })
            })
            .collect();
        for watcher in watchers {
            let _ = watcher.await;
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

    /// Takes `+switch-master` announcements from one sentinel until its subscription ends.
    async fn follow(&self, sentinel: ConnectionInfo) {
        let Kind::Sentinels(target) = &self.kind else {
            return;
        };
        let (master_name, primary_template) = (&target.master_name, &target.primary_template);
        {
            let subscribed = async {
                let client = Client::open(sentinel.clone()).map_err(classify)?;
                let mut pubsub = tokio::time::timeout(SENTINEL_TIMEOUT, client.get_async_pubsub())
                    .await
                    .map_err(|_| StoreError::timeout())?
                    .map_err(classify)?;
                pubsub.subscribe("+switch-master").await.map_err(classify)?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
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
                Ok::<(), StoreError>(())
            };
            if let Err(error) = subscribed.await {
                tracing::debug!(sentinel = %sentinel.addr(), cause = error.detail(), "sentinel subscription failed");
            }
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

/// Asks every sentinel for the primary's address at once; the address most of those that
/// answered give wins.
async fn ask_sentinels(
    sentinels: &[ConnectionInfo],
    master_name: &str,
) -> Result<ConnectionAddr, StoreError> {
    let sentinels = resolved(sentinels).await;
    let answers = futures_util::future::join_all(sentinels.iter().map(|sentinel| async move {
        tokio::time::timeout(SENTINEL_TIMEOUT, ask_one(sentinel, master_name))
            .await
            .unwrap_or_else(|_| Err(StoreError::timeout()))
    }))
    .await;
    let mut votes: HashMap<(String, u16), usize> = HashMap::new();
    let mut last_error = None;
    for answer in answers {
        match answer {
            Ok(Some(address)) => *votes.entry(address).or_default() += 1,
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
    }
    match votes.into_iter().max_by_key(|(_, count)| *count) {
        Some(((host, port), _)) => Ok(ConnectionAddr::Tcp(host, port)),
        None => Err(last_error.unwrap_or_else(|| {
            StoreError::new(
                StoreErrorKind::Unreachable,
                format!("no sentinel knows a primary named {master_name}"),
            )
        })),
    }
}

async fn ask_one(
    sentinel: &ConnectionInfo,
    master_name: &str,
) -> Result<Option<(String, u16)>, StoreError> {
    let client = Client::open(sentinel.clone()).map_err(classify)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(classify)?;
    let address: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master_name)
        .query_async(&mut connection)
        .await
        .map_err(classify)?;
    Ok(address.and_then(|(host, port)| Some((host, port.parse().ok()?))))
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
