//! Audio in: any supported container/codec, or raw PCM, to 16 kHz mono `f32`.
//!
//! - [`decode`]: incremental demux + decode with symphonia (and libopus), down-mixed to mono
//!   at the source rate. Never reads a whole file into memory.
//! - [`resample`]: a stateful rubato resampler to 16 kHz that keeps leftovers between calls.
//! - [`AudioStream`]: both together, 16 kHz mono chunks from a file or a byte stream.
//!
//! This module must not know about Whisper or the network.

pub mod decode;
pub mod resample;

use std::path::Path;

pub use decode::{
    byte_feed, ByteFeedReader, ByteFeedSender, DecodeError, DecodeLimits, Decoder, FeedClosed,
    PcmDecoder, PcmFormat,
};
pub use resample::{ResampleError, Resampler};

/// The sample rate Whisper expects, and the rate everything after this module works at.
pub const SAMPLE_RATE: u32 = 16_000;

/// Decoded and resampled audio: 16 kHz mono chunks, pulled one at a time.
#[derive(Debug)]
pub struct AudioStream {
    /// Source of mono blocks at the file's own rate.
    decoder: Decoder,
    /// Converts those blocks to 16 kHz, carrying leftovers between blocks.
    resampler: Resampler,
    /// Set once the resampler has been flushed, so `next_chunk` then returns `None`.
    finished: bool,
}

impl AudioStream {
    /// Opens an audio file for streaming decode at 16 kHz.
    pub fn open(path: &Path, limits: DecodeLimits) -> Result<Self, DecodeError> {
        AudioStream::from_decoder(Decoder::open_path(path, limits)?)
    }

    /// Wraps an already opened decoder (e.g. one reading a [`byte_feed`]).
    pub fn from_decoder(decoder: Decoder) -> Result<Self, DecodeError> {
        let resampler = Resampler::new(decoder.sample_rate())
            .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
        Ok(AudioStream {
            decoder,
            resampler,
            finished: false,
        })
    }

    /// Duration announced by the container, in seconds, when it states one.
    pub fn duration_hint(&self) -> Option<f64> {
        self.decoder.duration_hint()
    }

    /// Sample rate of the source before resampling, in Hz.
    pub fn source_rate(&self) -> u32 {
        self.decoder.sample_rate()
    }

    /// The next non-empty chunk of 16 kHz mono samples; `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>, DecodeError> {
        while !self.finished {
            let chunk = match self.decoder.next_block()? {
                Some(block) => self.resampler.process(&block),
                None => {
                    self.finished = true;
                    self.resampler.flush()
                }
            };
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }
}
