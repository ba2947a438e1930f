//! One Realtime transcription session: the socket-driving shell around the live engine.
//!
//! Appended audio is decoded (PCM16 at 24 kHz), resampled to 16 kHz and fed, through the
//! speech detector ([`SpeechPolicy`]), to a [`LivePolicy`], which decides when Whisper looks
//! again; at most one hypothesis per session is in the pool at a time, so a busy pool makes the
//! session lag, never queue. Text the policy commits becomes `…transcription.delta` events of
//! the current item (never revised, so the deltas of an item add up to its transcript); the end
//! of a turn — the policy's pause (no speech, or silence) with server VAD,
//! `input_audio_buffer.commit` always — sends the item's last hypothesis through Whisper and
//! then `…transcription.completed`.
//!
//! This module must not parse or shape events itself (see [`super::event`]), must not decide
//! what text is final (the policy does), and must not hold more than [`MAX_BUFFER_SECS`] of
//! uncommitted audio or queue more than the shared outbound queue holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{Sink, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use super::event::{
    self, ClientEvent, ClientKind, ErrorBody, EventError, Models, ServerEvent, Settings, Usage,
};
use crate::app::speech::SpeechPolicy;
use crate::app::threads::StreamThreads;
use crate::app::AppState;
use crate::audio::decode::{PcmDecoder, PcmFormat};
use crate::audio::guarded_resample;
use crate::audio::resample::Resampler;
use crate::inference::engine::Options;
use crate::inference::pool::{JobEvent, JobHandle};
use crate::inference::served::{Lease, Served};
use crate::live::{JobSpan, LiveConfig, LiveJob, LiveOutput, LivePolicy, Metered};
use crate::transcript::Segment;
use crate::ws::{close, Closed, Outbound};

/// Uncommitted audio a session may hold (16 kHz f32: about 3.8 MB); appends beyond it are
/// refused until Whisper catches up or the client commits or clears.
pub const MAX_BUFFER_SECS: f64 = 60.0;
/// Text frames larger than this are parsed off the async threads (base64 of a large append).
const INLINE_PARSE_BYTES: usize = 64 * 1024;
/// How often the session retries a job the busy pool refused.
const TICK: Duration = Duration::from_millis(100);
/// Shortest ping period, whatever the configuration says.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);

/// Serves one Realtime connection until the client leaves, misbehaves or the server shuts
/// down. `model` is the `model` query value, shown back as the transcription model; a served
/// model's name selects it, anything else means the default (`session.update` may choose).
pub async fn run<S, E>(
    socket: S,
    state: Arc<AppState>,
    model: String,
    _permit: OwnedSemaphorePermit,
) where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let crate::ws::Plumbing {
        gauge: _gauge,
        mut stream,
        out,
        writer,
    } = crate::ws::plumb(socket, state.config.ping_timeout);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("realtime", id = &id[..12]);
    let mut session = Session::new(state, out.clone(), format!("sess_{id}"), model);
    let code = tracing::Instrument::instrument(session.serve(&mut stream), span.clone()).await;
    drop(session);
    crate::ws::send_close(&out, code).await;
    drop(out);
    crate::ws::drain(writer).await;
    span.in_scope(|| tracing::info!(code = code.0, "realtime session closed"));
}

/// A conversation item being transcribed: one turn of speech.
struct Item {
    /// `item_…`, unique in the session.
    id: String,
    /// Committed text so far: the deltas sent, joined.
    text: String,
    /// Session timeline second where the turn starts.
    start: f64,
    /// Set once the turn has ended (`committed` sent): the last hypothesis is under way.
    closing: bool,
}

/// A hypothesis being computed.
struct Pending {
    /// What the job covers; its audio went to the pool.
    span: JobSpan,
    /// The pool's events for the job.
    handle: JobHandle,
    /// Segments received so far.
    segments: Vec<Segment>,
    /// Whether its result completes the closing item.
    ends_item: bool,
    /// The whisper.cpp threads it runs on.
    threads: usize,
}

/// Per-connection state.
struct Session {
    /// Server-wide state (the pool, settings, shutdown).
    state: Arc<AppState>,
    /// Towards the client, bounded.
    out: Outbound,
    /// What `session.update` set.
    settings: Settings,
    /// Whisper options derived from `settings`.
    options: Options,
    /// Server event counter, for unique `event_id`s.
    events: u64,
    /// Item counter, for unique item ids.
    items: u64,
    /// PCM16 bytes → samples (keeps an odd trailing byte for the next append).
    pcm: PcmDecoder,
    /// 24 kHz → 16 kHz.
    resampler: Resampler,
    /// The live commit policy over the audio not yet committed, behind the speech detector.
    policy: SpeechPolicy,
    /// Threads per hypothesis: the configured count, or one while that is cheaper.
    threads: StreamThreads,
    /// Session seconds before `policy`'s timeline zero (audio of buffers cleared earlier).
    base_secs: f64,
    /// The hypothesis in the pool, if any (one at a time).
    pending: Option<Pending>,
    /// The current turn.
    item: Option<Item>,
    /// The last completed item, for `previous_item_id`.
    previous: Option<String>,
    /// Whether audio arrived since the last turn ended (a commit of nothing is an error).
    appended: bool,
    /// A commit that arrived while the previous turn was still closing, with its event id.
    deferred_commit: Option<Option<String>>,
    /// The session's model (`settings.served`), held loaded from the first audio on; dropped
    /// when `session.update` chooses another, which the next append takes.
    lease: Option<Lease>,
    /// The session's share of the live capacity, taken at its first audio and held to its end,
    /// so that Realtime sessions and WebSocket streams are admitted against one account.
    share: Option<Metered>,
    /// Set when the session must end (refused live work): the close code and reason.
    closing: Option<(u16, &'static str)>,
}

/// Served models as `session.update` checks names against them.
impl Models for Served {
    fn choose(&self, requested: Option<&str>) -> Result<(String, bool), String> {
        let name = self.resolve(requested).map_err(|e| e.to_string())?;
        Ok((name.to_owned(), self.is_multilingual(name)))
    }
}

/// Why a session cannot start live work.
struct Refused {
    /// The `error` event's body.
    error: ErrorBody,
    /// The close that follows it.
    close: (u16, &'static str),
}

impl Session {
    fn new(state: Arc<AppState>, out: Outbound, id: String, model: String) -> Self {
        let served = match state.models.choose(Some(&model)) {
            Ok((served, _)) => served,
            Err(_) => state.models.default_name().to_owned(),
        };
        let settings = Settings::new(id, model, served);
        let options = options_for(&state, &settings);
        let threads = options.threads;
        let policy = LivePolicy::new(LiveConfig::default());
        let policy = SpeechPolicy::new(policy, state.vad_model.as_deref());
        Session {
            state,
            out,
            settings,
            options,
            events: 0,
            items: 0,
            pcm: pcm_decoder(),
            resampler: resampler(),
            policy,
            threads: StreamThreads::new(threads),
            base_secs: 0.0,
            pending: None,
            item: None,
            previous: None,
            appended: false,
            deferred_commit: None,
            lease: None,
            share: None,
            closing: None,
        }
    }

    /// The read loop; returns the close code and reason to end with.
    async fn serve<T, E>(&mut self, stream: &mut T) -> (u16, &'static str)
    where
        T: Stream<Item = Result<Message, E>> + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let session = self.settings.to_json();
        if self
            .send(ServerEvent::SessionCreated { session })
            .await
            .is_err()
        {
            return (close::NORMAL, "");
        }
        let config = self.state.config.clone();
        let mut ping = tokio::time::interval(config.ping_interval.max(MIN_PING_INTERVAL));
        ping.tick().await;
        let mut tick = tokio::time::interval(TICK);
        let mut last_seen = Instant::now();
        let cancel = self.state.shutdown.clone();
        loop {
            let step = tokio::select! {
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(msg)) => self.on_frame(msg).await,
                        Some(Err(err)) => return crate::ws::close_for_read_error(&err),
                        None => return (close::NORMAL, ""),
                    }
                }
                event = next_event(&mut self.pending) => self.on_job_event(event).await,
                _ = tick.tick() => Ok(()),
                _ = ping.tick() => {
                    if last_seen.elapsed() > config.ping_timeout {
                        return (close::POLICY, "keepalive ping timeout");
                    }
                    self.out.send_raw(Message::Ping(Default::default())).await
                }
                _ = cancel.cancelled() => return (close::GOING_AWAY, "server shutting down"),
            };
            if let Some(close) = self.closing {
                return close;
            }
            let step = match step {
                Ok(()) => self.drive().await,
                Err(Closed) => Err(Closed),
            };
            if step.is_err() {
                return (close::POLICY, "client not reading");
            }
        }
    }

    async fn on_frame(&mut self, msg: Message) -> Result<(), Closed> {
        crate::metrics::bytes_received(match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        });
        match msg {
            Message::Text(text) => match parse(text, max_append_bytes(&self.state)).await {
                Ok(event) => self.on_event(event).await,
                Err(err) => self.refuse(err).await,
            },
            Message::Binary(_) => {
                let err = EventError::new(
                    "invalid_type",
                    "binary frames are not part of the Realtime API; send JSON text events",
                );
                self.refuse(err).await
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(()),
        }
    }

    async fn on_event(&mut self, event: ClientEvent) -> Result<(), Closed> {
        let ClientEvent { event_id, kind } = event;
        let result = match kind {
            ClientKind::SessionUpdate(session) => self.update(&session).await,
            ClientKind::Append(bytes) => self.append(&bytes, event_id.clone()).await,
            ClientKind::Commit => self.commit(event_id.clone()).await,
            ClientKind::Clear => self.clear().await,
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => self.refuse(err.for_event(event_id)).await,
            Err(Closed) => Err(Closed),
        }
    }

    async fn update(
        &mut self,
        session: &serde_json::Value,
    ) -> Result<Result<(), EventError>, Closed> {
        if let Err(err) = self.settings.apply(session, &self.state.models) {
            return Ok(Err(err));
        }
        self.options = options_for(&self.state, &self.settings);
        if let Some(lease) = self
            .lease
            .take_if(|l| l.model().name() != self.settings.served)
        {
            tracing::debug!(from = lease.model().name(), to = %self.settings.served, "model changed");
        }
        tracing::debug!(
            vad = self.settings.turn_detection.is_some(),
            "session updated"
        );
        let session = self.settings.to_json();
        self.send(ServerEvent::SessionUpdated { session })
            .await
            .map(Ok)
    }

    /// Takes audio; `event_id` is the append's, named in a refusal that closes the session.
    async fn append(
        &mut self,
        bytes: &[u8],
        event_id: Option<String>,
    ) -> Result<Result<(), EventError>, Closed> {
        let secs = bytes.len() as f64 / event::BYTES_PER_SEC as f64;
        if self.policy.buffered_secs() + secs > MAX_BUFFER_SECS {
            return Ok(Err(EventError::new(
                "input_audio_buffer_full",
                format!(
                    "the input audio buffer holds at most {MAX_BUFFER_SECS} s not yet transcribed; \
                     send audio at real time, or commit or clear the buffer"
                ),
            )));
        }
        if let Err(refused) = self.start_live().await {
            self.closing = Some(refused.close);
            self.send(ServerEvent::Error {
                error: ErrorBody {
                    event_id,
                    ..refused.error
                },
            })
            .await?;
            return Ok(Ok(()));
        }
        let samples = self.pcm.push(bytes);
        match guarded_resample(&mut self.resampler, Some(&samples)) {
            Ok(audio) => self.policy.push(&audio),
            Err(err) => {
                tracing::warn!(%err, "resampling failed; the buffer starts again");
                self.resampler = resampler();
            }
        }
        self.appended = true;
        if self.settings.turn_detection.is_none() && self.item.is_none() {
            self.open_item(self.now() - secs);
        }
        self.detect_turns().await.map(Ok)
    }

    /// Before audio is taken: the session's share of the live capacity (the first audio asks
    /// for it) and its model, loaded if it is not.
    async fn start_live(&mut self) -> Result<(), Refused> {
        if self.share.is_none() {
            let load = self.state.live_capacity.admit().map_err(|full| {
                tracing::info!(%full, "realtime session refused: no live capacity left");
                Refused {
                    error: ErrorBody::server(
                        "server_busy",
                        "the server cannot take another live session at real time; retry later",
                    ),
                    close: (close::POLICY, "server busy"),
                }
            })?;
            self.share = Some(Metered::new(load, Instant::now()));
        }
        if self.lease.is_none() {
            let lease = self.state.models.acquire(Some(&self.settings.served)).await;
            self.lease = Some(lease.map_err(|refusal| match refusal.is_busy() {
                true => Refused {
                    error: ErrorBody::server("server_busy", format!("{refusal}; retry later")),
                    close: (close::POLICY, "server busy"),
                },
                false => {
                    tracing::error!(%refusal, "a realtime session's model could not be loaded");
                    Refused {
                        error: ErrorBody::server("server_error", "the model could not be loaded"),
                        close: (close::INTERNAL, "model unavailable"),
                    }
                }
            })?);
        }
        Ok(())
    }

    /// Ends the turn at the client's word; waits for a turn still closing. `event_id` is the
    /// commit's, kept for an error about a deferred one.
    async fn commit(&mut self, event_id: Option<String>) -> Result<Result<(), EventError>, Closed> {
        let empty = || {
            EventError::new(
                "input_audio_buffer_commit_empty",
                "the input audio buffer is empty: append audio before committing",
            )
        };
        if !self.appended {
            return Ok(Err(empty()));
        }
        if self.item.as_ref().is_some_and(|i| i.closing) {
            self.deferred_commit = Some(event_id);
            return Ok(Ok(()));
        }
        if let Ok(tail) = guarded_resample(&mut self.resampler, None) {
            self.policy.push(&tail);
        }
        if self.item.is_none() {
            self.open_item(self.base_secs + self.policy.buffer_start_secs());
        }
        self.end_turn().await.map(Ok)
    }

    async fn clear(&mut self) -> Result<Result<(), EventError>, Closed> {
        self.pending = None;
        if let Some(item) = self.item.take().filter(|i| i.closing) {
            // Committed already: it completes with the text it has.
            self.complete(item).await?;
        }
        self.base_secs = self.now();
        self.policy.restart(LivePolicy::new(LiveConfig::default()));
        self.resampler = resampler();
        self.pcm = pcm_decoder();
        self.appended = false;
        self.deferred_commit = None;
        self.send(ServerEvent::Cleared {}).await.map(Ok)
    }

    /// With server VAD: starts a turn when the policy hears sound, ends it after the
    /// configured silence.
    async fn detect_turns(&mut self) -> Result<(), Closed> {
        let Some(vad) = self.settings.turn_detection else {
            return Ok(());
        };
        if self.item.is_none() && self.policy.hearing() {
            let start = self.base_secs + self.policy.buffer_start_secs();
            let item_id = self.open_item(start);
            let audio_start_ms = ms(start);
            self.send(ServerEvent::SpeechStarted {
                audio_start_ms,
                item_id,
            })
            .await?;
        }
        let pause = vad.silence_duration_ms as f64 / 1000.0;
        match &self.item {
            Some(item) if !item.closing && self.policy.silence_secs() >= pause => {
                let item_id = item.id.clone();
                let audio_end_ms = ms(self.now());
                self.send(ServerEvent::SpeechStopped {
                    audio_end_ms,
                    item_id,
                })
                .await?;
                self.end_turn().await
            }
            _ => Ok(()),
        }
    }

    fn open_item(&mut self, start: f64) -> String {
        self.items += 1;
        let id = format!("item_{:06}{}", self.items, &self.settings.id[5..13]);
        self.item = Some(Item {
            id: id.clone(),
            text: String::new(),
            start: start.max(0.0),
            closing: false,
        });
        id
    }

    /// Commits the current turn: `committed` now, `completed` once its last hypothesis is in.
    async fn end_turn(&mut self) -> Result<(), Closed> {
        let Some(item) = self.item.as_mut() else {
            return Ok(());
        };
        item.closing = true;
        self.appended = false;
        let event = ServerEvent::Committed {
            item_id: item.id.clone(),
            previous_item_id: self.previous.clone(),
        };
        self.send(event).await
    }

    /// Starts the next job if none is out: the closing item's last one, or a hypothesis the
    /// policy finds due.
    async fn drive(&mut self) -> Result<(), Closed> {
        if self.pending.is_some() {
            return Ok(());
        }
        let closing = self.item.as_ref().is_some_and(|i| i.closing);
        let job = match closing {
            true => self.policy.finish(),
            false => self.policy.take_job(),
        };
        match job {
            Some(job) => self.submit(job, closing),
            None if closing => {
                if let Some(item) = self.item.take() {
                    self.complete(item).await?;
                }
                self.after_turn().await?;
            }
            None => {}
        }
        Ok(())
    }

    fn submit(&mut self, job: LiveJob, ends_item: bool) {
        let Some(lease) = self.lease.as_ref() else {
            self.policy.abandon(); // no audio was taken without a model; nothing to read
            return;
        };
        let threads = self.threads.next_count();
        let options = Options {
            threads,
            ..self.options.clone()
        };
        match lease.submit(job.audio, options) {
            Ok(handle) => {
                self.pending = Some(Pending {
                    span: job.span,
                    handle,
                    segments: Vec::new(),
                    ends_item,
                    threads,
                })
            }
            Err(busy) => {
                tracing::debug!(queue = busy.queue_len, "pool busy; the session waits");
                self.policy.abandon();
            }
        }
    }

    async fn on_job_event(&mut self, event: Option<JobEvent>) -> Result<(), Closed> {
        match event {
            Some(JobEvent::Segment(s)) => {
                if let Some(p) = self.pending.as_mut() {
                    p.segments.push(s);
                }
                Ok(())
            }
            Some(JobEvent::Done(summary)) => {
                let Some(p) = self.pending.take() else {
                    return Ok(());
                };
                if let Some(share) = self.share.as_mut() {
                    let step = self.policy.longest_step_secs();
                    share.report(summary.processing_secs, Instant::now(), step);
                }
                self.threads.observe(p.threads, &summary);
                for output in self.policy.on_result(p.span, p.segments) {
                    if let LiveOutput::Commit(segments) = output {
                        self.delta(&segments);
                    }
                }
                if p.ends_item {
                    if let Some(item) = self.item.take() {
                        self.complete(item).await?;
                    }
                    self.after_turn().await?;
                }
                self.detect_turns().await
            }
            Some(JobEvent::Failed(err)) => {
                tracing::warn!(%err, "realtime hypothesis failed");
                self.job_failed().await
            }
            None => self.job_failed().await,
        }
    }

    /// A job that ended without a result: a closing item fails, anything else is retried.
    async fn job_failed(&mut self) -> Result<(), Closed> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        self.policy.abandon();
        if !p.ends_item {
            return Ok(());
        }
        let Some(item) = self.item.take() else {
            return Ok(());
        };
        self.previous = Some(item.id.clone());
        let error = ErrorBody::server(
            "transcription_failed",
            "the transcription of this item failed",
        );
        self.send(ServerEvent::Failed {
            item_id: item.id,
            content_index: 0,
            error,
        })
        .await?;
        self.after_turn().await
    }

    /// Adds committed text to the current item and tells the client (lossy: `completed`
    /// carries the whole text).
    fn delta(&mut self, segments: &[Segment]) {
        let text: Vec<&str> = segments
            .iter()
            .map(|s| s.text.trim())
            .filter(|t| !t.is_empty())
            .collect();
        if text.is_empty() {
            return;
        }
        if self.item.is_none() {
            self.open_item(self.base_secs + segments[0].start);
        }
        let Some(item) = self.item.as_mut() else {
            return;
        };
        let mut delta = text.join(" ");
        if !item.text.is_empty() {
            delta.insert(0, ' ');
        }
        item.text.push_str(&delta);
        let event = ServerEvent::Delta {
            item_id: item.id.clone(),
            content_index: 0,
            delta,
        };
        let json = event.to_json(self.next_event_id());
        self.out.send_lossy_raw(Message::text(json));
    }

    async fn complete(&mut self, item: Item) -> Result<(), Closed> {
        self.previous = Some(item.id.clone());
        let usage = Usage::seconds((self.now() - item.start).max(0.0));
        let event = ServerEvent::Completed {
            item_id: item.id,
            content_index: 0,
            transcript: item.text,
            usage,
        };
        self.send(event).await
    }

    /// After a turn: a commit that waited for it is served now.
    async fn after_turn(&mut self) -> Result<(), Closed> {
        if let Some(event_id) = self.deferred_commit.take() {
            let result = self.commit(event_id.clone()).await?;
            if let Err(err) = result {
                return self.refuse(err.for_event(event_id)).await;
            }
        }
        Ok(())
    }

    /// Session seconds of audio received.
    fn now(&self) -> f64 {
        self.base_secs + self.policy.received_secs()
    }

    fn next_event_id(&mut self) -> String {
        self.events += 1;
        format!("event_{:06}{}", self.events, &self.settings.id[5..13])
    }

    async fn send(&mut self, event: ServerEvent) -> Result<(), Closed> {
        let json = event.to_json(self.next_event_id());
        self.out.send_raw(Message::text(json)).await
    }

    /// Answers a client event that cannot be served; the session goes on.
    async fn refuse(&mut self, err: EventError) -> Result<(), Closed> {
        tracing::debug!(%err, "client error");
        self.send(ServerEvent::Error { error: err.into() }).await
    }
}

/// Whisper options for the session's settings: live-engine options (low latency, word
/// timings for the commit policy) with the language and prompt asked for.
fn options_for(state: &AppState, settings: &Settings) -> Options {
    let (language, zh_script) = match settings.language.as_deref() {
        Some(tag) => {
            let (language, script) = crate::domain::split_language_tag(tag);
            (Some(language), script)
        }
        None => (None, None),
    };
    let task = crate::domain::TaskOptions {
        language,
        translate: false,
        format: None,
        zh_script,
        model: None,
    };
    Options {
        low_latency: true,
        token_timestamps: true,
        initial_prompt: Some(settings.prompt.clone()).filter(|p| !p.is_empty()),
        ..state.engine_options(&task)
    }
}

/// The largest single append: what fits in the message cap, and never more than the buffer.
fn max_append_bytes(state: &AppState) -> usize {
    let buffer = (MAX_BUFFER_SECS as usize) * event::BYTES_PER_SEC;
    (state.config.max_message_bytes.as_u64() as usize).min(buffer)
}

/// Parses a text frame; a large one on the blocking pool.
async fn parse(text: Utf8Bytes, max_append: usize) -> Result<ClientEvent, EventError> {
    if text.len() <= INLINE_PARSE_BYTES {
        return event::parse(text.as_str(), max_append);
    }
    tokio::task::spawn_blocking(move || event::parse(text.as_str(), max_append))
        .await
        .unwrap_or_else(|_| Err(EventError::new("server_error", "internal error")))
}

fn pcm_decoder() -> PcmDecoder {
    PcmDecoder::new(PcmFormat::S16Le, 1).expect("one channel is valid")
}

fn resampler() -> Resampler {
    Resampler::new(event::INPUT_RATE).expect("24 kHz is a supported rate")
}

fn ms(secs: f64) -> u64 {
    (secs.max(0.0) * 1000.0).round() as u64
}

async fn next_event(pending: &mut Option<Pending>) -> Option<JobEvent> {
    match pending {
        Some(p) => p.handle.next().await,
        None => std::future::pending().await,
    }
}
