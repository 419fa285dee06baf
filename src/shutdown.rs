//! The signals that ask the service to stop: SIGTERM (docker stop, Swarm updates), SIGINT
//! (Ctrl-C) and SIGHUP (the terminal went away). All three stop the service the same
//! graceful way; SIGHUP does not reload anything, as there is nothing to reload.
//!
//! The handlers are installed before the service starts, and a failure to install them
//! stops it from starting: a service that cannot hear SIGTERM would be killed by its
//! orchestrator in the middle of requests instead of shutting down.
//!
//! SIGXFSZ, sent for a write past the process's file size limit (`ulimit -f`), gets a
//! handler too, which does nothing: its default action ends the process, mid-write and
//! without a word. Handled, the write fails with `EFBIG`, which the store takes as a full
//! disk (refused, logged, and counted on once the limit allows).

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The installed handlers.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    /// Never read: installed so that SIGXFSZ does not end the process.
    _file_size: Signal,
}

impl Signals {
    /// Installs the handlers; needs a Tokio runtime.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            _file_size: signal(SignalKind::from_raw(libc::SIGXFSZ))?,
        })
    }

    /// Resolves when SIGTERM, SIGINT or SIGHUP arrives.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = self.hangup.recv() => tracing::info!("SIGHUP received, shutting down"),
        }
    }
}
