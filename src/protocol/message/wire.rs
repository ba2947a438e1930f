//! Wire parsing: one client text frame `{"type": …, "data": {…}}` into a validated
//! [`ClientMessage`].
//!
//! Parsing takes two steps: a private *wire* struct that mirrors the JSON field for field
//! (so serde names a missing or mistyped field), then validation into the types of
//! `client_message`. Errors are [`ProtocolError`]s a client may read: they name the field,
//! never a line and column, and echo client text only truncated.
//!
//! This module must NOT do I/O, hold session state or know about sessions: checks that need
//! a session (is the chunk index inside *that* upload's plan?) belong to the caller. It must
//! not panic on any input, nor copy a frame's base64 payload before decoding it (a seed
//! chunk is megabytes): the wire structs borrow it from the frame.

use std::borrow::Cow;

use base64::Engine as _;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::client_message::{
    AudioFormat, AudioSegment, ClientMessage, ResumeFrom, StreamEnd, StreamStart, TaskOptions,
    TaskRef, Transport, UploadChunk, UploadFinish, UploadMode, UploadRequest,
};
use crate::domain::TaskId;
use crate::domain::{split_language_tag, OutputFormat, ZhScript};
use crate::protocol::error::{ErrorCode, ProtocolError};
use crate::protocol::{file_extension, sanitize_file_name, truncate, Limits};
use crate::upload::digest::FileHashes;
use crate::upload::plan::ChunkPlan;

/// The outer `{"type", "data"}` object; `data` stays raw until `type` picks its struct.
#[derive(Deserialize)]
struct Envelope<'a> {
    /// Message name; selects the wire struct.
    #[serde(rename = "type")]
    kind: String,
    /// The message's fields, borrowed unparsed so a large chunk is never copied.
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
// marks a field the client may omit. Base64 payloads are `Cow<'a, str>` borrowed from the
// frame, so a chunk's text is decoded where it arrived instead of being copied first; only
// a payload with JSON escapes in it (e.g. `\/`) is unescaped into an owned string. Validation turns them into the types of `client_message`.

/// `upload_request` as sent.
#[derive(Deserialize)]
struct WireUploadRequest<'a> {
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
    /// Whole file, base64 (single mode), borrowed from the frame.
    #[serde(borrow)]
    file_data: Option<Cow<'a, str>>,
    /// JSON or binary chunks (fast path).
    transport: Option<Transport>,
    /// SHA-256 hex of the whole file (fast path).
    file_sha256: Option<String>,
    /// BLAKE3 hex of the whole file (fast path).
    file_blake3: Option<String>,
    /// Spoken language, "auto", or `zh-Hans` / `zh-Hant` (Mandarin in that script).
    language: Option<String>,
    /// Translate to English.
    translate: Option<bool>,
    /// Output format of the result.
    format: Option<String>,
    /// Model to transcribe with; absent = the server's default.
    model: Option<String>,
}

/// `upload_chunk` as sent.
#[derive(Deserialize)]
struct WireUploadChunk<'a> {
    /// Which upload.
    task_id: String,
    /// Which chunk; u32 so negative or huge values fail with the field named.
    chunk_index: u32,
    /// Decoded length the client claims; checked against the data.
    chunk_size: Option<u64>,
    /// MD5 hex of the chunk.
    chunk_hash: String,
    /// The chunk, base64, borrowed from the frame.
    #[serde(borrow)]
    chunk_data: Cow<'a, str>,
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
struct WireAudioSegment<'a> {
    /// Client-chosen task id.
    task_id: String,
    /// Order within the task.
    segment_index: u32,
    /// Client's stated seconds.
    segment_duration: Option<f64>,
    /// Last segment of the task.
    is_final: Option<bool>,
    /// f32le samples, base64, borrowed from the frame.
    #[serde(borrow)]
    audio_data: Cow<'a, str>,
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
    /// Spoken language, "auto", or `zh-Hans` / `zh-Hant` (Mandarin in that script).
    language: Option<String>,
    /// Translate to English.
    translate: Option<bool>,
    /// Continue the interrupted stream `task_id`.
    resume: Option<bool>,
    /// With `resume`: the first segment index the client has not received.
    next_index: Option<usize>,
    /// Model to transcribe with; absent = the server's default.
    model: Option<String>,
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
fn fields<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, ProtocolError> {
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

/// `language` as the Whisper code and the Mandarin script it names (`zh-Hans`, `zh-Hant`).
fn validate_language(
    language: Option<String>,
) -> Result<(Option<String>, Option<ZhScript>), ProtocolError> {
    let Some(lang) = language else {
        return Ok((None, None));
    };
    let (lang, script) = split_language_tag(&lang);
    if lang.is_empty() || lang == "auto" {
        return Ok((None, None));
    }
    if !(2..=8).contains(&lang.len()) || !lang.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ProtocolError::invalid(
            "field `language` must be a language code such as \"en\", \"zh-Hans\" or \"auto\"",
        ));
    }
    Ok((Some(lang), script))
}

/// Longest model name a client may send.
const MAX_MODEL_NAME: usize = 100;

/// `model` as given, trimmed; empty means none. Whether the server serves it is the server's
/// check (it knows its models); this only refuses what cannot be a name.
fn validate_model(model: Option<String>) -> Result<Option<String>, ProtocolError> {
    let Some(model) = model.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    if model.len() > MAX_MODEL_NAME || model.chars().any(char::is_control) {
        return Err(ProtocolError::invalid(format!(
            "field `model` must be a model name of at most {MAX_MODEL_NAME} characters"
        )));
    }
    Ok(Some(model))
}

fn validate_output_format(format: Option<String>) -> Result<Option<OutputFormat>, ProtocolError> {
    let Some(format) = format else {
        return Ok(None);
    };
    let format = format.to_ascii_lowercase();
    if !OUTPUT_FORMATS.contains(&format.as_str()) {
        return Err(ProtocolError::invalid(format!(
            "field `format` must be one of {}",
            OUTPUT_FORMATS.join(", ")
        )));
    }
    let value = serde_json::Value::String(format);
    Ok(serde_json::from_value(value).ok())
}

fn validate_upload_request(
    wire: WireUploadRequest<'_>,
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
    let (language, zh_script) = validate_language(wire.language)?;
    Ok(ClientMessage::UploadRequest(UploadRequest {
        extension: file_extension(&file_name),
        file_name,
        plan,
        hashes,
        mode,
        transport,
        options: TaskOptions {
            language,
            translate: wire.translate.unwrap_or(false),
            format: validate_output_format(wire.format)?,
            zh_script,
            model: validate_model(wire.model)?,
        },
    }))
}

fn validate_upload_chunk(
    wire: WireUploadChunk<'_>,
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
    wire: WireAudioSegment<'_>,
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
    let resume = match (wire.resume.unwrap_or(false), task_id) {
        (false, _) => None,
        (true, None) => {
            return Err(ProtocolError::invalid(
                "field `task_id` is required with `resume`: the id of the stream to continue",
            ))
        }
        (true, Some(_)) => Some(ResumeFrom {
            next_index: wire.next_index.unwrap_or(0),
        }),
    };
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
    let (language, zh_script) = validate_language(wire.language)?;
    Ok(ClientMessage::StreamStart(StreamStart {
        task_id,
        format,
        sample_rate,
        channels,
        options: TaskOptions {
            language,
            translate: wire.translate.unwrap_or(false),
            format: None,
            zh_script,
            model: validate_model(wire.model)?,
        },
        resume,
    }))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
