//! The service in-process on port 0, with either store.

use std::{net::SocketAddr, path::PathBuf};

use stackdemo::{
    cli::{Cli, Command},
    startup::{Application, ServiceError},
};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

use super::{RedisServer, TestClient};

/// Which store a test runs against. Suites that apply to both run once per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Embedded,
}

pub struct TestApp {
    pub address: SocketAddr,
    pub client: TestClient,
    pub redis: Option<RedisServer>,
    pub data_dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServiceError>>>,
}

impl TestApp {
    /// Starts the service on a fresh store of the given kind.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts the service with extra command-line settings.
    pub async fn spawn_with(backend: Backend, extra: &[&str]) -> Self {
        match backend {
            Backend::Redis => {
                let redis = RedisServer::start().await;
                let mut app = Self::spawn_on_redis(&redis.url(), extra).await;
                app.redis = Some(redis);
                app
            }
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let mut app = Self::spawn_on_data_dir(dir.path().to_path_buf(), extra).await;
                app.data_dir = Some(dir);
                app
            }
        }
    }

    /// Starts the service on a Redis the caller owns.
    pub async fn spawn_on_redis(url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--redis-url", url];
        args.extend_from_slice(extra);
        Self::launch(&args).await
    }

    /// Starts the service on an embedded store in `dir`.
    pub async fn spawn_on_data_dir(dir: PathBuf, extra: &[&str]) -> Self {
        let dir = dir.to_string_lossy().into_owned();
        let mut args = vec!["--data-dir", dir.as_str()];
        args.extend_from_slice(extra);
        Self::launch(&args).await
    }

    async fn launch(args: &[&str]) -> Self {
        let mut argv = vec![
            "stackdemo",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ];
        if !args.contains(&"--replica") {
            argv.extend(["--replica", "test-replica"]);
        }
        // More workers than most test machines have cores: every test then sees its
        // connections spread over several runtime threads, each with its own batcher.
        if !args.contains(&"--workers") {
            argv.extend(["--workers", "3"]);
        }
        argv.extend_from_slice(args);
        let Command::Serve(settings) = Cli::parse_args(&argv).expect("valid test settings").command
        else {
            unreachable!("options alone are serve's");
        };
        let app = Application::build(&settings)
            .await
            .expect("the service starts");
        let address = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            client: TestClient::new(address),
            redis: None,
            data_dir: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the service down gracefully and waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("the server task ends")
                .expect("the server ends cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
