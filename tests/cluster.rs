//! Cluster mode against a real `nats-server -js` (Debian's 2.9) and real `earshot serve`
//! processes on `127.0.0.1:0` with the real tiny.en model: a task submitted on one node is
//! read on another; a node killed with SIGKILL mid-job hands the job to another node and the
//! client hears each segment once; while NATS is down the nodes say so quickly, and they carry
//! on when it is back; a binary upload's group commits keep their acks in order. The upload
//! tests run twice: with the bytes in NATS, and in a directory the nodes share
//! (`--cluster-upload-store`). Each test starts and stops its own NATS on a free port.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Process;
use common::server::{assert_wer, seed_upload, upload_chunk, upload_request, Client};
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How long a node may go without acking a job before another takes it (short for tests).
const ACK_WAIT: &str = "3s";

/// A `nats-server -js` with its store in a temp directory; stopped when dropped.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start(store: &Path) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Nats {
            child: None,
            port,
            store: store.to_path_buf(),
        };
        nats.resume();
        nats
    }

    /// Starts the server (again) on the same port and store, and waits until it listens.
    fn resume(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the way an operator does (SIGTERM: its file store is flushed).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where a test's nodes keep upload bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Chunks {
    /// In NATS (the `EARSHOT_UPLOADS` stream), the default.
    InNats,
    /// In a directory every node shares (`--cluster-upload-store file://…`).
    Shared,
}

impl Chunks {
    /// The shared directory under `tmp`.
    fn dir(tmp: &Path) -> PathBuf {
        tmp.join("shared-chunks")
    }

    /// A [`node`] that keeps upload bytes here, with `extra` flags.
    fn node(self, tmp: &Path, name: &str, nats: &Nats, extra: &[&str]) -> Process {
        let store = format!("file://{}", Chunks::dir(tmp).display());
        let mut flags = match self {
            Chunks::InNats => Vec::new(),
            Chunks::Shared => vec!["--cluster-upload-store", store.as_str()],
        };
        flags.extend_from_slice(extra);
        node(tmp, name, nats, &flags)
    }

    /// After an upload's job is done: its chunks are gone from where they were, and in the
    /// shared mode none ever went through NATS.
    async fn assert_purged(self, tmp: &Path, nats: &Nats, task: &str) {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let in_nats = js.get_stream("EARSHOT_UPLOADS").await;
        if self == Chunks::Shared {
            assert!(in_nats.is_err(), "no upload stream in NATS");
            let dir = Chunks::dir(tmp).join(task);
            for _ in 0..100 {
                if !dir.exists() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{} still holds the upload's chunks", dir.display());
        }
        // This test's only upload: every byte of the stream is its.
        let mut stream = in_nats.expect("the upload stream");
        for _ in 0..100 {
            if stream.info().await.unwrap().state.messages == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("NATS still holds the upload's chunks");
    }
}

/// A cluster node: its own data directory, the shared NATS, `extra` flags.
fn node(tmp: &Path, name: &str, nats: &Nats, extra: &[&str]) -> Process {
    let url = nats.url();
    let mut args = vec!["--cluster", url.as_str(), "--cluster-ack-wait", ACK_WAIT];
    args.extend_from_slice(extra);
    Process::start_with(&tmp.join(name), &tmp.join("models"), &args)
}

async fn transcribe_over_http(node: &Process, file: &str) -> reqwest::Response {
    let bytes = std::fs::read(common::corpus_file(file)).unwrap();
    let form = Form::new()
        .text("model", "whisper-1")
        .part("file", Part::bytes(bytes).file_name(file.to_string()));
    reqwest::Client::new()
        .post(format!("{}/v1/audio/transcriptions", node.http_url()))
        .multipart(form)
        .send()
        .await
        .expect("the node answers")
}

/// The task id header and the transcript of a plain JSON answer.
async fn task_and_text(response: reqwest::Response) -> (String, String) {
    let header = &response.headers()["x-earshot-task-id"];
    let task = header.to_str().unwrap().to_string();
    let body = response.json::<Value>().await.unwrap();
    (task, body["text"].as_str().unwrap_or_default().to_string())
}

async fn get_json(url: String) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.expect("the node answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` until it says `ready` (or not), for up to 60 s.
async fn wait_ready(node: &Process, ready: bool) -> Value {
    for _ in 0..600 {
        let (status, body) = get_json(format!("{}/readyz", node.http_url())).await;
        if (status == StatusCode::OK) == ready {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "readyz never became {}",
        if ready { "ready" } else { "not ready" }
    )
}

/// The max age of every stream Earshot made in `nats`, read through NATS's own API.
async fn assert_expiry_in_nats(nats: &Nats, ttl: Duration) {
    let client = async_nats::connect(nats.url()).await.expect("NATS answers");
    let js = async_nats::jetstream::new(client);
    for (stream, age) in [
        ("KV_earshot_tasks", ttl),
        ("EARSHOT_EVENTS", ttl),
        ("EARSHOT_JOBS", ttl),
        ("OBJ_earshot_audio", ttl),
        ("KV_earshot_uploads", ttl),
        ("EARSHOT_UPLOADS", ttl * 2),
    ] {
        let mut found = js.get_stream(stream).await.expect(stream);
        let info = found.info().await.expect(stream);
        assert_eq!(info.config.max_age, age, "{stream}");
    }
}

/// A second WebSocket on a node started with `--max-connections 1` (one already open):
/// `error busy` with `retry_after_ms`, then close 1008.
async fn assert_busy_at_cap(node: &Process) {
    use futures_util::StreamExt;
    let (mut extra, _) = tokio_tungstenite::connect_async(node.url.as_str())
        .await
        .expect("the node upgrades, then refuses");
    let first = extra.next().await.expect("a message").expect("a frame");
    let busy: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(busy["data"]["code"], "busy", "{busy}");
    assert!(
        busy["data"]["retry_after_ms"].as_u64().unwrap() > 0,
        "{busy}"
    );
    match extra.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1008)
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
}

/// A counter or gauge from a node's `/metrics` (`None` when it is not there).
async fn metric(node: &Process, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", node.http_url()))
        .await
        .expect("the node answers")
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_for_any_task_and_nodes_ride_out_a_nats_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&tmp.path().join("nats"));
    let ttl = ["--session-ttl", "1h"];
    let a = node(tmp.path(), "a", &nats, &ttl);
    // B takes one WebSocket connection at a time (its cap is checked below).
    let b = node(
        tmp.path(),
        "b",
        &nats,
        &[&ttl[..], &["--max-connections", "1"]].concat(),
    );
    let body = wait_ready(&b, true).await;
    assert_eq!(body["cluster_connected"], true, "{body}");
    // Expiry is NATS's, cluster-wide and once: every record, event, job's audio and upload
    // expires by its stream's max age (the session TTL; upload bytes twice it), not by a node.
    assert_expiry_in_nats(&nats, Duration::from_secs(3600)).await;

    // Submitted on A over HTTP (run by whichever node pulls it), read on B.
    let file = "en_jfk.wav";
    let response = transcribe_over_http(&a, file).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (task, text) = task_and_text(response).await;
    assert_wer(file, &text, 0.15);
    let (status, on_b) = get_json(format!("{}/v1/tasks/{task}", b.http_url())).await;
    assert_eq!(status, StatusCode::OK, "{on_b}");
    assert_eq!(on_b["status"], "completed", "{on_b}");
    assert_eq!(on_b["text"], text.as_str(), "{on_b}");
    let mut ws = Client::connect(&b.url).await;
    ws.send(json!({"type": "get_result", "data": {"task_id": task}}))
        .await;
    let done = ws.expect("transcription_complete").await;
    assert_eq!(done["data"]["text"], text.as_str());
    // At its connection cap a cluster node says busy, with when to retry, so a load balancer
    // or client goes elsewhere.
    assert_busy_at_cap(&b).await;

    // NATS goes away: readiness says why, and requests that need it fail fast, not hang.
    nats.stop();
    let body = wait_ready(&a, false).await;
    assert_eq!(body["cluster_connected"], false, "{body}");
    let response = transcribe_over_http(&a, "en_arctic_a0024.wav").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error = response.json::<Value>().await.unwrap();
    assert_eq!(error["error"]["code"], "not_ready", "{error}");
    let (status, _) = get_json(format!("{}/v1/tasks/{task}", b.http_url())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    ws.send(json!({"type": "get_result", "data": {"task_id": task}}))
        .await;
    ws.expect_error("not_ready").await;

    // Back (same store): the nodes reconnect by themselves; the result was kept.
    nats.resume();
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    let (status, again) = get_json(format!("{}/v1/tasks/{task}", a.http_url())).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["text"], text.as_str());
    let file = "en_arctic_a0024.wav";
    let response = transcribe_over_http(&b, file).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (_, text) = task_and_text(response).await;
    assert_wer(file, &text, 0.3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_job_hands_it_over_and_the_client_hears_each_segment_once() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(&tmp.path().join("nats"));
    // A only holds the client's socket (no processing slots); B and C run jobs.
    let a = node(tmp.path(), "a", &nats, &["--max-processing", "0"]);
    let b = node(tmp.path(), "b", &nats, &["--max-processing", "1"]);
    let c = node(tmp.path(), "c", &nats, &["--max-processing", "1"]);
    wait_ready(&a, true).await;

    // The first 60 s of a long speech: long enough to be mid-job at the kill, short enough
    // to transcribe twice.
    let file = "en_JFK_inaugural_146s.ogg";
    let cut = tmp.path().join("inaugural_60s.wav");
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(common::corpus_file(file))
        .args(["-t", "60", "-ac", "1", "-ar", "16000"])
        .arg(&cut)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    let data = std::fs::read(&cut).unwrap();
    let mut client = Client::connect(&a.url).await;
    let task = seed_upload(&mut client, "inaugural_60s.wav", &data, 256 * 1024).await;

    // Kill the node running the job once it has produced a segment.
    let mut seen = HashSet::new();
    let mut texts = Vec::new();
    let mut runner = None;
    let mut nodes = vec![b, c];
    let done = loop {
        let msg = client.recv().await;
        match msg["type"].as_str().unwrap_or("") {
            "transcript_segment" => {
                let index = msg["data"]["index"].as_u64().expect("an index");
                assert!(seen.insert(index), "segment {index} came twice: {msg}");
                texts.push(msg["data"]["text"].as_str().unwrap_or("").to_string());
                if runner.is_none() {
                    let i = nodes
                        .iter()
                        .position(|n| n.logged("running a job from the cluster", &task))
                        .expect("a node logged that it runs the job");
                    runner = Some(i);
                    nodes.remove(i).kill9();
                }
            }
            "transcription_progress" => {}
            "transcription_complete" => break msg,
            _ => panic!("unexpected message while transcribing: {msg}"),
        }
    };
    assert!(runner.is_some(), "the job ran and was killed mid-way");
    let survivor = &nodes[0];
    assert!(survivor.logged("running a job from the cluster", &task));
    // Per-node metrics say it: the survivor took over one job; the cluster's queue depth is
    // reported (the job stays in the work queue until it is acked).
    let redelivered = metric(survivor, "earshot_cluster_redelivered_total").await;
    assert_eq!(redelivered, Some(1.0), "redeliveries on the survivor");
    let depth = metric(survivor, "earshot_cluster_queue_depth").await;
    assert!(depth.is_some(), "the cluster's queue depth is a metric");
    let text = done["data"]["text"].as_str().unwrap().to_string();
    for words in ["long history of the world", "this responsibility"] {
        assert!(text.contains(words), "{words:?} not in {text:?}");
    }
    let count = done["data"]["segments"].as_array().map_or(0, Vec::len);
    assert_eq!(count, seen.len(), "each segment once in the result");
    // Nothing more for this task: no second completion.
    client
        .send(json!({"type": "get_result", "data": {"task_id": task}}))
        .await;
    let again = client.expect("transcription_complete").await;
    assert_eq!(again["data"]["text"], text.as_str());
}

/// Sends chunks `range` of a seed upload and expects each acknowledged in turn.
async fn send_chunks(
    c: &mut Client,
    task: &str,
    data: &[u8],
    chunk: usize,
    range: std::ops::Range<usize>,
) {
    for i in range {
        c.send(upload_chunk(task, data, chunk, i)).await;
        let ack = c.expect("chunk_received").await;
        assert_eq!(ack["data"]["chunk_index"], i, "{ack}");
    }
}

/// `upload_resume` on `c`: the `upload_ready` answer's missing chunks. Asked again while the
/// node answers `not_ready` (NATS just came back and JetStream is still recovering).
async fn resume(c: &mut Client, task: &str) -> Vec<u64> {
    let mut ready = Value::Null;
    for _ in 0..40 {
        c.send(json!({"type": "upload_resume", "data": {"task_id": task}}))
            .await;
        ready = c.recv().await;
        if ready["type"] != "error" || ready["data"]["code"] != "not_ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ready["type"], "upload_ready", "{ready}");
    let missing = ready["data"]["missing_chunks"]
        .as_array()
        .expect("missing_chunks");
    missing.iter().map(|v| v.as_u64().unwrap()).collect()
}

/// The file a node assembled from the cluster's chunks.
fn assembled(node_dir: &Path, task: &str, name: &str) -> Vec<u8> {
    let path = node_dir.join("cluster-uploads").join(task).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How many local copies (`received.*.part`) of an upload a node still has.
fn copies_left(node_dir: &Path, task: &str) -> usize {
    let dir = node_dir.join("cluster-uploads").join(task);
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("received."))
                .count()
        })
        .unwrap_or(0)
}

/// Checks that the node in `node_dir` kept the upload's file byte-identical and no local copy
/// of it, then waits for its transcript on `client`; returns the text.
async fn assert_kept_and_transcribed(
    node_dir: &Path,
    task: &str,
    data: &[u8],
    client: &mut Client,
    file: &str,
    max_wer: f64,
) -> String {
    assert!(
        assembled(node_dir, task, "audio.wav") == data,
        "byte-identical"
    );
    assert_eq!(copies_left(node_dir, task), 0, "no local copy left");
    let (_, done) = client.transcript().await;
    let text = done["data"]["text"].as_str().unwrap().to_string();
    assert_wer(file, &text, max_wer);
    text
}

/// An upload half sent through one node.
struct Half {
    /// The file's bytes.
    data: Vec<u8>,
    /// The upload's task id.
    task: String,
    /// Chunks in the file.
    total: usize,
    /// Chunks sent (the first `half`).
    half: usize,
    /// The socket they went through, still open.
    client: Client,
}

/// Starts an upload of corpus `file` through `node` and sends the first half of its chunks.
async fn half_upload(node: &Process, file: &str, chunk: usize) -> Half {
    let data = std::fs::read(common::corpus_file(file)).unwrap();
    let total = data.len().div_ceil(chunk);
    let half = total / 2;
    let mut client = Client::connect(&node.url).await;
    client.send(upload_request(file, &data, chunk)).await;
    let ready = client.expect("upload_ready").await;
    let task = ready["data"]["task_id"].as_str().unwrap().to_string();
    send_chunks(&mut client, &task, &data, chunk, 0..half).await;
    Half {
        data,
        task,
        total,
        half,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_survives_its_node_and_a_nats_restart_and_is_read_on_a_third_node() {
    upload_survives_its_node(Chunks::InNats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_its_bytes_in_a_shared_directory_survives_its_node_and_a_nats_restart() {
    upload_survives_its_node(Chunks::Shared).await;
}

/// Half an upload through A, A killed, resumed through B across a NATS restart, read on C.
async fn upload_survives_its_node(chunks: Chunks) {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&tmp.path().join("nats"));
    // A and B only hold sockets; C transcribes (so B's assembled copy stays to compare).
    let a = chunks.node(tmp.path(), "a", &nats, &["--max-processing", "0"]);
    let b = chunks.node(tmp.path(), "b", &nats, &["--max-processing", "0"]);
    let c = chunks.node(tmp.path(), "c", &nats, &[]);
    wait_ready(&a, true).await;
    let file = "en_jfk.wav";
    let chunk = 32 * 1024;
    // Half through A, then A dies (kill -9): what it acknowledged is in NATS.
    let Half {
        data,
        task,
        total,
        half,
        ..
    } = half_upload(&a, file, chunk).await;
    a.kill9();

    // Resumed on B: exactly the chunks A did not acknowledge are missing.
    let mut on_b = Client::connect(&b.url).await;
    let missing = resume(&mut on_b, &task).await;
    assert_eq!(missing, (half as u64..total as u64).collect::<Vec<_>>());
    send_chunks(&mut on_b, &task, &data, chunk, half..half + 2).await;

    // NATS stops mid-upload: the next chunk is refused at once (not_ready), not hung.
    nats.stop();
    wait_ready(&b, false).await;
    on_b.send(upload_chunk(&task, &data, chunk, half + 2)).await;
    on_b.expect_error("not_ready").await;
    nats.resume();
    wait_ready(&b, true).await;

    // Nothing acknowledged was lost; the refused chunk is missing, and the upload finishes.
    let mut again = Client::connect(&b.url).await;
    let missing = resume(&mut again, &task).await;
    assert_eq!(missing, (half as u64 + 2..total as u64).collect::<Vec<_>>());
    send_chunks(&mut again, &task, &data, chunk, half + 2..total).await;
    again.expect("upload_complete").await;
    // B's local copy had only the chunks it published: the file came from the stored chunks
    // (NATS's pieces, or the shared directory's objects) and the copy is gone.
    let b_dir = tmp.path().join("b");
    let text = assert_kept_and_transcribed(&b_dir, &task, &data, &mut again, file, 0.15).await;
    chunks.assert_purged(tmp.path(), &nats, &task).await;

    // Read on C over HTTP.
    let (status, on_c) = get_json(format!("{}/v1/tasks/{task}", c.http_url())).await;
    assert_eq!(status, StatusCode::OK, "{on_c}");
    assert_eq!(on_c["status"], "completed", "{on_c}");
    assert_eq!(on_c["text"], text.as_str(), "{on_c}");

    // An HTTP request waiting on B (no processing slots) gets the transcript of the job C ran.
    let file = "en_arctic_a0024.wav";
    let response = transcribe_over_http(&b, file).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (http_task, text) = task_and_text(response).await;
    assert_wer(file, &text, 0.3);
    assert!(c.logged("running a job from the cluster", &http_task));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_node_cannot_corrupt_an_upload_another_took_over() {
    stale_node_is_fenced(Chunks::InNats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_node_cannot_corrupt_an_upload_in_a_shared_directory() {
    stale_node_is_fenced(Chunks::Shared).await;
}

/// A paused past its lease while B takes the upload over; A's late chunk is refused.
async fn stale_node_is_fenced(chunks: Chunks) {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(&tmp.path().join("nats"));
    let lease = ["--cluster-lease", "4s", "--max-processing", "0"];
    let a = chunks.node(tmp.path(), "a", &nats, &lease);
    let b = chunks.node(tmp.path(), "b", &nats, &lease);
    let _c = chunks.node(tmp.path(), "c", &nats, &[]);
    wait_ready(&a, true).await;
    let file = "en_arctic_a0024.wav";
    let chunk = 16 * 1024;
    let Half {
        data,
        task,
        total,
        half,
        client: mut on_a,
    } = half_upload(&a, file, chunk).await;

    // A is paused past its lease; the client goes on through B.
    a.signal("STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut on_b = Client::connect(&b.url).await;
    let missing = resume(&mut on_b, &task).await;
    assert_eq!(missing.len(), total - half);
    send_chunks(&mut on_b, &task, &data, chunk, half..total - 1).await;

    // A wakes up and gets a late last chunk with other bytes: refused, not merged.
    a.signal("CONT");
    let mut garbage = upload_chunk(&task, &data, chunk, total - 1);
    let len = data.len() - (total - 1) * chunk;
    let bad = vec![0x55u8; len];
    garbage["data"]["chunk_data"] = json!(common::server::b64(&bad));
    garbage["data"]["chunk_hash"] = json!(common::server::md5_hex(&bad));
    on_a.send(garbage).await;
    let refused = on_a.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");

    // B finishes with the true bytes: the file is the original and transcribes right.
    send_chunks(&mut on_b, &task, &data, chunk, total - 1..total).await;
    on_b.expect("upload_complete").await;
    assert_kept_and_transcribed(&tmp.path().join("b"), &task, &data, &mut on_b, file, 0.3).await;
    chunks.assert_purged(tmp.path(), &nats, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_uploads_over_three_nodes_all_complete_on_more_than_one_node() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(&tmp.path().join("nats"));
    let nodes = [
        node(tmp.path(), "a", &nats, &[]),
        node(tmp.path(), "b", &nats, &[]),
        node(tmp.path(), "c", &nats, &[]),
    ];
    for n in &nodes {
        wait_ready(n, true).await;
    }
    // Two clients per node, each uploading in turn (a node gives one address three upload
    // slots at once), each waiting for its transcript.
    let files = ["en_harvard_birch_canoe.wav", "en_arctic_a0024.wav"];
    let mut lanes = Vec::new();
    for lane in 0..6 {
        let url = nodes[lane % 3].url.clone();
        lanes.push(tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in (lane..20).step_by(6) {
                let file = files[i % 2];
                let data = std::fs::read(common::corpus_file(file)).unwrap();
                let mut c = Client::connect(&url).await;
                let task = seed_upload(&mut c, file, &data, 32 * 1024).await;
                let (_, done) = c.transcript().await;
                assert_wer(file, done["data"]["text"].as_str().unwrap(), 0.3);
                tasks.push(task);
            }
            tasks
        }));
    }
    let mut tasks = Vec::new();
    for lane in lanes {
        tasks.extend(lane.await.expect("every upload completed"));
    }
    assert_eq!(tasks.len(), 20);
    let ran = |n: &Process| {
        tasks
            .iter()
            .any(|t| n.logged("running a job from the cluster", t))
    };
    let busy = nodes.iter().filter(|n| ran(n)).count();
    assert!(busy > 1, "only {busy} node transcribed");
}

/// The binary fast path in the cluster: a window of chunks in flight, each group committed
/// while the next is sent, and chunks sent again right behind their first copy (so some
/// arrive while their group is being made durable). Acks never go back, every chunk counts
/// once, and the file the node keeps is byte-identical; its job reads it without a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upload_with_resent_chunks_is_acked_in_order_and_stored_once() {
    binary_upload_stored_once(Chunks::InNats).await;
}

/// The same with the bytes in a shared directory: the node keeps no copy of its own (the
/// chunks were verified as they came), and the job reads the shared chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upload_into_a_shared_directory_is_written_once_and_verified_as_it_came() {
    binary_upload_stored_once(Chunks::Shared).await;
}

async fn binary_upload_stored_once(chunks: Chunks) {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(&tmp.path().join("nats"));
    let a = chunks.node(tmp.path(), "a", &nats, &[]);
    wait_ready(&a, true).await;
    let file = "en_jfk.wav";
    let data = std::fs::read(common::corpus_file(file)).unwrap();
    let chunk = 8 * 1024;
    let total = data.len().div_ceil(chunk) as u32;
    assert!(total > 32, "several group commits");
    let mut c = Client::connect(&a.url).await;
    c.send(json!({"type": "upload_request", "data": {
        "file_name": file, "file_size": data.len(), "chunk_size": chunk,
        "total_chunks": total, "transport": "binary"}}))
        .await;
    let ready = c.expect("upload_ready").await;
    let (task, window) = common::server::task_and_window(&ready);
    let piece = |i: u32| &data[i as usize * chunk..((i as usize + 1) * chunk).min(data.len())];

    let (mut next, mut stored) = (0u32, 0u64);
    while stored < u64::from(total) {
        while next < total && u64::from(next) < stored + u64::from(window) {
            c.send_binary(common::server::binary_chunk(&task, next, piece(next)))
                .await;
            if next % 3 == 0 {
                // The same chunk again at once: a duplicate, whatever its group is doing.
                c.send_binary(common::server::binary_chunk(&task, next, piece(next)))
                    .await;
            }
            next += 1;
        }
        let ack = c.expect("chunk_ack").await;
        let now = ack["data"]["received_chunks"].as_u64().unwrap();
        assert!(now >= stored, "acks go forward: {now} after {stored}");
        assert!(now <= u64::from(next), "only sent chunks are acked: {ack}");
        stored = now;
    }
    let blake3 = blake3::hash(&data).to_hex().to_string();
    c.send(json!({"type": "upload_finish", "data": {"task_id": task, "file_blake3": blake3}}))
        .await;
    c.expect_upload_complete().await;
    let a_dir = tmp.path().join("a");
    if chunks == Chunks::Shared {
        // Every chunk once, under the one generation, byte for byte; nothing kept on A.
        let gen = Chunks::dir(tmp.path()).join(&task).join("1");
        let stored: Vec<u8> = (0..total)
            .flat_map(|i| std::fs::read(gen.join(i.to_string())).unwrap())
            .collect();
        assert!(stored == data, "the shared chunks are the file");
        assert_eq!(std::fs::read_dir(&gen).unwrap().count(), total as usize);
        let kept = a_dir.join("cluster-uploads").join(&task);
        assert!(!kept.join("audio.wav").exists() && copies_left(&a_dir, &task) == 0);
        let (_, done) = c.transcript().await;
        assert_wer(file, done["data"]["text"].as_str().unwrap(), 0.3);
    } else {
        assert_kept_and_transcribed(&a_dir, &task, &data, &mut c, file, 0.3).await;
    }
    chunks.assert_purged(tmp.path(), &nats, &task).await;
    // The job read the upload's own chunks: no copy of its audio ever went to the object store.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut audio = js.get_stream("OBJ_earshot_audio").await.unwrap();
    let written = audio.info().await.unwrap().state.last_sequence;
    assert_eq!(written, 0, "messages written to the job audio store");
}
