//! The commit policy for live streams.
//!
//! Whisper re-reads the uncommitted buffer a few times a second while speech continues (a
//! step that follows the measured inference time, [`LivePolicy::observe_inference`]). A
//! hypothesis is read as a sequence of units: words when Whisper reported token timings (live
//! jobs ask for them), else whole segments. Text becomes final — a `transcript_segment` — when
//! - two consecutive hypotheses agree on its leading units (all but the last unit, which may
//!   still be half spoken, and, with [`LiveConfig::agree_margin_secs`], any unit that ended too
//!   close to the newer hypothesis' end): "local agreement", or
//! - the hypothesis heard at least [`LiveConfig::settle_secs`] of audio after a unit ended
//!   and Whisper was sure of each of its tokens ([`LiveConfig::settle_min_prob`]): such words
//!   rarely change any more, so they need no second hypothesis, or
//! - two consecutive hypotheses read the same words, the last ending a sentence in either, and
//!   the newer heard at least [`LiveConfig::sentence_gap_secs`] more audio without a new word:
//!   the speaker stopped, even where a speech detector still hears speech (the first second or
//!   two of applause), or
//! - the speaker pauses (trailing silence of [`LiveConfig::pause_secs`], or that long without
//!   speech by the caller's speech detector, [`LivePolicy::observe_speech`]), or
//! - the hypothesis read a whole window ([`LiveConfig::window_secs`]): all but its last second
//!   is committed, so every window moves the stream forward, or
//! - the stream ends.
//!
//! With a speech detector, sound that is not speech (applause, music, traffic) is a pause too,
//! and while the buffer holds no speech no job is taken and the buffer is kept to a short
//! lead-in. Without one (the caller never calls `observe_speech`), pauses are found by energy
//! alone.
//!
//! Agreement, settling and finished sentences trust only a hypothesis whose new tokens have a
//! mean log-probability of at least [`LiveConfig::min_logprob`]: on a buffer of a breath and a
//! word's tail Whisper invents text with low confidence, and two such guesses may agree.
//!
//! The work per hypothesis is bounded whatever the lag: a job reads at most `window_secs` of
//! the buffer (its oldest part), and while more than that is waiting jobs follow each other
//! without waiting for a step and commit as they go (catching up sheds the agreement
//! hypotheses). Audio is dropped from the buffer once a whole Whisper segment is committed
//! (except by a finished sentence: Whisper's last word ends before its sound does), or at the
//! end of the last committed word once the buffer is longer than [`LiveConfig::cut_secs`];
//! either cut keeps [`LiveConfig::context_secs`] of committed words before the rest, so
//! Whisper reads the next words after what came before them. A later hypothesis re-reads the
//! committed words whose audio is still buffered: they are recognised by their text (edit
//! distance) where it lines up, else by their time, and skipped; a committed unit never starts
//! before the committed text ends (Whisper's word times move between hypotheses). The
//! committed text whose audio is gone is offered as the next job's prompt ([`LiveJob::prompt`];
//! the socket shell does not pass it to tiny.en, which looped with it). Memory per stream is
//! bounded by [`LiveConfig::max_buffer_secs`]: a stream that falls that far behind sheds its
//! oldest audio. Only one hypothesis per stream is in flight at a time; audio that arrives
//! meanwhile waits in the buffer (nothing queues up). A job lends the buffer as a [`SharedAudio`]
//! snapshot; its result is matched to the [`JobSpan`] it covered. This module must not block,
//! spawn or talk to Whisper itself, and must not copy the buffer for a job, or read the
//! environment ([`LiveConfig::with_overrides`] parses the benchmark overrides the socket shell
//! reads from `EARSHOT_LIVE_TUNING`).

use std::collections::VecDeque;

use crate::audio::{SharedAudio, SharedBuffer, SAMPLE_RATE};
use crate::transcript::Segment;

/// Tuning knobs of the policy; the defaults suit `tiny.en`/`base` on a small CPU.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Longest wait for new audio between hypotheses (also the step before any inference time
    /// is known); trades latency for CPU.
    pub step_secs: f64,
    /// Shortest wait between hypotheses, however fast inference is. Default 0.5 s: with the
    /// [`agree_margin_secs`](Self::agree_margin_secs) and confident settling it made words
    /// final 0.7 s sooner (p50) than a 1 s floor at the same live-vs-batch WER in
    /// `scripts/bench-live` (docs/BENCHMARKS.md, "Live latency"); without the margin a short
    /// step commits words two hypotheses agree on while still half heard.
    pub min_step_secs: f64,
    /// The step as a multiple of the recent inference time: 1.5 keeps a stream's worker busy
    /// at most about two thirds of the time, so the step shrinks on a fast machine and grows
    /// under load.
    pub step_per_inference: f64,
    /// Longest trailing silence (or, with a speech detector, stretch without speech) that
    /// still counts as "mid-sentence"; longer commits everything. Default 0.75 s: with Silero,
    /// 0.6 s also cut at a speaker's dramatic pauses ("my fellow Americans, | ask not"), and
    /// tiny.en read the short phrases alone worse (live-vs-batch WER 0.06-0.08 against
    /// 0.04); 0.75 s made sentences' last words final sooner than 0.9 s (final p95 1.60
    /// against 1.73 s on `report`) at no worse a WER (docs/BENCHMARKS.md "Pauses heard by
    /// Silero", "Word times from the alignment").
    pub pause_secs: f64,
    /// Most audio one hypothesis reads: bounds the work per hypothesis whatever the lag (kept
    /// below Whisper's 30 s window).
    pub window_secs: f64,
    /// Audio a hypothesis must have heard after a unit's end for the unit to be final without a
    /// second agreeing hypothesis, if Whisper was sure of it
    /// ([`settle_min_prob`](Self::settle_min_prob)); `f64::INFINITY` waits for agreement only.
    /// Default 0.8 s: with the margin and the 0.5 s step it cut final p95 by 1.4 s against
    /// agreement alone with a 1 s step, at the same WER.
    pub settle_secs: f64,
    /// Least probability Whisper must give every token of a unit for settling
    /// ([`settle_secs`](Self::settle_secs)) to commit it: a word guessed from half its sound
    /// is often a low-probability token. 0 settles whatever is old enough (at 0.6 s that
    /// doubled the WER in an earlier measurement); default 0.9.
    pub settle_min_prob: f64,
    /// Least mean log-probability of a hypothesis' new tokens for agreement or settling to
    /// commit from it (whisper.cpp's fallback threshold is the same -1): on a buffer holding
    /// the tail of a committed word and a breath, tiny.en invents text ("I'm gonna get it.",
    /// tokens at 0.05–0.45) and two such hypotheses may agree. `-inf` trusts every hypothesis.
    pub min_logprob: f64,
    /// Audio the newer of two agreeing hypotheses must have heard after a unit's end for their
    /// agreement to commit it: two hypotheses a short step apart may agree on a word half heard
    /// at the buffer's end. 0 commits whatever they agree on; default 0.4 s.
    pub agree_margin_secs: f64,
    /// Buffer length beyond which audio is cut at the last committed word rather than only at
    /// the end of a committed segment; shorter keeps hypotheses cheap, longer gives Whisper more
    /// of the sentence. Default: the window, so that a hypothesis over a whole window always
    /// moves the buffer on (with no cut, the next one re-read the same window, committing a
    /// word or two at its edge each time); 5 s lost more words (docs/BENCHMARKS.md).
    pub cut_secs: f64,
    /// Audio a hypothesis must have read beyond the previous one to commit a finished sentence
    /// the previous one read too, its last word included, when it heard nothing new after it:
    /// the speaker stopped, even where a speech detector still hears speech (the first second
    /// or two of applause). `f64::INFINITY` leaves sentence ends to the pause. Default 0.5 s
    /// (the shortest step): with the full stop taken from either reading it took final p95
    /// from 1.62 to 1.43–1.46 s per run on `report` and from 1.69 to 1.30–1.41 s on `jfk146`
    /// at the same WER (docs/BENCHMARKS.md "Finished sentences").
    pub sentence_gap_secs: f64,
    /// Committed audio kept before the uncommitted words where the buffer is cut (at a
    /// segment's end, or at the last committed word of a long buffer), so Whisper reads them
    /// after what was said before them rather than from a cold start; the kept words are
    /// recognised when re-read. 0 cuts right at the committed text's end. Default 2 s: on
    /// `scripts/bench-live` it took live-vs-batch WER from 0.071 to 0.046 on `report` and from
    /// 0.067 to 0.047 on `jfk146` (five runs) with final p95 at 1.5 s or under; 3 s read
    /// `jfk146` a little better (0.038) but made its slow words slower (final p95 1.58 s), 5 s
    /// was no better (docs/BENCHMARKS.md "Committed words kept before the rest").
    pub context_secs: f64,
    /// Least audio a hypothesis must have read for agreement or settling to commit from it
    /// (the last job of a stream or a pause commits regardless): on a buffer of a fraction of
    /// a second Whisper guesses, and two guesses may agree.
    pub min_commit_secs: f64,
    /// Most uncommitted audio kept; a stream further behind sheds its oldest audio (its words
    /// are lost) so that memory and latency stay bounded when the machine cannot keep up.
    pub max_buffer_secs: f64,
    /// RMS level below which a 30 ms frame is always silence (digital silence, faint hiss).
    pub speech_rms: f32,
    /// How far above the background level (tracked per stream) a frame must be to count as
    /// sound, so room noise between sentences still reads as a pause.
    pub above_floor: f32,
    /// Silence kept before speech starts, so the first word is not clipped.
    pub lead_in_secs: f64,
    /// Least probability from the speech detector ([`LivePolicy::observe_speech`]) at which a
    /// chunk starts speech; speech goes on until a chunk falls
    /// [`SPEECH_HYSTERESIS`] below it (Silero's own rule, and its default 0.5). Above 1 no
    /// chunk could ever be speech: callers then run no detector ([`Self::wants_detector`]).
    pub speech_prob: f64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            step_secs: 1.0,
            min_step_secs: 0.5,
            step_per_inference: 1.5,
            pause_secs: 0.75,
            window_secs: 10.0,
            settle_secs: 0.8,
            settle_min_prob: 0.9,
            agree_margin_secs: 0.4,
            min_logprob: -1.0,
            cut_secs: 10.0,
            min_commit_secs: 0.0,
            sentence_gap_secs: 0.5,
            context_secs: 2.0,
            max_buffer_secs: 30.0,
            speech_rms: 0.01,
            above_floor: 3.0,
            lead_in_secs: 0.3,
            speech_prob: 0.5,
        }
    }
}

impl LiveConfig {
    /// Whether a speech detector can tell this policy anything (`speech_prob` at most 1); for
    /// `scripts/bench-live` to measure energy alone in the same binary.
    pub fn wants_detector(&self) -> bool {
        self.speech_prob <= 1.0
    }

    /// The defaults with `key=value` overrides (comma-separated; keys are the field names,
    /// `inf` is infinity), so `scripts/bench-live` can try a lever without a rebuild. Unknown
    /// keys and unreadable values are an error naming them.
    pub fn with_overrides(mut self, overrides: &str) -> Result<Self, String> {
        for pair in overrides
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let number: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("`{value}` is not a number (for {key})"))?;
            let field = match key.trim() {
                "step_secs" => &mut self.step_secs,
                "min_step_secs" => &mut self.min_step_secs,
                "step_per_inference" => &mut self.step_per_inference,
                "pause_secs" => &mut self.pause_secs,
                "window_secs" => &mut self.window_secs,
                "settle_secs" => &mut self.settle_secs,
                "settle_min_prob" => &mut self.settle_min_prob,
                "agree_margin_secs" => &mut self.agree_margin_secs,
                "min_logprob" => &mut self.min_logprob,
                "cut_secs" => &mut self.cut_secs,
                "min_commit_secs" => &mut self.min_commit_secs,
                "sentence_gap_secs" => &mut self.sentence_gap_secs,
                "context_secs" => &mut self.context_secs,
                "max_buffer_secs" => &mut self.max_buffer_secs,
                "speech_prob" => &mut self.speech_prob,
                other => return Err(format!("unknown live tuning key `{other}`")),
            };
            *field = number;
        }
        Ok(self)
    }
}

/// A hypothesis the caller should compute with Whisper; its result goes back to
/// [`LivePolicy::on_result`] with the job's [`span`](Self::span).
#[derive(Debug, Clone)]
pub struct LiveJob {
    /// The uncommitted audio, 16 kHz mono, shared with the policy's buffer (move it into the
    /// job; a copy is never needed).
    pub audio: SharedAudio,
    /// What the audio covers, for reading the result.
    pub span: JobSpan,
    /// The committed text just before the job's audio (its audio already dropped), to prime
    /// Whisper as its initial prompt; `None` at the start of a stream.
    pub prompt: Option<String>,
}

/// The stretch of the stream a job covered: all the policy needs to read the job's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobSpan {
    /// Timeline position (seconds) of the job's first sample; Whisper's times are relative to it.
    pub offset: f64,
    /// Samples in the job's audio.
    pub samples: usize,
    /// True for the last job of a stream (or a pause): everything it returns is committed.
    pub is_final: bool,
}

/// What the caller should tell the client.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveOutput {
    /// Text that may still change, with a revision number that only grows.
    Partial { text: String, revision: u64 },
    /// Segments that will not change any more, in timeline seconds.
    Commit(Vec<Segment>),
}

/// Per-stream state of the commit policy.
#[derive(Debug)]
pub struct LivePolicy {
    /// The knobs, fixed for the stream's life.
    config: LiveConfig,
    /// Audio not yet committed; bounded because commits drop its head. Lent to jobs, not copied.
    buffer: SharedBuffer,
    /// Timeline seconds of `buffer[0]`.
    buffer_start: f64,
    /// Samples received in total, for the timeline and lag.
    received: u64,
    /// Value of `received` when the last job was taken; paces hypotheses by `step_secs`.
    taken_at: u64,
    /// Value of `received` the last finished hypothesis covered; lag is measured from it.
    covered: u64,
    /// Whether a job is out; only one at a time per stream.
    in_flight: bool,
    /// The previous hypothesis' uncommitted units, to find agreement.
    previous: Vec<Unit>,
    /// Timeline second where the previous hypothesis' audio ended, to know how much more a
    /// newer one heard ([`LiveConfig::sentence_gap_secs`]).
    previous_end: f64,
    /// Timeline second where the committed text ends; units of later hypotheses centred
    /// before it were committed already.
    committed_end: f64,
    /// The last [`REPEAT_WORDS`] committed words (normalised), to drop a repeat at the boundary.
    recent_words: Vec<String>,
    /// Revision of the last partial sent.
    revision: u64,
    /// Text of the last partial sent, to avoid repeating it.
    last_partial: String,
    /// Samples of trailing silence at the end of the buffer.
    trailing_silence: u64,
    /// Whether the buffer holds any sound at all; a silent buffer is never sent to Whisper.
    heard_sound: bool,
    /// Recent frame levels (about 5 s); their minimum is the background level.
    recent_levels: VecDeque<f32>,
    /// Committed words whose audio is still buffered, to recognise them when re-read and to
    /// cut between them ([`LiveConfig::context_secs`]); they join the prompt once their audio
    /// is dropped.
    unprompted: VecDeque<Unit>,
    /// The last committed words whose audio is gone: the next job's prompt.
    prompt: VecDeque<String>,
    /// Recent inference time per hypothesis (seconds, smoothed); paces the step.
    inference_secs: Option<f64>,
    /// Audio shed because the stream fell more than `max_buffer_secs` behind.
    shed: u64,
    /// What the caller's speech detector has heard; `None` while it has reported nothing (no
    /// detector: pauses are found by energy alone).
    heard: Option<Heard>,
}

/// The speech detector's reading of the stream so far ([`LivePolicy::observe_speech`]).
#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    /// Samples it has read, from the stream's start.
    read: u64,
    /// Sample where the last speech it heard ends (0: none yet).
    speech_end: u64,
    /// Whether its last chunk was speech (speech ends only below the lower threshold).
    speaking: bool,
}

/// How far below [`LiveConfig::speech_prob`] a chunk's probability must fall to end speech.
pub const SPEECH_HYSTERESIS: f64 = 0.15;

const FRAME: usize = (SAMPLE_RATE as usize) * 30 / 1000;
/// Committed words kept as the prompt (Whisper reads at most 224 prompt tokens).
const PROMPT_WORDS: usize = 40;
/// What a hypothesis that read a whole window leaves uncommitted at its end (seconds): its
/// last words may be cut off by the window's edge.
const WINDOW_TAIL_SECS: f64 = 1.0;
/// Committed words a new hypothesis' opening is compared with: a repeat of up to this many of
/// the last committed words is dropped ([`LivePolicy::new_units`]).
const REPEAT_WORDS: usize = 16;
/// Opening units beyond the committed words' count that [`LivePolicy::restated`] considers:
/// Whisper may split a committed word in two, or hear one that was missed.
const RESTATE_EXTRA: usize = 3;
/// Longest phrase (units) the loop guard looks for repeated back to back ([`loop_start`]).
const LOOP_PHRASE_UNITS: usize = 8;
/// Weight of the newest inference time in the smoothed one.
const INFERENCE_WEIGHT: f64 = 0.3;
/// Frames (of 30 ms) whose quietest sets the background level: about 5 s.
const FLOOR_FRAMES: usize = 166;
/// The background level never counts above this (-34 dBFS): louder is sound, not room noise.
const MAX_FLOOR: f32 = 0.02;

fn secs(samples: u64) -> f64 {
    samples as f64 / SAMPLE_RATE as f64
}

fn samples(secs: f64) -> u64 {
    (secs * SAMPLE_RATE as f64).round().max(0.0) as u64
}

fn rms(frame: &[f32]) -> f32 {
    if frame.is_empty() {
        return 0.0;
    }
    (frame.iter().map(|s| s * s).sum::<f32>() / frame.len() as f32).sqrt()
}

fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl LivePolicy {
    /// A fresh stream starting at timeline zero.
    pub fn new(config: LiveConfig) -> Self {
        Self {
            config,
            buffer: SharedBuffer::default(),
            buffer_start: 0.0,
            received: 0,
            taken_at: 0,
            covered: 0,
            in_flight: false,
            previous: Vec::new(),
            previous_end: 0.0,
            committed_end: 0.0,
            recent_words: Vec::new(),
            revision: 0,
            last_partial: String::new(),
            trailing_silence: 0,
            heard_sound: false,
            recent_levels: VecDeque::with_capacity(FLOOR_FRAMES),
            unprompted: VecDeque::new(),
            prompt: VecDeque::new(),
            inference_secs: None,
            shed: 0,
            heard: None,
        }
    }

    /// Whether a speech detector can tell this policy anything ([`LiveConfig::wants_detector`]).
    pub fn wants_detector(&self) -> bool {
        self.config.wants_detector()
    }

    /// Takes the speech detector's probability for each chunk of `chunk` samples that it read
    /// since the last call (chunks follow each other from the stream's first sample). From
    /// the first call on, a stretch without speech is a pause however loud it is, and a buffer
    /// without speech asks for no job.
    pub fn observe_speech(&mut self, probabilities: &[f32], chunk: usize) {
        let start = self.config.speech_prob;
        let end = start - SPEECH_HYSTERESIS;
        let heard = self.heard.get_or_insert_with(Heard::default);
        for &p in probabilities {
            heard.read += chunk as u64;
            let p = f64::from(p);
            heard.speaking = if heard.speaking { p >= end } else { p >= start };
            if heard.speaking {
                heard.speech_end = heard.read;
            }
        }
        if !self.speech_buffered() && !self.in_flight {
            self.skip_non_speech();
        }
    }

    /// The caller's speech detector stopped (it failed): pauses are found by energy alone
    /// again, and a buffer is transcribed whenever it holds sound.
    pub fn forget_speech(&mut self) {
        self.heard = None;
    }

    /// Whether the buffer may hold speech: it holds sound and, with a speech detector, the
    /// detector heard speech in it (audio it has not read yet waits for it).
    fn speech_buffered(&self) -> bool {
        self.heard_sound
            && self
                .heard
                .is_none_or(|h| h.speech_end > samples(self.buffer_start))
    }

    /// Keeps only a short lead-in before the audio the detector has not read yet: what it has
    /// read holds no speech and needs no hypothesis.
    fn skip_non_speech(&mut self) {
        let Some(heard) = self.heard else { return };
        let keep_from = secs(heard.read) - self.config.lead_in_secs;
        if keep_from > self.buffer_start {
            self.drop_until(keep_from);
            self.previous.clear();
        }
        self.covered = self.covered.max(heard.read.min(self.received));
    }

    /// Samples since the speech ended: trailing silence, or, with a speech detector, audio it
    /// heard no speech in, whichever is longer.
    fn quiet(&self) -> u64 {
        let detected = self.heard.map_or(0, |h| h.read - h.speech_end);
        self.trailing_silence.max(detected)
    }

    /// Appends 16 kHz mono audio.
    pub fn push(&mut self, audio: &[f32]) {
        for frame in audio.chunks(FRAME) {
            if self.is_sound(rms(frame)) {
                self.heard_sound = true;
                self.trailing_silence = 0;
            } else {
                self.trailing_silence += frame.len() as u64;
            }
        }
        self.received += audio.len() as u64;
        self.buffer.push(audio);
        if !self.heard_sound {
            self.trim_silence();
            // Silence needs no hypothesis: nothing is behind.
            self.covered = self.received;
        }
        self.shed_excess();
    }

    /// Drops the oldest audio beyond `max_buffer_secs`: a stream that far behind loses words
    /// rather than memory and latency without bound.
    fn shed_excess(&mut self) {
        let max = samples(self.config.max_buffer_secs) as usize;
        let excess = self.buffer.len().saturating_sub(max);
        if excess > 0 {
            self.shed += excess as u64;
            let t = self.buffer_start + secs(excess as u64);
            self.committed_end = self.committed_end.max(t);
            self.previous.clear();
            self.drop_until(t);
        }
    }

    /// Seconds of audio shed so far because the stream fell too far behind.
    pub fn shed_secs(&self) -> f64 {
        secs(self.shed)
    }

    /// Tells the policy how long the last hypothesis took to compute (seconds of worker
    /// time); the step follows it (see [`LiveConfig::step_per_inference`]).
    pub fn observe_inference(&mut self, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        self.inference_secs = Some(match self.inference_secs {
            Some(old) => old + INFERENCE_WEIGHT * (secs - old),
            None => secs,
        });
    }

    /// The longest step [`step_secs`](Self::step_secs) may take: the pace a stream's demand
    /// on the workers is measured at ([`Metered::report`](super::Metered::report)).
    pub fn longest_step_secs(&self) -> f64 {
        self.config.step_secs.max(self.config.min_step_secs)
    }

    /// Audio (seconds) that makes a new hypothesis due while speech continues.
    pub fn step_secs(&self) -> f64 {
        let c = &self.config;
        match self.inference_secs {
            Some(t) => (t * c.step_per_inference).clamp(c.min_step_secs, self.longest_step_secs()),
            None => c.step_secs,
        }
    }

    /// Classifies a frame and remembers its level for the background estimate.
    fn is_sound(&mut self, level: f32) -> bool {
        if self.recent_levels.len() == FLOOR_FRAMES {
            self.recent_levels.pop_front();
        }
        self.recent_levels.push_back(level);
        level >= self.threshold()
    }

    /// The level a frame must reach to be sound: above the fixed minimum and well above the
    /// quietest recent frame (the room's background), which is capped so that a loud
    /// constant signal is never taken for background.
    fn threshold(&self) -> f32 {
        let floor = self
            .recent_levels
            .iter()
            .copied()
            .fold(f32::MAX, f32::min)
            .min(MAX_FLOOR);
        self.config.speech_rms.max(floor * self.config.above_floor)
    }

    /// Keeps only a short lead-in of a buffer that has heard nothing yet.
    fn trim_silence(&mut self) {
        let keep = samples(self.config.lead_in_secs) as usize;
        if self.buffer.len() > keep {
            let cut = self.buffer.len() - keep;
            self.buffer.drop_front(cut);
            self.buffer_start += secs(cut as u64);
        }
    }

    /// Seconds of received audio that no finished hypothesis has covered yet.
    pub fn lag_secs(&self) -> f64 {
        secs(self.received - self.covered.min(self.received))
    }

    /// Seconds of audio received so far.
    pub fn received_secs(&self) -> f64 {
        secs(self.received)
    }

    /// Whether the uncommitted buffer holds sound (anything above the background; with a
    /// speech detector, speech): with [`silence_secs`](Self::silence_secs), what a caller
    /// reporting turns needs.
    pub fn hearing(&self) -> bool {
        self.speech_buffered()
    }

    /// Seconds since the speech ended: trailing silence, or, with a speech detector, audio it
    /// heard no speech in, whichever is longer.
    pub fn silence_secs(&self) -> f64 {
        secs(self.quiet())
    }

    /// Seconds of audio waiting in the uncommitted buffer (bounded by commits, not by `push`).
    pub fn buffered_secs(&self) -> f64 {
        secs(self.buffer.len() as u64)
    }

    /// Timeline second where the uncommitted buffer starts (its lead-in included).
    pub fn buffer_start_secs(&self) -> f64 {
        self.buffer_start
    }

    /// Whether a job is out.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The next hypothesis to compute, if one is due and none is out.
    pub fn take_job(&mut self) -> Option<LiveJob> {
        if self.in_flight || !self.speech_buffered() {
            return None;
        }
        // More than a window waiting: catch up window by window, without waiting for a step.
        let backlog = self.buffer.len() as u64 > samples(self.config.window_secs);
        let paused = self.quiet() >= samples(self.config.pause_secs);
        let due = self.received - self.taken_at >= samples(self.step_secs());
        if !(due || backlog || (paused && self.taken_at < self.received)) {
            return None;
        }
        Some(self.job(paused && !backlog))
    }

    /// The last job of a stream: whatever is left, committed in full. None when nothing is left.
    pub fn finish(&mut self) -> Option<LiveJob> {
        if self.in_flight || !self.speech_buffered() || self.buffer.is_empty() {
            return None;
        }
        Some(self.job(true))
    }

    /// A job over the buffer's first `window_secs`; final only if that is all of it.
    fn job(&mut self, is_final: bool) -> LiveJob {
        self.in_flight = true;
        self.taken_at = self.received;
        let window = samples(self.config.window_secs) as usize;
        let audio = self.buffer.snapshot_first(window);
        let span = JobSpan {
            offset: self.buffer_start,
            samples: audio.len(),
            is_final: is_final && audio.len() == self.buffer.len(),
        };
        let prompt = (!self.prompt.is_empty())
            .then(|| self.prompt.iter().cloned().collect::<Vec<_>>().join(" "));
        LiveJob {
            audio,
            span,
            prompt,
        }
    }

    /// The job was not run (pool busy, error): allow a new one later.
    pub fn abandon(&mut self) {
        self.in_flight = false;
    }

    /// Takes Whisper's segments for the job that covered `job` (times relative to the job's
    /// audio) and says what to send.
    pub fn on_result(&mut self, job: JobSpan, segments: Vec<Segment>) -> Vec<LiveOutput> {
        self.in_flight = false;
        self.covered = samples(job.offset) + job.samples as u64;
        let hyp: Vec<Segment> = segments
            .into_iter()
            .map(|s| shift(s, job.offset))
            .filter(|s| !s.text.trim().is_empty())
            .collect();
        let units = self.new_units(&hyp);
        let job_end = job.offset + secs(job.samples as u64);
        let whole_window = job.samples as u64 >= samples(self.config.window_secs);
        let trusted = self.trusted(&units, job);
        let sentence = !job.is_final && trusted && self.sentence_heard(&units, job_end);
        let n_commit = if job.is_final || sentence {
            units.len()
        } else if !whole_window && !trusted {
            0
        } else {
            let settled = settled_prefix(&units, job_end - self.config.settle_secs);
            let settled = confident_prefix(&units[..settled], self.config.settle_min_prob);
            let n = self.agreed_prefix(&units, job_end).max(settled);
            if whole_window {
                n.max(window_commit(&units, job_end))
            } else {
                n
            }
        };
        let mut out = Vec::new();
        let (committed, rest) = units.split_at(n_commit);
        let committed = not_before(committed, self.committed_end);
        let committed = committed.as_slice();
        if let Some(last) = committed.last() {
            self.committed_end = last.end;
            self.remember(committed);
            out.push(LiveOutput::Commit(segments_of(committed, &hyp)));
        }
        if job.is_final {
            self.committed_end = self.committed_end.max(job_end);
            self.drop_until(job_end);
        } else if let Some(cut) = self.cut_after(committed, rest, &hyp, !sentence) {
            self.drop_until(cut);
        } else if units.is_empty() && whole_window {
            // A whole window without a word: nothing was said there.
            self.drop_until(job_end - WINDOW_TAIL_SECS);
        }
        self.previous = rest.to_vec();
        self.previous_end = job_end;
        let text = rest.iter().map(|u| u.text.as_str()).collect::<Vec<_>>();
        self.partial(&text.join(" "), &mut out);
        out
    }

    /// Whether a hypothesis over less than a window may commit by agreement or settling: it
    /// read enough audio ([`LiveConfig::min_commit_secs`]) and Whisper was sure enough of its
    /// new tokens ([`LiveConfig::min_logprob`]).
    fn trusted(&self, units: &[Unit], job: JobSpan) -> bool {
        secs(job.samples as u64) >= self.config.min_commit_secs
            && mean_logprob(units) >= self.config.min_logprob
    }

    /// Whether the hypothesis read a finished sentence that the previous one read too, word
    /// for word, and heard at least [`LiveConfig::sentence_gap_secs`] more audio without a new
    /// word: the speaker stopped. Whisper ends its text with a full stop wherever the audio
    /// stops, so one hypothesis alone says nothing; two that read the same sentence with a gap
    /// between their ends do. The full stop may be in either reading: with more audio Whisper
    /// sometimes drops it ("who serve it." then "who serve it", the next sentence not yet
    /// read).
    fn sentence_heard(&self, units: &[Unit], job_end: f64) -> bool {
        let Some(last) = units.last() else {
            return false;
        };
        let ended = ends_sentence(&last.text)
            || self.previous.last().is_some_and(|u| ends_sentence(&u.text));
        ended
            && job_end - self.previous_end >= self.config.sentence_gap_secs
            && in_order(units) == units.len()
            && units.len() == self.previous.len()
            && same_words(units, &self.previous) == units.len()
    }

    /// The hypothesis' units that are not committed yet. A hypothesis re-reads the committed
    /// words whose audio is still buffered; where its opening lines up with their text
    /// ([`restated`](Self::restated)), what follows is new. Otherwise (their audio is gone, or
    /// Whisper now reads them too differently) by time: the units centred after the committed
    /// text, less a repeat of its last words (up to [`REPEAT_WORDS`]: Whisper's times drift,
    /// and a hypothesis may place a committed phrase after the committed end again). Times
    /// alone lost short words whose times drifted before the committed end ("asked", "the").
    fn new_units(&self, hyp: &[Segment]) -> Vec<Unit> {
        let mut all = units_of(hyp);
        if self.unprompted.is_empty() {
            return self.after_committed_end(all);
        }
        // The committed words are part of this reading: a loop back to them is a loop too
        // ("And so my fellow Americans. And so my fellow Americans.").
        all.truncate(loop_start(&all));
        match self.restated(&all) {
            Some(n) => all.split_off(n),
            None => self.after_committed_end(all),
        }
    }

    /// How many opening units restate the committed words whose audio is still buffered: the
    /// opening closest to them by edit distance (ties broken by time), if it differs from them
    /// by at most a third of their words; `None` when there are none or nothing lines up.
    fn restated(&self, units: &[Unit]) -> Option<usize> {
        let committed: Vec<String> = self.unprompted.iter().map(|w| normalise(&w.text)).collect();
        let opening: Vec<String> = units
            .iter()
            .take(committed.len() + RESTATE_EXTRA)
            .map(|u| normalise(&u.text))
            .collect();
        let distances = prefix_distances(&committed, &opening);
        let gap = |n: usize| (units[n - 1].end - self.committed_end).abs();
        let n = (1..distances.len()).min_by(|&a, &b| {
            (distances[a], gap(a))
                .partial_cmp(&(distances[b], gap(b)))
                .unwrap_or(std::cmp::Ordering::Equal)
        })?;
        (distances[n] <= committed.len() / 3).then_some(n)
    }

    /// The time rule of [`new_units`](Self::new_units).
    fn after_committed_end(&self, all: Vec<Unit>) -> Vec<Unit> {
        let mut units: Vec<Unit> = all
            .into_iter()
            .filter(|u| (u.start + u.end) / 2.0 > self.committed_end)
            .collect();
        units.truncate(loop_start(&units));
        let max = units.len().min(self.recent_words.len()).min(REPEAT_WORDS);
        for n in (1..=max).rev() {
            let tail = &self.recent_words[self.recent_words.len() - n..];
            if units[..n]
                .iter()
                .map(|u| normalise(&u.text))
                .eq(tail.iter().cloned())
            {
                units.drain(..n);
                break;
            }
        }
        units
    }

    /// Where to cut the audio after a commit: the end of the hypothesis segment it completed
    /// (if `at_segment`), or, in a long buffer, the end of its last word; either moved back to
    /// keep some committed words before the rest ([`keeping_context`](Self::keeping_context)).
    /// Not at the segment after a finished sentence ([`sentence_heard`](Self::sentence_heard)):
    /// Whisper ends its last word before the sound does, and the tail left in the buffer was
    /// read as words ("As k av as" for "world | ask of us"), while a buffer of applause alone
    /// was read as "Thank you."; the committed words are recognised when re-read instead.
    fn cut_after(
        &self,
        committed: &[Unit],
        rest: &[Unit],
        hyp: &[Segment],
        at_segment: bool,
    ) -> Option<f64> {
        let segment = segment_cut(committed, rest, hyp).filter(|_| at_segment);
        if let Some(cut) = segment.and_then(|cut| self.keeping_context(cut)) {
            return Some(cut);
        }
        let long = self.buffer.len() as u64 > samples(self.config.cut_secs);
        let last = committed.last().filter(|_| long)?;
        let cut = rest
            .first()
            .map_or(last.end, |next| between(last.end, next.start));
        self.keeping_context(cut).or(Some(cut))
    }

    /// `cut` moved back so that the buffer keeps [`LiveConfig::context_secs`] of committed
    /// words before it: halfway between two committed words, the later of which starts at
    /// least that long before `cut`. `None` when no committed word is that far back. A stream
    /// further behind than that keeps none: catching up comes first.
    fn keeping_context(&self, cut: f64) -> Option<f64> {
        let behind = self.lag_secs() > self.config.context_secs;
        if self.config.context_secs <= 0.0 || behind {
            return Some(cut);
        }
        let limit = cut - self.config.context_secs;
        self.unprompted
            .iter()
            .zip(self.unprompted.iter().skip(1))
            .filter(|(_, next)| next.start <= limit)
            .map(|(word, next)| between(word.end, next.start))
            .next_back()
            .filter(|&t| t > self.buffer_start)
    }

    /// Keeps the last committed words for [`new_units`](Self::new_units) and the prompt.
    fn remember(&mut self, committed: &[Unit]) {
        self.recent_words
            .extend(committed.iter().map(|u| normalise(&u.text)));
        let extra = self.recent_words.len().saturating_sub(REPEAT_WORDS);
        self.recent_words.drain(..extra);
        self.unprompted.extend(committed.iter().cloned());
    }

    /// How many leading units (all but the last) the previous hypothesis agreed on. Agreement
    /// stops where the hypothesis goes back in time: Whisper sometimes repeats the buffer's
    /// opening words after its end, and two hypotheses may agree on such a repeat; and, with
    /// [`LiveConfig::agree_margin_secs`], at a unit ending too close to `job_end`.
    fn agreed_prefix(&self, units: &[Unit], job_end: f64) -> usize {
        let mut complete = units.len().saturating_sub(1).min(in_order(units));
        if self.config.agree_margin_secs > 0.0 {
            let heard = settled_prefix(units, job_end - self.config.agree_margin_secs);
            complete = complete.min(heard);
        }
        same_words(&units[..complete], &self.previous)
    }

    fn partial(&mut self, text: &str, out: &mut Vec<LiveOutput>) {
        let text = text.to_string();
        if text != self.last_partial {
            self.revision += 1;
            self.last_partial.clone_from(&text);
            out.push(LiveOutput::Partial {
                text,
                revision: self.revision,
            });
        }
    }

    /// Drops buffered audio before timeline second `t`.
    fn drop_until(&mut self, t: f64) {
        let cut = samples(t - self.buffer_start).min(self.buffer.len() as u64) as usize;
        self.buffer.drop_front(cut);
        self.buffer_start += secs(cut as u64);
        while self
            .unprompted
            .front()
            .is_some_and(|w| w.end <= self.buffer_start + 0.05)
        {
            if let Some(word) = self.unprompted.pop_front() {
                if self.prompt.len() == PROMPT_WORDS {
                    self.prompt.pop_front();
                }
                self.prompt.push_back(word.text);
            }
        }
        let threshold = self.threshold();
        if self
            .buffer
            .as_slice()
            .chunks(FRAME)
            .all(|f| rms(f) < threshold)
        {
            self.heard_sound = false;
            self.trim_silence();
        }
    }
}

/// A piece of a hypothesis that agreement compares: a word, or a whole segment when Whisper
/// gave no token timings.
#[derive(Debug, Clone, PartialEq)]
struct Unit {
    /// As Whisper wrote it (punctuation attached); compared normalised.
    text: String,
    /// Timeline seconds.
    start: f64,
    /// Timeline seconds.
    end: f64,
    /// Index of the hypothesis segment it belongs to.
    segment: usize,
    /// The least probability Whisper gave one of its tokens (0 for a segment without tokens).
    probability: f32,
    /// The sum of its tokens' log-probabilities, and their number (0 without tokens).
    logprob: (f64, u32),
}

/// The units of a hypothesis, in order.
fn units_of(hyp: &[Segment]) -> Vec<Unit> {
    let mut units = Vec::new();
    for (segment, s) in hyp.iter().enumerate() {
        let words = words_of(s.tokens.as_deref().unwrap_or_default(), segment);
        if words.is_empty() {
            units.push(Unit {
                text: s.text.clone(),
                start: s.start,
                end: s.end,
                segment,
                probability: 0.0,
                logprob: (0.0, 0),
            });
        }
        units.extend(words.into_iter().map(|w| Unit {
            start: w.start.clamp(s.start, s.end),
            end: w.end.clamp(s.start, s.end),
            ..w
        }));
    }
    units
}

/// Joins the tokens of hypothesis segment `segment` into word units (a token starting with a
/// space starts one); special tokens such as `[_BEG_]` or `<|endoftext|>` carry no text and
/// are skipped.
fn words_of(tokens: &[crate::transcript::Token], segment: usize) -> Vec<Unit> {
    let mut words: Vec<Unit> = Vec::new();
    for t in tokens {
        let trimmed = t.text.trim();
        if trimmed.is_empty() || trimmed.starts_with("[_") || trimmed.starts_with("<|") {
            continue;
        }
        match words.last_mut() {
            Some(word) if !t.text.starts_with(char::is_whitespace) => {
                word.text.push_str(t.text.trim_end());
                word.end = t.end;
                word.probability = word.probability.min(t.probability);
                word.logprob = (word.logprob.0 + ln(t.probability), word.logprob.1 + 1);
            }
            _ => words.push(Unit {
                text: trimmed.to_string(),
                start: t.start,
                end: t.end,
                segment,
                probability: t.probability,
                logprob: (ln(t.probability), 1),
            }),
        }
    }
    words
}

/// Edit distance (in words) between `target` and each prefix of `words`: element `n` is the
/// distance to `words[..n]`.
fn prefix_distances(target: &[String], words: &[String]) -> Vec<usize> {
    let mut row: Vec<usize> = (0..=words.len()).collect();
    for t in target {
        let mut next = vec![row[0] + 1];
        for (j, w) in words.iter().enumerate() {
            let substitute = row[j] + usize::from(t != w);
            next.push(substitute.min(row[j + 1] + 1).min(next[j] + 1));
        }
        row = next;
    }
    row
}

/// Where a hypothesis starts looping (Whisper, without temperature fallback, may repeat a word
/// or a phrase until its token limit: "bring bring bring…", "and so my fellow Americans and so
/// my fellow Americans…"): the index after the first of three back-to-back repeats of one or
/// two units, or of two back-to-back repeats of a phrase of three to [`LOOP_PHRASE_UNITS`]
/// units (speech says "no, no, no" but rarely a whole phrase twice in a row); the length of the
/// hypothesis if it does not loop.
fn loop_start(units: &[Unit]) -> usize {
    let words: Vec<String> = units.iter().map(|u| normalise(&u.text)).collect();
    (0..words.len())
        .find_map(|i| {
            (1..=LOOP_PHRASE_UNITS).find_map(|n| {
                let times = if n <= 2 { 3 } else { 2 };
                let run = words.get(i..i + times * n)?;
                let repeats = run.chunks(n).all(|c| c == &run[..n]);
                repeats.then_some(i + n)
            })
        })
        .unwrap_or(words.len())
}

/// How many leading units two readings share, word for word (normalised).
fn same_words(a: &[Unit], b: &[Unit]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(a, b)| normalise(&a.text) == normalise(&b.text))
        .count()
}

/// Whether a unit ends a sentence: a full stop, question or exclamation mark (Latin or CJK), but
/// not an ellipsis, which Whisper writes where speech trails off unfinished.
fn ends_sentence(text: &str) -> bool {
    let text = text.trim_end();
    text.ends_with(['.', '?', '!', '。', '？', '！']) && !text.ends_with("..")
}

/// How many leading units start in time order (within a little jitter).
fn in_order(units: &[Unit]) -> usize {
    const JITTER: f64 = 0.3;
    let back = units
        .windows(2)
        .position(|w| w[1].start + JITTER < w[0].start);
    back.map_or(units.len(), |i| i + 1)
}

/// How many leading units (in time order) end by timeline second `limit`.
fn settled_prefix(units: &[Unit], limit: f64) -> usize {
    units[..in_order(units)]
        .iter()
        .take_while(|u| u.end <= limit)
        .count()
}

/// A token probability's natural log, floored so that a zero does not make a sum infinite.
fn ln(p: f32) -> f64 {
    f64::from(p).max(1e-6).ln()
}

/// The mean log-probability of the units' tokens; 0 (sure) when none carry probabilities.
fn mean_logprob(units: &[Unit]) -> f64 {
    let (sum, n) = units
        .iter()
        .fold((0.0, 0), |(s, n), u| (s + u.logprob.0, n + u.logprob.1));
    if n == 0 {
        0.0
    } else {
        sum / f64::from(n)
    }
}

/// How many leading units Whisper gave at least `min_prob` for every token.
fn confident_prefix(units: &[Unit], min_prob: f64) -> usize {
    units
        .iter()
        .take_while(|u| u.probability >= min_prob as f32)
        .count()
}

/// After a hypothesis over a whole window: everything but its last second, and one unit at
/// least, so that every window moves the stream forward.
fn window_commit(units: &[Unit], job_end: f64) -> usize {
    settled_prefix(units, job_end - WINDOW_TAIL_SECS).max(units.len().min(1))
}

/// `units` with their times moved to `floor` where they are earlier: Whisper's word times are
/// approximate (more so on a short buffer), and committed segments must follow the timeline.
fn not_before(units: &[Unit], floor: f64) -> Vec<Unit> {
    units
        .iter()
        .map(|u| Unit {
            start: u.start.max(floor),
            end: u.end.max(floor),
            ..u.clone()
        })
        .collect()
}

/// Committed units grouped back into one segment per hypothesis segment they came from.
fn segments_of(units: &[Unit], hyp: &[Segment]) -> Vec<Segment> {
    let mut out: Vec<(usize, Segment)> = Vec::new();
    for u in units {
        match out.last_mut() {
            Some((segment, s)) if *segment == u.segment => {
                s.text.push(' ');
                s.text.push_str(&u.text);
                s.end = u.end;
            }
            _ => out.push((
                u.segment,
                Segment {
                    start: u.start,
                    end: u.end,
                    text: u.text.clone(),
                    no_speech_prob: hyp.get(u.segment).map_or(0.0, |s| s.no_speech_prob),
                    tokens: None,
                },
            )),
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}

/// Where to cut between a word ending at `end` and the next starting at `next_start`: halfway
/// into the gap, if there is one (word times are approximate), else at the end.
fn between(end: f64, next_start: f64) -> f64 {
    (end + next_start.max(end)) / 2.0
}

/// Where to cut the audio after a commit: the end of the last hypothesis segment the commit
/// completed, if it completed one.
fn segment_cut(committed: &[Unit], rest: &[Unit], hyp: &[Segment]) -> Option<f64> {
    let last = committed.last()?;
    let completes = rest.first().is_none_or(|next| next.segment != last.segment);
    completes.then(|| hyp[last.segment].end)
}

fn shift(mut s: Segment, offset: f64) -> Segment {
    s.start += offset;
    s.end += offset;
    if let Some(tokens) = s.tokens.as_mut() {
        for t in tokens {
            t.start += offset;
            t.end += offset;
        }
    }
    s.text = s.text.trim().to_string();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tweak: impl FnOnce(&mut LiveConfig)) -> LivePolicy {
        let mut config = LiveConfig::default();
        tweak(&mut config);
        LivePolicy::new(config)
    }

    /// A policy that commits by agreement alone (no margin, no settling), then `tweak`ed: for
    /// the tests of the rules around agreement.
    fn agreement_only(tweak: impl FnOnce(&mut LiveConfig)) -> LivePolicy {
        policy(|c| {
            c.settle_secs = f64::INFINITY;
            c.agree_margin_secs = 0.0;
            tweak(c);
        })
    }

    fn tone(secs: f64) -> Vec<f32> {
        let n = (secs * SAMPLE_RATE as f64) as usize;
        (0..n).map(|i| 0.3 * (i as f32 * 0.1).sin()).collect()
    }

    fn silence(secs: f64) -> Vec<f32> {
        vec![0.0; (secs * SAMPLE_RATE as f64) as usize]
    }

    /// The default pause (see `LiveConfig::pause_secs`).
    const PAUSE: f64 = 0.75;

    /// Silence a little longer than the default pause.
    fn pause() -> Vec<f32> {
        assert_eq!(LiveConfig::default().pause_secs, PAUSE);
        silence(PAUSE + 0.1)
    }

    fn seg(start: f64, end: f64, text: &str) -> Segment {
        Segment::new(start, end, text)
    }

    #[test]
    fn tuning_overrides_name_fields_and_reject_the_unknown() {
        let c = LiveConfig::default()
            .with_overrides("min_step_secs=0.4, settle_secs=inf,window_secs=8")
            .unwrap();
        assert_eq!(c.min_step_secs, 0.4);
        assert!(c.settle_secs.is_infinite());
        assert_eq!(c.window_secs, 8.0);
        assert_eq!(c.pause_secs, LiveConfig::default().pause_secs);
        assert!(LiveConfig::default().with_overrides("").is_ok());
        let err = LiveConfig::default().with_overrides("speed=2").unwrap_err();
        assert!(err.contains("speed"), "{err}");
        assert!(LiveConfig::default().with_overrides("step_secs").is_err());
        assert!(LiveConfig::default()
            .with_overrides("step_secs=fast")
            .is_err());
    }

    #[test]
    fn a_hypothesis_over_too_little_audio_commits_nothing_until_the_pause() {
        let mut p = policy(|c| {
            c.min_commit_secs = 1.5;
            c.settle_secs = 0.2;
        });
        p.push(&tone(1.0));
        let j1 = p.take_job().unwrap();
        let words = [("hello", 0.1, 0.4), ("there", 0.4, 0.6)];
        let out = p.on_result(j1.span, vec![word_seg(&words)]);
        assert!(
            out.iter().all(|o| !matches!(o, LiveOutput::Commit(_))),
            "1 s is too short to commit from: {out:?}"
        );
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        let out = p.on_result(j2.span, vec![word_seg(&words)]);
        assert!(
            matches!(&out[0], LiveOutput::Commit(c) if c[0].text == "hello there"),
            "{out:?}"
        );
        p.push(&pause());
        let j3 = p.take_job().unwrap();
        assert!(
            j3.span.is_final,
            "a pause still commits whatever the length"
        );
    }

    /// Loud audio (a tone) with the detector's verdict on it: `speech` seconds of speech
    /// then `noise` seconds of something else, pushed and observed in 32 ms chunks.
    fn hear(p: &mut LivePolicy, speech: f64, noise: f64) {
        const CHUNK: usize = 512;
        let chunks = |secs: f64| (secs * SAMPLE_RATE as f64 / CHUNK as f64).round() as usize;
        let audio = tone(CHUNK as f64 / SAMPLE_RATE as f64);
        for n in 0..chunks(speech) + chunks(noise) {
            p.push(&audio);
            let prob = if n < chunks(speech) { 0.9 } else { 0.05 };
            p.observe_speech(&[prob], CHUNK);
        }
    }

    #[test]
    fn loud_audio_without_speech_is_a_pause() {
        let mut p = policy(|_| {});
        hear(&mut p, 2.0, 0.0);
        let job = p.take_job().expect("speech makes a job");
        p.on_result(job.span, vec![]);
        hear(&mut p, 0.0, PAUSE - 0.2);
        assert!(
            !p.take_job().is_some_and(|j| j.span.is_final),
            "less than a pause"
        );
        p.abandon();
        hear(&mut p, 0.0, 0.3);
        assert!(
            p.silence_secs() >= PAUSE,
            "applause is no speech: {}",
            p.silence_secs()
        );
        let job = p.take_job().expect("a pause makes a job at once");
        assert!(
            job.span.is_final && job.span.samples == p.buffer.len(),
            "loud non-speech ends the sentence: {:?}",
            job.span
        );
    }

    #[test]
    fn a_buffer_of_loud_non_speech_asks_for_no_job_and_stays_small() {
        let mut p = policy(|_| {});
        hear(&mut p, 1.2, 0.0);
        let job = p.take_job().unwrap();
        p.on_result(job.span, vec![seg(0.0, 0.9, "Thank you.")]);
        hear(&mut p, 0.0, PAUSE + 0.1);
        let job = p.take_job().expect("the pause's job");
        let out = p.on_result(job.span, vec![seg(0.0, 0.9, "Thank you.")]);
        assert!(matches!(&out[0], LiveOutput::Commit(_)), "{out:?}");
        for _ in 0..50 {
            hear(&mut p, 0.0, 0.2);
            assert!(
                p.take_job().is_none(),
                "ten seconds of applause ask for nothing"
            );
        }
        assert!(!p.hearing());
        assert!(
            p.buffered_secs() <= 0.4,
            "only a lead-in is kept: {}",
            p.buffered_secs()
        );
        assert!(
            p.lag_secs() < 0.1,
            "non-speech is never lag: {}",
            p.lag_secs()
        );
        let speech_starts = p.received_secs();
        hear(&mut p, 1.2, 0.0);
        assert!(p.hearing());
        let job = p.take_job().expect("speech again makes a job");
        let lead_in = LiveConfig::default().lead_in_secs;
        assert!(
            (job.span.offset - (speech_starts - lead_in)).abs() < 0.05,
            "the job starts a lead-in before the speech: {:?}",
            job.span
        );
        assert!(p.finish().is_none(), "one job in flight");
    }

    #[test]
    fn without_a_detector_loud_audio_is_sound_and_a_lost_detector_falls_back() {
        let mut p = policy(|_| {});
        p.push(&tone(3.0));
        assert!(p.hearing() && p.silence_secs() == 0.0);
        let job = p.take_job().expect("energy alone makes jobs");
        p.abandon();
        assert!(!job.span.is_final);
        hear(&mut p, 0.0, 1.0);
        assert!(!p.hearing(), "the detector heard no speech at all");
        p.forget_speech();
        p.push(&tone(1.0));
        assert!(p.hearing(), "without the detector, sound is heard again");
        assert!(p.take_job().is_some());
    }

    #[test]
    fn a_dip_in_the_speech_probability_does_not_end_speech() {
        let mut p = policy(|_| {});
        hear(&mut p, 1.0, 0.0);
        let chunk = tone(512.0 / SAMPLE_RATE as f64);
        for _ in 0..40 {
            p.push(&chunk);
            // Between the two thresholds: speech goes on.
            p.observe_speech(&[0.4], 512);
        }
        assert!(p.silence_secs() < 0.05, "{}", p.silence_secs());
    }

    #[test]
    fn silence_never_asks_for_a_job_and_stays_small() {
        let mut p = LivePolicy::new(LiveConfig::default());
        for _ in 0..100 {
            p.push(&silence(0.1));
            assert!(p.take_job().is_none());
        }
        assert!(p.buffer.len() as u64 <= samples(0.3) + FRAME as u64);
        assert!(p.finish().is_none());
    }

    #[test]
    fn activity_reports_sound_then_trailing_silence() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&silence(1.0));
        assert!(!p.hearing());
        assert!(p.buffered_secs() <= 0.35, "silence keeps only the lead-in");
        p.push(&tone(1.0));
        assert!(p.hearing());
        assert_eq!(p.silence_secs(), 0.0);
        assert!((p.buffer_start_secs() - 0.7).abs() < 0.05);
        p.push(&silence(0.9));
        assert!((p.silence_secs() - 0.9).abs() < 0.05);
        assert!((p.buffered_secs() - 2.2).abs() < 0.05);
    }

    #[test]
    fn a_job_is_due_each_step_and_only_one_is_in_flight() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&tone(0.5));
        assert!(p.take_job().is_none(), "half a step is not enough");
        p.push(&tone(0.5));
        let job = p.take_job().expect("a step of sound makes a job");
        assert!(!job.span.is_final);
        p.push(&tone(2.0));
        assert!(p.take_job().is_none(), "one in flight at a time");
        let out = p.on_result(job.span, vec![seg(0.0, 1.0, "hello")]);
        assert_eq!(
            out,
            vec![LiveOutput::Partial {
                text: "hello".into(),
                revision: 1
            }]
        );
        let next = p.take_job().expect("the backlog is one job, not many");
        assert_eq!(next.audio.len() as u64, samples(3.0), "latest audio wins");
    }

    #[test]
    fn agreement_on_complete_segments_commits_them_and_drops_their_audio() {
        let mut p = policy(|c| c.context_secs = 0.0);
        p.push(&tone(3.0));
        let j1 = p.take_job().unwrap();
        p.on_result(
            j1.span,
            vec![seg(0.0, 1.5, "Ask not."), seg(1.5, 3.0, "what your")],
        );
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        let out = p.on_result(
            j2.span,
            vec![seg(0.0, 1.5, "ask not"), seg(1.5, 4.0, "what your country")],
        );
        assert_eq!(out[0], LiveOutput::Commit(vec![seg(0.0, 1.5, "ask not")]));
        assert_eq!(
            out[1],
            LiveOutput::Partial {
                text: "what your country".into(),
                revision: 2
            }
        );
        assert!((p.buffer_start - 1.5).abs() < 1e-3);
        p.push(&tone(1.0));
        let j3 = p.take_job().unwrap();
        assert!(
            (j3.span.offset - 1.5).abs() < 1e-3,
            "committed audio is not re-read"
        );
    }

    #[test]
    fn a_pause_commits_everything_and_timestamps_follow_the_timeline() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&silence(5.0));
        p.push(&tone(1.0));
        p.push(&pause());
        let job = p.take_job().unwrap();
        assert!(job.span.is_final, "a pause makes the job final");
        let out = p.on_result(job.span, vec![seg(0.3, 1.3, "one")]);
        match &out[0] {
            LiveOutput::Commit(s) => {
                assert!((s[0].start - 5.0).abs() < 0.05, "start {}", s[0].start);
            }
            other => panic!("expected a commit, got {other:?}"),
        }
        assert!(p.take_job().is_none(), "nothing new after the commit");
    }

    #[test]
    fn committed_times_never_go_back_when_whisper_moves_a_word() {
        let mut p = policy(|_| {});
        p.push(&tone(1.7));
        let j1 = p.job(false);
        let out = p.on_result(
            j1.span,
            vec![word_seg(&[("And", 0.34, 0.85), ("so", 0.85, 1.5)])],
        );
        assert_commit_then_partial(&out, "And", "so", 1);
        // A longer hypothesis hears the opening earlier than the short one did.
        p.push(&tone(1.5));
        let j2 = p.job(false);
        let words = [
            ("And", 0.0, 0.33),
            ("so", 0.33, 0.4),
            ("my", 0.4, 0.51),
            ("fellow", 0.6, 1.0),
            ("Americans", 1.0, 2.0),
        ];
        let out = p.on_result(j2.span, vec![word_seg(&words)]);
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(committed[0].text, "so my fellow Americans");
        assert!(committed[0].start >= 0.85, "{committed:?}");
    }

    #[test]
    fn a_pause_over_room_noise_still_counts_as_a_pause() {
        let mut p = LivePolicy::new(LiveConfig::default());
        let hiss = |secs: f64| -> Vec<f32> {
            let n = (secs * SAMPLE_RATE as f64) as usize;
            (0..n)
                .map(|i| if i % 2 == 0 { 0.012 } else { -0.012 })
                .collect()
        };
        p.push(&hiss(2.0));
        p.push(&tone(1.0));
        p.push(&hiss(PAUSE + 0.1));
        let job = p.take_job().expect("sound then a pause");
        assert!(
            job.span.is_final,
            "hiss above the fixed threshold is still a pause"
        );
    }

    #[test]
    fn a_whole_window_commits_all_but_its_tail() {
        let mut p = policy(|c| c.window_secs = 5.0);
        p.push(&tone(6.0));
        let job = p.take_job().unwrap();
        assert_eq!(
            job.audio.len() as u64,
            samples(5.0),
            "one window, not the buffer"
        );
        let out = p.on_result(job.span, vec![seg(0.0, 3.0, "a"), seg(3.0, 5.0, "b")]);
        assert_eq!(out[0], LiveOutput::Commit(vec![seg(0.0, 3.0, "a")]));
    }

    #[test]
    fn a_whole_window_moves_the_buffer_on_even_mid_segment() {
        // Without context kept before the cut (its own test: a_segment_cut_keeps_…).
        let mut p = policy(|c| c.context_secs = 0.0);
        p.push(&tone(12.0));
        let j1 = p.take_job().unwrap();
        assert_eq!(j1.audio.len() as u64, samples(10.0));
        // One segment that goes on past the window's edge: no segment end to cut at.
        let names: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        let words: Vec<(&str, f64, f64)> = names
            .iter()
            .enumerate()
            .map(|(i, w)| (w.as_str(), i as f64 * 0.5, i as f64 * 0.5 + 0.4))
            .collect();
        p.on_result(j1.span, vec![word_seg(&words)]);
        assert!(
            p.buffer_start_secs() > 8.0,
            "cut at the last committed word: {}",
            p.buffer_start_secs()
        );
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        assert!(
            j2.span.offset > 8.0,
            "the next job reads on: {}",
            j2.span.offset
        );
    }

    #[test]
    fn the_work_per_hypothesis_is_bounded_whatever_the_lag() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&tone(1.0));
        let first = p.take_job().unwrap();
        // The worker is slow: 25 s arrive before the first hypothesis comes back.
        p.push(&tone(25.0));
        p.on_result(first.span, vec![]);
        let mut offsets = Vec::new();
        while p.buffered_secs() > 10.0 && offsets.len() < 10 {
            let job = p.take_job().expect("a backlog needs no step to pass");
            assert!(
                job.audio.len() as u64 <= samples(10.0),
                "at most one window"
            );
            offsets.push(job.span.offset);
            let words: Vec<(&str, f64, f64)> = (0..20)
                .map(|i| ("word", i as f64 * 0.5, i as f64 * 0.5 + 0.4))
                .collect();
            p.on_result(job.span, vec![word_seg(&words)]);
        }
        assert_eq!(offsets.len(), 2, "two windows catch up 26 s: {offsets:?}");
        assert!(
            offsets[1] >= offsets[0] + 8.0,
            "each window moves the stream on: {offsets:?}"
        );
    }

    #[test]
    fn words_well_before_the_end_are_final_without_a_second_hypothesis() {
        let mut p = policy(|c| c.settle_secs = 1.0);
        p.push(&tone(3.0));
        let job = p.take_job().unwrap();
        let out = p.on_result(
            job.span,
            vec![word_seg(&[
                ("ask", 0.2, 0.6),
                ("not", 0.6, 1.0),
                ("what", 1.2, 2.2),
                ("your", 2.3, 2.8),
            ])],
        );
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            committed[0].text, "ask not",
            "ended 1 s and more before the end"
        );
        assert_eq!(
            out[1],
            LiveOutput::Partial {
                text: "what your".into(),
                revision: 1
            },
            "the last second may still change"
        );
    }

    #[test]
    fn settling_stops_at_a_word_whisper_was_unsure_of() {
        let mut p = policy(|c| {
            c.settle_secs = 1.0;
            c.settle_min_prob = 0.5;
        });
        p.push(&tone(3.0));
        let job = p.take_job().unwrap();
        let mut hyp = word_seg(&[("ask", 0.2, 0.6), ("not", 0.6, 1.0), ("what", 1.2, 2.2)]);
        if let Some(tokens) = hyp.tokens.as_mut() {
            tokens[1].probability = 0.3;
        }
        let out = p.on_result(job.span, vec![hyp]);
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(committed[0].text, "ask", "\"not\" was a guess");
        assert_eq!(
            out[1],
            LiveOutput::Partial {
                text: "not what".into(),
                revision: 1
            }
        );
    }

    #[test]
    fn hypotheses_whisper_was_unsure_of_commit_nothing_even_when_they_agree() {
        let mut p = agreement_only(|c| c.min_logprob = -1.0);
        p.push(&tone(2.0));
        let unsure = |words: &[(&str, f64, f64)]| {
            let mut s = word_seg(words);
            for (t, prob) in s.tokens.iter_mut().flatten().zip([0.05, 0.24, 0.1, 0.27]) {
                t.probability = prob;
            }
            s
        };
        let words = [
            ("I'm", 0.1, 0.3),
            ("gonna", 0.3, 0.6),
            ("get", 0.6, 0.8),
            ("it", 0.8, 1.0),
        ];
        let j1 = p.job(false);
        p.on_result(j1.span, vec![unsure(&words)]);
        p.push(&tone(0.5));
        let j2 = p.job(false);
        let out = p.on_result(j2.span, vec![unsure(&words)]);
        assert!(
            out.iter().all(|o| !matches!(o, LiveOutput::Commit(_))),
            "mean log-probability about -1.9: {out:?}"
        );
        // The same words heard with confidence (0.9 each) are agreed on.
        let j3 = p.job(false);
        let out = p.on_result(j3.span, vec![word_seg(&words)]);
        let j4 = p.job(false);
        let out4 = p.on_result(j4.span, vec![word_seg(&words)]);
        assert!(
            out.iter()
                .chain(&out4)
                .any(|o| matches!(o, LiveOutput::Commit(_))),
            "{out4:?}"
        );
    }

    #[test]
    fn a_pause_makes_a_job_at_once_without_waiting_for_the_step() {
        let mut p = policy(|c| c.pause_secs = 0.6);
        p.push(&tone(1.0));
        let job = p.take_job().unwrap();
        p.on_result(job.span, vec![seg(0.0, 1.0, "one")]);
        p.push(&tone(0.2));
        p.push(&silence(0.6));
        assert!(
            p.received_secs() - 1.0 < p.step_secs(),
            "no step has passed"
        );
        let job = p.take_job().expect("the pause is reached");
        assert!(job.span.is_final);
        let out = p.on_result(job.span, vec![seg(0.0, 1.2, "one two")]);
        assert_eq!(out[0], LiveOutput::Commit(vec![seg(0.0, 1.2, "one two")]));
    }

    #[test]
    fn the_step_follows_the_inference_time() {
        let mut p = policy(|c| c.min_step_secs = 0.3);
        assert_eq!(p.step_secs(), 1.0, "unknown: the longest step");
        p.observe_inference(0.1);
        assert_eq!(p.step_secs(), 0.3, "fast: the shortest step");
        p.observe_inference(0.2);
        assert!((p.step_secs() - 2.0 * 0.13).max(0.3) - p.step_secs() < 1e-9);
        for _ in 0..20 {
            p.observe_inference(3.0);
        }
        assert_eq!(p.step_secs(), 1.0, "slow: never longer than step_secs");
        p.observe_inference(f64::NAN);
        assert_eq!(p.step_secs(), 1.0);
    }

    #[test]
    fn a_stream_too_far_behind_sheds_its_oldest_audio() {
        let mut p = policy(|c| c.max_buffer_secs = 12.0);
        p.push(&tone(1.0));
        let job = p.take_job().unwrap();
        p.push(&tone(19.0));
        assert!(
            (p.buffered_secs() - 12.0).abs() < 0.01,
            "{}",
            p.buffered_secs()
        );
        assert!((p.shed_secs() - 8.0).abs() < 0.01);
        assert!((p.buffer_start_secs() - 8.0).abs() < 0.01);
        // The late result's words from the shed audio are not committed.
        let out = p.on_result(job.span, vec![seg(0.0, 1.0, "lost")]);
        assert!(
            out.iter().all(|o| !matches!(o, LiveOutput::Commit(_))),
            "{out:?}"
        );
    }

    #[test]
    fn committed_words_whose_audio_is_gone_prime_the_next_job() {
        let mut p = policy(|c| c.context_secs = 0.0);
        p.push(&tone(3.0));
        let j1 = p.take_job().unwrap();
        assert_eq!(j1.prompt, None);
        p.on_result(
            j1.span,
            vec![seg(0.0, 1.5, "Ask not."), seg(1.5, 3.0, "what your")],
        );
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        assert_eq!(j2.prompt, None);
        p.on_result(
            j2.span,
            vec![
                seg(0.0, 1.5, "Ask not."),
                seg(1.5, 4.0, "what your country"),
            ],
        );
        p.push(&tone(1.0));
        let j3 = p.take_job().unwrap();
        assert_eq!(j3.prompt.as_deref(), Some("Ask not."));
    }

    #[test]
    fn a_hypothesis_caught_in_a_loop_is_read_up_to_the_loop() {
        let mut p = policy(|c| c.window_secs = 5.0);
        p.push(&tone(6.0));
        let job = p.take_job().unwrap();
        let mut words = vec![("which", 0.2, 0.5), ("we", 0.5, 0.7), ("bring", 0.7, 1.0)];
        words.extend((0..12).map(|i| ("bring", 1.0 + i as f64 * 0.3, 1.3 + i as f64 * 0.3)));
        let out = p.on_result(job.span, vec![word_seg(&words)]);
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(committed[0].text, "which we bring");
        let units = |t: &[&str]| -> Vec<Unit> {
            t.iter()
                .map(|w| Unit {
                    text: w.to_string(),
                    start: 0.0,
                    end: 0.0,
                    segment: 0,
                    probability: 0.9,
                    logprob: (0.0, 0),
                })
                .collect()
        };
        assert_eq!(
            loop_start(&units(&["the", "energy", "the", "energy", "the", "energy"])),
            2
        );
        assert_eq!(
            loop_start(&units(&["no", "no", "said", "no"])),
            4,
            "two is no loop"
        );
        let phrase = ["and", "so", "my", "fellow", "americans"];
        let looped: Vec<&str> = phrase.iter().cycle().take(15).copied().collect();
        assert_eq!(
            loop_start(&units(&looped)),
            5,
            "a phrase twice in a row loops"
        );
        assert_eq!(
            loop_start(&units(&[
                "the", "energy", "the", "faith", "the", "devotion"
            ])),
            6
        );
    }

    #[test]
    fn a_long_buffer_is_cut_at_the_last_committed_word() {
        let mut p = policy(|c| c.cut_secs = 2.0);
        let words = [
            ("one", 0.1, 0.5),
            ("two", 0.7, 1.1),
            ("three", 1.3, 1.8),
            ("four", 2.0, 2.8),
        ];
        p.push(&tone(3.0));
        let j1 = p.take_job().unwrap();
        p.on_result(j1.span, vec![word_seg(&words)]);
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        p.on_result(j2.span, vec![word_seg(&words)]);
        // "one two three" agreed; the segment goes on, but the buffer is long: cut in the gap.
        assert!(
            (p.buffer_start_secs() - 1.9).abs() < 1e-3,
            "{}",
            p.buffer_start_secs()
        );
    }

    #[test]
    fn lag_counts_audio_no_hypothesis_has_covered() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&tone(1.0));
        let job = p.take_job().unwrap();
        p.push(&tone(4.0));
        assert!((p.lag_secs() - 5.0).abs() < 1e-3);
        p.on_result(job.span, vec![]);
        assert!((p.lag_secs() - 4.0).abs() < 1e-3);
    }

    #[test]
    fn silence_is_never_lag() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&silence(10.0));
        assert!(p.lag_secs() < 1e-9);
    }

    #[test]
    fn finish_commits_the_rest() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&tone(0.4));
        let job = p.finish().unwrap();
        assert!(job.span.is_final);
        let out = p.on_result(job.span, vec![seg(0.0, 0.4, "hi")]);
        assert_eq!(out[0], LiveOutput::Commit(vec![seg(0.0, 0.4, "hi")]));
        assert!(p.finish().is_none());
    }

    /// A policy (agreement only) that heard `secs` of sound, then a pause, and committed
    /// `words` for it.
    fn committed_at_a_pause(secs: f64, words: &[(&str, f64, f64)]) -> LivePolicy {
        let mut p = agreement_only(|_| {});
        p.push(&tone(secs));
        p.push(&pause());
        let job = p.take_job().unwrap();
        assert!(job.span.is_final);
        p.on_result(job.span, vec![word_seg(words)]);
        p
    }

    fn word_seg(words: &[(&str, f64, f64)]) -> Segment {
        let tokens = words
            .iter()
            .map(|&(w, start, end)| crate::transcript::Token {
                text: format!(" {w}"),
                start,
                end,
                probability: 0.9,
            })
            .collect();
        Segment {
            start: words[0].1,
            end: words[words.len() - 1].2,
            text: words.iter().map(|w| w.0).collect::<Vec<_>>().join(" "),
            no_speech_prob: 0.0,
            tokens: Some(tokens),
        }
    }

    #[test]
    fn words_agreed_by_two_hypotheses_are_final_without_waiting_for_the_segment() {
        let mut p = agreement_only(|_| {});
        p.push(&tone(2.0));
        let j1 = p.take_job().unwrap();
        let out = p.on_result(
            j1.span,
            vec![word_seg(&[
                ("Ask", 0.0, 0.4),
                ("not", 0.4, 0.8),
                ("what", 0.8, 1.2),
            ])],
        );
        assert!(matches!(out[..], [LiveOutput::Partial { .. }]), "{out:?}");
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        let out = p.on_result(
            j2.span,
            vec![word_seg(&[
                ("ask", 0.0, 0.4),
                ("not", 0.4, 0.8),
                ("what", 0.8, 1.2),
                ("your", 1.2, 1.6),
                ("count", 1.6, 2.9),
            ])],
        );
        // "ask not what your" is in both except "your" (new), and "count" may still grow.
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(committed.len(), 1);
        assert_eq!(committed[0].text, "ask not what");
        assert!((committed[0].end - 1.2).abs() < 1e-6);
        assert_eq!(
            out[1],
            LiveOutput::Partial {
                text: "your count".into(),
                revision: 2
            }
        );
        assert_eq!(p.buffer_start, 0.0, "the segment goes on: no audio is cut");
        // The next hypothesis re-reads the committed words; they are not committed twice.
        p.push(&tone(1.0));
        let j3 = p.take_job().unwrap();
        let out = p.on_result(
            j3.span,
            vec![word_seg(&[
                ("ask", 0.0, 0.4),
                ("not", 0.4, 0.8),
                ("what", 0.8, 1.25),
                ("your", 1.25, 1.6),
                ("country", 1.6, 2.4),
                ("can", 2.5, 3.9),
            ])],
        );
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(committed[0].text, "your");
        assert_eq!(
            out[1],
            LiveOutput::Partial {
                text: "country can".into(),
                revision: 3
            }
        );
    }

    /// Two hypotheses, a second apart, over "ask not what your country" with the last word
    /// written `last[0]`, then `last[1]`: 1.9 s of speech, 0.1 s of quiet, then a second of
    /// sound that Whisper reads no word in (applause, which a speech detector may take for
    /// speech at first). Returns the second hypothesis' output.
    fn sentence_read_twice(p: &mut LivePolicy, last: [&str; 2]) -> Vec<LiveOutput> {
        let words = |last| [&ASK_NOT[..4], &[(last, 1.5, 1.9)]].concat();
        p.push(&tone(1.9));
        p.push(&silence(0.1));
        let j1 = p.take_job().unwrap();
        p.on_result(j1.span, vec![word_seg(&words(last[0]))]);
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        p.on_result(j2.span, vec![word_seg(&words(last[1]))])
    }

    #[test]
    fn a_sentence_read_twice_with_nothing_new_after_it_is_final_before_the_pause() {
        let mut p = agreement_only(|_| {});
        let out = sentence_read_twice(&mut p, ["country", "country."]);
        assert_commit_then_partial(&out, "ask not what your country.", "", 2);
        assert_eq!(p.buffer_start, 0.0, "Whisper's word end is no place to cut");
        // Re-read, the sentence is not committed again; what follows it is new.
        p.push(&tone(1.0));
        let j3 = p.take_job().unwrap();
        let words = [&ASK_NOT[..4], &[("country.", 1.5, 1.9), ("And", 3.2, 3.5)]].concat();
        let out = p.on_result(j3.span, vec![word_seg(&words)]);
        assert_eq!(
            out,
            [LiveOutput::Partial {
                text: "And".into(),
                revision: 3
            }]
        );
        // Whisper may drop the full stop once it hears more: the sentence is still finished.
        let mut p = agreement_only(|_| {});
        let out = sentence_read_twice(&mut p, ["country.", "country"]);
        assert_commit_then_partial(&out, "ask not what your country", "", 2);
    }

    #[test]
    fn an_unfinished_sentence_or_too_little_audio_after_it_waits() {
        let mut p = agreement_only(|_| {});
        let out = sentence_read_twice(&mut p, ["country", "country"]);
        assert_commit_then_partial(&out, "ask not what your", "country", 2);
        let mut p = agreement_only(|c| c.sentence_gap_secs = 1.5);
        let out = sentence_read_twice(&mut p, ["country.", "country."]);
        assert_commit_then_partial(&out, "ask not what your", "country.", 2);
    }

    #[test]
    fn sentences_end_at_full_stops_question_and_exclamation_marks_but_not_ellipses() {
        for end in ["country.", "you?", "Go!", "国家。", "吗？", "好！"] {
            assert!(ends_sentence(end), "{end}");
        }
        for not in ["country", "you,", "and...", "so…", "国家，"] {
            assert!(!ends_sentence(not), "{not}");
        }
    }

    /// `out` commits one segment of `committed` and then shows `partial` as revision `revision`.
    fn assert_commit_then_partial(
        out: &[LiveOutput],
        committed: &str,
        partial: &str,
        revision: u64,
    ) {
        let LiveOutput::Commit(segments) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(segments[0].text, committed);
        let text = partial.to_string();
        assert_eq!(out[1], LiveOutput::Partial { text, revision });
    }

    /// Six one-second words ("one" to "six.", a segment) and "seven" after them, as read by a
    /// job at `offset` (Whisper's times are relative to the job's audio).
    fn six_then_seven(offset: f64) -> Vec<Segment> {
        let words = ["one", "two", "three", "four", "five", "six."];
        let first: Vec<(&str, f64, f64)> = (0..6)
            .map(|i| (words[i], i as f64 + 0.2 - offset, i as f64 + 0.9 - offset))
            .filter(|w| w.1 >= 0.0)
            .collect();
        vec![
            word_seg(&first),
            word_seg(&[("seven", 6.2 - offset, 6.9 - offset)]),
        ]
    }

    /// A policy keeping `context_secs` that has read [`six_then_seven`] twice (so agreed on
    /// the six), with what the second reading made it say.
    fn six_read_twice(context_secs: f64) -> (LivePolicy, Vec<LiveOutput>) {
        let mut p = agreement_only(|c| c.context_secs = context_secs);
        p.push(&tone(7.0));
        let j1 = p.job(false);
        p.on_result(j1.span, six_then_seven(0.0));
        p.push(&tone(0.5));
        let j2 = p.job(false);
        let out = p.on_result(j2.span, six_then_seven(0.0));
        (p, out)
    }

    #[test]
    fn a_segment_cut_keeps_committed_words_before_the_rest_and_skips_them_when_re_read() {
        let (mut p, out) = six_read_twice(3.0);
        assert_commit_then_partial(&out, "one two three four five six.", "seven", 2);
        // Cut halfway between "two" and "three" (which starts 3.7 s before the segment's end),
        // not at the segment's end (5.9 s).
        assert!((p.buffer_start - 2.05).abs() < 1e-3, "{}", p.buffer_start);
        p.push(&tone(0.5));
        let j3 = p.job(false);
        assert!((j3.span.offset - 2.05).abs() < 1e-3);
        let mut hyp = six_then_seven(j3.span.offset);
        hyp.push(word_seg(&[("eight", 7.2 - 2.05, 7.9 - 2.05)]));
        let out = p.on_result(j3.span, hyp);
        let LiveOutput::Commit(segments) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            segments[0].text, "seven",
            "the committed words are not repeated"
        );

        let (p, _) = six_read_twice(0.0);
        assert!((p.buffer_start - 5.9).abs() < 1e-3, "{}", p.buffer_start);
    }

    /// Words of "ask not what your country", as two hypotheses place them.
    const ASK_NOT: [(&str, f64, f64); 5] = [
        ("ask", 0.0, 0.4),
        ("not", 0.4, 0.8),
        ("what", 0.8, 1.2),
        ("your", 1.2, 1.9),
        ("country", 1.9, 2.2),
    ];

    #[test]
    fn agreement_with_a_margin_waits_for_words_heard_well_before_the_end() {
        let mut p = agreement_only(|c| c.agree_margin_secs = 0.5);
        p.push(&tone(2.0));
        let j1 = p.take_job().unwrap();
        p.on_result(j1.span, vec![word_seg(&ASK_NOT[..4])]);
        p.push(&tone(0.2));
        let j2 = p.job(false);
        let out = p.on_result(j2.span, vec![word_seg(&ASK_NOT)]);
        // Without a margin both agree on "ask not what your"; but "your" ends 0.3 s before this
        // job's end (2.2 s), too close to be sure of: only the words heard well before commit.
        assert_commit_then_partial(&out, "ask not what", "your country", 2);
        // Another hypothesis over the same audio agrees on "your" again: still too close.
        let j3 = p.job(false);
        let out = p.on_result(j3.span, vec![word_seg(&ASK_NOT)]);
        assert!(out.is_empty(), "{out:?}");
        // Once 0.5 s more is heard, "your" is final.
        p.push(&tone(0.5));
        let j4 = p.job(false);
        let out = p.on_result(j4.span, vec![word_seg(&ASK_NOT)]);
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(committed[0].text, "your");
    }

    #[test]
    fn a_word_whose_time_drifts_before_the_committed_end_is_still_heard() {
        let mut p = agreement_only(|_| {});
        p.push(&tone(2.0));
        let j1 = p.take_job().unwrap();
        p.on_result(j1.span, vec![word_seg(&ASK_NOT[..4])]);
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        p.on_result(j2.span, vec![word_seg(&ASK_NOT)]);
        assert_eq!(p.committed_end, 1.9, "\"ask not what your\" is final");
        // The next reading of the same audio places "your" and "country" earlier: by time,
        // "country" (centred at 1.7 s) would count as committed and be lost.
        p.push(&tone(1.0));
        let j3 = p.take_job().unwrap();
        let third = [
            ("Ask", 0.0, 0.3),
            ("not", 0.3, 0.6),
            ("what", 0.6, 0.9),
            ("your", 0.9, 1.4),
            ("country", 1.4, 2.0),
            ("can", 2.0, 2.4),
            ("do", 2.4, 3.5),
        ];
        let out = p.on_result(j3.span, vec![word_seg(&third)]);
        assert_commit_then_partial(&out, "country", "can do", 3);
    }

    #[test]
    fn a_loop_back_to_committed_words_still_buffered_is_not_committed() {
        let mut p = agreement_only(|_| {});
        p.push(&tone(2.0));
        let j1 = p.take_job().unwrap();
        p.on_result(j1.span, vec![word_seg(&ASK_NOT[..4])]);
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        p.on_result(j2.span, vec![word_seg(&ASK_NOT)]);
        assert_eq!(p.committed_end, 1.9, "\"ask not what your\" is final");
        // Two readings go on past "country" by starting the committed phrase over.
        let looped = [
            ASK_NOT.as_slice(),
            &[("ask", 2.2, 2.4), ("not", 2.4, 2.6), ("what", 2.6, 2.8)],
            &[("your", 2.8, 3.0), ("country", 3.0, 3.4)],
        ]
        .concat();
        for _ in 0..2 {
            p.push(&tone(1.0));
            let job = p.take_job().unwrap();
            let out = p.on_result(job.span, vec![word_seg(&looped)]);
            // Read up to the loop, only "country" is new; being the last word, it waits.
            assert!(
                !out.iter().any(|o| matches!(o, LiveOutput::Commit(_))),
                "{out:?}"
            );
            assert_eq!(p.last_partial, "country", "{out:?}");
        }
        assert_eq!(p.recent_words.last().map(String::as_str), Some("your"));
    }

    #[test]
    fn committed_words_read_differently_are_lined_up_by_edit_distance() {
        let committed: Vec<String> = ["ask", "not", "what", "your"].map(String::from).to_vec();
        let opening: Vec<String> = ["ask", "knot", "what", "your", "country"]
            .map(String::from)
            .to_vec();
        let d = prefix_distances(&committed, &opening);
        assert_eq!(d, vec![4, 3, 3, 2, 1, 2]);
        assert_eq!(prefix_distances(&committed, &[]), vec![4]);
    }

    #[test]
    fn a_repeated_boundary_word_is_not_committed_twice() {
        let mut p = committed_at_a_pause(1.0, &[("fellow", 0.1, 0.5), ("Americans", 0.5, 1.0)]);
        // Whisper places the last word of the old audio a little later this time.
        p.push(&tone(2.0));
        let j2 = p.take_job().unwrap();
        let words = [
            ("Americans,", 1.8, 2.2),
            ("ask", 2.3, 2.6),
            ("not", 2.6, 3.0),
        ];
        let shifted: Vec<(&str, f64, f64)> = words
            .iter()
            .map(|&(w, s, e)| (w, s - j2.span.offset, e - j2.span.offset))
            .collect();
        let out = p.on_result(j2.span, vec![word_seg(&shifted)]);
        assert_eq!(
            out,
            vec![LiveOutput::Partial {
                text: "ask not".into(),
                revision: 1
            }]
        );
    }

    #[test]
    fn a_committed_phrase_placed_after_the_committed_end_again_is_not_committed_twice() {
        let said = [
            ("it", 0.1, 0.2),
            ("was", 0.2, 0.4),
            ("my", 0.4, 0.5),
            ("reports", 0.5, 1.0),
            ("from", 1.0, 1.2),
            ("the", 1.2, 1.3),
            ("north", 1.3, 1.8),
        ];
        let mut p = committed_at_a_pause(3.0, &said);
        // The next hypothesis hears the phrase again, timed after the committed end.
        p.push(&tone(2.0));
        p.push(&pause());
        let j2 = p.take_job().unwrap();
        let again: Vec<(&str, f64, f64)> = said
            .iter()
            .map(|&(w, s, e)| (w, s * 0.5, e * 0.5))
            .chain([("which", 1.0, 1.3), ("chiefly", 1.3, 1.8)])
            .collect();
        let out = p.on_result(j2.span, vec![word_seg(&again)]);
        assert_eq!(
            out[0],
            LiveOutput::Commit(vec![Segment {
                start: j2.span.offset + 1.0,
                end: j2.span.offset + 1.8,
                text: "which chiefly".into(),
                no_speech_prob: 0.0,
                tokens: None,
            }])
        );
    }

    #[test]
    fn a_hypothesis_that_repeats_itself_commits_only_up_to_the_repeat() {
        let mut p = agreement_only(|_| {});
        p.push(&tone(3.0));
        let garbled = || {
            vec![
                word_seg(&[("fellow", 1.0, 1.4), ("Americans.", 1.4, 2.0)]),
                word_seg(&[("And", 0.1, 0.3), ("so", 0.3, 0.5), ("my", 0.5, 0.8)]),
            ]
        };
        let j1 = p.take_job().unwrap();
        p.on_result(j1.span, garbled());
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        let out = p.on_result(j2.span, garbled());
        let LiveOutput::Commit(committed) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(committed.len(), 1, "{committed:?}");
        assert_eq!(committed[0].text, "fellow Americans.");
    }
}
