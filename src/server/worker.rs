//! One worker: a thread with a single-threaded Tokio runtime, serving the connections the
//! acceptor hands it with its own router, visit batcher and store connection.

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

use axum::{Router, http::StatusCode};
use hyper::body::Incoming;
use hyper_util::{
    rt::TokioExecutor,
    server::{conn::auto::Builder, graceful::Watcher},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpStream,
    runtime::Runtime,
    sync::{OwnedSemaphorePermit, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{
    MAX_HEADER_BYTES, ServeOptions,
    connection::{Activity, ConnectionIo, close_gracefully},
};
use crate::{deadlines::Deadlines, delivery::Handover};

/// What a worker serves, made on the worker's own runtime by the `make_worker` function
/// given to `serve`.
pub struct Worker {
    pub router: Router,
    /// Header lines (each ending in CRLF) for answers hyper makes itself, so that they
    /// carry what the router's answers carry.
    pub headers: Arc<[u8]>,
    /// Logs and counts a request hyper refused before the router saw it (bad syntax, a
    /// head over the limit), with the status it got and about how long it took to arrive.
    pub unrouted: Arc<dyn Fn(StatusCode, Duration) + Send + Sync>,
    /// Awaited when the worker stops, after its connections and router are gone: ends the
    /// background work the router relied on (the visit batcher).
    pub wind_down: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// An accepted connection on its way to a worker, with the slot it takes and its part in
/// graceful shutdown.
pub(super) struct Handoff {
    pub stream: std::net::TcpStream,
    /// The client's address, which every request of the connection carries
    /// (`axum::extract::ConnectInfo`).
    pub peer: std::net::SocketAddr,
    pub slot: OwnedSemaphorePermit,
    pub watcher: Watcher,
}

/// The acceptor's view of one worker thread.
pub(super) struct WorkerHandle {
    pub connections: mpsc::UnboundedSender<Handoff>,
    /// Open connections on the worker, for choosing where the next one goes.
    pub open: Arc<AtomicUsize>,
    pub done: oneshot::Receiver<()>,
}

/// Starts worker `index`: its runtime, its thread, and on it `make_worker`. Resolves once
/// the worker is ready to take connections, or with the reason it could not start.
pub(super) async fn start(
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
    let (started, ready) = oneshot::channel();
    let worker_open = open.clone();
    thread::Builder::new()
        .name(format!("stackdemo-worker-{index}"))
        .spawn(move || {
            run(
                &runtime,
                &*make_worker,
                started,
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
    // A worker whose set-up panicked drops `started` unsent.
    ready
        .await
        .map_err(|_| io::Error::other(format!("worker {index} failed to start")))?;
    Ok(WorkerHandle {
        connections,
        open,
        done,
    })
}

fn run(
    runtime: &Runtime,
    make_worker: &impl Fn() -> Worker,
    started: oneshot::Sender<()>,
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
    open: &Arc<AtomicUsize>,
    stop: &CancellationToken,
    options: ServeOptions,
) {
    runtime.block_on(async {
        let Worker {
            router,
            headers,
            unrouted,
            wind_down,
        } = make_worker();
        // HTTP/1.1 only, as the edge and the tutorial's clients speak it. Cleartext HTTP/2
        // would let one connection hold hundreds of requests' heads at once (past the
        // memory each connection is sized for) and refuse requests without the service's
        // answers; its preface is answered 505 like any other unknown version.
        let mut builder = Builder::new(TokioExecutor::new()).http1_only();
        // The idle limit of `connection` bounds the wait for headers; hyper's own timer
        // would only repeat it.
        // A client that half-closes its connection after a request (shutdown(SHUT_WR))
        // still gets the answer, as HTTP clients expect (RFC 9112, 9.6).
        builder
            .http1()
            .header_read_timeout(None)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(true)
            .half_close(true);
        let _ = started.send(());

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
                peer,
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
            let activity = Activity::new();
            let on_call = activity.clone();
            let handover = Handover::default();
            let for_requests = handover.clone();
            let service = TowerToHyperService::new(
                router
                    .clone()
                    .map_request(move |request: hyper::Request<Incoming>| {
                        let mut request = request.map(axum::body::Body::new);
                        request.extensions_mut().insert(for_requests.clone());
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        request
                    })
                    .map_future(move |response| {
                        let serving = on_call.serving();
                        async move { response.await.map(|response| serving.answered(response)) }
                    }),
            );
            let io = ConnectionIo::new(stream, activity.clone(), handover, headers.clone());
            let connection = watcher.watch(builder.serve_connection(io, service).into_owned());
            let open = open.clone();
            let unrouted = unrouted.clone();
            let idle_limit = options.header_read_timeout;
            let send_limit = options.send_timeout;
            connections.spawn(async move {
                tokio::select! {
                    biased;
                    result = connection => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                    }
                    idle = activity.idle_for(idle_limit, send_limit) => {
                        tracing::debug!("{}", idle.describe());
                    }
                }
                if let Some((status, took)) = activity.refused() {
                    unrouted(status, took);
                }
                close_gracefully(&activity, idle_limit).await;
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
        // Connections still closing gracefully get a moment to end; what is left is cut.
        let _ = tokio::time::timeout(Deadlines::LINGER_QUIET, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.shutdown().await;
        drop(router);
        wind_down.await;
    });
}
