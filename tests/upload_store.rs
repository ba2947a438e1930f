//! Protocol parsing and the durable upload store working together, on real corpus files,
//! the way the server will drive them — and surviving a real process crash.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use earshot::domain::TaskId;
use earshot::protocol::binary::{self, BinaryFrame};
use earshot::protocol::message::UploadMode;
use earshot::protocol::store::{chunk_ack, new_upload};
use earshot::protocol::{parse_client, ClientMessage, ErrorCode, Limits};
use earshot::upload::plan::Insert;
use earshot::upload::store::{NewUpload, StoreConfig, UploadStatus, UploadStorage, UploadStore};
use md5::{Digest, Md5};
use serde_json::json;
use sha2::Sha256;

fn corpus_file(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus")
        .join(name);
    assert!(
        path.exists(),
        "corpus file {} is missing: the corpus lives in ../shared/corpus next to the checkout",
        path.display()
    );
    path
}

fn limits() -> Limits {
    Limits {
        max_chunk_bytes: 64 << 10,
        ..Limits::default()
    }
}

/// Drives a seed-protocol client's messages (as JSON text) through parsing and the store.
#[test]
fn seed_json_upload_of_a_real_file() {
    let bytes = std::fs::read(corpus_file("en_JFK_inaugural_146s.ogg")).unwrap();
    let chunk_size = 50_000usize;
    let total = bytes.len().div_ceil(chunk_size);
    let tmp = tempfile::tempdir().unwrap();
    let store = UploadStore::open(tmp.path(), StoreConfig::default()).unwrap();

    let request = json!({"type": "upload_request", "data": {
        "file_name": "/home/user/en_JFK_inaugural_146s.ogg", "file_size": bytes.len(),
        "file_hash": hex::encode(Md5::digest(&bytes)), "chunk_size": chunk_size,
        "total_chunks": total, "upload_mode": "chunked"}});
    let ClientMessage::UploadRequest(req) = parse_client(&request.to_string(), &limits()).unwrap()
    else {
        panic!("expected upload_request")
    };
    assert_eq!(req.file_name, "en_JFK_inaugural_146s.ogg");
    assert_eq!(req.mode, UploadMode::Chunked);
    let task_id = store.create(new_upload(&req, None, String::new())).unwrap();

    // Send the chunks in reverse, each twice, as a retrying client might.
    for i in (0..total).rev() {
        let chunk = &bytes[i * chunk_size..((i + 1) * chunk_size).min(bytes.len())];
        let msg = json!({"type": "upload_chunk", "data": {
            "task_id": task_id.to_string(), "chunk_index": i, "chunk_size": chunk.len(),
            "chunk_hash": hex::encode(Md5::digest(chunk)), "chunk_data": B64.encode(chunk),
            "is_last": i == total - 1}})
        .to_string();
        for attempt in 0..2 {
            let ClientMessage::UploadChunk(c) = parse_client(&msg, &limits()).unwrap() else {
                panic!("expected upload_chunk")
            };
            let (insert, progress) = store
                .put_chunk(c.task_id, c.chunk_index, c.data.into())
                .unwrap();
            let expected = if attempt == 0 {
                Insert::New
            } else {
                Insert::Duplicate
            };
            assert_eq!(insert, expected);
            assert_eq!(progress.received_chunks as usize, total - i);
        }
    }
    let audio = store.finalize(task_id).unwrap();
    assert_eq!(audio.extension().unwrap(), "ogg");
    assert_eq!(std::fs::read(audio).unwrap(), bytes);
}

/// The fast path: binary frames, a window of chunks written then made durable with one sync.
#[test]
fn binary_fast_path_with_group_commit() {
    let bytes = std::fs::read(corpus_file("en_jfk.mp3")).unwrap();
    let chunk_size = 2048usize; // 38 chunks: more than two windows
    let total = bytes.len().div_ceil(chunk_size);
    let tmp = tempfile::tempdir().unwrap();
    let store = UploadStore::open(tmp.path(), StoreConfig::default()).unwrap();
    let request = json!({"type": "upload_request", "data": {
        "file_name": "jfk.mp3", "file_size": bytes.len(), "upload_mode": "chunked",
        "file_sha256": hex::encode(Sha256::digest(&bytes)), "chunk_size": chunk_size,
        "total_chunks": total, "transport": "binary"}});
    let ClientMessage::UploadRequest(req) = parse_client(&request.to_string(), &limits()).unwrap()
    else {
        panic!("expected upload_request")
    };
    let task_id = store.create(new_upload(&req, None, String::new())).unwrap();
    let window = limits().chunk_window as usize;

    let mut received_through = 0usize;
    let mut acks = 0;
    while received_through < total {
        // Fill the window, corrupting one chunk the first time it is sent.
        for i in received_through..(received_through + window).min(total) {
            let chunk = &bytes[i * chunk_size..((i + 1) * chunk_size).min(bytes.len())];
            let mut frame = binary::encode_upload_chunk(task_id, i as u32, chunk);
            if i == 5 && acks == 0 {
                *frame.last_mut().unwrap() ^= 0xff;
            }
            match binary::decode(&frame) {
                Ok(BinaryFrame::UploadChunk(c)) => {
                    store
                        .write_chunk(c.task_id, c.chunk_index, Bytes::copy_from_slice(c.payload))
                        .unwrap();
                }
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(e) => {
                    let e: earshot::protocol::ProtocolError = e.into();
                    assert_eq!(e.code, ErrorCode::ChunkHashMismatch);
                    assert_eq!(e.chunk_index, Some(5));
                }
            }
        }
        let progress = store.sync(task_id).unwrap();
        let ack = chunk_ack(task_id, &progress);
        if acks == 0 {
            assert_eq!(ack.received_through, 5);
            assert_eq!(ack.missing, Some(vec![5]));
        }
        acks += 1;
        received_through = ack.received_through as usize;
    }
    assert!(acks >= total.div_ceil(window));
    store.finalize(task_id).unwrap();
    assert_eq!(
        std::fs::read(store.audio_path(task_id).unwrap()).unwrap(),
        bytes
    );
}

/// Child half of `acknowledged_chunks_survive_a_crash`: writes and syncs chunks 0..4,
/// writes chunk 4 without syncing, then aborts (no destructors, no flushing, like kill -9).
#[test]
#[ignore = "run by acknowledged_chunks_survive_a_crash in a child process"]
fn crash_child() {
    let dir = std::env::var("EARSHOT_CRASH_DIR").expect("set by the parent test");
    let task_id = TaskId::parse(&std::env::var("EARSHOT_CRASH_TASK").unwrap()).unwrap();
    let store = UploadStore::open(Path::new(&dir), StoreConfig::default()).unwrap();
    let data = crash_data();
    for i in 0..4u32 {
        store.write_chunk(task_id, i, chunk_of(&data, i)).unwrap();
    }
    store.sync(task_id).unwrap();
    store.write_chunk(task_id, 4, chunk_of(&data, 4)).unwrap();
    std::process::abort();
}

fn crash_data() -> Vec<u8> {
    (0..10_000u32).map(|i| (i % 253) as u8).collect()
}

fn chunk_of(data: &[u8], i: u32) -> Bytes {
    let start = i as usize * 1000;
    Bytes::copy_from_slice(&data[start..start + 1000])
}

#[test]
fn acknowledged_chunks_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let data = crash_data();
    let task_id = {
        let store = UploadStore::open(tmp.path(), StoreConfig::default()).unwrap();
        let plan =
            earshot::upload::plan::ChunkPlan::new(10_000, 1000, 10, &Default::default()).unwrap();
        store
            .create(NewUpload {
                file_name: "crash.bin".into(),
                extension: None,
                plan,
                hashes: earshot::upload::digest::FileHashes {
                    md5: Some(hex::encode(Md5::digest(&data))),
                    ..Default::default()
                },
                transport: Default::default(),
                options: Default::default(),
                owner: None,
                client: String::new(),
            })
            .unwrap()
    };
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "crash_child", "--nocapture"])
        .env("EARSHOT_CRASH_DIR", tmp.path())
        .env("EARSHOT_CRASH_TASK", task_id.to_string())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");

    let store = UploadStore::open(tmp.path(), StoreConfig::default()).unwrap();
    let progress = store.progress(task_id, 100).unwrap();
    assert_eq!(progress.received_through, 4);
    assert_eq!(progress.missing, (4..10).collect::<Vec<_>>());
    for i in 4..10 {
        store.put_chunk(task_id, i, chunk_of(&data, i)).unwrap();
    }
    store.finalize(task_id).unwrap();
    assert_eq!(store.meta(task_id).unwrap().status, UploadStatus::Uploaded);
    assert_eq!(
        std::fs::read(store.audio_path(task_id).unwrap()).unwrap(),
        data
    );
}
