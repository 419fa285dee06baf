use std::process::ExitCode;

use stackdemo::{
    cli::{Cli, Command},
    healthcheck,
    shutdown::Signals,
    startup::{Application, ServiceError},
    telemetry, verify,
};

/// jemalloc instead of the C library's allocator: the service's threads allocate at once,
/// and some buffers are freed on another thread than the one that made them (the embedded
/// store's writer, the acceptor handing connections over), which glibc serialises on its
/// arena locks and musl (the container image) on one global lock. `bench/run.sh` measures
/// the difference.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::from_env() {
        Ok(cli) => cli,
        // Help and version print to stdout and exit 0; bad arguments exit 2.
        Err(error) => error.exit(),
    };
    // Serving needs one thread here, for accepting and background work: connections are
    // served on worker threads with runtimes of their own (see `server`). `verify` drives
    // many clients at once and gets a thread per core.
    let mut runtime = match cli.command {
        Command::Verify(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli.command)),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(settings) => {
            if let Err(reason) = telemetry::check_filter() {
                eprintln!("error: invalid RUST_LOG: {reason}");
                return ExitCode::from(2);
            }
            // Held to the end: dropping it writes out the log lines still queued.
            let _log = telemetry::init(settings.log_format);
            let signals = match Signals::install() {
                Ok(signals) => signals,
                Err(error) => {
                    eprintln!(
                        "error: cannot install the handlers of SIGTERM, SIGINT, SIGHUP and SIGXFSZ: {error}"
                    );
                    return ExitCode::FAILURE;
                }
            };
            let served = match Application::build(&settings).await {
                Ok(app) => app.run_until(signals.recv()).await,
                Err(error) => Err(error),
            };
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(error @ ServiceError::Config(_)) => {
                    eprintln!("error: {error}");
                    ExitCode::from(2)
                }
                Err(error) => {
                    tracing::error!(%error, "stopped");
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck(args) => match healthcheck::check(&args).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("unhealthy: {reason}");
                ExitCode::FAILURE
            }
        },
        Command::Verify(args) => {
            let report = verify::run(&args).await;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                println!("{report}");
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
