//! Limits over real sockets: upload and connection caps, a client that never reads, many
//! clients at once, keepalive, and graceful shutdown.

mod common;

use std::time::Duration;

use common::server::{
    assert_wer, b64, md5_hex, upload_chunk, upload_request, Client, Event, TestServer, HANG_GUARD,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Polls `cond` every 20 ms until it holds; panics after the hang guard.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_slots_are_capped_and_freed_by_a_disconnect() {
    let server = TestServer::start_with(|c| c.max_uploads = 1).await;
    let data = vec![3u8; 5000];
    let mut a = Client::connect(&server.url()).await;
    a.send(upload_request("a.bin", &data, 1000)).await;
    a.expect("upload_ready").await;

    let mut b = Client::connect(&server.url()).await;
    b.send(upload_request("b.bin", &data, 1000)).await;
    let busy = b.expect_error("busy").await;
    assert!(busy["retry_after_ms"].as_u64().unwrap() > 0, "{busy}");

    drop(a); // its slot is released when the server notices the connection is gone
    let mut tries = 0;
    loop {
        b.send(upload_request("b.bin", &data, 1000)).await;
        let msg = b.recv().await;
        if msg["type"] == "upload_ready" {
            break;
        }
        assert_eq!(msg["data"]["code"], "busy", "{msg}");
        tries += 1;
        assert!(tries < 500, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_busy_and_1008() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let a = Client::connect(&server.url()).await;
    let _b = Client::connect(&server.url()).await;
    let (mut c, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let first = c.next().await.unwrap().unwrap();
    let v: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["data"]["code"], "busy");
    assert!(v["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    match c.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected close 1008, got {other:?}"),
    }
    drop(a);
    // Once the server has let go of `a`, a newcomer is welcome again.
    let mut tries = 0;
    loop {
        let (mut c, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        let first = c.next().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        if v["type"] == "connected" {
            break;
        }
        tries += 1;
        assert!(tries < 500, "the connection slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_without_hurting_others() {
    let server = TestServer::start_with(|c| {
        c.ping_timeout = Duration::from_secs(2);
        c.max_connections = 8;
    })
    .await;
    // A finished task to ask about: a file that is not audio fails fast, without Whisper.
    let mut by = Client::connect(&server.url()).await;
    let junk = vec![9u8; 2000];
    by.send(
        json!({"type": "upload_request", "data": {"file_name": "junk.wav",
        "file_size": junk.len(), "file_hash": md5_hex(&junk), "file_data": b64(&junk)}}),
    )
    .await;
    let task = by.expect("upload_ready").await["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    by.expect("upload_complete").await;
    by.expect_error("unsupported_audio").await;
    let ask = json!({"type": "get_result", "data": {"task_id": task}}).to_string();

    // The slow client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (slow, _) = tokio_tungstenite::client_async(server.url(), tcp)
        .await
        .unwrap();
    let (mut sink, stream) = slow.split();
    let flood = {
        let ask = ask.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            for _ in 0..50_000 {
                if sink.feed(Message::text(ask.clone())).await.is_err() {
                    break;
                }
                sent += 1;
                if sent.is_multiple_of(100) && sink.flush().await.is_err() {
                    break;
                }
            }
            let _ = sink.flush().await;
            sent
        })
    };
    let slots = || server.state.connection_slots.available_permits();
    eventually("the slow client is connected", || slots() == 8 - 2).await;

    // While it is stuck, the server keeps no growing pile of work for it, and others are served.
    let mut max_tasks = 0;
    for _ in 0..10 {
        max_tasks = max_tasks.max(server.state.tracker.len());
        by.send_text(&ask).await;
        by.expect_error("unsupported_audio").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        max_tasks < 20,
        "{max_tasks} tasks tracked: work piles up for a client that does not read"
    );
    // The stuck client is eventually let go (its sends time out after ping_timeout).
    eventually("the slow client is dropped", || slots() == 8 - 1).await;
    tokio::time::timeout(HANG_GUARD, flood)
        .await
        .expect("the flood ends")
        .unwrap();
    // Reading now: what was queued arrives, then the connection ends.
    let mut stream = stream;
    let ended = tokio::time::timeout(HANG_GUARD, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the slow connection ends");
    by.send_text(&ask).await;
    by.expect_error("unsupported_audio").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_at_once_all_get_their_transcript() {
    let server = TestServer::start().await;
    // Every tenth client sends speech (Whisper runs, queued behind the processing slots);
    // the others send a recording of background noise, which the VAD finds empty. Both
    // are real files with known transcripts, and Whisper time stays affordable.
    let speech = "en_harvard_birch_canoe.wav";
    let noise = "noise_pico_empty.wav";
    let url = server.url();
    let clients: Vec<_> = (0..50)
        .map(|n| {
            let name = if n % 10 == 0 { speech } else { noise };
            let data = std::fs::read(common::corpus_file(name)).unwrap();
            let url = url.clone();
            tokio::spawn(async move { (name, one_upload(&url, &data, n % 2 == 0).await) })
        })
        .collect();
    let mut tasks = std::collections::HashSet::new();
    for c in clients {
        let (name, (task, text)) = c.await.expect("client task");
        assert_wer(name, &text, 0.15);
        assert!(tasks.insert(task), "every upload gets its own task");
    }
    assert_eq!(tasks.len(), 50);
    server.shutdown().await;
}

/// One client's upload (chunked or single), retrying while the server says busy.
async fn one_upload(url: &str, data: &[u8], chunked: bool) -> (String, String) {
    let mut c = Client::connect(url).await;
    let chunk = 64 * 1024;
    let request = if chunked {
        upload_request("birch.wav", data, chunk)
    } else {
        json!({"type": "upload_request", "data": {"file_name": "birch.wav",
            "file_size": data.len(), "file_hash": md5_hex(data), "file_data": b64(data)}})
    };
    let task = loop {
        c.send(request.clone()).await;
        let msg = c.recv().await;
        if msg["type"] == "upload_ready" {
            break msg["data"]["task_id"].as_str().unwrap().to_string();
        }
        assert_eq!(msg["data"]["code"], "busy", "{msg}");
        let wait = msg["data"]["retry_after_ms"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(wait)).await;
    };
    if chunked {
        for i in 0..data.len().div_ceil(chunk) {
            c.send(upload_chunk(&task, data, chunk, i)).await;
            c.expect("chunk_received").await;
        }
    }
    c.expect("upload_complete").await;
    let (_, done) = c.transcript().await;
    (task, done["data"]["text"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_keeps_answering_clients_and_drops_silent_ones() {
    let server = TestServer::start_with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.ping_timeout = Duration::from_secs(1);
    })
    .await;
    // A silent peer: completes the handshake, then never reads or writes its socket.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    handshake(&mut silent, server.addr).await;
    // A live client reads all the while (answering pings) for several timeouts.
    let mut live = Client::connect(&server.url()).await;
    let mut pings = 0;
    let watch = tokio::time::sleep(Duration::from_secs(4));
    tokio::pin!(watch);
    loop {
        tokio::select! {
            _ = &mut watch => break,
            frame = live.ws.next() => match frame {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("a live client is left alone, got {other:?}"),
            }
        }
    }
    assert!(pings >= 2, "the server pings ({pings})");
    let unknown = uuid::Uuid::new_v4().to_string();
    live.send(json!({"type": "get_result", "data": {"task_id": unknown}}))
        .await;
    live.expect_error("session_not_found").await;

    // The silent one was closed for not answering: its bytes end with a close frame (1008).
    // It only reads now, never writes, so no reply of its own can reset the connection.
    let mut bytes = Vec::new();
    tokio::time::timeout(HANG_GUARD, silent.read_to_end(&mut bytes))
        .await
        .expect("the server ends the silent connection")
        .unwrap();
    let frames = server_frames(&bytes);
    assert_eq!(frames.first().map(|f| f.0), Some(0x1), "connected first");
    assert!(frames.iter().any(|f| f.0 == 0x9), "pings were sent");
    let (op, payload) = frames.last().expect("frames").clone();
    assert_eq!(op, 0x8, "the last frame is a close");
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    assert_eq!(code, 1008, "{}", String::from_utf8_lossy(&payload[2..]));
    assert!(String::from_utf8_lossy(&payload[2..]).contains("ping"));
    server.shutdown().await;
}

/// A client handshake by hand, reading exactly the response head.
async fn handshake(tcp: &mut tokio::net::TcpStream, addr: std::net::SocketAddr) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// Splits unmasked server→client WebSocket frames into (opcode, payload).
fn server_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let op = b[0] & 0x0f;
        let (len, head) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(b[1] & 0x80 == 0, "server frames are not masked");
        out.push((op, b[head..head + len].to_vec()));
        b = &b[head + len..];
    }
    assert!(b.is_empty(), "whole frames");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye_and_closes_1001() {
    let server = TestServer::start().await;
    let data = vec![5u8; 4000];
    let mut idle = Client::connect(&server.url()).await;
    let mut uploading = Client::connect(&server.url()).await;
    uploading.send(upload_request("u.bin", &data, 1000)).await;
    let task = uploading.expect("upload_ready").await["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    uploading.send(upload_chunk(&task, &data, 1000, 0)).await;
    uploading.expect("chunk_received").await;
    let stopping = tokio::spawn(server.shutdown());
    for c in [&mut idle, &mut uploading] {
        let bye = c.expect("server_shutdown").await;
        assert!(bye["data"]["message"].as_str().unwrap().contains("resume"));
        let (code, _) = c.expect_close().await;
        assert_eq!(code, 1001);
        assert!(matches!(c.next_event().await, Event::Gone));
    }
    tokio::time::timeout(HANG_GUARD, stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
}
