//! Upload a file and follow its transcription, surviving dropped connections.
//!
//! Two transports (docs/PROTOCOL.md):
//! - **binary** (default): `upload_request` with `transport: "binary"`, then binary chunk
//!   frames with up to `chunk_window` chunks in flight past the latest cumulative `chunk_ack`
//!   (refused chunks are resent), then `upload_finish` with the file's BLAKE3, computed while
//!   the chunks were read — the file is read once.
//! - **seed**: the seed document's flow exactly — base64 `upload_chunk` messages with their MD5,
//!   one at a time, each waiting for its `chunk_received`.
//!
//! On a dropped or failed connection the client waits (exponential backoff, jittered),
//! reconnects, sends `upload_resume` and sends only the chunks the server says are missing;
//! when the upload was already complete it just follows the result.
//!
//! The seed path hashes the file (MD5) in one streaming pass first, as its request needs it.
//! Either way the file is read chunk by chunk while sending; it is never held in memory. This module reports through a callback and must NOT print or draw.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use md5::{Digest, Md5};
use serde::Serialize;
use serde_json::{json, Value};

use super::backoff::{Backoff, BackoffConfig};
use super::conn::{type_name, Conn};
use super::digest::{file_digest, FileDigest};
use super::ClientError;
use crate::protocol::binary::{upload_chunk_header, UPLOAD_CHUNK_HEADER_LEN};
use crate::protocol::message::{TranscriptSegment, TranscriptionComplete};
use crate::protocol::{ErrorCode, Limits, ServerMessage, TaskId, MAX_MISSING_LISTED};
use crate::transcript::Transcript;
use crate::upload::digest::{HashKinds, RunningDigest};
use crate::upload::plan::ChunkPlan;

/// How often one chunk may be refused (hash mismatch) before the upload gives up: a chunk that
/// keeps failing means the file is changing under us or the link corrupts data.
const MAX_REFUSALS_PER_CHUNK: u32 = 3;

/// How the chunks travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadProtocol {
    /// Binary chunk frames, several in flight, cumulative acks (Earshot's fast path).
    #[default]
    Binary,
    /// Base64 JSON chunks, one at a time (the seed document's protocol).
    Seed,
}

/// What to upload how.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Binary fast path or the seed's JSON chunks.
    pub protocol: UploadProtocol,
    /// Bytes per chunk; must not exceed the server's `max_chunk_bytes`.
    pub chunk_size: u64,
    /// Chunks in flight (binary); `None` = the server's `chunk_window`, and never more.
    pub window: Option<u32>,
    /// Spoken language (`None` = let the server detect it).
    pub language: Option<String>,
    /// Translate to English.
    pub translate: bool,
    /// Reconnects after consecutive failures before giving up (progress resets the count).
    pub max_retries: u32,
    /// Delays between reconnects.
    pub backoff: BackoffConfig,
    /// Silence from the server after which the connection is deemed dead.
    pub idle_timeout: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            protocol: UploadProtocol::Binary,
            chunk_size: 1 << 20,
            window: None,
            language: None,
            translate: false,
            max_retries: 8,
            backoff: BackoffConfig::default(),
            idle_timeout: super::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What happens during an upload, for progress displays.
#[derive(Debug)]
pub enum UploadEvent<'a> {
    /// The file is hashed; sending starts.
    Started {
        /// File size in bytes.
        file_bytes: u64,
    },
    /// The server accepted the upload (first time, or a resume of it).
    Ready {
        /// The upload's id.
        task_id: TaskId,
        /// Whether this is a resume after a reconnect.
        resumed: bool,
    },
    /// Bytes the server holds durably so far.
    Stored {
        /// Bytes stored (whole chunks).
        bytes: u64,
        /// File size.
        total: u64,
    },
    /// A connection failed; the client retries after `delay`.
    Reconnecting {
        /// 1 for the first retry of a run of failures.
        attempt: u32,
        /// Retries allowed.
        max: u32,
        /// How long the client waits first.
        delay: Duration,
        /// What went wrong.
        error: &'a ClientError,
    },
    /// Every chunk is stored and the file verified; transcription starts.
    UploadComplete,
    /// Transcription progress, 0–100.
    TranscriptionProgress {
        /// Percent done.
        percent: f64,
    },
    /// A finished segment of the transcript (each index reported once, even across resumes).
    Segment(&'a TranscriptSegment),
}

/// The result of an upload and what it took.
#[derive(Debug, Clone, Serialize)]
pub struct UploadOutcome {
    /// The server's id for the upload.
    pub task_id: TaskId,
    /// File size.
    pub file_bytes: u64,
    /// Chunk payload bytes sent, counting resends, over all connections.
    pub bytes_sent: u64,
    /// Chunk payload bytes sent on each connection, in order (shows what a resume saved).
    pub sent_per_connection: Vec<u64>,
    /// Connections that had to be re-opened.
    pub reconnects: u32,
    /// From the start (hashing the file, connecting) to `upload_complete`, seconds (includes
    /// reconnect waits).
    pub upload_seconds: f64,
    /// From `upload_complete` to the result, seconds (client clock).
    pub transcription_seconds: f64,
    /// The server's result message.
    pub result: TranscriptionComplete,
}

impl UploadOutcome {
    /// The result as a [`Transcript`], for rendering.
    pub fn transcript(&self) -> Transcript {
        to_transcript(&self.result)
    }

    /// Upload speed in MB/s (10^6 bytes), over the file size.
    pub fn upload_mb_per_s(&self) -> f64 {
        if self.upload_seconds > 0.0 {
            self.file_bytes as f64 / 1e6 / self.upload_seconds
        } else {
            0.0
        }
    }
}

/// A `transcription_complete` as a [`Transcript`].
pub fn to_transcript(c: &TranscriptionComplete) -> Transcript {
    Transcript {
        language: c.language.clone(),
        duration: c.duration,
        segments: c.segments.clone(),
    }
}

/// Uploads `path` to the server at `url` (`ws://host:port/`) and waits for its transcript.
///
/// Reconnects and resumes on connection trouble (up to `max_retries` consecutive failures);
/// server refusals (bad request, too large, failed transcription) end it at once.
pub async fn upload(
    url: &str,
    path: &Path,
    options: &UploadOptions,
    on_event: impl FnMut(UploadEvent<'_>),
) -> Result<UploadOutcome, ClientError> {
    run(url, path, None, options, on_event).await
}

/// Continues an earlier upload of `path` (e.g. one that gave up) by its `task_id`: sends only
/// what the server is missing, or just follows the result if the upload was complete.
pub async fn resume(
    url: &str,
    task_id: TaskId,
    path: &Path,
    options: &UploadOptions,
    on_event: impl FnMut(UploadEvent<'_>),
) -> Result<UploadOutcome, ClientError> {
    run(url, path, Some(task_id), options, on_event).await
}

async fn run(
    url: &str,
    path: &Path,
    task_id: Option<TaskId>,
    options: &UploadOptions,
    mut on_event: impl FnMut(UploadEvent<'_>),
) -> Result<UploadOutcome, ClientError> {
    let started_at = Instant::now();
    let digest = hash_file(path, options.protocol).await?;
    if digest.size == 0 {
        return Err(ClientError::InvalidOptions(format!(
            "{} is empty",
            path.display()
        )));
    }
    on_event(UploadEvent::Started {
        file_bytes: digest.size,
    });
    let mut job = Job::new(url, path, options, digest, started_at);
    job.task_id = task_id;
    let mut backoff = Backoff::new(options.backoff);
    let mut failures = 0u32;
    loop {
        let before = job.milestones;
        let err = match job.attempt(&mut on_event).await {
            Ok(outcome) => return Ok(outcome),
            Err(err) if err.is_retryable() => err,
            Err(err) => return Err(err),
        };
        if job.milestones != before {
            failures = 0;
            backoff.reset();
        }
        failures += 1;
        if failures > options.max_retries {
            return Err(ClientError::GaveUp {
                attempts: failures,
                task_id: job.task_id,
                last: Box::new(err),
            });
        }
        let delay = err.retry_after().unwrap_or_else(|| backoff.next_delay());
        tracing::debug!(%err, ?delay, attempt = failures, "upload interrupted; retrying");
        on_event(UploadEvent::Reconnecting {
            attempt: failures,
            max: options.max_retries,
            delay,
            error: &err,
        });
        tokio::time::sleep(delay).await;
    }
}

/// The seed protocol announces the file's MD5 up front; the binary one hashes while it sends
/// (`upload_finish`), so here it only learns the size.
async fn hash_file(path: &Path, protocol: UploadProtocol) -> Result<FileDigest, ClientError> {
    let owned = path.to_path_buf();
    let kinds = HashKinds {
        md5: protocol == UploadProtocol::Seed,
        ..HashKinds::default()
    };
    tokio::task::spawn_blocking(move || file_digest(&owned, kinds))
        .await
        .map_err(|e| ClientError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .map_err(|e| ClientError::file(path, e))
}

/// One upload across however many connections it takes.
struct Job<'a> {
    /// Server URL.
    url: &'a str,
    /// The file.
    path: PathBuf,
    /// The caller's options.
    options: &'a UploadOptions,
    /// Size and hashes, announced in the request.
    digest: FileDigest,
    /// The binary path's whole-file BLAKE3, computed while the chunks are read and sent
    /// in `upload_finish` after the last one (no pass over the file before sending). `None`
    /// on the seed path, which announces its MD5 up front.
    running: Option<RunningDigest>,
    /// Set once the server accepted the upload; later connections resume it.
    task_id: Option<TaskId>,
    /// Counts steps forward (chunks stored, completion, progress); a failure after progress
    /// starts a fresh run of retries. A resume alone is no step: a server that fails every
    /// chunk after accepting the resume must still make the client give up.
    milestones: u64,
    /// The server's upload has no whole-file hash yet (a binary upload resumed with the seed
    /// protocol): send `upload_finish` after the chunks.
    awaiting_hash: bool,
    /// Payload bytes sent per connection.
    sent_per_connection: Vec<u64>,
    /// When the upload started, before the file was hashed.
    started_at: Instant,
    /// When the upload was known complete.
    uploaded_at: Option<Instant>,
    /// Segments already reported, so a resumed follow does not repeat them.
    segments_seen: u32,
}

/// Where a connection starts after the handshake.
enum Start {
    /// Send these chunks (ascending) with the given window.
    Send(BTreeSet<u32>, u32),
    /// Upload already complete: follow the result, starting with this message if any.
    Follow(Option<ServerMessage>),
}

impl<'a> Job<'a> {
    fn new(
        url: &'a str,
        path: &Path,
        options: &'a UploadOptions,
        digest: FileDigest,
        started_at: Instant,
    ) -> Self {
        Job {
            url,
            path: path.to_path_buf(),
            options,
            running: (options.protocol == UploadProtocol::Binary)
                .then(|| RunningDigest::new(HashKinds::BLAKE3)),
            digest,
            task_id: None,
            milestones: 0,
            awaiting_hash: false,
            sent_per_connection: Vec::new(),
            started_at,
            uploaded_at: None,
            segments_seen: 0,
        }
    }

    /// One connection: handshake, request or resume, send, follow.
    async fn attempt(
        &mut self,
        on_event: &mut impl FnMut(UploadEvent<'_>),
    ) -> Result<UploadOutcome, ClientError> {
        let mut conn = Conn::open(self.url, self.options.idle_timeout).await?;
        self.sent_per_connection.push(0);
        let plan = self.plan(&conn.limits)?;
        let start = match self.task_id {
            None => self.request(&mut conn, &plan, on_event).await?,
            Some(id) => self.resume(&mut conn, id, &plan, on_event).await?,
        };
        let first = match start {
            Start::Send(chunks, window) => {
                let file = std::fs::File::open(&self.path)
                    .map_err(|e| ClientError::file(&self.path, e))?;
                let path = self.path.clone();
                let mut sender = Sender {
                    conn: &mut conn,
                    file: Arc::new(file),
                    path: &path,
                    plan,
                    task_id: self
                        .task_id
                        .ok_or_else(|| ClientError::Protocol("the server named no task".into()))?,
                    sent: 0,
                    digest: self.running.take(),
                };
                let hash_later =
                    self.options.protocol == UploadProtocol::Binary || self.awaiting_hash;
                let sent = match self.options.protocol {
                    // Every chunk is stored: the server finalises the upload on resume
                    // (docs/PROTOCOL.md §6), once it has the hash.
                    _ if chunks.is_empty() && hash_later => sender.finish().await,
                    _ if chunks.is_empty() => Ok(()),
                    UploadProtocol::Binary => {
                        self.send_binary(&mut sender, chunks, window, on_event)
                            .await
                    }
                    UploadProtocol::Seed => self.send_seed(&mut sender, chunks, on_event).await,
                };
                self.running = sender.digest.take().or(self.running.take());
                *self.sent_per_connection.last_mut().expect("pushed above") += sender.sent;
                sent?;
                self.uploaded(on_event);
                None
            }
            Start::Follow(first) => {
                self.uploaded(on_event);
                first
            }
        };
        let result = self.follow(&mut conn, first, on_event).await?;
        conn.close().await;
        Ok(self.outcome(result))
    }

    fn plan(&self, limits: &Limits) -> Result<ChunkPlan, ClientError> {
        let chunk_size = self.options.chunk_size;
        let total = if chunk_size == 0 {
            0
        } else {
            self.digest.size.div_ceil(chunk_size)
        };
        ChunkPlan::new(self.digest.size, chunk_size, total, &limits.plan_limits()).map_err(|e| {
            ClientError::InvalidOptions(format!("this server refuses the upload: {e}"))
        })
    }

    /// `upload_request`, then its `upload_ready`.
    async fn request(
        &mut self,
        conn: &mut Conn,
        plan: &ChunkPlan,
        on_event: &mut impl FnMut(UploadEvent<'_>),
    ) -> Result<Start, ClientError> {
        conn.send_json(&self.request_message(plan)).await?;
        loop {
            match conn.recv().await? {
                ServerMessage::UploadReady(ready) => {
                    self.task_id = Some(ready.task_id);
                    self.milestones += 1;
                    on_event(UploadEvent::Ready {
                        task_id: ready.task_id,
                        resumed: false,
                    });
                    let window = self.window(ready.chunk_window, &conn.limits);
                    return Ok(Start::Send((0..plan.total_chunks).collect(), window));
                }
                ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
                other => unexpected("upload_ready", &other)?,
            }
        }
    }

    fn request_message(&self, plan: &ChunkPlan) -> Value {
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into());
        let mut data = json!({
            "file_name": file_name,
            "file_size": plan.file_size,
            "chunk_size": plan.chunk_size,
            "total_chunks": plan.total_chunks,
            "upload_mode": "chunked",
        });
        if let Some(md5) = &self.digest.hashes.md5 {
            data["file_hash"] = json!(md5);
        }
        if self.options.protocol == UploadProtocol::Binary {
            data["transport"] = json!("binary");
        }
        if let Some(lang) = &self.options.language {
            data["language"] = json!(lang);
        }
        if self.options.translate {
            data["translate"] = json!(true);
        }
        json!({"type": "upload_request", "data": data})
    }

    /// The window to use: the caller's wish, never above what the server allows.
    fn window(&self, announced: Option<u32>, limits: &Limits) -> u32 {
        let server = announced.unwrap_or(limits.chunk_window).max(1);
        self.options.window.map_or(server, |w| w.clamp(1, server))
    }

    /// `upload_resume`, then either the missing chunks or the task's progress.
    async fn resume(
        &mut self,
        conn: &mut Conn,
        task_id: TaskId,
        plan: &ChunkPlan,
        on_event: &mut impl FnMut(UploadEvent<'_>),
    ) -> Result<Start, ClientError> {
        let msg = json!({"type": "upload_resume", "data": {"task_id": task_id}});
        conn.send_json(&msg).await?;
        loop {
            match conn.recv().await? {
                ServerMessage::UploadReady(ready) if ready.task_id == task_id => {
                    if ready.total_chunks.is_some_and(|t| t != plan.total_chunks) {
                        return Err(ClientError::Protocol(format!(
                            "the server's upload {task_id} has {:?} chunks, this file {}",
                            ready.total_chunks, plan.total_chunks
                        )));
                    }
                    self.awaiting_hash = ready.awaiting_hash == Some(true);
                    on_event(UploadEvent::Ready {
                        task_id,
                        resumed: true,
                    });
                    let missing = ready.missing_chunks.unwrap_or_default();
                    on_event(UploadEvent::Stored {
                        bytes: stored_bytes(plan, ready.received_chunks.unwrap_or(0)),
                        total: plan.file_size,
                    });
                    let window = self.window(ready.chunk_window, &conn.limits);
                    return Ok(Start::Send(resume_queue(&missing, plan), window));
                }
                msg @ (ServerMessage::TranscriptionProgress(_)
                | ServerMessage::TranscriptSegment(_)
                | ServerMessage::TranscriptionComplete(_)) => {
                    return Ok(Start::Follow(Some(msg)));
                }
                ServerMessage::Error(e) if e.code == ErrorCode::SessionNotFound => {
                    return Err(ClientError::Server {
                        code: e.code,
                        message: format!(
                            "the server no longer has upload {task_id} (expired or removed); \
                             start the upload again"
                        ),
                        retry_after_ms: None,
                    });
                }
                ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
                other => unexpected("upload_ready", &other)?,
            }
        }
    }

    /// Binary fast path: a window of chunk frames ahead of the cumulative ack.
    async fn send_binary(
        &mut self,
        sender: &mut Sender<'_>,
        chunks: BTreeSet<u32>,
        window: u32,
        on_event: &mut impl FnMut(UploadEvent<'_>),
    ) -> Result<(), ClientError> {
        let mut win = SendWindow::new(chunks, window);
        let mut finish_sent = false;
        loop {
            while let Some(index) = win.next() {
                sender.send_binary_chunk(index).await?;
            }
            if win.all_sent() && !finish_sent {
                sender.send_finish().await?;
                finish_sent = true;
            }
            match sender.conn.recv().await? {
                ServerMessage::ChunkAck(ack) if ack.task_id == sender.task_id => {
                    win.on_ack(ack.received_through, ack.missing.as_deref().unwrap_or(&[]));
                    self.milestones += 1;
                    on_event(UploadEvent::Stored {
                        bytes: stored_bytes(&sender.plan, ack.received_chunks),
                        total: sender.plan.file_size,
                    });
                }
                ServerMessage::UploadComplete(c) if c.task_id == sender.task_id => return Ok(()),
                ServerMessage::Error(e) if e.code == ErrorCode::ChunkHashMismatch => {
                    let Some(index) = e.chunk_index else {
                        return Err(ClientError::from_server(e));
                    };
                    tracing::warn!(index, "chunk refused by the server; resending");
                    win.on_refused(index)?;
                }
                ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
                other => tracing::debug!(kind = type_name(&other), "ignored while uploading"),
            }
        }
    }

    /// The seed's flow: one base64 chunk, then wait for its `chunk_received`. The protocol
    /// allows one chunk in flight, but not one being prepared: while the server stores chunk
    /// `i`, chunk `i + 1` is read, hashed and encoded on the blocking pool.
    async fn send_seed(
        &mut self,
        sender: &mut Sender<'_>,
        chunks: BTreeSet<u32>,
        on_event: &mut impl FnMut(UploadEvent<'_>),
    ) -> Result<(), ClientError> {
        let mut stored = 0u32;
        let mut queue = chunks.into_iter();
        let mut next = queue.next().map(|i| sender.prepare_json_chunk(i));
        while let Some(preparing) = next.take() {
            let (index, text, len) = sender.prepared(preparing).await?;
            // Shared bytes: a resend after a refusal copies nothing.
            let text = tokio_tungstenite::tungstenite::Utf8Bytes::from(text);
            next = queue.next().map(|i| sender.prepare_json_chunk(i));
            let mut refusals = 0;
            loop {
                sender.conn.send_text(text.clone()).await?;
                sender.sent += len;
                match wait_chunk_received(sender, index).await? {
                    Some(received) => {
                        stored = stored.max(received);
                        break;
                    }
                    None => {
                        refusals += 1;
                        if refusals >= MAX_REFUSALS_PER_CHUNK {
                            return Err(refused_too_often(index));
                        }
                    }
                }
            }
            self.milestones += 1;
            on_event(UploadEvent::Stored {
                bytes: stored_bytes(&sender.plan, stored),
                total: sender.plan.file_size,
            });
        }
        loop {
            match sender.conn.recv().await? {
                ServerMessage::UploadComplete(c) if c.task_id == sender.task_id => return Ok(()),
                // All chunks are in but the upload never had a hash (it started on the fast
                // path): the server asks for upload_finish after the last chunk.
                ServerMessage::Error(e) if e.code == ErrorCode::NotReady && self.awaiting_hash => {
                    return sender.finish().await;
                }
                ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
                other => tracing::debug!(kind = type_name(&other), "ignored while finishing"),
            }
        }
    }

    fn uploaded(&mut self, on_event: &mut impl FnMut(UploadEvent<'_>)) {
        if self.uploaded_at.is_none() {
            self.uploaded_at = Some(Instant::now());
            self.milestones += 1;
            on_event(UploadEvent::UploadComplete);
        }
    }

    /// Relays progress and segments until `transcription_complete`.
    async fn follow(
        &mut self,
        conn: &mut Conn,
        mut first: Option<ServerMessage>,
        on_event: &mut impl FnMut(UploadEvent<'_>),
    ) -> Result<TranscriptionComplete, ClientError> {
        let task_id = self.task_id.expect("set before following");
        loop {
            let msg = match first.take() {
                Some(msg) => msg,
                None => conn.recv().await?,
            };
            match msg {
                ServerMessage::TranscriptionProgress(p) if p.task_id == task_id => {
                    self.milestones += 1;
                    on_event(UploadEvent::TranscriptionProgress {
                        percent: p.progress,
                    });
                }
                ServerMessage::TranscriptSegment(s) if s.task_id == task_id => {
                    if s.index >= self.segments_seen {
                        self.segments_seen = s.index + 1;
                        self.milestones += 1;
                        on_event(UploadEvent::Segment(&s));
                    }
                }
                ServerMessage::TranscriptionComplete(c) if c.task_id == task_id => return Ok(c),
                // A late answer to a chunk sent after the upload completed: harmless.
                ServerMessage::Error(e) if e.chunk_index.is_some() => {
                    tracing::debug!(message = %e.message, "late chunk error ignored");
                }
                ServerMessage::Error(e) if e.task_id == Some(task_id) => {
                    return Err(ClientError::TranscriptionFailed {
                        code: e.code,
                        message: e.message,
                    })
                }
                ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
                other => tracing::debug!(kind = type_name(&other), "ignored while following"),
            }
        }
    }

    fn outcome(&self, result: TranscriptionComplete) -> UploadOutcome {
        let now = Instant::now();
        let uploaded = self.uploaded_at.unwrap_or(now);
        UploadOutcome {
            task_id: result.task_id,
            file_bytes: self.digest.size,
            bytes_sent: self.sent_per_connection.iter().sum(),
            sent_per_connection: self.sent_per_connection.clone(),
            reconnects: self.sent_per_connection.len().saturating_sub(1) as u32,
            upload_seconds: uploaded
                .saturating_duration_since(self.started_at)
                .as_secs_f64(),
            transcription_seconds: now.saturating_duration_since(uploaded).as_secs_f64(),
            result,
        }
    }
}

/// Sends chunks of one upload on one connection, reading each from the file when it goes.
struct Sender<'c> {
    /// The connection.
    conn: &'c mut Conn,
    /// The file, opened for this connection; read on the blocking pool.
    file: Arc<std::fs::File>,
    /// Its path, for error messages.
    path: &'c Path,
    /// How the file is cut.
    plan: ChunkPlan,
    /// The upload.
    task_id: TaskId,
    /// Payload bytes sent on this connection.
    sent: u64,
    /// The running whole-file hash (binary path), advanced by chunks read in file order.
    digest: Option<RunningDigest>,
}

impl Sender<'_> {
    /// Reads chunk `index` into `buf[room..]`, sized to the chunk, on the blocking pool,
    /// adding it to the running hash when it continues the hashed prefix.
    async fn read_chunk(&mut self, index: u32, room: usize) -> Result<Vec<u8>, ClientError> {
        let offset = self.plan.chunk_offset(index).unwrap_or(0);
        let len = self.plan.chunk_len(index).unwrap_or(0) as usize;
        let file = self.file.clone();
        let mut digest = self.digest.take();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; room + len];
            file.read_exact_at(&mut buf[room..], offset)?;
            if let Some(d) = digest.as_mut().filter(|d| d.hashed() == offset) {
                d.update(&buf[room..]);
            }
            Ok::<_, std::io::Error>((buf, digest))
        })
        .await
        .map_err(|e| ClientError::file(self.path, std::io::Error::other(e.to_string())))?;
        let (buf, digest) = read.map_err(|e| ClientError::file(self.path, e))?;
        self.digest = digest;
        Ok(buf)
    }

    /// Completes the running hash (reading whatever part of the file it has not seen, e.g.
    /// after a resume) and sends it in `upload_finish`.
    async fn send_finish(&mut self) -> Result<(), ClientError> {
        let file = self.file.clone();
        let size = self.plan.file_size;
        let mut digest = self
            .digest
            .take()
            .unwrap_or_else(|| RunningDigest::new(HashKinds::BLAKE3));
        let hashed = tokio::task::spawn_blocking(move || {
            digest.update_from_file(&file, size).map(|()| digest)
        })
        .await
        .map_err(|e| ClientError::file(self.path, std::io::Error::other(e.to_string())))?;
        let digest = hashed.map_err(|e| ClientError::file(self.path, e))?;
        let blake3 = digest.clone().finish().blake3;
        self.digest = Some(digest);
        let msg = json!({"type": "upload_finish", "data": {
            "task_id": self.task_id,
            "file_blake3": blake3,
        }});
        self.conn.send_json(&msg).await
    }

    /// `upload_finish` for an upload whose chunks are all stored, then its `upload_complete`.
    async fn finish(&mut self) -> Result<(), ClientError> {
        self.send_finish().await?;
        loop {
            match self.conn.recv().await? {
                ServerMessage::UploadComplete(c) if c.task_id == self.task_id => return Ok(()),
                ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
                other => tracing::debug!(kind = type_name(&other), "ignored while finishing"),
            }
        }
    }

    async fn send_binary_chunk(&mut self, index: u32) -> Result<(), ClientError> {
        let mut frame = self.read_chunk(index, UPLOAD_CHUNK_HEADER_LEN).await?;
        let (head, payload) = frame.split_at_mut(UPLOAD_CHUNK_HEADER_LEN);
        head.copy_from_slice(&upload_chunk_header(self.task_id, index, payload));
        let len = payload.len() as u64;
        self.conn.send_binary(frame).await?;
        self.sent += len;
        Ok(())
    }

    /// Starts reading and encoding JSON chunk `index` on the blocking pool.
    fn prepare_json_chunk(&self, index: u32) -> PreparedChunk {
        let file = self.file.clone();
        let plan = self.plan;
        let task_id = self.task_id;
        tokio::task::spawn_blocking(move || {
            let text = json_chunk(&file, &plan, task_id, index)?;
            Ok((index, text, plan.chunk_len(index).unwrap_or(0)))
        })
    }

    /// Waits for a chunk started by [`prepare_json_chunk`](Self::prepare_json_chunk).
    async fn prepared(&self, chunk: PreparedChunk) -> Result<(u32, String, u64), ClientError> {
        chunk
            .await
            .map_err(|e| ClientError::file(self.path, std::io::Error::other(e.to_string())))?
            .map_err(|e| ClientError::file(self.path, e))
    }
}

/// A seed chunk being prepared: its index, its `upload_chunk` text and its length.
type PreparedChunk = tokio::task::JoinHandle<std::io::Result<(u32, String, u64)>>;

/// The seed's `upload_chunk` message for chunk `index`: MD5 and base64 of the bytes.
fn json_chunk(
    file: &std::fs::File,
    plan: &ChunkPlan,
    task_id: TaskId,
    index: u32,
) -> std::io::Result<String> {
    let offset = plan.chunk_offset(index).unwrap_or(0);
    let mut data = vec![0u8; plan.chunk_len(index).unwrap_or(0) as usize];
    file.read_exact_at(&mut data, offset)?;
    let msg = json!({"type": "upload_chunk", "data": {
        "task_id": task_id,
        "chunk_index": index,
        "chunk_size": data.len(),
        "chunk_hash": hex::encode(Md5::digest(&data)),
        "chunk_data": base64::engine::general_purpose::STANDARD.encode(&data),
        "is_last": index + 1 == plan.total_chunks,
    }});
    Ok(msg.to_string())
}

/// Waits for the answer to JSON chunk `index`: `Some(stored chunks)` when stored (or already
/// there), `None` when refused for a hash mismatch (resend it).
async fn wait_chunk_received(
    sender: &mut Sender<'_>,
    index: u32,
) -> Result<Option<u32>, ClientError> {
    loop {
        match sender.conn.recv().await? {
            ServerMessage::ChunkReceived(r) if r.chunk_index == index => {
                let share = r.progress.unwrap_or(0.0) / 100.0;
                return Ok(Some(
                    (share * f64::from(sender.plan.total_chunks)).round() as u32
                ));
            }
            ServerMessage::Error(e)
                if e.code == ErrorCode::ChunkHashMismatch && e.chunk_index == Some(index) =>
            {
                return Ok(None)
            }
            ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
            other => tracing::debug!(kind = type_name(&other), "ignored while waiting for an ack"),
        }
    }
}

fn refused_too_often(index: u32) -> ClientError {
    ClientError::Protocol(format!(
        "the server refused chunk {index} {MAX_REFUSALS_PER_CHUNK} times (does the file change \
         while it is uploaded?)"
    ))
}

fn unexpected(wanted: &str, got: &ServerMessage) -> Result<(), ClientError> {
    match got {
        // Progress of other tasks or late acks may interleave; skip them.
        ServerMessage::TranscriptionProgress(_)
        | ServerMessage::ChunkAck(_)
        | ServerMessage::ChunkReceived(_) => Ok(()),
        other => Err(ClientError::Protocol(format!(
            "expected `{wanted}`, got `{}`",
            type_name(other)
        ))),
    }
}

/// Bytes held by `chunks` whole chunks (the last one may be short).
fn stored_bytes(plan: &ChunkPlan, chunks: u32) -> u64 {
    (u64::from(chunks) * plan.chunk_size).min(plan.file_size)
}

/// The chunks to send after a resume. The server lists at most [`MAX_MISSING_LISTED`] missing
/// chunks; when the list is full, everything past its end is resent too (duplicates are
/// ignored by the server). An empty queue means every chunk is stored.
pub(crate) fn resume_queue(missing: &[u32], plan: &ChunkPlan) -> BTreeSet<u32> {
    let mut queue: BTreeSet<u32> = missing
        .iter()
        .copied()
        .filter(|&i| i < plan.total_chunks)
        .collect();
    if missing.len() >= MAX_MISSING_LISTED {
        if let Some(&last) = missing.last() {
            queue.extend(last.saturating_add(1)..plan.total_chunks);
        }
    }
    queue
}

/// Which chunks may go now on the binary path (pure bookkeeping, no I/O).
///
/// The window rule of docs/PROTOCOL.md §4: with the latest `received_through` R and window W,
/// chunk `i` may be sent only if `i < R + W`. Refused chunks are queued again.
#[derive(Debug)]
pub(crate) struct SendWindow {
    /// Chunks still to send, lowest first.
    queue: BTreeSet<u32>,
    /// Chunks sent at or above `received_through` (not yet known stored).
    in_flight: BTreeSet<u32>,
    /// Every chunk below this is stored on the server.
    received_through: u32,
    /// W.
    window: u32,
    /// Times each chunk was refused, to stop resending a chunk that always fails.
    refusals: HashMap<u32, u32>,
}

impl SendWindow {
    /// A window over `chunks` (everything below the lowest is taken as stored).
    pub(crate) fn new(queue: BTreeSet<u32>, window: u32) -> Self {
        let received_through = queue.first().copied().unwrap_or(0);
        SendWindow {
            queue,
            in_flight: BTreeSet::new(),
            received_through,
            window: window.max(1),
            refusals: HashMap::new(),
        }
    }

    /// The next chunk to send now, if the window allows one.
    pub(crate) fn next(&mut self) -> Option<u32> {
        let &index = self.queue.first()?;
        let limit = self.received_through.saturating_add(self.window);
        if index >= limit {
            return None;
        }
        self.queue.pop_first();
        self.in_flight.insert(index);
        Some(index)
    }

    /// A cumulative ack: slides the window and requeues holes nobody is resending.
    pub(crate) fn on_ack(&mut self, received_through: u32, missing: &[u32]) {
        self.received_through = self.received_through.max(received_through);
        self.in_flight = self.in_flight.split_off(&self.received_through);
        for &index in missing {
            // A refused chunk's error arrives before any ack that lists it (one ordered
            // socket), so a listed chunk is normally queued or already resent.
            if !self.in_flight.contains(&index) {
                self.queue.insert(index);
            }
        }
    }

    /// Whether every chunk has been sent at least once (some may still be unacknowledged).
    pub(crate) fn all_sent(&self) -> bool {
        self.queue.is_empty()
    }

    /// The server refused chunk `index` (hash mismatch): send it again, a few times at most.
    pub(crate) fn on_refused(&mut self, index: u32) -> Result<(), ClientError> {
        let count = self.refusals.entry(index).or_insert(0);
        *count += 1;
        if *count >= MAX_REFUSALS_PER_CHUNK {
            return Err(refused_too_often(index));
        }
        self.in_flight.remove(&index);
        self.queue.insert(index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(w: &mut SendWindow) -> Vec<u32> {
        std::iter::from_fn(|| w.next()).collect()
    }

    #[test]
    fn the_window_limits_chunks_ahead_of_the_ack() {
        let mut w = SendWindow::new((0..40).collect(), 16);
        assert_eq!(drain(&mut w), (0..16).collect::<Vec<_>>());
        w.on_ack(8, &[]);
        assert_eq!(drain(&mut w), (16..24).collect::<Vec<_>>());
        // An older ack never moves the window back.
        w.on_ack(3, &[]);
        assert!(drain(&mut w).is_empty());
        w.on_ack(40, &[]);
        assert_eq!(drain(&mut w), (24..40).collect::<Vec<_>>());
        assert!(w.next().is_none());
    }

    #[test]
    fn refused_chunks_are_resent_once_and_not_again_for_the_ack_that_lists_them() {
        let mut w = SendWindow::new((0..10).collect(), 4);
        assert_eq!(drain(&mut w), [0, 1, 2, 3]);
        w.on_refused(1).unwrap();
        assert_eq!(drain(&mut w), [1]);
        // The ack for 0, 2, 3 lists 1 as missing: it is already on its way again.
        w.on_ack(1, &[1]);
        assert_eq!(drain(&mut w), [4]);
        w.on_ack(5, &[]);
        assert_eq!(drain(&mut w), [5, 6, 7, 8]);
    }

    #[test]
    fn a_hole_reported_without_an_error_is_queued() {
        let mut w = SendWindow::new((0..8).collect(), 8);
        assert_eq!(drain(&mut w).len(), 8);
        w.on_ack(2, &[2]);
        w.in_flight.remove(&2); // as if its send had been lost without a word
        w.on_ack(2, &[2]);
        assert_eq!(drain(&mut w), [2]);
    }

    #[test]
    fn a_chunk_refused_again_and_again_ends_the_upload() {
        let mut w = SendWindow::new((0..2).collect(), 2);
        drain(&mut w);
        assert!(w.on_refused(0).is_ok());
        assert!(w.on_refused(0).is_ok());
        assert!(w.on_refused(0).is_err());
    }

    #[test]
    fn resume_starts_at_the_lowest_missing_chunk() {
        let mut w = SendWindow::new(BTreeSet::from([30, 31, 45]), 4);
        assert_eq!(drain(&mut w), [30, 31]);
        w.on_ack(32, &[]);
        assert!(w.next().is_none(), "45 >= 32 + 4");
        w.on_ack(44, &[]);
        assert_eq!(drain(&mut w), [45]);
    }

    #[test]
    fn resume_queue_fills_past_a_capped_list() {
        let plan = ChunkPlan {
            file_size: 5000 * 10,
            chunk_size: 10,
            total_chunks: 5000,
        };
        let q = resume_queue(&[3, 7], &plan);
        assert_eq!(q.into_iter().collect::<Vec<_>>(), [3, 7]);
        let listed: Vec<u32> = (0..MAX_MISSING_LISTED as u32).map(|i| i * 2).collect();
        let q = resume_queue(&listed, &plan);
        assert_eq!(q.len(), MAX_MISSING_LISTED + (5000 - 1999));
        assert_eq!(q.last(), Some(&4999));
        assert!(resume_queue(&[], &plan).is_empty());
        // Indices past the plan (a confused server) are dropped.
        let q = resume_queue(&[4999, 6000], &plan);
        assert_eq!(q.into_iter().collect::<Vec<_>>(), [4999]);
    }

    #[test]
    fn stored_bytes_caps_at_the_file_size() {
        let plan = ChunkPlan {
            file_size: 25,
            chunk_size: 10,
            total_chunks: 3,
        };
        assert_eq!(stored_bytes(&plan, 0), 0);
        assert_eq!(stored_bytes(&plan, 2), 20);
        assert_eq!(stored_bytes(&plan, 3), 25);
    }
}
