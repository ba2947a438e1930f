//! A live stream's language, pinned once Whisper is sure of it.
//!
//! A stream with `language` auto on a multilingual model would have Whisper detect the language
//! before every hypothesis: an extra pass over the audio each time, and a stream whose language
//! may flip between hypotheses on a short or unclear stretch. [`LanguagePin`] takes each
//! hypothesis' detection and pins the language once a hypothesis has read at least
//! [`MIN_SPEECH_SECS`] of audio and Whisper gave its language at least [`MIN_PROBABILITY`]; the
//! stream then asks for that language for the rest of its life and reports it (with the
//! probability it was pinned at) as the stream's language.
//!
//! This module must not read the clock, run Whisper or know the stream: the caller reports what
//! each hypothesis detected and asks which language to use (everything here is testable with
//! plain values).

/// Audio a hypothesis must have read before its detection may pin the language: less is too
/// little for a sure detection (a name, a word of another language).
pub const MIN_SPEECH_SECS: f64 = 2.0;
/// Whisper's probability for the detected language needed to pin it.
pub const MIN_PROBABILITY: f32 = 0.7;

/// The language of one live stream: detected per hypothesis until pinned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LanguagePin {
    /// The pinned language and the probability Whisper gave it then; `None` while the stream
    /// still detects.
    pinned: Option<(String, f32)>,
}

impl LanguagePin {
    /// Takes a hypothesis' detection: `language` with `probability` (`None`: the language was
    /// asked for, not detected) over `audio_secs` of audio. Returns whether it pinned the
    /// language now; once pinned, nothing changes it.
    pub fn observe(&mut self, language: &str, probability: Option<f32>, audio_secs: f64) -> bool {
        let Some(probability) = probability else {
            return false;
        };
        let sure = audio_secs >= MIN_SPEECH_SECS && probability >= MIN_PROBABILITY;
        if self.pinned.is_some() || !sure || language.is_empty() {
            return false;
        }
        self.pinned = Some((language.to_owned(), probability));
        true
    }

    /// The pinned language and the probability it was pinned at.
    pub fn pinned(&self) -> Option<(&str, f32)> {
        self.pinned.as_ref().map(|(l, p)| (l.as_str(), *p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sure_detection_over_enough_speech_pins_the_language() {
        let mut pin = LanguagePin::default();
        assert!(!pin.observe("zh", Some(0.95), 1.2), "too little speech");
        assert!(!pin.observe("zh", Some(0.4), 3.0), "not sure enough");
        assert_eq!(pin.pinned(), None);
        assert!(pin.observe("zh", Some(0.9), 2.5));
        assert_eq!(pin.pinned(), Some(("zh", 0.9)));
    }

    #[test]
    fn a_pinned_language_stays() {
        let mut pin = LanguagePin::default();
        assert!(pin.observe("de", Some(0.8), 2.0));
        assert!(!pin.observe("en", Some(0.99), 10.0));
        assert_eq!(pin.pinned(), Some(("de", 0.8)));
    }

    #[test]
    fn a_language_asked_for_or_unnamed_never_pins() {
        let mut pin = LanguagePin::default();
        assert!(!pin.observe("en", None, 5.0), "asked for, not detected");
        assert!(!pin.observe("", Some(0.9), 5.0));
        assert!(
            !pin.observe("fr", Some(f32::NAN), 5.0),
            "no probability to trust"
        );
        assert_eq!(pin.pinned(), None);
    }
}
