//! Resampling mono `f32` audio to [`SAMPLE_RATE`] (16 kHz) with rubato, chunk by chunk.
//!
//! The [`Resampler`] is stateful: input that does not fill a whole resampler chunk is kept for
//! the next call, and [`Resampler::flush`] drains the tail. So the output does not depend on how
//! the input was split (20 ms pieces or one big block give the same samples).
//!
//! Fixed rational ratios use rubato's synchronous FFT resampler (fast, high quality); odd rates
//! whose ratio to 16 kHz needs a huge FFT use the asynchronous sinc resampler instead.
//!
//! This module must NOT decode or mix channels; it only changes the rate of mono audio.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Indexing, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};

use super::SAMPLE_RATE;

/// Lowest input rate accepted, in Hz (telephone audio is 8 kHz; lower is not speech audio).
pub const MIN_RATE: u32 = 1_000;
/// Highest input rate accepted, in Hz.
pub const MAX_RATE: u32 = 768_000;

/// Least input frames per FFT block: big enough to amortise the FFT, small enough to keep
/// latency and memory low. The block is the smallest whole ratio period (e.g. 441 frames for
/// 44.1 kHz → 160) times a power of two, so the FFT lengths factor into small primes.
const FFT_MIN_BLOCK: usize = 1024;
/// Above this many input frames per FFT block (odd rates, e.g. 44 101 Hz) use sinc instead.
const MAX_FFT_BLOCK: usize = 16_384;
/// Input chunk for the sinc resampler.
const SINC_CHUNK: usize = 1024;

/// Why a resampler could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// The input rate is outside [`MIN_RATE`]..=[`MAX_RATE`].
    #[error("a sample rate of {0} Hz is not supported")]
    UnsupportedRate(u32),
    /// rubato refused the configuration (should not happen for supported rates).
    #[error("the resampler could not be set up")]
    Setup(#[from] rubato::ResamplerConstructionError),
}

/// Stateful mono resampler from any supported rate to 16 kHz.
pub struct Resampler {
    /// The rubato resampler; `None` when the input is already 16 kHz (plain copy).
    inner: Option<Box<dyn rubato::Resampler<f32>>>,
    /// Input rate in Hz; sets the expected output length at flush.
    from_rate: u32,
    /// Input received but not yet processed, always shorter than one resampler chunk.
    pending: Vec<f32>,
    /// Reused output buffer, sized for the largest chunk rubato may write.
    scratch: Vec<f32>,
    /// Output frames still to drop at the start: the resampler's delay, so output lines up with
    /// input.
    to_trim: usize,
    /// Input frames received since the start; sets the exact output length at flush.
    total_in: u64,
    /// Output frames handed out since the start.
    total_out: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from_rate", &self.from_rate)
            .field("pending", &self.pending.len())
            .field("total_in", &self.total_in)
            .field("total_out", &self.total_out)
            .finish()
    }
}

impl Resampler {
    /// A resampler from `from_rate` Hz to 16 kHz.
    pub fn new(from_rate: u32) -> Result<Self, ResampleError> {
        if !(MIN_RATE..=MAX_RATE).contains(&from_rate) {
            return Err(ResampleError::UnsupportedRate(from_rate));
        }
        let inner = if from_rate == SAMPLE_RATE {
            None
        } else {
            Some(build(from_rate)?)
        };
        let scratch = vec![0.0; inner.as_ref().map_or(0, |r| r.output_frames_max())];
        let to_trim = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(Resampler {
            inner,
            from_rate,
            pending: Vec::new(),
            scratch,
            to_trim,
            total_in: 0,
            total_out: 0,
        })
    }

    /// Input rate in Hz.
    pub fn from_rate(&self) -> u32 {
        self.from_rate
    }

    /// Resamples `input`; returns the 16 kHz samples ready so far (possibly none).
    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        self.total_in += input.len() as u64;
        if self.inner.is_none() {
            self.total_out += input.len() as u64;
            return input.to_vec();
        }
        let need = self.chunk_in();
        let mut out = Vec::with_capacity(self.expected_out(input.len() as u64 + need as u64));
        let mut input = input;
        if !self.pending.is_empty() {
            let take = (need - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() < need {
                return out;
            }
            let pending = std::mem::take(&mut self.pending);
            self.run_chunk(&pending, None, &mut out);
            self.pending = pending;
            self.pending.clear();
        }
        let mut chunks = input.chunks_exact(need);
        for chunk in chunks.by_ref() {
            self.run_chunk(chunk, None, &mut out);
        }
        self.pending.extend_from_slice(chunks.remainder());
        self.total_out += out.len() as u64;
        out
    }

    /// Drains the resampler at the end of the input: returns the last samples, so the total
    /// output is `ceil(total_in * 16000 / from_rate)` samples. The resampler is then ready for a
    /// new stream.
    pub fn flush(&mut self) -> Vec<f32> {
        if self.inner.is_none() {
            self.reset();
            return Vec::new();
        }
        let expected = self.expected_total();
        let missing = usize::try_from(expected.saturating_sub(self.total_out)).unwrap_or(0);
        let mut out = Vec::with_capacity(missing + self.scratch.len());
        let pending = std::mem::take(&mut self.pending);
        self.run_chunk(&pending, Some(pending.len()), &mut out);
        while out.len() < missing {
            let before = out.len();
            self.run_chunk(&[], Some(0), &mut out);
            if out.len() == before && self.to_trim == 0 {
                break; // cannot happen with rubato's resamplers; guards against a stall
            }
        }
        out.truncate(missing);
        self.reset();
        out
    }

    /// Forgets all state, as if newly created.
    pub fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.reset();
            self.to_trim = inner.output_delay();
        }
        self.pending.clear();
        self.total_in = 0;
        self.total_out = 0;
    }

    fn chunk_in(&self) -> usize {
        self.inner.as_ref().map_or(1, |r| r.input_frames_next())
    }

    fn expected_out(&self, frames_in: u64) -> usize {
        let out = (frames_in * u64::from(SAMPLE_RATE)).div_ceil(u64::from(self.from_rate));
        usize::try_from(out).unwrap_or(usize::MAX)
    }

    fn expected_total(&self) -> u64 {
        (self.total_in * u64::from(SAMPLE_RATE)).div_ceil(u64::from(self.from_rate))
    }

    /// Runs one resampler chunk over `input` (`partial` = fewer frames than a full chunk, the
    /// rest treated as silence) and appends the output, minus the start-up delay, to `out`.
    fn run_chunk(&mut self, input: &[f32], partial: Option<usize>, out: &mut Vec<f32>) {
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return;
        };
        let indexing = Indexing {
            input_offset: 0,
            output_offset: 0,
            partial_len: partial,
            active_channels_mask: None,
        };
        let capacity = self.scratch.len();
        let result = InterleavedSlice::new(input, 1, input.len())
            .ok()
            .zip(InterleavedSlice::new_mut(&mut self.scratch, 1, capacity).ok())
            .map(|(buf_in, mut buf_out)| {
                inner.process_into_buffer(&buf_in, &mut buf_out, Some(&indexing))
            });
        let written = match result {
            Some(Ok((_, written))) => written,
            other => {
                // Buffers are sized from rubato's own limits, so this is a bug, not bad input.
                tracing::error!(?other, "resampler rejected its buffers");
                debug_assert!(false, "resampler rejected its buffers");
                return;
            }
        };
        let skip = self.to_trim.min(written);
        self.to_trim -= skip;
        out.extend_from_slice(&self.scratch[skip..written]);
    }
}

/// Picks the resampler for a rate: FFT when the rational ratio is small, else sinc.
fn build(from_rate: u32) -> Result<Box<dyn rubato::Resampler<f32>>, ResampleError> {
    let from = from_rate as usize;
    let to = SAMPLE_RATE as usize;
    let block_in = from / gcd(from, to);
    if block_in <= MAX_FFT_BLOCK {
        let periods = FFT_MIN_BLOCK.div_ceil(block_in).next_power_of_two();
        let chunk = block_in * periods;
        let fft = Fft::<f32>::new_custom(
            from,
            to,
            chunk,
            1,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Both,
        )?;
        return Ok(Box::new(fft));
    }
    let params = SincInterpolationParameters {
        sinc_len: 128,
        f_cutoff: None,
        oversampling_factor: 128,
        interpolation: SincInterpolationType::Cubic,
        window: WindowFunction::BlackmanHarris2,
    };
    let ratio = to as f64 / from as f64;
    let sinc = Async::<f32>::new_sinc(ratio, 1.0, &params, SINC_CHUNK, 1, FixedAsync::Input)?;
    Ok(Box::new(sinc))
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;

    fn tone(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| 0.5 * (2.0 * PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    fn resample_whole(rate: u32, input: &[f32]) -> Vec<f32> {
        let mut r = Resampler::new(rate).unwrap();
        let mut out = r.process(input);
        out.extend(r.flush());
        out
    }

    fn resample_pieces(rate: u32, input: &[f32], piece: usize) -> Vec<f32> {
        let mut r = Resampler::new(rate).unwrap();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            out.extend(r.process(chunk));
        }
        out.extend(r.flush());
        out
    }

    /// Magnitude of the DFT of `x` at `freq` Hz (sample rate 16 kHz), normalised by length.
    fn dft_mag(x: &[f32], freq: f32) -> f32 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, &s) in x.iter().enumerate() {
            let w = 2.0 * std::f64::consts::PI * f64::from(freq) * i as f64 / 16_000.0;
            re += f64::from(s) * w.cos();
            im -= f64::from(s) * w.sin();
        }
        ((re * re + im * im).sqrt() / x.len() as f64) as f32
    }

    fn max_jump(x: &[f32]) -> f32 {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    }

    fn expected_len(in_len: usize, rate: u32) -> f64 {
        in_len as f64 * 16_000.0 / f64::from(rate)
    }

    #[test]
    fn rejects_absurd_rates() {
        assert!(Resampler::new(0).is_err());
        assert!(Resampler::new(10_000_000).is_err());
    }

    #[test]
    fn passthrough_at_16k_is_a_copy() {
        let input = tone(440.0, 16_000, 0.3);
        assert_eq!(resample_pieces(16_000, &input, 123), input);
    }

    #[test]
    fn tone_keeps_its_frequency_and_length() {
        for rate in [8_000, 22_050, 44_100, 48_000, 96_000, 44_101] {
            let input = tone(1_000.0, rate, 1.0);
            let out = resample_whole(rate, &input);
            let want = expected_len(input.len(), rate);
            assert!(
                (out.len() as f64 - want).abs() <= 1.0,
                "{rate} Hz: got {} samples, want {want}",
                out.len()
            );
            // Skip the edges (filter ramp) and check the energy sits at 1 kHz.
            let body = &out[800..out.len() - 800];
            let at_tone = dft_mag(body, 1_000.0);
            let off_tone = dft_mag(body, 1_300.0);
            assert!(at_tone > 0.2, "{rate} Hz: 1 kHz bin only {at_tone}");
            assert!(
                at_tone > 100.0 * off_tone,
                "{rate} Hz: {at_tone} vs {off_tone}"
            );
            // Zero crossings: 2 per period → 2000 per second of audio.
            let crossings = body
                .windows(2)
                .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
                .count();
            let want = 2.0 * 1_000.0 * body.len() as f64 / 16_000.0;
            assert!(
                (crossings as f64 - want).abs() <= 2.0,
                "{rate} Hz: {crossings} crossings"
            );
        }
    }

    #[test]
    fn amplitude_is_kept() {
        let out = resample_whole(44_100, &tone(1_000.0, 44_100, 1.0));
        let peak = out[800..out.len() - 800]
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.01, "peak {peak}");
    }

    #[test]
    fn twenty_ms_pieces_equal_one_block() {
        for rate in [44_100, 48_000, 8_000, 44_101] {
            let input = tone(1_000.0, rate, 1.3);
            let whole = resample_whole(rate, &input);
            let piece = rate as usize / 50;
            let pieces = resample_pieces(rate, &input, piece);
            assert_eq!(whole.len(), pieces.len(), "{rate} Hz");
            for (i, (a, b)) in whole.iter().zip(&pieces).enumerate() {
                assert!((a - b).abs() <= 1e-5, "{rate} Hz sample {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn odd_piece_sizes_equal_one_block() {
        let input = tone(700.0, 22_050, 0.9);
        let whole = resample_whole(22_050, &input);
        let pieces = resample_pieces(22_050, &input, 37);
        assert_eq!(whole.len(), pieces.len());
        assert!(whole
            .iter()
            .zip(&pieces)
            .all(|(a, b)| (a - b).abs() <= 1e-5));
    }

    #[test]
    fn no_discontinuity_at_chunk_boundaries() {
        // A 1 kHz tone at amplitude 0.5 sampled at 16 kHz moves at most 2π·1000/16000·0.5 per
        // sample (≈ 0.196); a glitch at a chunk seam would jump far more.
        let limit = 2.0 * PI * 1_000.0 / 16_000.0 * 0.5 * 1.05;
        for rate in [44_100, 48_000] {
            let out = resample_pieces(rate, &tone(1_000.0, rate, 2.0), rate as usize / 50);
            let body = &out[400..out.len() - 400];
            let jump = max_jump(body);
            assert!(jump <= limit, "{rate} Hz: jump {jump} > {limit}");
        }
    }

    #[test]
    fn flush_makes_it_reusable() {
        let input = tone(1_000.0, 48_000, 0.5);
        let mut r = Resampler::new(48_000).unwrap();
        let mut first = r.process(&input);
        first.extend(r.flush());
        let mut second = r.process(&input);
        second.extend(r.flush());
        assert_eq!(first, second);
    }

    #[test]
    fn very_short_input_gives_exact_length() {
        let input: Vec<f32> = tone(1_000.0, 44_100, 0.1)[..441].to_vec();
        assert_eq!(resample_whole(44_100, &input).len(), 160); // 441 * 16000 / 44100
        let input: Vec<f32> = input[..440].to_vec();
        assert_eq!(resample_whole(44_100, &input).len(), 160); // ceil(159.6)
    }
}
