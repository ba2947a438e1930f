//! Hardening over real sockets: clients that hold upload slots or quota without sending data,
//! guessed and foreign task ids, a full disk, a binary upload resumed with the seed protocol,
//! and `upload_finish` always answered. Real server on 127.0.0.1:0, real tiny.en, real corpus.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::server::{
    b64, binary_chunk, md5_hex, seed_upload, transcription_head_only, upload_chunk, upload_request,
    Client, TestServer,
};
use earshot::client::upload::{UploadOptions, UploadProtocol};

const JFK: &str = "en_jfk.wav";

fn jfk() -> Vec<u8> {
    std::fs::read(common::corpus_file(JFK)).unwrap()
}

/// A connection presenting `key` (the `?token=` form browsers use).
async fn connect_as(server: &TestServer, key: &str) -> Client {
    Client::connect(&format!("{}?token={key}", server.url())).await
}

/// An `upload_request` that declares `size` bytes in 1 MiB chunks (no data needs to follow).
fn declared(size: u64) -> Value {
    let chunk = 1u64 << 20;
    json!({"type": "upload_request", "data": {
        "file_name": "big.wav", "file_size": size, "file_hash": "0".repeat(32),
        "chunk_size": chunk, "total_chunks": size.div_ceil(chunk), "upload_mode": "chunked"}})
}

/// Asks for an upload until the server takes it (or `within` runs out); returns the first
/// answer and the `upload_ready` that came in the end.
async fn request_until_ready(c: &mut Client, request: &Value, within: Duration) -> (Value, Value) {
    let deadline = Instant::now() + within;
    c.send(request.clone()).await;
    let first = c.recv().await;
    let mut answer = first.clone();
    while answer["type"] != "upload_ready" {
        assert_eq!(answer["data"]["code"], "busy", "{answer}");
        assert!(
            Instant::now() < deadline,
            "still busy after {within:?}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.send(request.clone()).await;
        answer = c.recv().await;
    }
    (first, answer)
}

/// Finishes a seed upload that already has its `upload_ready`.
async fn send_seed_chunks(c: &mut Client, task_id: &str, data: &[u8], chunk: usize) {
    for i in 0..data.len().div_ceil(chunk) {
        c.send(upload_chunk(task_id, data, chunk, i)).await;
        c.expect("chunk_received").await;
    }
    c.expect("upload_complete").await;
}

fn task_of(msg: &Value) -> String {
    msg["data"]["task_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_uploads_give_their_slots_back() {
    let server = TestServer::start_with(|c| {
        c.max_uploads = 5;
        c.max_uploads_per_client = 0;
        c.upload_idle_timeout = Duration::from_secs(1);
    })
    .await;
    // The hog takes every slot and then sends nothing, while answering pings.
    let mut hog = Client::connect(&server.url()).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        hog.send(declared(1 << 20)).await;
        held.push(task_of(&hog.expect("upload_ready").await));
    }
    let data = jfk();
    let mut other = Client::connect(&server.url()).await;
    let request = upload_request(JFK, &data, 64 * 1024);
    let (first, ready) = request_until_ready(&mut other, &request, Duration::from_secs(20)).await;
    assert_eq!(
        first["data"]["code"], "busy",
        "the hog held every slot: {first}"
    );
    send_seed_chunks(&mut other, &task_of(&ready), &data, 64 * 1024).await;
    let (_, done) = other.transcript().await;
    common::server::assert_wer(JFK, done["data"]["text"].as_str().unwrap(), 0.2);
    // The hog's uploads were only let go of, not lost: each one resumes.
    hog.send(json!({"type": "upload_resume", "data": {"task_id": held[0]}}))
        .await;
    let resumed = hog.expect("upload_ready").await;
    assert_eq!(resumed["data"]["received_chunks"], 0, "{resumed}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_upload_slot() {
    let server = TestServer::start_with(|c| {
        c.api_keys = vec!["alice".into(), "bob".into()];
        c.max_uploads = 5;
        c.max_uploads_per_client = 3;
        c.upload_idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let mut alice = connect_as(&server, "alice").await;
    for _ in 0..3 {
        alice.send(declared(1 << 20)).await;
        alice.expect("upload_ready").await;
    }
    alice.send(declared(1 << 20)).await;
    let refused = alice.expect_error("busy").await;
    assert!(
        refused["message"].as_str().unwrap().contains("this client"),
        "{refused}"
    );
    // Alice's second connection counts against the same share.
    let mut alice2 = connect_as(&server, "alice").await;
    alice2.send(declared(1 << 20)).await;
    alice2.expect_error("busy").await;
    // Bob is served at once, with the slots Alice could not take.
    let data = jfk();
    let mut bob = connect_as(&server, "bob").await;
    let task_id = seed_upload(&mut bob, JFK, &data, 64 * 1024).await;
    let (_, done) = bob.transcript().await;
    assert_eq!(task_of(&done), task_id);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_sizes_alone_cannot_fill_the_quota() {
    let server = TestServer::start_with(|c| {
        c.disk_quota_bytes = bytesize::ByteSize::mib(100);
        c.disk_quota_per_client = bytesize::ByteSize::mib(60);
        c.reservation_ttl = Duration::from_secs(1);
        c.api_keys = vec!["alice".into(), "bob".into()];
    })
    .await;
    let mut alice = connect_as(&server, "alice").await;
    alice.send(declared(50 << 20)).await;
    let hogged = task_of(&alice.expect("upload_ready").await);
    alice.send(declared(50 << 20)).await;
    let share = alice.expect_error("quota_exceeded").await;
    assert!(
        share["message"].as_str().unwrap().contains("share"),
        "{share}"
    );
    let mut bob = connect_as(&server, "bob").await;
    bob.send(declared(50 << 20)).await;
    bob.expect("upload_ready").await;
    bob.send(declared(1 << 20)).await;
    bob.expect_error("quota_exceeded").await;
    // Nobody sends anything: after the reservation TTL the declared sizes count no more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let data = jfk();
    let task_id = seed_upload(&mut bob, JFK, &data, 64 * 1024).await;
    let (_, done) = bob.transcript().await;
    assert_eq!(task_of(&done), task_id);
    // Alice's idle upload takes its room back with its next chunk (there is room again).
    let chunk = vec![7u8; 1 << 20];
    alice
        .send(
            json!({"type": "upload_chunk", "data": {"task_id": hogged, "chunk_index": 0,
            "chunk_size": chunk.len(), "chunk_hash": md5_hex(&chunk), "chunk_data": b64(&chunk)}}),
        )
        .await;
    alice.expect("chunk_received").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_ids_are_refused_and_tasks_belong_to_their_key() {
    let server = TestServer::start_with(|c| c.api_keys = vec!["alice".into(), "bob".into()]).await;
    let mut alice = connect_as(&server, "alice").await;
    // A guessable id is refused before any task exists.
    let nil = "00000000-0000-0000-0000-000000000000";
    let samples: Vec<u8> = [0.0f32; 1600]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    alice
        .send(
            json!({"type": "audio_segment", "data": {"task_id": nil, "segment_index": 0,
            "is_final": true, "audio_data": b64(&samples)}}),
        )
        .await;
    let e = alice.expect_error("invalid_message").await;
    assert!(e["message"].as_str().unwrap().contains("version 4"), "{e}");
    assert!(server
        .state
        .tasks
        .snapshot(nil.parse().unwrap())
        .await
        .is_none());

    // Alice's upload, transcribed.
    let data = jfk();
    let task_id = seed_upload(&mut alice, JFK, &data, 64 * 1024).await;
    alice.transcript().await;
    // Bob knows the id but sees nothing, on every path.
    let mut bob = connect_as(&server, "bob").await;
    for ty in ["get_result", "upload_resume"] {
        bob.send(json!({"type": ty, "data": {"task_id": task_id}}))
            .await;
        let e = bob.expect_error("session_not_found").await;
        assert!(!e.to_string().contains("en_jfk"), "{e}");
    }
    bob.send(upload_chunk(&task_id, &data, 64 * 1024, 0)).await;
    bob.expect_error("session_not_found").await;
    bob.send(json!({"type": "upload_finish", "data": {"task_id": task_id,
        "file_hash": md5_hex(&data)}}))
        .await;
    bob.expect_error("session_not_found").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tasks/{task_id}", server.http_url());
    let as_bob = http.get(&url).bearer_auth("bob").send().await.unwrap();
    assert_eq!(as_bob.status(), 404);
    let as_alice = http.get(&url).bearer_auth("alice").send().await.unwrap();
    assert_eq!(as_alice.status(), 200);
    let body: Value = as_alice.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    // Alice still reads her own result over the WebSocket.
    alice
        .send(json!({"type": "get_result", "data": {"task_id": task_id}}))
        .await;
    alice.expect("transcription_complete").await;
    server.shutdown().await;
}

/// A binary upload without its hash: `total` chunks of `chunk` bytes, the first `sent` sent
/// and acknowledged, then the connection dropped before `upload_finish`.
async fn interrupted_binary_upload(
    server: &TestServer,
    data: &[u8],
    chunk: usize,
    sent: usize,
) -> String {
    let mut c = Client::connect(&server.url()).await;
    c.send(json!({"type": "upload_request", "data": {"file_name": JFK,
        "file_size": data.len(), "chunk_size": chunk, "total_chunks": data.len().div_ceil(chunk),
        "upload_mode": "chunked", "transport": "binary"}}))
        .await;
    let task_id = task_of(&c.expect("upload_ready").await);
    for (i, piece) in data.chunks(chunk).take(sent).enumerate() {
        c.send_binary(binary_chunk(&task_id, i as u32, piece)).await;
    }
    loop {
        let ack = c.expect("chunk_ack").await;
        if ack["data"]["received_chunks"] == sent {
            break;
        }
    }
    task_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upload_resumed_with_the_seed_protocol_completes() {
    let server = TestServer::start().await;
    let data = jfk();
    let chunk = 64 * 1024;
    // A raw seed client is told what is missing instead of being left waiting.
    let raw = interrupted_binary_upload(&server, &data, chunk, 3).await;
    let mut c = Client::connect(&server.url()).await;
    c.send(json!({"type": "upload_resume", "data": {"task_id": raw}}))
        .await;
    let ready = c.expect("upload_ready").await;
    assert_eq!(ready["data"]["awaiting_hash"], true, "{ready}");
    let total = data.len().div_ceil(chunk);
    for i in 3..total {
        c.send(upload_chunk(&raw, &data, chunk, i)).await;
        c.expect("chunk_received").await;
    }
    let e = c.expect_error("not_ready").await;
    assert!(
        e["message"].as_str().unwrap().contains("upload_finish"),
        "{e}"
    );
    c.send(json!({"type": "upload_finish", "data": {"task_id": raw, "file_hash": md5_hex(&data)}}))
        .await;
    c.expect("upload_complete").await;
    c.transcript().await;

    // Earshot's own client, resuming with --protocol seed, finishes by itself.
    let task_id = interrupted_binary_upload(&server, &data, chunk, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(JFK);
    std::fs::write(&file, &data).unwrap();
    let options = UploadOptions {
        protocol: UploadProtocol::Seed,
        chunk_size: chunk as u64,
        ..UploadOptions::default()
    };
    let id = earshot::domain::TaskId::parse(&task_id).unwrap();
    let url = server.url();
    let resumed = earshot::client::upload::resume(&url, id, &file, &options, |_| {});
    let outcome = tokio::time::timeout(Duration::from_secs(120), resumed)
        .await
        .expect("the resumed upload finishes (it used to hang)")
        .expect("the resumed upload succeeds");
    common::server::assert_wer(JFK, &outcome.transcript().text(), 0.2);
    assert_eq!(
        common::server::stored_audio(&server.data_path(), &task_id),
        data
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_finish_is_answered() {
    let server = TestServer::start().await;
    let data = jfk();
    let chunk = 128 * 1024;
    let task_id = interrupted_binary_upload(&server, &data, chunk, 1).await;
    let mut c = Client::connect(&server.url()).await;
    let blake3 = blake3::hash(&data).to_hex().to_string();
    let finish =
        json!({"type": "upload_finish", "data": {"task_id": task_id, "file_blake3": blake3}});
    // Incomplete, nothing in flight: the answer says what is stored.
    c.send(finish.clone()).await;
    let ack = c.expect("chunk_ack").await;
    assert_eq!(ack["data"]["received_chunks"], 1, "{ack}");
    for (i, piece) in data.chunks(chunk).enumerate().skip(1) {
        c.send_binary(binary_chunk(&task_id, i as u32, piece)).await;
    }
    loop {
        let msg = c.recv().await;
        if msg["type"] == "upload_complete" {
            break;
        }
        assert_eq!(msg["type"], "chunk_ack", "{msg}");
    }
    // A late duplicate after completion is answered too.
    c.send(finish).await;
    loop {
        let msg = c.recv().await;
        if msg["type"] == "chunk_ack" {
            assert_eq!(msg["data"]["received_chunks"], data.len().div_ceil(chunk));
            break;
        }
        assert!(
            msg["type"].as_str().unwrap().starts_with("transcri"),
            "{msg}"
        );
    }
    server.shutdown().await;
}

/// A small file system for the data directory: a tmpfs of `mib` MiB mounted by the test (it
/// runs as root in CI). Unmounted when dropped.
struct SmallDisk {
    /// The mount point (inside a temp dir).
    path: PathBuf,
    /// Keeps the mount point's parent alive.
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test mounts a small tmpfs and must run as root (CI does); run it with sudo"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs failed");
        SmallDisk { path, _dir: dir }
    }

    /// Fills the disk with a file until about `left` bytes are free.
    fn fill(&self, left: u64) -> PathBuf {
        let free = earshot::upload::store::free_bytes(&self.path).unwrap();
        let filler = self.path.join("filler");
        let f = std::fs::File::create(&filler).unwrap();
        let mut w = std::io::BufWriter::new(f);
        let block = vec![1u8; 64 * 1024];
        let mut written = 0;
        while written + left < free {
            use std::io::Write;
            if w.write_all(&block).is_err() {
                break;
            }
            written += block.len() as u64;
        }
        drop(w);
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

fn data_dir_on(disk: &Path) -> PathBuf {
    let dir = disk.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_cleanly_and_what_failed_is_freed() {
    let disk = SmallDisk::mount(24);
    let data_dir = data_dir_on(&disk.path);
    let server = TestServer::start_with(|c| {
        c.data_dir = data_dir.clone();
        c.min_free_disk = bytesize::ByteSize::mib(2);
    })
    .await;
    let mut c = Client::connect(&server.url()).await;
    // More than the disk holds: refused up front, saying why, without OS details.
    c.send(declared(40 << 20)).await;
    let e = c.expect_error("quota_exceeded").await;
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("disk space"), "{e}");
    assert!(
        !message.contains("os error") && !message.contains("/"),
        "{e}"
    );
    let head = transcription_head_only(&server, 31457280).await;
    assert!(head.starts_with("HTTP/1.1 507"), "{head}");
    assert!(head.contains("quota_exceeded"), "{head}");

    // Accepted, then the disk fills up under it: refused, and the upload's bytes are freed.
    let big = vec![3u8; 8 << 20];
    let chunk = 1 << 20;
    c.send(upload_request("big.wav", &big, chunk)).await;
    let task_id = task_of(&c.expect("upload_ready").await);
    c.send(upload_chunk(&task_id, &big, chunk, 0)).await;
    c.expect("chunk_received").await;
    let filler = disk.fill(256 * 1024);
    let mut refused = None;
    for i in 1..8 {
        c.send(upload_chunk(&task_id, &big, chunk, i)).await;
        let msg = c.recv().await;
        if msg["type"] == "error" {
            refused = Some(msg);
            break;
        }
    }
    let refused = refused.expect("a chunk is refused once the disk is full");
    assert_eq!(refused["data"]["code"], "quota_exceeded", "{refused}");
    assert!(!refused.to_string().contains("os error"), "{refused}");
    let session = data_dir.join("uploads").join(&task_id);
    assert!(!session.exists(), "the failed upload's files are removed");
    c.send(json!({"type": "upload_resume", "data": {"task_id": task_id}}))
        .await;
    c.expect_error("session_not_found").await;

    // Earshot's client gives up instead of retrying forever.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.wav");
    std::fs::write(&file, &big).unwrap();
    let options = UploadOptions {
        max_retries: 2,
        ..UploadOptions::default()
    };
    let url = server.url();
    let upload = earshot::client::upload::upload(&url, &file, &options, |_| {});
    let outcome = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the client gives up in bounded time");
    let err = outcome.expect_err("there is no room for the upload");
    assert!(err.to_string().contains("disk space"), "{err}");

    // With room again, later uploads work: nothing was left behind.
    std::fs::remove_file(filler).unwrap();
    let data = jfk();
    let mut c = Client::connect(&server.url()).await;
    seed_upload(&mut c, JFK, &data, 64 * 1024).await;
    let (_, done) = c.transcript().await;
    common::server::assert_wer(JFK, done["data"]["text"].as_str().unwrap(), 0.2);
    server.shutdown().await;
}
