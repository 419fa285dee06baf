//! Waiting for the signals that ask the service to stop: SIGTERM (docker stop, Swarm
//! updates), SIGINT (Ctrl-C) and SIGHUP (the terminal went away). All three stop the
//! service the same graceful way; SIGHUP does not reload anything, as there is nothing
//! to reload.

/// Resolves when SIGTERM, SIGINT or SIGHUP arrives.
pub async fn signal() {
    use tokio::signal::unix::SignalKind;

    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let named = |kind: SignalKind| async move {
        match tokio::signal::unix::signal(kind) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };

    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = named(SignalKind::terminate()) => tracing::info!("SIGTERM received, shutting down"),
        () = named(SignalKind::hangup()) => tracing::info!("SIGHUP received, shutting down"),
    }
}
