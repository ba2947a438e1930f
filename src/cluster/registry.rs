//! The cluster's task registry, [`NatsRegistry`]: each task's record (state, result, owner) in
//! the KV bucket, its events (progress, segments, end) on its own subject of the events stream.
//!
//! Producers (the job runner, live streams) never wait on NATS: their writes go through one
//! bounded queue to one writer task, which writes them in order, each under a deadline. A full
//! queue drops progress and segments (the result holds every segment; a warning says so).
//!
//! Followers on any node hear a task through a *mirror*: a local entry fed by an ordered
//! consumer on the task's subject that replays its events from the first, so a node that joins
//! late sees the same events, in the same order, as the node that runs the job. A job run again
//! after its node died numbers its segments from 0 again; the mirror keeps the first of each
//! index, so followers see each segment once.
//!
//! This module must not run transcription or touch sockets, and must not block an async thread.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::wire::{self, Event, Record, State};
use super::{timed, Cluster, ClusterError};
use crate::access::{Caller, Owner};
use crate::domain::{FailureCode, TaskId};
use crate::jobs::{Snapshot, TaskEvent, TaskRegistry, TaskResult, TaskState};
use crate::transcript::Segment;

/// Writes waiting for the writer task; past that, progress and segments are dropped.
const WRITE_QUEUE: usize = 4096;
/// Events buffered per followed task for slow followers (they catch up from the snapshot).
const EVENT_BUFFER: usize = 256;
/// How long a snapshot waits for a new mirror to replay a task's events.
const CATCH_UP: Duration = Duration::from_secs(3);
/// How often a running task's record is rewritten with its progress (its events carry every
/// step; the record is what a node without a mirror reads).
const RECORD_EVERY: Duration = Duration::from_secs(2);

/// One write, in the order it was asked for.
enum Write {
    /// Forget a task's old events (a task created again starts afresh).
    Purge(TaskId),
    /// Replace a task's record.
    Put(TaskId, Record),
    /// Say in a task's record that it runs, unless the record says it ended already (a late
    /// progress from a node that lost the job must not undo its end).
    Running(TaskId, Record),
    /// Publish one event of a task.
    Publish(TaskId, Event),
    /// Answer once everything queued before has been written (or given up on).
    Flush(oneshot::Sender<()>),
}

/// A task followed on this node.
struct Entry {
    /// Where the task stands, as its events say.
    state: TaskState,
    /// Its final segments, by index.
    segments: Vec<Segment>,
    /// Local followers.
    events: broadcast::Sender<TaskEvent>,
    /// Who may read it, once known (from `create` or the KV record).
    owner: Option<Option<Owner>>,
    /// Whether the mirror has replayed every event published before it started.
    caught_up: watch::Sender<bool>,
    /// The mirror task, stopped when the entry is forgotten.
    mirror: tokio::task::AbortHandle,
}

/// Tasks in NATS, followed locally through mirrors.
pub struct NatsRegistry {
    /// The connection and the bucket and streams.
    cluster: Arc<Cluster>,
    /// Tasks followed on this node.
    tasks: Mutex<HashMap<TaskId, Entry>>,
    /// The next segment index of each task produced on this node.
    produced: Mutex<HashMap<TaskId, usize>>,
    /// Jobs running on this node: who may read each, and when its record last said how far,
    /// so `GET /v1/tasks/{id}` on any node reads `running` and a recent progress.
    running: Mutex<HashMap<TaskId, (Option<Owner>, std::time::Instant)>>,
    /// The writer task's queue.
    writes: mpsc::Sender<Write>,
    /// Where mirrors are spawned (callers of the sync methods may be on blocking threads).
    runtime: tokio::runtime::Handle,
    /// Itself, for the mirrors it spawns.
    this: Weak<NatsRegistry>,
}

impl NatsRegistry {
    /// The registry, with its writer task running on the current runtime.
    pub fn start(cluster: Arc<Cluster>) -> Arc<Self> {
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(cluster.clone(), queue));
        Arc::new_cyclic(|this| NatsRegistry {
            cluster,
            tasks: Mutex::new(HashMap::new()),
            produced: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            writes,
            runtime: tokio::runtime::Handle::current(),
            this: this.clone(),
        })
    }

    /// Waits until every write asked for so far is done (or given up on).
    pub async fn flush(&self) -> Result<(), ClusterError> {
        let (done, wait) = oneshot::channel();
        self.writes
            .send(Write::Flush(done))
            .await
            .map_err(|_| ClusterError::Nats("the writer stopped".into()))?;
        super::within(super::OP_TIMEOUT * 4, wait).await
    }

    /// A job starts (or starts again) on this node: its segments are numbered from 0.
    pub fn begin(&self, task_id: TaskId) {
        lock(&self.produced).insert(task_id, 0);
    }

    /// A job taken from the queue runs here now: its record says `running` from now on.
    pub fn running(&self, task_id: TaskId, owner: Option<Owner>) {
        let now = std::time::Instant::now();
        lock(&self.running).insert(task_id, (owner.clone(), now));
        let state = State::Running { progress: 0.0 };
        self.write(Write::Running(task_id, Record { state, owner }));
    }

    fn write(&self, write: Write) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.writes.try_send(write) {
            tracing::warn!("the cluster write queue is full; an event is dropped");
        }
    }

    /// Adds a local entry and its mirror, unless the task is followed already.
    fn follow(&self, task_id: TaskId, owner: Option<Option<Owner>>, fresh: bool) {
        let mut tasks = lock(&self.tasks);
        if let Some(e) = tasks.get_mut(&task_id) {
            if owner.is_some() {
                e.owner = owner;
            }
            return;
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (caught_up, _) = watch::channel(false);
        let me = self.this.clone();
        let mirror = self
            .runtime
            .spawn(async move {
                if let Some(me) = me.upgrade() {
                    me.mirror(task_id, fresh).await;
                }
            })
            .abort_handle();
        let entry = Entry {
            state: TaskState::Queued,
            segments: Vec::new(),
            events,
            owner,
            caught_up,
            mirror,
        };
        tasks.insert(task_id, entry);
    }

    /// Replays and follows the task's events into its entry; forgets the entry when NATS fails
    /// it, so its followers are told (their channel closes) instead of waiting forever.
    async fn mirror(self: Arc<Self>, task_id: TaskId, fresh: bool) {
        if fresh {
            // The purge of an older run's events must land before they are replayed.
            let _ = self.flush().await;
        }
        if let Err(err) = self.replay(task_id).await {
            tracing::warn!(%task_id, %err, "lost the task's events");
        }
        let mut tasks = lock(&self.tasks);
        let over = tasks.get(&task_id).is_some_and(|e| is_over(&e.state));
        if !over {
            tasks.remove(&task_id);
        }
    }

    async fn replay(&self, task_id: TaskId) -> Result<(), ClusterError> {
        let config = pull::OrderedConfig {
            filter_subject: wire::events_of(task_id),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let consumer = timed(self.cluster.events.create_consumer(config)).await?;
        if consumer.cached_info().num_pending == 0 {
            self.mark_caught_up(task_id);
        }
        let mut messages = timed(consumer.messages()).await?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(ClusterError::nats)?;
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            let Ok(event) = serde_json::from_slice::<Event>(&message.payload) else {
                tracing::warn!(%task_id, "an unreadable task event is skipped");
                continue;
            };
            let end = matches!(event, Event::End { .. });
            self.apply(task_id, event);
            if pending == 0 {
                self.mark_caught_up(task_id);
            }
            if end {
                self.mark_caught_up(task_id);
                return Ok(());
            }
        }
        Ok(())
    }

    fn mark_caught_up(&self, task_id: TaskId) {
        if let Some(e) = lock(&self.tasks).get(&task_id) {
            e.caught_up.send_replace(true);
        }
    }

    /// One event into the task's entry and out to its followers.
    fn apply(&self, task_id: TaskId, event: Event) {
        let mut tasks = lock(&self.tasks);
        let Some(e) = tasks.get_mut(&task_id) else {
            return;
        };
        match event {
            Event::Progress { progress } => {
                e.state = TaskState::Running { progress };
                let _ = e.events.send(TaskEvent::Progress(progress));
            }
            // A run after a node died repeats the indexes already heard: keep the first.
            Event::Segment { index, segment } if index == e.segments.len() => {
                e.segments.push(segment.clone());
                let _ = e.events.send(TaskEvent::Segment { index, segment });
            }
            Event::Segment { .. } => {}
            Event::End { state } => {
                e.state = state.into();
                let _ = e.events.send(TaskEvent::Finished(e.state.clone()));
            }
        }
    }

    /// The local entry's snapshot and owner, if it is caught up and its owner known.
    fn local(&self, task_id: TaskId) -> Option<(Snapshot, Option<Owner>)> {
        let tasks = lock(&self.tasks);
        let e = tasks.get(&task_id)?;
        if !*e.caught_up.borrow() {
            return None;
        }
        let owner = e.owner.clone()?;
        let snapshot = Snapshot {
            state: e.state.clone(),
            segments: e.segments.clone(),
        };
        Some((snapshot, owner))
    }

    async fn record(&self, task_id: TaskId) -> Option<Record> {
        match timed(self.cluster.tasks.get(task_id.to_string())).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%task_id, %err, "could not read the task record");
                None
            }
        }
    }

    async fn owned_snapshot(&self, task_id: TaskId) -> Option<(Snapshot, Option<Owner>)> {
        if let Some(found) = self.local(task_id) {
            if is_over(&found.0.state) {
                return Some(found);
            }
            // This node's mirror may lag behind the node that ran the job (its client heard
            // the end already): the record, written before the end event, says if it ended.
            let record = self.record(task_id).await;
            return Some(record.and_then(ended).unwrap_or(found));
        }
        let record = self.record(task_id).await?;
        if let Some(found) = ended(record.clone()) {
            return Some(found);
        }
        let owner = record.owner.clone();
        let state = TaskState::from(record.state);
        // Queued or running, perhaps on another node: its events say how far.
        self.follow(task_id, Some(owner.clone()), false);
        let caught_up = lock(&self.tasks)
            .get(&task_id)
            .map(|e| e.caught_up.subscribe());
        if let Some(mut caught_up) = caught_up {
            let _ = tokio::time::timeout(CATCH_UP, caught_up.wait_for(|c| *c)).await;
        }
        self.local(task_id).or_else(|| {
            let segments = Vec::new();
            Some((Snapshot { state, segments }, owner))
        })
    }

    fn end(&self, task_id: TaskId, state: State) {
        lock(&self.produced).remove(&task_id);
        lock(&self.running).remove(&task_id);
        let owner = lock(&self.tasks)
            .get(&task_id)
            .and_then(|e| e.owner.clone())
            .flatten();
        let record = Record {
            state: state.clone(),
            owner,
        };
        self.write(Write::Put(task_id, record));
        self.write(Write::Publish(task_id, Event::End { state }));
    }
}

/// The snapshot of a task whose record says it ended; `None` while it is queued or running.
fn ended(record: Record) -> Option<(Snapshot, Option<Owner>)> {
    let state = TaskState::from(record.state);
    if !is_over(&state) {
        return None;
    }
    let segments = match &state {
        TaskState::Done(result) => result.transcript.segments.clone(),
        _ => Vec::new(),
    };
    Some((Snapshot { state, segments }, record.owner))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_over(state: &TaskState) -> bool {
    matches!(state, TaskState::Done(_) | TaskState::Failed { .. })
}

/// Writes what the registry queues, in order, each under a deadline.
async fn write_loop(cluster: Arc<Cluster>, mut queue: mpsc::Receiver<Write>) {
    while let Some(write) = queue.recv().await {
        let result = match write {
            Write::Purge(task_id) => {
                let purge = cluster.events.purge().filter(wire::events_of(task_id));
                timed(purge.into_future()).await.map(|_| ())
            }
            Write::Put(task_id, record) => {
                let bytes = serde_json::to_vec(&record).unwrap_or_default();
                let put = cluster.tasks.put(task_id.to_string(), bytes.into());
                timed(put).await.map(|_| ())
            }
            Write::Running(task_id, record) => put_running(&cluster, task_id, record).await,
            Write::Publish(task_id, event) => {
                let subject = wire::event_subject(task_id, event.kind());
                let bytes = serde_json::to_vec(&event).unwrap_or_default();
                publish(&cluster, subject, bytes).await
            }
            Write::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(err) = result {
            tracing::warn!(%err, "a cluster write failed");
        }
    }
}

/// Writes a `running` record with compare-and-set, unless the task has ended already.
async fn put_running(
    cluster: &Cluster,
    task_id: TaskId,
    record: Record,
) -> Result<(), ClusterError> {
    let key = task_id.to_string();
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    let revision = match timed(cluster.tasks.entry(key.clone())).await? {
        Some(entry) => {
            let old = serde_json::from_slice::<Record>(&entry.value).ok();
            let ended =
                old.is_some_and(|r| matches!(r.state, State::Done { .. } | State::Failed { .. }));
            if ended {
                return Ok(());
            }
            entry.revision
        }
        None => 0,
    };
    // A conflict means someone wrote it meanwhile (its end, most likely): leave theirs.
    let _ = timed(cluster.tasks.update(key, bytes.into(), revision)).await;
    Ok(())
}

/// Publishes to JetStream and waits for the stream to store it.
pub(super) async fn publish(
    cluster: &Cluster,
    subject: String,
    bytes: Vec<u8>,
) -> Result<(), ClusterError> {
    let ack = timed(cluster.js.publish(subject, bytes.into())).await?;
    timed(ack.into_future()).await.map(|_| ())
}

#[async_trait::async_trait]
impl TaskRegistry for NatsRegistry {
    fn create(&self, task_id: TaskId, owner: Option<Owner>) -> broadcast::Receiver<TaskEvent> {
        if let Some(old) = lock(&self.tasks).remove(&task_id) {
            old.mirror.abort();
        }
        self.begin(task_id);
        self.write(Write::Purge(task_id));
        let record = Record {
            state: State::Queued,
            owner: owner.clone(),
        };
        self.write(Write::Put(task_id, record));
        self.follow(task_id, Some(owner), true);
        let tasks = lock(&self.tasks);
        let e = tasks.get(&task_id).expect("just added");
        e.caught_up.send_replace(true);
        e.events.subscribe()
    }

    fn subscribe(&self, task_id: TaskId) -> Option<broadcast::Receiver<TaskEvent>> {
        self.follow(task_id, None, false);
        lock(&self.tasks)
            .get(&task_id)
            .map(|e| e.events.subscribe())
    }

    async fn snapshot(&self, task_id: TaskId) -> Option<Snapshot> {
        self.owned_snapshot(task_id).await.map(|(s, _)| s)
    }

    async fn snapshot_for(&self, task_id: TaskId, caller: &Caller) -> Option<Snapshot> {
        let (snapshot, owner) = self.owned_snapshot(task_id).await?;
        caller.may_see(owner.as_ref()).then_some(snapshot)
    }

    fn progress(&self, task_id: TaskId, progress: f64) {
        self.write(Write::Publish(task_id, Event::Progress { progress }));
        let owner = match lock(&self.running).get_mut(&task_id) {
            Some((owner, at)) if at.elapsed() >= RECORD_EVERY => {
                *at = std::time::Instant::now();
                owner.clone()
            }
            _ => return,
        };
        let state = State::Running { progress };
        self.write(Write::Running(task_id, Record { state, owner }));
    }

    fn segment(&self, task_id: TaskId, segment: Segment) {
        let index = {
            let mut produced = lock(&self.produced);
            let next = produced.entry(task_id).or_insert(0);
            *next += 1;
            *next - 1
        };
        self.write(Write::Publish(task_id, Event::Segment { index, segment }));
    }

    async fn finish(&self, task_id: TaskId, result: TaskResult) {
        self.end(task_id, State::Done { result });
        if let Err(err) = self.flush().await {
            tracing::warn!(%task_id, %err, "could not confirm the result is stored");
        }
    }

    fn fail(&self, task_id: TaskId, code: FailureCode, message: &str) {
        let message = message.to_string();
        self.end(task_id, State::Failed { code, message });
    }

    async fn sweep(&self, _ttl: Duration) {
        // Records, events and audio expire in NATS (max age = the TTL); here only the
        // entries of finished tasks nobody follows any more are forgotten.
        lock(&self.tasks).retain(|_, e| {
            let keep = !is_over(&e.state) || e.events.receiver_count() > 0;
            if !keep {
                e.mirror.abort();
            }
            keep
        });
    }
}
