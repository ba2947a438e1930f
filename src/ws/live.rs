//! Live streams: `stream_start`, binary audio frames, `stream_end`.
//!
//! Each stream runs as one task per connection: audio is decoded (raw PCM inline, containers
//! such as WebM/Ogg on a blocking thread through a byte feed), resampled to 16 kHz and handed to
//! the [`LivePolicy`](crate::live::LivePolicy), which decides when Whisper should look again.
//! At most one job per stream is in the pool at a time, so a busy pool makes a stream lag —
//! reported with `stream_lag` — but never grows a queue.
//!
//! This module must not decide what is final (the policy does) and must not copy a hypothesis'
//! audio: the policy's snapshot is moved into the pool, and only its span is kept here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::follow::segment_msg;
use super::{Connection, Outbound};
use crate::app::AppState;
use crate::audio::decode::{
    byte_feed, ByteFeedSender, DecodeError, DecodeLimits, Decoder, PcmDecoder, PcmFormat,
};
use crate::audio::guarded_resample;
use crate::audio::resample::Resampler;
use crate::domain::TaskId;
use crate::domain::{FailureCode, Task};
use crate::inference::engine::Options;
use crate::inference::pool::{JobEvent, JobHandle};
use crate::inference::served::{Lease, Refusal};
use crate::jobs::TaskResult;
use crate::live::{JobSpan, LiveConfig, LiveJob, LiveOutput, LivePolicy};
use crate::protocol::message::{
    AudioFormat, StreamLag, StreamStart, StreamStarted, TranscriptPartial,
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

impl Connection {
    pub(super) async fn stream_start(&mut self, start: StreamStart) -> Result<(), ProtocolError> {
        if self.live.is_some() {
            return Err(ProtocolError::invalid(
                "a stream is already open on this connection; send stream_end first",
            ));
        }
        let model = self.check_options(&start.options)?;
        let model = self
            .state
            .models
            .acquire(Some(&model))
            .await
            .map_err(model_refused)?;
        let task_id = start.task_id.unwrap_or_else(TaskId::new_v4);
        self.claim(task_id, "omit it and the server picks one")
            .await?;
        let decoder = InputDecoder::new(&start)?;
        self.state.tasks.create(task_id, self.caller.owner.clone());
        let (input, rx) = mpsc::channel(INPUT_FRAMES);
        let runner = Runner {
            state: self.state.clone(),
            out: self.out.clone(),
            task_id,
            model,
            options: Options {
                low_latency: true,
                // Word timings let the commit policy agree word by word.
                token_timestamps: true,
                ..self.state.engine_options(&start.options)
            },
            cancel: self.cancel.clone(),
            language: std::sync::Mutex::new(None),
        };
        self.state.tracker.spawn(runner.run(rx, decoder));
        self.adopt(task_id);
        self.live = Some(LiveStream { task_id, input });
        tracing::info!(%task_id, format = start.format.as_str(), "stream started");
        self.send(ServerMessage::StreamStarted(StreamStarted { task_id }))
            .await
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
    out: Outbound,
    task_id: TaskId,
    /// The stream's model, held (kept loaded) for the stream's life.
    model: Lease,
    options: Options,
    cancel: CancellationToken,
    /// The language of the latest hypothesis (Whisper's detection when none was asked for)
    /// and, when detected, Whisper's probability for it.
    language: std::sync::Mutex<Option<(String, Option<f32>)>>,
}

/// A hypothesis being computed.
struct Pending {
    /// What the job covers; its audio went to the pool.
    span: JobSpan,
    handle: JobHandle,
    segments: Vec<Segment>,
}

impl Runner {
    async fn run(self, mut input: mpsc::Receiver<Input>, mut decoder: InputDecoder) {
        let started = Instant::now();
        let mut policy = LivePolicy::new(LiveConfig::default());
        let mut pending: Option<Pending> = None;
        let mut committed: Vec<Segment> = Vec::new();
        let mut input_done = false;
        let mut decoder_done = false;
        let mut tick = tokio::time::interval(TICK);
        let mut last_lag_report = Instant::now();
        loop {
            tokio::select! {
                frame = input.recv(), if !input_done => {
                    let fed = match frame {
                        Some(Input::Audio(bytes)) => self.feed(&mut decoder, &mut policy, bytes).await,
                        Some(Input::End) | None => {
                            input_done = true;
                            finish_input(&mut decoder, &mut policy).map(|done| decoder_done = done)
                        }
                    };
                    if fed.is_err() {
                        self.undecodable().await;
                        return;
                    }
                },
                block = decoded(&mut decoder), if !decoder_done => match block {
                    Some(samples) => policy.push(&samples),
                    None => {
                        decoder_done = true;
                        if !input_done {
                            self.undecodable().await;
                            return;
                        }
                    }
                },
                event = next_event(&mut pending), if pending.is_some() => {
                    self.on_event(event, &mut pending, &mut policy, &mut committed).await;
                }
                _ = tick.tick() => self.report_lag(&policy, &mut last_lag_report),
                _ = self.cancel.cancelled() => break,
            }
            if pending.is_none() {
                let finishing = input_done && decoder_done;
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
        self.complete(committed, policy.received_secs(), started)
            .await;
    }

    /// Tells the client its audio could not be decoded and records the task as failed.
    async fn undecodable(&self) {
        let message = "the stream's audio could not be decoded in the announced format";
        let code = FailureCode::UnsupportedAudio;
        self.state.tasks.fail(self.task_id, code, message);
        let err = ProtocolError::new(ErrorCode::UnsupportedAudio, message).with_task(self.task_id);
        let _ = self.out.send(err.to_message()).await;
    }

    /// Hands the client's bytes to the decoder; fails only if resampling raw PCM panicked.
    async fn feed(
        &self,
        decoder: &mut InputDecoder,
        policy: &mut LivePolicy,
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
        match self.model.submit(job.audio, self.options.clone()) {
            Ok(handle) => Some(Pending {
                span: job.span,
                handle,
                segments: Vec::new(),
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
                    segments = p.segments.len(),
                    "live hypothesis"
                );
                *self.language.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((summary.language, summary.language_probability));
                let segments = p.segments;
                for output in policy.on_result(p.span, segments) {
                    self.emit(output, committed).await;
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

    async fn emit(&self, output: LiveOutput, committed: &mut Vec<Segment>) {
        match output {
            LiveOutput::Partial { text, revision } => {
                self.out
                    .send_lossy(ServerMessage::TranscriptPartial(TranscriptPartial {
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
                    let _ = self.out.send(msg).await;
                }
            }
        }
    }

    fn report_lag(&self, policy: &LivePolicy, last: &mut Instant) {
        let lag = policy.lag_secs();
        crate::metrics::live_lag(lag);
        if lag >= LAG_REPORT_SECS && policy.in_flight() && last.elapsed() >= Duration::from_secs(1)
        {
            *last = Instant::now();
            self.out.send_lossy(ServerMessage::StreamLag(StreamLag {
                task_id: self.task_id,
                behind_seconds: (lag * 10.0).round() / 10.0,
            }));
        }
    }

    async fn complete(&self, segments: Vec<Segment>, duration: f64, started: Instant) {
        let detected = self
            .language
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
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
        };
        tracing::info!(task_id = %self.task_id, secs = duration, "stream finished");
        let msg = super::follow::complete_msg(self.task_id, &result, None);
        self.state.tasks.finish(self.task_id, result).await;
        let _ = self.out.send(msg).await;
    }
}

/// Ends the input side: flushes PCM leftovers, or closes the container feed.
/// Returns whether the decoder is done too (PCM is; a container thread still drains).
fn finish_input(decoder: &mut InputDecoder, policy: &mut LivePolicy) -> Result<bool, DecodeError> {
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
