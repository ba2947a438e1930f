//! Live streams: `stream_start`, binary audio frames, `stream_end`.
//!
//! Each stream runs as one task per connection: audio is decoded (raw PCM inline, containers
//! such as WebM/Ogg on a blocking thread through a byte feed), resampled to 16 kHz and handed,
//! through the speech detector ([`SpeechPolicy`]), to the [`LivePolicy`], which decides when
//! Whisper should look again.
//! At most one job per stream is in the pool at a time, so a busy pool makes a stream lag —
//! reported with `stream_lag` — but never grows a queue.
//!
//! The stream's task outlives its connection: a connection that drops without `stream_end`
//! leaves the stream *detached* (registered in `AppState::streams`, its decoder, policy buffer
//! and committed segments kept) for `--stream-resume-grace`. A `stream_start` with the same
//! `task_id` and `resume: true` hands it a new connection ([`Link`]); it answers with how many
//! audio bytes it has taken in, so the client sends on from there, and sends again the segments
//! the client lacks. A resume while the old connection is still attached takes the stream over
//! and closes the old connection (1008). Once the grace period is over the stream transcribes
//! what it holds and is finished as interrupted.
//!
//! This module must not decide what is final (the policy does), must not copy a hypothesis'
//! audio (the policy's snapshot is moved into the pool, and only its span is kept here) and
//! must not keep a detached stream past its grace period or the server's shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use axum::extract::ws::{CloseFrame, Message};

use super::follow::segment_msg;
use super::{close, Connection, Outbound};
use crate::app::speech::SpeechPolicy;
use crate::app::threads::StreamThreads;
use crate::app::{AppState, StreamHandle};
use crate::audio::decode::{
    byte_feed, ByteFeedSender, DecodeError, DecodeLimits, Decoder, PcmDecoder, PcmFormat,
};
use crate::audio::resample::Resampler;
use crate::audio::{guarded_resample, SAMPLE_RATE};
use crate::domain::TaskId;
use crate::domain::{FailureCode, Task};
use crate::inference::engine::Options;
use crate::inference::pool::{JobEvent, JobHandle};
use crate::inference::served::{Lease, Refusal};
use crate::jobs::{TaskResult, TaskState};
use crate::live::{JobSpan, LanguagePin, LiveConfig, LiveJob, LiveOutput, LivePolicy, Metered};
use crate::protocol::message::{
    AudioFormat, ResumeFrom, StreamLag, StreamStart, StreamStarted, TranscriptPartial,
};
use crate::protocol::{ErrorCode, ProtocolError, ServerMessage};
use crate::transcript::{Segment, Transcript};

/// Audio frames buffered between the socket and the stream's task.
const INPUT_FRAMES: usize = 32;
/// Decoded blocks buffered between a container decoder thread and the stream's task.
const DECODED_BLOCKS: usize = 16;
/// How often the stream checks whether a hypothesis is due and reports lag.
const TICK: Duration = Duration::from_millis(100);
/// Lag worth telling the client about.
const LAG_REPORT_SECS: f64 = 2.0;
/// When a stream refused for want of live capacity should try again.
const LIVE_RETRY_MS: u64 = 5_000;

/// The connection's handle on its open stream.
pub struct LiveStream {
    /// The stream's task id.
    task_id: TaskId,
    /// Audio frames (and the end) into the stream's task.
    input: mpsc::Sender<Input>,
}

enum Input {
    Audio(Bytes),
    End,
}

/// A connection as a stream sees it: its audio in, its messages out.
struct Link {
    /// Audio frames (and the end) from the connection; closed when the connection goes.
    input: mpsc::Receiver<Input>,
    /// Towards the connection's client.
    out: Outbound,
}

/// A new connection for a stream (a resume).
struct Attach {
    /// The connection.
    link: Link,
    /// The first segment index its client lacks; those from there on are sent again.
    next_index: usize,
}

/// What `AppState::streams` holds (type-erased) for each stream: the way to hand it a new
/// connection.
type Handoff = mpsc::Sender<Attach>;

/// The close reason a connection gets when its stream is resumed on another one.
const TAKEN_OVER: &str = "stream resumed on another connection";

impl Connection {
    pub(super) async fn stream_start(&mut self, start: StreamStart) -> Result<(), ProtocolError> {
        if self.live.is_some() {
            return Err(ProtocolError::invalid(
                "a stream is already open on this connection; send stream_end first",
            ));
        }
        if let (Some(task_id), Some(from)) = (start.task_id, start.resume) {
            return self.stream_resume(task_id, from).await;
        }
        let model = self.check_options(&start.options)?;
        let model = self
            .state
            .models
            .acquire(Some(&model))
            .await
            .map_err(model_refused)?;
        let load = self.state.live_capacity.admit().map_err(|full| {
            tracing::info!(%full, "live stream refused: no live capacity left");
            ProtocolError::new(
                ErrorCode::Busy,
                "the server cannot take another live stream at real time; retry later",
            )
            .with_retry_after_ms(LIVE_RETRY_MS)
        })?;
        let task_id = start.task_id.unwrap_or_else(TaskId::new_v4);
        self.claim(task_id, "omit it and the server picks one")
            .await?;
        let decoder = InputDecoder::new(&start)?;
        self.state.tasks.create(task_id, self.caller.owner.clone());
        let (input, rx) = mpsc::channel(INPUT_FRAMES);
        let (handoff, handoffs) = mpsc::channel::<Attach>(1);
        let handle: StreamHandle = Arc::new(handoff);
        let (owner, client) = (self.caller.owner.clone(), self.caller.client());
        self.state.streams.register(task_id, owner, client, handle);
        let options = Options {
            low_latency: true,
            // Word timings let the commit policy agree word by word.
            token_timestamps: true,
            ..self.state.engine_options(&start.options)
        };
        let runner = Runner {
            state: self.state.clone(),
            task_id,
            model,
            threads: std::sync::Mutex::new(StreamThreads::new(options.threads)),
            options,
            language: std::sync::Mutex::new(None),
            pin: std::sync::Mutex::new(LanguagePin::default()),
            handoffs,
            received_bytes: 0,
            share: std::sync::Mutex::new(Some(Metered::new(load, Instant::now()))),
        };
        let link = Link {
            input: rx,
            out: self.out.clone(),
        };
        self.state.tracker.spawn(runner.run(link, decoder));
        self.adopt(task_id);
        self.live = Some(LiveStream { task_id, input });
        tracing::info!(%task_id, format = start.format.as_str(), "stream started");
        let started = StreamStarted {
            task_id,
            resumed: false,
            received_bytes: None,
            segments: None,
        };
        self.send(ServerMessage::StreamStarted(started)).await
    }

    /// Hands the interrupted (or still attached) stream `task_id` to this connection; the
    /// stream itself answers `stream_started`.
    async fn stream_resume(
        &mut self,
        task_id: TaskId,
        from: ResumeFrom,
    ) -> Result<(), ProtocolError> {
        let owner = self.caller.owner.as_ref();
        let Ok(resume) = self.state.streams.resume(task_id, owner) else {
            return Err(self.not_resumable(task_id).await);
        };
        let handoff = resume
            .handle
            .downcast::<Handoff>()
            .map_err(|_| ProtocolError::new(ErrorCode::Internal, "internal error"))?;
        let (input, rx) = mpsc::channel(INPUT_FRAMES);
        let attach = Attach {
            link: Link {
                input: rx,
                out: self.out.clone(),
            },
            next_index: from.next_index,
        };
        if handoff.send(attach).await.is_err() {
            return Err(self.not_resumable(task_id).await);
        }
        self.adopt(task_id);
        self.live = Some(LiveStream { task_id, input });
        tracing::info!(%task_id, took_over = resume.took_over, "stream resumed");
        Ok(())
    }

    /// The refusal of a resume: an ended stream is told apart from an unknown id (a stream of
    /// another key is unknown).
    async fn not_resumable(&self, task_id: TaskId) -> ProtocolError {
        let snapshot = self.state.tasks.snapshot_for(task_id, &self.caller).await;
        let ended = snapshot
            .is_some_and(|s| matches!(s.state, TaskState::Done(_) | TaskState::Failed { .. }));
        let message = if ended {
            "that stream has ended (by stream_end, or its grace period for a resume is over); \
             get_result has its transcript"
        } else {
            "no stream with that task_id to resume; start a new one"
        };
        ProtocolError::new(ErrorCode::SessionNotFound, message).with_task(task_id)
    }

    pub(super) async fn live_audio(
        &mut self,
        task_id: Option<TaskId>,
        payload: Bytes,
    ) -> Result<(), ProtocolError> {
        let live = self.open_stream(task_id)?;
        let task_id = live.task_id;
        if live.input.send(Input::Audio(payload)).await.is_err() {
            self.live = None;
            return Err(
                ProtocolError::new(ErrorCode::Internal, "the stream ended").with_task(task_id)
            );
        }
        Ok(())
    }

    pub(super) async fn stream_end(
        &mut self,
        task_id: Option<TaskId>,
    ) -> Result<(), ProtocolError> {
        self.open_stream(task_id)?;
        if let Some(live) = self.live.take() {
            let _ = live.input.send(Input::End).await;
        }
        Ok(())
    }

    fn open_stream(&self, task_id: Option<TaskId>) -> Result<&LiveStream, ProtocolError> {
        let not_found = || {
            ProtocolError::new(
                ErrorCode::SessionNotFound,
                "no open stream with that id; send stream_start first",
            )
        };
        let live = self.live.as_ref().ok_or_else(not_found)?;
        match task_id {
            Some(id) if id != live.task_id => Err(not_found()),
            _ => Ok(live),
        }
    }
}

/// Turns the client's bytes into 16 kHz mono samples.
enum InputDecoder {
    /// Raw PCM: decoded and resampled inline (cheap).
    Pcm(PcmDecoder, Resampler),
    /// A container: bytes go to a decoder thread; samples come back.
    Container(Option<ByteFeedSender>, mpsc::Receiver<Vec<f32>>),
}

impl InputDecoder {
    fn new(start: &StreamStart) -> Result<Self, ProtocolError> {
        let unsupported = |e: &dyn std::fmt::Display| {
            ProtocolError::new(ErrorCode::UnsupportedAudio, e.to_string())
        };
        if start.format.is_raw_pcm() {
            let format = match start.format {
                AudioFormat::PcmF32le => PcmFormat::F32Le,
                _ => PcmFormat::S16Le,
            };
            let pcm = PcmDecoder::new(format, start.channels).map_err(|e| unsupported(&e))?;
            let res = Resampler::new(start.sample_rate).map_err(|e| unsupported(&e))?;
            return Ok(InputDecoder::Pcm(pcm, res));
        }
        let (feed, reader) = byte_feed(INPUT_FRAMES);
        let (tx, rx) = mpsc::channel(DECODED_BLOCKS);
        let hint = start.format.extension_hint();
        std::thread::Builder::new()
            .name("earshot-live-decode".into())
            .spawn(move || decode_container(reader, hint, tx))
            .map_err(|_| ProtocolError::new(ErrorCode::Internal, "internal error"))?;
        Ok(InputDecoder::Container(Some(feed), rx))
    }
}

/// The decoder thread of a container stream: runs until the feed ends or the stream goes.
fn decode_container(
    reader: crate::audio::decode::ByteFeedReader,
    hint: Option<&'static str>,
    tx: mpsc::Sender<Vec<f32>>,
) {
    let decoder = match Decoder::from_reader(Box::new(reader), hint, DecodeLimits::default()) {
        Ok(d) => d,
        Err(err) => {
            tracing::info!(%err, "live stream: undecodable audio");
            return;
        }
    };
    let Ok(mut audio) = crate::audio::AudioStream::from_decoder(decoder) else {
        return;
    };
    while let Ok(Some(block)) = audio.next_chunk() {
        if tx.blocking_send(block).is_err() {
            return;
        }
    }
}

/// A model a stream cannot have, as the client hears it: `busy` (retry) when the memory
/// budget is held by models in use, `internal` (details logged) when it cannot be loaded.
fn model_refused(refusal: Refusal) -> ProtocolError {
    if refusal.is_busy() {
        return ProtocolError::new(ErrorCode::Busy, format!("{refusal}; retry later"))
            .with_retry_after_ms(MODEL_RETRY_MS);
    }
    tracing::error!(%refusal, "a stream's model could not be loaded");
    ProtocolError::new(ErrorCode::Internal, "the model could not be loaded")
}

/// How long a client refused for lack of model memory is asked to wait.
const MODEL_RETRY_MS: u64 = 5000;

/// The task behind one live stream.
struct Runner {
    state: Arc<AppState>,
    task_id: TaskId,
    /// The stream's model, held (kept loaded) for the stream's life.
    model: Lease,
    options: Options,
    /// Threads for the next hypothesis: the configured count, or one while that is cheaper
    /// (other work holds the cores).
    threads: std::sync::Mutex<StreamThreads>,
    /// The language of the latest hypothesis (Whisper's detection when none was asked for)
    /// and, when detected, Whisper's probability for it.
    language: std::sync::Mutex<Option<(String, Option<f32>)>>,
    /// With `language` auto: the language once Whisper is sure of it, asked for from then on
    /// (no detection pass per hypothesis) and reported as the stream's.
    pin: std::sync::Mutex<LanguagePin>,
    /// New connections for this stream (resumes), from `AppState::streams`.
    handoffs: mpsc::Receiver<Attach>,
    /// Audio payload bytes taken in since the stream started, over all its connections: where
    /// a resuming client sends on from.
    received_bytes: u64,
    /// The stream's share of the live capacity and when it last reported its load (or
    /// started); given back before `transcription_complete` goes out, so a client may start
    /// its next stream at once.
    share: std::sync::Mutex<Option<Metered>>,
}

/// A hypothesis being computed.
struct Pending {
    /// What the job covers; its audio went to the pool.
    span: JobSpan,
    handle: JobHandle,
    segments: Vec<Segment>,
    /// When the job went to the pool: its turnaround (queue and work) paces the stream's step.
    submitted: Instant,
    /// The whisper.cpp threads it runs on, to learn what each count costs.
    threads: usize,
}

/// Logs what Whisper said for a hypothesis, with each token's probability and each segment's
/// no-speech probability, for tuning the commit policy.
fn trace_hypothesis(span: JobSpan, segments: &[Segment]) {
    let text: Vec<String> = segments
        .iter()
        .map(|s| {
            let words: Vec<String> = s
                .tokens
                .iter()
                .flatten()
                .filter(|t| !t.text.trim().is_empty() && !t.text.trim().starts_with(['[', '<']))
                .map(|t| format!("{}({:.2})", t.text.trim(), t.probability))
                .collect();
            format!("[nsp {:.2}] {}", s.no_speech_prob, words.join(" "))
        })
        .collect();
    let text = text.join(" ");
    let secs = span.samples as f64 / f64::from(SAMPLE_RATE);
    tracing::trace!(offset = span.offset, secs, %text, "live hypothesis text");
}

/// Keeps a stream resumable while its task runs; forgets it when the task ends, however.
struct Registered {
    /// The table the stream is registered in.
    state: Arc<AppState>,
    /// The stream.
    task_id: TaskId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.state.streams.remove(self.task_id);
    }
}

/// Where the stream's input stands.
#[derive(Default)]
struct Progress {
    /// No more audio will come: `stream_end`, or the stream is being finished as interrupted.
    input_done: bool,
    /// The decoder has given everything it will.
    decoder_done: bool,
    /// The stream is finished as interrupted (its connection dropped and no resume came).
    interrupted: bool,
    /// While detached: when its grace period ends.
    grace_until: Option<tokio::time::Instant>,
    /// `AppState::streams` has forgotten the stream: no more resumes can come.
    handoffs_closed: bool,
}

impl Runner {
    async fn run(mut self, link: Link, mut decoder: InputDecoder) {
        let _registered = Registered {
            state: self.state.clone(),
            task_id: self.task_id,
        };
        let started = Instant::now();
        let mut link = Some(link);
        let policy = LivePolicy::new(tuned_config());
        let mut policy = SpeechPolicy::new(policy, self.state.vad_model.as_deref());
        let mut pending: Option<Pending> = None;
        let mut committed: Vec<Segment> = Vec::new();
        let mut at = Progress::default();
        let mut tick = tokio::time::interval(TICK);
        let mut last_lag_report = Instant::now();
        loop {
            tokio::select! {
                frame = next_input(&mut link), if !at.input_done => {
                    let fed = match frame {
                        Some(Input::Audio(bytes)) => {
                            self.received_bytes += bytes.len() as u64;
                            self.feed(&mut decoder, &mut policy, bytes).await
                        }
                        Some(Input::End) => end_input(&mut at, &mut decoder, &mut policy),
                        None => {
                            link = None;
                            self.detach(&mut at, &mut decoder, &mut policy)
                        }
                    };
                    if fed.is_err() {
                        self.undecodable(link.as_ref()).await;
                        return;
                    }
                },
                attach = self.handoffs.recv(), if !at.handoffs_closed => match attach {
                    Some(attach) => {
                        at.grace_until = None;
                        self.attach(attach, &mut link, &committed).await;
                    }
                    None => at.handoffs_closed = true,
                },
                _ = super::sleep_until_some(at.grace_until) => {
                    at.grace_until = None;
                    // `false`: a resume came just in time; its connection is on its way.
                    if self.state.streams.expire(self.task_id) {
                        tracing::info!(task_id = %self.task_id, "stream not resumed in time");
                        if interrupt(&mut at, &mut decoder, &mut policy).is_err() {
                            break;
                        }
                    }
                }
                block = decoded(&mut decoder), if !at.decoder_done => match block {
                    Some(samples) => policy.push(&samples),
                    None => {
                        at.decoder_done = true;
                        if !at.input_done {
                            self.undecodable(link.as_ref()).await;
                            return;
                        }
                    }
                },
                event = next_event(&mut pending), if pending.is_some() => {
                    self.on_event(event, &mut pending, &mut policy, &mut committed, link.as_ref()).await;
                }
                _ = tick.tick() => self.report_lag(&policy, &mut last_lag_report, link.as_ref()),
                _ = self.state.shutdown.cancelled() => {
                    // Without its `stream_end`, the stream did not end as its client meant.
                    at.interrupted |= !at.input_done;
                    break;
                }
            }
            if pending.is_none() {
                let finishing = at.input_done && at.decoder_done;
                let next = if finishing {
                    policy.finish()
                } else {
                    policy.take_job()
                };
                match next {
                    Some(job) => pending = self.submit(job, &mut policy),
                    None if finishing && !policy.in_flight() => break,
                    None => {}
                }
            }
        }
        drop(_registered);
        self.refuse_handoffs().await;
        let out = link.as_ref().map(|l| &l.out);
        let duration = policy.received_secs();
        self.complete(committed, duration, started, at.interrupted, out)
            .await;
    }

    /// The connection went without `stream_end`: the stream waits for a resume, or — when
    /// resume is off or the caps are reached — is finished as interrupted at once.
    fn detach(
        &self,
        at: &mut Progress,
        decoder: &mut InputDecoder,
        policy: &mut SpeechPolicy,
    ) -> Result<(), DecodeError> {
        match self.state.streams.detach(self.task_id) {
            Ok(deadline) => {
                tracing::info!(task_id = %self.task_id, "stream detached; waiting for a resume");
                at.grace_until = Some(deadline.into());
                Ok(())
            }
            Err(why) => {
                tracing::info!(task_id = %self.task_id, ?why, "stream interrupted");
                self.state.streams.remove(self.task_id);
                interrupt(at, decoder, policy)
            }
        }
    }

    /// Gives the stream a new connection; a connection still attached is closed.
    async fn attach(&self, attach: Attach, link: &mut Option<Link>, committed: &[Segment]) {
        if let Some(old) = link.take() {
            tracing::info!(task_id = %self.task_id, "stream taken over by a new connection");
            let frame = CloseFrame {
                code: close::POLICY,
                reason: TAKEN_OVER.into(),
            };
            old.out.send_lossy_raw(Message::Close(Some(frame)));
        }
        self.state.streams.attached(self.task_id);
        let out = &attach.link.out;
        let started = StreamStarted {
            task_id: self.task_id,
            resumed: true,
            received_bytes: Some(self.received_bytes),
            segments: Some(committed.len()),
        };
        let _ = out.send(ServerMessage::StreamStarted(started)).await;
        for (index, s) in committed.iter().enumerate().skip(attach.next_index) {
            let _ = out.send(segment_msg(self.task_id, index, s)).await;
        }
        *link = Some(attach.link);
    }

    /// Answers resumes that reached the stream as it ended: there is nothing to continue.
    async fn refuse_handoffs(&mut self) {
        self.handoffs.close();
        while let Ok(attach) = self.handoffs.try_recv() {
            let err = ProtocolError::new(
                ErrorCode::SessionNotFound,
                "that stream has just ended; get_result has its transcript",
            );
            let msg = err.with_task(self.task_id).to_message();
            let _ = attach.link.out.send(msg).await;
        }
    }

    /// Tells the client its audio could not be decoded and records the task as failed.
    async fn undecodable(&self, link: Option<&Link>) {
        let message = "the stream's audio could not be decoded in the announced format";
        let code = FailureCode::UnsupportedAudio;
        self.state.tasks.fail(self.task_id, code, message);
        let err = ProtocolError::new(ErrorCode::UnsupportedAudio, message).with_task(self.task_id);
        if let Some(link) = link {
            let _ = link.out.send(err.to_message()).await;
        }
    }

    /// Hands the client's bytes to the decoder; fails only if resampling raw PCM panicked.
    async fn feed(
        &self,
        decoder: &mut InputDecoder,
        policy: &mut SpeechPolicy,
        bytes: Bytes,
    ) -> Result<(), DecodeError> {
        match decoder {
            InputDecoder::Pcm(pcm, res) => {
                policy.push(&guarded_resample(res, Some(&pcm.push(&bytes)))?);
            }
            InputDecoder::Container(feed, _) => {
                let Some(sender) = feed.as_ref() else {
                    return Ok(());
                };
                if let Ok(Some(block)) = sender.try_send(bytes.to_vec()) {
                    let sender = sender.clone();
                    let _ = tokio::task::spawn_blocking(move || sender.send(block)).await;
                }
            }
        }
        Ok(())
    }

    fn submit(&self, job: LiveJob, policy: &mut LivePolicy) -> Option<Pending> {
        // `job.prompt` is not passed: tiny.en primed with the committed text fell into
        // repetition loops (docs/BENCHMARKS.md, "Live latency").
        let mut options = self.options.clone();
        options.threads = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_count();
        if let Some((language, _)) = self.pin.lock().unwrap_or_else(|e| e.into_inner()).pinned() {
            options.language = Some(language.to_owned());
        }
        let threads = options.threads;
        match self.model.submit(job.audio, options) {
            Ok(handle) => Some(Pending {
                span: job.span,
                handle,
                segments: Vec::new(),
                submitted: Instant::now(),
                threads,
            }),
            Err(busy) => {
                tracing::debug!(queue = busy.queue_len, "pool busy; the stream waits");
                policy.abandon();
                None
            }
        }
    }

    async fn on_event(
        &self,
        event: Option<JobEvent>,
        pending: &mut Option<Pending>,
        policy: &mut LivePolicy,
        committed: &mut Vec<Segment>,
        link: Option<&Link>,
    ) {
        match event {
            Some(JobEvent::Segment(s)) => {
                if let Some(p) = pending.as_mut() {
                    p.segments.push(s);
                }
            }
            Some(JobEvent::Done(summary)) => {
                let Some(p) = pending.take() else { return };
                tracing::debug!(
                    audio = summary.audio_secs,
                    took = summary.processing_secs,
                    is_final = p.span.is_final,
                    threads = p.threads,
                    segments = p.segments.len(),
                    "live hypothesis"
                );
                self.observe_language(&summary);
                policy.observe_inference(p.submitted.elapsed().as_secs_f64());
                self.threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .observe(p.threads, &summary);
                self.report_load(summary.processing_secs, policy.longest_step_secs());
                *self.language.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((summary.language, summary.language_probability));
                let segments = p.segments;
                if tracing::enabled!(tracing::Level::TRACE) {
                    trace_hypothesis(p.span, &segments);
                }
                for output in policy.on_result(p.span, segments) {
                    self.emit(output, committed, link).await;
                }
            }
            Some(JobEvent::Failed(err)) => {
                tracing::warn!(%err, "live hypothesis failed");
                pending.take();
                policy.abandon();
            }
            None => {
                pending.take();
                policy.abandon();
            }
        }
    }

    /// Pins the stream's language when a hypothesis detected it surely enough.
    fn observe_language(&self, summary: &crate::inference::pool::JobSummary) {
        let mut pin = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        let (language, probability) = (&summary.language, summary.language_probability);
        if pin.observe(language, probability, summary.audio_secs) {
            tracing::info!(task_id = %self.task_id, language, ?probability, "live language pinned");
        }
    }

    /// Publishes commits to the registry and tells the client, if one is attached (a resumed
    /// client gets the commits it missed when it comes back).
    async fn emit(&self, output: LiveOutput, committed: &mut Vec<Segment>, link: Option<&Link>) {
        let out = link.map(|l| &l.out);
        match output {
            LiveOutput::Partial { .. } if out.is_none() => {}
            LiveOutput::Partial { text, revision } => {
                let Some(out) = out else { return };
                out.send_lossy(ServerMessage::TranscriptPartial(TranscriptPartial {
                    task_id: self.task_id,
                    text,
                    revision,
                }));
            }
            LiveOutput::Commit(segments) => {
                for s in segments {
                    let msg = segment_msg(self.task_id, committed.len(), &s);
                    self.state.tasks.segment(self.task_id, s.clone());
                    committed.push(s);
                    if let Some(out) = out {
                        let _ = out.send(msg).await;
                    }
                }
            }
        }
    }

    /// Tells the live capacity what a hypothesis cost.
    fn report_load(&self, busy_secs: f64, step_secs: f64) {
        let mut share = self.share.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = share.as_mut() {
            share.report(busy_secs, Instant::now(), step_secs);
        }
    }

    fn report_lag(&self, policy: &LivePolicy, last: &mut Instant, link: Option<&Link>) {
        let lag = policy.lag_secs();
        crate::metrics::live_lag(lag);
        let Some(link) = link else { return };
        if lag >= LAG_REPORT_SECS && policy.in_flight() && last.elapsed() >= Duration::from_secs(1)
        {
            *last = Instant::now();
            link.out.send_lossy(ServerMessage::StreamLag(StreamLag {
                task_id: self.task_id,
                behind_seconds: (lag * 10.0).round() / 10.0,
            }));
        }
    }

    /// Records the result (interrupted or not) and sends it to the client, if one is attached.
    async fn complete(
        &self,
        segments: Vec<Segment>,
        duration: f64,
        started: Instant,
        interrupted: bool,
        out: Option<&Outbound>,
    ) {
        let pinned = self.pin.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pinned = pinned.pinned().map(|(l, p)| (l.to_owned(), Some(p)));
        let latest = self
            .language
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let detected = pinned.or(latest);
        let (language, language_probability) = detected.unwrap_or_else(|| {
            let asked = self.options.language.clone();
            (asked.unwrap_or_else(|| "en".into()), None)
        });
        let result = TaskResult {
            transcript: Transcript {
                language,
                language_probability,
                duration,
                segments,
            },
            processing_seconds: started.elapsed().as_secs_f64(),
            task: Task::Transcribe,
            truncated: None,
            interrupted,
        };
        tracing::info!(task_id = %self.task_id, secs = duration, interrupted, "stream finished");
        let msg = super::follow::complete_msg(self.task_id, &result, None);
        drop(self.share.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.state.tasks.finish(self.task_id, result).await;
        if let Some(out) = out {
            let _ = out.send(msg).await;
        }
    }
}

/// Ends the input side: flushes PCM leftovers, or closes the container feed.
/// Returns whether the decoder is done too (PCM is; a container thread still drains).
fn finish_input(
    decoder: &mut InputDecoder,
    policy: &mut SpeechPolicy,
) -> Result<bool, DecodeError> {
    match decoder {
        InputDecoder::Pcm(_, res) => {
            policy.push(&guarded_resample(res, None)?);
            Ok(true)
        }
        InputDecoder::Container(feed, _) => {
            feed.take();
            Ok(false)
        }
    }
}

/// `stream_end`: no more audio; the rest is transcribed and the stream completes.
fn end_input(
    at: &mut Progress,
    decoder: &mut InputDecoder,
    policy: &mut SpeechPolicy,
) -> Result<(), DecodeError> {
    at.input_done = true;
    at.decoder_done = finish_input(decoder, policy)?;
    Ok(())
}

/// No resume is coming: what was received is transcribed and the stream is finished as
/// interrupted.
fn interrupt(
    at: &mut Progress,
    decoder: &mut InputDecoder,
    policy: &mut SpeechPolicy,
) -> Result<(), DecodeError> {
    at.interrupted = true;
    end_input(at, decoder, policy)
}

/// The next frame of the attached connection; never, while detached.
async fn next_input(link: &mut Option<Link>) -> Option<Input> {
    match link {
        Some(link) => link.input.recv().await,
        None => std::future::pending().await,
    }
}

async fn decoded(decoder: &mut InputDecoder) -> Option<Vec<f32>> {
    match decoder {
        InputDecoder::Pcm(..) => std::future::pending().await,
        InputDecoder::Container(_, rx) => rx.recv().await,
    }
}

async fn next_event(pending: &mut Option<Pending>) -> Option<JobEvent> {
    match pending {
        Some(p) => p.handle.next().await,
        None => std::future::pending().await,
    }
}

/// Benchmark overrides of the live policy's defaults (`LiveConfig::with_overrides` syntax), read
/// by [`tuned_config`]; production runs leave it unset. `scripts/bench-live --tuning` sets it.
const TUNING_ENV: &str = "EARSHOT_LIVE_TUNING";

/// The live policy's defaults, with the overrides in [`TUNING_ENV`] if it is set (read once; an
/// invalid value is logged and ignored). Read here, in the socket shell, so that the policy
/// itself stays pure.
fn tuned_config() -> LiveConfig {
    static TUNED: std::sync::OnceLock<LiveConfig> = std::sync::OnceLock::new();
    TUNED
        .get_or_init(|| {
            let Ok(overrides) = std::env::var(TUNING_ENV) else {
                return LiveConfig::default();
            };
            LiveConfig::default()
                .with_overrides(&overrides)
                .unwrap_or_else(|why| {
                    tracing::warn!(%why, "{TUNING_ENV} ignored");
                    LiveConfig::default()
                })
        })
        .clone()
}
