//! What `meta.json` holds and how it is read and written as bytes: the upload's request, plan,
//! status and times, with a layout version so a later Earshot can migrate old sessions.
//!
//! The serde shape of [`Meta`] is an on-disk format: sessions written by an earlier Earshot
//! must load. Change it only by adding fields with defaults, or by raising [`META_VERSION`]
//! and migrating older versions in [`decode`]. This module must NOT do I/O (the session
//! writes the bytes atomically) and must NOT take its types from the wire protocol, so a
//! protocol change is never a disk format change.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{NewUpload, StoreError};
use crate::access::Owner;
use crate::domain::TaskId;
use crate::domain::TaskOptions;
use crate::upload::digest::FileHashes;
use crate::upload::plan::ChunkPlan;
use crate::upload::Transport;

/// File name of the meta in a session's directory.
pub(super) const META: &str = "meta.json";
/// Version of meta.json's layout this Earshot writes (and the newest it reads).
pub const META_VERSION: u32 = 1;

/// Where an upload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadStatus {
    /// Chunks are arriving.
    Uploading,
    /// Every chunk stored and the file verified; waiting to be transcribed (also the state
    /// a transcription interrupted by a restart returns to, so it can be queued again).
    Uploaded,
    /// A transcription is running.
    Transcribing,
    /// Transcribed; the task registry holds the result.
    Done,
    /// Transcription failed; `error` in the meta says why.
    Failed,
}

impl UploadStatus {
    /// Transcribed or failed: nothing will read the upload's bytes again.
    pub fn is_over(self) -> bool {
        matches!(self, UploadStatus::Done | UploadStatus::Failed)
    }
}

/// The contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Layout version of this file.
    pub version: u32,
    /// The session's id (also its directory name).
    pub task_id: TaskId,
    /// Sanitised display name.
    pub file_name: String,
    /// Validated lowercase extension of the finished file.
    pub extension: Option<String>,
    /// How the file is cut into chunks.
    pub plan: ChunkPlan,
    /// Expected MD5, lowercase hex.
    pub file_md5: Option<String>,
    /// Expected SHA-256, lowercase hex.
    pub file_sha256: Option<String>,
    /// Expected BLAKE3, lowercase hex.
    #[serde(default)]
    pub file_blake3: Option<String>,
    /// Transport the client chose.
    pub transport: Transport,
    /// Transcription options.
    pub options: TaskOptions,
    /// Unix seconds when the upload was created.
    pub created_at: u64,
    /// Unix seconds of the last status change.
    pub updated_at: u64,
    /// Where the upload is in its life.
    pub status: UploadStatus,
    /// The last failure (hash mismatch, transcription error), for `get_result` and logs.
    #[serde(default)]
    pub error: Option<String>,
    /// The API key (fingerprint) that may resume the upload and read its result; `None` for
    /// sessions of an open server (and those written before owners were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Whose share of the quota the upload uses; empty in sessions written before shares.
    #[serde(default)]
    pub client: String,
}

impl Meta {
    /// The meta of a new upload `task_id`, created at `now`.
    pub fn new(task_id: TaskId, new: NewUpload, now: SystemTime) -> Self {
        Meta {
            version: META_VERSION,
            task_id,
            file_name: new.file_name,
            extension: new.extension,
            plan: new.plan,
            file_md5: new.hashes.md5,
            file_sha256: new.hashes.sha256,
            file_blake3: new.hashes.blake3,
            transport: new.transport,
            options: new.options,
            created_at: unix_secs(now),
            updated_at: unix_secs(now),
            status: UploadStatus::Uploading,
            error: None,
            owner: new.owner,
            client: new.client,
        }
    }

    /// Records whole-file hashes declared after the chunks (`upload_finish`): a hash not
    /// declared before is added, the same one again is harmless, a different one is
    /// `HashConflict` (and nothing changes).
    pub fn declare(&mut self, hashes: FileHashes) -> Result<(), StoreError> {
        let mut next = self.declared();
        declare(&mut next.md5, hashes.md5, "file_hash (MD5)")?;
        declare(&mut next.sha256, hashes.sha256, "file_sha256")?;
        declare(&mut next.blake3, hashes.blake3, "file_blake3")?;
        (self.file_md5, self.file_sha256, self.file_blake3) = (next.md5, next.sha256, next.blake3);
        Ok(())
    }

    /// The whole-file hashes the client declared so far.
    pub fn declared(&self) -> FileHashes {
        FileHashes {
            md5: self.file_md5.clone(),
            sha256: self.file_sha256.clone(),
            blake3: self.file_blake3.clone(),
        }
    }
}

/// Sets a declared hash, refusing to change one already declared.
fn declare(
    slot: &mut Option<String>,
    value: Option<String>,
    algorithm: &'static str,
) -> Result<(), StoreError> {
    match (slot.as_deref(), value) {
        (_, None) => Ok(()),
        (Some(old), Some(new)) if old != new => Err(StoreError::HashConflict { algorithm }),
        (_, Some(new)) => {
            *slot = Some(new);
            Ok(())
        }
    }
}

/// Unix seconds of `t` (0 before 1970), as the meta keeps times.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `meta.json`'s bytes for `meta`.
pub(super) fn encode(meta: &Meta) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Reads `meta.json`'s bytes. A layout newer than this Earshot knows is refused rather than
/// half-read: rewriting it would drop what this version cannot see.
pub(super) fn decode(bytes: &[u8]) -> Result<Meta, StoreError> {
    let meta: Meta = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("meta.json: {e}")))?;
    if meta.version > META_VERSION {
        return Err(StoreError::Corrupt(format!(
            "meta.json has layout version {}, newer than this Earshot's {META_VERSION}",
            meta.version
        )));
    }
    Ok(meta)
}

/// A `meta.json` exactly as Earshot has written it since layout version 1 (a binary upload
/// with an owner, part way through). Sessions on disk look like this: it must keep loading.
#[cfg(test)]
pub(super) const V1_META: &str = r#"{
  "version": 1,
  "task_id": "6f9d2c1e-3b7a-4c5d-8e9f-0a1b2c3d4e5f",
  "file_name": "talk.mp3",
  "extension": "mp3",
  "plan": {
    "file_size": 4500,
    "chunk_size": 1000,
    "total_chunks": 5
  },
  "file_md5": null,
  "file_sha256": null,
  "file_blake3": "6e1ee5bd2d3c6d4c1e4e5a3a2b8f0f4f3c5d6e7f8091a2b3c4d5e6f708192a3b",
  "transport": "binary",
  "options": {
    "language": "en",
    "translate": false,
    "format": "srt"
  },
  "created_at": 1764115200,
  "updated_at": 1764115260,
  "status": "uploading",
  "error": null,
  "owner": "0123456789abcdef0123456789abcdef",
  "client": "key:0123456789abcdef"
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_meta_loads_and_is_written_back_byte_for_byte() {
        let meta = decode(V1_META.as_bytes()).unwrap();
        assert_eq!(meta.version, 1);
        assert_eq!(
            meta.task_id.to_string(),
            "6f9d2c1e-3b7a-4c5d-8e9f-0a1b2c3d4e5f"
        );
        assert_eq!(meta.plan.total_chunks, 5);
        assert_eq!(meta.transport, Transport::Binary);
        assert_eq!(meta.options.language.as_deref(), Some("en"));
        assert_eq!(meta.options.format, Some(crate::domain::OutputFormat::Srt));
        assert_eq!(meta.status, UploadStatus::Uploading);
        let owner = serde_json::to_value(&meta.owner).unwrap();
        assert_eq!(owner, "0123456789abcdef0123456789abcdef");
        assert_eq!(meta.client, "key:0123456789abcdef");
        assert!(meta.declared().blake3.is_some());
        assert_eq!(String::from_utf8(encode(&meta).unwrap()).unwrap(), V1_META);
    }

    #[test]
    fn fields_added_after_version_1_have_defaults() {
        let old = r#"{"version": 1, "task_id": "6f9d2c1e-3b7a-4c5d-8e9f-0a1b2c3d4e5f",
            "file_name": "a.wav", "extension": "wav",
            "plan": {"file_size": 10, "chunk_size": 10, "total_chunks": 1},
            "file_md5": "00112233445566778899aabbccddeeff", "file_sha256": null,
            "transport": "json",
            "options": {"language": null, "translate": true, "format": null},
            "created_at": 1, "updated_at": 2, "status": "done"}"#;
        let meta = decode(old.as_bytes()).unwrap();
        assert_eq!(
            (meta.file_blake3, meta.error, meta.owner),
            (None, None, None)
        );
        assert_eq!(
            (meta.client.as_str(), meta.status),
            ("", UploadStatus::Done)
        );
        assert!(meta.options.translate);
    }

    #[test]
    fn a_newer_layout_or_a_broken_file_is_refused() {
        let newer = V1_META.replace("\"version\": 1", "\"version\": 2");
        let e = decode(newer.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
        assert!(matches!(decode(b"{nope"), Err(StoreError::Corrupt(_))));
    }
}
