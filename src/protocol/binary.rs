//! Binary WebSocket frames: the fast upload path and live audio.
//!
//! Every binary frame starts with one *kind* byte; all integers are little-endian.
//!
//! ```text
//! 0x01 upload chunk   [0x01][task_id: 16 bytes, UUID][chunk_index: u32][xxh3_64(payload): u64][payload …]
//!                      0     1                        17                 21                      29
//! 0x02 live audio     [0x02][payload …]                      audio for the connection's open stream
//! 0x03 live audio     [0x03][task_id: 16 bytes][payload …]   audio for the named stream
//! 0x04 upload chunk   [0x04][task_id: 16 bytes][chunk_index: u32][crc32(payload): u32][payload …]
//!                      0     1                        17                 21                 25
//! ```
//!
//! The per-chunk xxh3-64 catches corruption cheaply (GB/s); the whole file is verified by
//! SHA-256 (`file_sha256`) and/or MD5 (`file_hash`) when the upload is finalised.
//! Kind `0x04` is the same chunk checked with CRC-32 (IEEE, as zlib) instead: browsers have
//! neither xxh3 nor 64-bit integer arithmetic, and CRC-32 is a few lines of JavaScript.
//! Both kinds decode to the same [`ChunkFrame`], so the session does not care which was used.
//!
//! Decoding borrows: payloads are slices of the frame, never copies. This module must NOT
//! know about sessions: whether a task exists or a chunk index is in range is the caller's
//! check.

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use super::error::{ErrorCode, ProtocolError};
use crate::domain::TaskId;

/// Kind byte of an upload chunk frame.
pub const KIND_UPLOAD_CHUNK: u8 = 0x01;
/// Kind byte of live audio for the connection's single open stream.
pub const KIND_AUDIO: u8 = 0x02;
/// Kind byte of live audio addressed to a stream by id.
pub const KIND_AUDIO_FOR_TASK: u8 = 0x03;
/// Kind byte of an upload chunk checked with CRC-32 instead of xxh3 (browser clients).
pub const KIND_UPLOAD_CHUNK_CRC32: u8 = 0x04;

/// Bytes before the payload in an upload chunk frame.
pub const UPLOAD_CHUNK_HEADER_LEN: usize = 1 + 16 + 4 + 8;
/// Bytes before the payload in a CRC-32 upload chunk frame.
pub const UPLOAD_CHUNK_CRC32_HEADER_LEN: usize = 1 + 16 + 4 + 4;
/// Bytes before the payload in a `KIND_AUDIO_FOR_TASK` frame.
pub const AUDIO_FOR_TASK_HEADER_LEN: usize = 1 + 16;

/// A decoded binary frame, borrowing its payload from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryFrame<'a> {
    /// One upload chunk; its xxh3 hash (or CRC-32) has already been verified.
    UploadChunk(ChunkFrame<'a>),
    /// Live audio bytes in the format announced by `stream_start`.
    Audio(AudioFrame<'a>),
}

/// An upload chunk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkFrame<'a> {
    /// Which upload.
    pub task_id: TaskId,
    /// Which chunk of it.
    pub chunk_index: u32,
    /// The chunk's bytes (verified against the frame's xxh3-64 or CRC-32).
    pub payload: &'a [u8],
}

/// A live audio frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFrame<'a> {
    /// The stream, when the frame names one (`KIND_AUDIO_FOR_TASK`).
    pub task_id: Option<TaskId>,
    /// Encoded audio bytes; may split samples or container pages anywhere.
    pub payload: &'a [u8],
}

/// Why a binary frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BinaryError {
    /// A zero-length frame.
    #[error("empty binary frame")]
    Empty,
    /// The first byte is not a known kind.
    #[error("unknown binary frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The frame ends inside its header.
    #[error("binary frame too short: {len} bytes, the header needs {need}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes the header needs (plus one payload byte for chunks).
        need: usize,
    },
    /// The chunk's payload does not match its xxh3-64 (or CRC-32).
    #[error("chunk {chunk_index} does not match its hash; resend it")]
    HashMismatch {
        /// Which upload.
        task_id: TaskId,
        /// Which chunk to resend.
        chunk_index: u32,
    },
}

impl From<BinaryError> for ProtocolError {
    fn from(e: BinaryError) -> Self {
        match e {
            BinaryError::HashMismatch {
                task_id,
                chunk_index,
            } => ProtocolError::new(ErrorCode::ChunkHashMismatch, e.to_string())
                .with_task(task_id)
                .with_chunk(chunk_index),
            _ => ProtocolError::invalid(e.to_string()),
        }
    }
}

/// Decodes a binary frame, verifying an upload chunk's hash.
pub fn decode(frame: &[u8]) -> Result<BinaryFrame<'_>, BinaryError> {
    let (&kind, _) = frame.split_first().ok_or(BinaryError::Empty)?;
    match kind {
        KIND_UPLOAD_CHUNK => decode_chunk(frame).map(BinaryFrame::UploadChunk),
        KIND_UPLOAD_CHUNK_CRC32 => decode_crc32_chunk(frame).map(BinaryFrame::UploadChunk),
        KIND_AUDIO => Ok(BinaryFrame::Audio(AudioFrame {
            task_id: None,
            payload: &frame[1..],
        })),
        KIND_AUDIO_FOR_TASK => {
            need(frame, AUDIO_FOR_TASK_HEADER_LEN)?;
            Ok(BinaryFrame::Audio(AudioFrame {
                task_id: Some(task_id_at(frame, 1)),
                payload: &frame[AUDIO_FOR_TASK_HEADER_LEN..],
            }))
        }
        other => Err(BinaryError::UnknownKind(other)),
    }
}

fn decode_chunk(frame: &[u8]) -> Result<ChunkFrame<'_>, BinaryError> {
    // A chunk always carries at least one byte: an empty chunk is never part of a plan.
    need(frame, UPLOAD_CHUNK_HEADER_LEN + 1)?;
    let hash = u64::from_le_bytes(array_at(frame, 21));
    checked_chunk(frame, UPLOAD_CHUNK_HEADER_LEN, |payload| {
        xxh3_64(payload) == hash
    })
}

fn decode_crc32_chunk(frame: &[u8]) -> Result<ChunkFrame<'_>, BinaryError> {
    need(frame, UPLOAD_CHUNK_CRC32_HEADER_LEN + 1)?;
    let crc = u32::from_le_bytes(array_at(frame, 21));
    checked_chunk(frame, UPLOAD_CHUNK_CRC32_HEADER_LEN, |payload| {
        crc32fast::hash(payload) == crc
    })
}

/// The chunk in a frame of either kind (task id at 1, index at 17, payload after `header`),
/// if `intact` accepts its payload.
fn checked_chunk(
    frame: &[u8],
    header: usize,
    intact: impl FnOnce(&[u8]) -> bool,
) -> Result<ChunkFrame<'_>, BinaryError> {
    let task_id = task_id_at(frame, 1);
    let chunk_index = u32::from_le_bytes(array_at(frame, 17));
    let payload = &frame[header..];
    if !intact(payload) {
        return Err(BinaryError::HashMismatch {
            task_id,
            chunk_index,
        });
    }
    Ok(ChunkFrame {
        task_id,
        chunk_index,
        payload,
    })
}

fn need(frame: &[u8], need: usize) -> Result<(), BinaryError> {
    if frame.len() < need {
        return Err(BinaryError::TooShort {
            len: frame.len(),
            need,
        });
    }
    Ok(())
}

/// `N` bytes at `at`; callers have checked the length with [`need`].
fn array_at<const N: usize>(frame: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&frame[at..at + N]);
    out
}

fn task_id_at(frame: &[u8], at: usize) -> TaskId {
    TaskId::from_bytes(array_at(frame, at))
}

/// The 29-byte header of an upload chunk frame (hash computed over `payload`), for clients
/// that send header and payload without concatenating them.
pub fn upload_chunk_header(
    task_id: TaskId,
    chunk_index: u32,
    payload: &[u8],
) -> [u8; UPLOAD_CHUNK_HEADER_LEN] {
    let mut header = [0u8; UPLOAD_CHUNK_HEADER_LEN];
    header[0] = KIND_UPLOAD_CHUNK;
    header[1..17].copy_from_slice(task_id.as_bytes());
    header[17..21].copy_from_slice(&chunk_index.to_le_bytes());
    header[21..29].copy_from_slice(&xxh3_64(payload).to_le_bytes());
    header
}

/// A whole upload chunk frame.
pub fn encode_upload_chunk(task_id: TaskId, chunk_index: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(UPLOAD_CHUNK_HEADER_LEN + payload.len());
    frame.extend_from_slice(&upload_chunk_header(task_id, chunk_index, payload));
    frame.extend_from_slice(payload);
    frame
}

/// A whole CRC-32 upload chunk frame (kind `0x04`), as the browser page sends them.
pub fn encode_upload_chunk_crc32(task_id: TaskId, chunk_index: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(UPLOAD_CHUNK_CRC32_HEADER_LEN + payload.len());
    frame.push(KIND_UPLOAD_CHUNK_CRC32);
    frame.extend_from_slice(task_id.as_bytes());
    frame.extend_from_slice(&chunk_index.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A live audio frame, addressed to `task_id` or to the connection's open stream.
pub fn encode_audio(task_id: Option<TaskId>, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(AUDIO_FOR_TASK_HEADER_LEN + payload.len());
    match task_id {
        Some(id) => {
            frame.push(KIND_AUDIO_FOR_TASK);
            frame.extend_from_slice(id.as_bytes());
        }
        None => frame.push(KIND_AUDIO),
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a chunk with `encode`, checks the header layout and that decoding borrows the
    /// payload from the frame.
    fn assert_round_trip(encode: fn(TaskId, u32, &[u8]) -> Vec<u8>, kind: u8, header: usize) {
        let id = TaskId::new_v4();
        let payload: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
        let frame = encode(id, 7, &payload);
        assert_eq!(frame.len(), header + payload.len());
        assert_eq!(frame[0], kind);
        assert_eq!(&frame[1..17], id.as_bytes());
        assert_eq!(&frame[17..21], &7u32.to_le_bytes());
        let BinaryFrame::UploadChunk(chunk) = decode(&frame).unwrap() else {
            panic!("expected a chunk");
        };
        assert_eq!((chunk.task_id, chunk.chunk_index), (id, 7));
        assert_eq!(chunk.payload, &payload[..]);
        // Borrowed, not copied: the payload points into the frame.
        assert!(std::ptr::eq(
            chunk.payload.as_ptr(),
            frame[header..].as_ptr()
        ));
    }

    #[test]
    fn chunk_round_trip_borrows_the_payload() {
        assert_round_trip(
            encode_upload_chunk,
            KIND_UPLOAD_CHUNK,
            UPLOAD_CHUNK_HEADER_LEN,
        );
        assert_eq!(UPLOAD_CHUNK_HEADER_LEN, 29);
    }

    #[test]
    fn chunk_index_extremes_round_trip() {
        let id = TaskId::new_v4();
        for index in [0, 1, u32::MAX] {
            let frame = encode_upload_chunk(id, index, b"x");
            let BinaryFrame::UploadChunk(c) = decode(&frame).unwrap() else {
                panic!()
            };
            assert_eq!(c.chunk_index, index);
        }
    }

    #[test]
    fn corrupted_chunk_is_a_hash_mismatch_naming_the_chunk() {
        let id = TaskId::new_v4();
        let mut frame = encode_upload_chunk(id, 3, b"hello world");
        *frame.last_mut().unwrap() ^= 1;
        let err = decode(&frame).unwrap_err();
        assert_eq!(
            err,
            BinaryError::HashMismatch {
                task_id: id,
                chunk_index: 3
            }
        );
        let p: ProtocolError = err.into();
        assert_eq!(p.code, ErrorCode::ChunkHashMismatch);
        assert_eq!((p.task_id, p.chunk_index), (Some(id), Some(3)));
        // A flipped hash byte is caught too.
        let mut frame = encode_upload_chunk(id, 3, b"hello world");
        frame[25] ^= 0x80;
        assert!(matches!(
            decode(&frame),
            Err(BinaryError::HashMismatch { .. })
        ));
    }

    #[test]
    fn crc32_chunk_round_trips_like_an_xxh3_chunk() {
        assert_round_trip(
            encode_upload_chunk_crc32,
            KIND_UPLOAD_CHUNK_CRC32,
            UPLOAD_CHUNK_CRC32_HEADER_LEN,
        );
        assert_eq!(UPLOAD_CHUNK_CRC32_HEADER_LEN, 25);
    }

    #[test]
    fn crc32_is_the_zlib_checksum() {
        // The well-known check value of CRC-32/ISO-HDLC, the one zlib and JavaScript ports use.
        let frame = encode_upload_chunk_crc32(TaskId::new_v4(), 0, b"123456789");
        assert_eq!(&frame[21..25], &0xCBF4_3926u32.to_le_bytes());
    }

    #[test]
    fn corrupted_crc32_chunk_is_a_hash_mismatch_naming_the_chunk() {
        let id = TaskId::new_v4();
        for flip in [21, 24, 25, 30] {
            let mut frame = encode_upload_chunk_crc32(id, 4, b"hello world");
            frame[flip] ^= 0x10;
            assert_eq!(
                decode(&frame),
                Err(BinaryError::HashMismatch {
                    task_id: id,
                    chunk_index: 4
                }),
                "flipped byte {flip}"
            );
        }
    }

    #[test]
    fn short_crc32_frames_are_errors() {
        let frame = encode_upload_chunk_crc32(TaskId::new_v4(), 0, b"");
        assert_eq!(
            decode(&frame),
            Err(BinaryError::TooShort {
                len: UPLOAD_CHUNK_CRC32_HEADER_LEN,
                need: UPLOAD_CHUNK_CRC32_HEADER_LEN + 1
            })
        );
        assert!(matches!(
            decode(&[KIND_UPLOAD_CHUNK_CRC32, 1, 2]),
            Err(BinaryError::TooShort { len: 3, .. })
        ));
    }

    #[test]
    fn short_and_garbage_frames_are_errors() {
        assert_eq!(decode(&[]), Err(BinaryError::Empty));
        assert_eq!(decode(&[0x00, 1, 2]), Err(BinaryError::UnknownKind(0)));
        assert_eq!(decode(&[0xff]), Err(BinaryError::UnknownKind(0xff)));
        assert_eq!(decode(b"{\"type\":1}"), Err(BinaryError::UnknownKind(b'{')));
        // Header only, no payload.
        let frame = encode_upload_chunk(TaskId::new_v4(), 0, b"");
        assert!(matches!(decode(&frame), Err(BinaryError::TooShort { .. })));
        for len in 1..UPLOAD_CHUNK_HEADER_LEN {
            let mut f = vec![KIND_UPLOAD_CHUNK];
            f.resize(len, 0xAA);
            assert_eq!(
                decode(&f),
                Err(BinaryError::TooShort {
                    len,
                    need: UPLOAD_CHUNK_HEADER_LEN + 1
                })
            );
        }
        assert!(matches!(
            decode(&[KIND_AUDIO_FOR_TASK, 1, 2, 3]),
            Err(BinaryError::TooShort { len: 4, need: 17 })
        ));
        let p: ProtocolError = BinaryError::UnknownKind(9).into();
        assert_eq!(p.code, ErrorCode::InvalidMessage);
    }

    #[test]
    fn audio_frames_round_trip() {
        let pcm = [1u8, 2, 3, 4, 5];
        let frame = encode_audio(None, &pcm);
        assert_eq!(frame[0], KIND_AUDIO);
        assert_eq!(
            decode(&frame).unwrap(),
            BinaryFrame::Audio(AudioFrame {
                task_id: None,
                payload: &pcm
            })
        );
        let id = TaskId::new_v4();
        let frame = encode_audio(Some(id), &pcm);
        assert_eq!(
            decode(&frame).unwrap(),
            BinaryFrame::Audio(AudioFrame {
                task_id: Some(id),
                payload: &pcm
            })
        );
        // An empty audio frame is allowed (a keep-alive); it carries nothing.
        assert_eq!(
            decode(&[KIND_AUDIO]).unwrap(),
            BinaryFrame::Audio(AudioFrame {
                task_id: None,
                payload: &[]
            })
        );
    }

    #[test]
    fn random_garbage_never_panics() {
        // A small deterministic generator; every outcome must be Ok or a typed error.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = decode(&bytes);
        }
    }
}
