//! The validated client → server messages: [`ClientMessage`] and the parts it is built from.
//!
//! A value of these types has passed every check that needs no session: ids parsed, hashes
//! decoded and verified, base64 decoded, plans consistent, names sanitised. Only
//! [`parse_client`](super::parse_client) builds them from a frame, so holding one means
//! those checks passed.
//!
//! This module must NOT parse frames or know the wire's JSON shapes (that is `wire`), do
//! I/O, or know about sessions: whether a chunk index fits *that* upload's plan is the
//! caller's check.

use serde::{Deserialize, Serialize};

use crate::domain::TaskId;
use crate::upload::digest::FileHashes;
use crate::upload::plan::ChunkPlan;

/// A validated message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Start an upload (chunked, or single with the whole file inline).
    UploadRequest(UploadRequest),
    /// One chunk of a chunked upload sent as JSON + base64 (the seed path).
    UploadChunk(UploadChunk),
    /// The whole-file hash of a binary upload that did not declare it up front, sent after
    /// the last chunk so the client can hash while it sends.
    UploadFinish(UploadFinish),
    /// Ask which chunks of an interrupted upload are still missing.
    UploadResume(TaskRef),
    /// Ask for the result of a finished (or running) task.
    GetResult(TaskRef),
    /// A piece of already-decoded audio (f32le, 16 kHz, mono) for a client-chosen task.
    AudioSegment(AudioSegment),
    /// Open a live stream; binary audio frames follow.
    StreamStart(StreamStart),
    /// Close a live stream; the server finishes and sends `transcription_complete`.
    StreamEnd(StreamEnd),
}

impl ClientMessage {
    /// The wire name of this message's type, for logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::UploadRequest(_) => "upload_request",
            ClientMessage::UploadChunk(_) => "upload_chunk",
            ClientMessage::UploadFinish(_) => "upload_finish",
            ClientMessage::UploadResume(_) => "upload_resume",
            ClientMessage::GetResult(_) => "get_result",
            ClientMessage::AudioSegment(_) => "audio_segment",
            ClientMessage::StreamStart(_) => "stream_start",
            ClientMessage::StreamEnd(_) => "stream_end",
        }
    }
}

/// A validated `upload_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRequest {
    /// The client's file name reduced to a safe base name; shown back, never used as a path.
    pub file_name: String,
    /// Lowercase extension of `file_name` (e.g. `mp3`) when it has a plausible one; the
    /// decoder's format hint and the stored file's suffix.
    pub extension: Option<String>,
    /// How the file is cut into chunks (a single upload is one chunk of `file_size`).
    pub plan: ChunkPlan,
    /// Expected whole-file hashes: MD5 (`file_hash` on the wire, as in the seed), SHA-256,
    /// BLAKE3. None at all for a binary upload that sends them in `upload_finish`.
    pub hashes: FileHashes,
    /// Chunked, or single with the whole file inline.
    pub mode: UploadMode,
    /// How the chunks will travel: JSON messages (seed) or binary frames (fast path).
    pub transport: Transport,
    /// How to transcribe once the upload is complete.
    pub options: TaskOptions,
}

/// How the file's bytes arrive.
#[derive(Clone, PartialEq)]
pub enum UploadMode {
    /// In `upload_chunk` messages or binary chunk frames.
    Chunked,
    /// Inline in the request (`file_data`), already base64-decoded; its length equals `file_size`.
    Single {
        /// The whole file.
        data: Vec<u8>,
    },
}

impl std::fmt::Debug for UploadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadMode::Chunked => f.write_str("Chunked"),
            UploadMode::Single { data } => write!(f, "Single({} bytes)", data.len()),
        }
    }
}

/// How upload chunks travel (`transport`); the upload store keeps it with the upload.
pub use crate::upload::Transport;

/// Transcription options a client may attach to an upload or a stream.
pub use crate::domain::TaskOptions;

/// A validated `upload_chunk`: the bytes are decoded and their MD5 already verified.
#[derive(Clone, PartialEq)]
pub struct UploadChunk {
    /// Which upload.
    pub task_id: TaskId,
    /// Which chunk; its range against the session's plan is the caller's check.
    pub chunk_index: u32,
    /// The chunk's bytes (decoded from base64, MD5-verified).
    pub data: Vec<u8>,
    /// The client's "this is the last chunk" flag; informational only — an upload is
    /// complete when every chunk is stored, whatever order they came in.
    pub is_last: bool,
}

impl std::fmt::Debug for UploadChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadChunk")
            .field("task_id", &self.task_id)
            .field("chunk_index", &self.chunk_index)
            .field("len", &self.data.len())
            .field("is_last", &self.is_last)
            .finish()
    }
}

/// A message that names only a task (`upload_resume`, `get_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    /// The task asked about.
    pub task_id: TaskId,
}

/// A validated `upload_finish`.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadFinish {
    /// The upload.
    pub task_id: TaskId,
    /// The whole-file hashes (at least one).
    pub hashes: FileHashes,
}

/// A validated `audio_segment`.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSegment {
    /// The client-chosen task this audio belongs to (a UUID, as in the seed client).
    pub task_id: TaskId,
    /// Order of this segment within the task; lets the server detect gaps and repeats.
    pub segment_index: u32,
    /// The client's stated duration in seconds (informational; the samples are the truth).
    pub segment_duration: Option<f64>,
    /// Last segment of the task: transcribe and send `transcription_complete`.
    pub is_final: bool,
    /// 16 kHz mono samples, sanitised: NaN replaced by 0, the rest clamped to [-1, 1].
    pub samples: Vec<f32>,
}

/// Audio formats a live stream may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioFormat {
    /// Raw signed 16-bit little-endian PCM, interleaved.
    PcmS16le,
    /// Raw 32-bit float little-endian PCM, interleaved.
    PcmF32le,
    /// WAV container.
    Wav,
    /// WebM (Matroska) container, usually Opus (browsers' MediaRecorder).
    Webm,
    /// Ogg container (Opus or Vorbis).
    Ogg,
    /// MP3 frames.
    Mp3,
    /// FLAC.
    Flac,
}

impl AudioFormat {
    /// All formats, for messages listing what is accepted.
    pub const ALL: [AudioFormat; 7] = [
        AudioFormat::PcmS16le,
        AudioFormat::PcmF32le,
        AudioFormat::Wav,
        AudioFormat::Webm,
        AudioFormat::Ogg,
        AudioFormat::Mp3,
        AudioFormat::Flac,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioFormat::PcmS16le => "pcm_s16le",
            AudioFormat::PcmF32le => "pcm_f32le",
            AudioFormat::Wav => "wav",
            AudioFormat::Webm => "webm",
            AudioFormat::Ogg => "ogg",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Flac => "flac",
        }
    }

    /// Whether this is headerless PCM (needs `sample_rate`/`channels` from the client).
    pub fn is_raw_pcm(self) -> bool {
        matches!(self, AudioFormat::PcmS16le | AudioFormat::PcmF32le)
    }

    /// The decoder's extension hint for container formats (`None` for raw PCM).
    pub fn extension_hint(self) -> Option<&'static str> {
        match self {
            AudioFormat::PcmS16le | AudioFormat::PcmF32le => None,
            AudioFormat::Webm => Some("webm"),
            other => Some(other.as_str()),
        }
    }

    /// The format named `s` (any case), if it is one of [`AudioFormat::ALL`].
    pub(super) fn parse(s: &str) -> Option<AudioFormat> {
        let s = s.to_ascii_lowercase();
        AudioFormat::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// A validated `stream_start`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStart {
    /// A client-chosen id; `None` lets the server pick one (returned in `stream_started`).
    pub task_id: Option<TaskId>,
    /// Format of the binary audio frames that follow.
    pub format: AudioFormat,
    /// Sample rate of raw PCM (8 000–192 000 Hz); containers carry their own.
    pub sample_rate: u32,
    /// Interleaved channels of raw PCM (1–8); down-mixed to mono by the server.
    pub channels: u16,
    /// Language and translation wishes.
    pub options: TaskOptions,
    /// `Some` to continue the interrupted stream `task_id` instead of starting one.
    pub resume: Option<ResumeFrom>,
}

/// What a resuming client already has (docs/PROTOCOL.md §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The index of the first segment the client has not received; the server sends the
    /// stream's committed segments from there on again.
    pub next_index: usize,
}

/// A validated `stream_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    /// The stream to end; `None` means the connection's only open stream.
    pub task_id: Option<TaskId>,
}
