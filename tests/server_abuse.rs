//! Malformed and hostile input over real sockets: each gets its error code (or close code)
//! while another client on the same server keeps being served.

mod common;

use common::server::{
    b64, binary_chunk, md5_hex, upload_chunk, upload_request, Client, TestServer,
};
use serde_json::{json, Value};

/// A well-behaved client with an upload in progress; `check` proves the server still serves it.
struct Bystander {
    client: Client,
    task: String,
}

impl Bystander {
    async fn start(url: &str) -> Bystander {
        let mut client = Client::connect(url).await;
        let data = vec![7u8; 3000];
        client
            .send(upload_request("bystander.wav", &data, 1000))
            .await;
        let ready = client.expect("upload_ready").await;
        let task = ready["data"]["task_id"].as_str().unwrap().to_string();
        client.send(upload_chunk(&task, &data, 1000, 0)).await;
        client.expect("chunk_received").await;
        Bystander { client, task }
    }

    /// A small exchange that must succeed.
    async fn check(&mut self, after: &str) {
        self.client
            .send(json!({"type": "upload_resume", "data": {"task_id": self.task}}))
            .await;
        let ready = self.client.recv().await;
        assert_eq!(
            ready["type"], "upload_ready",
            "bystander after {after}: {ready}"
        );
        assert_eq!(ready["data"]["missing_chunks"], json!([1, 2]), "{ready}");
    }
}

fn request(data: Value) -> Value {
    json!({"type": "upload_request", "data": data})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_errors_and_others_keep_being_served() {
    let server = TestServer::start_with(|c| {
        c.max_message_bytes = bytesize::ByteSize::kib(64);
        c.max_uploads = 3;
    })
    .await;
    let url = server.url();
    let mut by = Bystander::start(&url).await;
    let mut bad = Client::connect(&url).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let good_file = vec![1u8; 100];
    let md5 = md5_hex(&good_file);

    // (what is sent, the error code expected, a word its message must contain)
    let text_cases: Vec<(String, &str, &str)> = vec![
        ("this is not json".into(), "invalid_message", "JSON"),
        ("{\"type\": \"upload_request\"".into(), "invalid_message", "JSON"),
        ("[1, 2, 3]".into(), "invalid_message", "object"),
        (json!({"type": 5}).to_string(), "invalid_message", "type"),
        (json!({"data": {}}).to_string(), "invalid_message", "type"),
        (json!({"type": "delete_everything", "data": {}}).to_string(), "unknown_type", "delete_everything"),
        (json!({"type": "upload_request", "data": 7}).to_string(), "invalid_message", "data"),
        (request(json!({"file_name": "a.wav", "file_hash": md5})).to_string(), "invalid_message", "file_size"),
        (request(json!({"file_name": "a.wav", "file_size": "100", "file_hash": md5})).to_string(), "invalid_message", "file_size"),
        (request(json!({"file_name": "a.wav", "file_size": -5, "file_hash": md5, "chunk_size": 10, "total_chunks": 10})).to_string(), "invalid_message", "file_size"),
        (request(json!({"file_name": "a.wav", "file_size": 100.5, "file_hash": md5, "chunk_size": 10, "total_chunks": 10})).to_string(), "invalid_message", "file_size"),
        (request(json!({"file_name": "a.wav", "file_size": 100, "chunk_size": 10, "total_chunks": 10})).to_string(), "invalid_message", "file_hash"),
        (request(json!({"file_name": "a.wav", "file_size": 100, "file_hash": "xyz", "chunk_size": 10, "total_chunks": 10})).to_string(), "invalid_message", "file_hash"),
        (request(json!({"file_name": "a.wav", "file_size": 100, "file_hash": md5, "chunk_size": 0, "total_chunks": 10, "upload_mode": "chunked"})).to_string(), "invalid_message", "chunk"),
        (request(json!({"file_name": "a.wav", "file_size": 100, "file_hash": md5, "chunk_size": 10, "total_chunks": 11, "upload_mode": "chunked"})).to_string(), "invalid_message", "total_chunks"),
        (request(json!({"file_name": "a.wav", "file_size": 0, "file_hash": md5, "chunk_size": 10, "total_chunks": 0, "upload_mode": "chunked"})).to_string(), "invalid_message", "greater than 0"),
        (request(json!({"file_name": "a.wav", "file_size": 1u64 << 50, "file_hash": md5, "chunk_size": 1 << 20, "total_chunks": 1u64 << 30, "upload_mode": "chunked"})).to_string(), "too_large", ""),
        (request(json!({"file_name": "a.wav", "file_size": 100, "file_hash": md5, "chunk_size": 10, "total_chunks": 10, "upload_mode": "sideways"})).to_string(), "invalid_message", "upload_mode"),
        (request(json!({"file_name": "a.wav", "file_size": 100, "file_hash": md5, "upload_mode": "single", "file_data": b64(&[1u8; 99])})).to_string(), "invalid_message", "file_data"),
        (request(json!({"file_name": "a.wav", "file_size": 100, "file_hash": md5, "upload_mode": "single", "file_data": "%%%not base64%%%"})).to_string(), "invalid_message", "base64"),
        (json!({"type": "upload_chunk", "data": {"task_id": unknown, "chunk_index": -1, "chunk_hash": md5, "chunk_data": b64(&good_file)}}).to_string(), "invalid_message", "chunk_index"),
        (json!({"type": "upload_chunk", "data": {"task_id": unknown, "chunk_index": 1u64 << 40, "chunk_hash": md5, "chunk_data": b64(&good_file)}}).to_string(), "invalid_message", "chunk_index"),
        (json!({"type": "upload_chunk", "data": {"task_id": unknown, "chunk_index": "0", "chunk_hash": md5, "chunk_data": b64(&good_file)}}).to_string(), "invalid_message", "chunk_index"),
        (json!({"type": "upload_chunk", "data": {"task_id": unknown, "chunk_index": 0, "chunk_hash": md5}}).to_string(), "invalid_message", "chunk_data"),
        (json!({"type": "get_result", "data": {"task_id": "../../etc/passwd"}}).to_string(), "session_not_found", "task_id"),
        (json!({"type": "get_result", "data": {"task_id": 42}}).to_string(), "invalid_message", "task_id"),
        (json!({"type": "get_result", "data": {}}).to_string(), "invalid_message", "task_id"),
        (json!({"type": "get_result", "data": {"task_id": unknown}}).to_string(), "session_not_found", ""),
        (json!({"type": "upload_resume", "data": {"task_id": unknown}}).to_string(), "session_not_found", ""),
        (json!({"type": "upload_resume", "data": {"task_id": format!("{{{unknown}}}")}}).to_string(), "session_not_found", ""),
        (json!({"type": "audio_segment", "data": {"task_id": unknown, "segment_index": 0, "audio_data": "@@@"}}).to_string(), "invalid_message", "base64"),
        (json!({"type": "audio_segment", "data": {"task_id": unknown, "segment_index": 0, "audio_data": b64(&[0u8; 6])}}).to_string(), "unsupported_audio", ""),
        (json!({"type": "audio_segment", "data": {"task_id": unknown, "segment_index": -3, "audio_data": b64(&[0u8; 8])}}).to_string(), "invalid_message", "segment_index"),
        (json!({"type": "stream_end", "data": {}}).to_string(), "session_not_found", ""),
    ];
    for (text, code, word) in &text_cases {
        bad.send_text(text).await;
        let err = bad.expect_error(code).await;
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(word),
            "{text} → {message:?} should mention {word:?}"
        );
        assert!(
            !message.contains("/tmp") && !message.contains("data.part"),
            "{message}"
        );
        by.check(text).await;
    }

    let binary_cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "empty"),
        (vec![0xff, 1, 2, 3], "0xff"),
        (vec![0x01, 1, 2, 3], "short"),
        (vec![0x03; 10], "short"),
    ];
    for (frame, word) in binary_cases {
        bad.send_binary(frame.clone()).await;
        let err = bad.expect_error("invalid_message").await;
        assert!(
            err["message"].as_str().unwrap().contains(word),
            "{frame:?} → {err}"
        );
        by.check("a binary frame").await;
    }
    // Live audio with no stream open.
    bad.send_binary(vec![0x02, 0, 0]).await;
    bad.expect_error("session_not_found").await;
    by.check("live audio without a stream").await;

    // Chunks for an upload that does not exist, or is not this plan's, are refused, and
    // refusing them must not use up upload slots (max_uploads = 3 here).
    for _ in 0..4 {
        let ghost = uuid::Uuid::new_v4().to_string();
        bad.send(upload_chunk(&ghost, &good_file, 100, 0)).await;
        bad.expect_error("session_not_found").await;
        bad.send_binary(binary_chunk(&ghost, 0, &good_file)).await;
        bad.expect_error("session_not_found").await;
    }
    by.check("chunks for unknown uploads").await;

    // Out-of-range and wrong-length chunks for a real upload.
    bad.send(upload_request("real.bin", &good_file, 40)).await;
    let ready = bad.expect("upload_ready").await;
    let task = ready["data"]["task_id"].as_str().unwrap().to_string();
    let mut chunk = upload_chunk(&task, &good_file, 40, 0);
    chunk["data"]["chunk_index"] = json!(3);
    bad.send(chunk).await;
    let err = bad.expect_error("invalid_chunk").await;
    assert_eq!(err["chunk_index"], 3, "{err}");
    let short = &good_file[..10];
    bad.send(
        json!({"type": "upload_chunk", "data": {"task_id": task, "chunk_index": 0,
        "chunk_hash": md5_hex(short), "chunk_data": b64(short)}}),
    )
    .await;
    bad.expect_error("invalid_chunk").await;
    bad.send(
        json!({"type": "upload_chunk", "data": {"task_id": task, "chunk_index": 0,
        "chunk_size": 40, "chunk_hash": md5_hex(short), "chunk_data": b64(short)}}),
    )
    .await;
    bad.expect_error("invalid_chunk").await;
    bad.send_binary(binary_chunk(&task, 7, &good_file[..40]))
        .await;
    bad.expect_error("invalid_chunk").await;
    by.check("bad chunks").await;

    // Chunks after the upload completed are refused with not_ready (and take no slot).
    for i in 0..3 {
        bad.send(upload_chunk(&task, &good_file, 40, i)).await;
        bad.expect("chunk_received").await;
    }
    bad.expect("upload_complete").await;
    bad.expect_error("unsupported_audio").await; // 100 bytes of 0x01 are no audio
    bad.send(upload_chunk(&task, &good_file, 40, 1)).await;
    let err = bad.expect_error("not_ready").await;
    assert_eq!(err["task_id"], task.as_str());
    bad.send_binary(binary_chunk(&task, 1, &good_file[40..80]))
        .await;
    bad.expect_error("not_ready").await;
    by.check("chunks after completion").await;

    // A new upload still gets a slot: the refused chunks above hold none.
    let mut fresh = Client::connect(&url).await;
    fresh
        .send(upload_request("fresh.bin", &good_file, 50))
        .await;
    fresh.expect("upload_ready").await;
    drop(fresh);

    // A message over max_message_bytes closes the connection with 1009.
    let huge = "x".repeat(80 * 1024);
    bad.send_text(&json!({"type": "get_result", "data": {"task_id": huge}}).to_string())
        .await;
    let (code, _) = bad.expect_close().await;
    assert_eq!(code, 1009);
    by.check("an oversized message").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_in_file_name_never_escapes_the_data_dir() {
    let server = TestServer::start().await;
    let data_dir = server.data_path();
    let outside = data_dir.parent().unwrap().to_path_buf();
    let passwd_before = std::fs::metadata("/etc/passwd")
        .and_then(|m| m.modified())
        .ok();
    let mut c = Client::connect(&server.url()).await;
    let data = b"not audio at all".to_vec();
    for name in [
        "../../etc/passwd",
        "..\\..\\evil.wav",
        "/abs/../x.wav",
        "..",
        "",
    ] {
        c.send(json!({"type": "upload_request", "data": {
            "file_name": name, "file_size": data.len(), "file_hash": md5_hex(&data),
            "upload_mode": "single", "file_data": b64(&data)}}))
            .await;
        let ready = c.expect("upload_ready").await;
        let task = ready["data"]["task_id"].as_str().unwrap().to_string();
        c.expect("upload_complete").await;
        // Not audio: the decoder refuses it and the client hears why.
        let err = c.expect_error("unsupported_audio").await;
        assert_eq!(err["task_id"], task.as_str());
        let dir = data_dir.join("uploads").join(&task);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for f in &files {
            assert!(
                f == "meta.json" || f == "audio" || f.starts_with("audio."),
                "unexpected file {f} for {name:?}"
            );
        }
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let stored = meta["file_name"].as_str().unwrap();
        assert!(
            !stored.contains('/') && !stored.contains('\\') && !stored.starts_with('.'),
            "{stored}"
        );
    }
    // Where the names would land if they were used as paths from any directory the server writes.
    let passwd_after = std::fs::metadata("/etc/passwd")
        .and_then(|m| m.modified())
        .ok();
    assert_eq!(passwd_before, passwd_after, "/etc/passwd untouched");
    for base in [outside.clone(), data_dir.clone(), data_dir.join("uploads")] {
        for escaped in [
            "etc/passwd",
            "passwd",
            "evil.wav",
            "..\\..\\evil.wav",
            "x.wav",
        ] {
            assert!(
                !base.join(escaped).exists(),
                "{}",
                base.join(escaped).display()
            );
        }
    }
    for entry in walk(&data_dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains("passwd") && !name.contains("evil"),
            "{}",
            entry.display()
        );
    }
    server.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_segment_misuse_is_refused() {
    let server = TestServer::start().await;
    let mut c = Client::connect(&server.url()).await;
    // Silence: the VAD finds no speech, so no Whisper time is spent.
    let silence = b64(&[0u8; 4 * 1600]);
    let seg = |task: &str, index: i64, is_final: bool| {
        json!({"type": "audio_segment", "data": {"task_id": task, "segment_index": index,
            "is_final": is_final, "audio_data": silence}})
    };

    // Another task's id (here an upload's) cannot be taken over.
    let data = vec![1u8; 100];
    c.send(upload_request("u.bin", &data, 50)).await;
    let upload = c.expect("upload_ready").await["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.send(seg(&upload, 0, true)).await;
    let err = c.expect_error("invalid_message").await;
    assert!(err["message"].as_str().unwrap().contains("in use"), "{err}");

    // Pieces must come in order from 0.
    let task = uuid::Uuid::new_v4().to_string();
    c.send(seg(&task, 1, false)).await;
    c.expect_error("invalid_message").await;
    c.send(seg(&task, 0, false)).await;
    c.send(seg(&task, 2, false)).await;
    let err = c.expect_error("invalid_message").await;
    assert!(err["message"].as_str().unwrap().contains("order"), "{err}");
    c.send(seg(&task, 1, true)).await;
    let (_, done) = c.transcript().await;
    assert_eq!(done["data"]["task_id"], task.as_str());
    assert_eq!(done["data"]["text"], "", "silence has no words");
    assert!((done["data"]["duration"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    // A finished task's id is not reusable either: its result stays as it was.
    c.send(seg(&task, 0, true)).await;
    c.expect_error("invalid_message").await;

    // A connection may keep only a few recordings open at once: of these opens (none of
    // which is answered when accepted), the first reply is the refusal.
    for _ in 0..8 {
        c.send(seg(&uuid::Uuid::new_v4().to_string(), 0, false))
            .await;
    }
    let busy = c.recv().await;
    assert_eq!(busy["data"]["code"], "busy", "{busy}");
    assert!(busy["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    server.shutdown().await;
}
