//! The server end to end over real sockets: seed-protocol upload of a real recording.

mod common;

use common::server::TestServer;
use futures_util::{SinkExt, StreamExt};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn recv_json<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await.expect("socket open").expect("no error") {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_upload_streams_the_transcript_back() {
    let server = TestServer::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await["type"], "connected");
    let data = std::fs::read(common::corpus_file("en_jfk.mp3")).unwrap();
    let chunk = 16 * 1024;
    let total = data.len().div_ceil(chunk);
    let req = json!({"type": "upload_request", "data": {
        "file_name": "en_jfk.mp3", "file_size": data.len(), "file_hash": hex::encode(Md5::digest(&data)),
        "chunk_size": chunk, "total_chunks": total, "upload_mode": "chunked"}});
    ws.send(Message::text(req.to_string())).await.unwrap();
    let ready = recv_json(&mut ws).await;
    assert_eq!(ready["type"], "upload_ready", "{ready}");
    let task_id = ready["data"]["task_id"].as_str().unwrap().to_string();
    for (i, c) in data.chunks(chunk).enumerate() {
        let msg = json!({"type": "upload_chunk", "data": {"task_id": task_id, "chunk_index": i,
            "chunk_size": c.len(), "chunk_hash": hex::encode(Md5::digest(c)),
            "chunk_data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, c),
            "is_last": i == total - 1}});
        ws.send(Message::text(msg.to_string())).await.unwrap();
        let ack = recv_json(&mut ws).await;
        assert_eq!(ack["type"], "chunk_received", "{ack}");
        assert_eq!(ack["data"]["chunk_index"], i);
    }
    assert_eq!(recv_json(&mut ws).await["type"], "upload_complete");
    let mut segments = 0;
    let done = loop {
        let msg = recv_json(&mut ws).await;
        match msg["type"].as_str().unwrap() {
            "transcript_segment" => segments += 1,
            "transcription_progress" => {}
            "transcription_complete" => break msg,
            other => panic!("unexpected {other}: {msg}"),
        }
    };
    assert!(segments >= 1, "segments stream before the result");
    let text = done["data"]["text"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference("en_jfk.mp3"), text);
    assert!(wer <= 0.15, "WER {wer} for {text:?}");
    server.shutdown().await;
}
