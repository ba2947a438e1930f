//! HTTP routes: WebSocket upgrades at `/` and `/ws` (plain `GET /` serves the web page),
//! OpenAI Realtime transcription at `/v1/realtime`, `GET /healthz`; the HTTP API and the
//! access guard are added by [`crate::http::wrap`].
//!
//! Upgrades are configured here (message cap, buffer sizes) and handed to
//! [`crate::ws::run`] or [`crate::realtime::run`]; the connection cap is enforced before any
//! session state exists.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
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
        .route("/v1/realtime", get(realtime))
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
        "models": state.models.status(),
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
    let busy = ProtocolError::new(ErrorCode::Busy, "too many connections; retry later")
        .with_retry_after_ms(1000)
        .to_message()
        .to_json();
    configure(ws, &state).on_upgrade(move |mut socket| async move {
        let _client = client; // the per-address slot is held for the session's life
        let Some(permit) = connection_slot(&mut socket, &state, peer, busy).await else {
            return;
        };
        let tracker = state.tracker.clone();
        tracker
            .track_future(crate::ws::run(socket, state, peer, caller, permit))
            .await;
    })
}

/// The query of `GET /v1/realtime`.
#[derive(serde::Deserialize)]
struct RealtimeQuery {
    /// `transcription` (the only session kind served) or absent.
    intent: Option<String>,
    /// The model the client names; any name means the loaded one.
    model: Option<String>,
}

/// `GET /v1/realtime?intent=transcription`: an OpenAI Realtime transcription session.
async fn realtime(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Option<Extension<Arc<crate::http::ClientSlot>>>,
    query: Result<Query<RealtimeQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    use axum::response::IntoResponse;
    let Ok(Query(query)) = query else {
        return crate::http::ApiError::bad_request("malformed query string").into_response();
    };
    if query
        .intent
        .as_deref()
        .is_some_and(|i| i != "transcription")
    {
        let msg = "only transcription sessions are served here: use ?intent=transcription";
        return crate::http::ApiError::bad_request(msg)
            .param("intent")
            .into_response();
    }
    let Ok(ws) = ws else {
        let msg = "the Realtime API is a WebSocket: connect with an upgrade request";
        return crate::http::ApiError::bad_request(msg).into_response();
    };
    let model = query
        .model
        .unwrap_or_else(|| state.pool.model_name().to_string());
    let ws = configure(ws, &state).protocols([crate::realtime::SUBPROTOCOL]);
    ws.on_upgrade(move |mut socket| async move {
        let _client = client; // the per-address slot is held for the session's life
        let busy = crate::realtime::busy_refusal();
        let Some(permit) = connection_slot(&mut socket, &state, peer, busy).await else {
            return;
        };
        let tracker = state.tracker.clone();
        tracker
            .track_future(crate::realtime::run(socket, state, model, permit))
            .await;
    })
}

/// The message cap and buffer sizes every upgrade gets.
fn configure(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let cap = state.config.max_message_bytes.as_u64() as usize;
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(cap + WRITE_BUFFER)
}

/// A connection permit, or `None` after refusing the socket with `busy` (at the cap).
async fn connection_slot(
    socket: &mut WebSocket,
    state: &AppState,
    peer: SocketAddr,
    busy: String,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(permit) = state.connection_slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    tracing::warn!(%peer, "connection refused: at --max-connections");
    // A client that does not read must not keep a refused socket open.
    let refusal = refuse_busy(socket, busy);
    let _ = tokio::time::timeout(state.config.handshake_timeout, refusal).await;
    None
}

async fn refuse_busy(socket: &mut WebSocket, busy: String) {
    let _ = socket.send(Message::text(busy)).await;
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1008,
            reason: "too many connections".into(),
        })))
        .await;
}
