//! OpenAI's Realtime API, transcription sessions: `GET /v1/realtime?intent=transcription`, as
//! the official SDKs' `client.realtime.connect(...)` speaks it.
//!
//! [`event`] is the pure part: client events parsed and checked, the session's settings and
//! `session.update`, server events with OpenAI's field names. [`session`] is the shell: one task
//! per connection, generic over any `Stream` + `Sink` of WebSocket messages, that feeds the
//! audio to the live engine (`live::LivePolicy` and the Whisper pool) and turns its commits into
//! `…transcription.delta` events and its turns into items. The connection plumbing (bounded
//! outbound queue, writer, close codes) is the WebSocket session's (`ws`).
//!
//! This module must not import the composition root (`server`) or the HTTP API, must not
//! decide what text is final (the live policy does), and must not keep audio or events without
//! a bound: the uncommitted audio is capped ([`session::MAX_BUFFER_SECS`]) and deltas are sent
//! lossily.

pub mod event;
pub mod session;

pub use session::run;

/// The subprotocol the server answers a browser with (the key travels in another one,
/// `openai-insecure-api-key.KEY`, read by the access guard).
pub const SUBPROTOCOL: &str = "realtime";

/// The `error` event a client refused at the connection cap receives before the close.
pub fn busy_refusal() -> String {
    let error = event::ErrorBody::server("server_busy", "too many connections; retry later");
    event::ServerEvent::Error { error }.to_json("event_busy".into())
}
