//! The real `earshot serve` process killed with SIGKILL mid-upload, restarted on the same data
//! directory: the upload resumes and the stored file is byte-identical; killed again during
//! transcription, the restart finishes it; the result survives another restart.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::server::{assert_wer, stored_audio, upload_chunk, upload_request, Client};
use serde_json::json;

/// A running `earshot serve`; killed (SIGKILL) when dropped.
struct Process {
    child: Child,
    url: String,
}

impl Process {
    /// Starts the binary on port 0 and waits for its "earshot listening" log line.
    fn start(data_dir: &Path, models_dir: &Path) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_earshot"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--model",
            ])
            .arg(common::model("ggml-tiny.en.bin"))
            .arg("--models-dir")
            .arg(models_dir)
            .arg("--data-dir")
            .arg(data_dir)
            .env("EARSHOT_MODEL_MIRROR", common::models_dir())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("earshot starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("earshot listening: ws://") {
                    let rest = &line[at + "earshot listening: ".len()..];
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(Ok(url));
                } else if line.starts_with("earshot:") {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(url)) => url,
            Ok(Err(line)) => panic!("earshot serve failed: {line}"),
            Err(_) => {
                let _ = child.kill();
                panic!("earshot serve did not log its address")
            }
        };
        Process { child, url }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    for i in 0..acked {
        c.send(upload_chunk(&task, &data, chunk, i)).await;
        c.expect("chunk_received").await;
    }
    // Two more in flight, never acknowledged, when the process dies.
    for i in acked..acked + 2 {
        c.send(upload_chunk(&task, &data, chunk, i)).await;
    }
    server.kill9();
    drop(c);

    let server = Process::start(&data_dir, &models_dir);
    let mut c = Client::connect(&server.url).await;
    c.send(json!({"type": "upload_resume", "data": {"task_id": task}}))
        .await;
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
    server.kill9();
    drop(c);

    let server = Process::start(&data_dir, &models_dir);
    let mut c = Client::connect(&server.url).await;
    c.send(json!({"type": "upload_resume", "data": {"task_id": task}}))
        .await;
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
