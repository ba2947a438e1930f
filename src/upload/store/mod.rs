//! Durable upload sessions, so an upload survives a dropped connection, a server restart and
//! `kill -9`; behind an interface ([`UploadStorage`]) so that another implementation (a
//! cluster's) can take the place of the local one without touching its callers.
//!
//! The local implementation, [`UploadStore`], keeps each upload in its own directory under
//! `<data_dir>/uploads` and is split along its seams:
//!
//! - `schema`: what `meta.json` holds, its layout version, its bytes.
//! - `session`: one upload on disk: `data.part`, `received.log`, the fsync order, atomic
//!   replacement, the running whole-file hash.
//! - `recovery`: reading every session back at open, finishing or undoing what a crash
//!   interrupted.
//! - `local`: the map of sessions, the disk quota and the sweep of idle sessions.
//! - `syncer`: a few long-lived threads that sync a chunk while the seed path hashes it.
//!
//! Durability rule: a chunk counts as received only once its bytes are in `data.part` AND its
//! index is in `received.log`, both fdatasync'ed, data first. A crash can therefore lose
//! unacknowledged chunks but never claim a chunk whose bytes are missing. Writes and syncs are
//! separate calls so the fast path can group-commit: write several chunks, sync once, ack
//! them together.
//!
//! The API is synchronous and blocking: call it from `spawn_blocking`. Callers hold the store
//! as a `dyn UploadStorage` and use only the trait's operations.
//!
//! This module must NOT speak the wire protocol (its errors and answers are its own;
//! `crate::protocol::store` maps them), must NOT hold network state, and must NOT read a whole
//! file into memory. Task ids are `TaskId`s (parsed UUIDs), the only client input that becomes
//! a path component; file names never do.

mod local;
mod recovery;
mod schema;
mod session;
mod syncer;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

pub use local::{free_bytes, StoreConfig, UploadStore};
pub use schema::{unix_secs, Meta, UploadStatus, META_VERSION};

use super::digest::FileHashes;
use super::plan::{ChunkPlan, Insert, PlanError, ReceivedSet};
use super::Transport;
use crate::access::Owner;
use crate::domain::TaskId;
use crate::domain::TaskOptions;

/// What the WebSocket and HTTP layers and the job runner need from upload storage. Two
/// implementations: [`UploadStore`] on the local data directory (a single node), and the
/// cluster's (`crate::cluster::uploads`: chunks in NATS JetStream, a lease per upload).
///
/// The contract every implementation keeps:
///
/// - **Durable before acknowledged.** [`sync`](Self::sync) and [`put_chunk`](Self::put_chunk)
///   return only once every chunk they report as received survives a crash of this process
///   (and, for a cluster, of this node); callers acknowledge exactly what they report.
///   [`write_chunk`](Self::write_chunk) alone promises nothing.
/// - **Idempotent chunks.** A chunk stored or written already is a `Duplicate`, never a second
///   write; a chunk that does not fit the plan is [`StoreError::Chunk`].
/// - **Verified before used.** [`finalize`](Self::finalize) checks the declared whole-file
///   hashes before the file may be transcribed; a mismatch keeps what was received.
/// - **Bounded memory.** No call holds a whole file in memory; answers list at most
///   [`MAX_MISSING_LISTED`](crate::upload::MAX_MISSING_LISTED) missing chunks unless asked.
/// - **Unknown is `NotFound`.** An id never created, removed or expired is
///   [`StoreError::NotFound`]; access control (owners) is the caller's, from [`Meta::owner`].
///
/// Calls are synchronous and may block on disk (or network): call them from blocking threads.
/// Synchronous on purpose: the local store's work is file I/O with no async equivalent worth
/// having, and one blocking call per chunk keeps the fsync order in one place. Implementations
/// must NOT speak the wire protocol (the caller maps [`StoreError`] and [`Progress`]) and must
/// NOT let one upload's calls wait for another's beyond a short map lock.
pub trait UploadStorage: Send + Sync {
    /// Starts an upload under a fresh id, if the quotas and the disk have room for its whole
    /// file size (refused otherwise with `QuotaExceeded`, `ClientQuotaExceeded` or `DiskFull`).
    fn create(&self, new: NewUpload) -> Result<TaskId, StoreError>;

    /// Stores chunk `index`'s bytes, not yet durably: [`sync`](Self::sync) before
    /// acknowledging (the fast path's group commit). The length must match the plan.
    /// The bytes are owned so a store that hands them on (to NATS, to shared storage) need
    /// not copy them.
    fn write_chunk(&self, task_id: TaskId, index: u32, data: Bytes) -> Result<Insert, StoreError>;

    /// Makes every chunk written before the call durable and returns what to acknowledge;
    /// `missing` lists the gaps below the highest stored chunk (capped), what a pipelined
    /// sender must resend. Chunks written while it runs (from another thread) may be left to
    /// the next sync.
    fn sync(&self, task_id: TaskId) -> Result<Progress, StoreError>;

    /// Writes and syncs one chunk: the JSON path's per-chunk ack. A store that can sync one
    /// chunk more cheaply than [`sync`](Self::sync) (the local store groups fsyncs) overrides it.
    fn put_chunk(
        &self,
        task_id: TaskId,
        index: u32,
        data: Bytes,
    ) -> Result<(Insert, Progress), StoreError> {
        let insert = self.write_chunk(task_id, index, data)?;
        Ok((insert, self.sync(task_id)?))
    }

    /// Where the upload stands, listing up to `missing_limit` missing chunks (for
    /// `upload_resume`). Chunks written but not synced count as missing.
    fn progress(&self, task_id: TaskId, missing_limit: usize) -> Result<Progress, StoreError>;

    /// The upload's record: what was asked, its status, its owner.
    fn meta(&self, task_id: TaskId) -> Result<Meta, StoreError>;

    /// Records whole-file hashes declared after the chunks (`upload_finish`). The same value
    /// again is harmless, a different one is `HashConflict`. Returns the progress, so the
    /// caller can finalise a complete upload, or `None` when the upload was already verified
    /// with these hashes.
    fn declare_hashes(
        &self,
        task_id: TaskId,
        hashes: FileHashes,
    ) -> Result<Option<Progress>, StoreError>;

    /// Verifies the complete file against its declared hashes and marks it `Uploaded`;
    /// returns the path of the verified file, local to this process, for the decoder (a
    /// cluster node whose chunks are in shared storage keeps no copy: there the path is where
    /// [`audio_path`](Self::audio_path) assembles the file when it is first read).
    /// `Incomplete` or `AwaitingHash` when it cannot yet; idempotent once uploaded.
    fn finalize(&self, task_id: TaskId) -> Result<PathBuf, StoreError>;

    /// The path of the verified file (status `Uploaded` or later), as [`finalize`](Self::finalize).
    fn audio_path(&self, task_id: TaskId) -> Result<PathBuf, StoreError>;

    /// Records a status change (e.g. `Transcribing`, or `Failed` with a reason), durably.
    fn set_status(
        &self,
        task_id: TaskId,
        status: UploadStatus,
        error: Option<String>,
    ) -> Result<(), StoreError>;

    /// Every upload and its status, ordered by id (e.g. to queue `Uploaded` ones after a
    /// restart).
    fn list(&self) -> Vec<(TaskId, UploadStatus)>;

    /// Deletes uploads idle for longer than `ttl`, except those being transcribed; returns
    /// their ids.
    fn sweep(&self, ttl: Duration) -> Vec<TaskId>;

    /// Whether `client` may add `file_size` bytes now (quota, its share, free space), for
    /// files that arrive outside the store (HTTP requests).
    fn check_quota(&self, client: &str, file_size: u64) -> Result<(), StoreError>;

    /// The caller's connection continues this upload (`upload_resume`). A store shared by
    /// several nodes moves the right to write it here, so the node that had it can no longer
    /// store chunks (they are refused with [`StoreError::HeldElsewhere`]). One process owns
    /// everything it stores, so the local store has nothing to do.
    fn take_over(&self, task_id: TaskId) -> Result<(), StoreError> {
        let _ = task_id;
        Ok(())
    }
}

/// What a new upload is, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUpload {
    /// Sanitised display name.
    pub file_name: String,
    /// Validated lowercase extension, used to name the finished file (the decoder's hint).
    pub extension: Option<String>,
    /// How the file is cut into chunks.
    pub plan: ChunkPlan,
    /// Expected whole-file hashes (lowercase hex), verified by [`UploadStorage::finalize`];
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
    /// The shared storage (a cluster's NATS) cannot be reached now. Nothing the call was to
    /// store counts as stored; the client tries again later.
    #[error("the upload storage is unreachable; try again later")]
    Unavailable,
    /// Another connection (on another node of a cluster) continues this upload; this one may
    /// no longer store chunks for it. `upload_resume` moves it back.
    #[error("this upload continues on another connection; upload_resume to continue here")]
    HeldElsewhere,
}

/// Whether an I/O error says the file system is full (or its quota used up): what clients
/// hear as [`StoreError::DiskFull`].
pub fn is_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Maps an I/O error; a full disk (or quota of the file system) becomes [`StoreError::DiskFull`].
fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| match is_full(&source) {
        true => StoreError::DiskFull,
        false => StoreError::Io { context, source },
    }
}

#[cfg(test)]
mod tests;
