//! Jobs and their results: the task registry ([`registry`]), the one store of every task's
//! progress and result; the job runner ([`batch`]) that transcribes files through the
//! Whisper pool; [`follow`], one task's segments and end, each once, for a reader.
//! [`JobQueue`] is the interface the sessions and the HTTP API submit work through;
//! [`batch::Batch`] runs it in this process.
//!
//! This module must not talk to clients or know about sockets, routes or the application
//! state: it sits below `app`, which composes it.

pub mod batch;
pub mod follow;
pub mod registry;

use std::path::PathBuf;

pub use follow::{Follow, Update};
pub use registry::{LocalRegistry, Snapshot, TaskEvent, TaskRegistry, TaskResult, TaskState};

use crate::access::Owner;
use crate::domain::TaskId;
use crate::domain::TaskOptions;
use crate::inference::engine::Options;
use crate::upload::store::{Meta, UploadStatus, UploadStorage};

/// One file to transcribe.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task it publishes to.
    pub task_id: TaskId,
    /// The audio file.
    pub path: PathBuf,
    /// Whisper options as asked; the runner sets its own thread count.
    pub options: Options,
    /// The served model to run it with, as the client named it; `None` = the default.
    pub model: Option<String>,
    /// Where the file came from, which decides what is updated and cleaned up at the end.
    pub source: Source,
    /// Who may read the task's result.
    pub owner: Option<Owner>,
}

impl Job {
    /// The transcription of a finished upload, with the options stored with it; the task
    /// belongs to the upload's owner.
    pub fn upload(task_id: TaskId, path: PathBuf, meta: &Meta) -> Self {
        Job {
            task_id,
            path,
            options: engine_options(&meta.options, 0),
            model: meta.options.model.clone(),
            source: Source::Upload,
            owner: meta.owner.clone(),
        }
    }
}

/// Where a job's audio came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A durable upload session: its status is kept in the store, its file kept for resumes.
    Upload,
    /// A one-off file (an HTTP request): removed when the job ends.
    File,
    /// A copy of a job's audio fetched from a cluster: removed when the job ends; a job
    /// stopped by a shutdown is not failed, its queue hands it to another node.
    Cluster,
}

/// Where sessions and the HTTP API hand work; follow a job's task through the registry.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    /// Registers the job's task and queues the job; returns at once.
    fn submit(&self, job: Job);

    /// At start: queues again the jobs a previous run accepted but did not finish.
    async fn resume_unfinished(&self);
}

/// The transcriptions a previous run accepted but did not finish: uploads stored whole
/// (`Uploaded`) that the registry knows no task for.
pub async fn unfinished(uploads: &dyn UploadStorage, tasks: &dyn TaskRegistry) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (task_id, status) in uploads.list() {
        if status != UploadStatus::Uploaded {
            continue;
        }
        let (Ok(meta), Ok(path)) = (uploads.meta(task_id), uploads.audio_path(task_id)) else {
            continue;
        };
        if tasks.snapshot(task_id).await.is_none() {
            tracing::info!(%task_id, "resuming an unfinished transcription");
            jobs.push(Job::upload(task_id, path, &meta));
        }
    }
    jobs
}

/// Whisper options for what a client asked, with `threads` threads.
pub fn engine_options(options: &TaskOptions, threads: usize) -> Options {
    Options {
        language: options.language.clone().filter(|l| l != "auto"),
        translate: options.translate,
        threads,
        zh_script: options.zh_script,
        ..Options::default()
    }
}
