//! The HTTP side of the server over real sockets with the real tiny.en model: the
//! OpenAI-compatible endpoints (reqwest and curl), task lookup, access control, metrics,
//! readiness, and the settings file precedence of the real binary.

mod common;

use common::server::{assert_wer, transcription_head_only, TestServer};
use earshot::domain::ZhScript;
use earshot::inference::script;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite;

const JFK: &str = "en_jfk.wav";
/// The header that marks a transcript of a truncated file.
const TRUNCATED: &str = "x-earshot-truncated";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn audio_part(name: &str) -> Part {
    let bytes = std::fs::read(common::corpus_file(name)).expect("read corpus file");
    Part::bytes(bytes).file_name(name.to_string())
}

/// A transcription request for a corpus file with extra text fields.
fn form(file: &str, fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new()
        .part("file", audio_part(file))
        .text("model", "whisper-1");
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

/// A transcription request for a file outside the corpus (made by a test).
fn file_form(path: &std::path::Path, fields: &[(&str, &str)]) -> Form {
    let bytes = std::fs::read(path).expect("read the test file");
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut form = Form::new()
        .part("file", Part::bytes(bytes).file_name(name))
        .text("model", "whisper-1");
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

async fn transcribe(server: &TestServer, form: Form) -> reqwest::Response {
    post(server, "transcriptions", form).await
}

async fn translate(server: &TestServer, form: Form) -> reqwest::Response {
    post(server, "translations", form).await
}

/// POSTs a form to `/v1/audio/{endpoint}`.
async fn post(server: &TestServer, endpoint: &str, form: Form) -> reqwest::Response {
    client()
        .post(format!("{}/v1/audio/{endpoint}", server.http_url()))
        .multipart(form)
        .send()
        .await
        .expect("request sent")
}

/// GETs a URL and parses its JSON body.
async fn get_json(url: String) -> Value {
    let response = client().get(url).send().await.expect("request sent");
    response.json().await.expect("a JSON body")
}

/// Asserts an OpenAI-shaped error with the given status and returns its `error` object.
async fn expect_error(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("JSON error body");
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    for field in ["param", "code"] {
        assert!(error.as_object().unwrap().contains_key(field), "{body}");
    }
    error
}

fn assert_jfk(text: &str) {
    let wer = earshot::eval::wer(&common::reference(JFK), text);
    assert!(wer <= 0.2, "WER {wer} for {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_format_renders_the_recording() {
    let server = TestServer::start().await;

    let response = transcribe(&server, form(JFK, &[])).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["x-earshot-task-id"].to_str().is_ok());
    assert!(
        response.headers().get(TRUNCATED).is_none(),
        "a complete file is not truncated"
    );
    let json: Value = response.json().await.unwrap();
    assert_jfk(json["text"].as_str().unwrap());
    assert_eq!(
        json.as_object().unwrap().len(),
        1,
        "OpenAI's json shape: {json}"
    );

    let response = transcribe(&server, form(JFK, &[("response_format", "text")])).await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_jfk(&response.text().await.unwrap());

    let srt = transcribe(&server, form(JFK, &[("response_format", "srt")]))
        .await
        .text()
        .await
        .unwrap();
    assert!(srt.starts_with("1\n00:00:"), "{srt}");
    assert!(srt.contains(" --> "), "{srt}");

    let vtt = transcribe(&server, form(JFK, &[("response_format", "vtt")]))
        .await
        .text()
        .await
        .unwrap();
    assert!(vtt.starts_with("WEBVTT\n\n00:00:"), "{vtt}");

    let fields = [
        ("response_format", "verbose_json"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
        ("language", "en"),
        ("prompt", "Ask not."),
        ("temperature", "0"),
    ];
    let verbose: Value = transcribe(&server, form(JFK, &fields))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verbose["task"], "transcribe");
    assert!(verbose.get("truncated").is_none(), "{verbose}");
    assert_eq!(verbose["language"], "english");
    assert!((verbose["duration"].as_f64().unwrap() - 11.0).abs() < 0.1);
    assert_jfk(verbose["text"].as_str().unwrap());
    let segments = verbose["segments"].as_array().unwrap();
    let words = verbose["words"]
        .as_array()
        .expect("words with word granularity");
    assert!(words.len() >= 15, "{} words", words.len());
    let first = segments.first().unwrap()["start"].as_f64().unwrap();
    let last = segments.last().unwrap()["end"].as_f64().unwrap();
    for w in words {
        let (start, end) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
        assert!(start <= end, "{w}");
        assert!(
            start >= first - 0.01 && end <= last + 0.01,
            "{w} outside {first}..{last}"
        );
        assert!(
            segments.iter().any(|s| {
                s["start"].as_f64().unwrap() - 0.01 <= start
                    && end <= s["end"].as_f64().unwrap() + 0.01
            }),
            "{w} is inside no segment"
        );
    }

    // Sampling at a temperature still gives the sentence (whisper falls back to more
    // temperature only when a window decodes badly).
    let sampled = [("response_format", "verbose_json"), ("temperature", "0.6")];
    let plain: Value = transcribe(&server, form(JFK, &sampled))
        .await
        .json()
        .await
        .unwrap();
    assert!(plain.get("words").is_none(), "no words unless asked");
    assert_jfk(plain["text"].as_str().unwrap());

    let translated = translate(&server, form(JFK, &[("response_format", "verbose_json")])).await;
    let task_id = translated.headers()["x-earshot-task-id"]
        .to_str()
        .unwrap()
        .to_string();
    let translated: Value = translated.json().await.unwrap();
    assert_eq!(translated["task"], "translate");
    assert_jfk(translated["text"].as_str().unwrap());
    let fetched: Value = get_json(format!(
        "{}/v1/tasks/{task_id}?response_format=verbose_json",
        server.http_url()
    ))
    .await;
    assert_eq!(
        fetched["task"], "translate",
        "a fetched result keeps its task"
    );
    assert_eq!(fetched["text"], translated["text"]);
    server.shutdown().await;
}

/// Characters only Traditional Chinese writes (OpenCC's Traditional→Simplified changes them).
fn traditional_only(text: &str) -> String {
    text.chars()
        .filter(|c| script::convert(&c.to_string(), ZhScript::Simplified) != c.to_string())
        .collect()
}

/// `language` `zh-Hans` / `zh-Hant` is Mandarin in that script, in the text and in every
/// segment and word of verbose JSON.
#[tokio::test]
async fn mandarin_script_follows_the_language_tag() {
    let server = TestServer::start_with_pool(common::server::MULTILINGUAL.clone(), |_| {}).await;
    let mut texts = Vec::new();
    for tag in ["zh-Hans", "zh-Hant"] {
        let fields = [
            ("language", tag),
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
            ("prompt", "以下是普通話的句子。"),
        ];
        let response = transcribe(&server, form("zh_IT0011W0001.wav", &fields)).await;
        assert_eq!(response.status(), 200, "{tag}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["language"], "chinese", "{json}");
        let mut all = json["text"].as_str().unwrap().to_string();
        for part in ["segments", "words"] {
            for item in json[part].as_array().unwrap() {
                all += item["text"].as_str().or(item["word"].as_str()).unwrap();
            }
        }
        eprintln!("{tag}: {all}");
        texts.push(all);
    }
    assert_eq!(traditional_only(&texts[0]), "", "zh-Hans: {}", texts[0]);
    assert!(
        texts[1].contains('換'),
        "zh-Hant writes 換 (换一首歌): {}",
        texts[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_infinite_and_huge_samples_in_a_float_wav_still_transcribe() {
    // Before sanitising, rubato panicked on the NaN and the answer was a 500 `internal`.
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = common::jfk_with_bad_samples(dir.path());
    let response = transcribe(&server, file_form(&wav, &[])).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_wer(JFK, json["text"].as_str().unwrap(), 0.15);
    server.shutdown().await;
}

/// The `x-earshot-truncated` header as (decoded, declared) seconds.
fn truncated_header(response: &reqwest::Response) -> (f64, f64) {
    let value = response.headers()[TRUNCATED].to_str().unwrap().to_string();
    let number = |key: &str| -> f64 {
        let part = value
            .split("; ")
            .find_map(|p| p.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {value:?}"));
        part.parse()
            .unwrap_or_else(|_| panic!("bad number in {value:?}"))
    };
    (number("decoded="), number("declared="))
}

/// `{"decoded_seconds", "declared_seconds"}` checked against half of the 11 s recording.
fn assert_half_of_jfk(truncated: &Value) {
    let decoded = truncated["decoded_seconds"]
        .as_f64()
        .expect("decoded_seconds");
    let declared = truncated["declared_seconds"]
        .as_f64()
        .expect("declared_seconds");
    assert!((declared - 11.0).abs() < 0.01, "{truncated}");
    assert!((decoded - 5.5).abs() < 0.1, "{truncated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_is_transcribed_and_says_so() {
    // Before, the CLI failed such a file but HTTP answered 200 with no sign the text is partial.
    let server = TestServer::start().await;
    let base = server.http_url();
    let dir = tempfile::tempdir().unwrap();
    let half = common::first_half(dir.path(), JFK);

    let response = transcribe(&server, file_form(&half, &[])).await;
    assert_eq!(response.status(), 200);
    let (decoded, declared) = truncated_header(&response);
    let task_id = response.headers()["x-earshot-task-id"]
        .to_str()
        .unwrap()
        .to_string();
    let json: Value = response.json().await.unwrap();
    assert_half_of_jfk(&json["truncated"]);
    assert_eq!(json["truncated"]["decoded_seconds"], decoded);
    assert_eq!(json["truncated"]["declared_seconds"], declared);
    let text = json["text"].as_str().unwrap();
    assert!(
        text.contains("fellow Americans"),
        "the first half: {text:?}"
    );
    let words = |t: &str| t.split_whitespace().count();
    assert!(
        words(text) < words(&common::reference(JFK)),
        "only part of the speech: {text:?}"
    );

    // The stored result says it too, in every rendering.
    let url = |format: &str| format!("{base}/v1/tasks/{task_id}?response_format={format}");
    let verbose = client().get(url("verbose_json")).send().await.unwrap();
    assert_eq!(truncated_header(&verbose), (decoded, declared));
    let verbose: Value = verbose.json().await.unwrap();
    assert_half_of_jfk(&verbose["truncated"]);
    assert_eq!(verbose["text"], text);
    let srt = client().get(url("srt")).send().await.unwrap();
    assert_eq!(truncated_header(&srt), (decoded, declared));
    assert!(srt.text().await.unwrap().starts_with("1\n00:00:"));
    let status: Value = get_json(format!("{base}/v1/tasks/{task_id}")).await;
    assert_half_of_jfk(&status["truncated"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let server = TestServer::start_with(|c| c.max_file_bytes = bytesize::ByteSize::kib(200)).await;

    let not_audio = Form::new()
        .part(
            "file",
            Part::bytes(b"these are meeting notes, not audio ".repeat(100)).file_name("notes.wav"),
        )
        .text("model", "whisper-1");
    let error = expect_error(
        transcribe(&server, not_audio).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert_eq!(error["code"], "unsupported_audio");
    assert_eq!(error["param"], "file");

    let no_file = Form::new().text("model", "whisper-1");
    let error = expect_error(transcribe(&server, no_file).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(error["param"], "file");

    let error = expect_error(
        transcribe(
            &server,
            form("en_arctic_a0024.wav", &[("response_format", "xml")]),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(error["param"], "response_format");

    let words_without_verbose = form(
        "en_arctic_a0024.wav",
        &[("timestamp_granularities[]", "word")],
    );
    let error = expect_error(
        transcribe(&server, words_without_verbose).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(error["param"], "timestamp_granularities");

    let not_multipart = client()
        .post(format!("{}/v1/audio/transcriptions", server.http_url()))
        .json(&serde_json::json!({"file": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(not_multipart, StatusCode::BAD_REQUEST).await;

    // 352 kB > 200 KiB: refused while streaming (the declared size is within the slack).
    let error = expect_error(
        transcribe(&server, form(JFK, &[])).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(error["code"], "file_too_large");
    // Far over: refused from Content-Length alone, before any of the body is sent.
    let head = transcription_head_only(&server, 3145728).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("file_too_large"), "{head}");

    let spool = server.data_path().join("http");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "refused uploads leave no files"
    );
    server.shutdown().await;
}

/// The events of a `text/event-stream` body, each `data:` payload parsed. Checks the framing:
/// every event is one `data: ` line ended by a blank line; keep-alive comments are skipped.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split_terminator("\n\n")
        .filter(|event| !event.starts_with(':'))
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!data.contains('\n'), "one line per event: {event:?}");
            serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data:?}"))
        })
        .collect()
}

/// Splits OpenAI transcription events into the deltas' concatenation and the done event,
/// asserting the order: deltas (at least one) with nothing but `type` and `delta`, then one done.
fn deltas_then_done(events: &[Value]) -> (String, Value) {
    let (done, deltas) = events.split_last().expect("at least the done event");
    assert_eq!(done["type"], "transcript.text.done", "{events:?}");
    assert!(done["text"].is_string(), "{done}");
    assert!(
        !deltas.is_empty(),
        "a delta before the done event: {events:?}"
    );
    let mut text = String::new();
    for delta in deltas {
        assert_eq!(delta["type"], "transcript.text.delta", "{events:?}");
        assert_eq!(delta.as_object().unwrap().len(), 2, "{delta}");
        text.push_str(delta["delta"].as_str().expect("a delta string"));
    }
    (text, done.clone())
}

async fn event_stream(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-earshot-task-id"].len(), 36);
    sse_events(&response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_true_sends_openai_server_sent_events() {
    // Before, `stream=true` got plain JSON, and OpenAI's SDKs iterated over nothing.
    let server = TestServer::start().await;
    let plain: Value = transcribe(&server, form(JFK, &[]))
        .await
        .json()
        .await
        .unwrap();

    let events = event_stream(transcribe(&server, form(JFK, &[("stream", "true")])).await).await;
    let (deltas, done) = deltas_then_done(&events);
    assert!(events.len() >= 3, "one delta per segment: {events:?}");
    assert_eq!(deltas, done["text"].as_str().unwrap());
    assert_eq!(
        done["text"], plain["text"],
        "the same text as without stream"
    );
    assert_jfk(&deltas);

    let fields = [("stream", "true"), ("response_format", "text")];
    let events = event_stream(transcribe(&server, form(JFK, &fields)).await).await;
    assert_eq!(deltas_then_done(&events).0, deltas);

    // Refusals before the stream starts keep their status and JSON body.
    let small = "en_arctic_a0024.wav";
    for format in ["srt", "vtt", "verbose_json"] {
        let fields = [("stream", "true"), ("response_format", format)];
        let response = transcribe(&server, form(small, &fields)).await;
        let error = expect_error(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(error["param"], "response_format");
    }
    let response = translate(&server, form(small, &[("stream", "true")])).await;
    let error = expect_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(error["param"], "stream");
    let not_audio = Form::new()
        .part(
            "file",
            Part::bytes(b"notes, not audio ".repeat(200)).file_name("notes.wav"),
        )
        .text("model", "whisper-1")
        .text("stream", "true");
    let response = transcribe(&server, not_audio).await;
    let error = expect_error(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_eq!(error["code"], "unsupported_audio");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_ends_with_an_error_event() {
    // A failure after the first event cannot change the status any more: it is an event.
    let grace = std::time::Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.shutdown_grace = grace).await;
    let long = form("en_JFK_inaugural_146s.ogg", &[("stream", "true")]);
    let mut response = transcribe(&server, long).await;
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    while !String::from_utf8_lossy(&body).contains("transcript.text.delta") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("a delta before the end");
        body.extend_from_slice(&chunk);
    }
    // The server shuts down mid-way: the job is stopped and the stream says why.
    let stopping = tokio::spawn(server.shutdown());
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    stopping.await.unwrap();
    let events = sse_events(&String::from_utf8(body).unwrap());
    let (error, before) = events.split_last().unwrap();
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|e| e["type"] == "transcript.text.delta"),
        "{events:?}"
    );
    assert_eq!(error["type"], "error", "{events:?}");
    assert_eq!(error["error"]["code"], "busy", "{error}");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_tasks_can_be_looked_up() {
    let server = TestServer::start().await;
    let base = server.http_url();

    let models: Value = get_json(format!("{base}/v1/models")).await;
    assert_eq!(models["object"], "list");
    let id = models["data"][0]["id"].as_str().unwrap();
    assert!(id.contains("tiny.en"), "{models}");

    let response = transcribe(&server, form("en_harvard_birch_canoe.wav", &[])).await;
    let task_id = response.headers()["x-earshot-task-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = response.json::<Value>().await.unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();

    let status: Value = get_json(format!("{base}/v1/tasks/{task_id}")).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["id"], task_id.as_str());
    assert_eq!(status["text"], text.as_str());
    assert!(!status["result"]["segments"].as_array().unwrap().is_empty());

    let srt = client()
        .get(format!("{base}/v1/tasks/{task_id}?response_format=srt"))
        .send()
        .await
        .unwrap();
    assert_eq!(srt.status(), 200);
    assert!(srt.text().await.unwrap().starts_with("1\n00:00:"));

    for unknown in [uuid_like(), "not-a-task".to_string()] {
        let response = client()
            .get(format!("{base}/v1/tasks/{unknown}"))
            .send()
            .await
            .unwrap();
        expect_error(response, StatusCode::NOT_FOUND).await;
    }
    server.shutdown().await;
}

fn uuid_like() -> String {
    "0b6f3d62-5c1e-4e7a-9a43-0f3f5d0e9b11".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_posts_a_file_like_the_openai_docs_show() {
    let server = TestServer::start().await;
    let url = format!("{}/v1/audio/transcriptions", server.http_url());
    let file = format!("file=@{}", common::corpus_file(JFK).display());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", &url])
            .args([
                "-F",
                &file,
                "-F",
                "model=whisper-1",
                "-F",
                "response_format=text",
            ])
            .output()
            .expect("curl runs (install curl)")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_jfk(&String::from_utf8(output.stdout).unwrap());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_http_and_websocket_alike() {
    let server = TestServer::start_with(|c| {
        c.api_keys = vec!["sekret".into(), "other".into()];
        c.allowed_origins = vec!["https://good.example".into()];
    })
    .await;
    let base = server.http_url();
    let models = format!("{base}/v1/models");

    let none = client().get(&models).send().await.unwrap();
    let error = expect_error(none, StatusCode::UNAUTHORIZED).await;
    assert_eq!(error["code"], "invalid_api_key");
    let wrong = client()
        .get(&models)
        .bearer_auth("sekret2")
        .send()
        .await
        .unwrap();
    expect_error(wrong, StatusCode::UNAUTHORIZED).await;
    let right = client()
        .get(&models)
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let also = client()
        .get(&models)
        .bearer_auth("other")
        .send()
        .await
        .unwrap();
    assert_eq!(also.status(), 200);
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "liveness needs no key");
    let no_key_upload = transcribe(&server, form("en_arctic_a0024.wav", &[])).await;
    expect_error(no_key_upload, StatusCode::UNAUTHORIZED).await;

    let refused = tokio_tungstenite::connect_async(server.url()).await;
    assert_http_refusal(refused, 401);

    let with_token = format!("{}?token=sekret", server.url());
    let (mut ws, _) = tokio_tungstenite::connect_async(with_token)
        .await
        .expect("upgrade with ?token= accepted");
    let hello = ws.next().await.unwrap().unwrap();
    assert!(
        hello.to_text().unwrap().contains("\"connected\""),
        "{hello:?}"
    );

    let mut evil = format!("{}?token=sekret", server.url())
        .into_client_request()
        .unwrap();
    evil.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_http_refusal(tokio_tungstenite::connect_async(evil).await, 403);
    let mut good = format!("{}?token=sekret", server.url())
        .into_client_request()
        .unwrap();
    good.headers_mut()
        .insert("origin", "https://good.example".parse().unwrap());
    tokio_tungstenite::connect_async(good)
        .await
        .expect("an allowed origin connects");
    server.shutdown().await;
}

use tungstenite::client::IntoClientRequest;

fn assert_http_refusal<T: std::fmt::Debug>(result: Result<T, tungstenite::Error>, status: u16) {
    match result {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), status),
        other => panic!("expected an HTTP {status} refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_answer_429() {
    let server = TestServer::start_with(|c| c.rate_limit_per_minute = 3).await;
    let url = format!("{}/v1/models", server.http_url());
    for _ in 0..3 {
        assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    }
    let limited = client().get(&url).send().await.unwrap();
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let error = expect_error(limited, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(error["code"], "rate_limit_exceeded");
    server.shutdown().await;

    let server = TestServer::start_with(|c| c.max_connections_per_ip = 1).await;
    let (mut first, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    first.next().await.unwrap().unwrap();
    assert_http_refusal(tokio_tungstenite::connect_async(server.url()).await, 429);
    drop(first);
    // The slot comes back when the session ends.
    let mut reconnected = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(server.url()).await {
            reconnected = Some(ws);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reconnected.is_some(), "the address's slot was given back");
    server.shutdown().await;
}

/// The value of an unlabelled sample, or the sum over a metric's labelled samples.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_work_and_readiness_reports_checks() {
    let server = TestServer::start().await;
    let base = server.http_url();
    let scrape = || async {
        let response = client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    let before = scrape().await;
    for name in [
        "earshot_connections_active",
        "earshot_connections_total",
        "earshot_uploads_active",
        "earshot_uploads_completed_total",
        "earshot_uploads_failed_total",
        "earshot_chunks_total",
        "earshot_received_bytes_total",
        "earshot_queue_depth",
        "earshot_workers_busy",
        "earshot_jobs_completed_total",
        "process_resident_memory_bytes",
    ] {
        assert!(before.contains(name), "{name} missing from:\n{before}");
    }
    assert!(metric(&before, "process_resident_memory_bytes") > 1e6);

    let response = transcribe(&server, form("en_arctic_a0024.wav", &[])).await;
    assert_eq!(response.status(), 200);
    websocket_upload(&server, "en_harvard_birch_canoe.wav", 4).await;
    let after = scrape().await;
    let accepted = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("earshot_chunks_total{result=\"accepted\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(accepted(&after) >= accepted(&before) + 4.0, "{after}");
    for name in [
        "earshot_connections_total",
        "earshot_uploads_completed_total",
        "earshot_jobs_completed_total",
        "earshot_job_duration_seconds_count",
        "earshot_job_real_time_factor_count",
    ] {
        assert!(
            metric(&after, name) > metric(&before, name),
            "{name} did not move:\n{after}"
        );
    }
    assert!(
        metric(&after, "earshot_received_bytes_total")
            >= metric(&before, "earshot_received_bytes_total") + 100_000.0
    );

    let ready = client().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["model_loaded"], true);
    assert_eq!(body["data_dir_writable"], true);
    server.shutdown().await;

    let full = TestServer::start_with(|c| c.min_free_disk = bytesize::ByteSize::pib(1000)).await;
    let ready = client()
        .get(format!("{}/readyz", full.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "a disk below the floor is not ready");
    full.shutdown().await;
}

/// Uploads a corpus file over the WebSocket protocol in `chunks` JSON chunks.
async fn websocket_upload(server: &TestServer, name: &str, chunks: usize) {
    use futures_util::SinkExt;
    use md5::{Digest, Md5};
    use tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    let data = std::fs::read(common::corpus_file(name)).unwrap();
    let size = data.len().div_ceil(chunks);
    let request = serde_json::json!({"type": "upload_request", "data": {
        "file_name": name, "file_size": data.len(), "file_hash": hex::encode(Md5::digest(&data)),
        "chunk_size": size, "total_chunks": chunks, "upload_mode": "chunked"}});
    ws.send(Message::text(request.to_string())).await.unwrap();
    let ready = next_json(&mut ws).await;
    let task_id = ready["data"]["task_id"]
        .as_str()
        .expect("upload_ready")
        .to_string();
    for (i, c) in data.chunks(size).enumerate() {
        let msg = serde_json::json!({"type": "upload_chunk", "data": {"task_id": task_id,
            "chunk_index": i, "chunk_size": c.len(), "chunk_hash": hex::encode(Md5::digest(c)),
            "chunk_data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, c),
            "is_last": i == chunks - 1}});
        ws.send(Message::text(msg.to_string())).await.unwrap();
    }
    loop {
        let msg = next_json(&mut ws).await;
        if msg["type"] == "transcription_complete" {
            break;
        }
        assert_ne!(msg["type"], "error", "{msg}");
    }
}

/// The next JSON text message.
async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<tungstenite::Message, tungstenite::Error>> + Unpin,
{
    loop {
        let msg = ws
            .next()
            .await
            .expect("socket open")
            .expect("no socket error");
        if let tungstenite::Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

#[test]
fn print_config_layers_flags_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("earshot.toml");
    std::fs::write(
        &file,
        "workers = 3\nqueue = 5\nmax_uploads = 7\nmax-file-bytes = \"1GiB\"\napi-key = [\"filekey\"]\nzh_script = \"keep\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--max-uploads", "9", "--print-config"])
        .env("EARSHOT_QUEUE", "6")
        .env("EARSHOT_MAX_UPLOADS", "8")
        .env_remove("EARSHOT_WORKERS")
        .env_remove("EARSHOT_API_KEYS")
        .env_remove("EARSHOT_ZH_SCRIPT")
        .output()
        .expect("the earshot binary runs");
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    let settings: toml::Table = printed.parse().expect("print-config prints TOML");
    assert_eq!(
        settings["workers"].as_integer(),
        Some(3),
        "file over default"
    );
    assert_eq!(settings["queue"].as_integer(), Some(6), "env over file");
    assert_eq!(
        settings["max-uploads"].as_integer(),
        Some(9),
        "flag over env"
    );
    assert_eq!(settings["max-file-bytes"].as_str(), Some("1GiB"));
    assert_eq!(settings["max-processing"].as_integer(), Some(3), "default");
    assert_eq!(settings["zh-script"].as_str(), Some("keep"));
    assert!(!printed.contains("filekey"), "keys are never printed");
    assert!(printed.contains("# api-key: 1 set"), "{printed}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "wokers = 2\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args(["serve", "--print-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("wokers"));
}

/// With `language` left out, verbose JSON names the language Whisper detected, in OpenAI's
/// spelling ("chinese"); an English-only model refuses any language but English with a 400.
#[tokio::test]
async fn the_detected_language_is_named_and_english_only_models_refuse_others() {
    let multi = TestServer::start_with_pool(common::server::MULTILINGUAL.clone(), |_| {}).await;
    let fields = [("response_format", "verbose_json")];
    let response = transcribe(&multi, form("zh_TEST_NET_Y0000000000_S00000.wav", &fields)).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["language"], "chinese", "{json}");

    let tiny = TestServer::start().await;
    let response = transcribe(&tiny, form(JFK, &[("language", "zh-Hans")])).await;
    let error = expect_error(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(error["param"], "language", "{error}");
    let response = transcribe(&tiny, form(JFK, &[("language", "en")])).await;
    assert_eq!(response.status(), 200);
}
