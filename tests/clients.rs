//! The WebSocket clients (src/client) against the real server over real sockets, with the
//! real tiny.en model: binary and seed uploads, resume after a cut connection, live
//! streaming, and the `earshot upload` command.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::server::TestServer;
use earshot::client::backoff::BackoffConfig;
use earshot::client::stream::{self, StreamEvent, StreamOptions, StreamSource};
use earshot::client::upload::{self, UploadEvent, UploadOptions, UploadProtocol};
use earshot::client::ClientError;
use earshot::domain::TaskId;
use earshot::protocol::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Quick retries so a reconnect costs the test little time.
fn fast_retries() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        jitter: 0.5,
    }
}

fn assert_wer(file: &str, text: &str) {
    let wer = earshot::eval::wer(&common::reference(file), text);
    assert!(wer <= 0.15, "WER {wer} for {file}: {text:?}");
}

/// The server's stored copy of an upload must be the very bytes sent.
fn assert_stored_identical(server: &TestServer, task_id: TaskId, original: &Path) {
    let stored = server
        .state
        .uploads
        .audio_path(task_id)
        .expect("the upload is stored");
    let a = std::fs::read(&stored).unwrap();
    let b = std::fs::read(original).unwrap();
    assert!(
        a == b,
        "stored file differs ({} vs {} bytes)",
        a.len(),
        b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upload_with_many_chunks_in_flight_is_stored_intact_and_transcribed() {
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.wav"); // 352 kB: 43 chunks of 8 KiB, window 16
    let options = UploadOptions {
        chunk_size: 8 * 1024,
        ..UploadOptions::default()
    };
    let mut stored = Vec::new();
    let mut segments = 0;
    let mut completed = false;
    let outcome = upload::upload(&server.url(), &file, &options, |e| match e {
        UploadEvent::Stored { bytes, .. } => stored.push(bytes),
        UploadEvent::Segment(_) => segments += 1,
        UploadEvent::UploadComplete => completed = true,
        _ => {}
    })
    .await
    .expect("upload succeeds");
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(outcome.file_bytes, size);
    assert_eq!(outcome.bytes_sent, size, "nothing resent on a clean link");
    assert_eq!(outcome.reconnects, 0);
    assert!(completed);
    assert!(segments >= 1, "segments are reported before the result");
    assert!(stored.windows(2).all(|w| w[0] <= w[1]), "{stored:?}");
    assert_eq!(stored.last(), Some(&size));
    assert!(
        stored.len() < 43,
        "acks are cumulative (group commit), not one per chunk: {}",
        stored.len()
    );
    assert_wer("en_jfk.wav", &outcome.result.text);
    assert_stored_identical(&server, outcome.task_id, &file);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_protocol_upload_is_transcribed() {
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.mp3");
    let options = UploadOptions {
        protocol: UploadProtocol::Seed,
        chunk_size: 16 * 1024,
        ..UploadOptions::default()
    };
    let mut acks = 0;
    let outcome = upload::upload(&server.url(), &file, &options, |e| {
        if let UploadEvent::Stored { .. } = e {
            acks += 1;
        }
    })
    .await
    .expect("upload succeeds");
    assert_eq!(acks, 5, "one chunk_received per chunk (76 kB / 16 KiB)");
    assert_wer("en_jfk.mp3", &outcome.result.text);
    assert_stored_identical(&server, outcome.task_id, &file);
    server.shutdown().await;
}

/// A TCP proxy in front of `target` that cuts its first connection after `cut_after` bytes
/// from the client, once; later connections pass through untouched.
async fn cut_once_proxy(target: SocketAddr, cut_after: usize) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_flag = cut.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            if std::mem::take(&mut first) {
                let flag = cut_flag.clone();
                tokio::spawn(async move {
                    forward_then_cut(client, server, cut_after).await;
                    flag.store(true, Ordering::SeqCst);
                });
            } else {
                tokio::spawn(async move {
                    let (mut c, mut s) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                });
            }
        }
    });
    (addr, cut)
}

/// Forwards both ways until `limit` client bytes have passed, then drops both sockets.
async fn forward_then_cut(client: TcpStream, server: TcpStream, limit: usize) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut passed = 0;
        while passed < limit {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n.min(limit - passed),
            };
            if server_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
            passed += n;
        }
    };
    let down = tokio::io::copy(&mut server_rx, &mut client_tx);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_resumed_and_only_the_missing_chunks_are_resent() {
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.wav");
    let size = std::fs::metadata(&file).unwrap().len();
    // 22 chunks of 16 KiB; the link dies about 40 % of the way through the first connection.
    let (proxy, was_cut) = cut_once_proxy(server.addr, 140_000).await;
    let options = UploadOptions {
        chunk_size: 16 * 1024,
        backoff: fast_retries(),
        ..UploadOptions::default()
    };
    let mut reconnecting = Vec::new();
    let mut resumed = false;
    let outcome = upload::upload(&format!("ws://{proxy}/"), &file, &options, |e| match e {
        UploadEvent::Reconnecting { error, .. } => reconnecting.push(error.to_string()),
        UploadEvent::Ready { resumed: true, .. } => resumed = true,
        _ => {}
    })
    .await
    .expect("the upload survives the cut");
    assert!(
        was_cut.load(Ordering::SeqCst),
        "the proxy cut the first link"
    );
    assert!(!reconnecting.is_empty() && resumed, "{reconnecting:?}");
    assert!(outcome.reconnects >= 1);
    eprintln!(
        "bytes sent per connection: {:?}",
        outcome.sent_per_connection
    );
    let after = *outcome.sent_per_connection.last().unwrap();
    assert!(
        after < size,
        "after the reconnect only missing chunks go again: {after} of {size} bytes \
         ({:?})",
        outcome.sent_per_connection
    );
    assert!(outcome.bytes_sent >= size);
    assert_wer("en_jfk.wav", &outcome.result.text);
    assert_stored_identical(&server, outcome.task_id, &file);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_finishes_an_upload_whose_chunks_are_all_stored_but_never_finalised() {
    // The state a crash between the last chunk's ack and finalising leaves behind.
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.mp3");
    let data = std::fs::read(&file).unwrap();
    let all = earshot::upload::digest::HashKinds {
        md5: true,
        sha256: true,
        blake3: true,
    };
    let digest = earshot::client::digest::file_digest(&file, all).unwrap();
    let chunk = 32 * 1024u64;
    let plan = earshot::upload::plan::ChunkPlan {
        file_size: data.len() as u64,
        chunk_size: chunk,
        total_chunks: data.len().div_ceil(chunk as usize) as u32,
    };
    let store = &server.state.uploads;
    let task_id = store
        .create(earshot::upload::store::NewUpload {
            file_name: "en_jfk.mp3".into(),
            extension: Some("mp3".into()),
            plan,
            hashes: digest.hashes.clone(),
            transport: earshot::protocol::message::Transport::Json,
            options: Default::default(),
            owner: None,
            client: String::new(),
        })
        .unwrap();
    for (i, c) in data.chunks(chunk as usize).enumerate() {
        store
            .put_chunk(task_id, i as u32, bytes::Bytes::copy_from_slice(c))
            .unwrap();
    }
    let options = UploadOptions {
        protocol: UploadProtocol::Seed,
        chunk_size: chunk,
        ..UploadOptions::default()
    };
    let outcome = upload::resume(&server.url(), task_id, &file, &options, |_| {})
        .await
        .expect("the resumed upload completes");
    assert_eq!(outcome.task_id, task_id);
    assert!(outcome.bytes_sent < data.len() as u64);
    assert_wer("en_jfk.mp3", &outcome.result.text);
    assert_stored_identical(&server, task_id, &file);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_client_gets_the_final_transcript() {
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.wav");
    let mut started = None;
    let mut segments = Vec::new();
    let outcome = stream::stream(
        &server.url(),
        StreamSource::File(file),
        &StreamOptions::default(),
        |e| match e {
            StreamEvent::Started { task_id } => started = Some(task_id),
            StreamEvent::Segment(s) => segments.push(s.text.clone()),
            _ => {}
        },
    )
    .await
    .expect("stream succeeds");
    assert_eq!(started, Some(outcome.task_id));
    assert!(
        (outcome.audio_seconds - 11.0).abs() < 0.1,
        "{}",
        outcome.audio_seconds
    );
    assert_eq!(
        segments.len(),
        outcome.result.segments.len(),
        "every final segment was sent as it committed"
    );
    assert_wer("en_jfk.wav", &outcome.result.text);
    server.shutdown().await;
}

/// Seconds of audio in `en_jfk.wav`.
const JFK_SECONDS: f64 = 11.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_reconnects_and_resumes_without_losing_or_repeating_audio() {
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.wav"); // sent as f32: 704 kB
    let (proxy, was_cut) = cut_once_proxy(server.addr, 300_000).await;
    let options = StreamOptions {
        backoff: fast_retries(),
        ..StreamOptions::default()
    };
    let (mut started, mut resumed, mut reconnecting) = (None, None, Vec::new());
    let mut segments = Vec::new();
    let outcome = stream::stream(
        &format!("ws://{proxy}/"),
        StreamSource::File(file),
        &options,
        |e| match e {
            StreamEvent::Started { task_id } => started = Some(task_id),
            StreamEvent::Resumed {
                task_id,
                received_bytes,
            } => resumed = Some((task_id, received_bytes)),
            StreamEvent::Reconnecting { error, .. } => reconnecting.push(error.to_string()),
            StreamEvent::Segment(s) => segments.push((s.index, s.text.clone())),
            _ => {}
        },
    )
    .await
    .expect("the stream survives the cut");
    assert!(
        was_cut.load(Ordering::SeqCst),
        "the proxy cut the first link"
    );
    assert!(!reconnecting.is_empty(), "no reconnect reported");
    let (task_id, received) = resumed.expect("the stream was resumed");
    assert_eq!(Some(task_id), started);
    assert_eq!(task_id, outcome.task_id, "one task across both connections");
    assert!(received > 0 && received < 300_000, "{received}");
    let duration = outcome.result.duration;
    assert!(
        (duration - JFK_SECONDS).abs() < 0.01,
        "the server holds {duration} s of an {JFK_SECONDS} s clip: audio lost or repeated"
    );
    assert!((outcome.audio_seconds - JFK_SECONDS).abs() < 0.01);
    let indices: Vec<u32> = segments.iter().map(|(i, _)| *i).collect();
    let expected: Vec<u32> = (0..outcome.result.segments.len() as u32).collect();
    assert_eq!(indices, expected, "every segment once, in order");
    for ((_, text), stored) in segments.iter().zip(&outcome.result.segments) {
        assert_eq!(text, &stored.text);
    }
    assert_wer("en_jfk.wav", &outcome.result.text);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_stream_reconnects_by_itself_after_a_cut() {
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.wav");
    let (proxy, was_cut) = cut_once_proxy(server.addr, 300_000).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args(["stream", &format!("ws://{proxy}/")])
        .arg(&file)
        .args(["--format", "verbose_json"])
        .output()
        .await
        .expect("earshot runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "earshot stream failed: {stderr}");
    assert!(
        was_cut.load(Ordering::SeqCst),
        "the proxy cut the first link"
    );
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(stderr.contains("resumed stream"), "{stderr}");
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is the verbose JSON transcript");
    let duration = result["duration"].as_f64().unwrap();
    assert!((duration - JFK_SECONDS).abs() < 0.01, "{duration}");
    let text = result["text"].as_str().unwrap();
    assert_wer("en_jfk.wav", text);
    // Segments printed on stderr as they committed: each once.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("reconnecting") && !l.contains("resumed stream"))
        .collect();
    let segments = result["segments"].as_array().unwrap();
    assert_eq!(lines.len(), segments.len(), "{stderr}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pcm_stream_from_a_reader_is_transcribed() {
    let server = TestServer::start().await;
    let mut reader = hound::WavReader::open(common::corpus_file("en_jfk.wav")).unwrap();
    let pcm: Vec<u8> = reader
        .samples::<i16>()
        .flat_map(|s| s.unwrap().to_le_bytes())
        .collect();
    let source = StreamSource::RawS16 {
        reader: Box::new(std::io::Cursor::new(pcm)),
        sample_rate: 16_000,
        channels: 1,
    };
    let outcome = stream::stream(&server.url(), source, &StreamOptions::default(), |_| {})
        .await
        .expect("stream succeeds");
    assert_wer("en_jfk.wav", &outcome.result.text);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_audio_fails_with_the_servers_reason() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.mp3");
    std::fs::write(&path, "these are words, not sound ".repeat(200)).unwrap();
    let err = upload::upload(&server.url(), &path, &UploadOptions::default(), |_| {})
        .await
        .expect_err("text is not audio");
    assert!(
        matches!(
            err,
            ClientError::TranscriptionFailed {
                code: ErrorCode::UnsupportedAudio,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_ends_in_a_clear_error_after_the_retries() {
    // A port that was just free: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let options = UploadOptions {
        max_retries: 2,
        backoff: fast_retries(),
        ..UploadOptions::default()
    };
    let mut retries = 0;
    let err = upload::upload(
        &format!("ws://{addr}/"),
        &common::corpus_file("en_jfk.mp3"),
        &options,
        |e| {
            if let UploadEvent::Reconnecting { .. } = e {
                retries += 1;
            }
        },
    )
    .await
    .expect_err("nothing listens");
    assert_eq!(retries, 2);
    assert!(
        matches!(&err, ClientError::GaveUp { attempts: 3, last, .. }
            if matches!(**last, ClientError::Connect { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_upload_prints_a_json_summary() {
    let server = TestServer::start().await;
    let file = common::corpus_file("en_jfk.mp3");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args(["upload", &server.url()])
        .arg(&file)
        .args(["--json", "--chunk-size", "16KiB"])
        .output()
        .await
        .expect("earshot runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "earshot upload failed: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(summary["bytes"], size);
    let task_id = summary["task_id"].as_str().expect("task_id");
    TaskId::parse(task_id).expect("a task id");
    assert!(summary["upload_seconds"].as_f64().unwrap() >= 0.0);
    assert!(summary["upload_mb_per_s"].is_number());
    assert!(summary["transcription_seconds"].as_f64().unwrap() > 0.0);
    assert!(!summary["segments"].as_array().unwrap().is_empty());
    assert_wer("en_jfk.mp3", summary["text"].as_str().unwrap());

    // A refused request is one clear line on stderr and a non-zero exit.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args(["upload", &server.url()])
        .arg(&file)
        .args(["--chunk-size", "64MiB"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("chunk_size"), "{stderr}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_retried_after_the_wait_it_asks_for() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start_with(|c| c.max_uploads = 1).await;
    // Another client holds the only upload slot.
    let (mut hog, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let _connected = hog.next().await.unwrap().unwrap();
    let request = serde_json::json!({"type": "upload_request", "data": {
        "file_name": "x.wav", "file_size": 10, "file_hash": "00000000000000000000000000000000",
        "chunk_size": 10, "total_chunks": 1, "upload_mode": "chunked"}});
    hog.send(Message::text(request.to_string())).await.unwrap();
    let ready = hog.next().await.unwrap().unwrap();
    assert!(
        ready.to_text().unwrap().contains("upload_ready"),
        "{ready:?}"
    );

    let mut hog = Some(hog);
    let mut busy = 0;
    let file = common::corpus_file("en_jfk.mp3");
    let outcome = upload::upload(&server.url(), &file, &UploadOptions::default(), |e| {
        if let UploadEvent::Reconnecting {
            error:
                ClientError::Server {
                    code: ErrorCode::Busy,
                    retry_after_ms: Some(ms),
                    ..
                },
            delay,
            ..
        } = e
        {
            assert_eq!(
                delay,
                Duration::from_millis(*ms),
                "the server's wait is used"
            );
            busy += 1;
            // The other client leaves while we wait: its slot frees up.
            drop(hog.take());
        }
    })
    .await
    .expect("the upload goes through once the slot is free");
    assert_eq!(busy, 1);
    assert_wer("en_jfk.mp3", &outcome.result.text);
    server.shutdown().await;
}
