//! Live streams that lose their connection, over real sockets with the real model: resumed with
//! the same task id (nothing lost, nothing repeated), finished as interrupted after the grace
//! period, and resumes that must be refused.

mod common;

use std::time::Duration;

use common::server::{TestServer, HANG_GUARD};
use earshot::audio::decode::DecodeLimits;
use earshot::audio::AudioStream;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The tests share one Whisper worker; one at a time keeps each stream's timing its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// 50 ms of 16 kHz mono s16le.
const FRAME: usize = 1600;
/// s16le bytes per second at 16 kHz mono.
const BYTES_PER_SEC: f64 = 32_000.0;

/// `en_jfk.wav` as 16 kHz mono s16le bytes.
fn jfk() -> Vec<u8> {
    let mut audio =
        AudioStream::open(&common::corpus_file("en_jfk.wav"), DecodeLimits::default()).unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = audio.next_chunk().unwrap() {
        for s in chunk {
            bytes.extend(((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
        }
    }
    bytes
}

/// One connection: frames out on the sink, the server's messages read by a task into a channel.
struct Session {
    sink: SplitSink<Ws, Message>,
    messages: tokio::sync::mpsc::UnboundedReceiver<Event>,
    reader: tokio::task::JoinHandle<()>,
}

/// What the server said.
#[derive(Debug)]
enum Event {
    Json(Value),
    Close(u16, String),
}

impl Session {
    async fn connect(url: &str) -> Session {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (sink, stream) = ws.split();
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(read_all(stream, tx));
        let mut s = Session {
            sink,
            messages,
            reader,
        };
        assert_eq!(s.recv().await["type"], "connected");
        s
    }

    async fn send(&mut self, v: Value) {
        self.sink.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        match self.next().await {
            Event::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(HANG_GUARD, self.messages.recv())
            .await
            .expect("the server answers (hang guard)")
            .expect("the connection is open")
    }

    /// `stream_start` → the `stream_started` answer's data (or the error's, when refused).
    async fn start(&mut self, data: Value) -> Value {
        self.send(json!({"type": "stream_start", "data": data}))
            .await;
        self.recv().await
    }

    /// Sends `audio` in 50 ms frames at real-time pace.
    async fn send_audio(&mut self, audio: &[u8]) {
        let started = tokio::time::Instant::now();
        for (i, frame) in audio.chunks(FRAME).enumerate() {
            let due = Duration::from_secs_f64((i * FRAME) as f64 / BYTES_PER_SEC);
            tokio::time::sleep_until(started + due).await;
            let mut bytes = vec![0x02];
            bytes.extend_from_slice(frame);
            self.sink.send(Message::binary(bytes)).await.unwrap();
        }
    }

    /// Drops the socket without `stream_end` or a close frame, as a lost network would.
    fn drop_connection(self) {
        self.reader.abort();
        drop(self.sink);
    }

    /// The messages already read, without waiting.
    fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Event::Json(v)) = self.messages.try_recv() {
            out.push(v);
        }
        out
    }
}

async fn read_all(mut stream: SplitStream<Ws>, tx: tokio::sync::mpsc::UnboundedSender<Event>) {
    while let Some(Ok(msg)) = stream.next().await {
        let event = match msg {
            Message::Text(t) => Event::Json(serde_json::from_str(&t).unwrap()),
            Message::Close(f) => {
                let (code, reason) = f.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                Event::Close(code, reason)
            }
            _ => continue,
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

/// The `(index, data)` of every `transcript_segment` among `messages`.
fn segments(messages: &[Value]) -> Vec<(u64, Value)> {
    messages
        .iter()
        .filter(|m| m["type"] == "transcript_segment")
        .map(|m| (m["data"]["index"].as_u64().unwrap(), m["data"].clone()))
        .collect()
}

/// Waits for the task's result in the registry (the stream finishes on its own).
async fn finished(server: &TestServer, task_id: &str) -> Value {
    let url = format!("{}/v1/tasks/{task_id}", server.http_url());
    let give_up = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if body["status"] != "in_progress" && body["status"] != "queued" {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the task never ended: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pcm_start() -> Value {
    json!({"format": "pcm_s16le", "sample_rate": 16000, "channels": 1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumed_with_its_task_id_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let audio = jfk();
    let cut = audio.len() * 6 / 10 / FRAME * FRAME;

    let mut first = Session::connect(&server.url()).await;
    let started = first.start(pcm_start()).await;
    assert_eq!(started["type"], "stream_started", "{started}");
    let task_id = started["data"]["task_id"].as_str().unwrap().to_string();
    first.send_audio(&audio[..cut]).await;
    // Let the server read what was sent and commit what it can, then lose the connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = segments(&first.drain());
    first.drop_connection();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut second = Session::connect(&server.url()).await;
    let next_index = before.len();
    let resumed = second
        .start(json!({"task_id": task_id, "resume": true, "next_index": next_index}))
        .await;
    assert_eq!(resumed["type"], "stream_started", "{resumed}");
    let data = &resumed["data"];
    assert_eq!(data["task_id"], task_id.as_str());
    assert_eq!(data["resumed"], true, "{resumed}");
    let received = data["received_bytes"].as_u64().unwrap() as usize;
    assert!(
        received > 0 && received <= cut,
        "received {received} of {cut} bytes"
    );
    let committed = data["segments"].as_u64().unwrap() as usize;
    assert!(committed >= next_index, "{committed} < {next_index}");

    // The client sends on from what the server took in.
    second.send_audio(&audio[received..]).await;
    second.send(json!({"type": "stream_end", "data": {}})).await;
    let mut after = Vec::new();
    let complete = loop {
        let msg = second.recv().await;
        match msg["type"].as_str().unwrap() {
            "transcription_complete" => break msg,
            "transcript_segment" | "transcript_partial" | "stream_lag" => after.push(msg),
            other => panic!("unexpected {other}: {msg}"),
        }
    };
    let after = segments(&after);
    let replayed: Vec<u64> = after.iter().map(|(i, _)| *i).collect();
    let expected: Vec<u64> = (next_index as u64..next_index as u64 + after.len() as u64).collect();
    assert_eq!(
        replayed, expected,
        "indices carry on from the client's next_index, once each"
    );

    let done = &complete["data"];
    assert!(done.get("interrupted").is_none(), "{done}");
    let duration = done["duration"].as_f64().unwrap();
    let sent_secs = audio.len() as f64 / BYTES_PER_SEC;
    assert!(
        (duration - sent_secs).abs() < 0.01,
        "the stream holds {duration} s of a {sent_secs} s recording: audio lost or repeated"
    );
    let result: Vec<Value> = done["segments"].as_array().unwrap().clone();
    assert_eq!(result.len(), before.len() + after.len(), "{done}");
    let heard: Vec<&Value> = before.iter().chain(&after).map(|(_, s)| s).collect();
    for (i, (got, seg)) in heard.iter().zip(&result).enumerate() {
        assert_eq!(got["index"], i as u64);
        assert_eq!(
            got["text"], seg["text"],
            "segment {i} as sent and as stored"
        );
    }
    // Forward, not necessarily strictly: the policy moves a word Whisper times before the
    // committed text's end up to that end, so two short segments may start together.
    for pair in result.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let time = |s: &Value, key: &str| s[key].as_f64().unwrap();
        assert!(
            time(a, "start") <= time(b, "start") && time(a, "end") <= time(b, "end"),
            "timestamps go forward: {a} then {b}"
        );
        assert!(time(b, "start") <= time(b, "end"), "{b}");
    }
    let text = done["text"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference("en_jfk.wav"), text);
    assert!(wer <= 0.2, "WER {wer:.3}: {text:?}");
    let status = finished(&server, &task_id).await;
    assert_eq!(status["status"], "completed", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_resumed_in_time_is_stored_as_interrupted_with_its_text() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start_with(|c| c.stream_resume_grace = Duration::from_secs(1)).await;
    let audio = jfk();
    let mut session = Session::connect(&server.url()).await;
    let started = session.start(pcm_start()).await;
    let task_id = started["data"]["task_id"].as_str().unwrap().to_string();
    session
        .send_audio(&audio[..audio.len() / 2 / FRAME * FRAME])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.drop_connection();

    let status = finished(&server, &task_id).await;
    assert_eq!(status["status"], "interrupted", "{status}");
    let text = status["text"].as_str().unwrap();
    assert!(
        text.contains("fellow Americans"),
        "what was received before the drop is the result: {text:?}"
    );

    let mut late = Session::connect(&server.url()).await;
    let refused = late
        .start(json!({"task_id": task_id, "resume": true}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["data"]["code"], "session_not_found");
    assert!(
        refused["data"]["message"]
            .as_str()
            .unwrap()
            .contains("ended"),
        "{refused}"
    );
    late.send(json!({"type": "get_result", "data": {"task_id": task_id}}))
        .await;
    let result = late.recv().await;
    assert_eq!(result["type"], "transcription_complete", "{result}");
    assert_eq!(result["data"]["interrupted"], true, "{result}");
    assert_eq!(result["data"]["text"], text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_are_refused_for_other_keys_unknown_ids_and_ended_streams() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start_with(|c| c.api_keys = vec!["alice".into(), "bob".into()]).await;
    let alice = format!("{}?token=alice", server.url());
    let bob = format!("{}?token=bob", server.url());
    let audio = jfk();

    let mut first = Session::connect(&alice).await;
    let started = first.start(pcm_start()).await;
    let task_id = started["data"]["task_id"].as_str().unwrap().to_string();
    first.send_audio(&audio[..32_000]).await;

    // Another key: the stream is not there for it, attached or not.
    let mut other = Session::connect(&bob).await;
    let refused = other
        .start(json!({"task_id": task_id, "resume": true}))
        .await;
    assert_eq!(refused["data"]["code"], "session_not_found", "{refused}");
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = other
        .start(json!({"task_id": unknown, "resume": true}))
        .await;
    assert_eq!(refused["data"]["code"], "session_not_found", "{refused}");
    let refused = other.start(json!({"resume": true})).await;
    assert_eq!(refused["data"]["code"], "invalid_message", "{refused}");

    // The owner on a second connection while the first is still attached: it takes over, and
    // the first connection is closed saying why.
    let mut second = Session::connect(&alice).await;
    let resumed = second
        .start(json!({"task_id": task_id, "resume": true, "next_index": 0}))
        .await;
    assert_eq!(resumed["data"]["resumed"], true, "{resumed}");
    let received = resumed["data"]["received_bytes"].as_u64().unwrap() as usize;
    let closed = loop {
        match first.next().await {
            Event::Close(code, reason) => break (code, reason),
            Event::Json(_) => continue,
        }
    };
    assert_eq!(closed.0, 1008, "{closed:?}");
    assert!(closed.1.contains("another connection"), "{closed:?}");

    second.send_audio(&audio[received..]).await;
    second.send(json!({"type": "stream_end", "data": {}})).await;
    let complete = loop {
        let msg = second.recv().await;
        if msg["type"] == "transcription_complete" {
            break msg;
        }
    };
    let duration = complete["data"]["duration"].as_f64().unwrap();
    let sent_secs = audio.len() as f64 / BYTES_PER_SEC;
    assert!(
        (duration - sent_secs).abs() < 0.01,
        "{duration} vs {sent_secs}"
    );

    // A finished stream cannot be continued.
    let refused = second
        .start(json!({"task_id": task_id, "resume": true}))
        .await;
    assert_eq!(refused["data"]["code"], "session_not_found", "{refused}");
}
