//! One Wyoming connection: reads events, answers `describe`, runs each `audio-start` …
//! `audio-stop` as an [`Utterance`] and writes the transcript events.
//!
//! One task does it all with `select!`: the next event, the utterance's Whisper events, a tick
//! that retries a job the busy pool refused, the idle deadline and the server's shutdown. A
//! client that sends nothing for `--wyoming-idle-timeout` while the server waits for it (or
//! does not read what the server writes) is closed; while the last hypothesis of a stopped
//! utterance is computed the client may rightly be silent.
//!
//! This module must not parse bytes (that is [`super::frame`]) and must not send internal
//! details to the client: every error it writes is a [`Refusal`] with a fixed text.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use super::event::{self, Refusal, Request};
use super::frame::{self, Decoder, Event, FrameError, Limits};
use super::utterance::{Live, Utterance};
use crate::app::AppState;
use crate::inference::engine::Options;
use crate::inference::pool::JobEvent;
use crate::live::Metered;

/// How often a stream checks whether a hypothesis is due (and retries after `busy`).
const TICK: Duration = Duration::from_millis(100);
/// The code of a write that failed or timed out: nothing more is written to that client.
const WRITE_FAILED: &str = "write-failed";
/// Bytes read from the socket at a time at least.
const READ_CHUNK: usize = 8 * 1024;

/// The reading half with its framing state.
struct Reader {
    /// The socket's read half.
    half: OwnedReadHalf,
    /// Bytes received and not yet framed; bounded by the decoder's limits.
    buf: BytesMut,
    /// The framing state.
    decoder: Decoder,
}

/// Why reading stopped.
enum ReadEnd {
    /// The client closed between events.
    Closed,
    /// The bytes are not Wyoming.
    Frame(FrameError),
    /// The connection ended mid-event or failed.
    Broken,
}

impl Reader {
    /// The next event. Cancel-safe: partial bytes stay in `buf`.
    async fn next(&mut self) -> Result<Event, ReadEnd> {
        loop {
            if let Some(event) = self.decoder.decode(&mut self.buf).map_err(ReadEnd::Frame)? {
                return Ok(event);
            }
            self.buf
                .reserve(self.decoder.wanted(&self.buf).max(READ_CHUNK));
            match self.half.read_buf(&mut self.buf).await {
                Ok(0) if self.decoder.is_mid_event(&self.buf) => return Err(ReadEnd::Broken),
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(_) => {}
                Err(_) => return Err(ReadEnd::Broken),
            }
        }
    }
}

/// What one turn of the loop produced.
enum Step {
    /// A client event.
    Event(Event),
    /// An event of the utterance's Whisper job.
    Job(Option<JobEvent>),
    /// Time to look whether a hypothesis is due.
    Tick,
    /// The connection ends, after this error if any.
    Close(Option<Refusal>),
}

/// The state of one connection.
struct Conn {
    /// The server's shared state: pool, settings, shutdown.
    state: Arc<AppState>,
    /// Where events are written.
    writer: OwnedWriteHalf,
    /// The served model from the last `transcribe` (else the default), for the next utterance.
    model: String,
    /// Language from the last `transcribe`, for the next utterance.
    language: Option<String>,
    /// The utterance in progress.
    utterance: Option<Utterance>,
}

/// Serves one connection until the client leaves, breaks the protocol, goes silent or the
/// server shuts down.
pub async fn serve(socket: TcpStream, state: Arc<AppState>) {
    let _ = socket.set_nodelay(true);
    let (read, writer) = socket.into_split();
    let mut reader = Reader {
        half: read,
        buf: BytesMut::new(),
        decoder: Decoder::new(Limits::default()),
    };
    let model = state.models.default_name().to_owned();
    let mut conn = Conn {
        state,
        writer,
        model,
        language: None,
        utterance: None,
    };
    let end = conn.run(&mut reader).await;
    if let Some(refusal) = end {
        tracing::info!(
            code = refusal.code,
            "wyoming connection closed: {}",
            refusal.text
        );
        if refusal.code != WRITE_FAILED {
            let _ = conn.send(&refusal.event()).await;
        }
    }
    let _ = conn.writer.shutdown().await;
}

impl Conn {
    /// The event loop; returns the error to send before closing, if any.
    async fn run(&mut self, reader: &mut Reader) -> Option<Refusal> {
        let idle = self.state.config.wyoming_idle_timeout;
        let shutdown = self.state.shutdown.clone();
        let mut deadline = Instant::now() + idle;
        let mut tick = tokio::time::interval(TICK);
        loop {
            let waiting_for_client = !self.utterance.as_ref().is_some_and(Utterance::is_stopped);
            if !waiting_for_client {
                // The server is working; the client's silence counts from when it is done.
                deadline = Instant::now() + idle;
            }
            let step = tokio::select! {
                _ = shutdown.cancelled() => Step::Close(Some(Refusal::fatal(
                    "shutting-down", "the server is shutting down"))),
                _ = sleep_until(deadline), if waiting_for_client => Step::Close(Some(
                    Refusal::fatal("timeout", "nothing received for too long; closing"))),
                read = reader.next() => match read {
                    Ok(event) => Step::Event(event),
                    Err(ReadEnd::Closed | ReadEnd::Broken) => Step::Close(None),
                    Err(ReadEnd::Frame(e)) => Step::Close(Some(frame_refusal(&e))),
                },
                job = next_job_event(&mut self.utterance) => Step::Job(job),
                _ = tick.tick(), if self.utterance.is_some() => Step::Tick,
            };
            let handled = match step {
                Step::Close(refusal) => return refusal,
                Step::Event(event) => {
                    deadline = Instant::now() + idle;
                    self.on_event(event).await
                }
                Step::Job(job) => self.on_job_event(job).await,
                Step::Tick => Ok(()),
            };
            if let Err(refusal) = handled {
                if refusal.fatal {
                    return Some(refusal);
                }
                if self.send(&refusal.event()).await.is_err() {
                    return None;
                }
            }
            if let Err(refusal) = self.schedule().await {
                return refusal;
            }
        }
    }

    /// Acts on one client event.
    async fn on_event(&mut self, event: Event) -> Result<(), Refusal> {
        match event::parse(event)? {
            Request::Describe => self.write(&self.info()).await,
            Request::Transcribe { name, language } => self.transcribe(name, language),
            Request::AudioStart(format) => {
                if self.utterance.is_some() {
                    return Err(Refusal::new(
                        "audio-in-progress",
                        "audio-start while the previous audio is still open or transcribing",
                    ));
                }
                let max = self.state.config.wyoming_max_audio.as_secs_f64();
                let options = self.options();
                // The format first: a malformed audio-start is told so even on a full server.
                let vad = self.state.vad_model.as_deref();
                let utterance = Utterance::start(format, options, max, vad)?;
                let live = start_live(&self.state, &self.model).await?;
                self.utterance = Some(utterance.on(live));
                let language = self.language.clone();
                self.write(&event::transcript_start(language.as_deref()))
                    .await
            }
            Request::AudioChunk(format, pcm) => match self.utterance.as_mut() {
                Some(u) => u.push(format, &pcm),
                None => Err(Refusal::fatal(
                    "no-audio-start",
                    "audio-chunk before audio-start",
                )),
            },
            Request::AudioStop => match self.utterance.as_mut() {
                Some(u) => u.stop(),
                None => Err(Refusal::new(
                    "no-audio-start",
                    "audio-stop before audio-start",
                )),
            },
            Request::Ping(text) => self.write(&event::pong(text)).await,
            Request::SelectProgram => Ok(()),
            Request::Unknown(kind) => Err(Refusal::new(
                "unknown-event",
                format!("event type {kind:?} is not handled by this ASR server"),
            )),
        }
    }

    /// `transcribe`: checks the model and language for the next utterance.
    fn transcribe(
        &mut self,
        name: Option<String>,
        language: Option<String>,
    ) -> Result<(), Refusal> {
        let served = &self.state.models;
        let model = served
            .resolve(name.as_deref())
            .map_err(|refusal| Refusal::new("unknown-model", refusal.to_string()))?;
        // Home Assistant may send a region ("en-US"); Whisper knows languages only.
        let language = language
            .map(|l| {
                l.split(['-', '_'])
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase()
            })
            .filter(|l| !l.is_empty() && l != "auto");
        if let Some(l) = &language {
            crate::inference::engine::check_language(l, served.is_multilingual(model)).map_err(
                |e| Refusal::new("unsupported-language", format!("{e} (model {model})")),
            )?;
        }
        self.model = model.to_owned();
        self.language = language;
        Ok(())
    }

    /// Whisper options for the next utterance: live (low latency, word timings).
    fn options(&self) -> Options {
        Options {
            language: self.language.clone(),
            threads: self.state.config.threads,
            low_latency: true,
            token_timestamps: true,
            ..Options::default()
        }
    }

    fn info(&self) -> Event {
        let served = &self.state.models;
        let models = served.names().iter().map(|name| event::ModelInfo {
            name,
            languages: crate::inference::model::languages(served.is_multilingual(name)),
        });
        event::info(&event::Program {
            models: models.collect(),
            version: env!("CARGO_PKG_VERSION"),
            homepage: env!("CARGO_PKG_HOMEPAGE"),
        })
    }

    /// Takes a Whisper event of the utterance and sends the chunks it commits.
    async fn on_job_event(&mut self, job: Option<JobEvent>) -> Result<(), Refusal> {
        let Some(utterance) = self.utterance.as_mut() else {
            return Ok(());
        };
        for chunk in utterance.on_event(job)? {
            self.write(&event::transcript_chunk(&chunk)).await?;
        }
        Ok(())
    }

    /// Submits the utterance's next hypothesis; when it is finished sends `transcript` and
    /// `transcript-stop`. An `Err` ends the connection (after the refusal, if any).
    async fn schedule(&mut self) -> Result<(), Option<Refusal>> {
        let Some(utterance) = self.utterance.as_mut() else {
            return Ok(());
        };
        if !utterance.schedule() {
            return Ok(());
        }
        let (text, language) = utterance.result();
        let transcript = event::transcript(text, &language);
        self.utterance = None;
        tracing::info!(language, "wyoming transcription finished");
        self.send(&transcript).await.map_err(|_| None)?;
        self.send(&event::transcript_stop()).await.map_err(|_| None)
    }

    /// Writes an event; a client that does not take it is a fatal error.
    async fn write(&mut self, event: &Event) -> Result<(), Refusal> {
        self.send(event)
            .await
            .map_err(|_| Refusal::fatal(WRITE_FAILED, "the client does not read"))
    }

    /// Writes an event within the idle timeout.
    async fn send(&mut self, event: &Event) -> Result<(), ()> {
        let bytes = frame::encode(event);
        let idle = self.state.config.wyoming_idle_timeout;
        match tokio::time::timeout(idle, self.writer.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

/// An utterance's model (loaded if it is not) and share of the live capacity; refused
/// `busy` when the server cannot take another live stream at real time, or when the
/// model memory is held by models in use.
async fn start_live(state: &AppState, model: &str) -> Result<Live, Refusal> {
    let busy = || {
        Refusal::fatal(
            "busy",
            "the server cannot take another live transcription now; try again later",
        )
    };
    let load = state.live_capacity.admit().map_err(|full| {
        tracing::info!(%full, "wyoming utterance refused: no live capacity left");
        busy()
    })?;
    let lease = state.models.acquire(Some(model)).await;
    let lease = lease.map_err(|refusal| {
        if refusal.is_busy() {
            return busy();
        }
        tracing::error!(%refusal, "a wyoming utterance's model could not be loaded");
        Refusal::fatal("model-unavailable", "the model could not be loaded")
    })?;
    let share = Metered::new(load, std::time::Instant::now());
    Ok(Live { lease, share })
}

/// The next Whisper event of the utterance; pending when there is none.
async fn next_job_event(utterance: &mut Option<Utterance>) -> Option<JobEvent> {
    match utterance {
        Some(u) => u.next_event().await,
        None => std::future::pending().await,
    }
}

/// The `error` for bytes that are not Wyoming.
fn frame_refusal(error: &FrameError) -> Refusal {
    let code = match error {
        FrameError::LineTooLong(_)
        | FrameError::DataTooLarge { .. }
        | FrameError::PayloadTooLarge { .. } => "too-large",
        FrameError::Malformed(_) => "malformed-event",
    };
    Refusal::fatal(code, error.to_string())
}
