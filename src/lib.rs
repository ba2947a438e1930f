//! Earshot: a self-hosted speech transcription server.
//!
//! The modules form layers; each uses only the layers below it (docs/ARCHITECTURE.md, checked
//! by `tests/layers.rs`). Bottom first:
//!
//! - [`domain`], [`transcript`]: task ids, tasks, output formats, failure codes; segments.
//! - [`access`]: who a caller is (key fingerprint, address) and per-client shares.
//!   [`mod@format`]: transcripts rendered as txt, srt, vtt, json.
//!   [`audio`]: bytes in any container/codec → 16 kHz mono `f32`. [`models`]: model files.
//! - [`inference`]: the bounded pool of Whisper workers, VAD windows, long audio.
//!   [`live`]: the commit policy of a live stream. [`upload`]: chunk plans, the durable store.
//! - [`protocol`]: the WebSocket wire protocol (JSON messages, binary frames, error codes).
//! - [`metrics`]: the counting facade.
//! - [`jobs`]: the task registry (the one result store) and the job runner.
//! - [`cluster`]: the registry and the job queue on NATS JetStream, for several nodes.
//! - [`app`]: the shared state every connection uses, built from the settings.
//! - [`ws`]: one WebSocket connection. [`http`]: the OpenAI-compatible HTTP API, task lookup,
//!   metrics scrape, readiness, access control. [`client`]: clients for the server.
//!   [`wyoming`]: the Wyoming protocol over TCP (Home Assistant's voice pipeline).
//! - [`server`]: the composition root, `server::run(listener, state, shutdown)`.
//! - [`cli`]: the `earshot` commands; `src/bin/earshot.rs` is a thin layer over it.

pub mod access;
pub mod app;
pub mod audio;
pub mod cli;
pub mod client;
pub mod cluster;
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
pub mod realtime;
pub mod server;
pub mod transcript;
pub mod upload;
pub mod ws;
pub mod wyoming;
