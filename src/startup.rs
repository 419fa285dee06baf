//! Putting the service together: open the store, bind the listener, start the background
//! tasks, serve until told to stop, then wind everything down in order.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConfigError, Settings},
    counter::{BatchOptions, CountGauge, VisitCounter},
    routes::{self, install_recorder},
    server::{self, ServeOptions, Worker},
    state::{AppState, Shared},
    stats::{STATS_TTL, StatsCache},
    store::{EmbeddedStore, RedisStore, Store, redis::RedisOptions},
};

/// How often a replica announces that it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Batches under way at once against Redis, per worker thread (see `batch_options`).
const REDIS_BATCHES_IN_FLIGHT: usize = 2;

/// Batches under way at once against the embedded store, per worker thread (see
/// `batch_options`). Its writer thread merges whatever batches wait into one commit, so
/// more batches in flight means fewer visits waiting for a slot, not more fsyncs.
const EMBEDDED_BATCHES_IN_FLIGHT: usize = 16;

/// How often histogram samples are folded into buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the service could not start.
#[derive(Debug)]
pub enum StartupError {
    /// A setting cannot be used (exit code 2).
    Config(ConfigError),
    /// The listen address cannot be bound.
    Listen(SocketAddr, io::Error),
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupError::Config(e) => e.fmt(f),
            StartupError::Listen(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
        }
    }
}

impl std::error::Error for StartupError {}

/// A service that is bound and ready to run.
pub struct Application {
    listener: TcpListener,
    /// The handle the heartbeat uses; each worker opens its own (`Store::for_worker`).
    store: Arc<Store>,
    metrics: PrometheusHandle,
    stats: Arc<StatsCache>,
    gauge: CountGauge,
    replica: String,
    version: String,
    request_timeout: Duration,
    store_timeout: Duration,
    serve_options: ServeOptions,
    background: CancellationToken,
    heartbeat: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

impl Application {
    /// Opens the store and binds the listen address (port 0 picks a free port).
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        settings.validate().map_err(StartupError::Config)?;
        let replica = settings.replica_name();
        let store = Arc::new(open_store(settings, &replica).map_err(StartupError::Config)?);
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| StartupError::Listen(settings.listen, e))?;

        let background = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            store.clone(),
            settings.store_timeout,
            background.clone(),
        ));
        let metrics = install_recorder();
        let upkeep = tokio::spawn(metrics_upkeep(metrics.clone(), background.clone()));
        Ok(Self {
            listener,
            store,
            metrics,
            stats: Arc::new(StatsCache::new(STATS_TTL)),
            gauge: CountGauge::default(),
            replica,
            version: settings.app_version.clone(),
            request_timeout: settings.request_timeout,
            store_timeout: settings.store_timeout,
            serve_options: ServeOptions {
                header_read_timeout: settings.header_read_timeout,
                shutdown_timeout: settings.shutdown_timeout,
                max_connections: settings.max_connections as usize,
                workers: settings.worker_count(),
            },
            background,
            heartbeat,
            upkeep,
        })
    }

    /// The bound address, with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish (up to the shutdown timeout) and stops the background tasks.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let Self {
            listener,
            store,
            metrics,
            stats,
            gauge,
            replica,
            version,
            request_timeout,
            store_timeout,
            serve_options,
            background,
            heartbeat,
            upkeep,
        } = self;
        tracing::info!(
            address = %listener.local_addr()?,
            store = store.kind(),
            replica = %replica,
            version = %version,
            workers = serve_options.workers,
            "listening"
        );
        let options = batch_options(&store, store_timeout);
        let main_store = store.clone();
        // Runs on each worker thread: its own store handle, visit counter and router.
        let make_worker = move || {
            let store = match main_store.for_worker() {
                Ok(store) => Arc::new(store),
                Err(error) => {
                    // Cannot happen for settings that opened the main handle; serve with
                    // it rather than not at all.
                    tracing::warn!(
                        cause = error.detail(),
                        "could not open a worker's store handle"
                    );
                    main_store.clone()
                }
            };
            let (counter, batcher) = VisitCounter::start(store.clone(), options, gauge.clone());
            let state = AppState::new(Shared {
                counter,
                store,
                stats: stats.clone(),
                metrics: metrics.clone(),
                replica: replica.clone(),
                version: version.clone(),
                store_timeout,
            });
            Worker {
                router: routes::router(state, request_timeout),
                // With the router gone, every sender of the visit queue is gone, so the
                // batcher drains what is queued and ends.
                wind_down: Box::pin(async move {
                    let _ = tokio::time::timeout(store_timeout * 2, batcher).await;
                }),
            }
        };
        let result = server::serve(listener, make_worker, serve_options, shutdown).await;

        background.cancel();
        let _ = heartbeat.await;
        let _ = upkeep.await;
        if let Err(error) = store.depart(store_timeout).await {
            tracing::debug!(cause = error.detail(), "could not remove the heartbeat");
        }
        tracing::info!("stopped");
        result
    }
}

/// Batches may be formed and sent while earlier ones are under way. Redis answers them in
/// the order they were sent on the worker's connection; the embedded store's writer thread
/// gathers the waiting ones into its next commit.
fn batch_options(store: &Store, timeout: Duration) -> BatchOptions {
    let mut options = BatchOptions::new(timeout);
    options.max_in_flight = match store {
        Store::Redis(_) => REDIS_BATCHES_IN_FLIGHT,
        Store::Embedded(_) => EMBEDDED_BATCHES_IN_FLIGHT,
    };
    options
}

fn open_store(settings: &Settings, replica: &str) -> Result<Store, ConfigError> {
    match &settings.redis_url {
        Some(url) => {
            let password = settings.redis_password()?;
            let store = RedisStore::new(RedisOptions {
                url: url.clone(),
                password,
                counter_key: settings.counter_key.clone(),
                replica: replica.to_owned(),
                version: settings.app_version.clone(),
                timeout: settings.store_timeout,
            })
            .map_err(|e| ConfigError::new("REDIS_URL", e.detail().to_owned()))?;
            Ok(Store::Redis(Box::new(store)))
        }
        None => EmbeddedStore::open(
            &settings.data_dir,
            &settings.counter_key,
            replica,
            &settings.app_version,
        )
        .map(|store| Store::Embedded(Arc::new(store)))
        .map_err(|e| ConfigError::new("STACKDEMO_DATA_DIR", e.detail().to_owned())),
    }
}

/// Folds recorded histogram samples into their buckets. Without it the samples of an
/// unscraped histogram would pile up in memory.
async fn metrics_upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

async fn heartbeat(store: Arc<Store>, timeout: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Err(error) = store.heartbeat(timeout).await {
            tracing::debug!(cause = error.detail(), "heartbeat failed");
        }
    }
}
