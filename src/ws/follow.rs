//! Forwards a task's progress, segments and result to this connection.
//!
//! A follower is a small task per (connection, task). It first catches up from the registry's
//! snapshot, then relays events; when it lags behind the broadcast buffer it catches up from the
//! snapshot again, so nothing the client needs is lost and the producer never waits.
//!
//! A follower must not block the task's producer or change the task: it only reads and sends.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::{Connection, Outbound};
use crate::domain::TaskId;
use crate::domain::{FailureCode, OutputFormat};
use crate::format::render;
use crate::jobs::{TaskEvent, TaskRegistry, TaskResult, TaskState};
use crate::protocol::message::{TranscriptSegment, TranscriptionComplete, TranscriptionProgress};
use crate::protocol::{ProtocolError, ServerMessage};
use crate::transcript::Segment;

impl Connection {
    /// Starts forwarding `task_id` to this client until it finishes or the connection ends.
    /// At most one follower per task: asking again (`upload_resume` in a loop) while one runs
    /// adds nothing, so a client cannot pile up followers.
    pub(super) fn follow(&mut self, task_id: TaskId, format: Option<OutputFormat>) {
        self.adopt(task_id);
        self.followers.retain(|_, h| !h.is_finished());
        if self.followers.contains_key(&task_id) {
            return;
        }
        let registry = self.state.tasks.clone();
        let out = self.out.clone();
        let cancel = self.cancel.clone();
        let handle = self.state.tracker.spawn(async move {
            tokio::select! {
                _ = relay(registry, out, task_id, format) => {}
                _ = cancel.cancelled() => {}
            }
        });
        self.followers.insert(task_id, handle);
    }
}

/// What has been sent so far, so catch-ups send only what is new.
struct Cursor {
    /// Segments already sent.
    sent: usize,
}

async fn relay(
    registry: Arc<dyn TaskRegistry>,
    out: Outbound,
    task_id: TaskId,
    format: Option<OutputFormat>,
) -> Option<()> {
    let mut events = registry.subscribe(task_id);
    let mut cursor = Cursor { sent: 0 };
    if catch_up(registry.as_ref(), &out, task_id, format, &mut cursor).await? {
        return Some(());
    }
    let events = events.as_mut()?;
    loop {
        match events.recv().await {
            Ok(TaskEvent::Progress(p)) => out.send_lossy(progress(task_id, p)),
            Ok(TaskEvent::Segment { index, segment }) if index >= cursor.sent => {
                out.send(segment_msg(task_id, index, &segment)).await.ok()?;
                cursor.sent = index + 1;
            }
            Ok(TaskEvent::Segment { .. }) => {}
            Ok(TaskEvent::Finished(state)) => {
                finished(&out, task_id, format, &state).await;
                return Some(());
            }
            Err(RecvError::Lagged(_)) => {
                if catch_up(registry.as_ref(), &out, task_id, format, &mut cursor).await? {
                    return Some(());
                }
            }
            Err(RecvError::Closed) => return Some(()),
        }
    }
}

/// Sends what the snapshot has beyond the cursor. Returns true when the task is over.
async fn catch_up(
    registry: &dyn TaskRegistry,
    out: &Outbound,
    task_id: TaskId,
    format: Option<OutputFormat>,
    cursor: &mut Cursor,
) -> Option<bool> {
    let snap = registry.snapshot(task_id).await?;
    if let TaskState::Done(_) | TaskState::Failed { .. } = snap.state {
        finished(out, task_id, format, &snap.state).await;
        return Some(true);
    }
    if let TaskState::Running { progress: p } = snap.state {
        out.send_lossy(progress(task_id, p));
    }
    for (index, segment) in snap.segments.iter().enumerate().skip(cursor.sent) {
        out.send(segment_msg(task_id, index, segment)).await.ok()?;
    }
    cursor.sent = cursor.sent.max(snap.segments.len());
    Some(false)
}

async fn finished(
    out: &Outbound,
    task_id: TaskId,
    format: Option<OutputFormat>,
    state: &TaskState,
) {
    let msg = match state {
        TaskState::Done(result) => complete_msg(task_id, result, format),
        TaskState::Failed { code, message } => failed_msg(task_id, *code, message),
        _ => return,
    };
    let _ = out.send(msg).await;
}

fn progress(task_id: TaskId, progress: f64) -> ServerMessage {
    ServerMessage::TranscriptionProgress(TranscriptionProgress { task_id, progress })
}

/// The `transcript_segment` message for a segment.
pub fn segment_msg(task_id: TaskId, index: usize, s: &Segment) -> ServerMessage {
    ServerMessage::TranscriptSegment(TranscriptSegment {
        task_id,
        index: index as u32,
        start: s.start,
        end: s.end,
        text: s.text.clone(),
    })
}

/// The `transcription_complete` message for a result, rendered in `format` when asked.
pub fn complete_msg(
    task_id: TaskId,
    result: &TaskResult,
    format: Option<OutputFormat>,
) -> ServerMessage {
    let t = &result.transcript;
    let formatted = format.map(|f| render(t, f));
    ServerMessage::TranscriptionComplete(TranscriptionComplete {
        task_id,
        text: t.text(),
        segments: t.segments.clone(),
        language: t.language.clone(),
        language_probability: t.language_probability,
        duration: t.duration,
        processing_seconds: result.processing_seconds,
        formatted,
        truncated: result.truncated,
        interrupted: result.interrupted,
    })
}

/// The `error` message for a failed task.
pub fn failed_msg(task_id: TaskId, code: FailureCode, message: &str) -> ServerMessage {
    ProtocolError::new(code.into(), message)
        .with_task(task_id)
        .to_message()
}
