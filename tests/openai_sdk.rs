//! The official `openai` Python SDK against real servers: tests/openai_sdk.py makes the calls
//! and asserts the shapes; this side starts the servers (tiny.en with an API key, base-q5_1
//! multilingual) and scores the texts it prints against the corpus references.

mod common;

use common::server::{TestServer, MULTILINGUAL, TINY};
use serde_json::Value;

const KEY: &str = "sdk-test-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_unchanged() {
    let en = TestServer::start_with_pool(TINY.clone(), |c| c.api_keys = vec![KEY.into()]).await;
    let multi = TestServer::start_with_pool(MULTILINGUAL.clone(), |_| {}).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk.py");
    let args = [
        script.display().to_string(),
        en.http_url(),
        KEY.to_string(),
        multi.http_url(),
        common::corpus_dir().display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(&args)
            .output()
            .expect("python3 runs (install Python 3 and `pip install openai`)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the openai package is missing: pip install openai"
    );
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    let texts: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the script's last line is JSON ({e}):\n{stdout}"));

    let jfk = common::reference("en_jfk.wav");
    for format in ["json", "text", "verbose_json", "stream"] {
        let text = texts[format].as_str().unwrap();
        let wer = earshot::eval::wer(&jfk, text);
        assert!(wer <= 0.2, "{format}: WER {wer} for {text:?}");
    }
    for subtitles in ["srt", "vtt"] {
        let text = texts[subtitles].as_str().unwrap();
        assert!(
            text.to_lowercase().contains("country"),
            "{subtitles}: {text}"
        );
    }
    let de = texts["de"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference("de_test_de.wav"), de);
    assert!(wer <= 0.5, "German WER {wer} for {de:?}");
    // Translated, not transcribed: English function words, none of the French sentence's.
    let fr = texts["fr_translated"].as_str().unwrap().to_lowercase();
    let words: Vec<&str> = fr
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let count = |list: &[&str]| words.iter().filter(|w| list.contains(w)).count();
    assert!(words.len() >= 5, "{fr:?}");
    assert!(
        count(&["the", "and", "of", "he", "it", "becomes", "under"]) >= 2,
        "not English: {fr:?}"
    );
    assert_eq!(
        count(&["le", "des", "et", "il", "sous", "devient"]),
        0,
        "still French: {fr:?}"
    );
    en.shutdown().await;
    multi.shutdown().await;
}
