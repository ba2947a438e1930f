//! The bounded queue of messages towards one client, drained by a writer task.
//!
//! A client that stops reading fills its socket buffer, then this queue; after that a send waits
//! at most `send_timeout` and then fails, which ends the session — so a slow or stuck reader
//! costs a fixed amount of memory and never stalls anything but its own connection. Lossy sends
//! (partials, progress) are dropped instead of waiting: a newer one follows soon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use tokio::sync::mpsc;

use crate::protocol::ServerMessage;

/// Messages queued per connection before senders wait.
pub const CAPACITY: usize = 64;

/// The sending side; cheap to clone into background tasks of the same connection.
#[derive(Clone)]
pub struct Outbound {
    /// Into the writer task.
    tx: mpsc::Sender<Message>,
    /// How long a send may wait for room before the client is deemed stuck.
    send_timeout: Duration,
    /// Set once a send timed out: later sends fail at once instead of each waiting the full
    /// timeout again (the error reply, the close frame, every follower's message).
    stuck: Arc<AtomicBool>,
}

/// The client is gone or stuck; the session should end.
#[derive(Debug)]
pub struct Closed;

impl Outbound {
    /// A queue and the receiver its writer task drains.
    pub fn new(send_timeout: Duration) -> (Self, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let stuck = Arc::new(AtomicBool::new(false));
        (
            Self {
                tx,
                send_timeout,
                stuck,
            },
            rx,
        )
    }

    /// Queues a protocol message, waiting for room up to the timeout.
    pub async fn send(&self, msg: ServerMessage) -> Result<(), Closed> {
        self.send_raw(Message::text(msg.to_json())).await
    }

    /// Queues any WebSocket message, waiting for room up to the timeout.
    pub async fn send_raw(&self, msg: Message) -> Result<(), Closed> {
        if self.is_stuck() {
            return Err(Closed);
        }
        match tokio::time::timeout(self.send_timeout, self.tx.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                self.stuck.store(true, Ordering::Relaxed);
                Err(Closed)
            }
        }
    }

    /// Whether a send has timed out: the client stopped reading.
    pub fn is_stuck(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Queues a message only if there is room right now (for superseded-soon updates).
    pub fn send_lossy(&self, msg: ServerMessage) {
        self.send_lossy_raw(Message::text(msg.to_json()));
    }

    /// Queues any WebSocket message only if there is room right now.
    pub fn send_lossy_raw(&self, msg: Message) {
        let _ = self.tx.try_send(msg);
    }

    /// Whether the writer has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
