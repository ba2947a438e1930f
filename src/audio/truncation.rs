//! Truncated inputs: audio that ends well before the duration its container declares (a cut
//! download, an interrupted recording, a damaged header).
//!
//! The decoder keeps what it could read, so such a file still yields a transcript; this is the
//! one place that decides whether that transcript is partial, so the command line, the HTTP
//! API and the WebSocket protocol all say the same thing. Pure: it must NOT decode or read files.

use serde::{Deserialize, Serialize};

/// Audio that ends this much earlier than its header declares counts as truncated (decoders
/// and containers disagree by a few frames on complete files).
pub const TRUNCATION_SLACK_SECS: f64 = 1.0;

/// A transcript covers only the start of its file: how much was decoded versus declared.
/// Sent to clients as `{"decoded_seconds": 7.6, "declared_seconds": 11.0}` and persisted with
/// the result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Truncation {
    /// Seconds of audio actually decoded, to the millisecond: what the transcript covers.
    pub decoded_seconds: f64,
    /// Seconds the container's header declares, to the millisecond.
    pub declared_seconds: f64,
}

impl Truncation {
    /// The truncation, if `decoded_secs` falls more than [`TRUNCATION_SLACK_SECS`] short of a
    /// declared duration. No declared duration (raw streams, some containers) is never truncated.
    pub fn detect(decoded_secs: f64, declared_secs: Option<f64>) -> Option<Truncation> {
        let declared = declared_secs.filter(|d| d.is_finite())?;
        (decoded_secs + TRUNCATION_SLACK_SECS < declared).then(|| Truncation {
            decoded_seconds: round_ms(decoded_secs),
            declared_seconds: round_ms(declared),
        })
    }
}

/// The one-line reason shown to people (the command line's error message).
impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the audio ends after {:.1} s although the file declares {:.1} s (truncated or \
             damaged); only that part was transcribed",
            self.decoded_seconds, self.declared_seconds
        )
    }
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_well_short_of_its_header_is_truncated() {
        let cut = Truncation::detect(7.6321, Some(11.0)).expect("truncated");
        assert_eq!(
            cut,
            Truncation {
                decoded_seconds: 7.632,
                declared_seconds: 11.0
            }
        );
        assert_eq!(
            cut.to_string(),
            "the audio ends after 7.6 s although the file declares 11.0 s (truncated or \
             damaged); only that part was transcribed"
        );
    }

    #[test]
    fn small_disagreements_and_missing_headers_are_not() {
        assert_eq!(Truncation::detect(11.0, Some(11.0)), None);
        assert_eq!(Truncation::detect(10.2, Some(11.088)), None);
        assert_eq!(Truncation::detect(12.0, Some(11.0)), None);
        assert_eq!(Truncation::detect(0.5, None), None);
        assert_eq!(Truncation::detect(0.5, Some(f64::NAN)), None);
        assert_eq!(Truncation::detect(0.5, Some(f64::INFINITY)), None);
    }

    #[test]
    fn the_wire_shape_names_seconds() {
        let cut = Truncation::detect(5.0, Some(125_000.0)).unwrap();
        let json = serde_json::to_value(cut).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"decoded_seconds": 5.0, "declared_seconds": 125000.0})
        );
    }
}
