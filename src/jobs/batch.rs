//! The local job runner, [`Batch`]: transcribes files (finished WebSocket uploads and HTTP
//! API requests) queued behind the processing semaphore (seed: 3 at once), decoded in windows
//! on the blocking pool, progress and segments published to the task registry as they are
//! produced. A file that ends before its declared duration still gets its partial transcript,
//! marked `truncated` on the result.
//!
//! This module must not talk to clients (followers relay what it publishes), and must not
//! know about sockets or the application state: it gets exactly what it needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registry::{TaskRegistry, TaskResult};
use super::{Job, JobQueue, Source};
use crate::audio::decode::{DecodeError, DecodeLimits};
use crate::audio::AudioStream;
use crate::domain::{FailureCode, Task, TaskId};
use crate::inference::long::{self, LongError, LongEvent};
use crate::inference::served::{Lease, Served};
use crate::upload::store::{UploadStatus, UploadStorage};

/// How long a job whose model does not fit the memory budget waits before it asks again.
const MODEL_RETRY: Duration = Duration::from_millis(500);

/// Runs transcription jobs in this process. Cheap to clone: each job holds a copy.
#[derive(Clone)]
pub struct Batch {
    /// The served models and their workers; every window goes through the pool's bounded
    /// queue, on the model the job names.
    pub models: Served,
    /// Silero VAD model for cutting long audio at pauses, when present.
    pub vad_model: Option<PathBuf>,
    /// Where progress, segments and results are published.
    pub tasks: Arc<dyn TaskRegistry>,
    /// Upload sessions, whose status follows their transcription.
    pub uploads: Arc<dyn UploadStorage>,
    /// Files transcribed at once (seed: 3); the rest wait queued.
    pub processing_slots: Arc<Semaphore>,
    /// Whisper threads per job, overriding what a job asked.
    pub threads: usize,
    /// Beam width per job (`--beam-size`), overriding what a job asked.
    pub beam_size: u32,
    /// Background work the server's shutdown waits for.
    pub tracker: TaskTracker,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// How long running jobs may go on after shutdown began; they stop at 80 % of it, so an
    /// upload's status can still be written back.
    pub shutdown_grace: Duration,
}

#[async_trait::async_trait]
impl JobQueue for Batch {
    fn submit(&self, job: Job) {
        tracing::info!(task_id = %job.task_id, "queued a job");
        self.tasks.create(job.task_id, job.owner.clone());
        let batch = self.clone();
        self.tracker.spawn(async move { batch.run(job).await });
    }

    async fn resume_unfinished(&self) {
        for job in super::unfinished(self.uploads.as_ref(), self.tasks.as_ref()).await {
            self.submit(job);
        }
    }
}

/// How a job ended, for a queue that must decide what to tell its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// With a result or a failure, recorded in the registry.
    Recorded,
    /// Stopped by the shutdown before its end; nothing recorded for a [`Source::Cluster`] job.
    Stopped,
}

impl Batch {
    async fn run(self, job: Job) {
        let Ok(_slot) = self.processing_slots.clone().acquire_owned().await else {
            return;
        };
        tracing::info!(task_id = %job.task_id, "running a job");
        self.execute(job).await;
    }

    /// Runs one job now, the caller holding its processing slot, and records how it ended.
    pub async fn execute(&self, mut job: Job) -> Ended {
        let (task_id, source, path) = (job.task_id, job.source, job.path.clone());
        if source == Source::Upload {
            self.set_status(task_id, UploadStatus::Transcribing, None)
                .await;
        }
        job.options.threads = self.threads;
        job.options.beam_size = Some(self.beam_size);
        let stop = CancellationToken::new();
        let guard = self.stop_on_shutdown(stop.clone());
        let outcome = match self.lease(job.model.as_deref()).await {
            Ok(lease) => {
                let batch = self.clone();
                let run = move || batch.transcribe(&job, &lease, &stop);
                tokio::task::spawn_blocking(run).await
            }
            Err(failure) => Ok(Err(failure)),
        };
        guard.abort();
        let ended = self.finish(task_id, outcome, source).await;
        if source != Source::Upload {
            let _ = tokio::fs::remove_file(&path).await;
        }
        ended
    }

    /// The job's model, waiting while the memory budget is held by models in use (an accepted
    /// job is not failed for that); `Stopped` if the server shuts down meanwhile.
    async fn lease(&self, model: Option<&str>) -> Result<Lease, Failure> {
        loop {
            match self.models.acquire(model).await {
                Ok(lease) => return Ok(lease),
                Err(refusal) if refusal.is_busy() => {
                    tracing::debug!(%refusal, "the job waits for room for its model");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Failure::Stopped),
                        _ = tokio::time::sleep(MODEL_RETRY) => {}
                    }
                }
                Err(refusal) => return Err(Failure::Other(refusal.to_string())),
            }
        }
    }

    fn stop_on_shutdown(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let token = self.shutdown.clone();
        let grace = self.shutdown_grace;
        tokio::spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(grace.mul_f32(0.8)).await;
            stop.cancel();
        })
    }
}

/// Why a transcription ended without a result.
enum Failure {
    Stopped,
    Audio(DecodeError),
    Other(String),
}

impl Batch {
    fn transcribe(
        &self,
        job: &Job,
        lease: &Lease,
        stop: &CancellationToken,
    ) -> Result<TaskResult, Failure> {
        let (key, path, opts) = (job.task_id, job.path.as_path(), &job.options);
        let started = Instant::now();
        let mut audio = AudioStream::open(path, DecodeLimits::default()).map_err(Failure::Audio)?;
        let total = audio.duration_hint().unwrap_or(0.0);
        self.tasks.progress(key, 0.0);
        let source = long::Source {
            pool: self.models.pool(),
            model: lease.model(),
        };
        let result = long::transcribe_on(
            source,
            || audio.next_chunk(),
            opts,
            self.vad_model.as_deref(),
            stop,
            |event| self.publish(key, total, event),
        );
        match result {
            Ok(transcript) => Ok(TaskResult {
                transcript,
                processing_seconds: started.elapsed().as_secs_f64(),
                task: if opts.translate {
                    Task::Translate
                } else {
                    Task::Transcribe
                },
                truncated: audio.truncation(),
                interrupted: false,
            }),
            Err(LongError::Input(err)) => Err(Failure::Audio(err)),
            // `Stopped`, or a job cut short after the stop (the pool going down with the server).
            Err(_) if stop.is_cancelled() => Err(Failure::Stopped),
            Err(e) => Err(Failure::Other(e.to_string())),
        }
    }

    fn publish(&self, task_id: TaskId, total: f64, event: LongEvent) {
        match event {
            LongEvent::Segment(s) => self.tasks.segment(task_id, s),
            LongEvent::Progress { processed_secs } if total > 0.0 => {
                let progress = (processed_secs / total * 100.0).min(99.9);
                self.tasks.progress(task_id, progress);
            }
            LongEvent::Progress { .. } => {}
        }
    }

    async fn finish(
        &self,
        task_id: TaskId,
        outcome: Result<Result<TaskResult, Failure>, tokio::task::JoinError>,
        source: Source,
    ) -> Ended {
        match outcome {
            Ok(Ok(result)) => {
                tracing::info!(%task_id, secs = result.processing_seconds, "transcribed");
                if let Some(cut) = &result.truncated {
                    tracing::warn!(%task_id, %cut, "the file is truncated");
                }
                crate::metrics::job_done(result.processing_seconds, result.transcript.duration);
                self.tasks.finish(task_id, result).await;
                if source == Source::Upload {
                    self.set_status(task_id, UploadStatus::Done, None).await;
                }
            }
            Ok(Err(Failure::Stopped)) if source == Source::Upload => {
                tracing::info!(%task_id, "transcription stopped by shutdown; it restarts with the server");
                self.set_status(task_id, UploadStatus::Uploaded, None).await;
            }
            Ok(Err(Failure::Stopped)) if source == Source::Cluster => {
                tracing::info!(%task_id, "transcription stopped by shutdown; another node takes it");
                return Ended::Stopped;
            }
            Ok(Err(Failure::Stopped)) => {
                tracing::info!(%task_id, "transcription stopped by shutdown");
                self.tasks
                    .fail(task_id, FailureCode::Stopped, "the server shut down");
            }
            Ok(Err(Failure::Audio(err))) => {
                tracing::warn!(%task_id, %err, "undecodable upload");
                crate::metrics::job_failed();
                self.tasks
                    .fail(task_id, FailureCode::UnsupportedAudio, &err.to_string());
                if source == Source::Upload {
                    let error = Some(err.to_string());
                    self.set_status(task_id, UploadStatus::Failed, error).await;
                }
            }
            Ok(Err(Failure::Other(err))) => self.fail_internal(task_id, &err, source).await,
            Err(join) => self.fail_internal(task_id, &join.to_string(), source).await,
        }
        Ended::Recorded
    }

    async fn fail_internal(&self, task_id: TaskId, err: &str, source: Source) {
        tracing::error!(%task_id, err, "transcription failed");
        crate::metrics::job_failed();
        self.tasks
            .fail(task_id, FailureCode::Internal, "transcription failed");
        if source == Source::Upload {
            let error = Some(err.to_string());
            self.set_status(task_id, UploadStatus::Failed, error).await;
        }
    }

    /// Records an upload's status (a durable meta.json write, on the blocking pool).
    async fn set_status(&self, task_id: TaskId, status: UploadStatus, error: Option<String>) {
        let uploads = self.uploads.clone();
        let write = move || uploads.set_status(task_id, status, error);
        match tokio::task::spawn_blocking(write).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%task_id, %err, "could not record the upload's status"),
            Err(err) => tracing::warn!(%task_id, %err, "could not record the upload's status"),
        }
    }
}
