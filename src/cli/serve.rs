//! `earshot serve`: loads the model (fetching it if absent), binds, serves until SIGINT/SIGTERM.

use anyhow::{Context, Result};

use crate::inference::pool::{Pool, PoolConfig};
use crate::models;
use crate::server::{self, AppState, ServerConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServerConfig,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let config = args.config;
    let model = models::ensure(&config.model, &config.models_dir, true)?;
    let vad = models::ensure(models::VAD_MODEL, &config.models_dir, true)
        .map_err(|e| tracing::warn!("no VAD model ({e}); cutting windows by energy"))
        .ok();
    let pool = Pool::start(PoolConfig {
        model_path: model,
        workers: config.workers,
        queue_capacity: config.queue,
    })
    .context("loading the model")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = AppState::new(config, pool, vad).context("opening the data directory")?;
        tracing::info!(%addr, "earshot listening: ws://{addr}/ (health: http://{addr}/healthz)");
        server::run(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
