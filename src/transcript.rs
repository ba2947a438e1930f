//! The vocabulary of results: segments, tokens and whole transcripts.
//!
//! Plain data shared by the inference pool, the output formats and (later) the wire protocol.
//! Nothing here knows about Whisper, sockets or files.

use serde::{Deserialize, Serialize};

/// One piece of recognised text with its place on the audio's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Seconds from the start of the whole input (not of the window it was decoded in),
    /// so segments from successive windows line up on one timeline.
    pub start: f64,
    /// Seconds from the start of the whole input; `end >= start`.
    pub end: f64,
    /// The text, trimmed of the leading space Whisper puts before every segment.
    pub text: String,
    /// Whisper's probability that this window held no speech; kept so callers can
    /// apply a stricter filter than the pool's own.
    pub no_speech_prob: f32,
    /// Per-token timing, present only when the job asked for it (it costs decode time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<Token>>,
}

impl Segment {
    /// A segment of plain text (no token timing, no-speech probability 0).
    pub fn new(start: f64, end: f64, text: impl Into<String>) -> Self {
        Segment {
            start,
            end,
            text: text.into(),
            no_speech_prob: 0.0,
            tokens: None,
        }
    }
}

/// A single decoded token with its timing, for word-level timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// The token's text as Whisper spells it (often with a leading space for a new word).
    pub text: String,
    /// Seconds from the start of the whole input.
    pub start: f64,
    /// Seconds from the start of the whole input.
    pub end: f64,
    /// The decoder's probability for this token, for confidence display.
    pub probability: f32,
}

/// A finished transcription of one input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// Language code Whisper used (given by the caller or detected), e.g. `"en"`.
    pub language: String,
    /// Whisper's probability for the language it detected; `None` when the caller named the
    /// language (and in transcripts stored before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_probability: Option<f32>,
    /// Length of the input audio in seconds.
    pub duration: f64,
    /// Segments in time order.
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// The whole text: segments joined by single spaces.
    pub fn text(&self) -> String {
        join_text(&self.segments)
    }
}

/// Joins segment texts with single spaces, skipping empty ones.
pub fn join_text(segments: &[Segment]) -> String {
    let mut joiner = TextJoiner::default();
    segments.iter().filter_map(|s| joiner.piece(s)).collect()
}

/// [`join_text`] one segment at a time, for text sent as segments arrive: the pieces of a
/// task's segments, concatenated, are exactly the text of its transcript.
#[derive(Debug, Default)]
pub struct TextJoiner {
    /// Whether a piece was given out, so the next one starts with the joining space.
    started: bool,
}

impl TextJoiner {
    /// The segment's trimmed text, after a space unless it is the first piece; `None` for a
    /// segment with no text (it adds nothing to the joined text).
    pub fn piece(&mut self, segment: &Segment) -> Option<String> {
        let text = segment.text.trim();
        if text.is_empty() {
            return None;
        }
        let piece = if self.started {
            format!(" {text}")
        } else {
            text.to_string()
        };
        self.started = true;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_add_up_to_the_joined_text() {
        let segments: Vec<Segment> = ["  ", " And so", "", " my fellow  ", "Americans."]
            .iter()
            .map(|t| Segment::new(0.0, 1.0, *t))
            .collect();
        let mut joiner = TextJoiner::default();
        let pieces: Vec<String> = segments.iter().filter_map(|s| joiner.piece(s)).collect();
        assert_eq!(pieces, ["And so", " my fellow", " Americans."]);
        assert_eq!(pieces.concat(), join_text(&segments));
        assert_eq!(join_text(&segments), "And so my fellow Americans.");
        assert_eq!(join_text(&[]), "");
    }
}
