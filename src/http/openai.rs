//! OpenAI-compatible endpoints: `POST /v1/audio/transcriptions`, `POST /v1/audio/translations`
//! and `GET /v1/models`, so tools written for OpenAI's speech-to-text API work unchanged.
//!
//! A request is admitted (HTTP job slot, upload slot), its file streamed to disk, checked to be
//! decodable, then transcribed through the same processing slots, long-audio path and task
//! registry as WebSocket uploads ([`crate::jobs::JobQueue`]); the handler waits for
//! the task and renders it with [`crate::format`], or, with `stream=true`, relays its text as
//! it is produced ([`super::sse`]). The task id is returned in `x-earshot-task-id`, so a client
//! that drops can fetch the result from `/v1/tasks/{id}`. A transcript of a truncated file says
//! so, since its 200 would otherwise look complete: `x-earshot-truncated` (but on a stream,
//! whose headers go out first) and a `truncated` field in the JSON formats and the done event.
//!
//! This module must not run Whisper itself or hold the audio in memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::form::{self, Form};
use super::{ApiError, ClientSlot, Http};
use crate::access::Caller;
use crate::app::NoSlot;
use crate::audio::decode::DecodeLimits;
use crate::audio::{AudioStream, Truncation};
use crate::domain::TaskId;
use crate::domain::{split_language_tag, FailureCode, OutputFormat, Task};
use crate::inference::engine::{self, Options};
use crate::inference::served::Refusal;
use crate::jobs::{Follow, Job, Source, TaskResult, Update};
use crate::metrics;
use crate::upload::store::StoreError;

/// The response header naming the task, for `/v1/tasks/{id}`.
pub const TASK_ID_HEADER: &str = "x-earshot-task-id";
/// The response header on a transcript of a truncated file, in every format:
/// `decoded=7.6; declared=11.0` (seconds).
pub const TRUNCATED_HEADER: &str = "x-earshot-truncated";
/// Room for the multipart framing and text fields around the file in a declared body size.
const FORM_OVERHEAD: u64 = 1024 * 1024;
/// Seconds a busy client is asked to wait.
const RETRY_SECS: u64 = 5;

/// `POST /v1/audio/transcriptions`.
pub async fn transcriptions(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    client: Option<Extension<Arc<ClientSlot>>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let client = client.map(|Extension(slot)| slot);
    handle(http, caller, client, headers, multipart, Task::Transcribe)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/audio/translations`: speech in any language to English text.
pub async fn translations(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    handle(http, caller, None, headers, multipart, Task::Translate)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/models`: the models requests may name (`model`), default first, in OpenAI's list
/// shape, with what Earshot adds: whether each is loaded now and in use, and its languages
/// (`null` until a model whose name does not say it is English-only has been loaded once).
pub async fn models(State(http): State<Arc<Http>>) -> Json<serde_json::Value> {
    let served = &http.app.models;
    let data: Vec<serde_json::Value> = served
        .status()
        .into_iter()
        .map(|m| {
            let multilingual = served.is_multilingual(&m.name);
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "earshot",
                "default": m.default,
                "loaded": m.loaded,
                "in_use": m.in_use,
                "multilingual": multilingual,
                "languages": crate::inference::model::languages(multilingual),
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// What a request asks for, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// How to render the result.
    pub format: OutputFormat,
    /// Whisper options (language, prompt, translate, word timing).
    pub options: Options,
    /// Transcribe or translate, as named in verbose JSON.
    pub task: Task,
    /// `stream=true`: answer with server-sent events as the text is produced.
    pub stream: bool,
    /// The served model asked for (`model`; OpenAI's names mean the default); `None` until
    /// checked against the server's models.
    pub model: Option<String>,
}

/// Admits, spools, checks and transcribes one request. `client` is the caller's per-address
/// slot, which a streamed answer holds for as long as it streams (translations never stream).
async fn handle(
    http: Arc<Http>,
    caller: Caller,
    client: Option<Arc<ClientSlot>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    task: Task,
) -> Result<Response, ApiError> {
    let multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "expected a multipart/form-data body: {}",
            e.body_text()
        ))
    })?;
    if !http.app.cluster_ready() {
        return Err(ApiError::not_ready(RETRY_SECS));
    }
    let job_permit = http.jobs.clone().try_acquire_owned().map_err(|_| {
        ApiError::busy(
            "the server has as many transcriptions waiting as it takes; retry later",
            RETRY_SECS,
        )
    })?;
    let upload_slot = http.app.upload_slot(&caller).map_err(|why| match why {
        NoSlot::Full => ApiError::busy("too many uploads in progress; retry later", RETRY_SECS),
        NoSlot::ClientShare => ApiError::rate_limited(
            "this client already has as many uploads in progress as it may; retry later",
            RETRY_SECS,
        ),
    })?;
    let reservation = reserve_space(&http, &caller, &headers)?;
    let task_id = TaskId::new_v4();
    let max = http.app.config.max_file_bytes.as_u64();
    let form = form::read(multipart, &http.spool, &task_id.to_string(), max)
        .await
        .inspect_err(|_| metrics::upload_failed())?;
    drop(upload_slot);
    let params = params(&form, task, &http)?;
    let file = form
        .file
        .ok_or_else(|| ApiError::bad_request("the request has no `file` part").param("file"))?;
    probe(&file.path).await?;
    metrics::upload_completed();
    tracing::info!(%task_id, bytes = file.bytes, ?task, "HTTP transcription");
    http.app.jobs.submit(Job {
        task_id,
        path: file.keep(),
        options: params.options.clone(),
        model: params.model.clone(),
        source: Source::File,
        owner: caller.owner.clone(),
    });
    if params.stream {
        return super::sse::respond(&http, task_id, (job_permit, reservation, client)).await;
    }
    let result = wait(&http, task_id).await?;
    Ok(respond(task_id, &result, params.format, params.task))
}

/// Checks a declared body size against the file limit and the disk quota, and holds the bytes
/// against the quota until the request is done.
fn reserve_space(
    http: &Arc<Http>,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Reservation, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let max = http.app.config.max_file_bytes.as_u64();
    if declared > max.saturating_add(FORM_OVERHEAD) {
        metrics::upload_failed();
        return Err(form::too_large(max));
    }
    let held = http.spooled_bytes.fetch_add(declared, Ordering::SeqCst);
    let reservation = Reservation {
        http: http.clone(),
        bytes: declared,
    };
    let client = caller.client().to_string();
    if let Err(err) = http.app.uploads.check_quota(&client, held + declared) {
        metrics::upload_failed();
        return Err(match err {
            StoreError::DiskFull => ApiError::disk_full(),
            _ => ApiError::too_large("the server's disk quota for uploads is full; retry later")
                .code("quota_exceeded"),
        });
    }
    Ok(reservation)
}

/// Bytes of an HTTP upload counted against the disk quota while it is handled.
struct Reservation {
    /// Where the count is kept.
    http: Arc<Http>,
    /// How many bytes this request holds.
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.http
            .spooled_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Validates the text fields of a request, `model` against the server's models: unknown is a
/// 400 naming the served ones, one the memory budget cannot take now a 503 `busy`.
pub fn params(form: &Form, task: Task, http: &Http) -> Result<Params, ApiError> {
    let served = &http.app.models;
    let model = served
        .resolve(form.get("model"))
        .map_err(model_error)?
        .to_owned();
    served.check(Some(&model)).map_err(model_error)?;
    let multilingual = served.is_multilingual(&model);
    let params = parse_params(form, task, multilingual, http.app.config.threads)?;
    Ok(Params {
        model: Some(model),
        ..params
    })
}

/// A refused `model` as the API answers it.
fn model_error(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Unknown { .. } => ApiError::bad_request(refusal.to_string())
            .param("model")
            .code("model_not_found"),
        refusal if refusal.is_busy() => {
            ApiError::busy(format!("{refusal}; retry later"), RETRY_SECS)
        }
        refusal => {
            tracing::warn!(%refusal, "a model could not be provided");
            ApiError::busy("the model cannot be loaded now; retry later", RETRY_SECS)
        }
    }
}

fn parse_params(
    form: &Form,
    task: Task,
    multilingual: bool,
    threads: usize,
) -> Result<Params, ApiError> {
    let format = output_format(form.get("response_format").unwrap_or("json"))?;
    let stream = stream(form, format, task)?;
    let words = granularities(form, format)?;
    let temperature = temperature(form)?;
    let (language, zh_script) = match form.get("language").map(split_language_tag) {
        Some((language, script)) => (Some(language), script),
        None => (None, None),
    };
    if let Some(language) = language.as_deref() {
        engine::check_language(language, multilingual)
            .map_err(|e| ApiError::bad_request(e.to_string()).param("language"))?;
    }
    let options = Options {
        language,
        translate: task == Task::Translate,
        initial_prompt: form.get("prompt").map(str::to_string),
        threads,
        token_timestamps: words,
        temperature,
        zh_script,
        ..Options::default()
    };
    engine::validate(&options).map_err(|e| {
        let param = if options
            .initial_prompt
            .as_deref()
            .is_some_and(|p| p.contains('\0'))
        {
            "prompt"
        } else {
            "language"
        };
        ApiError::bad_request(e.to_string()).param(param)
    })?;
    Ok(Params {
        format,
        options,
        task,
        stream,
        model: None,
    })
}

/// OpenAI's `stream`: `true` or `false` (the default). As OpenAI, only transcriptions stream,
/// and only as `json` or `text` (the events carry plain text, never subtitles or segments).
fn stream(form: &Form, format: OutputFormat, task: Task) -> Result<bool, ApiError> {
    match form.get("stream").map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") => return Ok(false),
        Some("true") => {}
        Some(_) => {
            return Err(ApiError::bad_request("stream must be true or false").param("stream"))
        }
    }
    if task == Task::Translate {
        return Err(ApiError::bad_request(
            "translations do not stream: leave out stream, or use /v1/audio/transcriptions",
        )
        .param("stream"));
    }
    if !matches!(format, OutputFormat::Json | OutputFormat::Txt) {
        return Err(ApiError::bad_request(
            "stream=true needs response_format json or text: the events carry plain text",
        )
        .param("response_format"));
    }
    Ok(true)
}

/// OpenAI's `temperature`: a number from 0 (the default) to 1.
fn temperature(form: &Form) -> Result<f32, ApiError> {
    match form.get("temperature").map(str::parse::<f32>) {
        None => Ok(0.0),
        Some(Ok(t)) if (0.0..=1.0).contains(&t) => Ok(t),
        Some(_) => Err(
            ApiError::bad_request("temperature must be a number from 0 to 1").param("temperature"),
        ),
    }
}

/// OpenAI's `response_format` names.
pub fn output_format(name: &str) -> Result<OutputFormat, ApiError> {
    match name {
        "json" => Ok(OutputFormat::Json),
        "text" => Ok(OutputFormat::Txt),
        "srt" => Ok(OutputFormat::Srt),
        "vtt" => Ok(OutputFormat::Vtt),
        "verbose_json" => Ok(OutputFormat::VerboseJson),
        other => Err(ApiError::bad_request(format!(
            "response_format {other:?} is not supported: use json, text, srt, vtt or verbose_json"
        ))
        .param("response_format")),
    }
}

/// Whether word timestamps are wanted; as OpenAI, only with `verbose_json`.
fn granularities(form: &Form, format: OutputFormat) -> Result<bool, ApiError> {
    let mut words = false;
    for g in form.all("timestamp_granularities") {
        match g {
            "word" => words = true,
            "segment" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "timestamp granularity {other:?} is not supported: use segment or word"
                ))
                .param("timestamp_granularities"))
            }
        }
    }
    if words && format != OutputFormat::VerboseJson {
        return Err(ApiError::bad_request(
            "timestamp_granularities[]=word requires response_format=verbose_json",
        )
        .param("timestamp_granularities"));
    }
    Ok(words)
}

/// Opens the file as audio so an undecodable upload is refused with 415 before it is queued.
async fn probe(path: &std::path::Path) -> Result<(), ApiError> {
    let path = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        AudioStream::open(&path, DecodeLimits::default()).map(|_| ())
    })
    .await
    .map_err(|_| ApiError::internal())?;
    opened.map_err(|err| {
        metrics::upload_failed();
        tracing::debug!(%err, "HTTP upload is not audio we can decode");
        ApiError::unsupported_audio(format!("the file could not be decoded as audio: {err}"))
    })
}

/// Waits for the task to end and returns its result or the matching HTTP error.
async fn wait(http: &Http, task_id: TaskId) -> Result<Arc<TaskResult>, ApiError> {
    let mut follow = Follow::new(http.app.tasks.clone(), task_id)
        .await
        .ok_or_else(ApiError::internal)?;
    loop {
        match follow.next().await {
            Some(Update::Segment(_)) => {}
            Some(Update::Done(result)) => return Ok(result),
            Some(Update::Failed { code, message }) => return Err(task_error(code, &message)),
            None => {
                tracing::error!(%task_id, "the task vanished from the registry while it ran");
                return Err(ApiError::internal());
            }
        }
    }
}

/// The HTTP error for a failed task.
pub fn task_error(code: FailureCode, message: &str) -> ApiError {
    match code {
        FailureCode::UnsupportedAudio => ApiError::unsupported_audio(format!(
            "the file could not be decoded as audio: {message}"
        )),
        FailureCode::Stopped => ApiError::busy(message, RETRY_SECS),
        FailureCode::Internal => ApiError::internal(),
    }
}

/// The transcript rendered as asked, with the task id header (and the truncation header when
/// the file was cut short).
pub fn respond(task_id: TaskId, result: &TaskResult, format: OutputFormat, task: Task) -> Response {
    let body = render(result, format, task);
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    name_task(&mut response, task_id);
    if let Some(cut) = &result.truncated {
        if let Ok(value) = HeaderValue::from_str(&truncated_header(cut)) {
            response.headers_mut().insert(TRUNCATED_HEADER, value);
        }
    }
    response
}

/// Adds the task id header, for `/v1/tasks/{id}`.
pub fn name_task(response: &mut Response, task_id: TaskId) {
    if let Ok(id) = HeaderValue::from_str(&task_id.to_string()) {
        response.headers_mut().insert(TASK_ID_HEADER, id);
    }
}

/// Adds `truncated` to a JSON body when the file was cut short (an extra field, so OpenAI's
/// clients still parse it).
pub fn mark_truncated(body: &mut serde_json::Value, result: &TaskResult) {
    if let Some(cut) = &result.truncated {
        body["truncated"] = json!(cut);
    }
}

/// The body: [`crate::format`]'s rendering, plus `truncated` in the two JSON shapes (an extra
/// field, so OpenAI's clients still parse them).
fn render(result: &TaskResult, format: OutputFormat, task: Task) -> String {
    let verbose = match format {
        OutputFormat::Json => false,
        OutputFormat::VerboseJson => true,
        OutputFormat::Txt | OutputFormat::Srt | OutputFormat::Vtt => {
            return crate::format::render_task(&result.transcript, format, task)
        }
    };
    let mut body = crate::format::json_body(&result.transcript, verbose, task);
    mark_truncated(&mut body, result);
    body.to_string() + "\n"
}

/// `decoded=7.6; declared=11.0`: the same numbers as the JSON field.
fn truncated_header(cut: &Truncation) -> String {
    format!(
        "decoded={:?}; declared={:?}",
        cut.decoded_seconds, cut.declared_seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        let mut form = Form::default();
        for (k, v) in pairs {
            form.fields
                .entry(k.to_string())
                .or_default()
                .push(v.to_string());
        }
        form
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Params, ApiError> {
        parse_params(&form(pairs), Task::Transcribe, true, 2)
    }

    #[test]
    fn defaults_are_json_without_words() {
        let p = parse(&[("model", "whisper-1")]).unwrap();
        assert_eq!(p.format, OutputFormat::Json);
        assert!(!p.options.token_timestamps);
        assert_eq!(p.options.language, None);
        assert!(!p.options.translate);
    }

    #[test]
    fn the_model_names_openai_clients_send_mean_the_loaded_model() {
        for model in ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"] {
            let p = parse(&[("model", model)]).unwrap();
            assert_eq!(p, parse(&[]).unwrap(), "{model}");
        }
    }

    #[test]
    fn every_openai_format_is_understood() {
        for (name, format) in [
            ("json", OutputFormat::Json),
            ("text", OutputFormat::Txt),
            ("srt", OutputFormat::Srt),
            ("vtt", OutputFormat::Vtt),
            ("verbose_json", OutputFormat::VerboseJson),
        ] {
            assert_eq!(parse(&[("response_format", name)]).unwrap().format, format);
        }
        let err = parse(&[("response_format", "diarized_json")]).unwrap_err();
        assert_eq!(err.param, Some("response_format"));
        assert_eq!(err.status, 400);
    }

    #[test]
    fn word_timestamps_need_verbose_json() {
        let p = parse(&[
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
            ("timestamp_granularities[]", "segment"),
        ])
        .unwrap();
        assert!(p.options.token_timestamps);
        let err = parse(&[("timestamp_granularities[]", "word")]).unwrap_err();
        assert_eq!(err.param, Some("timestamp_granularities"));
        let err = parse(&[("timestamp_granularities[]", "letter")]).unwrap_err();
        assert_eq!(err.param, Some("timestamp_granularities"));
    }

    #[test]
    fn language_prompt_and_temperature_are_checked() {
        let p = parse(&[
            ("language", "FR"),
            ("prompt", "Zoë"),
            ("temperature", "0.2"),
        ])
        .unwrap();
        assert_eq!(p.options.language.as_deref(), Some("fr"));
        assert_eq!(p.options.initial_prompt.as_deref(), Some("Zoë"));
        assert_eq!(p.options.temperature, 0.2);
        assert_eq!(parse(&[]).unwrap().options.temperature, 0.0);
        assert_eq!(
            parse(&[("language", "xx")]).unwrap_err().param,
            Some("language")
        );
        assert_eq!(
            parse(&[("temperature", "2")]).unwrap_err().param,
            Some("temperature")
        );
        assert_eq!(
            parse(&[("temperature", "hot")]).unwrap_err().param,
            Some("temperature")
        );
        assert_eq!(
            parse(&[("temperature", "NaN")]).unwrap_err().param,
            Some("temperature")
        );
        let english_only = parse_params(&form(&[("language", "de")]), Task::Transcribe, false, 2);
        assert_eq!(english_only.unwrap_err().param, Some("language"));
        assert!(parse_params(&form(&[("language", "en")]), Task::Transcribe, false, 2).is_ok());
    }

    #[test]
    fn translations_set_the_translate_option() {
        let p = parse_params(&form(&[]), Task::Translate, true, 2).unwrap();
        assert!(p.options.translate);
        assert_eq!(p.task, Task::Translate);
    }

    #[test]
    fn only_json_or_text_transcriptions_stream() {
        assert!(!parse(&[]).unwrap().stream);
        assert!(!parse(&[("stream", "false")]).unwrap().stream);
        assert!(parse(&[("stream", "true")]).unwrap().stream);
        assert!(
            parse(&[("stream", "True"), ("response_format", "text")])
                .unwrap()
                .stream
        );
        assert_eq!(
            parse(&[("stream", "yes")]).unwrap_err().param,
            Some("stream")
        );
        for format in ["srt", "vtt", "verbose_json"] {
            let err = parse(&[("stream", "true"), ("response_format", format)]).unwrap_err();
            assert_eq!(
                (err.status.as_u16(), err.param),
                (400, Some("response_format"))
            );
        }
        let translate =
            |pairs: &[(&str, &str)]| parse_params(&form(pairs), Task::Translate, true, 2);
        let err = translate(&[("stream", "true")]).unwrap_err();
        assert_eq!((err.status.as_u16(), err.param), (400, Some("stream")));
        assert!(!translate(&[("stream", "false")]).unwrap().stream);
    }

    fn result(truncated: Option<Truncation>) -> TaskResult {
        TaskResult {
            transcript: crate::transcript::Transcript {
                language: "en".into(),
                language_probability: None,
                duration: 5.5,
                segments: vec![crate::transcript::Segment::new(0.0, 5.0, " And so")],
            },
            processing_seconds: 0.1,
            task: Task::Transcribe,
            truncated,
            interrupted: false,
        }
    }

    #[test]
    fn truncated_results_carry_a_field_and_a_header() {
        let cut = Truncation::detect(7.6, Some(11.0));
        for format in [OutputFormat::Json, OutputFormat::VerboseJson] {
            let body: serde_json::Value =
                serde_json::from_str(&render(&result(cut), format, Task::Transcribe)).unwrap();
            assert_eq!(body["text"], "And so");
            assert_eq!(
                body["truncated"],
                json!({"decoded_seconds": 7.6, "declared_seconds": 11.0})
            );
        }
        let response = respond(
            TaskId::new_v4(),
            &result(cut),
            OutputFormat::Srt,
            Task::Transcribe,
        );
        assert_eq!(
            response.headers()[TRUNCATED_HEADER],
            "decoded=7.6; declared=11.0"
        );
    }

    #[test]
    fn complete_results_keep_openai_shapes_exactly() {
        for format in [
            OutputFormat::Json,
            OutputFormat::VerboseJson,
            OutputFormat::Txt,
            OutputFormat::Srt,
            OutputFormat::Vtt,
        ] {
            let plain =
                crate::format::render_task(&result(None).transcript, format, Task::Transcribe);
            assert_eq!(render(&result(None), format, Task::Transcribe), plain);
            let response = respond(TaskId::new_v4(), &result(None), format, Task::Transcribe);
            assert!(response.headers().get(TRUNCATED_HEADER).is_none());
        }
    }

    #[test]
    fn failed_tasks_map_to_http_errors() {
        assert_eq!(task_error(FailureCode::UnsupportedAudio, "bad").status, 415);
        assert_eq!(task_error(FailureCode::Stopped, "shut down").status, 503);
        assert_eq!(task_error(FailureCode::Internal, "x").status, 500);
    }
}
