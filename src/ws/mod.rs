//! One WebSocket connection: reads frames, dispatches them, writes replies through a bounded
//! queue, keeps the connection alive and closes it with the right code.
//!
//! [`run`] is generic over any `Stream` + `Sink` of WebSocket messages, so it can be driven by a
//! real socket or by channels. The handlers for each kind of work live beside it:
//! [`upload`] (seed JSON and binary fast path, resume, results), [`live`] (streaming audio) and
//! [`segments`] (the seed's `audio_segment`). [`follow`] forwards a task's progress to the client.
//!
//! A session owns nothing that outlives it except tasks it registered: uploads are durable in
//! the store and transcriptions keep running so a client can fetch results after a reconnect.
//! It serves its [`Caller`] only: with API keys on, tasks of other keys look like no task.
//! An upload that sends nothing for `--upload-idle-timeout` gives its slot back.
//!
//! The connection plumbing ([`plumb`], [`write_loop`], [`send_close`], [`drain`], [`close`]
//! codes, [`close_for_read_error`]) is shared with the OpenAI Realtime sessions (`realtime`).
//!
//! This module is written against [`AppState`] only: it must not import the composition root
//! (`server`) or the HTTP API, and must not block its async thread on disk (store calls go
//! through the blocking pool).

mod follow;
mod live;
mod outbound;
mod segments;
mod upload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

pub use outbound::{Closed, Outbound};

use crate::access::Caller;
use crate::app::{AppState, UploadSlot};
use crate::domain::{TaskId, TaskOptions};
use crate::inference::engine;
use crate::protocol::{self, ClientMessage, ErrorCode, ProtocolError, ServerMessage};

/// Close codes this server uses (RFC 6455 §7.4.1).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame type the protocol does not accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// Policy violation: over a limit, or misbehaving.
    pub const POLICY: u16 = 1008;
    /// A message over the size cap.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error.
    pub const INTERNAL: u16 = 1011;
}

/// Text frames larger than this are parsed off the async threads (base64 + md5 of a chunk).
const INLINE_PARSE_BYTES: usize = 64 * 1024;
/// Binary chunks written but not yet synced before a group commit is forced.
const MAX_PENDING_CHUNKS: u32 = 8;
/// Shortest ping period, whatever the configuration says.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);
/// How long the writer may take to flush the last messages and the close frame.
const WRITER_GRACE: Duration = Duration::from_secs(5);
/// Most task ids one connection's log span lists (a long-lived connection keeps the latest).
const MAX_SPAN_TASKS: usize = 8;
/// How long pending binary chunks may wait for more before they are synced and acked.
const GROUP_COMMIT_DELAY: Duration = Duration::from_millis(2);

/// Per-connection state the handlers share.
pub struct Connection {
    /// Short id for logs and the `connected` message.
    pub id: String,
    /// Server-wide state.
    pub state: Arc<AppState>,
    /// Who is connected: whose tasks it may see, whose share of slots and quota it uses.
    pub caller: Caller,
    /// Towards the client.
    pub out: Outbound,
    /// Cancelled when the connection ends; stops its followers and live stream.
    pub cancel: CancellationToken,
    /// Uploads this connection is sending, each holding one upload slot.
    uploads: HashMap<TaskId, ActiveUpload>,
    /// The group commit under way, at most one: the next chunks are received and written
    /// while the store makes the last group durable, and its ack is sent when it is done.
    committing: Option<upload::Committing>,
    /// The live stream this connection is sending, if any.
    live: Option<live::LiveStream>,
    /// `audio_segment` tasks in progress, by task.
    segments: HashMap<TaskId, segments::SegmentTask>,
    /// Tasks this connection relays to its client, so each is followed once.
    followers: HashMap<TaskId, tokio::task::JoinHandle<()>>,
    /// The connection's log span: task ids are recorded on it as the connection takes them
    /// up, so every later log line of the connection names them.
    span: tracing::Span,
    /// The task ids recorded on the span, the latest [`MAX_SPAN_TASKS`] of them.
    task_ids: Vec<TaskId>,
}

/// An upload receiving data on this connection.
struct ActiveUpload {
    /// The upload slot (seed: 5 at once) and the client's share; released when the upload
    /// completes, sits idle past `--upload-idle-timeout`, or the client goes.
    _slot: UploadSlot,
    /// Binary chunks written but not yet synced/acked (group commit).
    pending: u32,
    /// When the upload last received something, for the idle release.
    last_active: TokioInstant,
}

impl ActiveUpload {
    fn new(slot: UploadSlot) -> Self {
        ActiveUpload {
            _slot: slot,
            pending: 0,
            last_active: TokioInstant::now(),
        }
    }
}

/// How the read loop should go on after a frame.
enum Flow {
    Continue,
    Close(u16, &'static str),
}

/// Serves one connection until the client leaves, misbehaves, or the server shuts down.
pub async fn run<S, E>(
    socket: S,
    state: Arc<AppState>,
    peer: SocketAddr,
    caller: Caller,
    _permit: OwnedSemaphorePermit,
) where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let Plumbing {
        gauge: _gauge,
        mut stream,
        out,
        writer,
    } = plumb(socket, state.config.ping_timeout);
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let span = tracing::info_span!("conn", %id, %peer, tasks = tracing::field::Empty);
    let mut conn = Connection {
        id,
        cancel: state.shutdown.child_token(),
        state,
        caller,
        out,
        uploads: HashMap::new(),
        committing: None,
        live: None,
        segments: HashMap::new(),
        followers: HashMap::new(),
        span: span.clone(),
        task_ids: Vec::new(),
    };
    let _enter = span.enter();
    tracing::info!("connected");
    drop(_enter);
    let code = {
        let fut = conn.serve(&mut stream);
        tracing::Instrument::instrument(fut, span.clone()).await
    };
    conn.cancel.cancel();
    send_close(&conn.out, code).await;
    drop(conn);
    drain(writer).await;
    span.in_scope(|| tracing::info!(code = code.0, reason = code.1, "closed"));
}

/// What every WebSocket session starts with.
pub struct Plumbing<T> {
    /// Counts the connection as open until dropped.
    pub gauge: crate::metrics::ConnectionGauge,
    /// The read half of the socket.
    pub stream: T,
    /// The bounded queue towards the client.
    pub out: Outbound,
    /// The task draining `out` into the write half; see [`drain`].
    pub writer: tokio::task::JoinHandle<()>,
}

/// Splits `socket` and starts its writer behind a bounded queue whose sends wait at most
/// `send_timeout`.
pub fn plumb<S, E>(
    socket: S,
    send_timeout: Duration,
) -> Plumbing<futures_util::stream::SplitStream<S>>
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Send + 'static,
{
    let gauge = crate::metrics::ConnectionGauge::open();
    let (sink, stream) = socket.split();
    let (out, rx) = Outbound::new(send_timeout);
    let writer = tokio::spawn(write_loop(sink, rx));
    Plumbing {
        gauge,
        stream,
        out,
        writer,
    }
}

/// Queues the close frame that ends a session.
pub async fn send_close(out: &Outbound, (code, reason): (u16, &'static str)) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = out.send_raw(Message::Close(Some(frame))).await;
}

/// Waits (briefly) for the writer to flush the last messages and the close frame.
pub async fn drain(mut writer: tokio::task::JoinHandle<()>) {
    // A client that stopped reading leaves the writer blocked on a full socket forever;
    // aborting it drops the socket, which is the only way to let go of such a client.
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Drains the outbound queue into the socket until a close frame or the queue's end.
pub async fn write_loop<K>(mut sink: K, mut rx: tokio::sync::mpsc::Receiver<Message>)
where
    K: Sink<Message> + Unpin,
{
    while let Some(msg) = rx.recv().await {
        let closing = matches!(msg, Message::Close(_));
        if sink.send(msg).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

impl Connection {
    /// The read loop. Returns the close code and reason to end with.
    async fn serve<T, E>(&mut self, stream: &mut T) -> (u16, &'static str)
    where
        T: Stream<Item = Result<Message, E>> + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        if self.out.send(self.connected()).await.is_err() {
            return (close::NORMAL, "");
        }
        let config = self.state.config.clone();
        // A zero --ping-interval would panic in `interval`; treat it as "very often".
        let mut ping = tokio::time::interval(config.ping_interval.max(MIN_PING_INTERVAL));
        ping.tick().await;
        let mut last_seen = Instant::now();
        loop {
            let pending = self.uploads.values().any(|u| u.pending > 0);
            let idle_check = self.next_idle_check(config.upload_idle_timeout);
            let flow = tokio::select! {
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(msg)) => self.on_frame(msg).await,
                        Some(Err(err)) => read_error(&err),
                        None => Flow::Close(close::NORMAL, ""),
                    }
                }
                _ = tokio::time::sleep(GROUP_COMMIT_DELAY), if pending => {
                    self.flush_pending().await
                }
                (task_id, synced) = upload::committed(&mut self.committing) => {
                    let result = self.acknowledge(task_id, synced).await;
                    self.report(result).await
                }
                _ = sleep_until_some(idle_check) => {
                    self.release_idle_uploads(config.upload_idle_timeout);
                    Flow::Continue
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > config.ping_timeout {
                        Flow::Close(close::POLICY, "keepalive ping timeout")
                    } else {
                        self.out.send_raw(Message::Ping(Bytes::new())).await.map_or(
                            Flow::Close(close::NORMAL, ""), |_| Flow::Continue)
                    }
                }
                _ = self.cancel.cancelled() => {
                    self.goodbye().await;
                    Flow::Close(close::GOING_AWAY, "server shutting down")
                }
            };
            if let Flow::Close(code, reason) = flow {
                self.flush_pending().await;
                return (code, reason);
            }
        }
    }

    /// Checks that a client-chosen id for a new task is free: no task and no upload has it,
    /// whoever owns them (a new task must never replace another's). `hint` says what to do.
    async fn claim(&self, task_id: TaskId, hint: &str) -> Result<(), ProtocolError> {
        let taken = self.state.tasks.snapshot(task_id).await.is_some()
            || self.state.uploads.meta(task_id).is_ok();
        match taken {
            true => Err(
                ProtocolError::invalid(format!("task_id is already in use; {hint}"))
                    .with_task(task_id),
            ),
            false => Ok(()),
        }
    }

    /// When the first of this connection's uploads becomes idle, if it has any (uploads with
    /// chunks waiting for their group commit are not idle).
    fn next_idle_check(&self, timeout: Duration) -> Option<TokioInstant> {
        let waiting = self.uploads.values().filter(|u| u.pending == 0);
        waiting.map(|u| u.last_active + timeout).min()
    }

    /// Gives back the slots of uploads that received nothing for `timeout`; they stay
    /// resumable and take a slot again with their next chunk.
    fn release_idle_uploads(&mut self, timeout: Duration) {
        let now = TokioInstant::now();
        self.uploads.retain(|task_id, u| {
            let idle = u.pending == 0 && now.duration_since(u.last_active) >= timeout;
            if idle {
                tracing::info!(%task_id, "idle upload gave its slot back");
            }
            !idle
        });
    }

    /// Records that this connection works on `task_id`, for its log span.
    fn adopt(&mut self, task_id: TaskId) {
        if self.task_ids.contains(&task_id) {
            return;
        }
        if self.task_ids.len() == MAX_SPAN_TASKS {
            self.task_ids.remove(0);
        }
        self.task_ids.push(task_id);
        let ids: Vec<String> = self.task_ids.iter().map(TaskId::to_string).collect();
        self.span.record("tasks", ids.join(",").as_str());
    }

    fn connected(&self) -> ServerMessage {
        ServerMessage::Connected(protocol::message::Connected {
            connection_id: self.id.clone(),
            message: "connected".into(),
            server_version: protocol::SERVER_VERSION.into(),
            model: self.state.pool.model_name().to_string(),
            models: self.state.models.names().to_vec(),
            limits: self.state.limits(),
        })
    }

    async fn goodbye(&self) {
        let msg = ServerMessage::ServerShutdown(protocol::message::ServerShutdown {
            message: "server shutting down; resume uploads with upload_resume after it restarts"
                .into(),
        });
        let _ = self.out.send(msg).await;
    }

    async fn on_frame(&mut self, msg: Message) -> Flow {
        crate::metrics::bytes_received(message_len(&msg));
        match msg {
            Message::Text(text) => self.on_text(text).await,
            Message::Binary(data) => self.on_binary(data).await,
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
            Message::Close(_) => Flow::Close(close::NORMAL, ""),
        }
    }

    /// `text` is the frame's shared buffer: a large one moves to the blocking pool as it is,
    /// and its base64 is decoded from there without a copy.
    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        // Whatever the message is about, it is answered after the group commit under way.
        let settled = self.settle().await;
        if let Flow::Close(code, reason) = self.report(settled).await {
            return Flow::Close(code, reason);
        }
        let limits = self.state.limits();
        let parsed = if text.len() > INLINE_PARSE_BYTES {
            tokio::task::spawn_blocking(move || protocol::parse_client(text.as_str(), &limits))
                .await
                .unwrap_or_else(|_| Err(ProtocolError::new(ErrorCode::Internal, "internal error")))
        } else {
            protocol::parse_client(text.as_str(), &limits)
        };
        let result = match parsed {
            Ok(msg) => self.dispatch(msg).await,
            Err(err) => Err(err),
        };
        self.report(result).await
    }

    async fn dispatch(&mut self, msg: ClientMessage) -> Result<(), ProtocolError> {
        tracing::debug!(kind = msg.type_name(), "message");
        let shared = matches!(
            msg,
            ClientMessage::UploadRequest(_)
                | ClientMessage::UploadResume(_)
                | ClientMessage::GetResult(_)
        );
        if shared && !self.state.cluster_ready() {
            return Err(ProtocolError::new(
                ErrorCode::NotReady,
                "this node cannot reach the cluster's shared state now; retry later",
            ));
        }
        match msg {
            ClientMessage::UploadRequest(req) => self.upload_request(req).await,
            ClientMessage::UploadChunk(chunk) => self.upload_chunk(chunk).await,
            ClientMessage::UploadFinish(f) => self.upload_finish(f).await,
            ClientMessage::UploadResume(r) => self.upload_resume(r.task_id).await,
            ClientMessage::GetResult(r) => self.get_result(r.task_id).await,
            ClientMessage::AudioSegment(seg) => self.audio_segment(seg).await,
            ClientMessage::StreamStart(start) => self.stream_start(start).await,
            ClientMessage::StreamEnd(end) => self.stream_end(end.task_id).await,
        }
    }

    async fn on_binary(&mut self, data: Bytes) -> Flow {
        let result = match protocol::binary::decode(&data) {
            Ok(protocol::BinaryFrame::UploadChunk(frame)) => {
                let (task_id, index) = (frame.task_id, frame.chunk_index);
                let offset = data.len() - frame.payload.len();
                self.binary_chunk(task_id, index, data.slice(offset..))
                    .await
            }
            Ok(protocol::BinaryFrame::Audio(frame)) => {
                let offset = data.len() - frame.payload.len();
                self.live_audio(frame.task_id, data.slice(offset..)).await
            }
            Err(err) => Err(ProtocolError::from(err)),
        };
        self.report(result).await
    }

    /// Sends an error to the client (if any); ends the session only if the client is gone.
    async fn report(&self, result: Result<(), ProtocolError>) -> Flow {
        let Err(err) = result else {
            return Flow::Continue;
        };
        if self.out.is_stuck() {
            tracing::info!("client stopped reading; closing");
            return Flow::Close(close::POLICY, "client not reading");
        }
        if err.code == ErrorCode::ChunkHashMismatch {
            crate::metrics::chunk_mismatched();
        }
        if err.code == ErrorCode::Internal {
            tracing::error!(%err, "internal error answered to client");
        } else {
            tracing::debug!(%err, "client error");
        }
        match self.out.send(err.to_message()).await {
            Ok(()) => Flow::Continue,
            Err(Closed) => Flow::Close(close::NORMAL, ""),
        }
    }
}
impl Connection {
    /// Refuses, before any work, a model the server does not serve (naming those it does) and
    /// a language the chosen model cannot transcribe: an English-only model knows only `en`.
    /// Returns the served name of the model.
    fn check_options(&self, options: &TaskOptions) -> Result<String, ProtocolError> {
        let served = &self.state.models;
        let model = served
            .resolve(options.model.as_deref())
            .map_err(|refusal| ProtocolError::invalid(refusal.to_string()))?;
        if let Some(language) = options.language.as_deref() {
            engine::check_language(language, served.is_multilingual(model)).map_err(|e| {
                ProtocolError::invalid(format!(
                    "{e} (model {model}; served: {})",
                    served.names().join(", ")
                ))
            })?;
        }
        Ok(model.to_owned())
    }
}

/// A frame's payload length, counted as received bytes.
fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => 0,
    }
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<TokioInstant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn read_error<E: std::error::Error + 'static>(err: &E) -> Flow {
    let (code, reason) = close_for_read_error(err);
    Flow::Close(code, reason)
}

/// Maps a read error to a close: oversized messages get 1009, anything else ends quietly.
pub fn close_for_read_error<E: std::error::Error + 'static>(err: &E) -> (u16, &'static str) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            tracing::warn!("message over the size cap");
            return (close::TOO_BIG, "message too big");
        }
        source = e.source();
    }
    tracing::debug!(%err, "read error");
    (close::POLICY, "protocol error")
}

use tokio_tungstenite::tungstenite;
