//! The web page in a real headless Chromium (Debian's `chromium`, driven by `playwright-core`
//! from tests/browser/): a fake microphone fed from a corpus WAV, an upload through the file
//! picker, one dropped on the page and paused half way, an upload whose connection is cut
//! half way and must resume, and a live stream whose connection is cut and must resume the same
//! task.
//!
//! Each test starts the real server in-process and runs `node tests/browser/run.mjs URL
//! SCENARIO …`, which prints `RESULT {json}` with what the page showed. Screenshots go to
//! `$EARSHOT_SCREENSHOT_DIR` when set (the ones in docs/ were made that way), else to a temp dir.
//!
//! Set-up: `apt-get install chromium` and `(cd tests/browser && npm ci)`.

mod common;

use std::path::{Path, PathBuf};

use common::server::TestServer;
use serde_json::Value;

/// One Chromium at a time: they are heavy, and the machine also runs the model.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Largest word error rate accepted for the tiny.en model on these clean recordings.
const MAX_WER: f64 = 0.25;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Panics with the set-up step when the browser or the driver is missing.
fn check_setup() {
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: apt-get install chromium chromium-driver"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run (cd tests/browser && npm ci)"
    );
}

/// What a browser scenario needs: the one-Chromium-at-a-time guard, a fresh server and a
/// directory for screenshots.
async fn browser_scene() -> (
    tokio::sync::MutexGuard<'static, ()>,
    TestServer,
    tempfile::TempDir,
) {
    check_setup();
    let one = BROWSER.lock().await;
    let server = TestServer::start().await;
    (one, server, tempfile::tempdir().unwrap())
}

/// Where a scenario's screenshot goes.
fn screenshot(name: &str, keep: &tempfile::TempDir) -> String {
    let dir = std::env::var_os("EARSHOT_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| keep.path().to_path_buf());
    dir.join(name).display().to_string()
}

/// Runs one scenario of run.mjs against `server` and returns its RESULT object.
async fn run(server: &TestServer, scenario: &str, args: &[String]) -> Value {
    let url = format!("http://{}/", server.addr);
    let output = tokio::process::Command::new("node")
        .arg("run.mjs")
        .arg(&url)
        .arg(scenario)
        .args(args)
        .current_dir(browser_dir())
        // Never fetch a browser: the test uses the system's Chromium.
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "run.mjs {scenario} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("run.mjs {scenario} printed no RESULT:\n{stdout}\n{stderr}"));
    serde_json::from_str(line).expect("RESULT is JSON")
}

fn text(result: &Value, pointer: &str) -> String {
    result
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {pointer} in {result}"))
        .to_string()
}

fn number(result: &Value, pointer: &str) -> u64 {
    result
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {pointer} in {result}"))
}

fn assert_transcript(result: &Value, file: &str) -> String {
    let heard = text(result, "/text");
    let wer = earshot::eval::wer(&common::reference(file), &heard);
    assert!(wer <= MAX_WER, "WER {wer:.3} for {file}: {heard:?}");
    assert!(
        text(result, "/state").starts_with("Done"),
        "page state: {result}"
    );
    assert_eq!(text(result, "/alert"), "", "the page showed an error");
    heard
}

/// A download button and the `response_format` the server renders it with.
const DOWNLOADS: [(&str, &str); 4] = [
    ("txt", "text"),
    ("srt", "srt"),
    ("vtt", "vtt"),
    ("json", "verbose_json"),
];

/// The server's own rendering of the task the page last worked on (`GET /v1/tasks/{id}`).
async fn server_rendering(server: &TestServer, result: &Value, format: &str) -> String {
    let task_id = text(result, "/taskId");
    let url = format!(
        "{}/v1/tasks/{task_id}?response_format={format}",
        server.http_url()
    );
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.unwrap()
}

/// The downloads hold the transcript the page shows, each byte for byte the server's
/// rendering of the task, saved under the uploaded file's name.
async fn assert_downloads(server: &TestServer, result: &Value, heard: &str, file: &str) {
    for (download, format) in DOWNLOADS {
        assert_eq!(
            text(result, &format!("/downloads/{download}/body")),
            server_rendering(server, result, format).await,
            "the {download} download is the server's {format}"
        );
        let stem = file.rsplit_once('.').unwrap().0;
        assert_eq!(
            text(result, &format!("/downloads/{download}/name")),
            format!("{stem}.{download}")
        );
    }
    assert_eq!(text(result, "/downloads/txt/body"), format!("{heard}\n"));
    let srt = text(result, "/downloads/srt/body");
    assert!(srt.starts_with("1\n00:00:"), "SRT: {srt:?}");
    assert!(srt.contains(" --> "), "SRT: {srt:?}");
    let vtt = text(result, "/downloads/vtt/body");
    assert!(vtt.starts_with("WEBVTT\n\n00:00:"), "VTT: {vtt:?}");
    let json: Value = serde_json::from_str(&text(result, "/downloads/json/body")).unwrap();
    assert_eq!(json["text"], heard);
    assert!(!json["segments"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_checksums_match_references() {
    check_setup();
    let server = TestServer::start().await;
    let result = run(&server, "hashes", &[]).await;
    assert_eq!(result["failures"], serde_json::json!([]), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_served_at_root_and_the_websocket_still_upgrades_there() {
    let server = TestServer::start().await;
    let body = get(server.addr, "/").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("text/html"), "{body}");
    assert!(body.contains("<title>Earshot"), "{body}");
    let js = get(server.addr, "/app.js").await;
    assert!(js.contains("text/javascript"), "{js}");
    let missing = get(server.addr, "/nope.js").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .expect("the upgrade on / still works");
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"connected\""));
}

/// A plain HTTP/1.1 GET; returns the whole response as text.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_microphone_speaking_jfk_is_transcribed_live() {
    let (_one, server, shots) = browser_scene().await;
    // Chromium refuses a capture file path containing "..".
    let wav = common::corpus_file("en_jfk.wav").canonicalize().unwrap();
    let result = run(
        &server,
        "mic",
        &[
            format!("wav={}", wav.display()),
            // The recording lasts 11 s; Chromium starts it when the microphone opens.
            "seconds=12.5".into(),
            format!("screenshot={}", screenshot("page-mic.png", &shots)),
        ],
    )
    .await;
    let heard = assert_transcript(&result, "en_jfk.wav");
    assert_eq!(text(&result, "/txt/body"), format!("{heard}\n"));
    assert_eq!(
        text(&result, "/txt/body"),
        server_rendering(&server, &result, "text").await
    );
    assert!(
        text(&result, "/txt/name").starts_with("earshot-live-"),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_chosen_in_the_page_is_uploaded_and_transcribed() {
    let (_one, server, shots) = browser_scene().await;
    let file = "en_harvard_birch_canoe.wav";
    let result = run(
        &server,
        "upload",
        &[
            format!("file={}", common::corpus_file(file).display()),
            format!("screenshot={}", screenshot("page-upload.png", &shots)),
        ],
    )
    .await;
    let heard = assert_transcript(&result, file);
    assert_downloads(&server, &result, &heard, file).await;
    assert_eq!(number(&result, "/stats/uploadsStarted"), 1);
    assert!(result["saved"].is_null(), "a finished upload is forgotten");
}

/// Runs a scenario whose proxy cuts the page's WebSocket once the browser has sent about 60 %
/// of `en_jfk_44k_stereo.flac`; returns the file, its number of chunks and the RESULT.
async fn run_cut(
    server: &TestServer,
    scenario: &str,
    shot: &str,
    shots: &tempfile::TempDir,
) -> (&'static str, u64, Value) {
    let file = "en_jfk_44k_stereo.flac";
    let path = common::corpus_file(file);
    let size = std::fs::metadata(&path).unwrap().len();
    // Small chunks: the window (16) then covers less than half the file, so the page must
    // have had acks, and the server kept chunks, before the cut.
    let chunk_size = 32 * 1024;
    let total = size.div_ceil(chunk_size);
    assert!(total > 4, "the file must span several chunks");
    let args = [
        format!("file={}", path.display()),
        format!("chunk_size={chunk_size}"),
        format!("drop_after={}", size * 3 / 5),
        format!("screenshot={}", screenshot(shot, shots)),
    ];
    (file, total, run(server, scenario, &args).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_cut_half_way_resumes_and_sends_only_what_is_missing() {
    let (_one, server, shots) = browser_scene().await;
    let (file, total, result) = run_cut(&server, "resume", "page-resume.png", &shots).await;
    assert_eq!(
        result["proxy"]["cut"], true,
        "the connection was cut: {result}"
    );
    let cut = &result["duringCut"];
    assert!(
        text(cut, "/upload").starts_with("Connection lost"),
        "the page said so: {cut}"
    );
    assert!(cut["saved"].is_string(), "the upload was remembered: {cut}");
    let heard = assert_transcript(&result, file);
    assert_downloads(&server, &result, &heard, file).await;
    assert!(number(&result, "/stats/connections") >= 2, "{result}");
    assert!(number(&result, "/stats/resumes") >= 1, "{result}");
    // Resumed, not restarted: one upload_request, and after the resume exactly the chunks
    // the server said it lacked.
    assert_eq!(number(&result, "/stats/uploadsStarted"), 1, "{result}");
    let missing = number(&result, "/stats/missingAtResume");
    assert!(missing < total, "the server kept some chunks: {result}");
    assert_eq!(
        number(&result, "/stats/sentSinceResume"),
        missing,
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_reloaded_mid_upload_resumes_when_the_same_file_is_chosen_again() {
    let (_one, server, shots) = browser_scene().await;
    let (file, total, result) = run_cut(&server, "reload", "page-reload.png", &shots).await;
    assert_eq!(result["proxy"]["cut"], true, "{result}");
    assert!(
        text(&result, "/banner").contains(file),
        "the reloaded page offers to resume: {result}"
    );
    let heard = assert_transcript(&result, file);
    assert!(!heard.is_empty());
    // The reloaded page never started a new upload: it resumed the stored task and sent
    // exactly the chunks the server lacked.
    assert_eq!(number(&result, "/stats/uploadsStarted"), 0, "{result}");
    assert_eq!(number(&result, "/stats/resumes"), 1, "{result}");
    let missing = number(&result, "/stats/missingAtResume");
    assert!(missing > 0 && missing < total, "{result}");
    assert_eq!(
        number(&result, "/stats/sentSinceResume"),
        missing,
        "{result}"
    );
    assert_eq!(number(&result, "/stats/chunksSent"), missing, "{result}");
    assert!(result["saved"].is_null(), "a finished upload is forgotten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_dropped_on_the_page_pauses_and_resumes() {
    let (_one, server, shots) = browser_scene().await;
    let file = "en_jfk_44k_stereo.flac";
    let path = common::corpus_file(file);
    let chunk_size = 16 * 1024;
    let total = std::fs::metadata(&path).unwrap().len().div_ceil(chunk_size);
    let result = run(
        &server,
        "pause",
        &[
            format!("file={}", path.display()),
            format!("chunk_size={chunk_size}"),
            format!("screenshot={}", screenshot("page-paused.png", &shots)),
        ],
    )
    .await;
    assert_eq!(text(&result, "/label"), "Resume", "{result}");
    assert_eq!(text(&result, "/resumedLabel"), "Pause", "{result}");
    let paused = number(&result, "/paused/sent");
    assert!(paused >= 8 && paused < total, "paused part way: {result}");
    assert_eq!(
        number(&result, "/later/sent"),
        paused,
        "nothing is sent while paused: {result}"
    );
    assert_eq!(result["later"]["progress"], result["paused"]["progress"]);
    let shown = format!(
        "Paused at {}%",
        result["later"]["progress"].as_f64().unwrap().floor()
    );
    assert_eq!(
        text(&result, "/later/upload"),
        shown,
        "the label follows the acknowledged bytes: {result}"
    );
    let heard = assert_transcript(&result, file);
    assert!(!heard.is_empty());
    assert_eq!(number(&result, "/stats/uploadsStarted"), 1, "{result}");
    assert_eq!(number(&result, "/stats/chunksSent"), total, "{result}");
}

/// Word trigrams of `text`, lower-cased without punctuation, with how often each occurs.
fn trigrams(text: &str) -> std::collections::HashMap<String, usize> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let mut counts = std::collections::HashMap::new();
    for three in words.windows(3) {
        *counts.entry(three.join(" ")).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_cut_mid_way_resumes_the_same_task_without_losing_or_repeating_audio() {
    let (_one, server, shots) = browser_scene().await;
    let file = "en_jfk.wav";
    let wav = common::corpus_file(file).canonicalize().unwrap();
    // About 3.5 s of 48 kHz 16-bit audio: the cut comes in the first half of the 11 s speech,
    // and the 3 s without WebSockets fall inside it.
    let result = run(
        &server,
        "micresume",
        &[
            format!("wav={}", wav.display()),
            "drop_after=340000".into(),
            "seconds=12.5".into(),
            format!("screenshot={}", screenshot("page-mic-resume.png", &shots)),
        ],
    )
    .await;
    assert_eq!(
        result["proxy"]["cut"], true,
        "the connection was cut: {result}"
    );
    assert!(
        text(&result, "/duringCut/state").starts_with("Connection lost"),
        "the page said so: {result}"
    );
    assert_eq!(text(&result, "/duringCut/alert"), "", "{result}");
    assert!(number(&result, "/stats/connections") >= 2, "{result}");
    assert_eq!(number(&result, "/stats/streamResumes"), 1, "{result}");

    // One task from start to end: started once, then resumed with the same id.
    let started = result["started"].as_array().expect("stream_started list");
    assert_eq!(started.len(), 2, "{result}");
    let task_id = text(&result, "/taskId");
    assert_eq!(started[0]["task_id"], task_id.as_str());
    assert!(
        started[0].get("resumed").is_none(),
        "absent on a new stream: {result}"
    );
    assert_eq!(started[1]["task_id"], task_id.as_str());
    assert_eq!(started[1]["resumed"], true);
    let received = started[1]["received_bytes"].as_u64().unwrap();
    assert!(
        received > 0,
        "the server kept audio from before the cut: {result}"
    );
    assert_eq!(number(&result, "/stats/streamReceivedAtResume"), received);
    assert!(
        number(&result, "/stats/streamSentAtResume") > 0,
        "audio captured while the link was down was sent after the resume: {result}"
    );

    // Nothing lost, nothing twice: the server heard exactly as much audio as the page
    // captured, and the text has the reference's words once.
    let heard = assert_transcript(&result, file);
    let json: Value =
        serde_json::from_str(&server_rendering(&server, &result, "verbose_json").await)
            .expect("verbose_json");
    let captured = number(&result, "/stats/streamBytes") as f64
        / (2.0 * number(&result, "/stats/streamRate") as f64);
    let duration = json["duration"].as_f64().expect("a duration");
    assert!(
        (duration - captured).abs() < 0.1,
        "the server took in {duration:.3} s, the page captured {captured:.3} s"
    );
    let reference = trigrams(&common::reference(file));
    for (three, n) in trigrams(&heard) {
        assert!(
            n <= reference.get(&three).copied().unwrap_or(1),
            "{three:?} is repeated in {heard:?}"
        );
    }
    assert_eq!(text(&result, "/txt/body"), format!("{heard}\n"));
    assert_eq!(
        text(&result, "/txt/body"),
        server_rendering(&server, &result, "text").await
    );
}

/// The page's language list follows the model chosen: English only for tiny.en (with the hint),
/// every language for the multilingual model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_language_list_follows_the_model_chosen() {
    check_setup();
    let _one = BROWSER.lock().await;
    let server = TestServer::start_with(|c| {
        c.models = vec!["tiny.en".into(), "base-q5_1".into()];
        c.models_dir = common::models_dir();
    })
    .await;
    let result = run(&server, "models", &[]).await;
    let models = result["models"].as_array().expect("models listed");
    let names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["tiny.en", "base-q5_1"], "{result}");
    assert_eq!(
        models[0]["languages"],
        serde_json::json!(["en"]),
        "{result}"
    );
    assert_eq!(models[0]["chosen"], "en", "{result}");
    assert_eq!(models[0]["hint"], true, "{result}");
    let offered = models[1]["languages"].as_array().unwrap();
    assert!(offered.len() > 10, "{result}");
    assert!(offered.contains(&serde_json::json!("zh")), "{result}");
    assert_eq!(models[1]["hint"], false, "{result}");
    server.shutdown().await;
}
