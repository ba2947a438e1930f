//! OpenAI Realtime transcription (`/v1/realtime?intent=transcription`) with the official
//! `openai` Python SDK's realtime client against a real server (tiny.en, an API key required):
//! tests/realtime_sdk.py makes the calls and asserts the event shapes and order; this side
//! starts the server and scores the transcripts it prints against the corpus references.

mod common;

use common::server::{TestServer, TINY};
use serde_json::Value;

const KEY: &str = "realtime-test-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_realtime_client_transcribes_turns() {
    let server = TestServer::start_with_pool(TINY.clone(), |c| c.api_keys = vec![KEY.into()]).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realtime_sdk.py");
    let args = [
        script.display().to_string(),
        server.http_url(),
        KEY.to_string(),
        common::corpus_dir().display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(&args)
            .output()
            .expect("python3 runs (install Python 3, `pip install openai websockets` and ffmpeg)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "realtime SDK checks failed:\n{stdout}\n{stderr}"
    );
    let texts: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the script's last line is JSON ({e}):\n{stdout}"));

    eprintln!("transcripts: {texts}");
    let committed = texts["commit"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference("en_harvard_birch_canoe.wav"), committed);
    assert!(wer <= 0.3, "commit-ended turn: WER {wer} for {committed:?}");
    // Server VAD cuts the speech into turns and each is read on its own, so allow a little
    // more than a whole-file transcription gets.
    let vad = texts["vad"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference("en_jfk.wav"), vad);
    assert!(wer <= 0.3, "server VAD turns: WER {wer} for {vad:?}");
    server.shutdown().await;
}
