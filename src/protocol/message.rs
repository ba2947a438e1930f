//! Text-frame messages: `{"type": "<name>", "data": {…}}` in both directions.
//!
//! Client → server messages are parsed in two steps: a private *wire* struct that mirrors
//! the JSON (so serde names missing or mistyped fields), then validation into the public
//! types below, whose values are already checked (ids parsed, hashes decoded and verified,
//! base64 decoded, plans consistent, names sanitised). Server → client messages are plain
//! serde structs.
//!
//! This module must NOT do I/O, hold session state or know about sessions: checks that need
//! a session (is the chunk index inside *that* upload's plan?) belong to the caller.

use base64::Engine as _;
use md5::{Digest, Md5};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{ErrorCode, ProtocolError};
use super::{file_extension, sanitize_file_name, truncate, Limits, TaskId};
use crate::audio::Truncation;
use crate::transcript::Segment;
use crate::upload::digest::FileHashes;
use crate::upload::plan::ChunkPlan;

// ---------------------------------------------------------------------------------------
// Client → server: public, validated types
// ---------------------------------------------------------------------------------------

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

/// Transcription options a client may attach to an upload or a stream. Stored with an
/// upload so a resumed upload is transcribed as first asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Spoken language code (`en`, `zh`, …); `None` lets the model detect it (`"auto"`).
    pub language: Option<String>,
    /// Translate to English instead of transcribing.
    pub translate: bool,
    /// Output format the client wants the final text rendered in (`txt`, `srt`, `vtt`,
    /// `json`, `verbose_json`); `None` = plain `transcription_complete` only.
    pub format: Option<String>,
}

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

    fn parse(s: &str) -> Option<AudioFormat> {
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
}

/// A validated `stream_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    /// The stream to end; `None` means the connection's only open stream.
    pub task_id: Option<TaskId>,
}

// ---------------------------------------------------------------------------------------
// Client → server: wire structs and parsing
// ---------------------------------------------------------------------------------------

/// The outer `{"type", "data"}` object; `data` stays raw until `type` picks its struct.
#[derive(Deserialize)]
struct Envelope<'a> {
    /// Message name; selects the wire struct.
    #[serde(rename = "type")]
    kind: String,
    /// The message's fields, borrowed unparsed so a large chunk is not copied twice.
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `upload_mode` as sent.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WireUploadMode {
    Chunked,
    Single,
}

// The wire structs below mirror the JSON field for field (see docs/PROTOCOL.md); `Option`
// marks a field the client may omit. Validation turns them into the public types above.

/// `upload_request` as sent.
#[derive(Deserialize)]
struct WireUploadRequest {
    /// Client's name for the file (sanitised before use).
    file_name: String,
    /// Total bytes.
    file_size: u64,
    /// MD5 hex of the whole file (seed name).
    file_hash: Option<String>,
    /// Bytes per chunk (chunked mode).
    chunk_size: Option<u64>,
    /// Number of chunks (chunked mode); checked against the other two.
    total_chunks: Option<u64>,
    /// Chunked or single; absent means single, as in the seed server.
    upload_mode: Option<WireUploadMode>,
    /// Whole file, base64 (single mode).
    file_data: Option<String>,
    /// JSON or binary chunks (fast path).
    transport: Option<Transport>,
    /// SHA-256 hex of the whole file (fast path).
    file_sha256: Option<String>,
    /// BLAKE3 hex of the whole file (fast path).
    file_blake3: Option<String>,
    /// Spoken language or "auto".
    language: Option<String>,
    /// Translate to English.
    translate: Option<bool>,
    /// Output format of the result.
    format: Option<String>,
}

/// `upload_chunk` as sent.
#[derive(Deserialize)]
struct WireUploadChunk {
    /// Which upload.
    task_id: String,
    /// Which chunk; u32 so negative or huge values fail with the field named.
    chunk_index: u32,
    /// Decoded length the client claims; checked against the data.
    chunk_size: Option<u64>,
    /// MD5 hex of the chunk.
    chunk_hash: String,
    /// The chunk, base64.
    chunk_data: String,
    /// Client's last-chunk flag.
    is_last: Option<bool>,
}

/// `upload_finish` as sent.
#[derive(Deserialize)]
struct WireUploadFinish {
    /// Which upload.
    task_id: String,
    /// MD5 hex of the whole file.
    file_hash: Option<String>,
    /// SHA-256 hex of the whole file.
    file_sha256: Option<String>,
    /// BLAKE3 hex of the whole file.
    file_blake3: Option<String>,
}

/// `upload_resume` / `get_result` as sent.
#[derive(Deserialize)]
struct WireTaskRef {
    /// The task asked about.
    task_id: String,
}

/// `audio_segment` as sent.
#[derive(Deserialize)]
struct WireAudioSegment {
    /// Client-chosen task id.
    task_id: String,
    /// Order within the task.
    segment_index: u32,
    /// Client's stated seconds.
    segment_duration: Option<f64>,
    /// Last segment of the task.
    is_final: Option<bool>,
    /// f32le samples, base64.
    audio_data: String,
}

/// `stream_start` as sent.
#[derive(Deserialize)]
struct WireStreamStart {
    /// Client-chosen stream id.
    task_id: Option<String>,
    /// Audio format name.
    format: Option<String>,
    /// Raw PCM sample rate.
    sample_rate: Option<u32>,
    /// Raw PCM channel count.
    channels: Option<u16>,
    /// Spoken language or "auto".
    language: Option<String>,
    /// Translate to English.
    translate: Option<bool>,
}

/// `stream_end` as sent.
#[derive(Deserialize)]
struct WireStreamEnd {
    /// Which stream; absent = the only one.
    task_id: Option<String>,
}

/// Output formats a client may ask for in `format`.
pub const OUTPUT_FORMATS: [&str; 5] = ["txt", "srt", "vtt", "json", "verbose_json"];

/// Longest `type` echoed back in an `unknown_type` error.
const MAX_ECHOED_TYPE: usize = 40;

/// Parses and validates one text frame from a client.
///
/// Errors: not JSON / not an object / no string `type` → `invalid_message`; an unknown
/// `type` → `unknown_type` (naming it); a missing or mistyped field → `invalid_message`
/// naming the field; bad values → `invalid_message`, `too_large`, `session_not_found`
/// (malformed task id), `chunk_hash_mismatch`, `invalid_chunk` or `unsupported_audio`.
/// Never panics.
pub fn parse_client(text: &str, limits: &Limits) -> Result<ClientMessage, ProtocolError> {
    let envelope = parse_envelope(text)?;
    let data = envelope.data.map_or("{}", RawValue::get);
    match envelope.kind.as_str() {
        "upload_request" => validate_upload_request(fields(data)?, limits),
        "upload_chunk" => validate_upload_chunk(fields(data)?, limits),
        "upload_finish" => validate_upload_finish(fields(data)?),
        "upload_resume" => Ok(ClientMessage::UploadResume(task_ref(fields(data)?)?)),
        "get_result" => Ok(ClientMessage::GetResult(task_ref(fields(data)?)?)),
        "audio_segment" => validate_audio_segment(fields(data)?, limits),
        "stream_start" => validate_stream_start(fields(data)?),
        "stream_end" => {
            let wire: WireStreamEnd = fields(data)?;
            let task_id = wire.task_id.as_deref().map(TaskId::parse).transpose()?;
            Ok(ClientMessage::StreamEnd(StreamEnd { task_id }))
        }
        other => Err(ProtocolError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown message type {:?}",
                truncate(other, MAX_ECHOED_TYPE)
            ),
        )),
    }
}

fn parse_envelope(text: &str) -> Result<Envelope<'_>, ProtocolError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let envelope: Envelope<'_> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            ProtocolError::invalid("message is not valid JSON")
        } else if e.path().to_string() == "type" {
            ProtocolError::invalid("field `type` must be a string")
        } else if e.inner().to_string().starts_with("missing field") {
            ProtocolError::invalid(clean_serde_message(&e.inner().to_string()))
        } else {
            ProtocolError::invalid("message must be a JSON object {\"type\": …, \"data\": {…}}")
        }
    })?;
    de.end()
        .map_err(|_| ProtocolError::invalid("message is not valid JSON"))?;
    Ok(envelope)
}

/// Deserialises `data` into a wire struct, naming the offending field on error.
fn fields<T: DeserializeOwned>(data: &str) -> Result<T, ProtocolError> {
    let mut de = serde_json::Deserializer::from_str(data);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let msg = clean_serde_message(&e.inner().to_string());
        if path.is_empty() || path == "." {
            ProtocolError::invalid(format!("invalid `data`: {msg}"))
        } else {
            ProtocolError::invalid(format!("field `{path}`: {msg}"))
        }
    })
}

/// serde_json's text without its " at line L column C" suffix, cut to a sane length
/// (it can quote the offending value).
fn clean_serde_message(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    truncate(msg, 160)
}

/// Parses the optional whole-file hashes into lowercase hex.
fn file_hashes(
    md5: &Option<String>,
    sha256: &Option<String>,
    blake3: &Option<String>,
) -> Result<FileHashes, ProtocolError> {
    let md5 = match md5 {
        Some(h) => Some(hex::encode(parse_digest::<16>(h, "file_hash")?)),
        None => None,
    };
    let sha256 = match sha256 {
        Some(h) => Some(hex::encode(parse_digest::<32>(h, "file_sha256")?)),
        None => None,
    };
    let blake3 = match blake3 {
        Some(h) => Some(hex::encode(parse_digest::<32>(h, "file_blake3")?)),
        None => None,
    };
    Ok(FileHashes {
        md5,
        sha256,
        blake3,
    })
}

fn validate_upload_finish(wire: WireUploadFinish) -> Result<ClientMessage, ProtocolError> {
    let task_id = TaskId::parse(&wire.task_id)?;
    let hashes = file_hashes(&wire.file_hash, &wire.file_sha256, &wire.file_blake3)?;
    if hashes.kinds().is_empty() {
        return Err(ProtocolError::invalid(
            "missing field `file_blake3` (or `file_sha256`, `file_hash`)",
        )
        .with_task(task_id));
    }
    Ok(ClientMessage::UploadFinish(UploadFinish {
        task_id,
        hashes,
    }))
}

fn task_ref(wire: WireTaskRef) -> Result<TaskRef, ProtocolError> {
    Ok(TaskRef {
        task_id: TaskId::parse(&wire.task_id)?,
    })
}

/// Decodes a lowercase-or-uppercase hex digest of exactly `N` bytes.
fn parse_digest<const N: usize>(hex_str: &str, field: &str) -> Result<[u8; N], ProtocolError> {
    let mut out = [0u8; N];
    if hex_str.len() != 2 * N || hex::decode_to_slice(hex_str, &mut out).is_err() {
        return Err(ProtocolError::invalid(format!(
            "field `{field}` must be {} hexadecimal characters",
            2 * N
        )));
    }
    Ok(out)
}

/// Decodes base64 after checking the decoded size cannot exceed `max` bytes.
fn decode_base64(text: &str, field: &str, max: u64) -> Result<Vec<u8>, ProtocolError> {
    let too_large = || {
        ProtocolError::new(
            ErrorCode::TooLarge,
            format!("field `{field}` holds more than {max} bytes"),
        )
    };
    // Refuse before decoding: base64 of more than `max` bytes is longer than this.
    let upper_bound = (text.len() as u64).div_ceil(4) * 3;
    if upper_bound > max.saturating_add(3) {
        return Err(too_large());
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ProtocolError::invalid(format!("field `{field}` is not valid base64")))?;
    if data.len() as u64 > max {
        return Err(too_large());
    }
    Ok(data)
}

fn validate_language(language: Option<String>) -> Result<Option<String>, ProtocolError> {
    let Some(lang) = language else {
        return Ok(None);
    };
    let lang = lang.trim().to_ascii_lowercase();
    if lang.is_empty() || lang == "auto" {
        return Ok(None);
    }
    if !(2..=8).contains(&lang.len()) || !lang.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ProtocolError::invalid(
            "field `language` must be a language code such as \"en\" or \"auto\"",
        ));
    }
    Ok(Some(lang))
}

fn validate_output_format(format: Option<String>) -> Result<Option<String>, ProtocolError> {
    let Some(format) = format else {
        return Ok(None);
    };
    let format = format.to_ascii_lowercase();
    if OUTPUT_FORMATS.contains(&format.as_str()) {
        Ok(Some(format))
    } else {
        Err(ProtocolError::invalid(format!(
            "field `format` must be one of {}",
            OUTPUT_FORMATS.join(", ")
        )))
    }
}

fn validate_upload_request(
    wire: WireUploadRequest,
    limits: &Limits,
) -> Result<ClientMessage, ProtocolError> {
    let plan_limits = limits.plan_limits();
    let hashes = file_hashes(&wire.file_hash, &wire.file_sha256, &wire.file_blake3)?;
    let transport = wire.transport.unwrap_or_default();
    // A chunked binary upload may send its hash in `upload_finish`, after the chunks.
    let no_hash = hashes.kinds().is_empty();
    if no_hash && transport != Transport::Binary {
        return Err(ProtocolError::invalid("missing field `file_hash`"));
    }
    // The seed server treats a request without upload_mode as "single"; a request that
    // plainly describes chunks (chunk_size, no file_data) is taken as chunked.
    let mode =
        wire.upload_mode
            .unwrap_or(if wire.file_data.is_none() && wire.chunk_size.is_some() {
                WireUploadMode::Chunked
            } else {
                WireUploadMode::Single
            });
    let (plan, mode) = match mode {
        WireUploadMode::Chunked => {
            let chunk_size = wire
                .chunk_size
                .ok_or_else(|| ProtocolError::invalid("missing field `chunk_size`"))?;
            let total = wire
                .total_chunks
                .ok_or_else(|| ProtocolError::invalid("missing field `total_chunks`"))?;
            let plan = ChunkPlan::new(wire.file_size, chunk_size, total, &plan_limits)?;
            (plan, UploadMode::Chunked)
        }
        WireUploadMode::Single => {
            let plan = ChunkPlan::single(wire.file_size, &plan_limits)?;
            let encoded = wire
                .file_data
                .as_deref()
                .ok_or_else(|| ProtocolError::invalid("missing field `file_data`"))?;
            let data = decode_base64(encoded, "file_data", limits.max_message_bytes)?;
            if data.len() as u64 != wire.file_size {
                return Err(ProtocolError::invalid(format!(
                    "field `file_data` holds {} bytes but file_size is {}",
                    data.len(),
                    wire.file_size
                )));
            }
            (plan, UploadMode::Single { data })
        }
    };
    if no_hash && !matches!(mode, UploadMode::Chunked) {
        return Err(ProtocolError::invalid("missing field `file_hash`"));
    }
    let file_name = sanitize_file_name(&wire.file_name);
    Ok(ClientMessage::UploadRequest(UploadRequest {
        extension: file_extension(&file_name),
        file_name,
        plan,
        hashes,
        mode,
        transport,
        options: TaskOptions {
            language: validate_language(wire.language)?,
            translate: wire.translate.unwrap_or(false),
            format: validate_output_format(wire.format)?,
        },
    }))
}

fn validate_upload_chunk(
    wire: WireUploadChunk,
    limits: &Limits,
) -> Result<ClientMessage, ProtocolError> {
    let task_id = TaskId::parse(&wire.task_id)?;
    let index = wire.chunk_index;
    let tag = |e: ProtocolError| e.with_task(task_id).with_chunk(index);
    let expected = parse_digest::<16>(&wire.chunk_hash, "chunk_hash").map_err(tag)?;
    let data =
        decode_base64(&wire.chunk_data, "chunk_data", limits.max_chunk_bytes).map_err(tag)?;
    if data.is_empty() {
        return Err(tag(ProtocolError::new(
            ErrorCode::InvalidChunk,
            "field `chunk_data` is empty",
        )));
    }
    if let Some(size) = wire.chunk_size {
        if size != data.len() as u64 {
            return Err(tag(ProtocolError::new(
                ErrorCode::InvalidChunk,
                format!(
                    "chunk_size is {size} but chunk_data holds {} bytes",
                    data.len()
                ),
            )));
        }
    }
    if Md5::digest(&data).as_slice() != expected {
        return Err(tag(ProtocolError::new(
            ErrorCode::ChunkHashMismatch,
            format!("chunk {index} does not match its chunk_hash; resend it"),
        )));
    }
    Ok(ClientMessage::UploadChunk(UploadChunk {
        task_id,
        chunk_index: index,
        data,
        is_last: wire.is_last.unwrap_or(false),
    }))
}

fn validate_audio_segment(
    wire: WireAudioSegment,
    limits: &Limits,
) -> Result<ClientMessage, ProtocolError> {
    let task_id = TaskId::parse_chosen(&wire.task_id)?;
    let tag = |e: ProtocolError| e.with_task(task_id);
    if let Some(d) = wire.segment_duration {
        if !d.is_finite() || d < 0.0 {
            return Err(tag(ProtocolError::invalid(
                "field `segment_duration` must be a non-negative number",
            )));
        }
    }
    let bytes =
        decode_base64(&wire.audio_data, "audio_data", limits.max_message_bytes).map_err(tag)?;
    if bytes.len() % 4 != 0 {
        return Err(tag(ProtocolError::new(
            ErrorCode::UnsupportedAudio,
            "field `audio_data` must be whole 32-bit float samples (f32le)",
        )));
    }
    let samples = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .map(crate::audio::sanitize_sample)
        .collect();
    Ok(ClientMessage::AudioSegment(AudioSegment {
        task_id,
        segment_index: wire.segment_index,
        segment_duration: wire.segment_duration,
        is_final: wire.is_final.unwrap_or(false),
        samples,
    }))
}

fn validate_stream_start(wire: WireStreamStart) -> Result<ClientMessage, ProtocolError> {
    let task_id = wire
        .task_id
        .as_deref()
        .map(TaskId::parse_chosen)
        .transpose()?;
    let format = match wire.format.as_deref() {
        None => AudioFormat::PcmS16le,
        Some(name) => AudioFormat::parse(name).ok_or_else(|| {
            let names: Vec<_> = AudioFormat::ALL.iter().map(|f| f.as_str()).collect();
            ProtocolError::new(
                ErrorCode::UnsupportedAudio,
                format!(
                    "format {:?} is not supported; use one of {}",
                    truncate(name, 20),
                    names.join(", ")
                ),
            )
        })?,
    };
    let sample_rate = wire.sample_rate.unwrap_or(crate::audio::SAMPLE_RATE);
    let channels = wire.channels.unwrap_or(1);
    if format.is_raw_pcm() {
        if !(8_000..=192_000).contains(&sample_rate) {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedAudio,
                "field `sample_rate` must be between 8000 and 192000",
            ));
        }
        if !(1..=8).contains(&channels) {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedAudio,
                "field `channels` must be between 1 and 8",
            ));
        }
    }
    Ok(ClientMessage::StreamStart(StreamStart {
        task_id,
        format,
        sample_rate,
        channels,
        options: TaskOptions {
            language: validate_language(wire.language)?,
            translate: wire.translate.unwrap_or(false),
            format: None,
        },
    }))
}

// ---------------------------------------------------------------------------------------
// Server → client
// ---------------------------------------------------------------------------------------

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
    /// Name of the loaded model, so clients know what quality/languages to expect.
    pub model: String,
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
}

/// `stream_started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStarted {
    /// The stream's id (the client's or a new one).
    pub task_id: TaskId,
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
#[path = "message_tests.rs"]
mod tests;
