use std::process::ExitCode;

use clap::Parser;
use stackdemo::{
    config::{Cli, Command},
    healthcheck, shutdown,
    startup::{Application, StartupError},
    telemetry, verify,
};

/// jemalloc instead of the C library's allocator: a visit's buffers are allocated on one
/// worker thread and freed on another, which glibc serialises on its arena locks and musl
/// (the container image) on one global lock. `bench/run.sh` measures the difference.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
