//! One `audio-start` … `audio-stop` of a Wyoming connection, on the live engine: PCM is
//! decoded and resampled to 16 kHz mono as it arrives, the [`LivePolicy`] (behind the speech
//! detector, [`SpeechPolicy`]) decides when Whisper looks again, and committed segments come out as transcript chunks whose concatenation is
//! the final transcript.
//!
//! At most one job per utterance is in the pool at a time; a full pool makes the utterance
//! wait (the next tick tries again), never queue. This module must not read or write the
//! socket (the connection does) and must not decide what is final (the policy does).

use crate::app::speech::SpeechPolicy;
use crate::app::threads::StreamThreads;
use crate::audio::decode::{PcmDecoder, PcmFormat};
use crate::audio::guarded_resample;
use crate::audio::resample::Resampler;
use std::path::Path;
use std::time::Instant;

use crate::inference::engine::Options;
use crate::inference::pool::{JobEvent, JobHandle};
use crate::inference::served::Lease;
use crate::live::{JobSpan, LiveConfig, LiveOutput, LivePolicy, Metered};
use crate::transcript::{Segment, TextJoiner};

use super::event::{AudioFormat, Refusal};

/// Failed hypotheses in a row after which the utterance is given up.
const MAX_FAILURES: u32 = 3;

/// What an utterance runs on: its model, held loaded for its life, and its share of the live
/// capacity, given back when it ends.
pub struct Live {
    /// The model `transcribe` chose (else the default).
    pub lease: Lease,
    /// The utterance's share of the live capacity, reported after each hypothesis.
    pub share: Metered,
}

/// The live state of one utterance.
pub struct Utterance {
    /// Model and live-capacity share, set by [`Utterance::on`] once the format is accepted;
    /// `None` in unit tests, which never reach Whisper.
    live: Option<Live>,
    /// What `audio-start` announced; every chunk must repeat it.
    format: AudioFormat,
    /// Interleaved 16-bit PCM to mono.
    pcm: PcmDecoder,
    /// Mono at the client's rate to 16 kHz, leftovers kept between chunks.
    resampler: Resampler,
    /// When Whisper should look again and what is final, behind the speech detector.
    policy: SpeechPolicy,
    /// Threads per hypothesis: the configured count, or one while that is cheaper.
    threads: StreamThreads,
    /// The hypothesis in the pool, if any.
    pending: Option<Pending>,
    /// How Whisper decodes this utterance (language, threads, low latency).
    options: Options,
    /// Input frames received, for the length cap.
    frames: u64,
    /// Most input frames allowed (`--wyoming-max-audio` at the client's rate).
    max_frames: u64,
    /// The committed text so far: the concatenation of the chunks sent.
    text: String,
    /// Spaces committed segments into chunks that add up to `text`.
    joiner: TextJoiner,
    /// The language Whisper reported last.
    detected: Option<String>,
    /// Whether `audio-stop` came: the rest is transcribed and the utterance ends.
    stopped: bool,
    /// Failed hypotheses in a row.
    failures: u32,
}

/// A hypothesis being computed.
struct Pending {
    /// What the job covers; its audio went to the pool.
    span: JobSpan,
    /// The job's events.
    handle: JobHandle,
    /// Segments received so far.
    segments: Vec<Segment>,
    /// The whisper.cpp threads it runs on.
    threads: usize,
}

impl Utterance {
    /// The same utterance, running on `live` (its model and capacity share).
    pub fn on(self, live: Live) -> Utterance {
        Utterance {
            live: Some(live),
            ..self
        }
    }

    /// Starts an utterance in `format`; only 16-bit PCM at a rate the resampler takes.
    /// `speech_model` is the server's Silero model, for the policy to hear pauses by.
    pub fn start(
        format: AudioFormat,
        options: Options,
        max_secs: f64,
        speech_model: Option<&Path>,
    ) -> Result<Utterance, Refusal> {
        let unsupported = || {
            Refusal::fatal(
                "unsupported-audio",
                "audio must be 16-bit PCM (width 2), 1 to 64 channels, 1000 to 768000 Hz",
            )
        };
        if format.width != 2 {
            return Err(unsupported());
        }
        let pcm = PcmDecoder::new(PcmFormat::S16Le, format.channels).map_err(|_| unsupported())?;
        let resampler = Resampler::new(format.rate).map_err(|_| unsupported())?;
        Ok(Utterance {
            live: None,
            format,
            pcm,
            resampler,
            policy: SpeechPolicy::new(LivePolicy::new(LiveConfig::default()), speech_model),
            threads: StreamThreads::new(options.threads),
            pending: None,
            options,
            frames: 0,
            max_frames: (max_secs * f64::from(format.rate)) as u64,
            text: String::new(),
            joiner: TextJoiner::default(),
            detected: None,
            stopped: false,
            failures: 0,
        })
    }

    /// Takes one chunk of audio; it must be in the announced format and within the cap.
    pub fn push(&mut self, format: AudioFormat, pcm: &[u8]) -> Result<(), Refusal> {
        if self.stopped {
            return Err(Refusal::new(
                "audio-stopped",
                "audio-chunk after audio-stop; send audio-start first",
            ));
        }
        if format != self.format {
            return Err(Refusal::fatal(
                "unannounced-format",
                "audio-chunk rate, width or channels differ from audio-start",
            ));
        }
        let frame = u64::from(self.format.width) * u64::from(self.format.channels);
        self.frames += pcm.len() as u64 / frame;
        if self.frames > self.max_frames {
            return Err(Refusal::fatal(
                "audio-too-long",
                "the audio is longer than this server takes for one transcription",
            ));
        }
        let samples = self.pcm.push(pcm);
        let resampled = guarded_resample(&mut self.resampler, Some(&samples))
            .map_err(|_| Refusal::fatal("unsupported-audio", "the audio could not be used"))?;
        self.policy.push(&resampled);
        Ok(())
    }

    /// `audio-stop`: the rest of the audio goes into the last hypothesis.
    pub fn stop(&mut self) -> Result<(), Refusal> {
        if !self.stopped {
            self.stopped = true;
            let tail = guarded_resample(&mut self.resampler, None)
                .map_err(|_| Refusal::fatal("unsupported-audio", "the audio could not be used"))?;
            self.policy.push(&tail);
        }
        Ok(())
    }

    /// Whether `audio-stop` came.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Submits the next hypothesis when one is due and none is out. Returns whether the
    /// utterance is finished: stopped, and nothing left to transcribe.
    pub fn schedule(&mut self) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let job = if self.stopped {
            self.policy.finish()
        } else {
            self.policy.take_job()
        };
        let Some(job) = job else {
            return self.stopped && !self.policy.in_flight();
        };
        let Some(live) = self.live.as_ref() else {
            self.policy.abandon(); // no model: nothing can be read
            return self.stopped;
        };
        let threads = self.threads.next_count();
        let options = Options {
            threads,
            ..self.options.clone()
        };
        match live.lease.submit(job.audio, options) {
            Ok(handle) => {
                self.pending = Some(Pending {
                    span: job.span,
                    handle,
                    segments: Vec::new(),
                    threads,
                });
            }
            Err(busy) => {
                tracing::debug!(queue = busy.queue_len, "pool busy; the utterance waits");
                self.policy.abandon();
            }
        }
        false
    }

    /// The next event of the hypothesis in the pool; pending forever when none is.
    pub async fn next_event(&mut self) -> Option<JobEvent> {
        match self.pending.as_mut() {
            Some(p) => p.handle.next().await,
            None => std::future::pending().await,
        }
    }

    /// Takes a job event; returns the transcript chunks to send (committed text only).
    pub fn on_event(&mut self, event: Option<JobEvent>) -> Result<Vec<String>, Refusal> {
        match event {
            Some(JobEvent::Segment(s)) => {
                if let Some(p) = self.pending.as_mut() {
                    p.segments.push(s);
                }
                Ok(Vec::new())
            }
            Some(JobEvent::Done(summary)) => {
                let Some(p) = self.pending.take() else {
                    return Ok(Vec::new());
                };
                self.failures = 0;
                if let Some(live) = self.live.as_mut() {
                    let step = self.policy.longest_step_secs();
                    live.share
                        .report(summary.processing_secs, Instant::now(), step);
                }
                self.threads.observe(p.threads, &summary);
                self.detected = Some(summary.language);
                let outputs = self.policy.on_result(p.span, p.segments);
                Ok(self.chunks(outputs))
            }
            Some(JobEvent::Failed(err)) => {
                tracing::warn!(%err, "wyoming: hypothesis failed");
                self.failed()
            }
            None => self.failed(),
        }
    }

    fn failed(&mut self) -> Result<Vec<String>, Refusal> {
        self.pending = None;
        self.policy.abandon();
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return Err(Refusal::fatal(
                "transcription-failed",
                "the audio could not be transcribed",
            ));
        }
        Ok(Vec::new())
    }

    /// The committed segments of `outputs` as chunks, appended to the text.
    fn chunks(&mut self, outputs: Vec<LiveOutput>) -> Vec<String> {
        let mut chunks = Vec::new();
        for output in outputs {
            let LiveOutput::Commit(segments) = output else {
                continue; // partials may still change; Wyoming chunks only append
            };
            for piece in segments.iter().filter_map(|s| self.joiner.piece(s)) {
                self.text.push_str(&piece);
                chunks.push(piece);
            }
        }
        chunks
    }

    /// The final text and its language (asked for, else detected, else English).
    pub fn result(&self) -> (&str, String) {
        let language = self
            .options
            .language
            .clone()
            .or_else(|| self.detected.clone())
            .unwrap_or_else(|| "en".into());
        (&self.text, language)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONO16K: AudioFormat = AudioFormat {
        rate: 16_000,
        width: 2,
        channels: 1,
    };

    fn utterance(max_secs: f64) -> Utterance {
        Utterance::start(MONO16K, Options::default(), max_secs, None).unwrap()
    }

    #[test]
    fn only_16_bit_pcm_at_a_usable_rate_starts() {
        for (rate, width, channels) in [(16_000, 3, 1), (16_000, 2, 0), (10, 2, 1)] {
            let format = AudioFormat {
                rate,
                width,
                channels,
            };
            let refusal = Utterance::start(format, Options::default(), 60.0, None)
                .err()
                .unwrap();
            assert_eq!(refusal.code, "unsupported-audio");
            assert!(refusal.fatal);
        }
        let stereo = AudioFormat {
            rate: 44_100,
            width: 2,
            channels: 2,
        };
        assert!(Utterance::start(stereo, Options::default(), 60.0, None).is_ok());
    }

    #[test]
    fn chunks_must_repeat_the_announced_format() {
        let mut u = utterance(60.0);
        u.push(MONO16K, &[0; 640]).unwrap();
        let other = AudioFormat {
            rate: 8_000,
            ..MONO16K
        };
        let refusal = u.push(other, &[0; 640]).unwrap_err();
        assert_eq!(refusal.code, "unannounced-format");
        assert!(refusal.fatal);
    }

    #[test]
    fn audio_past_the_cap_is_refused() {
        let mut u = utterance(1.0);
        let half_second = vec![0u8; 16_000];
        u.push(MONO16K, &half_second).unwrap();
        u.push(MONO16K, &half_second).unwrap();
        let refusal = u.push(MONO16K, &[0; 2]).unwrap_err();
        assert_eq!(refusal.code, "audio-too-long");
    }

    #[test]
    fn after_stop_chunks_are_refused_and_a_silent_utterance_has_no_text() {
        let mut u = utterance(60.0);
        u.push(MONO16K, &[0; 3200]).unwrap();
        u.stop().unwrap();
        assert!(u.is_stopped());
        assert_eq!(u.push(MONO16K, &[0; 2]).unwrap_err().code, "audio-stopped");
        // Silence never reaches Whisper: nothing to finish.
        assert!(u.policy.finish().is_none());
        assert_eq!(u.result(), ("", "en".to_string()));
    }

    #[test]
    fn committed_segments_become_chunks_that_add_up_to_the_text() {
        let mut u = utterance(60.0);
        let outputs = vec![
            LiveOutput::Partial {
                text: "and so my".into(),
                revision: 1,
            },
            LiveOutput::Commit(vec![
                Segment::new(0.0, 1.0, " And so"),
                Segment::new(1.0, 2.0, "  "),
                Segment::new(2.0, 3.0, " my fellow Americans,"),
            ]),
        ];
        let chunks = u.chunks(outputs);
        assert_eq!(chunks, ["And so", " my fellow Americans,"]);
        let more = u.chunks(vec![LiveOutput::Commit(vec![Segment::new(
            3.0, 4.0, "ask not",
        )])]);
        assert_eq!(more, [" ask not"]);
        assert_eq!(u.result().0, "And so my fellow Americans, ask not");
    }
}
