//! The wire protocol: what clients and the server say to each other, as types.
//!
//! - [`message`]: text frames `{"type": …, "data": {…}}` — the seed protocol (upload_request,
//!   upload_chunk, audio_segment, …) plus the live-stream and fast-path extensions.
//!   [`parse_client`] turns a text frame into a validated [`ClientMessage`].
//! - [`binary`]: the layout of binary frames (upload chunks with an xxh3 hash, live audio).
//! - [`error`]: [`ErrorCode`] and [`ProtocolError`], the client-facing errors.
//! - [`store`]: the upload store's inputs, answers and failures in wire terms (the store
//!   itself knows nothing of the protocol).
//!
//! Everything here is pure: no sockets, no tasks, no disk, no clock. The server owns the
//! connection and decides what to do with a parsed message; `docs/PROTOCOL.md` is the
//! contract for client authors.

pub mod binary;
pub mod error;
pub mod message;
pub mod store;

pub use binary::{BinaryError, BinaryFrame};
pub use error::{ErrorCode, ProtocolError};
pub use message::{parse_client, ClientMessage, ServerMessage};

use serde::{Deserialize, Serialize};

use crate::upload::plan::PlanLimits;

/// The version string sent in `connected`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds between the server's WebSocket pings (the seed document's `ping_interval=60`).
pub const PING_INTERVAL_SECS: u64 = 60;

/// Seconds without a pong before the server drops a connection (`ping_timeout=120`).
pub const PING_TIMEOUT_SECS: u64 = 120;

/// Most `missing` chunk indices one message carries; a client asks again (resume) for more.
pub use crate::upload::MAX_MISSING_LISTED;

/// Limits the server enforces, announced to clients in `connected` so they can size chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest WebSocket message (text or binary) the server reads; bigger ones close the
    /// connection with 1009. Default 10 MiB, as in the seed document.
    pub max_message_bytes: u64,
    /// Largest file an upload may announce.
    pub max_file_bytes: u64,
    /// Largest chunk (decoded bytes). Must leave room for base64 (4/3) and the JSON around it
    /// inside `max_message_bytes`.
    pub max_chunk_bytes: u64,
    /// Most chunks one upload may have; bounds per-upload bookkeeping.
    pub max_total_chunks: u32,
    /// How many chunks a fast-path client may have in flight before waiting for an ack.
    pub chunk_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        let plan = PlanLimits::default();
        Limits {
            max_message_bytes: 10 << 20,
            max_file_bytes: plan.max_file_bytes,
            max_chunk_bytes: plan.max_chunk_bytes,
            max_total_chunks: plan.max_total_chunks,
            chunk_window: 16,
        }
    }
}

impl Limits {
    /// The subset the chunk planner checks.
    pub fn plan_limits(&self) -> PlanLimits {
        PlanLimits {
            max_file_bytes: self.max_file_bytes,
            max_chunk_bytes: self.max_chunk_bytes,
            max_total_chunks: self.max_total_chunks,
        }
    }
}

/// Cuts `s` to at most `max` characters (adding `…`), for echoing client input in messages.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// Longest file name kept, in bytes.
const MAX_FILE_NAME_BYTES: usize = 200;

/// Reduces a client's `file_name` to a safe base name. Never fails: the name is only shown
/// back and used for its extension, never as a path.
///
/// Keeps the part after the last `/` or `\`, drops control characters and leading dots
/// (so `../../etc/passwd` → `passwd`, `.bashrc` → `bashrc`), caps the length, and falls
/// back to `upload` when nothing is left.
pub fn sanitize_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > MAX_FILE_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "upload".to_string()
    } else {
        out
    }
}

/// The lowercase extension of a (sanitised) file name if it is 1–10 ASCII alphanumerics,
/// e.g. `mp3`; used as the decoder's format hint and in the stored file's name.
pub fn file_extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    let ok = !stem.is_empty()
        && (1..=10).contains(&ext.len())
        && ext.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| ext.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;

    #[test]
    fn bad_task_ids_are_unknown_sessions_and_guessable_ones_invalid() {
        let e = ProtocolError::from(TaskId::parse("../../etc/passwd").unwrap_err());
        assert_eq!(e.code, ErrorCode::SessionNotFound);
        let zeros = "00000000-0000-0000-0000-000000000000";
        let e = ProtocolError::from(TaskId::parse_chosen(zeros).unwrap_err());
        assert_eq!(e.code, ErrorCode::InvalidMessage);
    }

    #[test]
    fn file_names_lose_their_paths() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\win.ini"), "win.ini");
        assert_eq!(sanitize_file_name("/abs/path/talk.mp3"), "talk.mp3");
        assert_eq!(sanitize_file_name(".."), "upload");
        assert_eq!(sanitize_file_name(""), "upload");
        assert_eq!(sanitize_file_name("dir/"), "upload");
        assert_eq!(sanitize_file_name(".hidden.wav"), "hidden.wav");
        assert_eq!(sanitize_file_name("a\u{0}b\nc.ogg"), "abc.ogg");
        assert_eq!(sanitize_file_name("会议录音.m4a"), "会议录音.m4a");
        let long = "é".repeat(500);
        let s = sanitize_file_name(&long);
        assert!(s.len() <= MAX_FILE_NAME_BYTES && !s.is_empty());
    }

    #[test]
    fn extensions_are_short_alphanumeric_lowercase() {
        assert_eq!(file_extension("talk.MP3").as_deref(), Some("mp3"));
        assert_eq!(file_extension("a.tar.gz").as_deref(), Some("gz"));
        assert_eq!(file_extension("noext"), None);
        assert_eq!(file_extension("x.we/ird"), None);
        assert_eq!(file_extension("x.toolongextension"), None);
        assert_eq!(file_extension("x."), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("日本語テキスト", 3), "日本語…");
    }

    #[test]
    fn default_limits_leave_room_for_base64_chunks() {
        let l = Limits::default();
        assert!(l.max_chunk_bytes.div_ceil(3) * 4 + 4096 <= l.max_message_bytes);
    }
}
