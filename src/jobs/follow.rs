//! Following one task through the registry: its final segments in order, each exactly once,
//! then how it ended. A follower that joins late or falls behind the registry's event buffer
//! catches up from the snapshot, so it misses no segment and the producer never waits for it.
//!
//! This module must not talk to clients or know their formats: callers turn what it yields
//! into their own messages.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::registry::{TaskEvent, TaskRegistry, TaskResult, TaskState};
use crate::domain::{FailureCode, TaskId};
use crate::transcript::Segment;

/// What a follower hears next.
#[derive(Debug, Clone)]
pub enum Update {
    /// The task's next final segment.
    Segment(Segment),
    /// The task finished with this result; nothing follows.
    Done(Arc<TaskResult>),
    /// The task failed: why, and a message safe to show a client; nothing follows.
    Failed { code: FailureCode, message: String },
}

/// One follower of one task.
pub struct Follow {
    /// Where the task's snapshot is read when the events are not enough.
    registry: Arc<dyn TaskRegistry>,
    /// The task followed.
    task_id: TaskId,
    /// The task's live events.
    events: broadcast::Receiver<TaskEvent>,
    /// Segments handed out or queued so far: the index of the next new one, so a segment seen
    /// both in a snapshot and as an event is given once.
    seen: usize,
    /// Updates caught up from a snapshot, handed out before any new event.
    backlog: VecDeque<Update>,
    /// Whether the end was handed out (or the events stopped), so nothing more is.
    over: bool,
}

impl Follow {
    /// Follows `task_id` from its first segment; `None` if the registry does not know it.
    pub async fn new(registry: Arc<dyn TaskRegistry>, task_id: TaskId) -> Option<Self> {
        let events = registry.subscribe(task_id)?;
        let mut follow = Follow {
            registry,
            task_id,
            events,
            seen: 0,
            backlog: VecDeque::new(),
            over: false,
        };
        // Segments published before the subscription (or a task already over) are only in
        // the snapshot.
        follow.catch_up().await?;
        Some(follow)
    }

    /// The next update; `None` after the end, or if the registry lost the task.
    pub async fn next(&mut self) -> Option<Update> {
        loop {
            if let Some(update) = self.backlog.pop_front() {
                self.over |= !matches!(update, Update::Segment(_));
                return Some(update);
            }
            if self.over {
                return None;
            }
            match self.events.recv().await {
                Ok(TaskEvent::Segment { index, segment }) if index >= self.seen => {
                    self.seen = index + 1;
                    return Some(Update::Segment(segment));
                }
                Ok(TaskEvent::Finished(state)) => self.backlog.extend(end(state)),
                Ok(TaskEvent::Segment { .. } | TaskEvent::Progress(_)) => {}
                Err(RecvError::Lagged(_)) => self.catch_up().await?,
                Err(RecvError::Closed) => {
                    // No more events will come: what the snapshot holds is all there is.
                    self.catch_up().await?;
                    self.over = true;
                }
            }
        }
    }

    /// Queues what the snapshot has beyond what was seen, and the end if the task is over.
    async fn catch_up(&mut self) -> Option<()> {
        let snapshot = self.registry.snapshot(self.task_id).await?;
        let count = snapshot.segments.len();
        let new = snapshot.segments.into_iter().skip(self.seen);
        self.backlog.extend(new.map(Update::Segment));
        self.seen = self.seen.max(count);
        self.backlog.extend(end(snapshot.state));
        Some(())
    }
}

/// The update for a task that is over; `None` while it is queued or running.
fn end(state: TaskState) -> Option<Update> {
    match state {
        TaskState::Done(result) => Some(Update::Done(result)),
        TaskState::Failed { code, message } => Some(Update::Failed { code, message }),
        TaskState::Queued | TaskState::Running { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Task;
    use crate::jobs::LocalRegistry;
    use crate::transcript::Transcript;

    fn seg(i: usize) -> Segment {
        Segment::new(i as f64, i as f64 + 1.0, format!("s{i}"))
    }

    fn result(segments: Vec<Segment>) -> TaskResult {
        TaskResult {
            transcript: Transcript {
                language: "en".into(),
                language_probability: None,
                duration: 1.0,
                segments,
            },
            processing_seconds: 0.5,
            task: Task::Transcribe,
            truncated: None,
            interrupted: false,
        }
    }

    /// A registry (and the directory it keeps results in) with one task created.
    fn one_task() -> (tempfile::TempDir, Arc<LocalRegistry>, TaskId) {
        let dir = tempfile::tempdir().unwrap();
        let reg = LocalRegistry::new(dir.path()).unwrap();
        let id = TaskId::new_v4();
        reg.create(id, None);
        (dir, reg, id)
    }

    /// Every update until the end, as segment texts and a final word.
    async fn drain(follow: &mut Follow) -> (Vec<String>, String) {
        let mut texts = Vec::new();
        loop {
            match follow.next().await {
                Some(Update::Segment(s)) => texts.push(s.text),
                Some(Update::Done(_)) => break,
                Some(Update::Failed { message, .. }) => return (texts, message),
                None => return (texts, "vanished".into()),
            }
        }
        assert!(follow.next().await.is_none(), "nothing after the end");
        (texts, "done".into())
    }

    #[tokio::test]
    async fn early_and_lagged_segments_come_once_and_in_order() {
        let (_dir, reg, id) = one_task();
        let all: Vec<Segment> = (0..300).map(seg).collect();
        // Two before the follower subscribes, then more than the event buffer holds.
        reg.segment(id, all[0].clone());
        reg.segment(id, all[1].clone());
        let mut follow = Follow::new(reg.clone(), id).await.unwrap();
        for s in &all[2..] {
            reg.progress(id, 1.0);
            reg.segment(id, s.clone());
        }
        reg.finish(id, result(all.clone())).await;
        let (texts, end) = drain(&mut follow).await;
        assert_eq!(end, "done");
        let want: Vec<String> = all.iter().map(|s| s.text.clone()).collect();
        assert_eq!(texts, want);
    }

    #[tokio::test]
    async fn a_finished_task_is_followed_from_its_snapshot() {
        let (_dir, reg, id) = one_task();
        reg.segment(id, seg(0));
        reg.finish(id, result(vec![seg(0)])).await;
        let mut follow = Follow::new(reg.clone(), id).await.unwrap();
        assert_eq!(drain(&mut follow).await, (vec!["s0".into()], "done".into()));
        assert!(Follow::new(reg, TaskId::new_v4()).await.is_none());
    }

    #[tokio::test]
    async fn a_failure_after_segments_ends_the_updates() {
        let (_dir, reg, id) = one_task();
        let mut follow = Follow::new(reg.clone(), id).await.unwrap();
        reg.segment(id, seg(0));
        reg.fail(id, FailureCode::Internal, "transcription failed");
        let (texts, end) = drain(&mut follow).await;
        assert_eq!(
            (texts, end.as_str()),
            (vec!["s0".to_string()], "transcription failed")
        );
    }
}
