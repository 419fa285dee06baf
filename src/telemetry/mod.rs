//! Logging: JSON lines for containers (`docker service logs`), readable text for a
//! terminal. The level comes from `RUST_LOG` (default `info`). A panic is logged as an
//! error event like any other, not printed as a bare backtrace.
//!
//! JSON lines come from json-subscriber, a drop-in for tracing-subscriber's JSON format.
//! Lines are written off the request path: at `info` and below they go through a bounded
//! queue to a writer thread (tracing-appender's non-blocking writer), so a request never
//! waits for standard output; the thread writes what has queued up in one go, not a
//! system call a line. When the output blocks (a slow log reader) and the queue is full,
//! such lines are dropped rather than held, and counted
//! (`stackdemo_log_lines_dropped_total`); the queue holds `QUEUED_LINES` at most.
//! Warnings and errors (store failures, panics) take the same queue: the thread writes
//! them as soon as it is free, and only an output that does not move makes them wait, or
//! be dropped and counted, rather than the request that logged them. What is queued is
//! written out before the process exits (`LogGuard`), and then how many lines were
//! dropped, if any.
//!
//! The line per request, in JSON, has a writer of its own (`request_log`), as a web
//! server's access log does: formatted by hand into a buffer per worker, it costs a
//! request a fraction of what an event does (bench/README.md).

mod request_log;
mod throttle;

pub use request_log::{
    DROPPED_MESSAGE, FLUSH_EVERY, LoggedPath, RequestLine, RequestLog, TARGET as REQUEST_TARGET,
};
pub use throttle::{THROTTLE_EVERY, Throttle};

use std::{
    io::{BufWriter, IsTerminal},
    sync::OnceLock,
};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Lines waiting for the writer thread at most: with lines of a few hundred bytes, about
/// a megabyte.
const QUEUED_LINES: usize = 4096;

/// What the writer thread gathers before a write: it also writes whenever the queue is
/// empty, so a line waits for no other.
const WRITE_BUFFER: usize = 64 * 1024;

/// Lines dropped so far because the queue was full.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread until dropped, and then writes out what is queued: hold it
/// until the process ends.
#[must_use = "dropping it stops the log writer"]
pub struct LogGuard {
    writers: Option<(WorkerGuard, Option<request_log::Writer>)>,
}

impl Drop for LogGuard {
    /// Writes out what is queued, then says how many lines were dropped, if any.
    fn drop(&mut self) {
        let Some((queued, request_lines)) = self.writers.take() else {
            return;
        };
        match request_lines {
            Some(writer) => {
                // The other lines first (tracing-appender waits a second at most), so
                // that the count is complete; then the count, through the writer thread,
                // which gives up on a stuck output in time.
                drop(queued);
                let dropped_elsewhere = DROPPED
                    .get()
                    .map_or(0, |counter| counter.dropped_lines() as u64);
                writer.stop(dropped_elsewhere);
            }
            None => {
                // Through the queue, written out as it is dropped.
                if dropped_lines() > 0 {
                    tracing::warn!(
                        dropped = dropped_lines(),
                        "{}",
                        request_log::DROPPED_MESSAGE
                    );
                }
                drop(queued);
            }
        }
    }
}

/// The level when `RUST_LOG` is unset or empty.
const DEFAULT_FILTER: &str = "info";

/// Checks the log filter `RUST_LOG` names, if it is set: a filter that does not parse
/// would otherwise be dropped without a word for the default. The reason, if not.
pub fn check_filter() -> Result<(), String> {
    match std::env::var("RUST_LOG") {
        Ok(filter) => check_filter_value(&filter),
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => Err("it is not text".to_owned()),
    }
}

/// The log filter: `RUST_LOG`'s, or the default where it is unset or empty (as for every
/// other setting, empty means unset; an empty filter would log nothing at all).
fn filter() -> EnvFilter {
    let given = std::env::var("RUST_LOG").unwrap_or_default();
    let given = given.trim();
    EnvFilter::try_new(if given.is_empty() {
        DEFAULT_FILTER
    } else {
        given
    })
    .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

fn check_filter_value(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|error| format!("'{filter}' {error} (examples: info, warn,stackdemo=debug)"))
}

/// Installs the global subscriber and the panic hook, once per process: later calls
/// (several services in one test process) change nothing.
pub fn init(format: LogFormat) -> LogGuard {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut guard = None;
    ONCE.call_once(|| guard = Some(install(format)));
    LogGuard { writers: guard }
}

/// Log lines dropped so far because the output could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
        + request_log::dropped_lines()
}

fn install(format: LogFormat) -> (WorkerGuard, Option<request_log::Writer>) {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            "panicked"
        );
    }));
    let (queued, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("stackdemo-log")
        .finish(BufWriter::with_capacity(WRITE_BUFFER, std::io::stdout()));
    let _ = DROPPED.set(queued.error_counter());
    // Every level through the queue: a warning written at once would wait for an output
    // that does not move, and the request with it.
    let writer = queued;
    let filter = filter();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    // Without its own writer thread, the line per request goes through tracing.
    let request_lines = json.then(request_log::Writer::start).and_then(Result::ok);
    let _ = if json {
        registry
            .with(
                json_subscriber::fmt::layer()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        // Colours for a terminal only: in a pipe or a file they are noise.
        let colours = std::io::stdout().is_terminal();
        registry
            .with(fmt::layer().with_ansi(colours).with_writer(writer))
            .try_init()
    };
    (guard, request_lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_filter_that_does_not_parse_is_refused() {
        for good in [
            "info",
            "warn,stackdemo=debug",
            "stackdemo::routes=trace",
            "",
        ] {
            assert_eq!(check_filter_value(good), Ok(()), "{good:?}");
        }
        for bad in ["stackdemo=loud", "=[{", "warn,,=x"] {
            let reason = check_filter_value(bad).unwrap_err();
            assert!(reason.starts_with(&format!("'{bad}'")), "{reason}");
        }
    }
}
