//! The inference pool: a fixed set of worker threads and a bounded queue, shared by every model.
//!
//! Each job names its model (an `Arc<`[`Model`]`>`); the pool's default model is loaded at
//! start, others by whoever submits to them ([`super::served`]). Each worker thread owns one
//! `WhisperState` (the per-decode scratch memory) per model it has run, made on the first job
//! for that model and dropped once the model is gone (no job and no server holds it), so a
//! model's memory goes with its last user; `workers` jobs run at a time, whatever their models,
//! and at most `queue_capacity` wait. [`Pool::submit`] never blocks: a full queue answers [`Busy`], which a
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
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use whisper_rs::WhisperState;

use super::engine::{self, Detection, InferenceError, Options};
use super::model::{self, Model};
use crate::audio::{SharedAudio, SAMPLE_RATE};
use crate::domain::ZhScript;
use crate::transcript::Segment;

/// Events buffered per job before the worker waits for the requester to read them.
const REPLY_CAPACITY: usize = 64;
/// How often an idle worker looks for states of models that are gone, so an unloaded model's
/// memory is freed soon even when no job comes.
const TIDY_EVERY: Duration = Duration::from_millis(500);

/// How to build a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The default ggml Whisper model, loaded at start and kept for the pool's life (jobs
    /// submitted without a model use it).
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

/// One unit of work on the queue. `M` is the model; the worker loop's tests use `()`.
struct Job<M = Arc<Model>> {
    /// The model to run it with; held until the job ends, so the model stays loaded.
    model: M,
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
    /// The model jobs use when they name none; never unloaded.
    default: Arc<Model>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.sender.take());
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                error!("an inference worker thread ended by panic");
            }
        }
        info!(model = %self.default.name(), "inference pool stopped");
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
            .field("model", &self.inner.default.name())
            .field("workers", &self.workers())
            .field("queue_len", &self.queue_len())
            .finish()
    }
}

impl Pool {
    /// Loads the default model and starts `workers` threads, each with its own Whisper state
    /// on it (other models get theirs on their first job).
    pub fn start(config: PoolConfig) -> Result<Pool, InferenceError> {
        let workers = config.workers.max(1);
        let default = Arc::new(Model::load(
            &model::name_of(&config.model_path),
            &config.model_path,
        )?);
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::with_capacity(workers);
        for id in 0..workers {
            let mut worker = Worker {
                states: Vec::new(),
                zh_script: config.zh_script,
            };
            worker.state_for(&default)?;
            threads.push(spawn_worker(id, worker, receiver.clone(), shared.clone())?);
        }
        info!(model = %default.name(), workers, queue = config.queue_capacity, "inference pool started");
        Ok(Pool {
            inner: Arc::new(Inner {
                sender: Some(sender),
                threads,
                shared,
                default,
            }),
        })
    }

    /// Queues a job on the default model without waiting. A full queue answers [`Busy`].
    ///
    /// Invalid options are not checked here (that would need another error type); the job then
    /// ends with `JobEvent::Failed(InvalidOptions)`. Call [`engine::validate`] first to fail early.
    pub fn submit(
        &self,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, Busy> {
        self.submit_to(&self.inner.default.clone(), audio, options)
    }

    /// Queues a job on `model` without waiting, as [`Pool::submit`] does.
    pub fn submit_to(
        &self,
        model: &Arc<Model>,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, Busy> {
        let (job, handle) = new_job(model.clone(), audio.into(), options);
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

    /// Queues a job on the default model, waiting for queue space if needed (for batch work
    /// that should not fail just because the server is busy). Options are validated first.
    pub fn submit_blocking(
        &self,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, InferenceError> {
        self.submit_blocking_to(&self.inner.default.clone(), audio, options)
    }

    /// Queues a job on `model`, waiting for queue space, as [`Pool::submit_blocking`] does.
    pub fn submit_blocking_to(
        &self,
        model: &Arc<Model>,
        audio: impl Into<SharedAudio>,
        options: Options,
    ) -> Result<JobHandle, InferenceError> {
        engine::validate(&options)?;
        let (job, handle) = new_job(model.clone(), audio.into(), options);
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

    /// The default model, which jobs submitted without one use.
    pub fn default_model(&self) -> &Arc<Model> {
        &self.inner.default
    }

    /// Whether the default model handles languages other than English (and translation).
    pub fn is_multilingual(&self) -> bool {
        self.inner.default.is_multilingual()
    }

    /// The languages the default model transcribes, as Whisper codes: `en` alone for an
    /// English-only model, Whisper's whole list for a multilingual one.
    pub fn languages(&self) -> Vec<&'static str> {
        self.inner.default.languages()
    }

    /// The default model's short name, e.g. "tiny.en".
    pub fn model_name(&self) -> &str {
        self.inner.default.name()
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

fn new_job<M>(model: M, audio: SharedAudio, options: Options) -> (Job<M>, JobHandle) {
    let (reply, events) = mpsc::channel(REPLY_CAPACITY);
    (
        Job {
            model,
            audio,
            options,
            reply,
        },
        JobHandle { events },
    )
}

/// What one worker thread owns.
struct Worker {
    /// Its own decoder state per model it has run, never shared; a state keeps its model's
    /// weights alive, so the model is watched (not held) and its state dropped once it is gone.
    states: Vec<(Weak<Model>, u64, WhisperState)>,
    /// The script for Mandarin jobs that name none.
    zh_script: ZhScript,
}

impl Worker {
    /// This worker's state for `model`, made on first use.
    fn state_for(&mut self, model: &Arc<Model>) -> Result<&mut WhisperState, InferenceError> {
        let found = self.states.iter().position(|(_, id, _)| *id == model.id());
        let index = match found {
            Some(index) => index,
            None => {
                let state = model.create_state()?;
                debug!(model = %model.name(), "worker made a state for a model");
                self.states.push((Arc::downgrade(model), model.id(), state));
                self.states.len() - 1
            }
        };
        Ok(&mut self.states[index].2)
    }
}

impl Runner for Worker {
    /// Drops the states of models no one holds any more, freeing their memory.
    fn tidy(&mut self) {
        self.states.retain(|(model, _, _)| model.strong_count() > 0);
    }

    fn run(
        &mut self,
        job: &Job,
        on_segment: &mut dyn FnMut(Segment),
        should_abort: &(dyn Fn() -> bool + Sync),
    ) -> Result<Detection, InferenceError> {
        let options = Options {
            zh_script: job.options.zh_script.or(Some(self.zh_script)),
            ..job.options.clone()
        };
        let multilingual = job.model.is_multilingual();
        let state = self.state_for(&job.model)?;
        engine::run(
            state,
            multilingual,
            &job.audio,
            &options,
            on_segment,
            should_abort,
        )
    }
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
            serve(&queue, &shared, &mut worker);
            debug!(worker = id, "inference worker stopped");
        })
        .map_err(|e| InferenceError::Worker(e.to_string()))
}

/// What a worker loop drives: runs one job (`(job, on_segment, should_abort) -> language`) and
/// tidies between jobs. A seam so the worker loop can be tested without a model.
trait Runner<M = Arc<Model>> {
    /// Runs one job to its end.
    fn run(
        &mut self,
        job: &Job<M>,
        on_segment: &mut dyn FnMut(Segment),
        should_abort: &(dyn Fn() -> bool + Sync),
    ) -> Result<Detection, InferenceError>;

    /// Frees what is no longer needed (states of unloaded models).
    fn tidy(&mut self);
}

/// A worker's loop: take jobs until the queue closes; skip abandoned ones; survive panics.
/// The runner tidies before each job and whenever the queue has been empty for [`TIDY_EVERY`].
fn serve<M>(queue: &Receiver<Job<M>>, shared: &Shared, runner: &mut dyn Runner<M>) {
    loop {
        let job = match queue.recv_timeout(TIDY_EVERY) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                runner.tidy();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        runner.tidy();
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

fn run_one<M>(job: &Job<M>, runner: &mut dyn Runner<M>, shared: &Shared) -> JobEvent {
    let started = Instant::now();
    let reply = &job.reply;
    let mut on_segment = |segment: Segment| {
        let _ = reply.blocking_send(JobEvent::Segment(segment));
    };
    let should_abort = || reply.is_closed();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        runner.run(job, &mut on_segment, &should_abort)
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

    /// A runner that is a closure, with no model.
    struct Fake<F>(F);

    impl<F> Runner<()> for Fake<F>
    where
        F: FnMut(
            &Job<()>,
            &mut dyn FnMut(Segment),
            &(dyn Fn() -> bool + Sync),
        ) -> Result<Detection, InferenceError>,
    {
        fn run(
            &mut self,
            job: &Job<()>,
            on_segment: &mut dyn FnMut(Segment),
            should_abort: &(dyn Fn() -> bool + Sync),
        ) -> Result<Detection, InferenceError> {
            (self.0)(job, on_segment, should_abort)
        }

        fn tidy(&mut self) {}
    }

    /// Runs `serve` on a thread with a fake runner, returns the queue sender and shared counters.
    fn fake_pool<F>(runner: F) -> (Sender<Job<()>>, Arc<Shared>, JoinHandle<()>)
    where
        F: FnMut(
                &Job<()>,
                &mut dyn FnMut(Segment),
                &(dyn Fn() -> bool + Sync),
            ) -> Result<Detection, InferenceError>
            + Send
            + 'static,
    {
        let (sender, receiver) = crossbeam_channel::bounded(4);
        let shared = Arc::new(Shared::default());
        let worker_shared = shared.clone();
        let thread =
            std::thread::spawn(move || serve(&receiver, &worker_shared, &mut Fake(runner)));
        (sender, shared, thread)
    }

    #[test]
    fn a_panicking_job_fails_and_the_worker_keeps_serving() {
        let (sender, shared, thread) = fake_pool(|job, on_segment, _| {
            if job.audio.is_empty() {
                panic!("bug triggered by this job");
            }
            on_segment(segment("fine"));
            Ok(Detection::given("en"))
        });
        let (bad, mut bad_handle) = new_job((), Vec::new().into(), Options::default());
        let (good, good_handle) = new_job((), vec![0.0; 16].into(), Options::default());
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
        let (sender, shared, thread) = fake_pool(|_, _, _| Ok(Detection::given("en")));
        let (job, handle) = new_job((), vec![0.0; 16].into(), Options::default());
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
        let (sender, shared, thread) = fake_pool(move |_, _, should_abort| {
            started_tx.send(()).unwrap();
            while !should_abort() {
                std::thread::yield_now();
            }
            Err(InferenceError::Aborted)
        });
        let (job, handle) = new_job((), vec![0.0; 16].into(), Options::default());
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
        let (sender, _shared, thread) = fake_pool(|_, _, _| Ok(Detection::given("en")));
        let mut buffer = crate::audio::SharedBuffer::default();
        buffer.push(&[0.1; 16]);
        let audio = buffer.snapshot();
        let lent = audio.as_ptr();
        let (job, handle) = new_job((), audio, Options::default());
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
            model::name_of(std::path::Path::new("/m/ggml-tiny.en.bin")),
            "tiny.en"
        );
        assert_eq!(model::name_of(std::path::Path::new("custom.bin")), "custom");
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
