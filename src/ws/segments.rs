//! The seed's `audio_segment`: 16 kHz f32 audio sent in pieces (e.g. 60 s each) with no prior
//! request. Each piece is transcribed as it arrives, in order, and its segments are published on
//! one timeline; `transcription_complete` follows the piece marked `is_final`.
//!
//! This module must not queue more than `QUEUED_PIECES` pieces per task or keep more than
//! `MAX_OPEN_TASKS` tasks open per connection (a faster client waits on its socket), and must
//! not accept a piece out of order.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Connection;
use crate::app::AppState;
use crate::domain::Task;
use crate::domain::TaskId;
use crate::inference::engine::Options;
use crate::inference::long;
use crate::jobs::TaskResult;
use crate::protocol::message::AudioSegment;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::transcript::{Segment, Transcript};

/// Pieces waiting per task; a client sending faster than Whisper waits on its socket.
const QUEUED_PIECES: usize = 2;
/// `audio_segment` tasks one connection may have open (not yet `is_final`) at once: each
/// holds queued audio, so without a cap one client could make the server hold any amount.
const MAX_OPEN_TASKS: usize = 4;
/// How long a client is asked to wait when it has too many open tasks.
const RETRY_MS: u64 = 1_000;

/// A task fed by `audio_segment` messages.
pub struct SegmentTask {
    /// Pieces into the task's worker, in arrival order.
    tx: mpsc::Sender<AudioSegment>,
    /// The `segment_index` the next piece must carry, so gaps and repeats are refused
    /// instead of silently producing a garbled timeline.
    next_index: u32,
}

impl Connection {
    pub(super) async fn audio_segment(&mut self, seg: AudioSegment) -> Result<(), ProtocolError> {
        let task_id = seg.task_id;
        let is_final = seg.is_final;
        if !self.segments.contains_key(&task_id) {
            self.start_segment_task(task_id, seg.segment_index).await?;
        }
        let task = self.segments.get_mut(&task_id).expect("started above");
        if seg.segment_index != task.next_index {
            return Err(ProtocolError::invalid(format!(
                "segment_index {} out of order: expected {}",
                seg.segment_index, task.next_index
            ))
            .with_task(task_id));
        }
        task.next_index += 1;
        if task.tx.send(seg).await.is_err() {
            self.segments.remove(&task_id);
            return Err(
                ProtocolError::new(ErrorCode::Internal, "transcription failed").with_task(task_id),
            );
        }
        if is_final {
            self.segments.remove(&task_id);
        }
        Ok(())
    }

    /// Starts a task for a client-chosen id. The id must be new: reusing one (another
    /// upload's, a finished stream's) would replace that task and its stored result.
    async fn start_segment_task(
        &mut self,
        task_id: TaskId,
        first: u32,
    ) -> Result<(), ProtocolError> {
        if first != 0 {
            return Err(ProtocolError::invalid(format!(
                "segment_index {first} out of order: a new task starts at 0"
            ))
            .with_task(task_id));
        }
        self.claim(task_id, "choose a new one (uuid4) for each recording")
            .await?;
        if self.segments.len() >= MAX_OPEN_TASKS {
            return Err(ProtocolError::new(
                ErrorCode::Busy,
                "too many audio_segment tasks open on this connection; finish one (is_final)",
            )
            .with_task(task_id)
            .with_retry_after_ms(RETRY_MS));
        }
        self.state.tasks.create(task_id, self.caller.owner.clone());
        let (tx, rx) = mpsc::channel(QUEUED_PIECES);
        let options = self.state.engine_options(&Default::default());
        let state = self.state.clone();
        self.state.tracker.spawn(run(state, task_id, options, rx));
        self.segments
            .insert(task_id, SegmentTask { tx, next_index: 0 });
        self.follow(task_id, None);
        Ok(())
    }
}

async fn run(
    state: std::sync::Arc<AppState>,
    task_id: TaskId,
    options: Options,
    mut rx: mpsc::Receiver<AudioSegment>,
) {
    let started = Instant::now();
    let mut offset = 0.0;
    let mut all: Vec<Segment> = Vec::new();
    let mut language = options.language.clone().unwrap_or_else(|| "en".into());
    let mut language_probability = None;
    while let Some(piece) = rx.recv().await {
        let is_final = piece.is_final;
        let len = piece.samples.len() as f64 / f64::from(crate::audio::SAMPLE_RATE);
        // Pieces share the processing slots with uploads (seed: 3 at once).
        let Ok(slot) = state.processing_slots.clone().acquire_owned().await else {
            break;
        };
        let st = state.clone();
        let opts = options.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut samples = Some(piece.samples);
            long::transcribe(
                &st.pool,
                || Ok::<_, String>(samples.take()),
                &opts,
                st.vad_model.as_deref(),
                &CancellationToken::new(),
                |_| {},
            )
        });
        match job.await {
            Ok(Ok(t)) => {
                language = t.language.clone();
                language_probability = t.language_probability;
                for mut s in t.segments {
                    s.start += offset;
                    s.end += offset;
                    state.tasks.segment(task_id, s.clone());
                    all.push(s);
                }
            }
            Ok(Err(err)) => tracing::warn!(%task_id, %err, "audio_segment failed"),
            Err(err) => tracing::error!(%task_id, %err, "audio_segment worker died"),
        }
        offset += len;
        if is_final {
            break;
        }
    }
    let result = TaskResult {
        transcript: Transcript {
            language,
            language_probability,
            duration: offset,
            segments: all,
        },
        processing_seconds: started.elapsed().as_secs_f64(),
        task: Task::Transcribe,
        truncated: None,
        interrupted: false,
    };
    state.tasks.finish(task_id, result).await;
}
