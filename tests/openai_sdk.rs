//! The official `openai` Python SDK against real servers: tests/openai_sdk.py makes the calls
//! and asserts the shapes; this side starts the servers (tiny.en with an API key, base-q5_1
//! multilingual) and scores the texts it prints against the corpus references.

mod common;

use common::server::{TestServer, MULTILINGUAL, TINY};

const KEY: &str = "sdk-test-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_unchanged() {
    let en = TestServer::start_with_pool(TINY.clone(), |c| c.api_keys = vec![KEY.into()]).await;
    let multi = TestServer::start_with_pool(MULTILINGUAL.clone(), |_| {}).await;
    let args = vec![
        en.http_url(),
        KEY.to_string(),
        multi.http_url(),
        common::corpus_dir().display().to_string(),
    ];
    let texts = common::run_python("openai_sdk.py", args, "openai").await;

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
