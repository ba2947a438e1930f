//! One upload across however many connections it takes: what is uploaded (file, size,
//! hashes, chunk plan) and the state that lets a later connection resume it (task id, the
//! steps made, whether the server still awaits the file's hash, segments already reported).
//!
//! [`run`] retries attempts with backoff; an attempt connects, sends `upload_request` or
//! `upload_resume`, hands the chunks to the binary or seed path, then follows the
//! transcription to its result. This module must NOT read, encode or send chunks
//! (the transport paths do), and must NOT print: it reports through the caller's callback.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::{UploadEvent, UploadOptions, UploadOutcome, UploadProtocol};
use crate::client::backoff::{Next, Retries};
use crate::client::conn::{type_name, Conn};
use crate::client::digest::{file_digest, FileDigest};
use crate::client::ClientError;
use crate::domain::TaskId;
use crate::protocol::message::TranscriptionComplete;
use crate::protocol::{ErrorCode, Limits, ServerMessage, MAX_MISSING_LISTED};
use crate::upload::digest::{HashKinds, RunningDigest};
use crate::upload::plan::ChunkPlan;

pub(super) async fn run(
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
    let mut retries = Retries::new(options.backoff, options.max_retries);
    loop {
        let before = job.milestones;
        let err = match job.attempt(&mut on_event).await {
            Ok(outcome) => return Ok(outcome),
            Err(err) if err.is_retryable() => err,
            Err(err) => return Err(err),
        };
        let (attempt, delay) = match retries.failed(job.milestones != before, err.retry_after()) {
            Next::Retry { attempt, delay } => (attempt, delay),
            Next::GiveUp { attempts } => {
                return Err(ClientError::GaveUp {
                    attempts,
                    task_id: job.task_id,
                    last: Box::new(err),
                })
            }
        };
        tracing::debug!(%err, ?delay, attempt, "upload interrupted; retrying");
        on_event(UploadEvent::Reconnecting {
            attempt,
            max: retries.max(),
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
pub(super) struct Job<'a> {
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
    pub(super) milestones: u64,
    /// The server's upload has no whole-file hash yet (a binary upload resumed with the seed
    /// protocol): send `upload_finish` after the chunks.
    pub(super) awaiting_hash: bool,
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
pub(super) struct Sender<'c> {
    /// The connection.
    pub(super) conn: &'c mut Conn,
    /// The file, opened for this connection; read on the blocking pool.
    pub(super) file: Arc<std::fs::File>,
    /// Its path, for error messages.
    pub(super) path: &'c Path,
    /// How the file is cut.
    pub(super) plan: ChunkPlan,
    /// The upload.
    pub(super) task_id: TaskId,
    /// Payload bytes sent on this connection.
    pub(super) sent: u64,
    /// The running whole-file hash (binary path), advanced by chunks read in file order.
    pub(super) digest: Option<RunningDigest>,
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
pub(super) fn stored_bytes(plan: &ChunkPlan, chunks: u32) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
