//! The binary fast path: chunk frames (`protocol::binary` header, xxh3 of the payload) kept
//! `chunk_window` ahead of the server's cumulative `chunk_ack`, then `upload_finish` with the
//! file's BLAKE3, computed from the chunks as they are read.
//!
//! This module must NOT decide which chunk may go next (that is the pure [`SendWindow`]) and
//! must NOT hold the file in memory: each chunk is read, framed and sent when it goes.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use serde_json::json;

use super::job::{stored_bytes, Job, Sender};
use super::window::SendWindow;
use super::UploadEvent;
use crate::client::conn::type_name;
use crate::client::ClientError;
use crate::protocol::binary::{upload_chunk_header, UPLOAD_CHUNK_HEADER_LEN};
use crate::protocol::{ErrorCode, ServerMessage};
use crate::upload::digest::{HashKinds, RunningDigest};

impl Job<'_> {
    /// Binary fast path: a window of chunk frames ahead of the cumulative ack.
    pub(super) async fn send_binary(
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
    pub(super) async fn send_finish(&mut self) -> Result<(), ClientError> {
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
    pub(super) async fn finish(&mut self) -> Result<(), ClientError> {
        self.send_finish().await?;
        loop {
            match self.conn.recv().await? {
                ServerMessage::UploadComplete(c) if c.task_id == self.task_id => return Ok(()),
                ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
                other => tracing::debug!(kind = type_name(&other), "ignored while finishing"),
            }
        }
    }

    pub(super) async fn send_binary_chunk(&mut self, index: u32) -> Result<(), ClientError> {
        let mut frame = self.read_chunk(index, UPLOAD_CHUNK_HEADER_LEN).await?;
        let (head, payload) = frame.split_at_mut(UPLOAD_CHUNK_HEADER_LEN);
        head.copy_from_slice(&upload_chunk_header(self.task_id, index, payload));
        let len = payload.len() as u64;
        self.conn.send_binary(frame).await?;
        self.sent += len;
        Ok(())
    }
}
