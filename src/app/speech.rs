//! A live policy with a speech detector in front: [`SpeechPolicy`] runs Silero
//! (`inference::SpeechProbe`) on a stream's audio as it arrives and tells the stream's
//! `LivePolicy` what it heard, so that applause, music or traffic after a sentence reads as a
//! pause, and a buffer of them asks for no hypothesis. The WebSocket streams, Realtime sessions
//! and Wyoming utterances each hold one; everything else they ask of the policy goes straight
//! to it (`Deref`).
//!
//! The detector runs inline: about 0.1 ms per 32 ms chunk here (docs/BENCHMARKS.md), less
//! than parsing a socket frame, so it needs no thread of its own.
//!
//! This module must not decide what a pause is (that is `live::policy`), and must not stop a
//! stream when the detector cannot run: without it the policy finds pauses by energy alone.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use crate::inference::SpeechProbe;
use crate::live::LivePolicy;

/// One stream's live policy, fed through its speech detector.
#[derive(Debug)]
pub struct SpeechPolicy {
    /// The commit policy.
    policy: LivePolicy,
    /// Silero with the stream's state; `None` when the server has no Silero model, or it
    /// could not be loaded or failed on the stream (the policy then goes by energy alone).
    probe: Option<SpeechProbe>,
}

impl SpeechPolicy {
    /// `policy` behind Silero from `model` (the server's VAD model), when there is one, it
    /// loads (a few milliseconds) and the policy can use it ([`LivePolicy::wants_detector`]).
    pub fn new(policy: LivePolicy, model: Option<&Path>) -> Self {
        let model = model.filter(|_| policy.wants_detector());
        let probe = model.and_then(|path| match SpeechProbe::new(path) {
            Ok(probe) => Some(probe),
            Err(err) => {
                tracing::warn!(%err, "live pauses by energy alone");
                None
            }
        });
        Self { policy, probe }
    }

    /// Pushes `audio` (16 kHz mono) into the policy and tells it what the detector heard.
    pub fn push(&mut self, audio: &[f32]) {
        self.policy.push(audio);
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        match probe.push(audio) {
            Ok(probabilities) => self
                .policy
                .observe_speech(&probabilities, SpeechProbe::CHUNK),
            Err(err) => {
                tracing::warn!(%err, "speech detection failed; live pauses by energy from here");
                self.probe = None;
                self.policy.forget_speech();
            }
        }
    }

    /// Starts over with `policy` (a new turn); the detector forgets the old audio too.
    pub fn restart(&mut self, policy: LivePolicy) {
        self.policy = policy;
        if let Some(probe) = self.probe.as_mut() {
            probe.reset();
        }
    }
}

impl Deref for SpeechPolicy {
    type Target = LivePolicy;

    fn deref(&self) -> &LivePolicy {
        &self.policy
    }
}

impl DerefMut for SpeechPolicy {
    fn deref_mut(&mut self) -> &mut LivePolicy {
        &mut self.policy
    }
}
