//! WebSocket clients for an Earshot server, usable from the CLI, tests and benchmarks.
//!
//! - [`upload`]: send a file (binary fast path or the seed's JSON chunks), survive dropped
//!   connections by resuming, and follow the transcription to its result.
//! - [`stream`]: send audio as a live stream and receive partials and final segments.
//! - [`backoff`]: the reconnect delays (exponential, capped, jittered).
//! - [`digest`]: MD5 and SHA-256 of a file in one streaming pass.
//!
//! The library reports through callbacks and typed [`ClientError`]s; it must NOT print,
//! draw progress bars or exit — that is the CLI's job (`src/cli/upload.rs`, `src/cli/stream.rs`).

pub mod backoff;
mod conn;
pub mod digest;
pub mod stream;
pub mod upload;

use std::path::PathBuf;

use thiserror::Error;

use crate::protocol::message::ErrorData;
use crate::protocol::ErrorCode;

pub use conn::DEFAULT_IDLE_TIMEOUT;

/// Why a client operation failed. [`ClientError::is_retryable`] says whether reconnecting
/// may help.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The TCP connection or the WebSocket handshake failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What went wrong (refused, DNS, bad handshake …).
        reason: String,
    },
    /// An established connection broke (reset, EOF, the server going down).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The server closed the connection with a close code.
    #[error("the server closed the connection (code {code}{})", reason_suffix(.reason))]
    Closed {
        /// RFC 6455 close code (1000 normal, 1001 going away, 1008 policy, 1009 too big …).
        code: u16,
        /// The server's short reason, possibly empty.
        reason: String,
    },
    /// Nothing arrived from the server (not even a ping) for too long.
    #[error("no answer from the server for {0} s")]
    Timeout(u64),
    /// The server answered with an `error` message.
    #[error("server error `{code}`: {message}")]
    Server {
        /// The machine-readable code.
        code: ErrorCode,
        /// The server's human message.
        message: String,
        /// For `busy`: how long the server asks us to wait.
        retry_after_ms: Option<u64>,
    },
    /// The server transcribed nothing: the task failed on its side (bad audio, …).
    #[error("transcription failed (`{code}`): {message}")]
    TranscriptionFailed {
        /// The recorded failure code.
        code: ErrorCode,
        /// The server's human message.
        message: String,
    },
    /// The server said something that does not fit the protocol at this point.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Reading the local file failed.
    #[error("{}: {reason}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error, in words.
        reason: String,
    },
    /// The local audio could not be decoded (stream client).
    #[error("cannot decode {}: {source}", .path.display())]
    Audio {
        /// The file.
        path: PathBuf,
        /// The decoder's reason.
        source: crate::audio::DecodeError,
    },
    /// The options cannot work with this file or this server (e.g. chunk size over its limit).
    #[error("{0}")]
    InvalidOptions(String),
    /// Every reconnect attempt failed.
    #[error("gave up after {attempts} attempts{}; last error: {last}", resumable(.task_id))]
    GaveUp {
        /// Attempts made (the first connection included).
        attempts: u32,
        /// The upload, when the server had accepted it: it can be resumed later.
        task_id: Option<crate::domain::TaskId>,
        /// The error of the last attempt.
        last: Box<ClientError>,
    },
}

fn resumable(task_id: &Option<crate::domain::TaskId>) -> String {
    match task_id {
        Some(id) => format!(" (the server keeps upload {id}; it can be resumed)"),
        None => String::new(),
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl ClientError {
    /// Whether a new connection may succeed where this one failed: network trouble, a busy or
    /// restarting server, a server fault. Errors in the request itself are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionLost(_)
            | ClientError::Timeout(_) => true,
            // 1008: refused by policy (auth, abuse); 1009: our message was too big. Both repeat.
            ClientError::Closed { code, .. } => !matches!(code, 1008 | 1009),
            ClientError::Server { code, .. } => {
                matches!(code, ErrorCode::Busy | ErrorCode::Internal)
            }
            _ => false,
        }
    }

    /// How long the server asked us to wait before retrying, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Server {
                retry_after_ms: Some(ms),
                ..
            } => Some(std::time::Duration::from_millis(*ms)),
            _ => None,
        }
    }

    /// An `error` message from the server.
    pub fn from_server(e: ErrorData) -> Self {
        ClientError::Server {
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }
    }

    fn file(path: &std::path::Path, err: std::io::Error) -> Self {
        ClientError::File {
            path: path.to_path_buf(),
            reason: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_trouble_is_retryable_and_bad_requests_are_not() {
        assert!(ClientError::ConnectionLost("reset".into()).is_retryable());
        assert!(ClientError::Timeout(120).is_retryable());
        let busy = ClientError::Server {
            code: ErrorCode::Busy,
            message: "busy".into(),
            retry_after_ms: Some(2000),
        };
        assert!(busy.is_retryable());
        assert_eq!(
            busy.retry_after(),
            Some(std::time::Duration::from_millis(2000))
        );
        let bad = ClientError::Server {
            code: ErrorCode::InvalidMessage,
            message: "field `x`".into(),
            retry_after_ms: None,
        };
        assert!(!bad.is_retryable());
        assert!(ClientError::Closed {
            code: 1001,
            reason: String::new()
        }
        .is_retryable());
        assert!(!ClientError::Closed {
            code: 1008,
            reason: "unauthorized".into()
        }
        .is_retryable());
        assert!(!ClientError::TranscriptionFailed {
            code: ErrorCode::Internal,
            message: "x".into()
        }
        .is_retryable());
    }

    #[test]
    fn messages_are_one_line() {
        let e = ClientError::GaveUp {
            attempts: 9,
            task_id: None,
            last: Box::new(ClientError::Connect {
                url: "ws://127.0.0.1:1/".into(),
                reason: "connection refused".into(),
            }),
        };
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("9 attempts") && text.contains("connection refused"));
        let closed = ClientError::Closed {
            code: 1009,
            reason: "message too big".into(),
        };
        assert_eq!(
            closed.to_string(),
            "the server closed the connection (code 1009: message too big)"
        );
    }
}
