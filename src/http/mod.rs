//! Earshot for the tools people already use: the HTTP side of the one server port.
//!
//! - [`openai`]: OpenAI-compatible `/v1/audio/transcriptions`, `/v1/audio/translations`,
//!   `/v1/models`; [`sse`]: a transcription streamed as OpenAI's server-sent events.
//! - [`tasks`]: `/v1/tasks/{id}`, any task's status and result.
//! - [`metrics`]: the Prometheus `/metrics` scrape (the counters are [`crate::metrics`]).
//! - [`ready`]: `GET /readyz`, whether to send traffic here.
//! - [`auth`]: API keys, allowed origins and per-client limits, in front of every route
//!   (WebSocket upgrades included).
//!
//! [`wrap`] adds all of it to the WebSocket router. This module must not run Whisper (it only
//! probes that a file decodes): transcription goes through [`crate::jobs`] like every upload,
//! and it must not import the composition root (`server`) or the WebSocket sessions.

pub mod auth;
mod error;
pub mod form;
pub mod metrics;
pub mod openai;
pub mod ready;
pub mod sse;
pub mod tasks;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

pub use auth::ClientSlot;
pub use error::ApiError;

use crate::app::AppState;

/// State the HTTP routes and the guard share.
pub struct Http {
    /// The server's shared state (pool, tasks, slots, settings).
    pub app: Arc<AppState>,
    /// Accepted API keys (hashed); empty = open server.
    keys: auth::Keys,
    /// Open requests/connections per client address.
    clients: Arc<auth::ClientSlots>,
    /// Requests per minute per client address.
    rate: auth::RateLimit,
    /// HTTP transcriptions admitted at once (running or waiting for a processing slot), so
    /// waiting requests stay bounded: more are answered 503.
    jobs: Arc<Semaphore>,
    /// Where HTTP uploads are spooled while they are transcribed (`data_dir/http`).
    spool: PathBuf,
    /// Bytes HTTP requests in flight declared, counted against the disk quota.
    spooled_bytes: AtomicU64,
}

impl Http {
    /// Prepares the spool directory (emptied: HTTP requests do not survive a restart).
    pub fn new(app: Arc<AppState>) -> Arc<Self> {
        let spool = app.config.data_dir.join("http");
        let _ = std::fs::remove_dir_all(&spool);
        if let Err(err) = std::fs::create_dir_all(&spool) {
            tracing::error!(%err, dir = %spool.display(), "cannot create the HTTP upload directory");
        }
        let config = &app.config;
        Arc::new(Http {
            keys: auth::Keys::new(&config.api_keys),
            clients: auth::ClientSlots::new(config.max_connections_per_ip),
            rate: auth::RateLimit::new(config.rate_limit_per_minute),
            jobs: Arc::new(Semaphore::new(config.max_processing + config.queue)),
            spool,
            spooled_bytes: AtomicU64::new(0),
            app,
        })
    }
}

/// Adds the HTTP API, metrics and readiness to `ws` (the WebSocket and health routes) and puts
/// the key/origin/limit guard in front of everything.
pub fn wrap(ws: Router, app: Arc<AppState>) -> Router {
    crate::metrics::install();
    let http = Http::new(app);
    let api = Router::new()
        .route("/v1/audio/transcriptions", post(openai::transcriptions))
        .route("/v1/audio/translations", post(openai::translations))
        .route("/v1/models", get(openai::models))
        .route("/v1/tasks/{task_id}", get(tasks::get))
        .route("/metrics", get(metrics::scrape))
        .route("/readyz", get(ready::readyz))
        // Uploads are limited while they stream (see form.rs), not buffered against a cap.
        .layer(DefaultBodyLimit::disable())
        .with_state(http.clone());
    ws.merge(api)
        .layer(axum::middleware::from_fn_with_state(http, auth::guard))
}
