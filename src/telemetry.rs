//! Logging: JSON lines for containers (`docker service logs`), readable text for a
//! terminal. The level comes from `RUST_LOG` (default `info`). A panic is logged as an
//! error event like any other, not printed as a bare backtrace.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber and the panic hook, once per process: later calls
/// (several services in one test process) change nothing.
pub fn init(format: LogFormat) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| install(format));
}

fn install(format: LogFormat) {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            "panicked"
        );
    }));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry.with(fmt::layer()).try_init()
    };
}
