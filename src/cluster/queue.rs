//! The cluster's job queue, [`NatsQueue`]: an HTTP job's audio goes to the object store (a
//! finished upload's is read from the upload's own chunks, through the upload storage), the job
//! to the `EARSHOT_JOBS` work-queue stream; every node pulls from one durable consumer, at most as many
//! jobs as it has free processing slots, and runs them through [`Batch`].
//!
//! While a job runs its node tells NATS it is still working (an in-progress ack three times per
//! `ack_wait`), so a long file is not handed to another node; it acks only once the result or
//! the failure is recorded. A node that dies stops acking: after `ack_wait` NATS delivers the
//! job to another node, which runs it from the start (followers drop the segment indexes they
//! have seen, see [`super::registry`]).
//!
//! This module must not decide how audio is transcribed (that is [`Batch`]'s) and must not hold
//! a file in memory: audio moves between disk and the object store in chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use super::registry::NatsRegistry;
use super::wire::{JobMessage, JOB_SUBJECT};
use super::{timed, within, Cluster, ClusterError, OP_TIMEOUT};
use crate::domain::{FailureCode, TaskId};
use crate::jobs::batch::{Batch, Ended};
use crate::jobs::{Job, JobQueue, Source, TaskRegistry, TaskState};
use crate::upload::store::{StoreError, UploadStatus};

/// The durable consumer every node pulls jobs from.
const WORKERS: &str = "earshot_workers";
/// How long one pull request waits for a job before the next.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// The longest an audio file may take to reach the object store.
const UPLOAD_LIMIT: Duration = Duration::from_secs(600);
/// Deliveries of one job before NATS gives up on it (a job that kills every node it runs on).
const MAX_DELIVER: i64 = 5;

/// Jobs through NATS; cheap to clone.
#[derive(Clone)]
pub struct NatsQueue {
    /// The connection and the shared resources.
    cluster: Arc<Cluster>,
    /// Where tasks are created and their ends recorded.
    registry: Arc<NatsRegistry>,
    /// Runs the jobs this node takes; its processing slots bound what it takes.
    batch: Batch,
    /// Where a job's audio is fetched to while it runs here.
    spool: PathBuf,
}

impl NatsQueue {
    /// The queue, with this node's puller running until the shutdown.
    pub fn start(
        cluster: Arc<Cluster>,
        registry: Arc<NatsRegistry>,
        batch: Batch,
        spool: PathBuf,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&spool)?;
        let queue = NatsQueue {
            cluster,
            registry,
            batch,
            spool,
        };
        let (puller, sampler) = (queue.clone(), queue.cluster.clone());
        let shutdown = queue.batch.shutdown.clone();
        queue.batch.tracker.spawn(async move {
            tokio::select! {
                _ = puller.pull_loop() => {}
                _ = sample_depth(sampler) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(queue)
    }

    /// Puts the audio in the object store (a finished upload's is in the uploads stream
    /// already), then the job on the queue, once its task record is written (so no node can
    /// record its end before its start).
    async fn enqueue(&self, job: &Job) -> Result<(), ClusterError> {
        let message = JobMessage::of(job);
        if !message.audio_in_upload {
            self.store_audio(job).await?;
        }
        self.registry.flush().await?;
        let message = serde_json::to_vec(&message).unwrap_or_default();
        super::registry::publish(&self.cluster, JOB_SUBJECT.into(), message).await
    }

    /// Streams a one-off file into the object store under its task id.
    async fn store_audio(&self, job: &Job) -> Result<(), ClusterError> {
        let mut file =
            tokio::fs::File::open(&job.path)
                .await
                .map_err(|source| ClusterError::Io {
                    context: "opening the job's audio",
                    source,
                })?;
        let name = job.task_id.to_string();
        within(
            UPLOAD_LIMIT,
            self.cluster.audio.put(name.as_str(), &mut file),
        )
        .await?;
        Ok(())
    }

    async fn consumer(&self) -> Result<PullConsumer, ClusterError> {
        let config = pull::Config {
            durable_name: Some(WORKERS.into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.cluster.config.ack_wait,
            max_deliver: MAX_DELIVER,
            ..Default::default()
        };
        timed(self.cluster.jobs.get_or_create_consumer(WORKERS, config)).await
    }

    /// Takes jobs while this node has free processing slots.
    async fn pull_loop(self) {
        let consumer = loop {
            match self.consumer().await {
                Ok(consumer) => break consumer,
                Err(err) => tracing::warn!(%err, "cannot reach the job queue; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let ack_wait = consumer.cached_info().config.ack_wait;
        if ack_wait != self.cluster.config.ack_wait {
            // The consumer is the cluster's: the first node created it, and its ack wait is
            // what NATS redelivers by; this node's in-progress acks must keep to it.
            tracing::warn!(
                cluster = ?ack_wait,
                configured = ?self.cluster.config.ack_wait,
                "the job queue's ack wait was set by the node that created it; using the cluster's"
            );
        }
        loop {
            let slots = self.batch.processing_slots.clone();
            let Ok(slot) = slots.acquire_owned().await else {
                return;
            };
            match next_job(&consumer).await {
                Ok(Some(message)) => {
                    let me = self.clone();
                    self.batch.tracker.spawn(me.run(message, slot, ack_wait));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, "cannot pull from the job queue; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Runs one job taken from the queue, holding a processing slot; `ack_wait` is the
    /// consumer's, which the in-progress acks must beat.
    async fn run(self, message: Message, _slot: OwnedSemaphorePermit, ack_wait: Duration) {
        let Ok(job) = serde_json::from_slice::<JobMessage>(&message.payload) else {
            tracing::warn!("an unreadable job is dropped");
            let _ = timed(message.ack_with(AckKind::Term)).await;
            return;
        };
        let (task_id, upload) = (job.task_id, job.upload);
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if delivered > 1 {
            tracing::info!(%task_id, delivered, "taking over a job another node did not finish");
            crate::metrics::cluster_redelivered();
        }
        let message = Arc::new(message);
        let beat = tokio::spawn(heartbeat(message.clone(), ack_wait / 3));
        let ended = self.transcribe(job).await;
        beat.abort();
        match ended {
            Ok(Ended::Recorded) => {
                if let Err(err) = timed(message.double_ack()).await {
                    tracing::warn!(%task_id, %err, "could not ack a finished job; it may run again");
                    return;
                }
                let name = task_id.to_string();
                let _ = timed(self.cluster.audio.delete(name.as_str())).await;
                if upload {
                    self.upload_done(task_id).await;
                }
            }
            Ok(Ended::Stopped) => {
                let _ = timed(message.ack_with(AckKind::Nak(None))).await;
            }
            Err(err) => {
                tracing::warn!(%task_id, %err, "could not fetch a job's audio; handing it back");
                let later = AckKind::Nak(Some(Duration::from_secs(1)));
                let _ = timed(message.ack_with(later)).await;
            }
        }
    }

    /// Marks a transcribed upload done, so the cluster's upload storage lets go of its chunks.
    async fn upload_done(&self, task_id: TaskId) {
        let uploads = self.batch.uploads.clone();
        let done = move || uploads.set_status(task_id, UploadStatus::Done, None);
        match tokio::task::spawn_blocking(done).await {
            Ok(Ok(())) | Ok(Err(StoreError::NotFound)) => {}
            Ok(Err(err)) => tracing::warn!(%task_id, %err, "could not mark the upload done"),
            Err(err) => tracing::warn!(%task_id, %err, "could not mark the upload done"),
        }
    }

    /// Fetches the audio and transcribes it; a job whose end is recorded already (its ack was
    /// lost) is not run again.
    async fn transcribe(&self, job: JobMessage) -> Result<Ended, ClusterError> {
        let task_id = job.task_id;
        let state = self.registry.snapshot(task_id).await.map(|s| s.state);
        if state.is_some_and(|s| matches!(s, TaskState::Done(_) | TaskState::Failed { .. })) {
            return Ok(Ended::Recorded);
        }
        let path = self.spool.join(format!("{task_id}.audio"));
        let fetched = match job.audio_in_upload {
            true => self.upload_audio(task_id).await,
            false => match self.fetch_audio(task_id, &path).await {
                Ok(()) => Ok(path),
                Err(err) => {
                    let _ = tokio::fs::remove_file(&path).await;
                    Err(err)
                }
            },
        };
        let path = match fetched {
            Ok(path) => path,
            Err(err) => return self.audio_missing(task_id, err).await,
        };
        self.registry.begin(task_id);
        self.registry.running(task_id, job.owner.clone());
        tracing::info!(%task_id, "running a job from the cluster");
        let job = Job {
            task_id,
            path,
            options: job.options,
            model: job.model,
            source: Source::Cluster,
            owner: job.owner,
        };
        Ok(self.batch.execute(job).await)
    }

    /// What happens to a job whose audio could not be fetched: NATS answers but has none (it
    /// expired, or was never stored whole): the task fails; otherwise the job goes back to the
    /// queue for a later try.
    async fn audio_missing(
        &self,
        task_id: TaskId,
        err: ClusterError,
    ) -> Result<Ended, ClusterError> {
        if matches!(err, ClusterError::Nats(_)) && self.cluster.connected() {
            tracing::warn!(%task_id, %err, "a job's audio is missing");
            self.registry
                .fail(task_id, FailureCode::Internal, "the job's audio was lost");
            return Ok(Ended::Recorded);
        }
        Err(err)
    }

    /// A finished upload's file: this node's own if it has it (the node that took the upload
    /// usually runs its job too), else assembled here from the upload's chunks and verified.
    async fn upload_audio(&self, task_id: TaskId) -> Result<PathBuf, ClusterError> {
        let uploads = self.batch.uploads.clone();
        let found = tokio::task::spawn_blocking(move || uploads.audio_path(task_id)).await;
        match found {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(StoreError::Unavailable)) => Err(ClusterError::Timeout(OP_TIMEOUT)),
            Ok(Err(StoreError::Io { context, source })) => {
                Err(ClusterError::Io { context, source })
            }
            Ok(Err(err)) => Err(ClusterError::Nats(err.to_string())),
            Err(join) => Err(ClusterError::Io {
                context: "assembling a job's audio",
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// Copies a job's audio from the object store to `path`, chunk by chunk.
    async fn fetch_audio(&self, task_id: TaskId, path: &Path) -> Result<(), ClusterError> {
        let name = task_id.to_string();
        let mut object = timed(self.cluster.audio.get(name.as_str())).await?;
        let io = |source| ClusterError::Io {
            context: "writing a job's audio",
            source,
        };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = within(OP_TIMEOUT, object.read(&mut buf)).await?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).await.map_err(io)?;
        }
        file.flush().await.map_err(io)
    }
}

/// The next job, or `None` when none came within the pull's wait.
async fn next_job(consumer: &PullConsumer) -> Result<Option<Message>, ClusterError> {
    let fetch = consumer
        .fetch()
        .max_messages(1)
        .expires(PULL_WAIT)
        .messages();
    let mut batch = timed(fetch).await?;
    match tokio::time::timeout(PULL_WAIT + OP_TIMEOUT, batch.next()).await {
        Ok(Some(Ok(message))) => Ok(Some(message)),
        Ok(Some(Err(err))) => Err(ClusterError::Nats(err.to_string())),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// Samples the cluster's queue depth for the metrics.
async fn sample_depth(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if let Ok(depth) = cluster.queue_depth().await {
            crate::metrics::cluster_queue_depth(depth);
        }
    }
}

/// Tells NATS the job is still being worked on, every `every`, until aborted.
async fn heartbeat(message: Arc<Message>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(err) = timed(message.ack_with(AckKind::Progress)).await {
            tracing::debug!(%err, "an in-progress ack failed");
        }
    }
}

#[async_trait::async_trait]
impl JobQueue for NatsQueue {
    fn submit(&self, job: Job) {
        tracing::info!(task_id = %job.task_id, "queued a job in the cluster");
        drop(self.registry.create(job.task_id, job.owner.clone()));
        let queue = self.clone();
        self.batch.tracker.spawn(async move {
            let task_id = job.task_id;
            if let Err(err) = queue.enqueue(&job).await {
                tracing::warn!(%task_id, %err, "could not queue a job in the cluster");
                let message = "the cluster is unreachable; try again later";
                queue.registry.fail(task_id, FailureCode::Stopped, message);
            }
            if job.source == Source::File {
                let _ = tokio::fs::remove_file(&job.path).await;
            }
        });
    }

    async fn resume_unfinished(&self) {
        let uploads = self.batch.uploads.clone();
        for job in crate::jobs::unfinished(uploads.as_ref(), self.registry.as_ref()).await {
            self.submit(job);
        }
    }
}
