use std::process::ExitCode;

use clap::Parser;
use stackdemo::{
    config::{Cli, Command},
    healthcheck, shutdown,
    startup::{Application, StartupError},
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
    let cli = Cli::parse();
    // Serving needs one thread here, for accepting and background work: connections are
    // served on worker threads with runtimes of their own (see `server`). `verify` drives
    // many clients at once and gets a thread per core.
    let mut runtime = match cli.command {
        Some(Command::Verify(_)) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        None | Some(Command::Serve) => {
            telemetry::init(cli.settings.log_format);
            let app = match Application::build(&cli.settings).await {
                Ok(app) => app,
                Err(error @ StartupError::Config(_)) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match app.run_until(shutdown::signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Healthcheck) => match healthcheck::check(cli.settings.listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("unhealthy: {reason}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Verify(args)) => {
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
