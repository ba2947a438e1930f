//! Audio of any length → windows cut at pauses → pool jobs → one continuous timeline.
//!
//! Whisper sees at most 30 s at a time. This module pulls 16 kHz audio from a callback only
//! until it holds one window (plus whatever the last chunk brought), asks the VAD where the
//! speech is, cuts the window at a pause, and submits just the speech part (with up to a
//! second of the audio around it) as a job. Windows without speech are skipped, so silence,
//! noise and music add no text and cost no decoding. While one window is being transcribed the next one is read and
//! analysed, and segment times are shifted by the window's start so they run on across windows.
//! A batch run ([`Options::low_latency`] off) whose whole input fits one window and holds
//! speech submits all of it, as whisper-cli does: the VAD can miss a soft first word.
//!
//! Like whisper-cli, which carries the text decoded so far into each next 30 s of a file, a batch
//! run primes each window with the text of the windows before it (after the caller's prompt, the
//! last [`CONTEXT_CHARS`] characters; whisper.cpp keeps the last 223 tokens of it): names,
//! spelling, script and punctuation stay consistent across windows. A window is then submitted
//! only once the one before it has finished (the next one is still read and analysed meanwhile).
//! The text is carried only across contiguous speech, as whisper.cpp carries it only from one
//! 30 s window to the one right after it ([`Context::follow`]): after more than [`CARRY_GAP`] of
//! silence it is dropped (primed across a long silence, Whisper repeated the carried text as the
//! next window's segment, at the wrong time). It is also dropped after a window that repeated
//! itself (whisper.cpp drops it after a high-temperature fallback, which whisper-rs does not
//! report; a repeated segment is what that fallback is for). Windows shorter than
//! [`SHORT_WINDOW`] get only the caller's prompt: whisper.cpp drops the earlier text for a
//! file's last few seconds, where it tends to make the decoder repeat itself ([`CARRY_TEXT`]
//! switches all of this off).
//!
//! The caller stops a run with a [`CancellationToken`]: it is checked before each pull from the
//! source, and a cancelled run ends with [`LongError::Stopped`]. The source's own error comes back
//! unchanged in [`LongError::Input`], so a caller can tell bad input from everything else.
//!
//! This module must not decode files or hold the whole input: memory stays flat however long
//! the audio is. It must not decide what a stop or a bad input means to a client (that is the
//! caller's), and it blocks the calling thread (use `spawn_blocking` from async code).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::engine::{InferenceError, Options};
use super::model::Model;
use super::pool::{JobEvent, JobHandle, Pool};
use super::vad::{frame_levels, Vad, VadError};
use crate::audio::SAMPLE_RATE;
use crate::transcript::{Segment, Transcript};

const RATE: usize = SAMPLE_RATE as usize;
/// Longest window handed to Whisper: its own context length.
const WINDOW: usize = 30 * RATE;
/// Windows shorter than this are only cut when the input ends (avoids slivers).
const MIN_CUT: usize = 2 * RATE;
/// Audio kept around detected speech so word edges are not clipped.
const PAD: usize = RATE / 5;
/// Audio around the detected speech that Whisper is given with it (within the window): the VAD
/// misses soft onsets and endings (a short "好" opening a sentence), and Whisper decodes better
/// with some of the silence around speech, as whisper-cli gives it the whole file. Segment
/// times are still kept from starting before the speech (less [`PAD`]).
const CONTEXT: usize = RATE;
/// Silence after the last speech that counts as a pause to cut in.
const MIN_TRAILING_GAP: usize = 2 * RATE / 5;
/// Audio kept uncut at the end of the buffer, where the VAD cannot see a speech onset yet.
const EDGE: usize = RATE;
/// Characters of earlier text a window is primed with: more than the 223 tokens whisper.cpp
/// keeps of a prompt in any script, so its own cut decides.
pub const CONTEXT_CHARS: usize = 1200;

/// Whether a batch window's prompt carries the text of the windows before it, as whisper-cli
/// does (within the rules of [`Context`]). Without those rules, on twenty minutes of clips with
/// 40 s silences between them (tests/inference.rs,
/// `twenty_minutes_are_transcribed_in_order_with_bounded_lookahead`), Whisper repeated the
/// carried text as a later window's segment; with them that test passes, and on the 146 s speech
/// (docs/ACCURACY.md) the text stays as close to whisper-cli's as without carrying.
const CARRY_TEXT: bool = true;
/// Longest silence between one window's speech (with its [`CONTEXT`]) and the next window's
/// first speech across which the earlier text is still carried: a pause within one talk, not
/// a new recording.
pub const CARRY_GAP: usize = 3 * RATE;
/// Speech shorter than this is decoded without the earlier windows' text (whisper.cpp: 5 s).
pub const SHORT_WINDOW: usize = 5 * RATE;

/// What [`transcribe`] reports while it runs, in timeline order.
#[derive(Debug, Clone, PartialEq)]
pub enum LongEvent {
    /// A segment, times from the start of the whole input.
    Segment(Segment),
    /// Everything up to `processed_secs` into the input has been transcribed.
    Progress {
        /// Seconds of input fully handled so far.
        processed_secs: f64,
    },
}

/// Why a long transcription ended without a transcript. `E` is the audio source's error type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LongError<E> {
    /// The caller's cancellation token fired before the input was read to its end.
    #[error("the transcription was stopped")]
    Stopped,
    /// The audio source failed; its own error, untouched.
    #[error("could not read the audio: {0}")]
    Input(E),
    /// Voice-activity detection failed.
    #[error(transparent)]
    Vad(#[from] VadError),
    /// A transcription job failed.
    #[error(transparent)]
    Inference(#[from] InferenceError),
}

/// Transcribes audio of any length pulled from `next_chunk` (16 kHz mono; `Ok(None)` at the
/// end). Silero VAD is used when `vad_model` is an existing file, an energy detector otherwise.
/// Every segment and a progress mark after each window go to `on_event`; the whole transcript
/// is returned at the end. Cancelling `cancel` stops the run before its next pull from the source.
pub fn transcribe<E>(
    pool: &Pool,
    next_chunk: impl FnMut() -> Result<Option<Vec<f32>>, E>,
    options: &Options,
    vad_model: Option<&Path>,
    cancel: &CancellationToken,
    on_event: impl FnMut(LongEvent),
) -> Result<Transcript, LongError<E>> {
    let model = pool.default_model().clone();
    let source = Source {
        pool,
        model: &model,
    };
    transcribe_on(source, next_chunk, options, vad_model, cancel, on_event)
}

/// Where [`transcribe_on`] sends its windows: a pool and the model to run them with.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// The workers.
    pub pool: &'a Pool,
    /// The model every window runs with (held by the caller for the whole run).
    pub model: &'a Arc<Model>,
}

/// [`transcribe`] with a model that need not be the pool's default.
pub fn transcribe_on<E>(
    source: Source<'_>,
    next_chunk: impl FnMut() -> Result<Option<Vec<f32>>, E>,
    options: &Options,
    vad_model: Option<&Path>,
    cancel: &CancellationToken,
    mut on_event: impl FnMut(LongEvent),
) -> Result<Transcript, LongError<E>> {
    let Source { pool, model } = source;
    super::engine::validate(options)?;
    let mut windows = Windows::new(next_chunk, Vad::new(vad_model)?, cancel.clone());
    windows.whole_input = !options.low_latency;
    let mut timeline = Timeline::new(options.language.clone().filter(|l| l != "auto"));
    let mut options = options.clone();
    let mut context =
        (CARRY_TEXT && !options.low_latency).then(|| Context::new(options.initial_prompt.take()));
    let mut in_flight: Option<InFlight> = None;
    while let Some(window) = windows.next_window()? {
        if context.is_some() {
            // The window's prompt is the text before it: wait for that text.
            if let Some(previous) = in_flight.take() {
                finish(&mut timeline, previous, context.as_mut(), &mut on_event)?;
                options.language = options.language.or(timeline.language.clone());
            }
        }
        let job = match window.speech {
            Some(audio) => {
                if let Some(context) = &mut context {
                    context.follow(window.speech_start);
                    options.initial_prompt = context.prompt(audio.len());
                }
                Some(pool.submit_blocking_to(model, audio, options.clone())?)
            }
            None => None,
        };
        if let Some(previous) = in_flight.take() {
            finish(&mut timeline, previous, context.as_mut(), &mut on_event)?;
            options.language = options.language.or(timeline.language.clone());
        }
        in_flight = Some(InFlight {
            job,
            speech_start: window.speech_start,
            speech_end: window.speech_end,
            onset: window.onset,
            end: window.end,
        });
    }
    if let Some(previous) = in_flight.take() {
        finish(&mut timeline, previous, context.as_mut(), &mut on_event)?;
    }
    let fallback = if model.is_multilingual() { "" } else { "en" };
    Ok(Transcript {
        language: timeline.language.unwrap_or_else(|| fallback.into()),
        language_probability: timeline.language_probability,
        duration: windows.consumed as f64 / RATE as f64,
        segments: timeline.segments,
    })
}

/// Collects one window's job onto the timeline and adds its text to the context, if kept.
fn finish<E>(
    timeline: &mut Timeline,
    window: InFlight,
    context: Option<&mut Context>,
    on_event: &mut impl FnMut(LongEvent),
) -> Result<(), LongError<E>> {
    let before = timeline.segments.len();
    let end = window.job.is_some().then_some(window.speech_end);
    timeline.finish(window, on_event)?;
    if let Some(context) = context {
        let texts: Vec<&str> = timeline.segments[before..]
            .iter()
            .map(|s| s.text.as_str())
            .collect();
        context.push_window(&texts, end);
    }
    Ok(())
}

/// The text a batch run has produced so far, after the caller's prompt, to prime the next
/// window with (as whisper.cpp carries its decoded tokens from one 30 s window to the next).
#[derive(Debug, Default)]
struct Context {
    /// The caller's prompt, kept for every window.
    prompt: Option<String>,
    /// The text of the contiguous speech so far, space-separated; only the last
    /// [`CONTEXT_CHARS`] characters are kept.
    text: String,
    /// Input sample where the last decoded window's audio ended, to tell contiguous speech
    /// from a new stretch after a silence.
    speech_end: Option<usize>,
}

impl Context {
    fn new(prompt: Option<String>) -> Self {
        Context {
            prompt: prompt.filter(|p| !p.trim().is_empty()),
            text: String::new(),
            speech_end: None,
        }
    }

    /// Prepares for a window whose audio starts at input sample `start`: the carried text is
    /// dropped when more than [`CARRY_GAP`] of silence lies between it and that text's audio.
    fn follow(&mut self, start: usize) {
        let contiguous = self
            .speech_end
            .is_some_and(|end| start.saturating_sub(end) <= CARRY_GAP);
        if !contiguous {
            self.text.clear();
        }
    }

    /// Takes one decoded window's segment texts, its audio ending at input sample `end`
    /// (`None` for a window without speech, which changes nothing). A window in which a
    /// segment repeats the one before it drops the carried text, its own included: the
    /// decoder was looping, and carrying that text on invites more of it.
    fn push_window(&mut self, texts: &[&str], end: Option<usize>) {
        let Some(end) = end else {
            return;
        };
        self.speech_end = Some(end);
        let trimmed: Vec<&str> = texts
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        if trimmed.windows(2).any(|pair| pair[0] == pair[1]) {
            self.text.clear();
            return;
        }
        for text in trimmed {
            self.push(text);
        }
    }

    /// Appends one segment's text, dropping the oldest characters beyond [`CONTEXT_CHARS`].
    fn push(&mut self, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(text);
        let excess = self.text.chars().count().saturating_sub(CONTEXT_CHARS);
        if let Some((at, _)) = self.text.char_indices().nth(excess) {
            self.text.drain(..at);
        }
    }

    /// The prompt for a window of `samples` samples of speech: the caller's prompt, then the
    /// text so far unless the window is short. whisper.cpp cuts it to its last 223 tokens, so
    /// a long text pushes the caller's prompt out, as it does in whisper-cli.
    fn prompt(&self, samples: usize) -> Option<String> {
        let text = (samples >= SHORT_WINDOW && !self.text.is_empty()).then_some(&self.text);
        match (&self.prompt, text) {
            (Some(prompt), Some(text)) => Some(format!("{prompt} {text}")),
            (Some(prompt), None) => Some(prompt.clone()),
            (None, text) => text.cloned(),
        }
    }
}

/// A window submitted (or skipped) whose results are still to be collected.
struct InFlight {
    /// The job, or `None` for a window without speech.
    job: Option<JobHandle>,
    /// Input sample where the job's audio begins (its time zero).
    speech_start: usize,
    /// Input sample where the job's audio ends; segment times are clamped to it.
    speech_end: usize,
    /// Input sample no segment may start before: the first speech, less [`PAD`].
    onset: usize,
    /// Input sample where the window ends, for progress.
    end: usize,
}

/// Segments collected so far, and what is needed to keep them on one timeline.
struct Timeline {
    /// Everything emitted, in order.
    segments: Vec<Segment>,
    /// The language forced by the caller or detected in the first window with speech.
    language: Option<String>,
    /// How sure Whisper was of `language`, when it detected it.
    language_probability: Option<f32>,
    /// End of the last emitted segment, so times never go backwards.
    last_end: f64,
}

impl Timeline {
    fn new(language: Option<String>) -> Self {
        Timeline {
            segments: Vec::new(),
            language,
            language_probability: None,
            last_end: 0.0,
        }
    }

    /// Collects one window's job, emitting its segments on the input's timeline.
    fn finish<E>(
        &mut self,
        window: InFlight,
        on_event: &mut impl FnMut(LongEvent),
    ) -> Result<(), LongError<E>> {
        if let Some(mut job) = window.job {
            let offset = window.speech_start as f64 / RATE as f64;
            let limit = window.speech_end as f64 / RATE as f64;
            let onset = window.onset as f64 / RATE as f64;
            loop {
                match job.blocking_next() {
                    Some(JobEvent::Segment(segment)) => {
                        let segment = self.place(segment, offset, onset, limit);
                        on_event(LongEvent::Segment(segment.clone()));
                        self.segments.push(segment);
                    }
                    Some(JobEvent::Done(summary)) => {
                        if self.language.is_none() {
                            self.language = Some(summary.language);
                            self.language_probability = summary.language_probability;
                        }
                        break;
                    }
                    Some(JobEvent::Failed(error)) => return Err(error.into()),
                    None => return Err(InferenceError::ShutDown.into()),
                }
            }
        }
        on_event(LongEvent::Progress {
            processed_secs: window.end as f64 / RATE as f64,
        });
        Ok(())
    }

    /// Shifts a window-relative segment onto the input's timeline, within
    /// `[max(last_end, onset), limit]`.
    fn place(&mut self, mut segment: Segment, offset: f64, onset: f64, limit: f64) -> Segment {
        let floor = self.last_end.max(onset);
        let shift = |t: f64| (t + offset).clamp(floor, limit.max(floor));
        segment.start = shift(segment.start);
        segment.end = shift(segment.end).max(segment.start);
        if let Some(tokens) = segment.tokens.as_mut() {
            for token in tokens {
                token.start = shift(token.start);
                token.end = shift(token.end).max(token.start);
            }
        }
        self.last_end = segment.end;
        segment
    }
}

/// One cut of the input.
struct Window {
    /// The speech part to transcribe, or `None` when the window holds no speech.
    speech: Option<Vec<f32>>,
    /// Input sample where `speech` begins.
    speech_start: usize,
    /// Input sample where `speech` ends.
    speech_end: usize,
    /// Input sample where the first detected speech begins, less [`PAD`].
    onset: usize,
    /// Input sample where the window ends.
    end: usize,
}

/// Pulls audio and cuts it into windows, holding at most one window plus the last chunk.
struct Windows<F> {
    /// The audio source.
    next_chunk: F,
    /// Where the speech is.
    vad: Vad,
    /// Audio read but not yet cut into a window.
    buffer: Vec<f32>,
    /// Input sample index of `buffer[0]`.
    buffer_start: usize,
    /// Samples read from the source so far (the input's length once it has ended).
    consumed: usize,
    /// The source has said it has no more audio.
    ended: bool,
    /// The caller's stop signal, checked before each pull from the source.
    cancel: CancellationToken,
    /// Whether an input that fits one window is submitted whole when it holds speech (batch),
    /// rather than just its speech part.
    whole_input: bool,
}

impl<F, E> Windows<F>
where
    F: FnMut() -> Result<Option<Vec<f32>>, E>,
{
    fn new(next_chunk: F, vad: Vad, cancel: CancellationToken) -> Self {
        Windows {
            next_chunk,
            vad,
            buffer: Vec::new(),
            buffer_start: 0,
            consumed: 0,
            ended: false,
            cancel,
            whole_input: false,
        }
    }

    fn next_window(&mut self) -> Result<Option<Window>, LongError<E>> {
        self.fill()?;
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let region = self.buffer.len().min(WINDOW);
        let at_end = self.ended && self.buffer.len() <= WINDOW;
        let spans = self.vad.speech_spans(&self.buffer[..region])?;
        let cut = choose_cut(&self.buffer[..region], &spans, at_end);
        let whole = self.whole_input && at_end && self.buffer_start == 0 && !spans.is_empty();
        let window = if whole {
            self.take_whole(&spans)
        } else {
            self.take_window(cut, &spans)
        };
        debug!(
            start = self.buffer_start as f64 / RATE as f64,
            speech = window.speech.is_some(),
            "window cut"
        );
        Ok(Some(window))
    }

    /// Reads until the buffer holds a full window or the source ends.
    fn fill(&mut self) -> Result<(), LongError<E>> {
        while !self.ended && self.buffer.len() < WINDOW {
            if self.cancel.is_cancelled() {
                return Err(LongError::Stopped);
            }
            match (self.next_chunk)() {
                Ok(Some(chunk)) => {
                    self.consumed += chunk.len();
                    self.buffer.extend_from_slice(&chunk);
                }
                Ok(None) => self.ended = true,
                Err(error) => return Err(LongError::Input(error)),
            }
        }
        Ok(())
    }

    /// Removes `buffer[..cut]` and returns it as a window, keeping only its speech part.
    fn take_window(&mut self, cut: usize, spans: &[Range<usize>]) -> Window {
        let start = self.buffer_start;
        let speech_range = speech_range(spans, cut);
        let speech = speech_range
            .clone()
            .map(|(range, _)| self.buffer[range].to_vec());
        let (range, onset) = speech_range.unwrap_or((0..0, 0));
        self.buffer.drain(..cut);
        self.buffer_start += cut;
        Window {
            speech,
            speech_start: start + range.start,
            speech_end: start + range.end,
            onset: start + onset,
            end: start + cut,
        }
    }
}

impl<F> Windows<F> {
    /// Takes the whole buffer (the whole input) as one window; `spans` must not be empty.
    fn take_whole(&mut self, spans: &[Range<usize>]) -> Window {
        let len = self.buffer.len();
        let first = spans.first().map_or(0, |s| s.start);
        let start = self.buffer_start;
        self.buffer_start += len;
        Window {
            speech: Some(std::mem::take(&mut self.buffer)),
            speech_start: start,
            speech_end: start + len,
            // Segments may start in the audio Whisper would have had around the first speech.
            onset: start + first.saturating_sub(CONTEXT),
            end: start + len,
        }
    }
}

/// The part of `[0, cut)` from the first speech to the last with [`CONTEXT`] around it, and
/// where the first speech begins less [`PAD`]; `None` without speech.
fn speech_range(spans: &[Range<usize>], cut: usize) -> Option<(Range<usize>, usize)> {
    let inside: Vec<&Range<usize>> = spans.iter().filter(|s| s.start < cut).collect();
    let first = inside.first()?;
    let last = inside.last()?;
    let start = first.start.saturating_sub(CONTEXT);
    let end = (last.end + CONTEXT).min(cut);
    (end > start).then_some((start..end, first.start.saturating_sub(PAD)))
}

/// Where to end the window that starts at `audio[0]`: the whole buffer at the end of input
/// or when there is no speech; else in the last pause; else at the quietest moment.
fn choose_cut(audio: &[f32], spans: &[Range<usize>], at_end: bool) -> usize {
    let len = audio.len();
    let Some(last) = spans.last() else {
        return len;
    };
    if at_end {
        return len;
    }
    if len - last.end.min(len) >= MIN_TRAILING_GAP {
        return (last.end + PAD).max(len.saturating_sub(EDGE)).min(len);
    }
    let gaps = spans
        .windows(2)
        .map(|pair| pair[0].end..pair[1].start)
        .chain(std::iter::once(0..spans[0].start).filter(|g| !g.is_empty()));
    let latest_gap = gaps
        .map(|gap| {
            if gap.start == 0 {
                // The next window then starts with the audio Whisper is given before speech.
                gap.end.saturating_sub(CONTEXT)
            } else {
                (gap.start + gap.end) / 2
            }
        })
        .filter(|&cut| cut >= MIN_CUT)
        .max();
    latest_gap.unwrap_or_else(|| quietest_point(audio))
}

/// The start of the quietest 100 ms in the last third of `audio` (never before `MIN_CUT`).
fn quietest_point(audio: &[f32]) -> usize {
    let frame = RATE / 10;
    let from = (audio.len() * 2 / 3).max(MIN_CUT).min(audio.len());
    let levels = frame_levels(&audio[from..], frame);
    let quietest = levels
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    match quietest {
        Some(i) if from + i * frame > 0 => from + i * frame,
        _ => audio.len(),
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one-span cases are the point of these tests
mod tests {
    use super::*;

    fn secs(s: f64) -> usize {
        (s * RATE as f64) as usize
    }

    #[test]
    fn no_speech_consumes_the_whole_buffer() {
        let audio = vec![0.0; WINDOW];
        assert_eq!(choose_cut(&audio, &[], false), WINDOW);
    }

    #[test]
    fn cuts_after_the_last_speech_when_a_pause_follows() {
        let audio = vec![0.0; WINDOW];
        let spans = [secs(1.0)..secs(12.0)];
        let cut = choose_cut(&audio, &spans, false);
        assert_eq!(cut, WINDOW - EDGE);
        let spans = [secs(1.0)..secs(29.5)];
        assert_eq!(choose_cut(&audio, &spans, false), secs(29.7));
    }

    #[test]
    fn cuts_in_the_latest_inner_pause_when_speech_runs_to_the_edge() {
        let audio = vec![0.0; WINDOW];
        let spans = [
            secs(0.5)..secs(10.0),
            secs(11.0)..secs(20.0),
            secs(21.0)..WINDOW,
        ];
        assert_eq!(choose_cut(&audio, &spans, false), secs(20.5));
    }

    #[test]
    fn leading_silence_before_edge_speech_becomes_its_own_window() {
        let audio = vec![0.0; WINDOW];
        let spans = [secs(25.0)..WINDOW];
        assert_eq!(choose_cut(&audio, &spans, false), secs(25.0) - CONTEXT);
    }

    #[test]
    fn continuous_speech_is_cut_at_the_quietest_moment() {
        let mut audio: Vec<f32> = (0..WINDOW)
            .map(|i| ((i % 50) as f32 - 25.0) / 50.0)
            .collect();
        let quiet = secs(24.0);
        audio[quiet..quiet + RATE / 10].fill(0.0);
        let spans = [0..WINDOW];
        assert_eq!(choose_cut(&audio, &spans, false), quiet);
    }

    #[test]
    fn the_end_of_input_takes_everything() {
        let audio = vec![0.0; secs(5.0)];
        assert_eq!(choose_cut(&audio, &[0..secs(5.0)], true), secs(5.0));
    }

    #[test]
    fn speech_range_pads_and_stops_at_the_cut() {
        let spans = [
            secs(1.0)..secs(2.0),
            secs(3.0)..secs(4.0),
            secs(9.0)..secs(10.0),
        ];
        assert_eq!(
            speech_range(&spans, secs(5.0)),
            Some((secs(0.0)..secs(5.0), secs(0.8)))
        );
        let late = [secs(3.0)..secs(4.0), secs(9.0)..secs(10.0)];
        assert_eq!(
            speech_range(&late, secs(20.0)),
            Some((secs(2.0)..secs(11.0), secs(2.8)))
        );
        assert_eq!(speech_range(&[], secs(5.0)), None);
    }

    #[test]
    fn timeline_offsets_and_keeps_order() {
        let mut timeline = Timeline::new(None);
        let seg = |start, end| Segment::new(start, end, "x");
        let a = timeline.place(seg(0.0, 4.0), 10.0, 10.0, 20.0);
        assert_eq!((a.start, a.end), (10.0, 14.0));
        let b = timeline.place(seg(3.0, 12.0), 10.0, 10.0, 20.0);
        assert_eq!((b.start, b.end), (14.0, 20.0));
        let c = timeline.place(seg(0.0, 2.0), 20.0, 21.0, 30.0);
        assert_eq!((c.start, c.end), (21.0, 22.0), "no start before the speech");
    }

    #[test]
    fn context_keeps_the_prompt_then_the_latest_text() {
        let mut context = Context::new(Some("Names: Aoife.".into()));
        assert_eq!(
            context.prompt(SHORT_WINDOW).as_deref(),
            Some("Names: Aoife.")
        );
        context.push(" Hello there. ");
        context.push("");
        assert_eq!(
            context.prompt(SHORT_WINDOW).as_deref(),
            Some("Names: Aoife. Hello there.")
        );
        assert_eq!(
            context.prompt(SHORT_WINDOW - 1).as_deref(),
            Some("Names: Aoife."),
            "short windows get the caller's prompt only"
        );
        let mut plain = Context::new(Some("  ".into()));
        assert_eq!(plain.prompt(SHORT_WINDOW), None);
        plain.push("Hello.");
        assert_eq!(plain.prompt(SHORT_WINDOW).as_deref(), Some("Hello."));
        assert_eq!(plain.prompt(SHORT_WINDOW - 1), None);
        for _ in 0..CONTEXT_CHARS {
            plain.push("一二");
        }
        let kept = plain.prompt(SHORT_WINDOW).unwrap();
        assert_eq!(kept.chars().count(), CONTEXT_CHARS);
        assert!(kept.ends_with("一二 一二"), "the latest text is kept");
    }

    #[test]
    fn context_is_carried_only_across_contiguous_speech() {
        let mut context = Context::new(None);
        context.follow(0);
        assert_eq!(context.prompt(SHORT_WINDOW), None);
        context.push_window(&["Hello there."], Some(secs(10.0)));
        context.follow(secs(10.0) + CARRY_GAP);
        assert_eq!(
            context.prompt(SHORT_WINDOW).as_deref(),
            Some("Hello there."),
            "a short pause keeps the text"
        );
        context.push_window(&["General Kenobi."], Some(secs(40.0)));
        context.follow(secs(40.0) + CARRY_GAP + 1);
        assert_eq!(
            context.prompt(SHORT_WINDOW),
            None,
            "a long silence drops it"
        );
        context.push_window(&["Again."], Some(secs(60.0)));
        context.push_window(&["ignored"], None);
        context.follow(secs(61.0));
        assert_eq!(
            context.prompt(SHORT_WINDOW).as_deref(),
            Some("Again."),
            "a window without speech neither adds text nor moves the end"
        );
    }

    #[test]
    fn a_window_that_repeats_itself_drops_the_carried_text() {
        let mut context = Context::new(Some("Names: Aoife.".into()));
        context.follow(0);
        context.push_window(&["One."], Some(secs(5.0)));
        context.follow(secs(5.0));
        context.push_window(&["Thank you.", " Thank you. "], Some(secs(10.0)));
        context.follow(secs(10.0));
        assert_eq!(
            context.prompt(SHORT_WINDOW).as_deref(),
            Some("Names: Aoife."),
            "the caller's prompt stays"
        );
    }

    /// A source of `total` samples, a tone between `speech` and silence elsewhere.
    fn tone_source(
        total: usize,
        speech: Range<usize>,
    ) -> impl FnMut() -> Result<Option<Vec<f32>>, String> {
        let mut produced = 0;
        move || {
            if produced >= total {
                return Ok(None);
            }
            let n = RATE.min(total - produced);
            let chunk = (produced..produced + n)
                .map(|i| {
                    if speech.contains(&i) {
                        0.3 * ((i % 40) as f32 / 40.0 - 0.5)
                    } else {
                        0.0
                    }
                })
                .collect();
            produced += n;
            Ok(Some(chunk))
        }
    }

    #[test]
    fn a_batch_input_that_fits_one_window_is_submitted_whole() {
        let total = secs(10.0);
        let mut windows = Windows::new(
            tone_source(total, secs(5.0)..secs(8.0)),
            Vad::energy(),
            CancellationToken::new(),
        );
        windows.whole_input = true;
        let window = windows.next_window().unwrap().unwrap();
        assert_eq!(window.speech.map(|s| s.len()), Some(total));
        assert_eq!((window.speech_start, window.speech_end), (0, total));
        assert!(window.onset <= secs(5.0) - CONTEXT + PAD);
        assert!(windows.next_window().unwrap().is_none());

        let mut cut = Windows::new(
            tone_source(total, secs(5.0)..secs(8.0)),
            Vad::energy(),
            CancellationToken::new(),
        );
        let window = cut.next_window().unwrap().unwrap();
        assert!(
            window.speech_start > secs(3.0),
            "low latency: the speech part only"
        );
    }

    #[test]
    fn whole_input_skips_silence_and_long_inputs_are_cut() {
        let mut silent = Windows::new(
            tone_source(secs(10.0), 0..0),
            Vad::energy(),
            CancellationToken::new(),
        );
        silent.whole_input = true;
        assert!(silent.next_window().unwrap().unwrap().speech.is_none());

        let mut long = Windows::new(
            tone_source(secs(45.0), secs(33.0)..secs(40.0)),
            Vad::energy(),
            CancellationToken::new(),
        );
        long.whole_input = true;
        while let Some(window) = long.next_window().unwrap() {
            assert!(window.end - window.speech_start <= WINDOW);
            if let Some(speech) = &window.speech {
                assert!(
                    speech.len() < secs(15.0),
                    "only the speech part of a long input"
                );
            }
        }
    }

    #[test]
    fn a_cancelled_run_stops_before_its_next_pull() {
        let cancel = CancellationToken::new();
        let mut pulls = 0;
        let source = || -> Result<Option<Vec<f32>>, String> {
            pulls += 1;
            Ok(Some(vec![0.0; RATE]))
        };
        let mut windows = Windows::new(source, Vad::energy(), cancel.clone());
        cancel.cancel();
        assert_eq!(windows.next_window().err(), Some(LongError::Stopped));
        drop(windows);
        assert_eq!(pulls, 0);
    }

    #[test]
    fn the_source_error_comes_back_as_it_was() {
        #[derive(Debug, PartialEq)]
        struct Broken(u32);
        let source = || -> Result<Option<Vec<f32>>, Broken> { Err(Broken(7)) };
        let mut windows = Windows::new(source, Vad::energy(), CancellationToken::new());
        assert_eq!(
            windows.next_window().err(),
            Some(LongError::Input(Broken(7)))
        );
    }

    #[test]
    fn windows_never_exceed_whisper_context_and_cover_the_input() {
        // 95 s of a tone with a pause every 7 s, fed in 1 s chunks, energy VAD.
        let total = secs(95.0);
        let mut produced = 0;
        let source = move || -> Result<Option<Vec<f32>>, String> {
            if produced >= total {
                return Ok(None);
            }
            let n = RATE.min(total - produced);
            let chunk = (produced..produced + n)
                .map(|i| {
                    if (i / RATE) % 7 == 6 {
                        0.0
                    } else {
                        0.3 * ((i % 40) as f32 / 40.0 - 0.5)
                    }
                })
                .collect();
            produced += n;
            Ok(Some(chunk))
        };
        let mut windows = Windows::new(source, Vad::energy(), CancellationToken::new());
        let mut covered = 0;
        while let Some(window) = windows.next_window().unwrap() {
            assert!(window.end - covered <= WINDOW);
            assert!(window.end > covered);
            if window.speech.is_some() {
                assert!(window.speech_start >= covered && window.speech_end <= window.end);
            }
            covered = window.end;
            assert!(windows.buffer.len() <= WINDOW + RATE);
        }
        assert_eq!(covered, total);
        assert_eq!(windows.consumed, total);
    }
}
