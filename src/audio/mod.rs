//! Audio in: any supported container/codec, or raw PCM, to 16 kHz mono `f32`.
//!
//! - [`decode`]: incremental demux + decode with symphonia (and libopus), down-mixed to mono
//!   at the source rate. Never reads a whole file into memory.
//! - [`resample`]: a stateful rubato resampler to 16 kHz that keeps leftovers between calls.
//! - [`AudioStream`]: both together, 16 kHz mono chunks from a file or a byte stream, and
//!   whether the file held less audio than it declares ([`Truncation`]).
//! - [`SharedBuffer`]: audio appended and dropped while [`SharedAudio`] snapshots of it are
//!   lent out without copying (a live stream's uncommitted audio, handed to each hypothesis).
//! - [`sanitize_sample`]: the one bound every sample passes before resampling, whatever path
//!   it came by (decoded file, live PCM, the seed's `audio_segment`); [`is_sanitized`] checks it.
//!
//! This module must not know about Whisper or the network.

pub mod decode;
pub mod resample;
mod shared;
mod truncation;

use std::path::Path;

pub use decode::{
    byte_feed, ByteFeedReader, ByteFeedSender, DecodeError, DecodeLimits, Decoder, FeedClosed,
    PcmDecoder, PcmFormat,
};
pub use resample::{ResampleError, Resampler};
pub use shared::{SharedAudio, SharedBuffer};
pub use truncation::{Truncation, TRUNCATION_SLACK_SECS};

/// The sample rate Whisper expects, and the rate everything after this module works at.
pub const SAMPLE_RATE: u32 = 16_000;

/// A sample the resampler and Whisper can take: NaN becomes silence, anything else is clamped
/// to [-1, 1] as a conversion to integer PCM would. An infinite or absurdly large value (1e30,
/// `f32::MAX`) would otherwise overflow rubato's FFT and make it panic, or drown the speech.
pub fn sanitize_sample(sample: f32) -> f32 {
    if sample.is_nan() {
        0.0
    } else {
        sample.clamp(-1.0, 1.0)
    }
}

/// Whether [`sanitize_sample`] would leave every sample as it is (each finite, within [-1, 1]),
/// so the samples can be used without a sanitised copy.
pub fn is_sanitized(samples: &[f32]) -> bool {
    // A fold without early exit: the compiler vectorises it (about 10x an `all`).
    samples.iter().fold(true, |ok, s| ok & (s.abs() <= 1.0))
}

/// Resamples a block, or drains the resampler at the end (`None`). A panic inside rubato
/// (a bug, or input that slipped past [`sanitize_sample`]) becomes [`DecodeError::Panicked`]
/// instead of taking the thread down; the resampler must not be used after an error.
pub fn guarded_resample(
    resampler: &mut Resampler,
    block: Option<&[f32]>,
) -> Result<Vec<f32>, DecodeError> {
    decode::guarded(|| match block {
        Some(block) => resampler.process(block),
        None => resampler.flush(),
    })
}

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
            let block = self.decoder.next_block()?;
            self.finished = block.is_none();
            let chunk = guarded_resample(&mut self.resampler, block.as_deref())
                .inspect_err(|_| self.finished = true)?;
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }

    /// Once [`AudioStream::next_chunk`] has returned `None`: whether the audio ended well
    /// before the duration the container declares (a cut download, a damaged header). `None`
    /// while chunks remain, for complete files and for files that declare no duration.
    pub fn truncation(&self) -> Option<Truncation> {
        if !self.finished {
            return None;
        }
        Truncation::detect(self.decoder.decoded_secs(), self.duration_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitized_samples_are_finite_and_bounded() {
        assert_eq!(sanitize_sample(f32::NAN), 0.0);
        assert_eq!(sanitize_sample(-f32::NAN), 0.0);
        assert_eq!(sanitize_sample(f32::INFINITY), 1.0);
        assert_eq!(sanitize_sample(f32::NEG_INFINITY), -1.0);
        assert_eq!(sanitize_sample(1e30), 1.0);
        assert_eq!(sanitize_sample(f32::MAX), 1.0);
        assert_eq!(sanitize_sample(f32::MIN), -1.0);
    }

    #[test]
    fn ordinary_samples_are_unchanged() {
        for s in [0.0, -0.0, 0.25, -0.999, 1.0, -1.0, f32::MIN_POSITIVE] {
            assert_eq!(sanitize_sample(s).to_bits(), s.to_bits(), "{s}");
        }
    }

    #[test]
    fn is_sanitized_agrees_with_sanitize_sample() {
        let samples = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            1.0001,
            -3.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for s in samples {
            let unchanged = sanitize_sample(s).to_bits() == s.to_bits();
            assert_eq!(is_sanitized(&[0.1, s, 0.2]), unchanged, "{s}");
        }
        assert!(is_sanitized(&[]));
    }

    #[test]
    fn a_panicking_resampler_is_a_decode_error() {
        // rubato's FFT resampler panics on NaN (it is why samples are sanitised first); the
        // guard must turn that into a typed error, for the block and for the flush alike.
        let mut resampler = Resampler::new(48_000).unwrap();
        let poisoned = vec![f32::NAN; 48_000];
        let err = guarded_resample(&mut resampler, Some(&poisoned)).unwrap_err();
        assert!(matches!(err, DecodeError::Panicked), "{err}");
        let mut resampler = Resampler::new(48_000).unwrap();
        resampler.process(&poisoned[..100]);
        let err = guarded_resample(&mut resampler, None).unwrap_err();
        assert!(matches!(err, DecodeError::Panicked), "{err}");
    }

    #[test]
    fn sanitized_samples_resample_without_panicking() {
        let mut resampler = Resampler::new(48_000).unwrap();
        let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, f32::MAX];
        let input: Vec<f32> = bad.iter().cycle().take(48_000).copied().collect();
        let clean: Vec<f32> = input.iter().copied().map(sanitize_sample).collect();
        let mut out = guarded_resample(&mut resampler, Some(&clean)).unwrap();
        out.extend(guarded_resample(&mut resampler, None).unwrap());
        assert_eq!(out.len(), 16_000);
        assert!(out.iter().all(|s| s.is_finite()));
    }
}
