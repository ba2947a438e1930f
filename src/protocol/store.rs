//! The wire side of the upload store: a validated `upload_request` becomes the store's
//! [`NewUpload`], and the store's answers and failures become wire messages ([`ChunkAck`])
//! and client-facing errors ([`ProtocolError`]).
//!
//! The store knows nothing of the protocol; this is where the two meet. This module must NOT
//! call the store or touch the disk, only translate; and it must NOT pass storage details
//! (paths, OS errors, corrupt files) on to clients: those become a generic `internal` error
//! here, and the caller logs the original.

use super::error::{ErrorCode, ProtocolError};
use super::message::{ChunkAck, UploadRequest};
use crate::access::Owner;
use crate::domain::TaskId;
use crate::upload::store::{NewUpload, Progress, StoreError};

/// The store's view of a validated `upload_request` from `owner`, counted against `client`'s
/// share of the quota (`ClientKey`'s text form).
pub fn new_upload(request: &UploadRequest, owner: Option<Owner>, client: String) -> NewUpload {
    NewUpload {
        file_name: request.file_name.clone(),
        extension: request.extension.clone(),
        plan: request.plan,
        hashes: request.hashes.clone(),
        transport: request.transport,
        options: request.options.clone(),
        owner,
        client,
    }
}

/// The fast path's cumulative `chunk_ack` for an upload that stands at `progress`.
pub fn chunk_ack(task_id: TaskId, progress: &Progress) -> ChunkAck {
    ChunkAck {
        task_id,
        received_through: progress.received_through,
        received_chunks: progress.received_chunks,
        progress: progress.progress,
        missing: (!progress.missing.is_empty()).then(|| progress.missing.clone()),
    }
}

/// The wire code for a store failure.
fn code(err: &StoreError) -> ErrorCode {
    match err {
        StoreError::NotFound => ErrorCode::SessionNotFound,
        StoreError::Chunk(e) => ProtocolError::from(e.clone()).code,
        StoreError::Incomplete { .. }
        | StoreError::WrongState { .. }
        | StoreError::AwaitingHash
        | StoreError::Unavailable
        | StoreError::HeldElsewhere => ErrorCode::NotReady,
        StoreError::HashConflict { .. } => ErrorCode::InvalidMessage,
        StoreError::HashMismatch { .. } => ErrorCode::FileHashMismatch,
        StoreError::QuotaExceeded { .. }
        | StoreError::ClientQuotaExceeded { .. }
        | StoreError::DiskFull => ErrorCode::QuotaExceeded,
        StoreError::Io { .. } | StoreError::Corrupt(_) => ErrorCode::Internal,
    }
}

/// The client-facing error; I/O and corruption details are replaced by a generic text.
impl From<&StoreError> for ProtocolError {
    fn from(err: &StoreError) -> Self {
        match err {
            StoreError::Chunk(e) => ProtocolError::from(e.clone()),
            StoreError::Io { .. } | StoreError::Corrupt(_) => {
                ProtocolError::new(ErrorCode::Internal, "internal storage error")
            }
            other => ProtocolError::new(code(other), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::upload::plan::PlanError;
    use crate::upload::store::UploadStatus;

    fn wire(err: StoreError) -> ProtocolError {
        ProtocolError::from(&err)
    }

    #[test]
    fn store_failures_map_to_codes() {
        let cases = [
            (StoreError::NotFound, ErrorCode::SessionNotFound),
            (StoreError::Incomplete { missing: 2 }, ErrorCode::NotReady),
            (StoreError::AwaitingHash, ErrorCode::NotReady),
            (StoreError::Unavailable, ErrorCode::NotReady),
            (StoreError::HeldElsewhere, ErrorCode::NotReady),
            (
                StoreError::WrongState {
                    status: UploadStatus::Uploaded,
                    needed: "uploading",
                },
                ErrorCode::NotReady,
            ),
            (
                StoreError::HashConflict {
                    algorithm: "file_sha256",
                },
                ErrorCode::InvalidMessage,
            ),
            (
                StoreError::HashMismatch {
                    algorithm: "file_hash (MD5)",
                },
                ErrorCode::FileHashMismatch,
            ),
            (
                StoreError::QuotaExceeded {
                    needed: 3,
                    available: 2,
                },
                ErrorCode::QuotaExceeded,
            ),
            (
                StoreError::ClientQuotaExceeded {
                    needed: 3,
                    available: 2,
                },
                ErrorCode::QuotaExceeded,
            ),
            (StoreError::DiskFull, ErrorCode::QuotaExceeded),
            (StoreError::Corrupt("x".into()), ErrorCode::Internal),
        ];
        for (err, expected) in cases {
            let text = err.to_string();
            assert_eq!(wire(err).code, expected, "{text}");
        }
    }

    #[test]
    fn a_chunk_outside_the_plan_names_the_chunk() {
        let e = wire(StoreError::Chunk(PlanError::IndexOutOfRange {
            index: 3,
            total: 3,
        }));
        assert_eq!((e.code, e.chunk_index), (ErrorCode::InvalidChunk, Some(3)));
    }

    #[test]
    fn storage_details_do_not_reach_clients() {
        let e = wire(StoreError::Io {
            context: "opening data.part",
            source: io::Error::other("/secret/path"),
        });
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("secret") && !e.message.contains("data.part"));
        let e = wire(StoreError::Corrupt("meta.json: /secret/path".into()));
        assert!(!e.message.contains("secret") && !e.message.contains("meta.json"));
        assert!(!wire(StoreError::DiskFull).message.contains("os error"));
    }

    #[test]
    fn acks_list_missing_chunks_only_when_there_are_some() {
        let mut progress = Progress {
            received_chunks: 3,
            total_chunks: 5,
            received_through: 1,
            progress: 60.0,
            complete: false,
            missing: vec![1, 3],
        };
        let id = TaskId::new_v4();
        let ack = chunk_ack(id, &progress);
        assert_eq!((ack.task_id, ack.received_through), (id, 1));
        assert_eq!((ack.received_chunks, ack.progress), (3, 60.0));
        assert_eq!(ack.missing, Some(vec![1, 3]));
        progress.missing.clear();
        assert_eq!(chunk_ack(id, &progress).missing, None);
    }
}
