//! The Wyoming protocol over TCP (`earshot serve --wyoming ADDR`): how Home Assistant's voice
//! pipeline talks to a speech-to-text service.
//!
//! - [`frame`] (pure): a JSON header line, extra data, payload ⇄ [`frame::Event`], with caps
//!   on the header line and on announced lengths.
//! - [`event`] (pure): the events Earshot understands and the ones it sends (`info`,
//!   `transcript-start`/`-chunk`/`-stop`, `transcript`, `error`).
//! - `utterance`: one `audio-start` … `audio-stop` on the live engine (decode, resample,
//!   [`crate::live::LivePolicy`], the bounded Whisper pool).
//! - `conn`: one connection's event loop, idle deadline and shutdown.
//!
//! [`serve`] accepts connections up to `--wyoming-max-connections`; one more is told `busy`
//! and closed. Every connection is a task of the server's tracker and ends when the server's
//! shutdown token is cancelled.
//!
//! This module must not import `ws`, `http` or `server`, must not buffer more than one bounded
//! event or utterance per connection, and must not send internal details to a client.

mod conn;
pub mod event;
pub mod frame;
mod utterance;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::AppState;

/// Pause after a failed `accept` (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts Wyoming connections on `listener` until the server shuts down.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let slots = Arc::new(Semaphore::new(state.config.wyoming_max_connections));
    let shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(%err, "wyoming accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "wyoming connection refused: too many connections");
            refuse_busy(&socket);
            continue;
        };
        tracing::debug!(%peer, "wyoming connection");
        let st = state.clone();
        state.tracker.spawn(async move {
            conn::serve(socket, st).await;
            drop(permit);
        });
    }
}

/// Tells a connection over the cap why it is closed, without waiting for it.
fn refuse_busy(socket: &tokio::net::TcpStream) {
    let refusal = event::Refusal::fatal("busy", "too many connections; try again later");
    let _ = socket.try_write(&frame::encode(&refusal.event()));
}
