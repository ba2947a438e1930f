//! Upload handlers: `upload_request`, JSON `upload_chunk` (seed, stop-and-wait), binary chunks
//! (fast path, group commit + cumulative `chunk_ack`), `upload_resume` and `get_result`.
//!
//! Every disk operation runs on the blocking pool; a chunk is acknowledged only after the store
//! has made it durable. A binary upload's group commit runs while the connection receives and
//! writes the next chunks (one commit under way per connection; any other message waits for
//! it), so the client's window keeps moving while the store syncs. When the last chunk is in,
//! the file is verified, `upload_complete` sent, and transcription started; this connection
//! then follows the task. Uploads of another API key are answered as if they did not exist.
//!
//! This module must not touch disk on an async thread or acknowledge a chunk the store has not
//! made durable.

use bytes::Bytes;

use super::follow::{complete_msg, failed_msg};
use super::{ActiveUpload, Connection, Flow, MAX_PENDING_CHUNKS};
use crate::app::NoSlot;
use crate::domain::TaskId;
use crate::jobs::{Job, TaskState};
use crate::protocol::message::{
    ChunkAck, ChunkReceived, UploadChunk, UploadComplete, UploadFinish, UploadMode, UploadReady,
    UploadRequest,
};
use crate::protocol::store::{chunk_ack, new_upload};
use crate::protocol::{ErrorCode, ProtocolError, ServerMessage, MAX_MISSING_LISTED};
use crate::upload::plan::Insert;
use crate::upload::store::{Meta, Progress, StoreError, UploadStatus, UploadStorage};

/// What a group commit's blocking task returns.
type Synced = Result<Result<Progress, StoreError>, tokio::task::JoinError>;

/// A group commit running on the blocking pool.
pub(super) struct Committing {
    /// The upload it makes durable.
    task_id: TaskId,
    /// The store's `sync`, joined when the connection next needs its answer.
    done: tokio::task::JoinHandle<Result<Progress, StoreError>>,
}

/// The result of the group commit under way, when it finishes; never, if none is. Takes it,
/// so the caller acknowledges it exactly once.
pub(super) async fn committed(committing: &mut Option<Committing>) -> (TaskId, Synced) {
    let Some(c) = committing.as_mut() else {
        return std::future::pending().await;
    };
    let synced = (&mut c.done).await;
    let task_id = c.task_id;
    *committing = None;
    (task_id, synced)
}

/// How long a client is asked to wait when every upload slot is taken.
const UPLOAD_RETRY_MS: u64 = 2_000;

/// Runs a store operation on the blocking pool, mapping its errors for the client.
async fn blocking<T, F>(
    conn: &Connection,
    task_id: Option<TaskId>,
    f: F,
) -> Result<T, ProtocolError>
where
    F: FnOnce(&dyn UploadStorage) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let state = conn.state.clone();
    let joined = tokio::task::spawn_blocking(move || f(state.uploads.as_ref())).await;
    answer(joined, task_id)
}

/// A store operation's result from the blocking pool, as the client hears it.
fn answer<T>(
    joined: Result<Result<T, StoreError>, tokio::task::JoinError>,
    task_id: Option<TaskId>,
) -> Result<T, ProtocolError> {
    let result = joined.map_err(|_| ProtocolError::new(ErrorCode::Internal, "internal error"))?;
    result.map_err(|e| store_error(e, task_id))
}

/// The client-facing error for a store failure; file system details go to the log only.
fn store_error(err: StoreError, task_id: Option<TaskId>) -> ProtocolError {
    match &err {
        StoreError::Io { .. } | StoreError::Corrupt(_) => tracing::error!(%err, "upload store"),
        StoreError::DiskFull => tracing::warn!(%err, "upload refused: disk full"),
        _ => {}
    }
    let wire = ProtocolError::from(&err);
    match task_id {
        Some(id) => wire.with_task(id),
        None => wire,
    }
}

/// The answer for a task that does not exist, or belongs to another API key.
fn no_such_task(task_id: TaskId) -> ProtocolError {
    ProtocolError::new(ErrorCode::SessionNotFound, "no such task (or it expired)")
        .with_task(task_id)
}

impl Connection {
    fn upload_slot(&self) -> Result<crate::app::UploadSlot, ProtocolError> {
        self.state.upload_slot(&self.caller).map_err(|why| {
            let message = match why {
                NoSlot::Full => "too many uploads in progress; retry later",
                NoSlot::ClientShare => {
                    "this client already has as many uploads in progress as it may; finish one \
                     or retry later"
                }
            };
            ProtocolError::new(ErrorCode::Busy, message).with_retry_after_ms(UPLOAD_RETRY_MS)
        })
    }

    /// The upload's meta, if this connection's caller may see it.
    async fn owned_meta(&self, task_id: TaskId) -> Result<Meta, ProtocolError> {
        let meta = blocking(self, Some(task_id), move |s| s.meta(task_id))
            .await
            .map_err(|e| match e.code {
                ErrorCode::SessionNotFound => no_such_task(task_id),
                _ => e,
            })?;
        match self.caller.may_see(meta.owner.as_ref()) {
            true => Ok(meta),
            false => Err(no_such_task(task_id)),
        }
    }

    pub(super) async fn upload_request(&mut self, req: UploadRequest) -> Result<(), ProtocolError> {
        self.check_options(&req.options)?;
        let slot = self.upload_slot()?;
        let owner = self.caller.owner.clone();
        let new = new_upload(&req, owner, self.caller.client().to_string());
        let task_id = blocking(self, None, move |s| s.create(new)).await?;
        self.adopt(task_id);
        tracing::info!(%task_id, file = %req.file_name, bytes = req.plan.file_size, "upload started");
        if let UploadMode::Single { data } = &req.mode {
            drop(slot);
            let data = data.clone();
            blocking(self, Some(task_id), move |s| {
                s.put_chunk(task_id, 0, data.into())
            })
            .await?;
            self.send(ready(task_id, &req, None)).await?;
            self.complete(task_id).await?;
            return Ok(());
        }
        self.uploads.insert(task_id, ActiveUpload::new(slot));
        self.send(ready(task_id, &req, Some(self.state.limits().chunk_window)))
            .await
    }

    pub(super) async fn upload_chunk(&mut self, chunk: UploadChunk) -> Result<(), ProtocolError> {
        let UploadChunk {
            task_id,
            chunk_index,
            data,
            ..
        } = chunk;
        self.ensure_slot(task_id).await?;
        let stored = blocking(self, Some(task_id), move |s| {
            s.put_chunk(task_id, chunk_index, data.into())
        })
        .await;
        let (insert, progress) = stored.map_err(|e| {
            self.release_if_gone(task_id, &e);
            e.with_chunk(chunk_index)
        })?;
        crate::metrics::chunk(insert == Insert::Duplicate);
        let reply = match insert {
            Insert::Duplicate => ChunkReceived::duplicate(task_id, chunk_index),
            Insert::New => ChunkReceived::stored(task_id, chunk_index, progress.progress),
        };
        self.send(ServerMessage::ChunkReceived(reply)).await?;
        if progress.complete && insert == Insert::New && !self.complete(task_id).await? {
            // The seed path has no upload_finish of its own: say what is missing instead of
            // leaving the client waiting for an upload_complete that cannot come.
            return Err(ProtocolError::new(ErrorCode::NotReady, AWAITING_HASH).with_task(task_id));
        }
        Ok(())
    }

    /// A binary chunk: written now, synced and acknowledged with the next group commit.
    pub(super) async fn binary_chunk(
        &mut self,
        task_id: TaskId,
        index: u32,
        payload: Bytes,
    ) -> Result<(), ProtocolError> {
        self.ensure_slot(task_id).await?;
        let written = blocking(self, Some(task_id), move |s| {
            s.write_chunk(task_id, index, payload)
        })
        .await;
        let insert = written.map_err(|e| {
            self.release_if_gone(task_id, &e);
            e.with_chunk(index)
        })?;
        crate::metrics::chunk(insert == Insert::Duplicate);
        let Some(upload) = self.uploads.get_mut(&task_id) else {
            return Ok(()); // released while the chunk was written (cannot happen: one task)
        };
        if insert == Insert::New {
            upload.pending += 1;
        }
        if insert == Insert::Duplicate {
            return self.commit(task_id).await;
        }
        if upload.pending >= MAX_PENDING_CHUNKS {
            return self.start_commit(task_id).await;
        }
        Ok(())
    }

    /// Syncs every upload with pending chunks and acknowledges them.
    pub(super) async fn flush_pending(&mut self) -> Flow {
        let settled = self.settle().await;
        if let Flow::Close(code, reason) = self.report(settled).await {
            return Flow::Close(code, reason);
        }
        let ids: Vec<TaskId> = self
            .uploads
            .iter()
            .filter(|(_, u)| u.pending > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let result = self.commit(id).await;
            if let Flow::Close(code, reason) = self.report(result).await {
                return Flow::Close(code, reason);
            }
        }
        Flow::Continue
    }

    /// Group commit: one sync for all pending chunks, then one cumulative ack.
    async fn commit(&mut self, task_id: TaskId) -> Result<(), ProtocolError> {
        self.start_commit(task_id).await?;
        self.settle().await
    }

    /// Starts the group commit of the upload's pending chunks, after the one under way has
    /// been acknowledged; the connection goes on receiving meanwhile.
    async fn start_commit(&mut self, task_id: TaskId) -> Result<(), ProtocolError> {
        self.settle().await?;
        if let Some(u) = self.uploads.get_mut(&task_id) {
            u.pending = 0;
        }
        let state = self.state.clone();
        let done = tokio::task::spawn_blocking(move || state.uploads.sync(task_id));
        self.committing = Some(Committing { task_id, done });
        Ok(())
    }

    /// Waits for the group commit under way, if any, and acknowledges it.
    pub(super) async fn settle(&mut self) -> Result<(), ProtocolError> {
        let Some(Committing { task_id, done }) = self.committing.take() else {
            return Ok(());
        };
        let synced = done.await;
        self.acknowledge(task_id, synced).await
    }

    /// Sends the cumulative ack of a finished group commit (and completes the upload if that
    /// was its last chunk).
    pub(super) async fn acknowledge(
        &mut self,
        task_id: TaskId,
        synced: Synced,
    ) -> Result<(), ProtocolError> {
        let progress = answer(synced, Some(task_id));
        let progress = progress.inspect_err(|e| self.release_if_gone(task_id, e))?;
        self.send(ServerMessage::ChunkAck(chunk_ack(task_id, &progress)))
            .await?;
        if progress.complete {
            self.complete(task_id).await?;
        }
        Ok(())
    }

    /// Makes sure this connection holds an upload slot for the task (after a reconnect the
    /// client may send chunks straight away). The upload must exist and still be receiving:
    /// a chunk for an unknown or finished upload is refused without taking a slot, so stray
    /// chunks can neither use up the server's upload slots nor be answered `busy`.
    async fn ensure_slot(&mut self, task_id: TaskId) -> Result<(), ProtocolError> {
        if let Some(upload) = self.uploads.get_mut(&task_id) {
            upload.last_active = tokio::time::Instant::now();
            return Ok(());
        }
        let meta = self.owned_meta(task_id).await?;
        if meta.status != UploadStatus::Uploading {
            return Err(ProtocolError::new(
                ErrorCode::NotReady,
                "this upload already has all its chunks; get_result or upload_resume",
            )
            .with_task(task_id));
        }
        let slot = self.upload_slot()?;
        self.adopt(task_id);
        self.uploads.insert(task_id, ActiveUpload::new(slot));
        Ok(())
    }

    /// Gives the slot back when a chunk shows the upload is gone or no longer receiving
    /// (completed from another connection, expired, removed because the disk filled up).
    fn release_if_gone(&mut self, task_id: TaskId, err: &ProtocolError) {
        let gone = matches!(
            err.code,
            ErrorCode::SessionNotFound | ErrorCode::NotReady | ErrorCode::QuotaExceeded
        );
        if gone && self.uploads.get(&task_id).is_some_and(|u| u.pending == 0) {
            self.uploads.remove(&task_id);
        }
    }

    /// `upload_finish`: the hash of a binary upload, sent after its chunks. Completes the
    /// upload if every chunk is in (pending ones are committed first); otherwise it is answered
    /// with a `chunk_ack` saying what is stored, so every `upload_finish` gets an answer.
    pub(super) async fn upload_finish(
        &mut self,
        finish: UploadFinish,
    ) -> Result<(), ProtocolError> {
        let UploadFinish { task_id, hashes } = finish;
        let meta = self.owned_meta(task_id).await?;
        let declared = blocking(self, Some(task_id), move |s| {
            s.declare_hashes(task_id, hashes)
        })
        .await?;
        let Some(progress) = declared else {
            // Verified already with these hashes: a late duplicate.
            let total = meta.plan.total_chunks;
            return self
                .send(ServerMessage::ChunkAck(all_stored(task_id, total)))
                .await;
        };
        if self.uploads.get(&task_id).is_some_and(|u| u.pending > 0) {
            return self.commit(task_id).await;
        }
        if progress.complete {
            self.complete(task_id).await?;
            return Ok(());
        }
        self.send(ServerMessage::ChunkAck(chunk_ack(task_id, &progress)))
            .await
    }

    /// All chunks are in: verify, announce, transcribe, follow. A binary upload whose hash is
    /// still to come (`upload_finish`) waits for it, keeping its slot: then this returns
    /// `false`.
    async fn complete(&mut self, task_id: TaskId) -> Result<bool, ProtocolError> {
        let finalized = blocking(self, Some(task_id), move |s| match s.finalize(task_id) {
            Err(StoreError::AwaitingHash) => Ok(None),
            other => other.map(Some),
        })
        .await;
        let path = match finalized {
            Ok(None) => return Ok(false),
            Ok(Some(path)) => path,
            Err(err) => {
                self.uploads.remove(&task_id);
                crate::metrics::upload_failed();
                return Err(err);
            }
        };
        self.uploads.remove(&task_id);
        crate::metrics::upload_completed();
        tracing::info!(%task_id, "upload complete");
        self.send(ServerMessage::UploadComplete(UploadComplete {
            task_id,
            message: "upload complete; transcription started".into(),
        }))
        .await?;
        let meta = blocking(self, Some(task_id), move |s| s.meta(task_id)).await?;
        self.state.jobs.submit(Job::upload(task_id, path, &meta));
        self.follow(task_id, meta.options.format);
        Ok(true)
    }

    pub(super) async fn upload_resume(&mut self, task_id: TaskId) -> Result<(), ProtocolError> {
        let meta = match self.owned_meta(task_id).await {
            Ok(meta) => meta,
            Err(e) if e.code == ErrorCode::SessionNotFound => {
                return self.get_result(task_id).await
            }
            Err(e) => return Err(e),
        };
        let known = self.state.tasks.snapshot(task_id).await.is_some();
        match meta.status {
            UploadStatus::Uploading => self.resume_upload(task_id, &meta).await,
            _ if known => {
                self.follow(task_id, meta.options.format);
                Ok(())
            }
            UploadStatus::Uploaded => {
                let path = blocking(self, Some(task_id), move |s| s.audio_path(task_id)).await?;
                self.state.jobs.submit(Job::upload(task_id, path, &meta));
                self.follow(task_id, meta.options.format);
                Ok(())
            }
            // Finished long ago (result swept) or failed before a restart.
            _ => self.get_result(task_id).await,
        }
    }

    /// Lists what an interrupted upload still needs. When nothing is missing (the connection
    /// or the server went down between the last chunk and the verification) it finalises now,
    /// as `docs/PROTOCOL.md` §6 promises; otherwise the client would wait forever.
    async fn resume_upload(&mut self, task_id: TaskId, meta: &Meta) -> Result<(), ProtocolError> {
        self.ensure_slot(task_id).await?;
        blocking(self, Some(task_id), move |s| s.take_over(task_id)).await?;
        let p = blocking(self, Some(task_id), move |s| {
            s.progress(task_id, MAX_MISSING_LISTED)
        })
        .await?;
        self.send(ServerMessage::UploadReady(UploadReady {
            task_id,
            message: "resume: send the missing chunks".into(),
            chunk_window: Some(self.state.limits().chunk_window),
            missing_chunks: Some(p.missing),
            received_chunks: Some(p.received_chunks),
            total_chunks: Some(p.total_chunks),
            awaiting_hash: meta.declared().kinds().is_empty().then_some(true),
        }))
        .await?;
        if p.complete {
            self.complete(task_id).await?;
        }
        Ok(())
    }

    /// `get_result`: the stored result or failure, else `not_ready` while the task is still
    /// uploading or transcribing (`docs/PROTOCOL.md` §7). Answered inline, so a client that
    /// asks faster than it reads is slowed down by its own socket instead of piling up work.
    pub(super) async fn get_result(&mut self, task_id: TaskId) -> Result<(), ProtocolError> {
        let snapshot = self.state.tasks.snapshot_for(task_id, &self.caller).await;
        if let Some(snap) = snapshot {
            return match snap.state {
                TaskState::Done(result) => {
                    let format = blocking(self, Some(task_id), move |s| s.meta(task_id))
                        .await
                        .ok()
                        .and_then(|m| m.options.format);
                    self.send(complete_msg(task_id, &result, format)).await
                }
                TaskState::Failed { code, message } => {
                    self.send(failed_msg(task_id, code, &message)).await
                }
                TaskState::Queued | TaskState::Running { .. } => Err(not_ready(
                    task_id,
                    "still transcribing; upload_resume follows the progress",
                )),
            };
        }
        let meta = self.owned_meta(task_id).await?;
        Err(match meta.status {
            UploadStatus::Uploading if meta.error.is_some() => ProtocolError::new(
                ErrorCode::FileHashMismatch,
                "the uploaded file does not match its hash; upload it again",
            )
            .with_task(task_id),
            UploadStatus::Uploading => not_ready(
                task_id,
                "the upload is incomplete; upload_resume lists the missing chunks",
            ),
            UploadStatus::Uploaded | UploadStatus::Transcribing => {
                not_ready(task_id, "waiting to be transcribed")
            }
            UploadStatus::Failed => {
                ProtocolError::new(ErrorCode::Internal, "transcription failed").with_task(task_id)
            }
            UploadStatus::Done => {
                ProtocolError::new(ErrorCode::SessionNotFound, "the result has expired")
                    .with_task(task_id)
            }
        })
    }

    pub(super) async fn send(&self, msg: ServerMessage) -> Result<(), ProtocolError> {
        self.out
            .send(msg)
            .await
            .map_err(|_| ProtocolError::new(ErrorCode::Internal, "connection closed"))
    }
}

/// What a client hears when all chunks are stored but no whole-file hash was declared.
const AWAITING_HASH: &str = "all chunks are stored, but this upload has no whole-file hash yet: \
     send upload_finish with file_hash (MD5), file_sha256 or file_blake3";

/// The ack for an upload whose chunks are all stored and verified.
fn all_stored(task_id: TaskId, total_chunks: u32) -> ChunkAck {
    ChunkAck {
        task_id,
        received_through: total_chunks,
        received_chunks: total_chunks,
        progress: 100.0,
        missing: None,
    }
}

/// How long a client is asked to wait before asking for a result again.
const RESULT_RETRY_MS: u64 = 2_000;

fn not_ready(task_id: TaskId, message: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::NotReady, message)
        .with_task(task_id)
        .with_retry_after_ms(RESULT_RETRY_MS)
}

fn ready(task_id: TaskId, req: &UploadRequest, window: Option<u32>) -> ServerMessage {
    let binary = req.transport == crate::protocol::message::Transport::Binary;
    ServerMessage::UploadReady(UploadReady {
        task_id,
        message: "ready to receive chunks".into(),
        chunk_window: window.filter(|_| binary),
        missing_chunks: None,
        received_chunks: None,
        total_chunks: Some(req.plan.total_chunks),
        awaiting_hash: None,
    })
}
