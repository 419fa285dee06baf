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
//! Connections are served by hyper with an idle limit (`connection`: a connection with no
//! request under way is closed after the header read timeout), a bound on the size of a
//! request's head and a bound on open connections. Workers are started, each on its own
//! runtime, before the first connection is accepted; one that cannot start stops the
//! service from starting. Graceful shutdown closes idle keep-alive connections and lets
//! in-flight requests finish before a deadline; then the workers close what is left and
//! wind down their own background work.
//!
//! `worker` holds a worker thread, `connection` what is added around one connection.

mod connection;
mod worker;

use std::{
    future::Future,
    io,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hyper_util::server::graceful::GracefulShutdown;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

pub use self::worker::Worker;
use self::worker::{Handoff, WorkerHandle};
use crate::telemetry::Throttle;

/// Request line and headers of one request, at most; a larger head is answered 431 and the
/// connection closed. The number of header lines is bounded by hyper's default, 100 (as
/// Apache's and HAProxy's defaults are): setting it, even to 100, makes hyper allocate
/// room for that many headers on every parse of a head, which costs about 16 KB of
/// resident memory per connection that holds a half-sent head. It bounds the memory a
/// connection can hold (hyper's own default is about 400 KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub send_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    /// Worker threads; at least one.
    pub workers: usize,
}

/// Serves on `listener` until `shutdown` resolves. `make_worker` runs once on each worker
/// thread, inside its runtime; every worker has started before the first connection is
/// accepted, and an error starting one is returned before any is.
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
        match worker::start(index, make_worker.clone(), stop.clone(), options).await {
            Ok(worker) => workers.push(worker),
            Err(error) => {
                stop.cancel();
                for worker in workers {
                    drop(worker.connections);
                    let _ = worker.done.await;
                }
                return Err(error);
            }
        }
    }

    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Wait for a free slot first: past the bound, new clients wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning,
                    // and say so once a second (with how many were left out), not at
                    // every try.
                    static FAILED: Throttle<Option<i32>> = Throttle::new();
                    if let Some(left_out) =
                        FAILED.allow(error.raw_os_error(), std::time::Instant::now())
                    {
                        tracing::warn!(%error, failures_not_logged = left_out, "accept failed");
                    }
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
            peer,
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
