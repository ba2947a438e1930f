//! The real `earshot serve` binary as a child process, for tests that kill it (SIGKILL) or
//! read its JSON log.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// A running `earshot serve`; killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    /// Its WebSocket URL (`ws://127.0.0.1:PORT/`).
    pub url: String,
    /// Every JSON log line so far.
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Process {
    /// Starts the binary on port 0 and waits for its "earshot listening" log line.
    pub fn start(data_dir: &Path, models_dir: &Path) -> Process {
        Self::start_with(data_dir, models_dir, &[])
    }

    /// Starts the binary with `extra` arguments after the usual ones.
    pub fn start_with(data_dir: &Path, models_dir: &Path, extra: &[&str]) -> Process {
        let mut child = super::earshot_serve()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--log-format",
                "json",
                "--model",
            ])
            .arg(super::model("ggml-tiny.en.bin"))
            .arg("--models-dir")
            .arg(models_dir)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
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
    pub async fn expect_span_naming(&self, task: &str) -> Value {
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

    /// Its HTTP base URL (`http://127.0.0.1:PORT`).
    pub fn http_url(&self) -> String {
        self.url
            .trim_end_matches('/')
            .replacen("ws://", "http://", 1)
    }

    /// Whether a log line so far has this message and names `task` in its fields.
    pub fn logged(&self, message: &str, task: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|e| {
            e["fields"]["message"] == message && e["fields"]["task_id"].as_str() == Some(task)
        })
    }

    /// Sends a signal by name (`STOP`, `CONT`): to pause a node past its leases and resume it.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
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
