//! The accept loop behind [`crate::server::run`]: takes TCP connections within a descriptor
//! budget and serves each as HTTP/1.1 (WebSocket upgrades included) with deadlines, so sockets
//! that never become requests cannot pile up until the server runs out of descriptors.
//!
//! - Every request head must arrive whole within `--header-timeout` (hyper's header read
//!   timeout, which also runs between keep-alive requests), and a WebSocket upgrade must be
//!   finished within `--handshake-timeout` of its head ([`conn`]).
//! - At most `--max-pending-connections` connections may wait for a head; the one that waited
//!   longest is closed to make room ([`pending`]).
//! - Accepted sockets never use the descriptors reserved for files ([`fds`]); at the budget the
//!   loop sheds a waiting connection or waits for one to close, and a failing `accept` (EMFILE)
//!   is retried after a pause and logged at most once a second.
//! - On shutdown it stops accepting, asks every connection to finish its request and close,
//!   and returns when they all have (WebSocket sessions drain in [`crate::server::run`]).
//!
//! `axum::serve` does none of the first three: it sets no timer, so hyper never enforces a head
//! deadline, and its HTTP version detection waits for a first byte forever.
//!
//! This module must not route, authenticate or limit requests (the router and its guard do),
//! and must not hold a socket it has no budget for.

mod conn;
mod fds;
mod pending;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use nix::errno::Errno;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServerConfig;
use conn::Shared;
use pending::Pending;

/// Pause after a failed `accept` that is not about one connection (e.g. out of descriptors),
/// so the loop does not spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Least time between two log lines about failing `accept`s.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Accepts and serves until `stop` completes, then cancels `shutdown`, lets every connection
/// finish its request and returns once they are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ServerConfig,
    stop: impl Future<Output = ()>,
    shutdown: CancellationToken,
) {
    let budget = fds::prepare(config);
    tracing::debug!(?budget, "descriptor budget");
    let shared = Arc::new(Shared {
        router,
        http: http1_builder(config),
        head_timeout: config.header_timeout,
        handshake_timeout: config.handshake_timeout,
        pending: Arc::new(Pending::new(config.max_pending_connections)),
        shutdown: shutdown.clone(),
    });
    let mut acceptor = Acceptor {
        listener,
        sockets: Arc::new(Semaphore::new(budget.sockets)),
        pending: shared.pending.clone(),
        errors: Throttle::default(),
    };
    let connections = TaskTracker::new();
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            (socket, peer) = acceptor.next() => {
                connections.spawn(conn::serve(socket, peer, shared.clone()));
            }
            () = &mut stop => break,
        }
    }
    drop(acceptor); // no more connections: the port closes now
    shutdown.cancel();
    connections.close();
    connections.wait().await;
}

/// HTTP/1.1 with a deadline for each request head (hyper's timer drives it).
fn http1_builder(config: &ServerConfig) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    http
}

/// The listening socket and what an accepted socket needs before it is taken.
struct Acceptor {
    /// Where connections come from.
    listener: TcpListener,
    /// The descriptor budget for accepted sockets: one permit per open socket.
    sockets: Arc<Semaphore>,
    /// Connections waiting for a head, to shed one when the budget is used up.
    pending: Arc<Pending>,
    /// Keeps a persistent `accept` failure from flooding the log.
    errors: Throttle,
}

impl Acceptor {
    /// The next connection, with its share of the budget. Cancel-safe.
    async fn next(&mut self) -> (Socket, SocketAddr) {
        loop {
            let share = self.share().await;
            match self.listener.accept().await {
                Ok((stream, peer)) => return (Socket::new(stream, share), peer),
                Err(err) => self.failed(err).await,
            }
        }
    }

    /// One permit of the budget; when it is all used, the connection that has waited longest
    /// for a head is shed to free one (or, if none waits, until some socket closes).
    async fn share(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = self.sockets.clone().try_acquire_owned() {
            return permit;
        }
        self.pending.shed_oldest();
        match self.sockets.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed; if it were, no socket could be afforded.
            Err(_closed) => std::future::pending().await,
        }
    }

    /// After a failed `accept`: a connection that went away before it was taken is no
    /// concern; anything else (out of descriptors above all) is logged and retried after a
    /// pause, shedding a waiting connection when descriptors are short.
    async fn failed(&mut self, err: io::Error) {
        if is_about_one_connection(&err) {
            return;
        }
        if is_out_of_descriptors(&err) {
            self.pending.shed_oldest();
        }
        self.errors.warn(&err);
        tokio::time::sleep(ACCEPT_RETRY).await;
    }
}

fn is_about_one_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    err.raw_os_error().is_some_and(|code| {
        matches!(
            Errno::from_raw(code),
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// Logs at most one line per [`ACCEPT_LOG_EVERY`], saying how many were left out.
#[derive(Default)]
struct Throttle {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Failures since then that were not logged.
    quiet: u64,
}

impl Throttle {
    fn warn(&mut self, err: &io::Error) {
        let due = self.last.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY);
        if !due {
            self.quiet += 1;
            return;
        }
        tracing::warn!(%err, suppressed = self.quiet, "accept failed; retrying");
        self.last = Some(Instant::now());
        self.quiet = 0;
    }
}

/// An accepted TCP stream with its share of the descriptor budget. The share is returned
/// when the stream is dropped, wherever it is by then: after an upgrade hyper hands this very
/// object to the WebSocket session.
pub struct Socket {
    /// The connection.
    stream: TcpStream,
    /// Its permit from the budget, held for as long as the descriptor is open.
    _share: OwnedSemaphorePermit,
}

impl Socket {
    fn new(stream: TcpStream, share: OwnedSemaphorePermit) -> Self {
        Socket {
            stream,
            _share: share,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_shortage_is_told_from_a_client_that_left() {
        let emfile = io::Error::from_raw_os_error(Errno::EMFILE as i32);
        assert!(is_out_of_descriptors(&emfile));
        assert!(!is_about_one_connection(&emfile));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(is_about_one_connection(&aborted));
        assert!(!is_out_of_descriptors(&aborted));
    }

    #[test]
    fn a_persistent_failure_is_logged_once_a_second() {
        let mut throttle = Throttle::default();
        let err = io::Error::from_raw_os_error(Errno::EMFILE as i32);
        for _ in 0..100 {
            throttle.warn(&err);
        }
        assert_eq!(throttle.quiet, 99);
    }
}
