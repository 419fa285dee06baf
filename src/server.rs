//! The HTTP server: one acceptor and a set of workers, each a thread with a single-threaded
//! Tokio runtime of its own.
//!
//! The acceptor takes each connection and hands it to the worker with the fewest open
//! connections; the connection then lives on that thread. A worker has its own router,
//! visit counter and store connection, so a visit is parsed, queued, written and answered
//! on one thread: nothing waits for another thread to wake it, and no connection's state
//! moves between cores. (On a multi-threaded runtime the wake-ups and migrations between
//! threads cost as much CPU as the rest of a visit; `bench/README.md` has the
//! measurements.)
//!
//! Connections are served by hyper with a header read timeout (a client that never
//! finishes its headers is cut off), a bound on the size of a request's headers and a
//! bound on open connections. Graceful shutdown closes idle keep-alive connections and
//! lets in-flight requests finish before a deadline; then the workers close what is left
//! and wind down their own background work.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto::Builder,
        graceful::{GracefulShutdown, Watcher},
    },
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    runtime::Runtime,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Request line and headers of one request, at most; a larger head is answered 431 and the
/// connection closed. It bounds the memory a connection can hold (hyper's own default is
/// about 400 KiB) and is HTTP/2's default bound on a header list.
const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    /// Worker threads; at least one.
    pub workers: usize,
}

/// What a worker serves, made on the worker's own runtime by the `make_worker` function
/// given to `serve`.
pub struct Worker {
    pub router: Router,
    /// Awaited when the worker stops, after its connections and router are gone: ends the
    /// background work the router relied on (the visit batcher).
    pub wind_down: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// An accepted connection on its way to a worker, with the slot it takes and its part in
/// graceful shutdown.
struct Handoff {
    stream: std::net::TcpStream,
    slot: OwnedSemaphorePermit,
    watcher: Watcher,
}

/// The acceptor's view of one worker thread.
struct WorkerHandle {
    connections: mpsc::UnboundedSender<Handoff>,
    /// Open connections on the worker, for choosing where the next one goes.
    open: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

/// Serves on `listener` until `shutdown` resolves. `make_worker` runs once on each worker
/// thread, inside its runtime.
pub async fn serve(
    listener: TcpListener,
    make_worker: impl Fn() -> Worker + Send + Sync + 'static,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    // Cancelled once the graceful part of shutdown is over: workers then close what is
    // left and stop.
    let stop = CancellationToken::new();
    let make_worker = Arc::new(make_worker);
    let mut workers = Vec::with_capacity(options.workers);
    for index in 0..options.workers.max(1) {
        workers.push(start_worker(
            index,
            make_worker.clone(),
            stop.clone(),
            options,
        )?);
    }

    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Wait for a free slot first: past the bound, new clients wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "could not hand over a connection");
                continue;
            }
        };
        let Some(worker) = least_busy(&workers) else {
            tracing::error!("every worker thread has stopped; no longer serving");
            break;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let handoff = Handoff {
            stream,
            slot,
            watcher: graceful.watcher(),
        };
        if worker.connections.send(handoff).is_err() {
            // The worker stopped just now, which happens only when its thread failed.
            worker.open.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("a worker thread has stopped; connection dropped");
        }
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        deadline_ms = options.shutdown_timeout.as_millis() as u64,
        "stopped accepting; finishing in-flight requests"
    );
    let mut done = Vec::with_capacity(workers.len());
    for worker in workers {
        // Closing the channel tells the worker no more connections are coming.
        drop(worker.connections);
        done.push(worker.done);
    }
    if tokio::time::timeout(options.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline reached; closing the remaining connections");
    }
    stop.cancel();
    for worker in done {
        // An error means the worker thread ended without saying so: nothing to wait for.
        let _ = worker.await;
    }
    Ok(())
}

/// The running worker with the fewest open connections.
fn least_busy(workers: &[WorkerHandle]) -> Option<&WorkerHandle> {
    workers
        .iter()
        .filter(|worker| !worker.connections.is_closed())
        .min_by_key(|worker| worker.open.load(Ordering::Relaxed))
}

fn start_worker(
    index: usize,
    make_worker: Arc<impl Fn() -> Worker + Send + Sync + 'static>,
    stop: CancellationToken,
    options: ServeOptions,
) -> io::Result<WorkerHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (connections, incoming) = mpsc::unbounded_channel();
    let open = Arc::new(AtomicUsize::new(0));
    let (finished, done) = oneshot::channel();
    let worker_open = open.clone();
    thread::Builder::new()
        .name(format!("stackdemo-worker-{index}"))
        .spawn(move || {
            run_worker(
                &runtime,
                &*make_worker,
                incoming,
                &worker_open,
                &stop,
                options,
            );
            // Dropping the runtime drops any connection still open past the deadline.
            drop(runtime);
            // Whatever the worker holds (a store handle among it) is released before the
            // acceptor hears that the worker is done.
            drop(make_worker);
            let _ = finished.send(());
        })?;
    Ok(WorkerHandle {
        connections,
        open,
        done,
    })
}

fn run_worker(
    runtime: &Runtime,
    make_worker: &impl Fn() -> Worker,
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
    open: &Arc<AtomicUsize>,
    stop: &CancellationToken,
    options: ServeOptions,
) {
    runtime.block_on(async {
        let Worker { router, wind_down } = make_worker();
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32);

        let mut connections = JoinSet::new();
        loop {
            let handoff = tokio::select! {
                handoff = incoming.recv() => handoff,
                () = stop.cancelled() => None,
                // Reap finished connection tasks so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let Some(Handoff {
                stream,
                slot,
                watcher,
            }) = handoff
            else {
                break;
            };
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "could not take over a connection");
                    open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            };
            let service = TowerToHyperService::new(router.clone().map_request(
                |request: hyper::Request<Incoming>| request.map(axum::body::Body::new),
            ));
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = watcher.watch(connection);
            let open = open.clone();
            connections.spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
                open.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
        }

        // No more connections are coming. Serve the open ones until the acceptor says the
        // graceful part of shutdown is over, then close the rest.
        tokio::select! {
            () = stop.cancelled() => {}
            () = async { while connections.join_next().await.is_some() {} } => {
                stop.cancelled().await;
            }
        }
        connections.shutdown().await;
        drop(router);
        wind_down.await;
    });
}
