//! Durable upload sessions, so an upload survives a dropped connection, a server restart and
//! `kill -9`; behind an interface ([`UploadStorage`]) so that another implementation (a
//! cluster's) can take the place of the local one without touching its callers.
//!
//! The local implementation, [`UploadStore`], keeps each upload in its own directory under
//! `<data_dir>/uploads` and is split along its seams:
//!
//! - [`schema`]: what `meta.json` holds, its layout version, its bytes.
//! - [`session`]: one upload on disk: `data.part`, `received.log`, the fsync order, atomic
//!   replacement, the running whole-file hash.
//! - [`recovery`]: reading every session back at open, finishing or undoing what a crash
//!   interrupted.
//! - [`local`]: the map of sessions, the disk quota and the sweep of idle sessions.
//!
//! Durability rule: a chunk counts as received only once its bytes are in `data.part` AND its
//! index is in `received.log`, both fdatasync'ed, data first. A crash can therefore lose
//! unacknowledged chunks but never claim a chunk whose bytes are missing. Writes and syncs are
//! separate calls so the fast path can group-commit: write several chunks, sync once, ack
//! them together.
//!
//! The API is synchronous and blocking: call it from `spawn_blocking`.
//!
//! This module must NOT speak the wire protocol (its errors and answers are its own;
//! `crate::protocol::store` maps them), must NOT hold network state, and must NOT read a whole
//! file into memory. Task ids are `TaskId`s (parsed UUIDs), the only client input that becomes
//! a path component; file names never do.

mod local;
mod recovery;
mod schema;
mod session;

use std::io;

use thiserror::Error;

pub use local::{free_bytes, StoreConfig, UploadStore};
pub use schema::{Meta, UploadStatus, META_VERSION};

use super::digest::FileHashes;
use super::plan::{ChunkPlan, PlanError, ReceivedSet};
use super::Transport;
use crate::access::Owner;
use crate::protocol::message::TaskOptions;

/// What a new upload is, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUpload {
    /// Sanitised display name.
    pub file_name: String,
    /// Validated lowercase extension, used to name the finished file (the decoder's hint).
    pub extension: Option<String>,
    /// How the file is cut into chunks.
    pub plan: ChunkPlan,
    /// Expected whole-file hashes (lowercase hex), verified by [`UploadStore::finalize`];
    /// none yet for a binary upload that declares them later.
    pub hashes: FileHashes,
    /// How chunks travel, so a resumed upload keeps its transport.
    pub transport: Transport,
    /// Transcription options, so a resumed upload is transcribed as first asked.
    pub options: TaskOptions,
    /// The API key that may resume it and read its result (`None`: anyone).
    pub owner: Option<Owner>,
    /// Whose share of the quota it uses (`ClientKey`'s text form).
    pub client: String,
}

/// Where an upload stands, for acks and resume answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Chunks durably stored.
    pub received_chunks: u32,
    /// Chunks in the plan.
    pub total_chunks: u32,
    /// Every index below this is durably stored (for cumulative acks).
    pub received_through: u32,
    /// 0–100.
    pub progress: f64,
    /// Whether every chunk is stored (time to finalise).
    pub complete: bool,
    /// Missing indices, lowest first, capped (see the method that produced this).
    pub missing: Vec<u32>,
}

impl Progress {
    /// The progress of an upload that holds `received`, listing `missing`.
    pub fn new(received: &ReceivedSet, missing: Vec<u32>) -> Self {
        Progress {
            received_chunks: received.count(),
            total_chunks: received.total(),
            received_through: received.contiguous_prefix(),
            progress: received.progress(),
            complete: received.is_complete(),
            missing,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No such session (never created, removed, or expired).
    #[error("upload session not found")]
    NotFound,
    /// The chunk does not fit the session's plan.
    #[error(transparent)]
    Chunk(#[from] PlanError),
    /// Finalise was called before every chunk was stored.
    #[error("upload incomplete: {missing} chunks missing")]
    Incomplete {
        /// How many chunks are still missing.
        missing: u32,
    },
    /// The operation does not apply in the session's current status.
    #[error("upload is {status:?}; this operation needs it {needed}")]
    WrongState {
        /// The session's status.
        status: UploadStatus,
        /// What the operation needed, for the message.
        needed: &'static str,
    },
    /// Every chunk is in but the client has not yet declared the file's hash (a binary
    /// upload sends it in `upload_finish`); the upload completes when it does.
    #[error("waiting for the file's hash (upload_finish)")]
    AwaitingHash,
    /// The client declared a hash different from the one it declared before.
    #[error("this upload's {algorithm} was already declared with a different value")]
    HashConflict {
        /// `file_hash` (MD5), `file_sha256` or `file_blake3`.
        algorithm: &'static str,
    },
    /// The assembled file does not match the client's hash. `data.part` is kept.
    #[error("assembled file does not match its {algorithm}")]
    HashMismatch {
        /// `file_hash` (MD5) or `file_sha256`.
        algorithm: &'static str,
    },
    /// Accepting this upload would exceed the disk quota.
    #[error("upload storage is full: {needed} bytes needed, {available} available")]
    QuotaExceeded {
        /// Bytes the new upload needs.
        needed: u64,
        /// Bytes left under the quota.
        available: u64,
    },
    /// Accepting this upload would exceed the client's own share of the quota.
    #[error(
        "this client's uploads already reserve its share of the server's storage: {needed} \
         bytes needed, {available} available; finish or let go of other uploads first"
    )]
    ClientQuotaExceeded {
        /// Bytes the new upload needs.
        needed: u64,
        /// Bytes left in the client's share.
        available: u64,
    },
    /// The file system has not enough free space (or ran out while writing). An upload that
    /// ran out while writing is removed, so what it took is free again.
    #[error("the server is out of disk space for uploads; try again later")]
    DiskFull,
    /// A filesystem error (details for logs only).
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A session's files are inconsistent (details for logs only).
    #[error("corrupt upload session: {0}")]
    Corrupt(String),
}

/// Maps an I/O error; a full disk (or quota of the file system) becomes [`StoreError::DiskFull`].
fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::DiskFull,
        _ => StoreError::Io { context, source },
    }
}

#[cfg(test)]
mod tests;
