//! OpenAI Realtime transcription (`/v1/realtime?intent=transcription`) with the official
//! `openai` Python SDK's realtime client against a real server (tiny.en, an API key required):
//! tests/realtime_sdk.py makes the calls and asserts the event shapes and order; this side
//! starts the server and scores the transcripts it prints against the corpus references.

mod common;

use common::server::{TestServer, TINY};

const KEY: &str = "realtime-test-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_realtime_client_transcribes_turns() {
    let server = TestServer::start_with_pool(TINY.clone(), |c| c.api_keys = vec![KEY.into()]).await;
    let args = vec![
        server.http_url(),
        KEY.to_string(),
        common::corpus_dir().display().to_string(),
    ];
    let texts = common::run_python("realtime_sdk.py", args, "openai").await;
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

/// `session.update` chooses among the served models (tiny.en, the default, and base-q5_1); an
/// unknown name, or a language the model cannot take, is an `error` naming what is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_update_chooses_the_model() {
    let server = TestServer::start_with_pool(TINY.clone(), |c| {
        c.api_keys = vec![KEY.into()];
        c.models = vec!["tiny.en".into(), "base-q5_1".into()];
        c.models_dir = common::models_dir();
    })
    .await;
    let texts = common::run_python("realtime_sdk.py", sdk_args(&server, "models"), "openai").await;
    eprintln!("transcripts: {texts}");
    let zh = texts["zh"].as_str().unwrap();
    let cer = earshot::eval::cer(&common::reference("zh_BAC009S0764W0121.wav"), zh);
    assert!(cer <= 0.4, "base-q5_1 on Mandarin: CER {cer} for {zh:?}");
    let en = texts["en"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference("en_harvard_birch_canoe.wav"), en);
    assert!(wer <= 0.3, "the default model: WER {wer} for {en:?}");
    server.shutdown().await;
}

/// Realtime sessions are admitted against the live capacity WebSocket streams use: with room
/// for one measured session, a second one's first audio is refused with `server_busy` and the
/// close, and the first one's end frees its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_beyond_the_live_capacity_is_refused_busy() {
    let server = TestServer::start_with_pool(TINY.clone(), |c| {
        c.api_keys = vec![KEY.into()];
        c.live_capacity = 0.0;
    })
    .await;
    let texts = common::run_python("realtime_sdk.py", sdk_args(&server, "busy"), "openai").await;
    let reference = common::reference("en_harvard_birch_canoe.wav");
    for key in ["first", "second"] {
        let text = texts[key].as_str().unwrap();
        let wer = earshot::eval::wer(&reference, text);
        assert!(wer <= 0.3, "{key}: WER {wer} for {text:?}");
    }
    // The last session's task ends just after its close.
    for _ in 0..100 {
        if server.state.live_capacity.streams() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.state.live_capacity.streams(),
        0,
        "every share is given back"
    );
    server.shutdown().await;
}

/// Server VAD hears speech, not sound: between loud music, the turns start within the speech
/// and end while the music after it plays (the server's Silero model at work; by level alone
/// the music would be one long turn), and the speech is transcribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_vad_turns_cover_the_speech_between_music() {
    let server = TestServer::start_with_pool(TINY.clone(), |c| c.api_keys = vec![KEY.into()]).await;
    let texts = common::run_python("realtime_sdk.py", sdk_args(&server, "music"), "openai").await;
    eprintln!("transcripts: {texts}");
    let speech = texts["speech"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference("en_jfk.wav"), speech);
    assert!(wer <= 0.3, "speech between music: WER {wer} for {speech:?}");
    server.shutdown().await;
}

fn sdk_args(server: &TestServer, mode: &str) -> Vec<String> {
    vec![
        server.http_url(),
        KEY.to_string(),
        common::corpus_dir().display().to_string(),
        mode.to_string(),
    ]
}

/// What is refused before a session starts: another intent, a plain GET, and (at the
/// connection cap) the upgrade itself, with an OpenAI-shaped `error` event and a 1008 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_a_session_are_openai_shaped() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start_with_pool(TINY.clone(), |c| c.max_connections = 0).await;
    let get = |query: &str| {
        format!("GET /v1/realtime?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    };
    let answer = common::server::raw_request(&server, &get("intent=conversation")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"param\":\"intent\""), "{answer}");
    let answer = common::server::raw_request(&server, &get("intent=transcription")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let url = format!("ws://{}/v1/realtime?intent=transcription", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("an error event before the close");
    };
    let event: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["error"]["code"], "server_busy", "{event}");
    let Some(Ok(Message::Close(Some(frame)))) = ws.next().await else {
        panic!("a close frame after the error");
    };
    assert_eq!(u16::from(frame.code), 1008);
    server.shutdown().await;
}
