//! HTTP routes: WebSocket upgrades at `/` and `/ws` (plain `GET /` serves the web page),
//! `GET /healthz`; the HTTP API and the access guard are added by [`crate::http::wrap`].
//!
//! Upgrades are configured here (message cap, buffer sizes) and handed to
//! [`crate::ws::run`]; the connection cap is enforced before any session state exists.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};

use crate::access::Caller;
use crate::protocol::{ErrorCode, ProtocolError};

use super::AppState;

/// Read buffer per connection: small, because idle connections must stay cheap; tungstenite
/// grows it as a large message arrives (up to the message cap) and the OS buffers the rest.
const READ_BUFFER: usize = 8 * 1024;
/// Bytes queued towards a client before a send waits for the socket.
const WRITE_BUFFER: usize = 64 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let ws = Router::new()
        .route("/", get(upgrade_or_hello))
        .route("/ws", get(upgrade_or_hello))
        .route("/healthz", get(healthz))
        .merge(super::page::router())
        .with_state(state.clone());
    crate::http::wrap(ws, state)
}

async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "model": state.pool.model_name(),
        "workers": state.pool.workers(),
        "busy_workers": state.pool.busy_workers(),
        "queue": state.pool.queue_len(),
    }))
}

async fn upgrade_or_hello(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Option<Extension<Arc<crate::http::ClientSlot>>>,
    caller: Option<Extension<Caller>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let caller = caller.map_or_else(|| Caller::anonymous(peer.ip()), |Extension(c)| c);
    let Ok(ws) = ws else {
        return super::page::index();
    };
    let cap = state.config.max_message_bytes.as_u64() as usize;
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(cap + WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _client = client; // the per-address slot is held for the session's life
            accept(socket, state, peer, caller).await
        })
}

async fn accept(mut socket: WebSocket, state: Arc<AppState>, peer: SocketAddr, caller: Caller) {
    let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "connection refused: at --max-connections");
        // A client that does not read must not keep a refused socket open.
        let refusal = refuse_busy(&mut socket);
        let _ = tokio::time::timeout(state.config.handshake_timeout, refusal).await;
        return;
    };
    let tracker = state.tracker.clone();
    tracker
        .track_future(crate::ws::run(socket, state, peer, caller, permit))
        .await;
}

async fn refuse_busy(socket: &mut WebSocket) {
    let msg = ProtocolError::new(ErrorCode::Busy, "too many connections; retry later")
        .with_retry_after_ms(1000)
        .to_message();
    let _ = socket.send(Message::text(msg.to_json())).await;
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1008,
            reason: "too many connections".into(),
        })))
        .await;
}
