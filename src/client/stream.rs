//! Live streaming: send audio as binary frames between `stream_start` and `stream_end`, and
//! receive partials and final segments while it plays (docs/PROTOCOL.md §9).
//!
//! A file is decoded here ([`crate::audio::AudioStream`]) to 16 kHz mono and sent as
//! `pcm_f32le`; raw `pcm_s16le` from a reader (stdin) is passed through with its rate and
//! channel count. Frames go out at real-time pace when asked, otherwise as fast as the server
//! takes them. Sending and receiving run concurrently on the two halves of one socket.
//!
//! A live stream cannot be resumed: a dropped connection ends it with an error. This module
//! reports through a callback and must NOT print.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

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
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            realtime: false,
            chunk_ms: 50,
            language: None,
            translate: false,
            idle_timeout: super::DEFAULT_IDLE_TIMEOUT,
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

/// Streams `source` to the server at `url` and returns the final transcript.
pub async fn stream(
    url: &str,
    source: StreamSource,
    options: &StreamOptions,
    mut on_event: impl FnMut(StreamEvent<'_>),
) -> Result<StreamOutcome, ClientError> {
    let mut audio = Audio::open(source, options.chunk_ms).await?;
    let mut conn = Conn::open(url, options.idle_timeout).await?;
    let task_id = start(&mut conn, &audio, options).await?;
    on_event(StreamEvent::Started { task_id });
    let idle = conn.idle_timeout;
    let (mut sink, mut incoming) = conn.ws.split();
    let (result, audio_seconds) = {
        let send = async {
            let secs = send_audio(&mut sink, &mut audio, task_id, options.realtime).await?;
            let end = json!({"type": "stream_end", "data": {"task_id": task_id}});
            conn::send(&mut sink, Message::text(end.to_string())).await?;
            Ok::<f64, ClientError>(secs)
        };
        let receive = receive(&mut incoming, idle, task_id, &mut on_event);
        tokio::pin!(send, receive);
        let mut audio_seconds = None;
        let result = loop {
            tokio::select! {
                sent = &mut send, if audio_seconds.is_none() => audio_seconds = Some(sent?),
                done = &mut receive => break done?,
            }
        };
        (result, audio_seconds)
    };
    let mut ws = sink
        .reunite(incoming)
        .map_err(|_| ClientError::Protocol("socket halves mismatch".into()))?;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(StreamOutcome {
        task_id,
        audio_seconds: audio_seconds.unwrap_or(result.duration),
        result,
    })
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

/// Sends every frame (paced when `realtime`); returns the seconds of audio sent.
async fn send_audio<K>(
    sink: &mut K,
    audio: &mut Audio,
    task_id: TaskId,
    realtime: bool,
) -> Result<f64, ClientError>
where
    K: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let started = tokio::time::Instant::now();
    let mut sent_secs = 0.0;
    while let Some((bytes, secs)) = audio.next_frame().await? {
        if realtime {
            tokio::time::sleep_until(started + Duration::from_secs_f64(sent_secs)).await;
        }
        conn::send(sink, Message::binary(encode_audio(Some(task_id), &bytes))).await?;
        sent_secs += secs;
    }
    Ok(sent_secs)
}

/// Relays the server's messages until `transcription_complete`.
async fn receive<S>(
    incoming: &mut S,
    idle: Duration,
    task_id: TaskId,
    on_event: &mut impl FnMut(StreamEvent<'_>),
) -> Result<TranscriptionComplete, ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match conn::recv(incoming, idle).await? {
            ServerMessage::TranscriptPartial(p) if p.task_id == task_id => {
                on_event(StreamEvent::Partial {
                    text: &p.text,
                    revision: p.revision,
                });
            }
            ServerMessage::TranscriptSegment(s) if s.task_id == task_id => {
                on_event(StreamEvent::Segment(&s));
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
                })
            }
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
            } => {
                let mut buf = vec![0u8; *frame];
                let mut filled = 0;
                while filled < buf.len() {
                    let n =
                        reader
                            .read(&mut buf[filled..])
                            .await
                            .map_err(|e| ClientError::File {
                                path: PathBuf::from("-"),
                                reason: e.to_string(),
                            })?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(None);
                }
                buf.truncate(filled);
                let per_sec = f64::from(*sample_rate) * 2.0 * f64::from((*channels).max(1));
                Ok(Some((buf, filled as f64 / per_sec)))
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
