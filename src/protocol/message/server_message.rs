//! Server → client messages: [`ServerMessage`] and the payloads it is built from.
//!
//! Plain serde structs; a message serialises as `{"type": "<snake_case name>", "data": {…}}`
//! and also deserialises, for clients and tests. Optional fields are left out when absent,
//! so seed clients see exactly the seed's messages.
//!
//! This module must NOT decide what to send or when (the session does), do I/O, or carry
//! internal detail such as paths or OS errors: every string here reaches a client.

use serde::{Deserialize, Serialize};

use crate::audio::Truncation;
use crate::domain::TaskId;
use crate::protocol::error::ErrorCode;
use crate::protocol::Limits;
use crate::transcript::Segment;

/// A message from the server. Serialises as `{"type": "<snake_case name>", "data": {…}}`.
/// It also deserialises, for test clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on every connection.
    Connected(Connected),
    /// Answer to `upload_request` and `upload_resume`.
    UploadReady(UploadReady),
    /// Per-chunk ack on the JSON path.
    ChunkReceived(ChunkReceived),
    /// Cumulative ack on the binary fast path.
    ChunkAck(ChunkAck),
    /// Every chunk stored and the file verified; transcription follows.
    UploadComplete(UploadComplete),
    /// How far transcription of a task has got.
    TranscriptionProgress(TranscriptionProgress),
    /// One finished segment, as soon as it is known.
    TranscriptSegment(TranscriptSegment),
    /// Live: the current guess for the not-yet-final text; replaces the previous revision.
    TranscriptPartial(TranscriptPartial),
    /// The whole result of a task.
    TranscriptionComplete(TranscriptionComplete),
    /// Answer to `stream_start`.
    StreamStarted(StreamStarted),
    /// Live: the server is falling behind real time.
    StreamLag(StreamLag),
    /// Something went wrong; see `code`.
    Error(ErrorData),
    /// The server is going down; the connection closes with 1001 next.
    ServerShutdown(ServerShutdown),
}

impl ServerMessage {
    /// The JSON text frame for this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            // Unreachable with these types (no maps with non-string keys); stay on the wire anyway.
            r#"{"type":"error","data":{"code":"internal","message":"internal error"}}"#.to_string()
        })
    }
}

/// `connected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connected {
    /// Id of this connection, for the client's logs and support requests.
    pub connection_id: String,
    /// Human greeting.
    pub message: String,
    /// Earshot version, so clients can adapt.
    pub server_version: String,
    /// Name of the default model, so clients know what quality/languages to expect.
    pub model: String,
    /// Every model a request may name (`model`), the default first.
    #[serde(default)]
    pub models: Vec<String>,
    /// Limits the client must respect.
    pub limits: Limits,
}

/// `upload_ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadReady {
    /// The upload's id; every later message about it carries it.
    pub task_id: TaskId,
    /// Human text.
    pub message: String,
    /// Fast path: how many chunks may be in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_window: Option<u32>,
    /// On resume: chunks still to send (at most `MAX_MISSING_LISTED`, lowest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_chunks: Option<Vec<u32>>,
    /// On resume: how many chunks the server already holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_chunks: Option<u32>,
    /// On resume: the plan's chunk count, so the client can check it resumes the right file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_chunks: Option<u32>,
    /// On resume: `true` when the upload has no whole-file hash yet (a binary upload that had
    /// not sent `upload_finish`), so the client must send one after the chunks, whatever
    /// transport it resumes with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_hash: Option<bool>,
}

/// Status of a chunk that did not add anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkStatus {
    /// The chunk was already stored.
    Duplicate,
}

/// `chunk_received`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkReceived {
    /// Which upload.
    pub task_id: TaskId,
    /// Which chunk is now durably stored.
    pub chunk_index: u32,
    /// Share of chunks stored, 0–100 (absent for duplicates, as in the seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// `duplicate` when the chunk was already stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ChunkStatus>,
}

impl ChunkReceived {
    /// Ack for a newly stored chunk.
    pub fn stored(task_id: TaskId, chunk_index: u32, progress: f64) -> Self {
        ChunkReceived {
            task_id,
            chunk_index,
            progress: Some(progress),
            status: None,
        }
    }

    /// Ack for a chunk that was already stored.
    pub fn duplicate(task_id: TaskId, chunk_index: u32) -> Self {
        ChunkReceived {
            task_id,
            chunk_index,
            progress: None,
            status: Some(ChunkStatus::Duplicate),
        }
    }
}

/// `chunk_ack` (fast path): cumulative and pipelined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkAck {
    /// Which upload.
    pub task_id: TaskId,
    /// Every chunk index below this is durably stored.
    pub received_through: u32,
    /// Chunks durably stored in total (may include some above `received_through`).
    pub received_chunks: u32,
    /// Share of chunks stored, 0–100.
    pub progress: f64,
    /// Gaps below the highest stored chunk, when there are any (capped), so the client
    /// resends them without waiting for a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<u32>>,
}

/// `upload_complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadComplete {
    /// Which upload.
    pub task_id: TaskId,
    /// Human text.
    pub message: String,
}

/// `transcription_progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionProgress {
    /// Which task.
    pub task_id: TaskId,
    /// 0–100.
    pub progress: f64,
}

/// `transcript_segment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptSegment {
    /// Which task.
    pub task_id: TaskId,
    /// 0-based position of the segment in the task's timeline.
    pub index: u32,
    /// Seconds from the start of the audio.
    pub start: f64,
    /// Seconds from the start of the audio.
    pub end: f64,
    /// The segment's text.
    pub text: String,
}

/// `transcript_partial`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptPartial {
    /// Which stream.
    pub task_id: TaskId,
    /// The unstable tail of the transcript as currently heard.
    pub text: String,
    /// Increases with every partial of this stream; a client shows only the newest.
    pub revision: u64,
}

/// `transcription_complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionComplete {
    /// Which task.
    pub task_id: TaskId,
    /// The whole text.
    pub text: String,
    /// Every segment with timing.
    pub segments: Vec<Segment>,
    /// Detected or requested language code.
    pub language: String,
    /// Whisper's probability (0–1) for the language it detected; absent when the client
    /// named the language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_probability: Option<f32>,
    /// Seconds of audio.
    pub duration: f64,
    /// Wall-clock seconds the server spent, for the client's curiosity.
    pub processing_seconds: f64,
    /// The text rendered in the format the client asked for (`format`), when it asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted: Option<String>,
    /// Present when the file ended before the duration it declares: the text covers only
    /// `decoded_seconds` of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
    /// True for a live stream whose connection dropped without `stream_end` and that was not
    /// resumed in time: the text is what the server had received by then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// `stream_started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStarted {
    /// The stream's id (the client's or a new one).
    pub task_id: TaskId,
    /// True when the stream was resumed (`stream_start` with `resume`); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// On a resume: audio bytes (binary frame payloads) the stream has taken in since it
    /// started. The client sends its audio on from this byte offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_bytes: Option<u64>,
    /// On a resume: segments committed so far; those from the client's `next_index` on follow
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<usize>,
}

/// `stream_lag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamLag {
    /// Which stream.
    pub task_id: TaskId,
    /// Seconds of received audio not yet transcribed.
    pub behind_seconds: f64,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorData {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// The task concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The chunk concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<u32>,
    /// For `busy`: when to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `server_shutdown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerShutdown {
    /// Human text (e.g. "server restarting; resume uploads after reconnecting").
    pub message: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::ProtocolError;

    const ID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    #[test]
    fn server_messages_serialise_as_type_and_data() {
        let id = TaskId::parse(ID).unwrap();
        let m = ServerMessage::ChunkReceived(ChunkReceived::stored(id, 4, 50.0));
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type": "chunk_received", "data": {"task_id": ID, "chunk_index": 4, "progress": 50.0}})
        );
        let m = ServerMessage::ChunkReceived(ChunkReceived::duplicate(id, 4));
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type": "chunk_received", "data": {"task_id": ID, "chunk_index": 4, "status": "duplicate"}})
        );
        let m = ServerMessage::UploadReady(UploadReady {
            task_id: id,
            message: "ready".into(),
            chunk_window: None,
            missing_chunks: Some(vec![1, 2]),
            received_chunks: Some(1),
            total_chunks: Some(3),
            awaiting_hash: None,
        });
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["type"], "upload_ready");
        assert_eq!(v["data"]["missing_chunks"], json!([1, 2]));
        assert!(v["data"].get("chunk_window").is_none());
        let m = ServerMessage::Connected(Connected {
            connection_id: "c1".into(),
            message: "hi".into(),
            server_version: crate::protocol::SERVER_VERSION.into(),
            model: "tiny.en".into(),
            models: vec!["tiny.en".into()],
            limits: Limits::default(),
        });
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["data"]["limits"]["max_message_bytes"], 10 << 20);
    }

    #[test]
    fn a_truncated_result_says_so_and_a_complete_one_does_not() {
        let complete = TranscriptionComplete {
            task_id: TaskId::parse(ID).unwrap(),
            text: "hello".into(),
            segments: vec![],
            language: "en".into(),
            language_probability: None,
            duration: 5.5,
            processing_seconds: 0.2,
            formatted: None,
            truncated: None,
            interrupted: false,
        };
        let cut = TranscriptionComplete {
            truncated: crate::audio::Truncation::detect(5.5, Some(11.0)),
            ..complete.clone()
        };
        let v = serde_json::to_value(ServerMessage::TranscriptionComplete(cut.clone())).unwrap();
        assert_eq!(
            v["data"]["truncated"],
            json!({"decoded_seconds": 5.5, "declared_seconds": 11.0})
        );
        let back: ServerMessage = serde_json::from_value(v).unwrap();
        assert_eq!(back, ServerMessage::TranscriptionComplete(cut));
        let v = serde_json::to_value(ServerMessage::TranscriptionComplete(complete)).unwrap();
        assert!(v["data"].get("truncated").is_none(), "{v}");
        assert!(v["data"].get("language_probability").is_none(), "{v}");
    }

    #[test]
    fn every_server_message_round_trips() {
        let id = TaskId::new_v4();
        let seg = Segment {
            start: 0.0,
            end: 1.5,
            text: "hello".into(),
            no_speech_prob: 0.01,
            tokens: None,
        };
        let all = vec![
            ServerMessage::ChunkAck(ChunkAck {
                task_id: id,
                received_through: 3,
                received_chunks: 5,
                progress: 50.0,
                missing: Some(vec![3]),
            }),
            ServerMessage::UploadComplete(UploadComplete {
                task_id: id,
                message: "ok".into(),
            }),
            ServerMessage::TranscriptionProgress(TranscriptionProgress {
                task_id: id,
                progress: 12.5,
            }),
            ServerMessage::TranscriptSegment(TranscriptSegment {
                task_id: id,
                index: 0,
                start: 0.0,
                end: 1.5,
                text: "hello".into(),
            }),
            ServerMessage::TranscriptPartial(TranscriptPartial {
                task_id: id,
                text: "hel".into(),
                revision: 7,
            }),
            ServerMessage::TranscriptionComplete(TranscriptionComplete {
                task_id: id,
                text: "hello".into(),
                segments: vec![seg],
                language: "en".into(),
                language_probability: Some(0.97),
                duration: 1.5,
                processing_seconds: 0.2,
                formatted: None,
                truncated: None,
                interrupted: true,
            }),
            ServerMessage::StreamStarted(StreamStarted {
                task_id: id,
                resumed: true,
                received_bytes: Some(64_000),
                segments: Some(3),
            }),
            ServerMessage::StreamLag(StreamLag {
                task_id: id,
                behind_seconds: 3.0,
            }),
            ProtocolError::new(ErrorCode::Busy, "busy")
                .with_task(id)
                .with_retry_after_ms(100)
                .to_message(),
            ServerMessage::ServerShutdown(ServerShutdown {
                message: "bye".into(),
            }),
        ];
        let names = [
            "chunk_ack",
            "upload_complete",
            "transcription_progress",
            "transcript_segment",
            "transcript_partial",
            "transcription_complete",
            "stream_started",
            "stream_lag",
            "error",
            "server_shutdown",
        ];
        for (m, name) in all.into_iter().zip(names) {
            let text = m.to_json();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], name);
            assert!(v["data"].is_object());
            let back: ServerMessage = serde_json::from_str(&text).unwrap();
            assert_eq!(back, m);
        }
    }
}
