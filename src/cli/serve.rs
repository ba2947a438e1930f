//! `earshot serve`: loads the default model (fetching it if absent; other served models are
//! fetched and loaded on first use), binds, serves until SIGINT/SIGTERM.
//!
//! It must not hold server logic: everything after the bind is `server::run`.

use anyhow::{Context, Result};

use crate::cluster::{Cluster, ClusterConfig};
use crate::inference::pool::{Pool, PoolConfig};
use crate::models;
use crate::server::{self, AppState, ServerConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServerConfig,

    /// TOML settings file; keys are the long flag names (`max-file-bytes = "2GiB"`). Flags and
    /// EARSHOT_* variables override it.
    #[arg(long = "config", env = "EARSHOT_CONFIG", value_name = "FILE")]
    pub config_file: Option<std::path::PathBuf>,

    /// Print the effective settings as TOML (usable with --config) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Runs the server; `matches` are the parsed `serve` arguments, for `--print-config`.
pub fn run(args: ServeArgs, matches: &clap::ArgMatches, command: &clap::Command) -> Result<()> {
    if args.print_config {
        print!("{}", server::settings::to_toml(command, matches));
        return Ok(());
    }
    let config = args.config;
    warn_if_open(&config);
    if !config.serves_all() {
        for name in &config.models {
            models::check(name).context("--models")?;
        }
    }
    let model = models::ensure(config.default_model(), &config.models_dir, true)?;
    let vad = models::ensure(models::VAD_MODEL, &config.models_dir, true)
        .map_err(|e| tracing::warn!("no VAD model ({e}); cutting windows by energy"))
        .ok();
    let pool = Pool::start(PoolConfig {
        model_path: model,
        workers: config.workers,
        queue_capacity: config.queue,
        zh_script: config.zh_script,
    })
    .context("loading the model")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = if config.cluster.is_empty() {
            AppState::new(config, pool, vad).context("opening the data directory")?
        } else {
            let cluster = join_cluster(&config, addr).await?;
            AppState::clustered(config, pool, vad, cluster).context("opening the data directory")?
        };
        tracing::info!(%addr, "earshot listening: ws://{addr}/ (health: http://{addr}/healthz)");
        server::run(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Connects to the cluster's NATS and finds its shared resources.
async fn join_cluster(
    config: &ServerConfig,
    addr: std::net::SocketAddr,
) -> Result<std::sync::Arc<Cluster>> {
    let cluster = Cluster::connect(ClusterConfig {
        urls: config.cluster.clone(),
        ttl: config.session_ttl,
        ack_wait: config.cluster_ack_wait,
        replicas: config.cluster_replicas,
        upload_lease: config.cluster_lease,
        upload_store: config.cluster_upload_store.clone(),
        node: addr.to_string(),
    })
    .await
    .with_context(|| format!("joining the cluster at {}", config.cluster.join(",")))?;
    tracing::info!(nats = %config.cluster.join(","), "joined the cluster");
    Ok(std::sync::Arc::new(cluster))
}

/// Warns when the server is reachable from other machines without any API key.
fn warn_if_open(config: &ServerConfig) {
    if !config.listen.ip().is_loopback() && config.api_keys.is_empty() {
        tracing::warn!(
            listen = %config.listen,
            "listening on a non-loopback address without --api-key: anyone who can reach this \
             port can use it (set --api-key or EARSHOT_API_KEYS, and put TLS in front)"
        );
    }
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
