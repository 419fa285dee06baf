//! Putting the service together: check the settings, open the store, bind the listener,
//! start the background tasks, serve until told to stop, then wind everything down in
//! order.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use tokio::time::Instant;

use crate::{
    config::{ConfigError, Setting, Settings, StoreSettings},
    counter::{BatchOptions, CountGauge, VisitCounter, VisitLog},
    counters::{CounterRules, Tally, TallyResult},
    deadlines::Deadlines,
    routes::{self, ServiceHeaders, install_recorder},
    server::{self, ServeOptions, Worker},
    state::{AppState, StateParts, WasReady},
    stats_cache::{STATS_TTL, StatsCache},
    store::{Identity, Store, StoreError, StoreErrorKind, WorkerStore},
    telemetry::{FLUSH_EVERY, RequestLog},
};

/// How often a replica announces that it is alive and reads the total for its gauge.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How often histogram samples are folded into buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the service could not start, or stopped on its own.
#[derive(Debug)]
pub enum ServiceError {
    /// A setting cannot be used (exit code 2).
    Config(ConfigError),
    /// The listen address cannot be bound for a reason other than the setting.
    Listen(SocketAddr, io::Error),
    /// The workers could not be started, or serving failed.
    Serve(io::Error),
    /// The store failed beyond recovery while serving.
    StoreGaveUp,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::Config(e) => e.fmt(f),
            ServiceError::Listen(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServiceError::Serve(e) => write!(f, "cannot serve: {e}"),
            ServiceError::StoreGaveUp => {
                f.write_str("the store failed beyond recovery; stopping so that it is replaced")
            }
        }
    }
}

impl std::error::Error for ServiceError {}

/// A service that is bound and ready to run.
pub struct Application {
    listener: TcpListener,
    factory: Arc<WorkerFactory>,
    serve_options: ServeOptions,
    background: Background,
}

/// What every worker builds its state from.
struct WorkerFactory {
    store: Arc<Store>,
    batch_options: BatchOptions,
    stats: Arc<StatsCache>,
    metrics: PrometheusHandle,
    gauge: CountGauge,
    replica: String,
    version: String,
    deadlines: Deadlines,
    was_ready: Arc<WasReady>,
    counters: Arc<CounterRules>,
}

/// Tasks on the main runtime, stopped after the workers.
struct Background {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Checks the settings, opens the store and binds the listen address (port 0 picks a
    /// free port).
    pub async fn build(settings: &Settings) -> Result<Self, ServiceError> {
        let checked = settings.check().map_err(ServiceError::Config)?;
        let identity = Identity {
            counter_key: settings.counter_key.clone(),
            replica: settings.replica_name(),
            version: settings.app_version.clone(),
        };
        let store = Store::open(
            &checked.store,
            &identity,
            checked.counters.policy,
            &checked.deadlines,
        )
        .map(Arc::new)
        .map_err(|error| {
            let setting = match &checked.store {
                StoreSettings::Embedded { .. } => Setting::DataDir,
                StoreSettings::Redis(_) if settings.redis_url().is_some() => Setting::RedisUrl,
                StoreSettings::Redis(_) => Setting::RedisSentinels,
            };
            ServiceError::Config(settings.error(setting, error.detail()))
        })?;
        store
            .check_configuration(checked.deadlines.store)
            .await
            .map_err(|error| {
                ServiceError::Config(match error.kind() {
                    StoreErrorKind::Unsupported => {
                        settings.error(Setting::RedisWaitAof, error.detail())
                    }
                    // The client library's account of it names its own types.
                    StoreErrorKind::NoDatabase => settings.error(
                        Setting::RedisUrl,
                        "the Redis server has no database of the number it names",
                    ),
                    _ => settings.error(Setting::RedisUrl, error.reason()),
                })
            })?;
        let listener = bind(settings).await?;

        let metrics = install_recorder();
        let gauge = CountGauge::following(identity.tutorial());
        let counters = Arc::new(CounterRules::new(identity.tutorial(), &checked.counters));
        let stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(heartbeat(
                store.clone(),
                gauge.clone(),
                checked.deadlines.store,
                stop.clone(),
            )),
            tokio::spawn(metrics_upkeep(metrics.clone(), stop.clone())),
            tokio::spawn(rate_limit_upkeep(counters.clone(), stop.clone())),
            tokio::spawn({
                let (store, stop) = (store.clone(), stop.clone());
                async move { store.follow_failovers(stop).await }
            }),
        ];
        Ok(Self {
            listener,
            factory: Arc::new(WorkerFactory {
                batch_options: BatchOptions::new(&checked.deadlines, store.writes_in_flight()),
                store,
                stats: Arc::new(StatsCache::new(STATS_TTL)),
                metrics,
                gauge,
                replica: identity.replica,
                version: identity.version,
                deadlines: checked.deadlines,
                was_ready: Arc::default(),
                counters,
            }),
            serve_options: ServeOptions {
                header_read_timeout: checked.deadlines.header_read,
                send_timeout: checked.deadlines.send,
                shutdown_timeout: checked.deadlines.shutdown,
                max_connections: settings.max_connections as usize,
                workers: settings.worker_count(),
            },
            background: Background { stop, tasks },
        })
    }

    /// The bound address, with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves (or the store gives up), then stops accepting,
    /// lets in-flight requests finish (up to the shutdown timeout) and stops the
    /// background tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        let Self {
            listener,
            factory,
            serve_options,
            background,
        } = self;
        tracing::info!(
            address = %listener.local_addr().map_err(ServiceError::Serve)?,
            store = factory.store.kind(),
            replica = %factory.replica,
            version = %factory.version,
            workers = serve_options.workers,
            "listening"
        );
        let store = factory.store.clone();
        let gave_up = CancellationToken::new();
        let stopping = {
            let gave_up = gave_up.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = store.gave_up() => gave_up.cancel(),
                }
            }
        };
        let worker_factory = factory.clone();
        let served = server::serve(
            listener,
            move || worker_factory.worker(),
            serve_options,
            stopping,
        )
        .await;

        background.stop.cancel();
        for task in background.tasks {
            let _ = task.await;
        }
        let departing = factory.store.for_worker();
        if let Err(error) = departing.depart(factory.deadlines.depart()).await {
            tracing::debug!(cause = error.detail(), "could not remove the heartbeat");
        }
        tracing::info!("stopped");
        served.map_err(ServiceError::Serve)?;
        if gave_up.is_cancelled() {
            return Err(ServiceError::StoreGaveUp);
        }
        Ok(())
    }
}

impl WorkerFactory {
    /// A worker's router and the work behind it, made on the worker's own runtime: its
    /// own store handle, visit batcher and state.
    fn worker(&self) -> Worker {
        // One connection for the worker's writes and reads: readiness then answers for
        // the connection visits are written on.
        let store = Arc::new(self.store.for_worker());
        let (counter, batcher) =
            VisitCounter::start(store.clone(), self.batch_options, self.gauge.clone());
        let headers = ServiceHeaders::new(&self.replica, &self.version);
        let request_log = RequestLog::for_worker().map(Arc::new);
        if let Some(log) = request_log.clone() {
            // Ends with the worker's runtime.
            tokio::spawn(async move {
                let mut every = tokio::time::interval(FLUSH_EVERY);
                loop {
                    every.tick().await;
                    log.flush();
                }
            });
        }
        let state = AppState::new(StateParts {
            counter,
            store,
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
            replica: self.replica.clone(),
            version: self.version.clone(),
            deadlines: self.deadlines,
            was_ready: self.was_ready.clone(),
            counters: self.counters.clone(),
            request_log: request_log.clone(),
        });
        let drain = self.deadlines.drain();
        let replica = self.replica.clone();
        let log = request_log.clone();
        Worker {
            router: routes::router(state),
            headers: headers.http1_lines(),
            unrouted: Arc::new(move |status, took| {
                routes::record_unrouted(&replica, log.as_deref(), status, took);
            }),
            // With the router gone, every sender of the visit queue is gone, so the
            // batcher drains what is queued and ends.
            wind_down: Box::pin(async move {
                let _ = tokio::time::timeout(drain, batcher).await;
                if let Some(log) = request_log {
                    log.flush_at_exit();
                }
            }),
        }
    }
}

/// The batcher writes to the worker's store handle.
impl VisitLog for WorkerStore {
    async fn add_visits(
        &self,
        tallies: &[Tally],
        answer_by: Instant,
    ) -> Result<Vec<TallyResult>, StoreError> {
        WorkerStore::add_visits(self, tallies, answer_by).await
    }
}

/// Binds the listen address. An address that cannot be used as set (in use, not an
/// address of this host, a privileged port) is a setting error.
async fn bind(settings: &Settings) -> Result<TcpListener, ServiceError> {
    let address = settings.listen;
    TcpListener::bind(address).await.map_err(|error| {
        let reason = match error.kind() {
            io::ErrorKind::AddrInUse => "address already in use",
            io::ErrorKind::AddrNotAvailable => "not an address of this host",
            io::ErrorKind::PermissionDenied => "not allowed (ports below 1024 need privileges)",
            _ => return ServiceError::Listen(address, error),
        };
        ServiceError::Config(settings.error(Setting::Listen, format!("{address}: {reason}")))
    })
}

/// Forgets the clients of the rate limits that are back at a full allowance, every
/// second, so that the clients remembered stay bounded.
async fn rate_limit_upkeep(counters: Arc<CounterRules>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick() => counters.upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// Folds recorded histogram samples into their buckets (without it the samples of an
/// unscraped histogram would pile up in memory), and publishes the log lines dropped.
async fn metrics_upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                handle.run_upkeep();
                metrics::counter!("stackdemo_log_lines_dropped_total")
                    .absolute(crate::telemetry::dropped_lines());
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Announces this replica every second, on a store handle of its own, and sets the count
/// gauge to the total the store holds.
async fn heartbeat(
    store: Arc<Store>,
    gauge: CountGauge,
    timeout: Duration,
    stop: CancellationToken,
) {
    let store = store.for_worker();
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        // A heartbeat under way when the service stops is given up: a hung Redis would
        // hold the exit for the store timeout.
        let beat = tokio::select! {
            beat = store.heartbeat(timeout) => beat,
            () = stop.cancelled() => return,
        };
        match beat {
            Ok(Some(total)) => gauge.reset(total),
            Ok(None) => gauge.reset(0),
            Err(error) => tracing::debug!(cause = error.detail(), "heartbeat failed"),
        }
    }
}
