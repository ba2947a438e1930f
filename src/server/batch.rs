//! Transcribing uploaded files (WebSocket uploads and HTTP API requests): queued behind the
//! processing semaphore (seed: 3 at once), decoded in windows on the blocking pool, progress
//! and segments published to the task registry as they are produced. A file that ends before
//! its declared duration still gets its partial transcript, marked `truncated` on the result.
//!
//! This module must not talk to clients; followers relay what it publishes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::access::Owner;
use crate::audio::decode::{DecodeError, DecodeLimits};
use crate::audio::AudioStream;
use crate::format::Task;
use crate::inference::engine::Options;
use crate::inference::long::{self, LongError, LongEvent};
use crate::protocol::message::TaskOptions;
use crate::protocol::{ErrorCode, TaskId};
use crate::tasks::TaskResult;
use crate::upload::store::{Meta, UploadStatus};

/// Queues the transcription of an uploaded file; returns at once. The task belongs to the
/// upload's owner.
pub fn start(state: &Arc<AppState>, task_id: TaskId, path: PathBuf, meta: &Meta) {
    let opts = engine_options(state, &meta.options);
    spawn(
        state,
        task_id,
        path,
        opts,
        Source::Upload,
        meta.owner.clone(),
    );
}

/// Queues the transcription of a file that arrived outside the upload protocol (an HTTP
/// request): same processing slots, long-audio path and task registry as uploads; there is no
/// upload session to update, and the file is deleted once transcribed. Returns at once; follow
/// the task through [`AppState::tasks`].
pub fn start_file(
    state: &Arc<AppState>,
    task_id: TaskId,
    path: PathBuf,
    options: Options,
    owner: Option<Owner>,
) {
    spawn(state, task_id, path, options, Source::File, owner);
}

/// Where a task's audio came from, which decides what is updated and cleaned up at the end.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// A durable upload session: its status is kept in the store, its file kept for resumes.
    Upload,
    /// A one-off file (HTTP): removed when the task ends.
    File,
}

fn spawn(
    state: &Arc<AppState>,
    task_id: TaskId,
    path: PathBuf,
    opts: Options,
    source: Source,
    owner: Option<Owner>,
) {
    let key = task_id.to_string();
    state.tasks.create(&key, owner);
    let state = state.clone();
    state.clone().tracker.spawn(async move {
        let Ok(_slot) = state.processing_slots.clone().acquire_owned().await else {
            return;
        };
        if source == Source::Upload {
            set_status(&state, task_id, UploadStatus::Transcribing, None);
        }
        let stop = CancellationToken::new();
        let guard = stop_on_shutdown(&state, stop.clone());
        let st = state.clone();
        let file = path.clone();
        let run = tokio::task::spawn_blocking(move || transcribe(&st, &key, &file, &opts, &stop));
        let outcome = run.await;
        guard.abort();
        finish(&state, task_id, outcome, source);
        if source == Source::File {
            let _ = tokio::fs::remove_file(&path).await;
        }
    });
}

/// Restarts transcriptions that a previous run accepted but did not finish.
pub fn resume_unfinished(state: &Arc<AppState>) {
    for (task_id, status) in state.uploads.list() {
        if status != UploadStatus::Uploaded {
            continue;
        }
        let (Ok(meta), Ok(path)) = (
            state.uploads.meta(task_id),
            state.uploads.audio_path(task_id),
        ) else {
            continue;
        };
        if state.tasks.snapshot(&task_id.to_string()).is_none() {
            tracing::info!(%task_id, "resuming an unfinished transcription");
            start(state, task_id, path, &meta);
        }
    }
}

fn stop_on_shutdown(state: &Arc<AppState>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let token = state.shutdown.clone();
    let grace = state.config.shutdown_grace;
    tokio::spawn(async move {
        token.cancelled().await;
        tokio::time::sleep(grace.mul_f32(0.8)).await;
        stop.cancel();
    })
}

/// Why a transcription ended without a result.
enum Failure {
    Stopped,
    Audio(DecodeError),
    Other(String),
}

fn transcribe(
    state: &AppState,
    key: &str,
    path: &Path,
    opts: &Options,
    stop: &CancellationToken,
) -> Result<TaskResult, Failure> {
    let started = Instant::now();
    let mut audio = AudioStream::open(path, DecodeLimits::default()).map_err(Failure::Audio)?;
    let total = audio.duration_hint().unwrap_or(0.0);
    state.tasks.progress(key, 0.0);
    let result = long::transcribe(
        &state.pool,
        || audio.next_chunk(),
        opts,
        state.vad_model.as_deref(),
        stop,
        |event| publish(state, key, total, event),
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
        }),
        Err(LongError::Input(err)) => Err(Failure::Audio(err)),
        // `Stopped`, or a job cut short after the stop (the pool going down with the server).
        Err(_) if stop.is_cancelled() => Err(Failure::Stopped),
        Err(e) => Err(Failure::Other(e.to_string())),
    }
}

fn publish(state: &AppState, key: &str, total: f64, event: LongEvent) {
    match event {
        LongEvent::Segment(s) => state.tasks.segment(key, s),
        LongEvent::Progress { processed_secs } if total > 0.0 => {
            state
                .tasks
                .progress(key, (processed_secs / total * 100.0).min(99.9));
        }
        LongEvent::Progress { .. } => {}
    }
}

/// Whisper options for a task: the pool's thread setting plus what the client asked.
pub fn engine_options(state: &AppState, options: &TaskOptions) -> Options {
    Options {
        language: options.language.clone().filter(|l| l != "auto"),
        translate: options.translate,
        threads: state.config.threads,
        ..Options::default()
    }
}

fn finish(
    state: &AppState,
    task_id: TaskId,
    outcome: Result<Result<TaskResult, Failure>, tokio::task::JoinError>,
    source: Source,
) {
    let key = task_id.to_string();
    let status = |status, error| {
        if source == Source::Upload {
            set_status(state, task_id, status, error);
        }
    };
    match outcome {
        Ok(Ok(result)) => {
            tracing::info!(%task_id, secs = result.processing_seconds, "transcribed");
            if let Some(cut) = &result.truncated {
                tracing::warn!(%task_id, %cut, "the file is truncated");
            }
            crate::http::metrics::job_done(&result);
            state.tasks.finish(&key, result);
            status(UploadStatus::Done, None);
        }
        Ok(Err(Failure::Stopped)) if source == Source::Upload => {
            tracing::info!(%task_id, "transcription stopped by shutdown; it restarts with the server");
            set_status(state, task_id, UploadStatus::Uploaded, None);
        }
        Ok(Err(Failure::Stopped)) => {
            tracing::info!(%task_id, "transcription stopped by shutdown");
            state
                .tasks
                .fail(&key, ErrorCode::NotReady.as_str(), "the server shut down");
        }
        Ok(Err(Failure::Audio(err))) => {
            tracing::warn!(%task_id, %err, "undecodable upload");
            crate::http::metrics::job_failed();
            state
                .tasks
                .fail(&key, ErrorCode::UnsupportedAudio.as_str(), &err.to_string());
            status(UploadStatus::Failed, Some(err.to_string()));
        }
        Ok(Err(Failure::Other(err))) => fail_internal(state, task_id, &err, source),
        Err(join) => fail_internal(state, task_id, &join.to_string(), source),
    }
}

fn fail_internal(state: &AppState, task_id: TaskId, err: &str, source: Source) {
    tracing::error!(%task_id, err, "transcription failed");
    crate::http::metrics::job_failed();
    state.tasks.fail(
        &task_id.to_string(),
        ErrorCode::Internal.as_str(),
        "transcription failed",
    );
    if source == Source::Upload {
        set_status(state, task_id, UploadStatus::Failed, Some(err.to_string()));
    }
}

fn set_status(state: &AppState, task_id: TaskId, status: UploadStatus, error: Option<String>) {
    if let Err(err) = state.uploads.set_status(task_id, status, error) {
        tracing::warn!(%task_id, %err, "could not record the upload's status");
    }
}
