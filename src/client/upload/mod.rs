//! Upload a file and follow its transcription, surviving dropped connections.
//!
//! Two transports (docs/PROTOCOL.md):
//! - **binary** (default, `binary`): `upload_request` with `transport: "binary"`, then binary
//!   chunk frames with up to `chunk_window` chunks in flight past the latest cumulative
//!   `chunk_ack` (`window`; refused chunks are resent), then `upload_finish` with the file's
//!   BLAKE3, computed while the chunks were read — the file is read once.
//! - **seed** (`seed`): the seed document's flow exactly — base64 `upload_chunk` messages with
//!   their MD5, one at a time, each waiting for its `chunk_received`.
//!
//! On a dropped or failed connection the client waits (exponential backoff, jittered),
//! reconnects, sends `upload_resume` and sends only the chunks the server says are missing;
//! when the upload was already complete it just follows the result (`job`).
//!
//! The seed path hashes the file (MD5) in one streaming pass first, as its request needs it.
//! Either way the file is read chunk by chunk while sending; it is never held in memory.
//! This module reports through a callback and must NOT print or draw.

mod binary;
mod job;
mod seed;
mod window;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::backoff::BackoffConfig;
use super::ClientError;
use crate::domain::TaskId;
use crate::protocol::message::{TranscriptSegment, TranscriptionComplete};
use crate::transcript::Transcript;

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
        language_probability: c.language_probability,
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
    job::run(url, path, None, options, on_event).await
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
    job::run(url, path, Some(task_id), options, on_event).await
}

/// Ends an upload whose chunk `index` was refused [`MAX_REFUSALS_PER_CHUNK`] times, on
/// either path.
fn refused_too_often(index: u32) -> ClientError {
    ClientError::Protocol(format!(
        "the server refused chunk {index} {MAX_REFUSALS_PER_CHUNK} times (does the file change \
         while it is uploaded?)"
    ))
}
