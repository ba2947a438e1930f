//! The commit policy for live streams.
//!
//! Whisper re-reads the whole uncommitted buffer each time (about once a second while speech
//! continues). A hypothesis is read as a sequence of units: words when Whisper reported token
//! timings (live jobs ask for them), else whole segments. Text becomes final — a
//! `transcript_segment` — when
//! - two consecutive hypotheses agree on its leading units (all but the last unit, which may
//!   still be half spoken): "local agreement", so a word is final about two steps after it
//!   is heard, or
//! - the speaker pauses (trailing silence of [`LiveConfig::pause_secs`]), or
//! - the buffer reaches [`LiveConfig::max_buffer_secs`] (Whisper's window is 30 s), or
//! - the stream ends.
//!
//! Audio is dropped from the buffer once a whole Whisper segment is committed (cutting inside a
//! segment would clip words); words committed earlier are recognised in later hypotheses by
//! their time and skipped. Memory per stream is bounded by `max_buffer_secs`. Only one hypothesis per stream is in flight at a time; audio that arrives
//! meanwhile waits in the buffer and the next job takes all of it (latest audio wins, nothing queues
//! up). A job lends the buffer as a [`SharedAudio`] snapshot; its result is matched to the
//! [`JobSpan`] it covered. This module must not block, spawn or talk to Whisper itself, and must
//! not copy the buffer for a job.

use crate::audio::{SharedAudio, SharedBuffer, SAMPLE_RATE};
use crate::transcript::Segment;

/// Tuning knobs of the policy; the defaults suit `tiny.en`/`base` on a small CPU.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// New audio needed before a fresh hypothesis is worth computing; trades latency for CPU.
    pub step_secs: f64,
    /// Longest trailing silence that still counts as "mid-sentence"; longer commits everything.
    pub pause_secs: f64,
    /// Buffer length that forces a commit, kept below Whisper's 30 s window.
    pub max_buffer_secs: f64,
    /// RMS level below which a 30 ms frame is always silence (digital silence, faint hiss).
    pub speech_rms: f32,
    /// How far above the background level (tracked per stream) a frame must be to count as
    /// sound, so room noise between sentences still reads as a pause.
    pub above_floor: f32,
    /// Silence kept before speech starts, so the first word is not clipped.
    pub lead_in_secs: f64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            step_secs: 1.0,
            pause_secs: 0.6,
            max_buffer_secs: 24.0,
            speech_rms: 0.01,
            above_floor: 3.0,
            lead_in_secs: 0.3,
        }
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
    /// Timeline second where the committed text ends; units of later hypotheses centred
    /// before it were committed already.
    committed_end: f64,
    /// The last few committed words (normalised), to drop a repeat at the boundary.
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
    recent_levels: std::collections::VecDeque<f32>,
}

const FRAME: usize = (SAMPLE_RATE as usize) * 30 / 1000;
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
            committed_end: 0.0,
            recent_words: Vec::new(),
            revision: 0,
            last_partial: String::new(),
            trailing_silence: 0,
            heard_sound: false,
            recent_levels: std::collections::VecDeque::with_capacity(FLOOR_FRAMES),
        }
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

    /// Whether the uncommitted buffer holds sound (speech, or anything above the background):
    /// with [`silence_secs`](Self::silence_secs), what a caller reporting turns needs.
    pub fn hearing(&self) -> bool {
        self.heard_sound
    }

    /// Seconds of silence at the end of the audio received so far.
    pub fn silence_secs(&self) -> f64 {
        secs(self.trailing_silence)
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
        if self.in_flight || !self.heard_sound {
            return None;
        }
        let paused = self.trailing_silence >= samples(self.config.pause_secs);
        let due = self.received - self.taken_at >= samples(self.config.step_secs);
        if !(due || (paused && self.taken_at < self.received)) {
            return None;
        }
        Some(self.job(paused))
    }

    /// The last job of a stream: whatever is left, committed in full. None when nothing is left.
    pub fn finish(&mut self) -> Option<LiveJob> {
        if self.in_flight || !self.heard_sound || self.buffer.is_empty() {
            return None;
        }
        Some(self.job(true))
    }

    fn job(&mut self, is_final: bool) -> LiveJob {
        self.in_flight = true;
        self.taken_at = self.received;
        let audio = self.buffer.snapshot();
        let span = JobSpan {
            offset: self.buffer_start,
            samples: audio.len(),
            is_final,
        };
        LiveJob { audio, span }
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
        let full = self.buffer.len() as u64 >= samples(self.config.max_buffer_secs);
        let n_commit = if job.is_final {
            units.len()
        } else if full {
            forced_commit(&units)
        } else {
            self.agreed_prefix(&units)
        };
        let mut out = Vec::new();
        let (committed, rest) = units.split_at(n_commit);
        if let Some(last) = committed.last() {
            self.committed_end = last.end;
            self.remember(committed);
            out.push(LiveOutput::Commit(segments_of(committed, &hyp)));
        }
        if job.is_final {
            self.committed_end = self.committed_end.max(job_end);
            self.drop_until(job_end);
        } else if let Some(cut) = segment_cut(committed, rest, &hyp) {
            self.drop_until(cut);
        }
        self.previous = rest.to_vec();
        let text = rest.iter().map(|u| u.text.as_str()).collect::<Vec<_>>();
        self.partial(&text.join(" "), &mut out);
        out
    }

    /// The hypothesis' units that are not committed yet: those centred after the committed
    /// text, less a repeat of its last words.
    fn new_units(&self, hyp: &[Segment]) -> Vec<Unit> {
        let mut units: Vec<Unit> = units_of(hyp)
            .into_iter()
            .filter(|u| (u.start + u.end) / 2.0 > self.committed_end)
            .collect();
        let max = units.len().min(self.recent_words.len()).min(3);
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

    /// Keeps the last committed words for [`new_units`](Self::new_units).
    fn remember(&mut self, committed: &[Unit]) {
        self.recent_words
            .extend(committed.iter().map(|u| normalise(&u.text)));
        let extra = self.recent_words.len().saturating_sub(3);
        self.recent_words.drain(..extra);
    }

    /// How many leading units (all but the last) the previous hypothesis agreed on. Agreement
    /// stops where the hypothesis goes back in time: Whisper sometimes repeats the buffer's
    /// opening words after its end, and two hypotheses may agree on such a repeat.
    fn agreed_prefix(&self, units: &[Unit]) -> usize {
        let complete = units.len().saturating_sub(1).min(in_order(units));
        units[..complete]
            .iter()
            .zip(&self.previous)
            .take_while(|(a, b)| normalise(&a.text) == normalise(&b.text))
            .count()
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
}

/// The units of a hypothesis, in order.
fn units_of(hyp: &[Segment]) -> Vec<Unit> {
    let mut units = Vec::new();
    for (segment, s) in hyp.iter().enumerate() {
        let words = s.tokens.as_deref().map(words_of).unwrap_or_default();
        if words.is_empty() {
            units.push(Unit {
                text: s.text.clone(),
                start: s.start,
                end: s.end,
                segment,
            });
        }
        units.extend(words.into_iter().map(|(text, start, end)| Unit {
            text,
            start: start.clamp(s.start, s.end),
            end: end.clamp(s.start, s.end),
            segment,
        }));
    }
    units
}

/// Joins tokens into words (a token starting with a space starts one); special tokens such
/// as `[_BEG_]` or `<|endoftext|>` carry no text and are skipped.
fn words_of(tokens: &[crate::transcript::Token]) -> Vec<(String, f64, f64)> {
    let mut words: Vec<(String, f64, f64)> = Vec::new();
    for t in tokens {
        let trimmed = t.text.trim();
        if trimmed.is_empty() || trimmed.starts_with("[_") || trimmed.starts_with("<|") {
            continue;
        }
        match words.last_mut() {
            Some(word) if !t.text.starts_with(char::is_whitespace) => {
                word.0.push_str(t.text.trim_end());
                word.2 = t.end;
            }
            _ => words.push((trimmed.to_string(), t.start, t.end)),
        }
    }
    words
}

/// How many leading units start in time order (within a little jitter).
fn in_order(units: &[Unit]) -> usize {
    const JITTER: f64 = 0.3;
    let back = units
        .windows(2)
        .position(|w| w[1].start + JITTER < w[0].start);
    back.map_or(units.len(), |i| i + 1)
}

/// With the buffer full: everything but the last segment (all of it if there is one).
fn forced_commit(units: &[Unit]) -> usize {
    let last = units.last().map_or(0, |u| u.segment);
    let before = units.iter().take_while(|u| u.segment != last).count();
    if before == 0 {
        units.len()
    } else {
        before
    }
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

    fn tone(secs: f64) -> Vec<f32> {
        let n = (secs * SAMPLE_RATE as f64) as usize;
        (0..n).map(|i| 0.3 * (i as f32 * 0.1).sin()).collect()
    }

    fn silence(secs: f64) -> Vec<f32> {
        vec![0.0; (secs * SAMPLE_RATE as f64) as usize]
    }

    fn seg(start: f64, end: f64, text: &str) -> Segment {
        Segment::new(start, end, text)
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
        let mut p = LivePolicy::new(LiveConfig::default());
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
        p.push(&silence(0.7));
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
        p.push(&hiss(0.7));
        let job = p.take_job().expect("sound then a pause");
        assert!(
            job.span.is_final,
            "hiss above the fixed threshold is still a pause"
        );
    }

    #[test]
    fn a_full_buffer_forces_a_commit() {
        let cfg = LiveConfig {
            max_buffer_secs: 5.0,
            ..LiveConfig::default()
        };
        let mut p = LivePolicy::new(cfg);
        p.push(&tone(6.0));
        let job = p.take_job().unwrap();
        let out = p.on_result(job.span, vec![seg(0.0, 3.0, "a"), seg(3.0, 6.0, "b")]);
        assert_eq!(out[0], LiveOutput::Commit(vec![seg(0.0, 3.0, "a")]));
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
        let mut p = LivePolicy::new(LiveConfig::default());
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

    #[test]
    fn a_repeated_boundary_word_is_not_committed_twice() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&tone(1.0));
        p.push(&silence(0.7));
        let job = p.take_job().unwrap();
        assert!(job.span.is_final);
        p.on_result(
            job.span,
            vec![word_seg(&[("fellow", 0.1, 0.5), ("Americans", 0.5, 1.0)])],
        );
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
    fn a_hypothesis_that_repeats_itself_commits_only_up_to_the_repeat() {
        let mut p = LivePolicy::new(LiveConfig::default());
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
