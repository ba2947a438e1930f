//! Resumable uploads: chunk bookkeeping ([`plan`]), whole-file hashes computed as chunks
//! arrive ([`digest`]) and durable storage behind the [`store::UploadStorage`] interface
//! ([`store`]).
//!
//! This module must NOT speak the wire protocol or run tasks: it has its own types and errors,
//! and [`crate::protocol`] maps them to messages and error codes (protocol imports upload,
//! never the reverse). The server calls the (synchronous) store from blocking threads. Until
//! the task vocabulary moves to its own bottom module, `TaskId` and `TaskOptions` are the only
//! items it takes from `protocol`.

pub mod digest;
pub mod plan;
pub mod store;

use serde::{Deserialize, Serialize};

/// Most missing chunk indices one answer lists (an upload's progress, and so a resume or an
/// ack); a client asks again for more. Bounds what one answer costs whatever the plan.
pub const MAX_MISSING_LISTED: usize = 1000;

/// How an upload's chunks travel, kept with the upload so a resumed upload keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `upload_chunk` JSON messages, one `chunk_received` per chunk (seed behaviour).
    #[default]
    Json,
    /// Binary chunk frames with pipelined, cumulative `chunk_ack`s.
    Binary,
}
