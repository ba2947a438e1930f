//! The binary fast path over real sockets: a window of chunks in flight, cumulative
//! `chunk_ack`s, a corrupted chunk refused and resent, and the stored file byte-identical.

mod common;

use std::collections::BTreeSet;

use common::server::{
    assert_wer, binary_chunk, md5_hex, sha256_hex, stored_audio, task_and_window, Client,
    TestServer,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_chunks_in_a_window_with_a_corrupt_one_resent() {
    let server = TestServer::start().await;
    let mut c = Client::connect(&server.url()).await;
    let name = "en_harvard_birch_canoe.wav";
    let data = std::fs::read(common::corpus_file(name)).unwrap();
    let chunk = 4096;
    let total = data.len().div_ceil(chunk) as u32;
    assert!(total > 20, "enough chunks for a window to matter");
    c.send(json!({"type": "upload_request", "data": {
        "file_name": name, "file_size": data.len(), "file_hash": md5_hex(&data),
        "file_sha256": sha256_hex(&data), "chunk_size": chunk, "total_chunks": total,
        "upload_mode": "chunked", "transport": "binary"}}))
        .await;
    let ready = c.expect("upload_ready").await;
    let (task, window) = task_and_window(&ready);
    assert!(window >= 2, "{ready}");
    let piece = |i: u32| &data[i as usize * chunk..((i as usize + 1) * chunk).min(data.len())];
    let corrupt = 5;

    let mut next = 0u32; // next never-sent chunk
    let mut through = 0u32; // latest received_through
    let mut resend = BTreeSet::new();
    let mut refused = Vec::new();
    let mut max_in_flight = 0;
    loop {
        // Send everything the window allows: resends first, then new chunks.
        while let Some(&i) = resend.iter().next() {
            resend.remove(&i);
            c.send_binary(binary_chunk(&task, i, piece(i))).await;
        }
        while next < total && next < through + window {
            let mut frame = binary_chunk(&task, next, piece(next));
            if next == corrupt && refused.is_empty() {
                let last = frame.len() - 1;
                frame[last] ^= 0x01; // the payload no longer matches its xxh3
            }
            c.send_binary(frame).await;
            next += 1;
            max_in_flight = max_in_flight.max(next - through);
        }
        let msg = c.recv().await;
        match msg["type"].as_str().unwrap() {
            "chunk_ack" => {
                let d = &msg["data"];
                let r = d["received_through"].as_u64().unwrap() as u32;
                assert!(r >= through, "acks are cumulative: {msg}");
                assert!(d["received_chunks"].as_u64().unwrap() as u32 >= r, "{msg}");
                through = r;
                for m in d["missing"].as_array().into_iter().flatten() {
                    let m = m.as_u64().unwrap() as u32;
                    assert!(m < next, "only sent chunks can be missing: {msg}");
                    assert!(
                        refused.contains(&m),
                        "only refused chunks go missing: {msg}"
                    );
                }
            }
            "error" => {
                assert_eq!(msg["data"]["code"], "chunk_hash_mismatch", "{msg}");
                assert_eq!(msg["data"]["task_id"], task.as_str());
                let i = msg["data"]["chunk_index"].as_u64().unwrap() as u32;
                refused.push(i);
                resend.insert(i);
            }
            "upload_complete" => break,
            other => panic!("unexpected {other}: {msg}"),
        }
    }
    assert_eq!(
        refused,
        vec![corrupt],
        "exactly the corrupted chunk was refused"
    );
    assert!(max_in_flight > 1, "chunks were pipelined");
    let (_, done) = c.transcript().await;
    assert_wer(name, done["data"]["text"].as_str().unwrap(), 0.15);
    assert_eq!(stored_audio(&server.data_path(), &task), data);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_duplicates_are_ignored_and_acked() {
    let server = TestServer::start().await;
    let mut c = Client::connect(&server.url()).await;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let chunk = 1000;
    c.send(json!({"type": "upload_request", "data": {
        "file_name": "x.bin", "file_size": data.len(), "file_sha256": sha256_hex(&data),
        "chunk_size": chunk, "total_chunks": 10, "transport": "binary"}}))
        .await;
    let task = c.expect("upload_ready").await["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in [0u32, 1, 1, 2] {
        let p = &data[i as usize * chunk..(i as usize + 1) * chunk];
        c.send_binary(binary_chunk(&task, i, p)).await;
    }
    // Acks come in groups; wait for the one covering chunks 0..3.
    loop {
        let ack = c.expect("chunk_ack").await;
        if ack["data"]["received_through"] == 3 {
            assert_eq!(ack["data"]["received_chunks"], 3, "{ack}");
            break;
        }
    }
    // A resume on another connection sees the same durable state.
    let mut other = Client::connect(&server.url()).await;
    other
        .send(json!({"type": "upload_resume", "data": {"task_id": task}}))
        .await;
    let ready = other.expect("upload_ready").await;
    assert_eq!(
        ready["data"]["missing_chunks"],
        json!([3, 4, 5, 6, 7, 8, 9])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_hash_may_follow_the_chunks() {
    let server = TestServer::start().await;
    let name = "en_arctic_a0024.wav";
    let data = std::fs::read(common::corpus_file(name)).unwrap();
    let chunk = 16 * 1024;
    let total = data.len().div_ceil(chunk) as u32;
    let request = json!({"type": "upload_request", "data": {
        "file_name": name, "file_size": data.len(), "chunk_size": chunk,
        "total_chunks": total, "upload_mode": "chunked", "transport": "binary"}});

    // A wrong hash after the chunks: the file is refused, not transcribed.
    let mut c = Client::connect(&server.url()).await;
    c.send(request.clone()).await;
    let task = c.expect("upload_ready").await["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    send_all(&mut c, &task, &data, chunk).await;
    loop {
        let ack = c.expect("chunk_ack").await;
        if ack["data"]["received_chunks"] == total {
            break;
        }
    }
    // Every chunk is stored, but without a hash the upload waits.
    c.send(json!({"type": "get_result", "data": {"task_id": task}}))
        .await;
    c.expect_error("not_ready").await;
    let wrong = sha256_hex(b"another file");
    c.send(json!({"type": "upload_finish", "data": {"task_id": task, "file_sha256": wrong}}))
        .await;
    let err = c.expect_error("file_hash_mismatch").await;
    assert_eq!(err["task_id"], task.as_str());

    // The right hash, sent straight after the chunks without waiting for their acks.
    let mut c = Client::connect(&server.url()).await;
    c.send(request).await;
    let task = c.expect("upload_ready").await["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    send_all(&mut c, &task, &data, chunk).await;
    let blake3 = blake3::hash(&data).to_hex().to_string();
    c.send(json!({"type": "upload_finish", "data": {"task_id": task, "file_blake3": blake3}}))
        .await;
    c.expect_upload_complete().await;
    let (_, done) = c.transcript().await;
    assert_wer(name, done["data"]["text"].as_str().unwrap(), 0.2);
    assert_eq!(stored_audio(&server.data_path(), &task), data);
    server.shutdown().await;
}

/// Sends every chunk of `data` as binary frames, in order.
async fn send_all(c: &mut Client, task: &str, data: &[u8], chunk: usize) {
    for (i, piece) in data.chunks(chunk).enumerate() {
        c.send_binary(binary_chunk(task, i as u32, piece)).await;
    }
}
