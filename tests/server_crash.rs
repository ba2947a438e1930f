//! The real `earshot serve` process killed with SIGKILL mid-upload, restarted on the same data
//! directory: the upload resumes and the stored file is byte-identical; killed again during
//! transcription, the restart finishes it; the result survives another restart. The process
//! logs JSON, and a connection's log lines name the tasks it works on.

mod common;

use std::path::Path;

use common::process::Process;
use common::server::{assert_wer, stored_audio, upload_chunk, upload_request, Client};
use serde_json::json;

/// Kills the server (SIGKILL) under the client `old`, starts it again on the same
/// directories and sends `upload_resume` for `task` on a new connection.
async fn crash_and_resume(
    server: Process,
    old: Client,
    data_dir: &Path,
    models_dir: &Path,
    task: &str,
) -> (Process, Client) {
    server.kill9();
    drop(old);
    let server = Process::start(data_dir, models_dir);
    let mut c = Client::connect(&server.url).await;
    c.send(json!({"type": "upload_resume", "data": {"task_id": task}}))
        .await;
    (server, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_upload_then_resume_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let models_dir = tmp.path().join("models");
    let name = "en_harvard_birch_canoe.wav";
    let data = std::fs::read(common::corpus_file(name)).unwrap();
    let chunk = 8 * 1024;
    let total = data.len().div_ceil(chunk);
    let acked = total / 2;

    let server = Process::start(&data_dir, &models_dir);
    let mut c = Client::connect(&server.url).await;
    c.send(upload_request(name, &data, chunk)).await;
    let task = c.expect("upload_ready").await["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let line = server.expect_span_naming(&task).await;
    assert!(line["span"]["id"].is_string(), "{line}");
    for i in 0..acked {
        c.send(upload_chunk(&task, &data, chunk, i)).await;
        c.expect("chunk_received").await;
    }
    // Two more in flight, never acknowledged, when the process dies.
    for i in acked..acked + 2 {
        c.send(upload_chunk(&task, &data, chunk, i)).await;
    }
    let (server, mut c) = crash_and_resume(server, c, &data_dir, &models_dir, &task).await;
    let ready = c.expect("upload_ready").await;
    let missing: Vec<usize> = ready["data"]["missing_chunks"]
        .as_array()
        .expect("missing_chunks")
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert!(
        missing.iter().all(|&i| i >= acked),
        "acknowledged chunks survive kill -9: {missing:?}"
    );
    assert!(
        (acked + 2..total).all(|i| missing.contains(&i)),
        "chunks never sent are missing: {missing:?}"
    );
    assert_eq!(
        ready["data"]["received_chunks"].as_u64().unwrap() as usize,
        total - missing.len()
    );
    for &i in &missing {
        c.send(upload_chunk(&task, &data, chunk, i)).await;
        c.expect("chunk_received").await;
    }
    c.expect("upload_complete").await;
    assert_eq!(stored_audio(&data_dir, &task), data, "byte-identical");
    // Killed again while transcribing (or just after): the restart transcribes it again
    // and upload_resume follows it to the end.
    let (server, mut c) = crash_and_resume(server, c, &data_dir, &models_dir, &task).await;
    let (_, done) = c.transcript().await;
    let text = done["data"]["text"].as_str().unwrap().to_string();
    assert_wer(name, &text, 0.15);
    server.kill9();

    // The result outlives the process too.
    let server = Process::start(&data_dir, &models_dir);
    let mut c = Client::connect(&server.url).await;
    c.send(json!({"type": "get_result", "data": {"task_id": task}}))
        .await;
    let again = c.expect("transcription_complete").await;
    assert_eq!(again["data"]["text"], text.as_str());
    drop(server);
}
