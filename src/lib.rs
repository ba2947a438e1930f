//! Earshot: a self-hosted speech transcription server.
//!
//! The crate is laid out the way audio flows through it:
//!
//! - [`audio`]: bytes in any container/codec → 16 kHz mono `f32` (decode, then resample).
//! - [`inference`]: a bounded pool of Whisper workers, voice-activity windows, long-audio driving.
//! - [`transcript`]: the segments and transcripts every other module speaks in.
//! - [`mod@format`]: transcripts rendered as txt, srt, vtt, json.
//! - [`models`]: model names, where they live, fetching and verifying them.
//! - [`protocol`]: the WebSocket wire protocol (JSON messages, binary frames, error codes).
//! - [`upload`]: resumable uploads: chunk bookkeeping and durable on-disk sessions.
//! - [`live`]: the commit policy that turns a live stream into partials and final segments.
//! - [`tasks`]: progress and results of every task, for any connection to follow.
//! - [`client`]: WebSocket clients for the server (resumable uploads, live streams).
//! - [`http`]: the OpenAI-compatible HTTP API, task lookup, metrics, readiness, access control.
//! - [`access`]: who a caller is (key fingerprint, address) and per-client shares.
//!
//! The binary in `src/bin/earshot.rs` is a thin layer of argument parsing over this library.

pub mod access;
pub mod app;
pub mod audio;
pub mod cli;
pub mod client;
pub mod domain;
pub mod eval;
pub mod format;
pub mod http;
pub mod inference;
pub mod jobs;
pub mod live;
pub mod metrics;
pub mod models;
pub mod protocol;
pub mod server;
pub mod transcript;
pub mod upload;
pub mod ws;
