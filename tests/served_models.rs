//! Several models served by one real server (`--models`): each request gets the model it named
//! (HTTP `model`, seed `upload_request`/`stream_start` `model`), unknown names are refused with
//! the served ones listed, an idle model is unloaded and loaded again, and the memory budget
//! answers `busy` when the models in use leave no room. Real models (tiny.en as the default,
//! base-q5_1 multilingual), real corpus, real sockets.

mod common;

use std::time::Duration;

use common::server::{seed_upload, Client, TestServer, HANG_GUARD};
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

const JFK: &str = "en_jfk.wav";
/// Mandarin: "甚至出现交易几乎停滞的情况".
const ZH: &str = "zh_BAC009S0764W0121.wav";
const BASE: &str = "base-q5_1";

/// A server whose default is tiny.en, also serving base-q5_1 from the mirror.
async fn two_models(tweak: impl FnOnce(&mut earshot::server::ServerConfig)) -> TestServer {
    TestServer::start_with(|c| {
        c.models = vec!["tiny.en".into(), BASE.into()];
        c.models_dir = common::models_dir();
        tweak(c);
    })
    .await
}

fn form(file: &str, fields: &[(&str, &str)]) -> Form {
    let bytes = std::fs::read(common::corpus_file(file)).expect("read corpus file");
    let mut form = Form::new().part("file", Part::bytes(bytes).file_name(file.to_string()));
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

async fn transcribe(server: &TestServer, form: Form) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/audio/transcriptions", server.http_url()))
        .multipart(form)
        .send()
        .await
        .expect("the request is answered")
}

/// The text of a successful `json` transcription.
async fn text_of(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, StatusCode::OK, "{body}");
    body["text"].as_str().expect("a text").to_string()
}

/// `GET /v1/models`, by model name.
async fn models(server: &TestServer) -> Vec<Value> {
    let list: Value = reqwest::get(format!("{}/v1/models", server.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list", "{list}");
    list["data"].as_array().expect("a data list").clone()
}

async fn model(server: &TestServer, name: &str) -> Value {
    models(server)
        .await
        .into_iter()
        .find(|m| m["id"] == name)
        .unwrap_or_else(|| panic!("{name} is listed"))
}

fn has_han(text: &str) -> bool {
    text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

/// Polls `/v1/models` until `name`'s `loaded` is `loaded` (bounded by the hang guard).
async fn wait_loaded(server: &TestServer, name: &str, loaded: bool) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while model(server, name).await["loaded"] != loaded {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became loaded={loaded}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_serve_at_once_each_request_getting_the_one_it_named() {
    let server = two_models(|_| {}).await;
    let listed = models(&server).await;
    let ids: Vec<&str> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny.en", BASE], "default first");
    assert_eq!(listed[0]["default"], true);
    assert_eq!(listed[0]["loaded"], true, "the default is loaded at start");
    assert_eq!(listed[1]["loaded"], false, "others load on first use");
    assert_eq!(listed[0]["languages"], json!(["en"]));
    assert!(listed[1]["languages"].as_array().unwrap().len() > 50);

    // The same Mandarin file, at once, to both models; and English to the default by an
    // OpenAI name.
    let (multilingual, english_only, openai) = tokio::join!(
        transcribe(&server, form(ZH, &[("model", BASE)])),
        transcribe(&server, form(ZH, &[("model", "tiny.en")])),
        transcribe(&server, form(JFK, &[("model", "whisper-1")])),
    );
    let multilingual = text_of(multilingual).await;
    let english_only = text_of(english_only).await;
    assert!(
        has_han(&multilingual),
        "base-q5_1 writes Mandarin: {multilingual}"
    );
    assert!(!has_han(&english_only), "tiny.en cannot: {english_only}");
    common::server::assert_wer(JFK, &text_of(openai).await, 0.15);
    assert_eq!(model(&server, BASE).await["loaded"], true);

    // The seed socket: an upload naming the model is transcribed by it.
    let mut c = Client::connect(&server.url()).await;
    let data = std::fs::read(common::corpus_file(ZH)).unwrap();
    let mut request = common::server::upload_request(ZH, &data, 64 * 1024);
    request["data"]["model"] = json!(BASE);
    c.send(request).await;
    let ready = c.expect("upload_ready").await;
    let task_id = ready["data"]["task_id"].as_str().unwrap().to_string();
    for i in 0..data.len().div_ceil(64 * 1024) {
        c.send(common::server::upload_chunk(&task_id, &data, 64 * 1024, i))
            .await;
        c.expect("chunk_received").await;
    }
    c.expect("upload_complete").await;
    let (_, done) = c.transcript().await;
    assert_eq!(done["data"]["language"], "zh", "{done}");
    assert!(has_han(done["data"]["text"].as_str().unwrap()), "{done}");

    // A non-English language on the English-only model is a clear error.
    let refused = transcribe(
        &server,
        form(ZH, &[("model", "tiny.en"), ("language", "zh")]),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["param"], "language", "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_refused_with_the_names_served() {
    let server = two_models(|_| {}).await;
    let refused = transcribe(&server, form(JFK, &[("model", "large-v9")])).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["param"], "model", "{body}");
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("large-v9") && message.contains("tiny.en") && message.contains(BASE),
        "{message}"
    );

    let mut c = Client::connect(&server.url()).await;
    let data = std::fs::read(common::corpus_file(JFK)).unwrap();
    let mut request = common::server::upload_request(JFK, &data, 64 * 1024);
    request["data"]["model"] = json!("large-v9");
    c.send(request).await;
    let error = c.expect_error("invalid_message").await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("tiny.en") && message.contains(BASE),
        "{error}"
    );

    c.send(json!({"type": "stream_start", "data": {"model": "large-v9"}}))
        .await;
    let error = c.expect_error("invalid_message").await;
    assert!(error["message"].as_str().unwrap().contains(BASE), "{error}");

    // The connection is still usable, and a seed client naming no model gets the default.
    let task_id = seed_upload(&mut c, JFK, &data, 64 * 1024).await;
    let (_, done) = c.transcript().await;
    assert_eq!(done["data"]["task_id"], task_id.as_str());
    common::server::assert_wer(JFK, done["data"]["text"].as_str().unwrap(), 0.15);
    assert_eq!(
        model(&server, BASE).await["loaded"],
        false,
        "nothing asked for it"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_model_is_unloaded_and_loaded_again_on_its_next_use() {
    let server = two_models(|c| c.model_idle_unload = Duration::from_secs(1)).await;
    for round in 0..2 {
        let text = text_of(transcribe(&server, form(JFK, &[("model", BASE)])).await).await;
        common::server::assert_wer(JFK, &text, 0.15);
        let listed = model(&server, BASE).await;
        assert_eq!(listed["loaded"], true, "round {round}: {listed}");
        wait_loaded(&server, BASE, false).await;
    }
    let listed = model(&server, "tiny.en").await;
    assert_eq!(listed["loaded"], true, "the default stays: {listed}");
    let health: Value = reqwest::get(format!("{}/healthz", server.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = &health["models"][1];
    assert_eq!(base["name"], BASE, "{health}");
    assert_eq!(base["loaded"], false, "{health}");
    assert_eq!(base["requests"], 2, "{health}");
    // /metrics has a series per served model (values are not compared: the recorder is the
    // whole test process's, which other tests' servers scrape too).
    let metrics = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in ["tiny.en", BASE] {
        let series = format!("earshot_model_loaded{{model=\"{name}\"}}");
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
    server.shutdown().await;
}

/// Budget = twice tiny.en: the default and one other model. A live stream keeps base-q5_1 in use, the default is always
/// resident, so a third model (a copy of tiny.en under another name) does not fit: `busy` over
/// HTTP and the socket. Once the stream ends, base-q5_1 is idle and makes room for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_refuses_a_third_model_while_the_others_are_busy() {
    let dir = tempfile::tempdir().unwrap();
    let third = dir.path().join("ggml-tiny-copy.bin");
    std::os::unix::fs::symlink(common::model("ggml-tiny.en.bin"), &third).unwrap();
    let size = |name: &str| std::fs::metadata(common::model(name)).unwrap().len();
    // Room for the default and one more of either size: tiny.en with base-q5_1, or with the copy.
    let budget = 2 * size("ggml-tiny.en.bin");
    assert!(size("ggml-base-q5_1.bin") <= size("ggml-tiny.en.bin"));
    let server = two_models(|c| {
        c.models.push(third.display().to_string());
        c.model_memory = Some(bytesize::ByteSize::b(budget));
    })
    .await;

    let mut streamer = Client::connect(&server.url()).await;
    streamer
        .send(json!({"type": "stream_start", "data": {"model": BASE, "format": "pcm_s16le"}}))
        .await;
    streamer.expect("stream_started").await;
    assert_eq!(model(&server, BASE).await["in_use"], 1);

    let refused = transcribe(&server, form(JFK, &[("model", "tiny-copy")])).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "busy", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("budget") && message.contains(BASE),
        "{message}"
    );

    let mut other = Client::connect(&server.url()).await;
    other
        .send(json!({"type": "stream_start", "data": {"model": "tiny-copy"}}))
        .await;
    let error = other.expect_error("busy").await;
    assert!(
        error["message"].as_str().unwrap().contains("budget"),
        "{error}"
    );
    assert_eq!(model(&server, "tiny-copy").await["loaded"], false);

    streamer
        .send(json!({"type": "stream_end", "data": {}}))
        .await;
    while streamer.recv().await["type"] != "transcription_complete" {}
    drop(streamer);
    // The stream's runner lets go of its model just after its last message.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while model(&server, BASE).await["in_use"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never let go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = text_of(transcribe(&server, form(JFK, &[("model", "tiny-copy")])).await).await;
    common::server::assert_wer(JFK, &text, 0.15);
    assert_eq!(model(&server, "tiny-copy").await["loaded"], true);
    assert_eq!(
        model(&server, BASE).await["loaded"],
        false,
        "the idle base-q5_1 made room"
    );
    server.shutdown().await;
}
