//! The inference pool: one model in memory, a fixed set of worker threads, a bounded queue.
//!
//! The model (`WhisperContext`) is loaded once and shared; each worker thread owns one
//! `WhisperState` (the per-decode scratch memory), so `workers` jobs run at a time and at most
//! `queue_capacity` wait. [`Pool::submit`] never blocks: a full queue answers [`Busy`], which a
//! server turns into "try again later". Each job streams its segments back over a small
//! bounded channel; dropping the [`JobHandle`] cancels the job (whisper.cpp's abort callback
//! sees the closed channel), and a job abandoned while still queued is skipped. A job's audio is
//! a [`SharedAudio`] handle, so a caller that lends its buffer pays no copy, and the worker lets
//! go of it before the final event, so the lender has its buffer to itself again when it hears.
//!
//! This module must not cut audio into windows or know about files and sockets: it runs the
//! jobs it is given, in order, and reports what happened.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use whisper_rs::{WhisperContext, WhisperState};

use super::engine::{self, Detection, InferenceError, Options};
use crate::audio::{SharedAudio, SAMPLE_RATE};
use crate::domain::ZhScript;
use crate::transcript::Segment;

/// Events buffered per job before the worker waits for the requester to read them.
const REPLY_CAPACITY: usize = 64;

/// How to build a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The ggml Whisper model to load (once, shared by all workers).
    pub model_path: PathBuf,
    /// Worker threads, i.e. jobs decoded at the same time; each holds its own Whisper state.
    pub workers: usize,
    /// Jobs that may wait for a worker; beyond this, `submit` answers [`Busy`].
    pub queue_capacity: usize,
    /// Script for Mandarin output when a job does not name one (the server's `--zh-script`).
    pub zh_script: ZhScript,
}

/// The queue is full; the caller should retry later (or tell its client to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the transcription queue is full ({queue_len} jobs waiting)")]
pub struct Busy {
    /// Jobs waiting when the submission was refused, for the caller's message or metrics.
    pub queue_len: usize,
}

/// What a job reports, in order: any number of `Segment`s, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// A finished segment, times relative to the start of the job's audio.
    Segment(Segment),
    /// The job finished; no more events follow.
    Done(JobSummary),
    /// The job failed; no more events follow.
    Failed(InferenceError),
}

/// The end-of-job facts a caller needs besides the segments.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    /// The language Whisper used (forced or detected).
    pub language: String,
    /// How sure Whisper was of the language it detected; `None` when it was forced.
    pub language_probability: Option<f32>,
    /// Length of the job's audio, for real-time-factor reporting.
    pub audio_secs: f64,
    /// Wall time the worker spent on the job.
    pub processing_secs: f64,
}

/// Counters of what the pool's workers have done, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Jobs that finished with `Done`.
    pub completed: u64,
    /// Jobs that ended with an error other than cancellation (including caught panics).
    pub failed: u64,
    /// Jobs stopped mid-way because their requester went away.
    pub aborted: u64,
    /// Jobs dropped from the queue unstarted because their requester had already gone.
    pub skipped: u64,
}

/// The receiving end of one job. Dropping it cancels the job.
#[derive(Debug)]
pub struct JobHandle {
    /// Events from the worker; closing it (by drop) is the cancellation signal.
    events: mpsc::Receiver<JobEvent>,
}

impl JobHandle {
    /// The next event, or `None` after the final `Done`/`Failed`.
    pub async fn next(&mut self) -> Option<JobEvent> {
        self.events.recv().await
    }

    /// Blocking version of [`JobHandle::next`], for plain threads. Panics if called from
    /// inside an async runtime (use `next` there).
    pub fn blocking_next(&mut self) -> Option<JobEvent> {
        self.events.blocking_recv()
    }

    /// Waits for the whole job: all segments and the summary, or the job's error.
    pub fn blocking_collect(mut self) -> Result<(Vec<Segment>, JobSummary), InferenceError> {
        let mut segments = Vec::new();
        while let Some(event) = self.blocking_next() {
            match event {
                JobEvent::Segment(segment) => segments.push(segment),
                JobEvent::Done(summary) => return Ok((segments, summary)),
                JobEvent::Failed(error) => return Err(error),
            }
        }
        Err(InferenceError::ShutDown)
    }
}

/// One unit of work on the queue.
struct Job {
    /// 16 kHz mono samples, possibly shared with the requester (read only).
    audio: SharedAudio,
    /// How to decode them.
    options: Options,
    /// Where events go; closed by the requester to cancel.
    reply: mpsc::Sender<JobEvent>,
}

/// Counters shared between the pool handle and its workers.
#[derive(Default)]
struct Shared {
    /// Workers currently running a job.
    busy: AtomicUsize,
    /// See [`PoolStats::completed`].
    completed: AtomicU64,
    /// See [`PoolStats::failed`].
    failed: AtomicU64,
    /// See [`PoolStats::aborted`].
    aborted: AtomicU64,
    /// See [`PoolStats::skipped`].
    skipped: AtomicU64,
}

/// The pool's single owner of the queue sender and worker threads; dropped with the last `Pool`.
struct Inner {
    /// Taken on drop so the workers see the queue close and exit.
    sender: Option<Sender<Job>>,
    /// Joined on drop, so the model is freed only after every worker is done.
    threads: Vec<JoinHandle<()>>,
    /// Counters shared with the workers.
    shared: Arc<Shared>,
    /// Short model name for logs and the API ("tiny.en").
    model_name: String,
    /// Whether the model knows languages other than English (and can translate).
    multilingual: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.sender.take());
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                error!("an inference worker thread ended by panic");
            }
        }
        info!(model = %self.model_name, "inference pool stopped");
    }
}

/// A cheap-to-clone handle on the shared pool. Dropping the last clone closes the queue,
/// lets queued jobs finish (or be skipped if abandoned) and joins the workers; do that
/// outside an async executor thread, since it may wait for a running job.
#[derive(Clone)]
pub struct Pool {
    /// Everything shared by the clones.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("model", &self.inner.model_name)
            .field("workers", &self.workers())
            .field("queue_len", &self.queue_len())
            .finish()
    }
}

impl Pool {
    /// Loads the model once and starts `workers` threads, each with its own Whisper state.
    pub fn start(config: PoolConfig) -> Result<Pool, InferenceError> {
        whisper_rs::install_logging_hooks();
        let workers = config.workers.max(1);
        let context = load_model(&config)?;
        let multilingual = context.is_multilingual();
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::with_capacity(workers);
        for id in 0..workers {
            let state = context
                .create_state()
                .map_err(|e| InferenceError::Worker(e.to_string()))?;
            let worker = Worker {
                state,
                multilingual,
                zh_script: config.zh_script,
            };
            threads.push(spawn_worker(id, worker, receiver.clone(), shared.clone())?);
        }
        let model_name = model_name(&config.model_path);
        info!(model = %model_name, workers, queue = config.queue_capacity, "inference pool started");
        Ok(Pool {
            inner: Arc::new(Inner {
                sender: Some(sender),
                threads,
                shared,
                model_name,
                multilingual,
            }),
        })
    }

    /// Queues a job without waiting. A full queue answers [`Busy`].
    ///
    /// Invalid options are not checked here (that would need another error type); the job then
    /// ends with `JobEvent::Failed(InvalidOptions)`. Call [`engine::validate`] first to fail early.
    pub fn submit(
        &self,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, Busy> {
        let (job, handle) = new_job(audio.into(), options);
        match self.sender().try_send(job) {
            Ok(()) => Ok(handle),
            // Full means the queue held `capacity` jobs at that instant; reading the length
            // again could race with a worker taking one.
            Err(TrySendError::Full(_)) => Err(Busy {
                queue_len: self.sender().capacity().unwrap_or_else(|| self.queue_len()),
            }),
            Err(TrySendError::Disconnected(_)) => {
                error!("inference queue disconnected while the pool is alive");
                Err(Busy {
                    queue_len: self.queue_len(),
                })
            }
        }
    }

    /// Queues a job, waiting for queue space if needed (for batch work that should not fail
    /// just because the server is busy). Options are validated first.
    pub fn submit_blocking(
        &self,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, InferenceError> {
        engine::validate(&options)?;
        let (job, handle) = new_job(audio.into(), options);
        self.sender()
            .send(job)
            .map_err(|_| InferenceError::ShutDown)?;
        Ok(handle)
    }

    /// Jobs waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.sender().len()
    }

    /// Workers running a job right now.
    pub fn busy_workers(&self) -> usize {
        self.inner.shared.busy.load(Ordering::SeqCst)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.inner.threads.len()
    }

    /// Whether the model handles languages other than English (and translation).
    pub fn is_multilingual(&self) -> bool {
        self.inner.multilingual
    }

    /// The languages the loaded model transcribes, as Whisper codes: `en` alone for an
    /// English-only model, Whisper's whole list for a multilingual one.
    pub fn languages(&self) -> Vec<&'static str> {
        if !self.is_multilingual() {
            return vec!["en"];
        }
        (0..=whisper_rs::get_lang_max_id())
            .filter_map(whisper_rs::get_lang_str)
            .collect()
    }

    /// Short model name, e.g. "tiny.en".
    pub fn model_name(&self) -> &str {
        &self.inner.model_name
    }

    /// What the workers have done so far.
    pub fn stats(&self) -> PoolStats {
        let s = &self.inner.shared;
        PoolStats {
            completed: s.completed.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
            aborted: s.aborted.load(Ordering::SeqCst),
            skipped: s.skipped.load(Ordering::SeqCst),
        }
    }

    fn sender(&self) -> &Sender<Job> {
        self.inner
            .sender
            .as_ref()
            .expect("the queue sender lives until the pool is dropped")
    }
}

fn load_model(config: &PoolConfig) -> Result<WhisperContext, InferenceError> {
    let path = config.model_path.display().to_string();
    if !config.model_path.is_file() {
        return Err(InferenceError::ModelLoad {
            path,
            reason: "no such file".into(),
        });
    }
    WhisperContext::new_with_params(&config.model_path, engine::context_params()).map_err(|e| {
        InferenceError::ModelLoad {
            path,
            reason: e.to_string(),
        }
    })
}

/// "…/ggml-tiny.en.bin" → "tiny.en".
fn model_name(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.strip_prefix("ggml-").unwrap_or(&stem).to_owned()
}

fn new_job(audio: SharedAudio, options: Options) -> (Job, JobHandle) {
    let (reply, events) = mpsc::channel(REPLY_CAPACITY);
    (
        Job {
            audio,
            options,
            reply,
        },
        JobHandle { events },
    )
}

/// What one worker thread owns.
struct Worker {
    /// Its own decoder state, never shared.
    state: WhisperState,
    /// Whether the model knows languages other than English.
    multilingual: bool,
    /// The script for Mandarin jobs that name none.
    zh_script: ZhScript,
}

fn spawn_worker(
    id: usize,
    mut worker: Worker,
    queue: Receiver<Job>,
    shared: Arc<Shared>,
) -> Result<JoinHandle<()>, InferenceError> {
    std::thread::Builder::new()
        .name(format!("whisper-{id}"))
        .spawn(move || {
            serve(&queue, &shared, &mut |job, on_segment, should_abort| {
                let options = Options {
                    zh_script: job.options.zh_script.or(Some(worker.zh_script)),
                    ..job.options.clone()
                };
                engine::run(
                    &mut worker.state,
                    worker.multilingual,
                    &job.audio,
                    &options,
                    on_segment,
                    should_abort,
                )
            });
            debug!(worker = id, "inference worker stopped");
        })
        .map_err(|e| InferenceError::Worker(e.to_string()))
}

/// Runs one job: `(job, on_segment, should_abort) -> language`. A seam so the worker loop
/// can be tested without a model.
type Runner<'a> = dyn FnMut(
        &Job,
        &mut dyn FnMut(Segment),
        &(dyn Fn() -> bool + Sync),
    ) -> Result<Detection, InferenceError>
    + Send
    + 'a;

/// A worker's loop: take jobs until the queue closes; skip abandoned ones; survive panics.
fn serve(queue: &Receiver<Job>, shared: &Shared, runner: &mut Runner) {
    for job in queue.iter() {
        if job.reply.is_closed() {
            shared.skipped.fetch_add(1, Ordering::SeqCst);
            debug!("skipped a job abandoned while queued");
            continue;
        }
        shared.busy.fetch_add(1, Ordering::SeqCst);
        let final_event = run_one(&job, runner, shared);
        shared.busy.fetch_sub(1, Ordering::SeqCst);
        let Job { audio, reply, .. } = job;
        drop(audio);
        // A closed channel here means the requester left; nothing more to tell.
        let _ = reply.blocking_send(final_event);
    }
}

fn run_one(job: &Job, runner: &mut Runner, shared: &Shared) -> JobEvent {
    let started = Instant::now();
    let reply = &job.reply;
    let mut on_segment = |segment: Segment| {
        let _ = reply.blocking_send(JobEvent::Segment(segment));
    };
    let should_abort = || reply.is_closed();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        runner(job, &mut on_segment, &should_abort)
    }))
    .unwrap_or_else(|_| {
        error!("inference worker caught a panic; the job fails, the worker carries on");
        Err(InferenceError::Panicked)
    });
    let processing_secs = started.elapsed().as_secs_f64();
    match outcome {
        Ok(detection) => {
            shared.completed.fetch_add(1, Ordering::SeqCst);
            JobEvent::Done(JobSummary {
                language: detection.language,
                language_probability: detection.probability,
                audio_secs: job.audio.len() as f64 / SAMPLE_RATE as f64,
                processing_secs,
            })
        }
        Err(InferenceError::Aborted) => {
            shared.aborted.fetch_add(1, Ordering::SeqCst);
            debug!("job aborted: requester went away");
            JobEvent::Failed(InferenceError::Aborted)
        }
        Err(error) => {
            shared.failed.fetch_add(1, Ordering::SeqCst);
            warn!(%error, "inference job failed");
            JobEvent::Failed(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(text: &str) -> Segment {
        Segment::new(0.0, 1.0, text)
    }

    /// Runs `serve` on a thread with a fake runner, returns the queue sender and shared counters.
    fn fake_pool(mut runner: Box<Runner<'static>>) -> (Sender<Job>, Arc<Shared>, JoinHandle<()>) {
        let (sender, receiver) = crossbeam_channel::bounded(4);
        let shared = Arc::new(Shared::default());
        let worker_shared = shared.clone();
        let thread = std::thread::spawn(move || serve(&receiver, &worker_shared, &mut *runner));
        (sender, shared, thread)
    }

    #[test]
    fn a_panicking_job_fails_and_the_worker_keeps_serving() {
        let (sender, shared, thread) = fake_pool(Box::new(|job, on_segment, _| {
            if job.audio.is_empty() {
                panic!("bug triggered by this job");
            }
            on_segment(segment("fine"));
            Ok(Detection::given("en"))
        }));
        let (bad, mut bad_handle) = new_job(Vec::new().into(), Options::default());
        let (good, good_handle) = new_job(vec![0.0; 16].into(), Options::default());
        sender.send(bad).unwrap();
        sender.send(good).unwrap();
        assert_eq!(
            bad_handle.blocking_next(),
            Some(JobEvent::Failed(InferenceError::Panicked))
        );
        let (segments, summary) = good_handle.blocking_collect().unwrap();
        assert_eq!(segments, vec![segment("fine")]);
        assert_eq!(summary.language, "en");
        drop(sender);
        thread.join().unwrap();
        assert_eq!(shared.failed.load(Ordering::SeqCst), 1);
        assert_eq!(shared.completed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_job_abandoned_in_the_queue_is_skipped() {
        let (sender, shared, thread) = fake_pool(Box::new(|_, _, _| Ok(Detection::given("en"))));
        let (job, handle) = new_job(vec![0.0; 16].into(), Options::default());
        drop(handle);
        sender.send(job).unwrap();
        drop(sender);
        thread.join().unwrap();
        assert_eq!(shared.skipped.load(Ordering::SeqCst), 1);
        assert_eq!(shared.completed.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dropping_the_handle_is_seen_by_the_abort_check() {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (sender, shared, thread) = fake_pool(Box::new(move |_, _, should_abort| {
            started_tx.send(()).unwrap();
            while !should_abort() {
                std::thread::yield_now();
            }
            Err(InferenceError::Aborted)
        }));
        let (job, handle) = new_job(vec![0.0; 16].into(), Options::default());
        sender.send(job).unwrap();
        started_rx.recv().unwrap();
        drop(handle);
        drop(sender);
        thread.join().unwrap();
        assert_eq!(shared.aborted.load(Ordering::SeqCst), 1);
        assert_eq!(shared.busy.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_worker_lets_go_of_lent_audio_before_the_final_event() {
        let (sender, _shared, thread) = fake_pool(Box::new(|_, _, _| Ok(Detection::given("en"))));
        let mut buffer = crate::audio::SharedBuffer::default();
        buffer.push(&[0.1; 16]);
        let audio = buffer.snapshot();
        let lent = audio.as_ptr();
        let (job, handle) = new_job(audio, Options::default());
        sender.send(job).unwrap();
        handle.blocking_collect().unwrap();
        assert!(
            std::ptr::eq(buffer.as_slice().as_ptr(), lent),
            "the lender gets its samples back unshared, without a copy"
        );
        drop(sender);
        thread.join().unwrap();
    }

    #[test]
    fn model_names_drop_prefix_and_extension() {
        assert_eq!(
            model_name(std::path::Path::new("/m/ggml-tiny.en.bin")),
            "tiny.en"
        );
        assert_eq!(model_name(std::path::Path::new("custom.bin")), "custom");
    }

    #[test]
    fn a_missing_model_is_a_clear_error() {
        let error = Pool::start(PoolConfig {
            model_path: "/nonexistent/ggml-x.bin".into(),
            workers: 1,
            queue_capacity: 1,
            zh_script: ZhScript::default(),
        })
        .unwrap_err();
        assert!(matches!(error, InferenceError::ModelLoad { .. }));
    }
}
