//! One accepted connection: HTTP/1.1 through hyper with a deadline on every request head and on
//! a WebSocket handshake, the peer address handed to the router as `ConnectInfo`, and the
//! connection's place among those waiting for a head ([`super::pending`]).
//!
//! This module must not look at a request beyond "does it ask for an upgrade": routing,
//! authentication and limits are the router's.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::pending::Pending;
use super::Socket;
use crate::metrics;

/// What every connection of one server shares.
pub struct Shared {
    /// The routes; each request gets a clone.
    pub router: Router,
    /// hyper's HTTP/1.1 settings, timer and head deadline included.
    pub http: http1::Builder,
    /// The head deadline set in `http`, kept to tell a silent close by it from a client's own.
    pub head_timeout: Duration,
    /// Time from an upgrade request's head to the finished upgrade.
    pub handshake_timeout: Duration,
    /// Connections waiting for a head, the cap on them and who is shed next.
    pub pending: Arc<Pending>,
    /// Cancelled when the server shuts down: each connection finishes its request and closes.
    pub shutdown: CancellationToken,
}

/// The connection type hyper builds from our socket and service.
type Http = http1::UpgradeableConnection<TokioIo<Socket>, Service>;

/// Serves one connection until it ends, is shed, or runs out of handshake time.
pub async fn serve(socket: Socket, peer: SocketAddr, shared: Arc<Shared>) {
    let ticket = Arc::new(Ticket::new(shared.pending.clone()));
    let service = Service {
        router: shared.router.clone(),
        peer,
        ticket: ticket.clone(),
    };
    let http = shared
        .http
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    let end = drive(http, &ticket, &shared).await;
    end.report(peer, &ticket, shared.head_timeout);
}

/// How a connection ended.
enum End {
    /// hyper finished it: the client left, a head deadline passed, an upgrade was handed over,
    /// or the server shut down.
    Closed(Result<(), hyper::Error>),
    /// Too many connections were waiting for a head and this one had waited longest.
    Shed,
    /// It asked for a WebSocket upgrade and did not finish it in time.
    HandshakeTimeout,
}

/// Polls the connection, dropping it (which closes the socket) when it is shed or its
/// handshake time is over; on shutdown it is asked to finish its request and close.
async fn drive(http: Http, ticket: &Ticket, shared: &Shared) -> End {
    let mut http = pin!(http);
    let mut handshake = pin!(handshake_over(ticket, shared.handshake_timeout));
    let mut draining = false;
    loop {
        tokio::select! {
            result = http.as_mut() => return End::Closed(result),
            () = ticket.close.cancelled() => return End::Shed,
            () = &mut handshake => return End::HandshakeTimeout,
            () = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Completes `timeout` after the connection asked for an upgrade. A refused upgrade does not
/// reset it: such a connection gets the same time to finish and leave.
async fn handshake_over(ticket: &Ticket, timeout: Duration) {
    ticket.upgrading.notified().await;
    tokio::time::sleep(timeout).await;
}

impl End {
    /// Counts and logs how the connection ended. A silent connection closed by the head
    /// deadline ends without an error from hyper, so it is told apart by how long it waited.
    fn report(self, peer: SocketAddr, ticket: &Ticket, head_timeout: Duration) {
        let waited_out = ticket.waited().is_some_and(|w| w >= head_timeout);
        match self {
            End::Shed => tracing::debug!(%peer, "connection shed: too many waiting for a head"),
            End::HandshakeTimeout => {
                metrics::connection_shed("handshake_timeout");
                tracing::debug!(%peer, "connection closed: WebSocket handshake not finished");
            }
            End::Closed(Err(err)) if err.is_timeout() => slow_head(peer),
            End::Closed(Ok(())) if waited_out => slow_head(peer),
            End::Closed(Err(err)) => tracing::debug!(%peer, %err, "connection ended by an error"),
            End::Closed(Ok(())) => {}
        }
    }
}

fn slow_head(peer: SocketAddr) {
    metrics::connection_shed("head_timeout");
    tracing::debug!(%peer, "connection closed: no complete request head in time");
}

/// One connection's standing, shared by its task, its service and its response bodies.
struct Ticket {
    /// The queue it waits in while it waits for a head.
    pending: Arc<Pending>,
    /// Cancelled when the queue sheds it; its task then drops the connection.
    close: CancellationToken,
    /// Notified when it asks for a WebSocket upgrade: the handshake clock starts.
    upgrading: Notify,
    /// Its place in the queue and since when, while it waits for a head.
    waiting: Mutex<Option<(u64, Instant)>>,
}

impl Ticket {
    /// A new connection: it waits for its first head from now on.
    fn new(pending: Arc<Pending>) -> Self {
        let ticket = Ticket {
            pending,
            close: CancellationToken::new(),
            upgrading: Notify::new(),
            waiting: Mutex::new(None),
        };
        ticket.wait_for_head();
        ticket
    }

    /// Joins the back of the queue, unless it is in it already.
    fn wait_for_head(&self) {
        let mut waiting = self.lock();
        if waiting.is_none() {
            *waiting = Some((self.pending.enter(&self.close), Instant::now()));
        }
    }

    /// Leaves the queue: a head arrived, or the connection is over.
    fn stop_waiting(&self) {
        if let Some((place, _)) = self.lock().take() {
            self.pending.leave(place);
        }
    }

    /// How long it has been waiting for a head, if it is.
    fn waited(&self) -> Option<Duration> {
        self.lock().map(|(_, since)| since.elapsed())
    }

    /// The waiting state, even after a panic elsewhere (it is a plain value).
    fn lock(&self) -> MutexGuard<'_, Option<(u64, Instant)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

/// The router as hyper's service for one connection.
#[derive(Clone)]
struct Service {
    /// The routes.
    router: Router,
    /// The client's address, for handlers and the access guard (`ConnectInfo<SocketAddr>`).
    peer: SocketAddr,
    /// The connection's standing: a request head ends its wait.
    ticket: Arc<Ticket>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.ticket.stop_waiting();
        if request.headers().contains_key(header::UPGRADE) {
            self.ticket.upgrading.notify_one();
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let router = self.router.clone();
        let ticket = self.ticket.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(Tracked::wrap(response, ticket))
        })
    }
}

/// A response body that puts its connection back in the queue once hyper is done with it
/// (hyper drops the body after its last frame): a keep-alive connection between requests is
/// as idle as a new one. After `101 Switching Protocols` it does not: that is a WebSocket now.
pub struct Tracked {
    /// The router's body.
    body: Body,
    /// The connection to requeue when the body is dropped; `None` after an upgrade.
    ticket: Option<Arc<Ticket>>,
}

impl Tracked {
    fn wrap(response: Response<Body>, ticket: Arc<Ticket>) -> Response<Tracked> {
        let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let ticket = (!upgraded).then_some(ticket);
        response.map(|body| Tracked { body, ticket })
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.wait_for_head();
        }
    }
}
