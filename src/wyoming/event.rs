//! The Wyoming events Earshot understands, as types: what a client asks ([`Request`]) and
//! what the server answers (`info`, `transcript*`, `error`, `pong`), with the field names of
//! the reference `wyoming` package (`asr.py`, `audio.py`, `info.py`, `error.py`).
//!
//! Pure: no sockets, no clock, no Whisper. This module must not decide what to do with a
//! request (the connection does) and must not put internal details in an error's text.

use serde_json::{json, Value};

use super::frame::Event;

/// Sample rate, width and channels of raw PCM, as `audio-start` announces them and every
/// `audio-chunk` repeats them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    /// Hertz.
    pub rate: u32,
    /// Bytes per sample.
    pub width: u16,
    /// Interleaved channels.
    pub channels: u16,
}

/// A client event, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `describe`: send `info`.
    Describe,
    /// `transcribe`: the model and language for the next audio.
    Transcribe {
        /// Model name, when the client picks one.
        name: Option<String>,
        /// Spoken language, when the client knows it.
        language: Option<String>,
    },
    /// `audio-start`.
    AudioStart(AudioFormat),
    /// `audio-chunk` with its PCM bytes.
    AudioChunk(AudioFormat, bytes::Bytes),
    /// `audio-stop`.
    AudioStop,
    /// `ping`: answer `pong` with the same text.
    Ping(Option<String>),
    /// `select-program`: the spec makes it a no-op for a server with one program.
    SelectProgram,
    /// An event Earshot does not handle.
    Unknown(String),
}

/// What is wrong with a client's event or audio, as a Wyoming `error` event: a fixed text
/// and a code a program can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Machine-readable code, e.g. `unannounced-format`.
    pub code: &'static str,
    /// For people; never internal detail.
    pub text: String,
    /// Whether the connection closes after the error.
    pub fatal: bool,
}

impl Refusal {
    /// An error after which the connection goes on.
    pub fn new(code: &'static str, text: impl Into<String>) -> Refusal {
        Refusal {
            code,
            text: text.into(),
            fatal: false,
        }
    }

    /// An error after which the connection closes.
    pub fn fatal(code: &'static str, text: impl Into<String>) -> Refusal {
        Refusal {
            fatal: true,
            ..Refusal::new(code, text)
        }
    }

    /// The `error` event.
    pub fn event(&self) -> Event {
        Event::new("error", json!({"text": self.text, "code": self.code}))
    }
}

/// Reads a client event. Fields of the wrong type are a (non-fatal) `bad-event`.
pub fn parse(event: Event) -> Result<Request, Refusal> {
    let data = &event.data;
    let text = |key: &str| -> Result<Option<String>, Refusal> {
        match data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&event.kind, key)),
        }
    };
    Ok(match event.kind.as_str() {
        "describe" => Request::Describe,
        "transcribe" => Request::Transcribe {
            name: text("name")?,
            language: text("language")?,
        },
        "audio-start" => Request::AudioStart(format(&event)?),
        "audio-chunk" => Request::AudioChunk(format(&event)?, event.payload.clone()),
        "audio-stop" => Request::AudioStop,
        "ping" => Request::Ping(text("text")?),
        "select-program" => Request::SelectProgram,
        other => Request::Unknown(other.to_string()),
    })
}

fn bad(kind: &str, key: &str) -> Refusal {
    Refusal::new(
        "bad-event",
        format!("{kind}: field {key} has the wrong type"),
    )
}

/// The `rate`, `width` and `channels` of an audio event; all required whole numbers.
fn format(event: &Event) -> Result<AudioFormat, Refusal> {
    let number = |key: &str| {
        event
            .data
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(&event.kind, key))
    };
    let too_big = |key| bad(&event.kind, key);
    Ok(AudioFormat {
        rate: u32::try_from(number("rate")?).map_err(|_| too_big("rate"))?,
        width: u16::try_from(number("width")?).map_err(|_| too_big("width"))?,
        channels: u16::try_from(number("channels")?).map_err(|_| too_big("channels"))?,
    })
}

/// One model `info` lists.
#[derive(Debug, Clone)]
pub struct ModelInfo<'a> {
    /// The model's short name, e.g. `tiny.en`: what `transcribe`'s `name` selects.
    pub name: &'a str,
    /// The model's languages as Whisper codes.
    pub languages: Vec<&'a str>,
}

/// What `info` says about the server.
#[derive(Debug, Clone)]
pub struct Program<'a> {
    /// The served models, the default first.
    pub models: Vec<ModelInfo<'a>>,
    /// Earshot's version.
    pub version: &'a str,
    /// Where Earshot comes from (the package's homepage; may be empty).
    pub homepage: &'a str,
}

/// The `info` event: one ASR program, `earshot`, with the served models, streaming.
pub fn info(program: &Program) -> Event {
    let whisper = json!({"name": "OpenAI Whisper (whisper.cpp)", "url": "https://github.com/ggml-org/whisper.cpp"});
    let models: Vec<Value> = program
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "attribution": whisper,
                "installed": true,
                "description": format!("Whisper {}", m.name),
                "version": null,
                "languages": m.languages,
            })
        })
        .collect();
    let asr = json!({
        "name": "earshot",
        "attribution": {"name": "Earshot", "url": program.homepage},
        "installed": true,
        "description": "Earshot: self-hosted Whisper speech transcription",
        "version": program.version,
        "models": models,
        "supports_transcript_streaming": true,
        // The client (Home Assistant's pipeline) decides where a command ends.
        "requires_external_vad": true,
    });
    Event::new(
        "info",
        json!({"asr": [asr], "tts": [], "handle": [], "intent": [], "wake": [], "mic": [], "snd": []}),
    )
}

/// `transcript-start`.
pub fn transcript_start(language: Option<&str>) -> Event {
    match language {
        Some(language) => Event::new("transcript-start", json!({ "language": language })),
        None => Event::new("transcript-start", json!({})),
    }
}

/// `transcript-chunk`: text appended to what earlier chunks said.
pub fn transcript_chunk(text: &str) -> Event {
    Event::new("transcript-chunk", json!({ "text": text }))
}

/// `transcript`: the whole text.
pub fn transcript(text: &str, language: &str) -> Event {
    Event::new("transcript", json!({"text": text, "language": language}))
}

/// `transcript-stop`.
pub fn transcript_stop() -> Event {
    Event::new("transcript-stop", json!({}))
}

/// `pong`.
pub fn pong(text: Option<String>) -> Event {
    Event::new("pong", json!({ "text": text }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: Value) -> Event {
        Event::new(kind, data)
    }

    #[test]
    fn audio_events_carry_their_format() {
        let mut chunk = event(
            "audio-chunk",
            json!({"rate": 16000, "width": 2, "channels": 1, "timestamp": null}),
        );
        chunk.payload = bytes::Bytes::from_static(&[0, 0]);
        let format = AudioFormat {
            rate: 16000,
            width: 2,
            channels: 1,
        };
        assert_eq!(
            parse(chunk).unwrap(),
            Request::AudioChunk(format, bytes::Bytes::from_static(&[0, 0]))
        );
        let start = event(
            "audio-start",
            json!({"rate": 16000, "width": 2, "channels": 1}),
        );
        assert_eq!(parse(start).unwrap(), Request::AudioStart(format));
        for bad in [
            json!({"rate": 16000, "width": 2}),
            json!({"rate": "16000", "width": 2, "channels": 1}),
            json!({"rate": -1, "width": 2, "channels": 1}),
            json!({"rate": 16000, "width": 70000, "channels": 1}),
        ] {
            let refusal = parse(event("audio-start", bad.clone())).unwrap_err();
            assert_eq!(refusal.code, "bad-event", "{bad}");
        }
    }

    #[test]
    fn requests_are_read_with_optional_fields() {
        assert_eq!(
            parse(event("transcribe", json!({"language": "en"}))).unwrap(),
            Request::Transcribe {
                name: None,
                language: Some("en".into())
            }
        );
        assert_eq!(
            parse(event("transcribe", json!({}))).unwrap(),
            Request::Transcribe {
                name: None,
                language: None
            }
        );
        assert!(parse(event("transcribe", json!({"language": 7}))).is_err());
        assert_eq!(
            parse(event("describe", json!({}))).unwrap(),
            Request::Describe
        );
        assert_eq!(
            parse(event("ping", json!({"text": "hi"}))).unwrap(),
            Request::Ping(Some("hi".into()))
        );
        assert_eq!(
            parse(event("synthesize", json!({"text": "hi"}))).unwrap(),
            Request::Unknown("synthesize".into())
        );
    }

    #[test]
    fn info_has_the_reference_shape() {
        let info = info(&Program {
            models: vec![
                ModelInfo {
                    name: "tiny.en",
                    languages: vec!["en"],
                },
                ModelInfo {
                    name: "base",
                    languages: vec!["en", "zh"],
                },
            ],
            version: "0.1.0",
            homepage: "",
        });
        assert_eq!(info.kind, "info");
        let asr = &info.data["asr"][0];
        assert_eq!(asr["name"], "earshot");
        assert_eq!(asr["supports_transcript_streaming"], true);
        assert_eq!(asr["installed"], true);
        assert_eq!(asr["models"][0]["name"], "tiny.en");
        assert_eq!(asr["models"][0]["languages"], json!(["en"]));
        assert_eq!(asr["models"][1]["name"], "base");
        assert_eq!(asr["models"][1]["languages"], json!(["en", "zh"]));
        for key in ["name", "url"] {
            assert!(asr["attribution"][key].is_string());
            assert!(asr["models"][0]["attribution"][key].is_string());
        }
    }

    #[test]
    fn errors_have_text_and_code() {
        let e = Refusal::fatal("unannounced-format", "no").event();
        assert_eq!(e.kind, "error");
        assert_eq!(e.data["code"], "unannounced-format");
        assert_eq!(e.data["text"], "no");
        assert!(Refusal::fatal("x", "y").fatal && !Refusal::new("x", "y").fatal);
    }
}
