//! The composition root: one port serving the WebSocket sessions ([`crate::ws`], on `/` and
//! `/ws`), the HTTP API ([`crate::http`]), the page and health checks; and, when
//! `--wyoming` is set, a second port speaking Wyoming ([`crate::wyoming`]).
//!
//! [`run`] takes a bound listener, the shared [`AppState`] and a shutdown future, as mini-redis
//! does, so tests start the real server on `127.0.0.1:0` and binaries decide about signals.
//! Connections are accepted and held to their deadlines and caps by [`listen`]; [`settings`]
//! reads the settings file.
//!
//! This module wires things together: it must not parse protocol messages, decode audio or
//! hold domain logic, and nothing but the CLI may import it.

mod listen;
mod page;
mod routes;
pub mod settings;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use crate::app::{AppState, ServerConfig};

/// Serves until `shutdown` completes, then drains: sessions are told `server_shutdown` and
/// closed with 1001, upload state is already durable, running transcriptions get
/// `shutdown_grace` to finish.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(addr) = state.config.wyoming {
        let wyoming = bind_wyoming(addr).await?;
        state
            .tracker
            .spawn(crate::wyoming::serve(wyoming, state.clone()));
    }
    let app = routes::router(state.clone());
    let sweeper = state.tracker.spawn(sweep_loop(state.clone()));
    let stop = state.shutdown.clone();
    let unloader = state
        .tracker
        .spawn(state.models.clone().expire_loop(stop.cancelled_owned()));
    state.jobs.resume_unfinished().await;
    listen::serve(
        listener,
        app,
        &state.config,
        shutdown,
        state.shutdown.clone(),
    )
    .await;
    state.shutdown.cancel();
    sweeper.abort();
    unloader.abort();
    state.tracker.close();
    if tokio::time::timeout(state.config.shutdown_grace, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown grace period over; unfinished work is dropped (uploads resume later)"
        );
    }
    Ok(())
}

/// Binds the Wyoming port and says where it is (`wyoming listening: tcp://ADDR`, the form
/// Home Assistant and the `wyoming` package take).
async fn bind_wyoming(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding the Wyoming address {addr}: {e}"))
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "wyoming listening: tcp://{bound}");
    Ok(listener)
}

/// Expires idle uploads and old results once a minute.
async fn sweep_loop(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        state.tasks.sweep(state.config.session_ttl).await;
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let expired = st.uploads.sweep(st.config.session_ttl);
            if !expired.is_empty() {
                tracing::info!(count = expired.len(), "expired idle uploads swept");
            }
        })
        .await;
    }
}
