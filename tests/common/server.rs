//! A real Earshot server for integration tests: in-process, on `127.0.0.1:0`, with the real
//! tiny.en model from the mirror and a fresh data directory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use earshot::inference::pool::{Pool, PoolConfig};
use earshot::server::{self, AppState, ServerConfig};
use tokio::sync::oneshot;

/// One tiny.en pool shared by every server a test binary starts (loading is the slow part).
pub static TINY: LazyLock<Pool> = LazyLock::new(|| {
    Pool::start(PoolConfig {
        model_path: super::model("ggml-tiny.en.bin"),
        workers: 1,
        queue_capacity: 16,
        zh_script: Default::default(),
    })
    .expect("the tiny.en pool starts")
});

/// A multilingual pool (base, q5_1) for tests of other languages and translation.
pub static MULTILINGUAL: LazyLock<Pool> = LazyLock::new(|| {
    Pool::start(PoolConfig {
        model_path: super::model("ggml-base-q5_1.bin"),
        workers: 1,
        queue_capacity: 16,
        zh_script: Default::default(),
    })
    .expect("the base-q5_1 pool starts")
});

/// A running server; shuts down when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state, for looking inside in assertions.
    pub state: Arc<AppState>,
    /// Its data directory (kept alive as long as the server).
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with default settings (batch decoding greedy, see `start_with_pool`).
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts its settings.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_with_pool(TINY.clone(), tweak).await
    }

    /// Starts a server on the given pool (e.g. [`MULTILINGUAL`]) after `tweak`.
    pub async fn start_with_pool(pool: Pool, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("a temp dir");
        let mut config = ServerConfig::for_tests("tiny.en", data_dir.path().to_path_buf());
        config.threads = 2;
        // Greedy batch decoding: these servers test protocols, limits and recovery, and beam 5
        // (the shipped default) costs several times the CPU. tests/accuracy.rs and the tests that
        // run the real binary (cli, cluster) use the default beam; a test may set it in `tweak`.
        config.beam_size = 1;
        tweak(&mut config);
        let vad = Some(super::model("ggml-silero-v6.2.0.bin"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(config, pool, vad).expect("state");
        let (stop, stopped) = oneshot::channel::<()>();
        let st = state.clone();
        let handle = tokio::spawn(async move {
            server::run(listener, st, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            state,
            data_dir,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// `ws://addr/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// `http://addr`, for the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }

    /// Where the data directory is.
    pub fn data_path(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// A small protocol client for tests: JSON in, JSON out, with a hang guard on every read.
// ---------------------------------------------------------------------------------------

/// The client side of a connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest a test waits for any single server message before it fails instead of hanging.
pub const HANG_GUARD: Duration = Duration::from_secs(180);

/// One test client connection.
pub struct Client {
    /// The socket.
    pub ws: Ws,
    /// The `connected` message's `data`.
    pub hello: Value,
}

/// What ended a read: a frame or the end of the connection.
#[derive(Debug)]
pub enum Event {
    /// A JSON text message.
    Json(Value),
    /// A close frame (code, reason).
    Close(u16, String),
    /// The connection ended without a close frame (or with a read error).
    Gone,
}

impl Client {
    /// Connects and reads `connected`.
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        let mut c = Client {
            ws,
            hello: Value::Null,
        };
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        c.hello = hello["data"].clone();
        c
    }

    /// Sends one JSON message.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_string()))
            .await
            .expect("send");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).await.expect("send");
    }

    /// The next message or close, skipping pings and pongs.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let frame = tokio::time::timeout(HANG_GUARD, self.ws.next())
                .await
                .expect("the server answers (hang guard)");
            match frame {
                Some(Ok(Message::Text(t))) => {
                    return Event::Json(serde_json::from_str(&t).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return match frame {
                        Some(f) => Event::Close(u16::from(f.code), f.reason.to_string()),
                        None => Event::Close(u16::from(CloseCode::Status), String::new()),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Event::Gone,
            }
        }
    }

    /// The next JSON message; panics on a close.
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next message, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    /// Reads until `upload_complete`, passing over `chunk_ack`s (the last group's ack may come
    /// first); returns it. Any other message fails the test.
    pub async fn expect_upload_complete(&mut self) -> Value {
        loop {
            let msg = self.recv().await;
            match msg["type"].as_str().unwrap_or_default() {
                "chunk_ack" => {}
                "upload_complete" => return msg,
                other => panic!("unexpected {other}: {msg}"),
            }
        }
    }

    /// The next message, which must be an `error` with `code`; returns its `data`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], "error", "expected error {code}, got {v}");
        assert_eq!(v["data"]["code"], code, "{v}");
        v["data"].clone()
    }

    /// Reads until the connection closes; returns the close code (panics if none came).
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_event().await {
                Event::Json(_) => continue,
                Event::Close(code, reason) => return (code, reason),
                Event::Gone => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Skips progress and segments until `transcription_complete` (returned with the
    /// segments seen on the way). Any other message fails the test.
    pub async fn transcript(&mut self) -> (Vec<Value>, Value) {
        let mut segments = Vec::new();
        loop {
            let msg = self.recv().await;
            match msg["type"].as_str().unwrap_or("") {
                "transcript_segment" => segments.push(msg),
                "transcription_progress" => {}
                "transcription_complete" => return (segments, msg),
                _ => panic!("unexpected message while transcribing: {msg}"),
            }
        }
    }
}

/// MD5 hex.
pub fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// SHA-256 hex.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// Standard base64.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A seed `upload_request` for `data` cut into `chunk`-byte chunks.
pub fn upload_request(name: &str, data: &[u8], chunk: usize) -> Value {
    json!({"type": "upload_request", "data": {
        "file_name": name, "file_size": data.len(), "file_hash": md5_hex(data),
        "chunk_size": chunk, "total_chunks": data.len().div_ceil(chunk), "upload_mode": "chunked"}})
}

/// The seed `upload_chunk` for chunk `i` of `data`.
pub fn upload_chunk(task_id: &str, data: &[u8], chunk: usize, i: usize) -> Value {
    let total = data.len().div_ceil(chunk);
    let c = &data[i * chunk..((i + 1) * chunk).min(data.len())];
    json!({"type": "upload_chunk", "data": {"task_id": task_id, "chunk_index": i,
        "chunk_size": c.len(), "chunk_hash": md5_hex(c), "chunk_data": b64(c),
        "is_last": i + 1 == total}})
}

/// A fast-path binary chunk frame.
/// An `upload_ready`'s task id and chunk window (binary uploads have one).
pub fn task_and_window(ready: &Value) -> (String, u32) {
    let task = ready["data"]["task_id"].as_str().expect("task_id");
    let window = ready["data"]["chunk_window"]
        .as_u64()
        .expect("chunk_window");
    (task.to_string(), window as u32)
}

pub fn binary_chunk(task_id: &str, index: u32, payload: &[u8]) -> Vec<u8> {
    let id = uuid::Uuid::parse_str(task_id).expect("a uuid");
    let mut f = Vec::with_capacity(29 + payload.len());
    f.push(0x01);
    f.extend_from_slice(id.as_bytes());
    f.extend_from_slice(&index.to_le_bytes());
    f.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Asserts a transcript's WER against the corpus reference.
pub fn assert_wer(file: &str, text: &str, max: f64) {
    let wer = earshot::eval::wer(&super::reference(file), text);
    assert!(wer <= max, "WER {wer} > {max} for {file}: {text:?}");
}

/// The stored audio of a finished upload, `data_dir/uploads/<task_id>/audio[.ext]`.
pub fn stored_audio(data_dir: &std::path::Path, task_id: &str) -> Vec<u8> {
    let dir = data_dir.join("uploads").join(task_id);
    let entry = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("audio"))
        .unwrap_or_else(|| panic!("no audio file in {}", dir.display()));
    std::fs::read(entry.path()).unwrap()
}

/// Uploads `data` the seed way (request, each chunk acked in order) up to `upload_complete`;
/// returns the task id.
pub async fn seed_upload(c: &mut Client, name: &str, data: &[u8], chunk: usize) -> String {
    c.send(upload_request(name, data, chunk)).await;
    let ready = c.expect("upload_ready").await;
    let task_id = ready["data"]["task_id"].as_str().unwrap().to_string();
    for i in 0..data.len().div_ceil(chunk) {
        c.send(upload_chunk(&task_id, data, chunk, i)).await;
        let ack = c.expect("chunk_received").await;
        assert_eq!(ack["data"]["chunk_index"], i, "{ack}");
    }
    c.expect("upload_complete").await;
    task_id
}

/// Sends raw request bytes (headers only) and returns what the server answers, up to the end
/// of the JSON body or the connection's close.
pub async fn raw_request(server: &TestServer, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"}}") {
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), socket.read(&mut buf));
        match read.await.expect("the server answers without the body") {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends only the head of a `POST /v1/audio/transcriptions` declaring `len` body bytes, and
/// returns the answer: what a server must decide from `Content-Length` alone.
pub async fn transcription_head_only(server: &TestServer, len: u64) -> String {
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len}\r\n\r\n"
    );
    raw_request(server, &head).await
}
