//! Error codes the server sends in `error` messages, and the typed error every parser maps
//! into (the upload store's errors are mapped in [`super::store`]).
//!
//! Messages here go to clients: they must say what was wrong with the client's input and
//! never carry paths, OS errors or other details meant for logs.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::message::{ErrorData, ServerMessage};
use crate::domain::{FailureCode, TaskId, TaskIdError};
use crate::upload::plan::PlanError;

/// The `code` of an `error` message. Serialised snake_case (`"chunk_hash_mismatch"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a missing or mistyped field, or a value out of range.
    InvalidMessage,
    /// A well-formed message whose `type` the server does not know.
    UnknownType,
    /// The task id is malformed, unknown, or its session expired.
    SessionNotFound,
    /// A chunk that does not fit its session's plan (index out of range, wrong length).
    InvalidChunk,
    /// A chunk whose bytes do not match its hash; resend that chunk.
    ChunkHashMismatch,
    /// The assembled file does not match `file_hash`/`file_sha256`; the upload failed.
    FileHashMismatch,
    /// A file, chunk or message bigger than the limits in `connected`.
    TooLarge,
    /// The server's upload storage is full; try later or a smaller file.
    QuotaExceeded,
    /// An audio format the server cannot decode, or audio that failed to decode.
    UnsupportedAudio,
    /// The server is at capacity; retry after `retry_after_ms`.
    Busy,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The request is valid but the task is not in a state for it (e.g. a result asked
    /// for before transcription finished, or chunks sent after the upload completed).
    NotReady,
    /// A server fault; details are in the server log only.
    Internal,
}

impl ErrorCode {
    /// The snake_case name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::InvalidChunk => "invalid_chunk",
            ErrorCode::ChunkHashMismatch => "chunk_hash_mismatch",
            ErrorCode::FileHashMismatch => "file_hash_mismatch",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UnsupportedAudio => "unsupported_audio",
            ErrorCode::Busy => "busy",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<FailureCode> for ErrorCode {
    /// A task stopped by a shutdown may be asked for again later: `not_ready`.
    fn from(code: FailureCode) -> Self {
        match code {
            FailureCode::UnsupportedAudio => ErrorCode::UnsupportedAudio,
            FailureCode::Stopped => ErrorCode::NotReady,
            FailureCode::Internal => ErrorCode::Internal,
        }
    }
}

impl From<TaskIdError> for ProtocolError {
    /// A malformed id names no session; a guessable one is an invalid message.
    fn from(e: TaskIdError) -> Self {
        let code = match e {
            TaskIdError::Malformed(_) => ErrorCode::SessionNotFound,
            TaskIdError::NotRandom => ErrorCode::InvalidMessage,
        };
        ProtocolError::new(code, e.to_string())
    }
}

/// A client-facing error: a code, a human message, and where known the task and chunk
/// it concerns. Turn it into a wire message with [`ProtocolError::to_message`].
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// Machine-readable reason; clients branch on this.
    pub code: ErrorCode,
    /// Human-readable reason, safe to show a user.
    pub message: String,
    /// The task the error concerns, so a client with several uploads knows which failed.
    pub task_id: Option<TaskId>,
    /// The chunk the error concerns, so a client can resend just that chunk.
    pub chunk_index: Option<u32>,
    /// For `busy`: how long the client should wait before retrying.
    pub retry_after_ms: Option<u64>,
}

impl ProtocolError {
    /// An error with a code and message and nothing else.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            task_id: None,
            chunk_index: None,
            retry_after_ms: None,
        }
    }

    /// Shorthand for `invalid_message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        ProtocolError::new(ErrorCode::InvalidMessage, message)
    }

    /// Attaches the task the error concerns.
    pub fn with_task(mut self, task_id: TaskId) -> Self {
        self.task_id = Some(task_id);
        self
    }

    /// Attaches the chunk the error concerns.
    pub fn with_chunk(mut self, chunk_index: u32) -> Self {
        self.chunk_index = Some(chunk_index);
        self
    }

    /// Attaches a retry hint (for `busy`).
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// The `error` message to send.
    pub fn to_message(&self) -> ServerMessage {
        ServerMessage::Error(ErrorData {
            code: self.code,
            message: self.message.clone(),
            task_id: self.task_id,
            chunk_index: self.chunk_index,
            retry_after_ms: self.retry_after_ms,
        })
    }
}

impl From<PlanError> for ProtocolError {
    fn from(e: PlanError) -> Self {
        let code = match e {
            PlanError::FileTooLarge { .. }
            | PlanError::ChunkTooLarge { .. }
            | PlanError::TooManyChunks { .. } => ErrorCode::TooLarge,
            PlanError::EmptyFile
            | PlanError::ZeroChunkSize
            | PlanError::InconsistentTotal { .. } => ErrorCode::InvalidMessage,
            PlanError::IndexOutOfRange { .. } | PlanError::WrongChunkLength { .. } => {
                ErrorCode::InvalidChunk
            }
        };
        let chunk = match e {
            PlanError::WrongChunkLength { index, .. } => Some(index),
            PlanError::IndexOutOfRange { index, .. } => u32::try_from(index).ok(),
            _ => None,
        };
        let mut err = ProtocolError::new(code, e.to_string());
        err.chunk_index = chunk;
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_snake_case_and_match_as_str() {
        for code in [
            ErrorCode::InvalidMessage,
            ErrorCode::UnknownType,
            ErrorCode::SessionNotFound,
            ErrorCode::InvalidChunk,
            ErrorCode::ChunkHashMismatch,
            ErrorCode::FileHashMismatch,
            ErrorCode::TooLarge,
            ErrorCode::QuotaExceeded,
            ErrorCode::UnsupportedAudio,
            ErrorCode::Busy,
            ErrorCode::Unauthorized,
            ErrorCode::NotReady,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn error_message_carries_optional_fields_only_when_set() {
        let e = ProtocolError::new(ErrorCode::Busy, "server busy").with_retry_after_ms(500);
        let v = serde_json::to_value(e.to_message()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["data"]["code"], "busy");
        assert_eq!(v["data"]["retry_after_ms"], 500);
        assert!(v["data"].get("task_id").is_none());
        assert!(v["data"].get("chunk_index").is_none());
    }

    #[test]
    fn plan_errors_map_to_codes() {
        let e: ProtocolError = PlanError::FileTooLarge { size: 2, max: 1 }.into();
        assert_eq!(e.code, ErrorCode::TooLarge);
        let e: ProtocolError = PlanError::WrongChunkLength {
            index: 4,
            expected: 1,
            got: 2,
        }
        .into();
        assert_eq!((e.code, e.chunk_index), (ErrorCode::InvalidChunk, Some(4)));
        let e: ProtocolError = PlanError::ZeroChunkSize.into();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
    }
}
