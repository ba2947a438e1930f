//! Where the speech is: sample ranges of speech in a buffer of 16 kHz audio.
//!
//! Silero VAD (through whisper.cpp's `WhisperVadContext`) when its model file is available,
//! otherwise a simple energy detector, so long audio can still be cut at pauses and silence
//! still skipped. Used by [`super::long`] to choose window boundaries and to avoid feeding
//! Whisper stretches of non-speech, where it tends to invent text.
//!
//! [`SpeechProbe`] runs Silero on a live stream as it arrives: its recurrent state carries on
//! from one call to the next, so each call costs only the new audio (about 3 ms of CPU per
//! second of audio here), and it gives a speech probability per 32 ms chunk for the live
//! policy to find pauses in speech that energy cannot (applause, music, traffic).
//!
//! This module must not transcribe or hold more audio than the buffer it is given (the probe:
//! less than one chunk).

use std::ffi::CString;
use std::ops::Range;
use std::path::Path;
use std::ptr::NonNull;

use tracing::{debug, warn};
use whisper_rs::whisper_rs_sys as sys;
use whisper_rs::{WhisperVadContext, WhisperVadContextParams, WhisperVadParams};

use crate::audio::SAMPLE_RATE;

/// Samples per millisecond at 16 kHz.
const PER_MS: usize = SAMPLE_RATE as usize / 1000;

/// Why voice-activity detection could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VadError {
    /// The Silero model exists but could not be loaded.
    #[error("could not load the voice-activity model at {0}")]
    ModelLoad(String),
    /// The detector failed on a buffer.
    #[error("voice-activity detection failed")]
    Detect,
}

/// A voice-activity detector; see the module docs for which one is used.
pub struct Vad {
    /// The detector in use.
    kind: Kind,
}

enum Kind {
    /// Silero via whisper.cpp.
    Silero(WhisperVadContext),
    /// The fallback when no Silero model is available.
    Energy(EnergyVad),
}

impl std::fmt::Debug for Vad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.is_silero() { "silero" } else { "energy" };
        f.debug_struct("Vad").field("kind", &name).finish()
    }
}

impl Vad {
    /// Silero when `model` names an existing file, the energy detector otherwise.
    pub fn new(model: Option<&Path>) -> Result<Vad, VadError> {
        match model {
            Some(path) if path.is_file() => Self::silero(path),
            Some(path) => {
                warn!(path = %path.display(), "VAD model not found; using the energy detector");
                Ok(Self::energy())
            }
            None => Ok(Self::energy()),
        }
    }

    /// The energy-based detector.
    pub fn energy() -> Vad {
        Vad {
            kind: Kind::Energy(EnergyVad::default()),
        }
    }

    fn silero(path: &Path) -> Result<Vad, VadError> {
        whisper_rs::install_logging_hooks();
        let path_str = model_path(path)?;
        let mut params = WhisperVadContextParams::new();
        params.set_n_threads(1);
        params.set_use_gpu(false);
        let context = WhisperVadContext::new(path_str, params).map_err(|_| load_error(path))?;
        debug!(path = %path.display(), "Silero VAD loaded");
        Ok(Vad {
            kind: Kind::Silero(context),
        })
    }

    /// Whether the Silero model is in use (rather than the energy fallback).
    pub fn is_silero(&self) -> bool {
        matches!(self.kind, Kind::Silero(_))
    }

    /// Speech ranges in `audio`, as sample indices, in order and not overlapping.
    pub fn speech_spans(&mut self, audio: &[f32]) -> Result<Vec<Range<usize>>, VadError> {
        if audio.is_empty() {
            return Ok(Vec::new());
        }
        match &mut self.kind {
            Kind::Silero(context) => silero_spans(context, audio),
            Kind::Energy(energy) => Ok(energy.speech_spans(audio)),
        }
    }
}

/// Silero on a live stream: audio in as it arrives, a speech probability out per whole chunk
/// of [`SpeechProbe::CHUNK`] samples, the model's state carried from call to call.
pub struct SpeechProbe {
    /// whisper.cpp's VAD context, owned: freed on drop, used by one thread at a time (`&mut`).
    context: NonNull<sys::whisper_vad_context>,
    /// Audio short of a whole chunk, kept for the next call (a zero-padded chunk would read a
    /// cut as silence and disturb the state).
    pending: Vec<f32>,
}

// SAFETY: the context is only touched through `&mut self`, never shared; whisper.cpp keeps no
// thread-local state for it.
unsafe impl Send for SpeechProbe {}

impl std::fmt::Debug for SpeechProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechProbe")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl SpeechProbe {
    /// Samples per probability: Silero's 32 ms window at 16 kHz.
    pub const CHUNK: usize = 512;

    /// Loads the Silero model at `path` (a few hundred kilobytes; one context per stream).
    pub fn new(path: &Path) -> Result<SpeechProbe, VadError> {
        whisper_rs::install_logging_hooks();
        let c_path = CString::new(model_path(path)?).map_err(|_| load_error(path))?;
        // SAFETY: plain value constructor.
        let mut params = unsafe { sys::whisper_vad_default_context_params() };
        params.n_threads = 1;
        params.use_gpu = false;
        // SAFETY: `c_path` is a valid NUL-terminated string for the call's duration.
        let raw = unsafe { sys::whisper_vad_init_from_file_with_params(c_path.as_ptr(), params) };
        let context = NonNull::new(raw).ok_or_else(|| load_error(path))?;
        let mut probe = SpeechProbe {
            context,
            pending: Vec::with_capacity(Self::CHUNK),
        };
        // A new context's state is not cleared.
        probe.reset();
        Ok(probe)
    }

    /// Appends `audio` (16 kHz mono, finite) and returns the speech probability (0–1) of each
    /// chunk it completed, in order.
    pub fn push(&mut self, audio: &[f32]) -> Result<Vec<f32>, VadError> {
        let mut probabilities = Vec::new();
        let mut rest = audio;
        if !self.pending.is_empty() {
            let take = (Self::CHUNK - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < Self::CHUNK {
                return Ok(probabilities);
            }
            // Detected from its own buffer, which is then kept (cleared) for the next part.
            let mut chunk = std::mem::take(&mut self.pending);
            let detected = self.detect(&chunk);
            chunk.clear();
            self.pending = chunk;
            probabilities.extend(detected?);
        }
        let whole = rest.len() - rest.len() % Self::CHUNK;
        probabilities.extend(self.detect(&rest[..whole])?);
        self.pending.extend_from_slice(&rest[whole..]);
        Ok(probabilities)
    }

    /// Forgets the stream so far: the next audio is read as a new stream's.
    pub fn reset(&mut self) {
        self.pending.clear();
        // SAFETY: the context is valid and exclusively ours.
        unsafe { sys::whisper_vad_reset_state(self.context.as_ptr()) };
    }

    /// Probabilities of whole chunks of `audio`, the state carried on.
    fn detect(&mut self, audio: &[f32]) -> Result<Vec<f32>, VadError> {
        if audio.is_empty() {
            return Ok(Vec::new());
        }
        let len = i32::try_from(audio.len()).map_err(|_| VadError::Detect)?;
        let context = self.context.as_ptr();
        // SAFETY: `audio` outlives the call and holds `len` samples; the context is ours.
        if !unsafe { sys::whisper_vad_detect_speech_no_reset(context, audio.as_ptr(), len) } {
            return Err(VadError::Detect);
        }
        // SAFETY: whisper.cpp keeps `n_probs` floats at `probs` until the next detection.
        let probabilities = unsafe {
            let n = usize::try_from(sys::whisper_vad_n_probs(context)).unwrap_or(0);
            let data = sys::whisper_vad_probs(context);
            if data.is_null() {
                return Err(VadError::Detect);
            }
            std::slice::from_raw_parts(data, n)
        };
        Ok(probabilities
            .iter()
            .map(|p| {
                if p.is_finite() {
                    p.clamp(0.0, 1.0)
                } else {
                    0.0
                }
            })
            .collect())
    }
}

impl Drop for SpeechProbe {
    fn drop(&mut self) {
        // SAFETY: the context came from `whisper_vad_init_from_file_with_params` and is freed
        // once.
        unsafe { sys::whisper_vad_free(self.context.as_ptr()) }
    }
}

/// `path` as whisper.cpp takes it: UTF-8 without NUL bytes.
fn model_path(path: &Path) -> Result<&str, VadError> {
    path.to_str()
        .filter(|p| !p.contains('\0'))
        .ok_or_else(|| load_error(path))
}

fn load_error(path: &Path) -> VadError {
    VadError::ModelLoad(path.display().to_string())
}

fn silero_spans(
    context: &mut WhisperVadContext,
    audio: &[f32],
) -> Result<Vec<Range<usize>>, VadError> {
    let mut params = WhisperVadParams::new();
    params.set_threshold(0.5);
    params.set_min_speech_duration(250);
    params.set_min_silence_duration(100);
    params.set_speech_pad(30);
    let segments = context
        .segments_from_samples(params, audio)
        .map_err(|_| VadError::Detect)?;
    // Timestamps come in centiseconds.
    let to_sample = |cs: f32| ((cs.max(0.0) as f64 * 160.0) as usize).min(audio.len());
    let spans = segments
        .map(|s| to_sample(s.start)..to_sample(s.end))
        .filter(|r| !r.is_empty())
        .collect();
    Ok(normalise(spans))
}

/// Sorts, and merges overlapping or touching spans.
fn normalise(mut spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    spans.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// Frame energy against an adaptive threshold: crude, but enough to find pauses and to
/// skip silence when no Silero model is available.
#[derive(Debug, Clone)]
pub struct EnergyVad {
    /// Frame length in samples.
    frame: usize,
    /// Frames quieter than this (dBFS) are never speech, however quiet the recording.
    floor_db: f32,
    /// How far above the buffer's noise floor (10th percentile) a frame must be.
    margin_db: f32,
    /// Pauses shorter than this (samples) are bridged.
    min_gap: usize,
    /// Bursts shorter than this (samples) are dropped as clicks.
    min_speech: usize,
    /// Added to both ends of each span so word edges are not clipped.
    pad: usize,
}

impl Default for EnergyVad {
    fn default() -> Self {
        EnergyVad {
            frame: 30 * PER_MS,
            floor_db: -45.0,
            margin_db: 10.0,
            min_gap: 300 * PER_MS,
            min_speech: 200 * PER_MS,
            pad: 100 * PER_MS,
        }
    }
}

impl EnergyVad {
    /// Speech ranges in `audio` (sample indices).
    pub fn speech_spans(&self, audio: &[f32]) -> Vec<Range<usize>> {
        let levels = frame_levels(audio, self.frame);
        let threshold = self.floor_db.max(percentile(&levels, 0.1) + self.margin_db);
        let mut spans: Vec<Range<usize>> = Vec::new();
        for (i, &level) in levels.iter().enumerate() {
            if level < threshold {
                continue;
            }
            let frame = i * self.frame..((i + 1) * self.frame).min(audio.len());
            match spans.last_mut() {
                Some(last) if frame.start - last.end < self.min_gap => last.end = frame.end,
                _ => spans.push(frame),
            }
        }
        let padded = spans
            .into_iter()
            .filter(|s| s.len() >= self.min_speech)
            .map(|s| s.start.saturating_sub(self.pad)..(s.end + self.pad).min(audio.len()))
            .collect();
        normalise(padded)
    }
}

/// RMS level of each frame in dBFS.
pub(crate) fn frame_levels(audio: &[f32], frame: usize) -> Vec<f32> {
    audio
        .chunks(frame.max(1))
        .map(|chunk| {
            let power = chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32;
            10.0 * (power + 1e-10).log10()
        })
        .collect()
}

fn percentile(values: &[f32], q: f32) -> f32 {
    if values.is_empty() {
        return f32::NEG_INFINITY;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted[((sorted.len() - 1) as f32 * q) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `seconds` of a 220 Hz tone at `amplitude`.
    fn tone(seconds: f32, amplitude: f32) -> Vec<f32> {
        let n = (seconds * SAMPLE_RATE as f32) as usize;
        (0..n)
            .map(|i| amplitude * (i as f32 * 220.0 * std::f32::consts::TAU / 16_000.0).sin())
            .collect()
    }

    fn silence(seconds: f32) -> Vec<f32> {
        vec![0.0; (seconds * SAMPLE_RATE as f32) as usize]
    }

    #[test]
    fn energy_finds_a_burst_between_silences() {
        let audio = [silence(2.0), tone(1.0, 0.3), silence(2.0)].concat();
        let spans = EnergyVad::default().speech_spans(&audio);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert!(span.start <= 32_000 && span.start >= 30_000, "{span:?}");
        assert!(span.end >= 48_000 && span.end <= 50_000, "{span:?}");
    }

    #[test]
    fn energy_finds_nothing_in_silence_or_faint_hiss() {
        assert!(EnergyVad::default().speech_spans(&silence(3.0)).is_empty());
        assert!(EnergyVad::default()
            .speech_spans(&tone(3.0, 0.001))
            .is_empty());
    }

    #[test]
    fn energy_bridges_short_pauses_and_splits_long_ones() {
        let audio = [
            tone(1.0, 0.3),
            silence(0.1),
            tone(1.0, 0.3),
            silence(2.0),
            tone(1.0, 0.3),
        ]
        .concat();
        assert_eq!(EnergyVad::default().speech_spans(&audio).len(), 2);
    }

    #[test]
    fn normalise_merges_overlaps() {
        assert_eq!(normalise(vec![5..9, 0..3, 2..4]), vec![0..4, 5..9]);
    }

    #[test]
    fn a_missing_model_falls_back_to_energy() {
        let vad = Vad::new(Some(Path::new("/nonexistent/ggml-silero.bin"))).unwrap();
        assert!(!vad.is_silero());
    }
}
