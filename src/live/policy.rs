//! The commit policy for live streams.
//!
//! Whisper re-reads the whole uncommitted buffer each time (about once a second while speech
//! continues). Text becomes final — a `transcript_segment` — when
//! - two consecutive hypotheses agree on a complete segment (all but the last one, which may still
//!   grow), or
//! - the speaker pauses (trailing silence of [`LiveConfig::pause_secs`]), or
//! - the buffer reaches [`LiveConfig::max_buffer_secs`] (Whisper's window is 30 s), or
//! - the stream ends.
//!
//! Committed audio is dropped from the buffer, so memory per stream is bounded by
//! `max_buffer_secs`. Only one hypothesis per stream is in flight at a time; audio that arrives
//! meanwhile waits in the buffer and the next job takes all of it (latest audio wins, nothing queues
//! up). This module must not block, spawn or talk to Whisper itself.

use crate::audio::SAMPLE_RATE;
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

/// A hypothesis the caller should compute with Whisper and hand back to [`LivePolicy::on_result`].
#[derive(Debug, Clone)]
pub struct LiveJob {
    /// The uncommitted audio, 16 kHz mono.
    pub audio: Vec<f32>,
    /// Timeline position (seconds) of `audio[0]`; Whisper's times are relative to it.
    pub offset: f64,
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
    /// Audio not yet committed; bounded because commits drop its head.
    buffer: Vec<f32>,
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
    /// The previous hypothesis' uncommitted segments, to find agreement.
    previous: Vec<Segment>,
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
            buffer: Vec::new(),
            buffer_start: 0.0,
            received: 0,
            taken_at: 0,
            covered: 0,
            in_flight: false,
            previous: Vec::new(),
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
        self.buffer.extend_from_slice(audio);
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
            self.buffer.drain(..cut);
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
        LiveJob {
            audio: self.buffer.clone(),
            offset: self.buffer_start,
            is_final,
        }
    }

    /// The job was not run (pool busy, error): allow a new one later.
    pub fn abandon(&mut self) {
        self.in_flight = false;
    }

    /// Takes Whisper's segments for `job` (times relative to the job's audio) and says what to send.
    pub fn on_result(&mut self, job: &LiveJob, segments: Vec<Segment>) -> Vec<LiveOutput> {
        self.in_flight = false;
        self.covered = samples(job.offset) + job.audio.len() as u64;
        let hyp: Vec<Segment> = segments
            .into_iter()
            .map(|s| shift(s, job.offset))
            .filter(|s| !s.text.trim().is_empty())
            .collect();
        let job_end = job.offset + secs(job.audio.len() as u64);
        let full = self.buffer.len() as u64 >= samples(self.config.max_buffer_secs);
        let n_commit = if job.is_final {
            hyp.len()
        } else if full {
            hyp.len().saturating_sub(1).max(usize::from(hyp.len() == 1))
        } else {
            self.agreed_prefix(&hyp)
        };
        let mut out = Vec::new();
        let committed: Vec<Segment> = hyp[..n_commit].to_vec();
        let rest: Vec<Segment> = hyp[n_commit..].to_vec();
        if !committed.is_empty() || job.is_final {
            let cut = if job.is_final || rest.is_empty() {
                job_end
            } else {
                committed.last().map_or(job.offset, |s| s.end)
            };
            self.drop_until(cut);
        }
        if !committed.is_empty() {
            out.push(LiveOutput::Commit(committed));
        }
        self.previous = rest.clone();
        self.partial(&rest, &mut out);
        out
    }

    /// How many leading complete segments (all but the last) the previous hypothesis agreed on.
    fn agreed_prefix(&self, hyp: &[Segment]) -> usize {
        let complete = hyp.len().saturating_sub(1);
        hyp[..complete]
            .iter()
            .zip(&self.previous)
            .take_while(|(a, b)| normalise(&a.text) == normalise(&b.text))
            .count()
    }

    fn partial(&mut self, rest: &[Segment], out: &mut Vec<LiveOutput>) {
        let text = crate::transcript::join_text(rest);
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
        self.buffer.drain(..cut);
        self.buffer_start += secs(cut as u64);
        let threshold = self.threshold();
        if self.buffer.chunks(FRAME).all(|f| rms(f) < threshold) {
            self.heard_sound = false;
            self.trim_silence();
        }
    }
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
        Segment {
            start,
            end,
            text: text.into(),
            no_speech_prob: 0.0,
            tokens: None,
        }
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
    fn a_job_is_due_each_step_and_only_one_is_in_flight() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&tone(0.5));
        assert!(p.take_job().is_none(), "half a step is not enough");
        p.push(&tone(0.5));
        let job = p.take_job().expect("a step of sound makes a job");
        assert!(!job.is_final);
        p.push(&tone(2.0));
        assert!(p.take_job().is_none(), "one in flight at a time");
        let out = p.on_result(&job, vec![seg(0.0, 1.0, "hello")]);
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
            &j1,
            vec![seg(0.0, 1.5, "Ask not."), seg(1.5, 3.0, "what your")],
        );
        p.push(&tone(1.0));
        let j2 = p.take_job().unwrap();
        let out = p.on_result(
            &j2,
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
            (j3.offset - 1.5).abs() < 1e-3,
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
        assert!(job.is_final, "a pause makes the job final");
        let out = p.on_result(&job, vec![seg(0.3, 1.3, "one")]);
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
            job.is_final,
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
        let out = p.on_result(&job, vec![seg(0.0, 3.0, "a"), seg(3.0, 6.0, "b")]);
        assert_eq!(out[0], LiveOutput::Commit(vec![seg(0.0, 3.0, "a")]));
    }

    #[test]
    fn lag_counts_audio_no_hypothesis_has_covered() {
        let mut p = LivePolicy::new(LiveConfig::default());
        p.push(&tone(1.0));
        let job = p.take_job().unwrap();
        p.push(&tone(4.0));
        assert!((p.lag_secs() - 5.0).abs() < 1e-3);
        p.on_result(&job, vec![]);
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
        assert!(job.is_final);
        let out = p.on_result(&job, vec![seg(0.0, 0.4, "hi")]);
        assert_eq!(out[0], LiveOutput::Commit(vec![seg(0.0, 0.4, "hi")]));
        assert!(p.finish().is_none());
    }
}
