//! What a task was asked to do and how it can end: [`Task`], [`TaskOptions`], [`OutputFormat`],
//! [`ZhScript`], [`FailureCode`].
//!
//! Must not render, parse wire messages or know HTTP statuses: renderers and protocols map
//! these values to their own shapes.

use serde::{Deserialize, Serialize};

/// An output format, named as in OpenAI's `response_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// The text alone.
    Txt,
    /// SubRip subtitles.
    Srt,
    /// WebVTT subtitles.
    Vtt,
    /// `{"text": ...}`.
    Json,
    /// OpenAI's verbose JSON: language, duration, segments and (with token timing) words.
    #[value(name = "verbose_json", alias = "verbose-json")]
    VerboseJson,
}

impl OutputFormat {
    /// File extension for a transcript written in this format.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Txt => "txt",
            OutputFormat::Srt => "srt",
            OutputFormat::Vtt => "vtt",
            OutputFormat::Json | OutputFormat::VerboseJson => "json",
        }
    }

    /// MIME type for serving a transcript in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Txt => "text/plain; charset=utf-8",
            OutputFormat::Srt => "application/x-subrip; charset=utf-8",
            OutputFormat::Vtt => "text/vtt; charset=utf-8",
            OutputFormat::Json | OutputFormat::VerboseJson => "application/json",
        }
    }
}

/// What was asked of Whisper, reported as `task` in verbose JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Speech to text in the spoken language.
    #[default]
    Transcribe,
    /// Speech to English text.
    Translate,
}

/// Why a task ended without a result. Each interface maps it to its own error shape (a
/// protocol error code, an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The audio could not be decoded.
    UnsupportedAudio,
    /// The server shut down before the task finished; it may be tried again.
    Stopped,
    /// A fault of the server's; details are in its log only.
    Internal,
}

/// Transcription options a client may attach to an upload or a stream. Stored with an upload
/// so a resumed upload is transcribed as first asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Spoken language code (`en`, `zh`, …); `None` lets the model detect it (`"auto"`).
    pub language: Option<String>,
    /// Translate to English instead of transcribing.
    pub translate: bool,
    /// Output format the client wants the final text rendered in; `None` = plain
    /// `transcription_complete` only.
    pub format: Option<OutputFormat>,
    /// Script for Mandarin text, asked for as `language` `zh-Hans` / `zh-Hant`; `None` = the
    /// server's `--zh-script`. Absent from uploads stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zh_script: Option<ZhScript>,
    /// The model to transcribe with, as the client named it; `None` = the server's default.
    /// Absent from uploads stored (and cluster jobs sent) before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The script Mandarin output is written in. Whisper mixes Simplified and Traditional
/// characters, even within one transcript; this says which one the reader gets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ZhScript {
    /// Simplified characters (mainland China, Singapore): what most Mandarin users read.
    #[default]
    Simplified,
    /// Traditional characters (Taiwan, Hong Kong).
    Traditional,
    /// Whatever Whisper wrote, unconverted.
    Keep,
}

/// Splits a requested language into the Whisper code and the script it names: `zh-Hans` is
/// Mandarin in Simplified characters, `zh-Hant` in Traditional (BCP 47 script subtags, any
/// case); any other tag is returned as it is, lower-cased and trimmed, with no script.
pub fn split_language_tag(tag: &str) -> (String, Option<ZhScript>) {
    let tag = tag.trim().to_ascii_lowercase();
    match tag.as_str() {
        "zh-hans" => ("zh".into(), Some(ZhScript::Simplified)),
        "zh-hant" => ("zh".into(), Some(ZhScript::Traditional)),
        _ => (tag, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_subtags_name_mandarin_and_its_script() {
        let simplified = ("zh".to_string(), Some(ZhScript::Simplified));
        assert_eq!(split_language_tag("zh-Hans"), simplified);
        assert_eq!(split_language_tag(" ZH-HANS "), simplified);
        assert_eq!(
            split_language_tag("zh-Hant"),
            ("zh".into(), Some(ZhScript::Traditional))
        );
        assert_eq!(split_language_tag("ZH"), ("zh".into(), None));
        assert_eq!(split_language_tag("en-Hans"), ("en-hans".into(), None));
    }

    #[test]
    fn old_stored_options_read_without_a_script() {
        let old: TaskOptions =
            serde_json::from_str(r#"{"language": "zh", "translate": false, "format": null}"#)
                .unwrap();
        assert_eq!(old.zh_script, None);
        assert_eq!(old.model, None);
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("zh_script").is_none(), "{json}");
        assert!(json.get("model").is_none(), "{json}");
    }
}
