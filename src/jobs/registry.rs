//! The task registry: what every transcription task is doing now, and its result once done.
//!
//! A task is one upload or one stream being transcribed. Producers (the batch runner, the live
//! and segment handlers) publish progress and segments here without ever blocking; any number of
//! connections may follow a task — the one that started it, or a later one that asks with
//! `get_result`/`upload_resume` after a dropped connection. Followers that fall behind lose
//! individual events but can always catch up from [`TaskRegistry::snapshot`], so a slow reader
//! never slows a worker. Finished results are written to `results/<task_id>.json` so they
//! survive a restart, and are swept after the session TTL. Each task remembers its [`Owner`]
//! (the API key that created it), so readers can be held to their own tasks.
//!
//! [`TaskRegistry`] is the interface the sessions, the HTTP API and the job runner use;
//! [`LocalRegistry`] is the one-process implementation (memory plus `results/`), and a cluster
//! implementation can stand behind the same trait.
//!
//! This module must not run transcription or touch sockets, and must not block an async thread:
//! its file I/O goes through `tokio::fs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::access::{Caller, Owner};
use crate::audio::Truncation;
use crate::domain::{FailureCode, Task, TaskId};
use crate::transcript::{Segment, Transcript};

/// Events buffered per task for followers that read slowly; past that they catch up from a snapshot.
const EVENT_BUFFER: usize = 256;

/// A finished task's result, as stored and as sent in `transcription_complete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    /// The transcript itself.
    pub transcript: Transcript,
    /// Wall-clock seconds from the start of transcription to its end.
    pub processing_seconds: f64,
    /// Whether the text is a transcription or an English translation, so a result fetched
    /// later (`/v1/tasks/{id}`) names the task the client asked for.
    #[serde(default)]
    pub task: Task,
    /// Set when the file held less audio than it declares, so every interface can say the
    /// transcript is partial. Absent in results stored before it existed, and for streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
    /// Set for a live stream whose connection dropped without `stream_end` and was not resumed
    /// within the grace period: the transcript is what the server had received by then, and
    /// every interface reports the task as interrupted rather than completed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// Where a task stands.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    /// Waiting for a processing slot.
    Queued,
    /// Being transcribed; `progress` is 0–100.
    Running { progress: f64 },
    /// Finished with a result.
    Done(Arc<TaskResult>),
    /// Failed: why, and a message safe to show a client.
    Failed { code: FailureCode, message: String },
}

/// What followers of a task hear.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// Progress changed (0–100).
    Progress(f64),
    /// A new final segment, numbered from 0 within the task.
    Segment { index: usize, segment: Segment },
    /// The task finished or failed; no events follow.
    Finished(TaskState),
}

/// A task's state now plus the segments so far, for a follower that joins late or fell behind.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The task's state.
    pub state: TaskState,
    /// Every final segment published so far.
    pub segments: Vec<Segment>,
}

struct Entry {
    /// Where the task stands.
    state: TaskState,
    /// Final segments so far, for followers that join late.
    segments: Vec<Segment>,
    /// Followers' subscriptions.
    events: broadcast::Sender<TaskEvent>,
    /// Who may read the task (`None`: anyone).
    owner: Option<Owner>,
}

/// A result as persisted in `results/<id>.json`: the result plus its owner, which is never
/// sent to clients (so it is not part of [`TaskResult`]).
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The result.
    #[serde(flatten)]
    result: TaskResult,
    /// Who may read it; absent in results written before owners were kept (readable by all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<Owner>,
}

/// Progress and results of tasks, for producers to publish and followers to read. Producers
/// never block on followers; see the module docs. What may touch storage (reading a result,
/// recording one, sweeping) is async, so no implementation blocks an async thread.
#[async_trait::async_trait]
pub trait TaskRegistry: Send + Sync {
    /// Registers a task (or resets a failed one) owned by `owner` and returns a subscription.
    fn create(&self, task_id: TaskId, owner: Option<Owner>) -> broadcast::Receiver<TaskEvent>;
    /// Follows a task that is running or recently finished.
    fn subscribe(&self, task_id: TaskId) -> Option<broadcast::Receiver<TaskEvent>>;
    /// The task's state and segments whoever owns it (for the server's own bookkeeping;
    /// answers to clients use [`TaskRegistry::snapshot_for`]).
    async fn snapshot(&self, task_id: TaskId) -> Option<Snapshot>;
    /// The task's snapshot if `caller` may see it; a task of another key looks like no task.
    async fn snapshot_for(&self, task_id: TaskId, caller: &Caller) -> Option<Snapshot>;
    /// Marks the task as running with the given progress (0–100).
    fn progress(&self, task_id: TaskId, progress: f64);
    /// Publishes a final segment.
    fn segment(&self, task_id: TaskId, segment: Segment);
    /// Records the result durably and tells followers. May block on I/O.
    async fn finish(&self, task_id: TaskId, result: TaskResult);
    /// Records a failure and tells followers.
    fn fail(&self, task_id: TaskId, code: FailureCode, message: &str);
    /// Forgets finished tasks and deletes results older than `ttl`. May block on I/O.
    async fn sweep(&self, ttl: Duration);
}

/// All tasks of this process, shared by every connection: in memory while they run, results
/// persisted under `results/`.
pub struct LocalRegistry {
    /// In-memory tasks by id; finished ones stay until swept.
    tasks: Mutex<HashMap<TaskId, Entry>>,
    /// Where finished results are persisted.
    results_dir: PathBuf,
}

impl LocalRegistry {
    /// A registry persisting results under `data_dir/results`.
    pub fn new(data_dir: &std::path::Path) -> std::io::Result<Arc<Self>> {
        let results_dir = data_dir.join("results");
        std::fs::create_dir_all(&results_dir)?;
        Ok(Arc::new(Self {
            tasks: Mutex::new(HashMap::new()),
            results_dir,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Entry>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn owned_snapshot(&self, task_id: TaskId) -> Option<(Snapshot, Option<Owner>)> {
        if let Some(found) = self.in_memory(task_id) {
            return Some(found);
        }
        let stored = self.load(task_id).await?;
        let segments = stored.result.transcript.segments.clone();
        let snapshot = Snapshot {
            state: TaskState::Done(Arc::new(stored.result)),
            segments,
        };
        Some((snapshot, stored.owner))
    }

    fn in_memory(&self, task_id: TaskId) -> Option<(Snapshot, Option<Owner>)> {
        let tasks = self.lock();
        let e = tasks.get(&task_id)?;
        let snapshot = Snapshot {
            state: e.state.clone(),
            segments: e.segments.clone(),
        };
        Some((snapshot, e.owner.clone()))
    }

    fn end(&self, task_id: TaskId, state: TaskState) {
        let mut tasks = self.lock();
        if let Some(e) = tasks.get_mut(&task_id) {
            e.state = state.clone();
            let _ = e.events.send(TaskEvent::Finished(state));
        }
    }

    fn result_path(&self, task_id: TaskId) -> PathBuf {
        self.results_dir.join(format!("{task_id}.json"))
    }

    /// Writes the result atomically and durably: temp file, fsync, rename, fsync of the
    /// directory, so a crash leaves the old state or the whole result, never half of one.
    async fn persist(
        &self,
        task_id: TaskId,
        result: TaskResult,
        owner: Option<Owner>,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let path = self.result_path(task_id);
        let tmp = path.with_extension("json.tmp");
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(&serde_json::to_vec(&Stored { result, owner })?)
            .await?;
        file.sync_all().await?;
        tokio::fs::rename(tmp, path).await?;
        tokio::fs::File::open(&self.results_dir)
            .await?
            .sync_all()
            .await
    }

    async fn load(&self, task_id: TaskId) -> Option<Stored> {
        let bytes = tokio::fs::read(self.result_path(task_id)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[async_trait::async_trait]
impl TaskRegistry for LocalRegistry {
    fn create(&self, task_id: TaskId, owner: Option<Owner>) -> broadcast::Receiver<TaskEvent> {
        let (events, rx) = broadcast::channel(EVENT_BUFFER);
        let entry = Entry {
            state: TaskState::Queued,
            segments: Vec::new(),
            events,
            owner,
        };
        self.lock().insert(task_id, entry);
        rx
    }

    fn subscribe(&self, task_id: TaskId) -> Option<broadcast::Receiver<TaskEvent>> {
        self.lock().get(&task_id).map(|e| e.events.subscribe())
    }

    async fn snapshot(&self, task_id: TaskId) -> Option<Snapshot> {
        self.owned_snapshot(task_id)
            .await
            .map(|(snapshot, _)| snapshot)
    }

    async fn snapshot_for(&self, task_id: TaskId, caller: &Caller) -> Option<Snapshot> {
        let (snapshot, owner) = self.owned_snapshot(task_id).await?;
        caller.may_see(owner.as_ref()).then_some(snapshot)
    }

    fn progress(&self, task_id: TaskId, progress: f64) {
        let mut tasks = self.lock();
        if let Some(e) = tasks.get_mut(&task_id) {
            e.state = TaskState::Running { progress };
            let _ = e.events.send(TaskEvent::Progress(progress));
        }
    }

    fn segment(&self, task_id: TaskId, segment: Segment) {
        let mut tasks = self.lock();
        if let Some(e) = tasks.get_mut(&task_id) {
            let index = e.segments.len();
            e.segments.push(segment.clone());
            let _ = e.events.send(TaskEvent::Segment { index, segment });
        }
    }

    async fn finish(&self, task_id: TaskId, result: TaskResult) {
        let owner = self.lock().get(&task_id).and_then(|e| e.owner.clone());
        if let Err(err) = self.persist(task_id, result.clone(), owner).await {
            tracing::warn!(%task_id, %err, "could not persist a result; it stays in memory only");
        }
        self.end(task_id, TaskState::Done(Arc::new(result)));
    }

    fn fail(&self, task_id: TaskId, code: FailureCode, message: &str) {
        let message = message.to_string();
        self.end(task_id, TaskState::Failed { code, message });
    }

    async fn sweep(&self, ttl: Duration) {
        self.lock().retain(|_, e| {
            !matches!(e.state, TaskState::Done(_) | TaskState::Failed { .. })
                || e.events.receiver_count() > 0
        });
        let Ok(mut dir) = tokio::fs::read_dir(&self.results_dir).await else {
            return;
        };
        let now = SystemTime::now();
        while let Ok(Some(entry)) = dir.next_entry().await {
            let modified = entry.metadata().await.and_then(|m| m.modified());
            let old = modified.is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= ttl);
            if old {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(text: &str) -> Segment {
        Segment::new(0.0, 1.0, text)
    }

    fn result() -> TaskResult {
        TaskResult {
            transcript: Transcript {
                language: "en".into(),
                language_probability: None,
                duration: 1.0,
                segments: vec![seg("hello")],
            },
            processing_seconds: 0.5,
            task: Task::Transcribe,
            truncated: None,
            interrupted: false,
        }
    }

    #[tokio::test]
    async fn followers_hear_events_and_late_joiners_get_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let reg = LocalRegistry::new(dir.path()).unwrap();
        let id = TaskId::new_v4();
        let mut rx = reg.create(id, None);
        reg.progress(id, 50.0);
        reg.segment(id, seg("a"));
        assert!(matches!(rx.try_recv().unwrap(), TaskEvent::Progress(p) if p == 50.0));
        assert!(matches!(
            rx.try_recv().unwrap(),
            TaskEvent::Segment { index: 0, .. }
        ));
        let snap = reg.snapshot(id).await.unwrap();
        assert_eq!(snap.segments, vec![seg("a")]);
        assert_eq!(snap.state, TaskState::Running { progress: 50.0 });
    }

    #[tokio::test]
    async fn results_survive_a_new_registry_and_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::new_v4();
        {
            let reg = LocalRegistry::new(dir.path()).unwrap();
            reg.create(id, None);
            reg.finish(id, result()).await;
        }
        let reg = LocalRegistry::new(dir.path()).unwrap();
        let snap = reg.snapshot(id).await.expect("result reloaded from disk");
        assert_eq!(snap.state, TaskState::Done(Arc::new(result())));
        reg.sweep(Duration::ZERO).await;
        assert!(reg.snapshot(id).await.is_none());
    }

    #[tokio::test]
    async fn only_the_owner_sees_an_owned_task_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::new_v4();
        let ip = "127.0.0.1".parse().unwrap();
        let alice = Caller {
            owner: Some(Owner::of_key("alice")),
            addr: ip,
        };
        let bob = Caller {
            owner: Some(Owner::of_key("bob")),
            addr: ip,
        };
        {
            let reg = LocalRegistry::new(dir.path()).unwrap();
            reg.create(id, alice.owner.clone());
            assert!(reg.snapshot_for(id, &alice).await.is_some());
            assert!(reg.snapshot_for(id, &bob).await.is_none());
            assert!(reg.snapshot_for(id, &Caller::anonymous(ip)).await.is_none());
            reg.finish(id, result()).await;
        }
        let reg = LocalRegistry::new(dir.path()).unwrap();
        assert!(reg.snapshot_for(id, &alice).await.is_some());
        assert!(reg.snapshot_for(id, &bob).await.is_none());
        let bytes = std::fs::read(reg.result_path(id)).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("alice"));
    }

    #[tokio::test]
    async fn results_written_before_owners_are_readable_by_all() {
        let dir = tempfile::tempdir().unwrap();
        let reg = LocalRegistry::new(dir.path()).unwrap();
        let id = TaskId::new_v4();
        let old = serde_json::to_vec(&result()).unwrap();
        std::fs::write(reg.result_path(id), old).unwrap();
        let bob = Caller {
            owner: Some(Owner::of_key("bob")),
            addr: "127.0.0.1".parse().unwrap(),
        };
        assert!(reg.snapshot_for(id, &bob).await.is_some());
    }

    #[tokio::test]
    async fn a_truncation_is_persisted_and_older_results_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::new_v4();
        let cut = TaskResult {
            interrupted: false,
            truncated: Truncation::detect(5.5, Some(11.0)),
            ..result()
        };
        let reg = LocalRegistry::new(dir.path()).unwrap();
        reg.create(id, None);
        reg.finish(id, cut.clone()).await;
        let reloaded = LocalRegistry::new(dir.path()).unwrap();
        assert_eq!(
            reloaded.snapshot(id).await.unwrap().state,
            TaskState::Done(Arc::new(cut))
        );

        let mut old = serde_json::to_value(result()).unwrap();
        assert!(old.get("truncated").is_none(), "absent unless truncated");
        old.as_object_mut().unwrap().remove("task");
        let loaded: TaskResult = serde_json::from_value(old).unwrap();
        assert_eq!(loaded.truncated, None);
    }
}
