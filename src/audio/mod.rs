//! Audio in: any supported container/codec, or raw PCM, to 16 kHz mono `f32`.
//!
//! - [`decode`]: incremental demux + decode with symphonia (and libopus), down-mixed to mono
//!   at the source rate. Never reads a whole file into memory.
//! - [`resample`]: a stateful rubato resampler to 16 kHz that keeps leftovers between calls.
//!
//! This module must not know about Whisper or the network.

pub mod decode;
pub mod resample;

/// The sample rate Whisper expects, and the rate everything after this module works at.
pub const SAMPLE_RATE: u32 = 16_000;
