//! The events of OpenAI's Realtime transcription session, as JSON: client events parsed and
//! checked ([`parse`]), the session's settings and how `session.update` changes them
//! ([`Settings`]), and server events written with OpenAI's field names ([`ServerEvent`]).
//!
//! Everything here is pure: no sockets, no audio, no clock. A malformed event becomes an
//! [`EventError`] naming the offending field and the client's `event_id`. This module must not
//! decide when a turn starts or ends (the session does) and must not accept audio in any
//! format but 24 kHz mono PCM16, the only one it announces.

use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The only input rate OpenAI's `audio/pcm` format has.
pub const INPUT_RATE: u32 = 24_000;
/// Bytes per second of 24 kHz mono PCM16.
pub const BYTES_PER_SEC: usize = INPUT_RATE as usize * 2;

/// A client event the transcription session understands.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEvent {
    /// The client's own id for the event, echoed in errors about it.
    pub event_id: Option<String>,
    /// What the client asks.
    pub kind: ClientKind,
}

/// The kinds of client events.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientKind {
    /// `session.update`: the `session` object, checked for shape but applied by [`Settings::apply`].
    SessionUpdate(Value),
    /// `input_audio_buffer.append`: PCM16 LE mono 24 kHz bytes, decoded from base64.
    Append(Vec<u8>),
    /// `input_audio_buffer.commit`.
    Commit,
    /// `input_audio_buffer.clear`.
    Clear,
}

/// A client event that cannot be served, as OpenAI reports it in an `error` event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EventError {
    /// Machine-readable reason (`invalid_json`, `invalid_value`, …).
    pub code: &'static str,
    /// What is wrong and how to fix it; never internal detail.
    pub message: String,
    /// The offending field, dotted (`session.audio.input.format.rate`).
    pub param: Option<String>,
    /// The `event_id` of the client event at fault, when it had one.
    pub event_id: Option<String>,
}

impl EventError {
    /// An error with a code and a message, about no field in particular.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        EventError {
            code,
            message: message.into(),
            param: None,
            event_id: None,
        }
    }

    fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// The same error, attributed to the client event `event_id`.
    pub fn for_event(mut self, event_id: Option<String>) -> Self {
        self.event_id = event_id;
        self
    }

    fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new("invalid_value", message).param(param)
    }

    fn wrong_type(param: &str, expected: &str) -> Self {
        Self::new("invalid_type", format!("`{param}` must be {expected}")).param(param)
    }
}

/// Parses one text frame. `max_audio_bytes` caps a single append (decoded), checked before
/// decoding so an oversized one costs nothing.
pub fn parse(text: &str, max_audio_bytes: usize) -> Result<ClientEvent, EventError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        EventError::new("invalid_json", format!("the event is not valid JSON: {e}"))
    })?;
    let Value::Object(mut event) = value else {
        return Err(EventError::new(
            "invalid_type",
            "an event must be a JSON object",
        ));
    };
    let event_id = match event.remove("event_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => return Err(EventError::wrong_type("event_id", "a string")),
    };
    let kind = kind(&mut event, max_audio_bytes).map_err(|e| e.for_event(event_id.clone()))?;
    Ok(ClientEvent { event_id, kind })
}

fn kind(event: &mut Map<String, Value>, max_audio_bytes: usize) -> Result<ClientKind, EventError> {
    let ty = match event.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(EventError::wrong_type("type", "a string")),
        None => {
            return Err(
                EventError::new("missing_required_parameter", "missing `type`").param("type"),
            )
        }
    };
    match ty {
        "session.update" => match event.remove("session") {
            Some(session @ Value::Object(_)) => Ok(ClientKind::SessionUpdate(session)),
            Some(_) => Err(EventError::wrong_type("session", "an object")),
            None => Err(
                EventError::new("missing_required_parameter", "missing `session`").param("session"),
            ),
        },
        "input_audio_buffer.append" => match event.get("audio") {
            Some(Value::String(audio)) => {
                decode_audio(audio, max_audio_bytes).map(ClientKind::Append)
            }
            Some(_) => Err(EventError::wrong_type("audio", "a base64 string")),
            None => {
                Err(EventError::new("missing_required_parameter", "missing `audio`").param("audio"))
            }
        },
        "input_audio_buffer.commit" => Ok(ClientKind::Commit),
        "input_audio_buffer.clear" => Ok(ClientKind::Clear),
        other => Err(EventError::invalid(
            "type",
            format!(
                "unsupported event type {other:?} in a transcription session; supported: \
                 session.update, input_audio_buffer.append, input_audio_buffer.commit, \
                 input_audio_buffer.clear"
            ),
        )),
    }
}

fn decode_audio(audio: &str, max_bytes: usize) -> Result<Vec<u8>, EventError> {
    if audio.len() / 4 * 3 > max_bytes {
        return Err(EventError::new(
            "input_audio_buffer_append_too_large",
            format!("one append may carry at most {max_bytes} bytes of audio; send smaller pieces"),
        )
        .param("audio"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(audio)
        .map_err(|_| EventError::invalid("audio", "`audio` is not valid base64"))
}

/// How the end of a turn is found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerVad {
    /// Echoed only: the policy's own sound detector decides what is speech.
    pub threshold: f64,
    /// Echoed only: the live policy keeps its own lead-in before speech.
    pub prefix_padding_ms: u64,
    /// Silence that ends a turn.
    pub silence_duration_ms: u64,
}

impl Default for ServerVad {
    fn default() -> Self {
        // OpenAI's defaults.
        ServerVad {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        }
    }
}

/// The transcription session's effective settings, as `session.created`/`session.updated`
/// show them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The session's id (`sess_…`), fixed for its life.
    pub id: String,
    /// The transcription model as the client named it (shown back as named).
    pub model: String,
    /// The served model that name means (OpenAI's names and none mean the default).
    pub served: String,
    /// Language code asked for; `None` lets Whisper detect it.
    pub language: Option<String>,
    /// Prompt that guides Whisper's spelling and style.
    pub prompt: String,
    /// Server VAD, or `None` when only `input_audio_buffer.commit` ends a turn.
    pub turn_detection: Option<ServerVad>,
}

/// The models a session may choose from: how `session.update` checks a model name and which
/// languages the model takes.
pub trait Models {
    /// The served model `requested` means (`None`, an empty name or one of OpenAI's names: the
    /// default) and whether it is multilingual; an unknown name is an error that lists the
    /// served names.
    fn choose(&self, requested: Option<&str>) -> Result<(String, bool), String>;
}

/// Silence bounds a client may set for server VAD, in milliseconds.
const SILENCE_MS: std::ops::RangeInclusive<u64> = 100..=10_000;

impl Settings {
    /// The settings a new session starts with (OpenAI's: server VAD on), for the model the
    /// client named (`model`) and the served one it means (`served`).
    pub fn new(id: String, model: String, served: String) -> Self {
        Settings {
            id,
            model,
            served,
            language: None,
            prompt: String::new(),
            turn_detection: Some(ServerVad::default()),
        }
    }

    /// Applies a `session.update`'s `session`: only the fields present change, and nothing
    /// changes if any field is wrong. `models` says which model names are served and which
    /// of them take other languages than English.
    pub fn apply(&mut self, session: &Value, models: &dyn Models) -> Result<(), EventError> {
        let mut next = self.clone();
        match session.get("type") {
            Some(Value::String(t)) if t == "transcription" => {}
            Some(Value::String(_)) => {
                return Err(EventError::invalid(
                    "session.type",
                    "this endpoint serves transcription sessions only; set `session.type` to \"transcription\"",
                ))
            }
            Some(_) => return Err(EventError::wrong_type("session.type", "a string")),
            None => {
                return Err(EventError::new("missing_required_parameter", "missing `session.type`")
                    .param("session.type"))
            }
        }
        let input = object_at(session, &["audio", "input"])?;
        if let Some(input) = input {
            next.apply_input(input, models)?;
        }
        *self = next;
        Ok(())
    }

    fn apply_input(
        &mut self,
        input: &Map<String, Value>,
        models: &dyn Models,
    ) -> Result<(), EventError> {
        if let Some(format) = input.get("format") {
            check_format(format)?;
        }
        match input.get("transcription") {
            None | Some(Value::Null) => {}
            Some(Value::Object(t)) => self.apply_transcription(t, models)?,
            Some(_) => {
                return Err(EventError::wrong_type(
                    "session.audio.input.transcription",
                    "an object",
                ))
            }
        }
        match input.get("turn_detection") {
            None => {}
            Some(Value::Null) => self.turn_detection = None,
            Some(Value::Object(t)) => self.turn_detection = Some(turn_detection(t)?),
            Some(_) => {
                return Err(EventError::wrong_type(
                    "session.audio.input.turn_detection",
                    "an object or null",
                ))
            }
        }
        Ok(())
    }

    fn apply_transcription(
        &mut self,
        t: &Map<String, Value>,
        models: &dyn Models,
    ) -> Result<(), EventError> {
        const AT: &str = "session.audio.input.transcription";
        if let Some(model) = optional_str(t, "model", AT)? {
            let (served, _) = models
                .choose(Some(model))
                .map_err(|e| EventError::invalid("session.audio.input.transcription.model", e))?;
            self.model = model.to_string();
            self.served = served;
        }
        if t.contains_key("language") {
            let language = optional_str(t, "language", AT)?.map(str::to_ascii_lowercase);
            self.language = language.filter(|l| !l.is_empty() && l != "auto");
        }
        if let Some(l) = &self.language {
            let (_, multilingual) = models
                .choose(Some(&self.served))
                .map_err(|e| EventError::invalid("session.audio.input.transcription.model", e))?;
            let (code, _) = crate::domain::split_language_tag(l);
            crate::inference::engine::check_language(&code, multilingual).map_err(|e| {
                let e = format!("{e} (model {})", self.served);
                EventError::invalid("session.audio.input.transcription.language", e)
            })?;
        }
        if t.contains_key("prompt") {
            let prompt = optional_str(t, "prompt", AT)?.unwrap_or_default();
            if prompt.contains('\0') {
                return Err(EventError::invalid(
                    "session.audio.input.transcription.prompt",
                    "the prompt contains a NUL character",
                ));
            }
            self.prompt = prompt.to_string();
        }
        Ok(())
    }

    /// The settings in OpenAI's transcription-session shape.
    pub fn to_json(&self) -> Value {
        let turn_detection = self.turn_detection.map(|v| {
            json!({
                "type": "server_vad",
                "threshold": v.threshold,
                "prefix_padding_ms": v.prefix_padding_ms,
                "silence_duration_ms": v.silence_duration_ms,
            })
        });
        json!({
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.id,
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": INPUT_RATE},
                "transcription": {
                    "model": self.model,
                    "language": self.language,
                    "prompt": self.prompt,
                },
                "turn_detection": turn_detection,
                "noise_reduction": null,
            }},
            "include": null,
        })
    }
}

/// The object at `path` under `value`, if there; an error if something else is.
fn object_at<'a>(
    value: &'a Value,
    path: &[&str],
) -> Result<Option<&'a Map<String, Value>>, EventError> {
    let mut here = value;
    let mut param = "session".to_string();
    for key in path {
        param = format!("{param}.{key}");
        match here.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(v @ Value::Object(_)) => here = v,
            Some(_) => return Err(EventError::wrong_type(&param, "an object")),
        }
    }
    Ok(here.as_object())
}

fn optional_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, EventError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EventError::wrong_type(&format!("{at}.{key}"), "a string")),
    }
}

/// Accepts `audio/pcm` at 24 kHz only (the rate may be left out).
fn check_format(format: &Value) -> Result<(), EventError> {
    const AT: &str = "session.audio.input.format";
    let Value::Object(f) = format else {
        return Err(EventError::wrong_type(AT, "an object"));
    };
    match f.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "audio/pcm" => {}
        Some(_) => {
            return Err(EventError::invalid(
                "session.audio.input.format.type",
                "only \"audio/pcm\" (16-bit little-endian mono at 24000 Hz) is supported",
            ))
        }
    }
    match f.get("rate") {
        None | Some(Value::Null) => Ok(()),
        Some(r) if r.as_u64() == Some(u64::from(INPUT_RATE)) => Ok(()),
        Some(_) => Err(EventError::invalid(
            "session.audio.input.format.rate",
            "`audio/pcm` is 24000 Hz only",
        )),
    }
}

fn turn_detection(t: &Map<String, Value>) -> Result<ServerVad, EventError> {
    const AT: &str = "session.audio.input.turn_detection";
    match t.get("type") {
        Some(Value::String(ty)) if ty == "server_vad" => {}
        Some(Value::String(_)) => {
            return Err(EventError::invalid(
                &format!("{AT}.type"),
                "only \"server_vad\" turn detection is supported (or null to end turns with input_audio_buffer.commit)",
            ))
        }
        _ => return Err(EventError::wrong_type(&format!("{AT}.type"), "\"server_vad\"")),
    }
    let mut vad = ServerVad::default();
    if let Some(v) = number(t, "threshold", AT)? {
        if !(0.0..=1.0).contains(&v) {
            return Err(EventError::invalid(
                &format!("{AT}.threshold"),
                "threshold is between 0 and 1",
            ));
        }
        vad.threshold = v;
    }
    if let Some(v) = number(t, "prefix_padding_ms", AT)? {
        vad.prefix_padding_ms = whole_ms(v, &format!("{AT}.prefix_padding_ms"), 0..=10_000)?;
    }
    if let Some(v) = number(t, "silence_duration_ms", AT)? {
        vad.silence_duration_ms = whole_ms(v, &format!("{AT}.silence_duration_ms"), SILENCE_MS)?;
    }
    Ok(vad)
}

fn number(map: &Map<String, Value>, key: &str, at: &str) -> Result<Option<f64>, EventError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(EventError::wrong_type(&format!("{at}.{key}"), "a number")),
    }
}

fn whole_ms(v: f64, param: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, EventError> {
    if v.fract() != 0.0 || v < *range.start() as f64 || v > *range.end() as f64 {
        return Err(EventError::invalid(
            param,
            format!(
                "must be a whole number of milliseconds from {} to {}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(v as u64)
}

/// An event towards the client; [`Outgoing`] gives it its `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "session.created")]
    SessionCreated { session: Value },
    #[serde(rename = "session.updated")]
    SessionUpdated { session: Value },
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {
        audio_start_ms: u64,
        item_id: String,
    },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped { audio_end_ms: u64, item_id: String },
    #[serde(rename = "input_audio_buffer.committed")]
    Committed {
        item_id: String,
        previous_item_id: Option<String>,
    },
    #[serde(rename = "input_audio_buffer.cleared")]
    Cleared {},
    #[serde(rename = "conversation.item.input_audio_transcription.delta")]
    Delta {
        item_id: String,
        content_index: u32,
        delta: String,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    Completed {
        item_id: String,
        content_index: u32,
        transcript: String,
        usage: Usage,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    Failed {
        item_id: String,
        content_index: u32,
        error: ErrorBody,
    },
    #[serde(rename = "error")]
    Error { error: ErrorBody },
}

/// OpenAI's usage object for models billed by audio duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    /// Always `duration`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Seconds of audio in the turn.
    pub seconds: f64,
}

impl Usage {
    /// Usage of `seconds` of audio, rounded to milliseconds.
    pub fn seconds(seconds: f64) -> Self {
        Usage {
            kind: "duration",
            seconds: (seconds * 1000.0).round() / 1000.0,
        }
    }
}

/// The `error` object of `error` and `…transcription.failed` events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    /// `invalid_request_error` (the client's fault) or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Machine-readable reason.
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
    /// The offending field, if any.
    pub param: Option<String>,
    /// The client event at fault, if any.
    pub event_id: Option<String>,
}

impl From<EventError> for ErrorBody {
    fn from(e: EventError) -> Self {
        ErrorBody {
            kind: "invalid_request_error",
            code: e.code,
            message: e.message,
            param: e.param,
            event_id: e.event_id,
        }
    }
}

impl ErrorBody {
    /// A server-side failure: `code` and a message without internal detail.
    pub fn server(code: &'static str, message: impl Into<String>) -> Self {
        ErrorBody {
            kind: "server_error",
            code,
            message: message.into(),
            param: None,
            event_id: None,
        }
    }
}

/// A server event with its `event_id`, ready to serialise.
#[derive(Debug, Serialize)]
pub struct Outgoing<'a> {
    /// Unique within the session.
    pub event_id: String,
    /// The event's type and fields.
    #[serde(flatten)]
    pub event: &'a ServerEvent,
}

impl ServerEvent {
    /// The event as JSON text with `event_id`.
    pub fn to_json(&self, event_id: String) -> String {
        serde_json::to_string(&Outgoing {
            event_id,
            event: self,
        })
        .unwrap_or_default()
    }

    /// Whether losing this event under back-pressure is acceptable (a later one carries the
    /// same information: deltas are summed up by their item's `completed`).
    pub fn is_lossy(&self) -> bool {
        matches!(self, ServerEvent::Delta { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn err(text: &str) -> EventError {
        parse(text, MAX).unwrap_err()
    }

    #[test]
    fn the_four_client_events_parse() {
        let e = parse(
            r#"{"type":"input_audio_buffer.append","audio":"AAEC","event_id":"e1"}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(e.event_id.as_deref(), Some("e1"));
        assert_eq!(e.kind, ClientKind::Append(vec![0, 1, 2]));
        assert_eq!(
            parse(r#"{"type":"input_audio_buffer.commit"}"#, MAX)
                .unwrap()
                .kind,
            ClientKind::Commit
        );
        assert_eq!(
            parse(r#"{"type":"input_audio_buffer.clear"}"#, MAX)
                .unwrap()
                .kind,
            ClientKind::Clear
        );
        let u = parse(
            r#"{"type":"session.update","session":{"type":"transcription"}}"#,
            MAX,
        );
        assert!(matches!(u.unwrap().kind, ClientKind::SessionUpdate(_)));
    }

    #[test]
    fn bad_events_name_the_field_and_the_event() {
        assert_eq!(err("{nope").code, "invalid_json");
        assert_eq!(err("[1]").code, "invalid_type");
        let e = err(r#"{"type":"response.create","event_id":"x9"}"#);
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_value", Some("type"))
        );
        assert_eq!(e.event_id.as_deref(), Some("x9"));
        let e = err(r#"{"type":"input_audio_buffer.append","audio":"!!!","event_id":"a"}"#);
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_value", Some("audio"))
        );
        assert_eq!(e.event_id.as_deref(), Some("a"));
        assert_eq!(
            err(r#"{"type":"input_audio_buffer.append","audio":5}"#).code,
            "invalid_type"
        );
        assert_eq!(
            err(r#"{"type":"input_audio_buffer.append"}"#).code,
            "missing_required_parameter"
        );
        assert_eq!(err(r#"{"type":7}"#).code, "invalid_type");
        assert_eq!(
            err(r#"{"type":"input_audio_buffer.commit","event_id":3}"#).code,
            "invalid_type"
        );
        assert_eq!(
            err(r#"{"type":"session.update","session":[]}"#).code,
            "invalid_type"
        );
    }

    #[test]
    fn an_oversized_append_is_refused_before_decoding() {
        let audio = "A".repeat(4 * 1000);
        let text = format!(r#"{{"type":"input_audio_buffer.append","audio":"{audio}"}}"#);
        assert_eq!(
            parse(&text, 3000).unwrap().kind,
            ClientKind::Append(vec![0; 3000])
        );
        let e = parse(&text, 2999).unwrap_err();
        assert_eq!(e.code, "input_audio_buffer_append_too_large");
    }

    fn settings() -> Settings {
        Settings::new("sess_1".into(), "whisper-1".into(), "tiny.en".into())
    }

    /// A server with `tiny.en` (the default, English only) and `base` (multilingual).
    struct TwoModels;

    impl Models for TwoModels {
        fn choose(&self, requested: Option<&str>) -> Result<(String, bool), String> {
            match requested {
                None | Some("whisper-1" | "gpt-4o-transcribe" | "tiny.en") => {
                    Ok(("tiny.en".into(), false))
                }
                Some("base") => Ok(("base".into(), true)),
                Some(other) => Err(format!(
                    "unknown model {other:?}; this server serves: tiny.en, base"
                )),
            }
        }
    }

    fn update(s: &mut Settings, session: Value) -> Result<(), EventError> {
        s.apply(&session, &TwoModels)
    }

    #[test]
    fn an_update_changes_only_what_it_names() {
        let mut s = settings();
        update(
            &mut s,
            json!({"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "Names"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
            }}}),
        )
        .unwrap();
        assert_eq!(s.model, "gpt-4o-transcribe");
        assert_eq!(s.language.as_deref(), Some("en"));
        assert_eq!(s.prompt, "Names");
        assert_eq!(s.turn_detection.unwrap().silence_duration_ms, 800);
        update(
            &mut s,
            json!({"type": "transcription", "audio": {"input": {"turn_detection": null}}}),
        )
        .unwrap();
        assert_eq!(s.turn_detection, None);
        assert_eq!(s.prompt, "Names", "fields left out stay");
        let shown = s.to_json();
        assert_eq!(shown["audio"]["input"]["turn_detection"], Value::Null);
        assert_eq!(shown["audio"]["input"]["format"]["rate"], 24000);
        assert_eq!(
            shown["audio"]["input"]["transcription"]["model"],
            "gpt-4o-transcribe"
        );
    }

    #[test]
    fn a_bad_update_changes_nothing_and_says_why() {
        let mut s = settings();
        let before = s.clone();
        let cases = [
            (json!({"type": "realtime"}), "session.type"),
            (json!({}), "session.type"),
            (
                json!({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
                "session.audio.input.format.rate",
            ),
            (
                json!({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}),
                "session.audio.input.format.type",
            ),
            (
                json!({"type": "transcription", "audio": {"input": {"transcription": {"language": "de"}}}}),
                "session.audio.input.transcription.language",
            ),
            (
                json!({"type": "transcription", "audio": {"input": {"transcription": {"model": 4}}}}),
                "session.audio.input.transcription.model",
            ),
            (
                json!({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}),
                "session.audio.input.turn_detection.type",
            ),
            (
                json!({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": -5}}}}),
                "session.audio.input.turn_detection.silence_duration_ms",
            ),
            (
                json!({"type": "transcription", "audio": "x"}),
                "session.audio",
            ),
        ];
        for (session, param) in cases {
            let e = update(&mut s, session.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{session}");
            assert_eq!(s, before, "{session}");
        }
        let german = json!({"type": "transcription", "audio": {"input": {"transcription": {"model": "base", "language": "de"}}}});
        update(&mut s, german).unwrap();
        assert_eq!(
            (s.served.as_str(), s.language.as_deref()),
            ("base", Some("de"))
        );
    }

    #[test]
    fn the_model_named_is_served_or_refused_with_the_names_served() {
        let mut s = settings();
        let named = |model: &str| json!({"type": "transcription", "audio": {"input": {"transcription": {"model": model}}}});
        update(&mut s, named("base")).unwrap();
        assert_eq!((s.model.as_str(), s.served.as_str()), ("base", "base"));
        update(&mut s, named("gpt-4o-transcribe")).unwrap();
        assert_eq!(s.served, "tiny.en", "OpenAI's names mean the default");
        assert_eq!(
            s.to_json()["audio"]["input"]["transcription"]["model"],
            "gpt-4o-transcribe"
        );
        let before = s.clone();
        let e = update(&mut s, named("large-v9")).unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("session.audio.input.transcription.model")
        );
        assert!(e.message.contains("tiny.en, base"), "{}", e.message);
        assert_eq!(s, before);
        // A language the newly chosen model cannot take is refused with the model.
        update(&mut s, json!({"type": "transcription", "audio": {"input": {"transcription": {"model": "base", "language": "fr"}}}})).unwrap();
        let e = update(&mut s, named("tiny.en")).unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("session.audio.input.transcription.language")
        );
        assert_eq!(s.served, "base");
    }

    #[test]
    fn server_events_carry_openai_field_names() {
        let e = ServerEvent::SpeechStarted {
            audio_start_ms: 1200,
            item_id: "item_1".into(),
        };
        let v: Value = serde_json::from_str(&e.to_json("event_7".into())).unwrap();
        assert_eq!(
            v,
            json!({"type": "input_audio_buffer.speech_started", "event_id": "event_7",
                   "audio_start_ms": 1200, "item_id": "item_1"})
        );
        let e = ServerEvent::Completed {
            item_id: "item_1".into(),
            content_index: 0,
            transcript: "Hi.".into(),
            usage: Usage::seconds(1.23456),
        };
        let v: Value = serde_json::from_str(&e.to_json("event_8".into())).unwrap();
        assert_eq!(
            v["type"],
            "conversation.item.input_audio_transcription.completed"
        );
        assert_eq!(v["usage"], json!({"type": "duration", "seconds": 1.235}));
        let e = ServerEvent::Error {
            error: EventError::new("invalid_json", "bad")
                .for_event(Some("c1".into()))
                .into(),
        };
        let v: Value = serde_json::from_str(&e.to_json("event_9".into())).unwrap();
        assert_eq!(
            v["error"],
            json!({"type": "invalid_request_error", "code": "invalid_json", "message": "bad",
                   "param": null, "event_id": "c1"})
        );
        let v: Value = serde_json::from_str(&ServerEvent::Cleared {}.to_json("e".into())).unwrap();
        assert_eq!(
            v,
            json!({"type": "input_audio_buffer.cleared", "event_id": "e"})
        );
    }
}
