//! One WebSocket connection to the server: connect, wait for `connected`, send JSON and binary
//! frames, receive server messages with an idle timeout.
//!
//! Knows the framing only; what to send when is the upload and stream modules' business.

use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::ClientError;
use crate::protocol::{Limits, ServerMessage, PING_TIMEOUT_SECS};

/// How long a client waits for any frame before it deems the connection dead. The server
/// pings every 60 s, so a live connection is never this quiet.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(PING_TIMEOUT_SECS);

/// How long the TCP connect plus WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket type of a client connection.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open connection that has received `connected`.
pub(crate) struct Conn {
    /// The WebSocket.
    pub ws: Socket,
    /// The limits the server announced; chunk sizes and windows must respect them.
    pub limits: Limits,
    /// Silence after which [`Conn::recv`] gives up.
    pub idle_timeout: Duration,
}

impl Conn {
    /// Connects and waits for `connected`. A server at capacity answers `busy` here.
    pub async fn open(url: &str, idle_timeout: Duration) -> Result<Conn, ClientError> {
        // Server messages are small except `transcription_complete` of a long file; the
        // server's own cap on messages is a generous bound for those.
        let cap = Limits::default().max_message_bytes as usize;
        let config = WebSocketConfig::default()
            .max_message_size(Some(cap))
            .max_frame_size(Some(cap));
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let connect_error = |reason: String| ClientError::Connect {
            url: url.to_string(),
            reason,
        };
        let (ws, _response) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| connect_error("timed out".into()))?
            .map_err(|e| connect_error(describe(&e)))?;
        let mut conn = Conn {
            ws,
            limits: Limits::default(),
            idle_timeout,
        };
        match conn.recv().await? {
            ServerMessage::Connected(c) => {
                tracing::debug!(connection = %c.connection_id, model = %c.model, "connected");
                conn.limits = c.limits;
                Ok(conn)
            }
            ServerMessage::Error(e) => Err(ClientError::from_server(e)),
            other => Err(ClientError::Protocol(format!(
                "expected `connected`, got {}",
                type_name(&other)
            ))),
        }
    }

    /// Sends one JSON text message.
    pub async fn send_json(&mut self, value: &serde_json::Value) -> Result<(), ClientError> {
        send(&mut self.ws, Message::text(value.to_string())).await
    }

    /// Sends one text frame already serialised (e.g. prepared off the async thread).
    pub async fn send_text(
        &mut self,
        text: tokio_tungstenite::tungstenite::Utf8Bytes,
    ) -> Result<(), ClientError> {
        send(&mut self.ws, Message::text(text)).await
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        send(&mut self.ws, Message::binary(frame)).await
    }

    /// The next server message (pings are answered by tungstenite and skipped).
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        recv(&mut self.ws, self.idle_timeout).await
    }

    /// Closes politely; errors are irrelevant at this point.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// Sends one frame on any WebSocket sink.
pub(crate) async fn send<S>(sink: &mut S, msg: Message) -> Result<(), ClientError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    sink.send(msg).await.map_err(lost)
}

/// Reads the next server message from any WebSocket stream, waiting at most `idle` for a frame.
pub(crate) async fn recv<S>(stream: &mut S, idle: Duration) -> Result<ServerMessage, ClientError>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| ClientError::Timeout(idle.as_secs()))?;
        let msg = match frame {
            None => return Err(ClientError::ConnectionLost("the server hung up".into())),
            Some(Err(e)) => return Err(lost(e)),
            Some(Ok(msg)) => msg,
        };
        match msg {
            Message::Text(text) => return parse(&text),
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(ClientError::Closed { code, reason });
            }
            Message::Binary(_) => {
                return Err(ClientError::Protocol(
                    "the server sent a binary frame".into(),
                ))
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        }
    }
}

fn parse(text: &str) -> Result<ServerMessage, ClientError> {
    match serde_json::from_str::<ServerMessage>(text) {
        Ok(ServerMessage::ServerShutdown(s)) => Err(ClientError::ConnectionLost(s.message)),
        Ok(msg) => Ok(msg),
        Err(e) => Err(ClientError::Protocol(format!(
            "unreadable message ({e}): {}",
            crate::protocol::truncate(text, 120)
        ))),
    }
}

fn lost(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Capacity(_) => {
            ClientError::Protocol(format!("a server message over our size limit: {e}"))
        }
        other => ClientError::ConnectionLost(describe(&other)),
    }
}

/// A short description of a tungstenite error (IO errors without their debug noise).
fn describe(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => io.to_string(),
        tungstenite::Error::Http(resp) => format!("HTTP {} instead of a WebSocket", resp.status()),
        other => other.to_string(),
    }
}

/// The wire name of a server message, for error text.
pub(crate) fn type_name(msg: &ServerMessage) -> String {
    serde_json::to_value(msg)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
