//! The real `earshot serve` process killed with SIGKILL mid-upload, restarted on the same data
//! directory: the upload resumes and the stored file is byte-identical; killed again during
//! transcription, the restart finishes it; the result survives another restart. The process
//! logs JSON, and a connection's log lines name the tasks it works on.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::server::{assert_wer, stored_audio, upload_chunk, upload_request, Client};
use serde_json::{json, Value};

/// A running `earshot serve`; killed (SIGKILL) when dropped.
struct Process {
    child: Child,
    url: String,
    /// Every JSON log line so far.
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Process {
    /// Starts the binary on port 0 and waits for its "earshot listening" log line.
    fn start(data_dir: &Path, models_dir: &Path) -> Process {
        let mut child = common::earshot_serve()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--log-format",
                "json",
                "--model",
            ])
            .arg(common::model("ggml-tiny.en.bin"))
            .arg("--models-dir")
            .arg(models_dir)
            .arg("--data-dir")
            .arg(data_dir)
            .spawn()
            .expect("earshot starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    if line.starts_with("earshot:") {
                        let _ = tx.send(Err(line));
                    }
                    continue;
                };
                let message = entry["fields"]["message"].as_str().unwrap_or_default();
                if let Some(rest) = message.strip_prefix("earshot listening: ") {
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(Ok(url));
                }
                kept.lock().unwrap().push(entry);
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
        Process { child, url, logs }
    }

    /// Waits (up to 30 s) for a log line inside a connection span that lists `task`.
    async fn expect_span_naming(&self, task: &str) -> Value {
        for _ in 0..300 {
            let hit = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|e| {
                    e["span"]["name"] == "conn"
                        && e["span"]["tasks"]
                            .as_str()
                            .is_some_and(|t| t.split(',').any(|id| id == task))
                })
                .cloned();
            if let Some(hit) = hit {
                return hit;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no connection log line names task {task}")
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
