//! Live streaming: send audio as binary frames between `stream_start` and `stream_end`, and
//! receive partials and final segments while it plays (docs/PROTOCOL.md §9).
//!
//! A file is decoded here ([`crate::audio::AudioStream`]) to 16 kHz mono and sent as
//! `pcm_f32le`; raw `pcm_s16le` from a reader (stdin) is passed through with its rate and
//! channel count. Frames go out at real-time pace when asked, otherwise as fast as the server
//! takes them. Sending and receiving run concurrently on the two halves of one socket.
//!
//! A dropped connection does not end the stream: the client reconnects with backoff and sends
//! `stream_start` with the stream's `task_id` and `resume: true` (docs/PROTOCOL.md §9.1). The
//! server says how many audio bytes it took in; the client sends on from there, out of the
//! audio it keeps after sending ([`Sent`], bounded), and asks only for the segments it has not
//! seen, so the transcript has every segment once. This module reports through a callback and
//! must NOT print.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::backoff::{BackoffConfig, Next, Retries};
use super::conn::{self, type_name, Conn};
use super::ClientError;
use crate::audio::decode::DecodeLimits;
use crate::audio::{AudioStream, DecodeError, SAMPLE_RATE};
use crate::domain::TaskId;
use crate::protocol::binary::encode_audio;
use crate::protocol::message::{TranscriptSegment, TranscriptionComplete};
use crate::protocol::ServerMessage;

/// Decoded blocks buffered between the decoder thread and the sender.
const DECODED_BLOCKS: usize = 4;
/// Audio kept after sending, for a resume to send again what the server never took in. What
/// can be lost with a connection is what was in flight (socket buffers, the server's input
/// queue), far less than this.
const KEPT_BYTES: usize = 8 << 20;

/// Where the audio comes from.
pub enum StreamSource {
    /// An audio file in any supported format; decoded here, sent as 16 kHz mono `pcm_f32le`.
    File(PathBuf),
    /// Raw signed 16-bit little-endian PCM, interleaved (e.g. stdin from a recorder).
    RawS16 {
        /// The bytes; read until end of input.
        reader: Box<dyn AsyncRead + Send + Unpin>,
        /// Samples per second per channel.
        sample_rate: u32,
        /// Interleaved channels (the server down-mixes).
        channels: u16,
    },
}

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Pace frames at real time (as a microphone would) instead of as fast as possible.
    pub realtime: bool,
    /// Audio per frame, milliseconds.
    pub chunk_ms: u32,
    /// Spoken language (`None` = let the server detect it).
    pub language: Option<String>,
    /// Translate to English.
    pub translate: bool,
    /// Silence from the server after which the connection is deemed dead.
    pub idle_timeout: Duration,
    /// Reconnects after consecutive failures before giving up (0 = a dropped connection ends
    /// the stream with an error). The server waits `--stream-resume-grace` (30 s) for them.
    pub max_retries: u32,
    /// Delays between reconnects: short, since the server's grace period is.
    pub backoff: BackoffConfig,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            realtime: false,
            chunk_ms: 50,
            language: None,
            translate: false,
            idle_timeout: super::DEFAULT_IDLE_TIMEOUT,
            max_retries: 6,
            backoff: BackoffConfig {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(5),
                jitter: 0.5,
            },
        }
    }
}

/// What the server says while a stream runs.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    /// The stream is open.
    Started {
        /// Its id.
        task_id: TaskId,
    },
    /// The current guess for the not-yet-final tail; replaces any earlier partial.
    Partial {
        /// The guessed text.
        text: &'a str,
        /// Higher replaces lower.
        revision: u64,
    },
    /// Final text for a stretch of audio.
    Segment(&'a TranscriptSegment),
    /// The server is behind real time.
    Lag {
        /// Seconds of audio not yet transcribed.
        behind_seconds: f64,
    },
    /// The connection broke; the client reconnects after `delay` and resumes the stream.
    Reconnecting {
        /// Reconnects tried since the stream last made progress, this one included.
        attempt: u32,
        /// The most it will try.
        max: u32,
        /// The wait before this attempt.
        delay: Duration,
        /// What broke.
        error: &'a ClientError,
    },
    /// The stream continues on a new connection.
    Resumed {
        /// Its id.
        task_id: TaskId,
        /// Audio bytes the server had taken in; the client sent on from there.
        received_bytes: u64,
    },
}

/// The end of a stream.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// The stream's id.
    pub task_id: TaskId,
    /// Seconds of audio sent.
    pub audio_seconds: f64,
    /// The server's final result.
    pub result: TranscriptionComplete,
}

/// Streams `source` to the server at `url` and returns the final transcript, reconnecting and
/// resuming the stream when the connection drops.
pub async fn stream(
    url: &str,
    source: StreamSource,
    options: &StreamOptions,
    mut on_event: impl FnMut(StreamEvent<'_>),
) -> Result<StreamOutcome, ClientError> {
    let mut audio = Audio::open(source, options.chunk_ms).await?;
    let mut at = Position::default();
    let mut sent = Sent::new(KEPT_BYTES);
    let mut retries = Retries::new(options.backoff, options.max_retries);
    loop {
        let before = sent.end();
        let err = match attempt(url, &mut audio, &mut sent, &mut at, options, &mut on_event).await {
            Ok(outcome) => return Ok(outcome),
            Err(err) if err.is_retryable() => err,
            Err(err) => return Err(err),
        };
        let (attempt, delay) = match retries.failed(sent.end() != before, err.retry_after()) {
            Next::Retry { attempt, delay } => (attempt, delay),
            Next::GiveUp { attempts } => {
                return Err(ClientError::GaveUp {
                    attempts,
                    task_id: None,
                    last: Box::new(err),
                })
            }
        };
        tracing::debug!(%err, ?delay, attempt, "stream interrupted; reconnecting");
        on_event(StreamEvent::Reconnecting {
            attempt,
            max: retries.max(),
            delay,
            error: &err,
        });
        tokio::time::sleep(delay).await;
    }
}

/// Where a stream stands across its connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// The stream's id, once the server started it.
    task_id: Option<TaskId>,
    /// The index of the first segment not yet received.
    next_index: u32,
}

impl Position {
    /// Whether a segment is new (a resumed stream sends again those the client may lack);
    /// counts it when it is.
    fn take(&mut self, index: u32) -> bool {
        if index < self.next_index {
            return false;
        }
        self.next_index = index + 1;
        true
    }
}

/// One connection's part of the stream: start (or resume) it, send audio (again from where the
/// server stands, on a resume), relay what the server says, until its final transcript.
async fn attempt(
    url: &str,
    audio: &mut Audio,
    sent: &mut Sent,
    at: &mut Position,
    options: &StreamOptions,
    on_event: &mut impl FnMut(StreamEvent<'_>),
) -> Result<StreamOutcome, ClientError> {
    let mut conn = Conn::open(url, options.idle_timeout).await?;
    let (task_id, backlog) = match at.task_id {
        None => {
            let task_id = start(&mut conn, audio, options).await?;
            on_event(StreamEvent::Started { task_id });
            (task_id, Vec::new())
        }
        Some(task_id) => {
            let received = resume(&mut conn, task_id, at.next_index).await?;
            let backlog = sent.since(received)?;
            on_event(StreamEvent::Resumed {
                task_id,
                received_bytes: received,
            });
            (task_id, backlog)
        }
    };
    at.task_id = Some(task_id);
    let idle = conn.idle_timeout;
    let frame_bytes = audio.frame_bytes();
    let (mut sink, mut incoming) = conn.ws.split();
    let result = {
        let send = async {
            for frame in backlog.chunks(frame_bytes) {
                let msg = Message::binary(encode_audio(Some(task_id), frame));
                conn::send(&mut sink, msg).await?;
            }
            send_audio(&mut sink, audio, sent, task_id, options.realtime).await?;
            let end = json!({"type": "stream_end", "data": {"task_id": task_id}});
            conn::send(&mut sink, Message::text(end.to_string())).await
        };
        let receive = receive(&mut incoming, idle, at, on_event);
        tokio::pin!(send, receive);
        let mut sent_all = false;
        loop {
            tokio::select! {
                done = &mut send, if !sent_all => {
                    done?;
                    sent_all = true;
                }
                done = &mut receive => break done?,
            }
        }
    };
    let mut ws = sink
        .reunite(incoming)
        .map_err(|_| ClientError::Protocol("socket halves mismatch".into()))?;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(StreamOutcome {
        task_id,
        audio_seconds: sent.seconds(),
        result,
    })
}

/// `stream_start` with `resume` → `stream_started`; returns the audio bytes the server has.
async fn resume(conn: &mut Conn, task_id: TaskId, next_index: u32) -> Result<u64, ClientError> {
    let data = json!({"task_id": task_id, "resume": true, "next_index": next_index});
    conn.send_json(&json!({"type": "stream_start", "data": data}))
        .await?;
    match conn.recv().await? {
        ServerMessage::StreamStarted(s) if s.resumed => s.received_bytes.ok_or_else(|| {
            ClientError::Protocol("`stream_started` without `received_bytes`".into())
        }),
        ServerMessage::Error(e) => Err(ClientError::from_server(e)),
        other => Err(ClientError::Protocol(format!(
            "expected a resumed `stream_started`, got `{}`",
            type_name(&other)
        ))),
    }
}

/// The audio sent on a stream, kept (up to a cap) until no resume can need it again.
#[derive(Debug)]
struct Sent {
    /// Frames sent, oldest first.
    frames: VecDeque<Vec<u8>>,
    /// Stream byte offset of the first kept frame's first byte.
    start: u64,
    /// Bytes kept.
    kept: usize,
    /// Most bytes kept; older frames are let go.
    cap: usize,
    /// Seconds of audio sent in all.
    seconds: f64,
}

impl Sent {
    fn new(cap: usize) -> Self {
        Sent {
            frames: VecDeque::new(),
            start: 0,
            kept: 0,
            cap,
            seconds: 0.0,
        }
    }

    /// Records a frame about to be sent.
    fn push(&mut self, frame: &[u8], seconds: f64) {
        self.frames.push_back(frame.to_vec());
        self.kept += frame.len();
        self.seconds += seconds;
        while self.kept > self.cap {
            let Some(old) = self.frames.pop_front() else {
                break;
            };
            self.kept -= old.len();
            self.start += old.len() as u64;
        }
    }

    /// Stream bytes sent so far.
    fn end(&self) -> u64 {
        self.start + self.kept as u64
    }

    fn seconds(&self) -> f64 {
        self.seconds
    }

    /// The bytes from stream offset `from` (what the server took in) to the end, to send again;
    /// frames before `from` are let go. Fails when `from` is outside what was kept.
    fn since(&mut self, from: u64) -> Result<Vec<u8>, ClientError> {
        if from < self.start || from > self.end() {
            return Err(ClientError::Protocol(format!(
                "the server resumed the stream at byte {from}, outside the {}..{} kept to send again",
                self.start,
                self.end()
            )));
        }
        while let Some(front) = self.frames.front() {
            let len = front.len() as u64;
            if self.start + len > from {
                break;
            }
            self.start += len;
            self.kept -= front.len();
            self.frames.pop_front();
        }
        let skip = (from - self.start) as usize;
        Ok(self.frames.iter().flatten().skip(skip).copied().collect())
    }
}

/// `stream_start` → `stream_started`.
async fn start(
    conn: &mut Conn,
    audio: &Audio,
    options: &StreamOptions,
) -> Result<TaskId, ClientError> {
    let mut data = json!({
        "format": audio.format(),
        "sample_rate": audio.sample_rate(),
        "channels": audio.channels(),
    });
    if let Some(lang) = &options.language {
        data["language"] = json!(lang);
    }
    if options.translate {
        data["translate"] = json!(true);
    }
    conn.send_json(&json!({"type": "stream_start", "data": data}))
        .await?;
    match conn.recv().await? {
        ServerMessage::StreamStarted(s) => Ok(s.task_id),
        ServerMessage::Error(e) => Err(ClientError::from_server(e)),
        other => Err(ClientError::Protocol(format!(
            "expected `stream_started`, got `{}`",
            type_name(&other)
        ))),
    }
}

/// Sends the rest of the frames (paced when `realtime`), each recorded in `sent` before it
/// goes, so a frame lost with the connection is sent again on the resume.
async fn send_audio<K>(
    sink: &mut K,
    audio: &mut Audio,
    sent: &mut Sent,
    task_id: TaskId,
    realtime: bool,
) -> Result<(), ClientError>
where
    K: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let started = tokio::time::Instant::now();
    let mut sent_secs = 0.0;
    while let Some((bytes, secs)) = audio.next_frame().await? {
        if realtime {
            tokio::time::sleep_until(started + Duration::from_secs_f64(sent_secs)).await;
        }
        sent.push(&bytes, secs);
        conn::send(sink, Message::binary(encode_audio(Some(task_id), &bytes))).await?;
        sent_secs += secs;
    }
    Ok(())
}

/// Relays the server's messages until `transcription_complete`; segments the client has
/// already seen (sent again after a resume) are skipped.
async fn receive<S>(
    incoming: &mut S,
    idle: Duration,
    at: &mut Position,
    on_event: &mut impl FnMut(StreamEvent<'_>),
) -> Result<TranscriptionComplete, ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let Some(task_id) = at.task_id else {
        return Err(ClientError::Protocol("no stream to follow".into()));
    };
    loop {
        match conn::recv(incoming, idle).await? {
            ServerMessage::TranscriptPartial(p) if p.task_id == task_id => {
                on_event(StreamEvent::Partial {
                    text: &p.text,
                    revision: p.revision,
                });
            }
            ServerMessage::TranscriptSegment(s) if s.task_id == task_id => {
                if at.take(s.index) {
                    on_event(StreamEvent::Segment(&s));
                }
            }
            ServerMessage::StreamLag(l) if l.task_id == task_id => on_event(StreamEvent::Lag {
                behind_seconds: l.behind_seconds,
            }),
            ServerMessage::TranscriptionComplete(c) if c.task_id == task_id => return Ok(c),
            ServerMessage::Error(e) => return Err(ClientError::from_server(e)),
            other => tracing::debug!(kind = type_name(&other), "ignored while streaming"),
        }
    }
}

/// Audio cut into frames of `chunk_ms`.
enum Audio {
    /// 16 kHz mono f32 blocks from a decoder thread, regrouped into frames.
    Decoded {
        /// Blocks from the decoder thread (errors end the stream).
        blocks: mpsc::Receiver<Result<Vec<f32>, DecodeError>>,
        /// Samples waiting to fill a frame.
        pending: Vec<f32>,
        /// Samples per frame.
        frame: usize,
        /// Whether the decoder is done (flush `pending`).
        ended: bool,
        /// The file, for error messages.
        path: PathBuf,
    },
    /// Raw s16le bytes passed through.
    Raw {
        /// The source.
        reader: Box<dyn AsyncRead + Send + Unpin>,
        /// Samples per second per channel.
        sample_rate: u32,
        /// Interleaved channels.
        channels: u16,
        /// Bytes per frame (whole sample frames).
        frame: usize,
        /// Bytes read towards the next frame; kept here so a read cut short by a dropped
        /// connection loses nothing.
        filling: Vec<u8>,
    },
}

impl Audio {
    async fn open(source: StreamSource, chunk_ms: u32) -> Result<Audio, ClientError> {
        let chunk_ms = chunk_ms.max(1) as usize;
        match source {
            StreamSource::File(path) => {
                let owned = path.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    AudioStream::open(&owned, DecodeLimits::default())
                })
                .await
                .map_err(|e| ClientError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let decoder = opened.map_err(|source| ClientError::Audio {
                    path: path.clone(),
                    source,
                })?;
                let (tx, blocks) = mpsc::channel(DECODED_BLOCKS);
                std::thread::Builder::new()
                    .name("earshot-stream-decode".into())
                    .spawn(move || decode_blocks(decoder, tx))
                    .map_err(|e| ClientError::File {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(Audio::Decoded {
                    blocks,
                    pending: Vec::new(),
                    frame: (SAMPLE_RATE as usize * chunk_ms / 1000).max(1),
                    ended: false,
                    path,
                })
            }
            StreamSource::RawS16 {
                reader,
                sample_rate,
                channels,
            } => {
                let bytes_per_frame = 2 * usize::from(channels.max(1));
                let frames = (sample_rate as usize * chunk_ms / 1000).max(1);
                Ok(Audio::Raw {
                    reader,
                    sample_rate,
                    channels,
                    frame: frames * bytes_per_frame,
                    filling: Vec::new(),
                })
            }
        }
    }

    /// Bytes in a whole frame (audio sent again on a resume is cut the same way).
    fn frame_bytes(&self) -> usize {
        match self {
            Audio::Decoded { frame, .. } => frame * 4,
            Audio::Raw { frame, .. } => *frame,
        }
    }

    fn format(&self) -> &'static str {
        match self {
            Audio::Decoded { .. } => "pcm_f32le",
            Audio::Raw { .. } => "pcm_s16le",
        }
    }

    fn sample_rate(&self) -> u32 {
        match self {
            Audio::Decoded { .. } => SAMPLE_RATE,
            Audio::Raw { sample_rate, .. } => *sample_rate,
        }
    }

    fn channels(&self) -> u16 {
        match self {
            Audio::Decoded { .. } => 1,
            Audio::Raw { channels, .. } => *channels,
        }
    }

    /// The next frame's bytes and its duration in seconds; `None` at the end.
    async fn next_frame(&mut self) -> Result<Option<(Vec<u8>, f64)>, ClientError> {
        match self {
            Audio::Decoded {
                blocks,
                pending,
                frame,
                ended,
                path,
            } => {
                while pending.len() < *frame && !*ended {
                    match blocks.recv().await {
                        Some(Ok(block)) => pending.extend_from_slice(&block),
                        Some(Err(source)) => {
                            return Err(ClientError::Audio {
                                path: path.clone(),
                                source,
                            })
                        }
                        None => *ended = true,
                    }
                }
                if pending.is_empty() {
                    return Ok(None);
                }
                let take = (*frame).min(pending.len());
                let bytes: Vec<u8> = pending.drain(..take).flat_map(f32::to_le_bytes).collect();
                Ok(Some((bytes, take as f64 / f64::from(SAMPLE_RATE))))
            }
            Audio::Raw {
                reader,
                sample_rate,
                channels,
                frame,
                filling,
            } => {
                let mut chunk = vec![0u8; *frame];
                while filling.len() < *frame {
                    let want = *frame - filling.len();
                    let n =
                        reader
                            .read(&mut chunk[..want])
                            .await
                            .map_err(|e| ClientError::File {
                                path: PathBuf::from("-"),
                                reason: e.to_string(),
                            })?;
                    if n == 0 {
                        break;
                    }
                    filling.extend_from_slice(&chunk[..n]);
                }
                if filling.is_empty() {
                    return Ok(None);
                }
                let buf = std::mem::take(filling);
                let per_sec = f64::from(*sample_rate) * 2.0 * f64::from((*channels).max(1));
                let secs = buf.len() as f64 / per_sec;
                Ok(Some((buf, secs)))
            }
        }
    }
}

/// The decoder thread: 16 kHz blocks into the channel until the end, an error, or the
/// receiver going away.
fn decode_blocks(mut audio: AudioStream, tx: mpsc::Sender<Result<Vec<f32>, DecodeError>>) {
    loop {
        let item = match audio.next_chunk() {
            Ok(Some(block)) => Ok(block),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_sends_again_exactly_what_the_server_lacks() {
        let mut sent = Sent::new(1000);
        for i in 0..5u8 {
            sent.push(&[i; 10], 0.1);
        }
        assert_eq!(sent.end(), 50);
        let again = sent.since(23).unwrap();
        assert_eq!(again.len(), 27);
        assert_eq!(&again[..7], &[2; 7]);
        assert_eq!(&again[7..17], &[3; 10]);
        // What the server confirmed is let go; a later resume starts from there or after.
        assert_eq!(sent.since(50).unwrap(), Vec::<u8>::new());
        assert!(sent.since(23).is_err(), "already let go");
        assert!(sent.since(51).is_err(), "never sent");
        assert!((sent.seconds() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn old_audio_is_let_go_past_the_cap() {
        let mut sent = Sent::new(25);
        for i in 0..5u8 {
            sent.push(&[i; 10], 0.1);
        }
        assert_eq!(sent.end(), 50, "offsets count everything sent");
        assert!(sent.since(19).is_err(), "beyond what was kept");
        assert_eq!(sent.since(30).unwrap(), [[3u8; 10], [4; 10]].concat());
    }

    #[test]
    fn segments_count_on_and_repeats_are_skipped() {
        let mut at = Position::default();
        assert!(at.take(0));
        assert!(at.take(1));
        assert_eq!(at.next_index, 2);
        // After a resume the server sends from next_index; anything older is a repeat.
        assert!(!at.take(1));
        assert!(at.take(2));
        assert_eq!(at.next_index, 3);
    }
}
