//! Text-frame messages: `{"type": "<name>", "data": {…}}` in both directions.
//!
//! - `client_message`: the validated client → server types ([`ClientMessage`] and its parts),
//!   whose values are already checked.
//! - `wire`: [`parse_client`], which parses a client's text frame through private structs
//!   mirroring the JSON and validates it into a [`ClientMessage`].
//! - `server_message`: the server → client types ([`ServerMessage`] and its payloads), plain
//!   serde structs.
//!
//! Callers name everything through this module (`protocol::message::UploadRequest`); the
//! split into files is not part of the interface. This module must NOT do I/O, hold session
//! state or know about sessions: checks that need a session (is the chunk index inside *that*
//! upload's plan?) belong to the caller.

mod client_message;
mod server_message;
mod wire;

pub use client_message::{
    AudioFormat, AudioSegment, ClientMessage, ResumeFrom, StreamEnd, StreamStart, TaskOptions,
    TaskRef, Transport, UploadChunk, UploadFinish, UploadMode, UploadRequest,
};
pub use server_message::{
    ChunkAck, ChunkReceived, ChunkStatus, Connected, ErrorData, ServerMessage, ServerShutdown,
    StreamLag, StreamStarted, TranscriptPartial, TranscriptSegment, TranscriptionComplete,
    TranscriptionProgress, UploadComplete, UploadReady,
};
pub use wire::{parse_client, OUTPUT_FORMATS};
