//! The seed path: the seed document's base64 `upload_chunk` messages, each with its MD5,
//! one in flight and each waiting for its `chunk_received`; the next chunk is read and encoded
//! on the blocking pool meanwhile.
//!
//! This module must NOT put a second chunk on the wire before the first is acknowledged, nor
//! change the messages' shape: a seed server must accept them unchanged.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::json;

use super::job::{stored_bytes, Job, Sender};
use super::{refused_too_often, UploadEvent, MAX_REFUSALS_PER_CHUNK};
use crate::client::conn::type_name;
use crate::client::ClientError;
use crate::domain::TaskId;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::upload::plan::ChunkPlan;

impl Job<'_> {
    /// The seed's flow: one base64 chunk, then wait for its `chunk_received`. The protocol
    /// allows one chunk in flight, but not one being prepared: while the server stores chunk
    /// `i`, chunk `i + 1` is read, hashed and encoded on the blocking pool.
    pub(super) async fn send_seed(
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
}

impl Sender<'_> {
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
