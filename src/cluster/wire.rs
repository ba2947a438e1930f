//! What the nodes of a cluster write to NATS, as plain serde types with their subjects and keys:
//! a task's record in the KV bucket, one event of a task on its subject, one job on the work
//! queue. Pure: encoding and decoding only, unit-tested without a server.
//!
//! This module must not talk to NATS or hold state; a field added here must stay readable by a
//! node running the previous version (`#[serde(default)]`), since nodes are upgraded one by one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::Owner;
use crate::domain::{FailureCode, TaskId};
use crate::inference::engine::Options;
use crate::jobs::{Job, Source, TaskResult, TaskState};
use crate::transcript::Segment;

/// Subject prefix of every task event (`earshot.task.<id>.<kind>`).
pub const EVENT_PREFIX: &str = "earshot.task";
/// The subject jobs are queued on.
pub const JOB_SUBJECT: &str = "earshot.jobs";

/// The subject of one kind of event of a task.
pub fn event_subject(task_id: TaskId, kind: &str) -> String {
    format!("{EVENT_PREFIX}.{task_id}.{kind}")
}

/// The filter matching every event of a task.
pub fn events_of(task_id: TaskId) -> String {
    format!("{EVENT_PREFIX}.{task_id}.>")
}

/// A task's state as stored and sent between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waiting for a node to take it.
    Queued,
    /// Being transcribed (0–100).
    Running {
        /// How far, in percent.
        progress: f64,
    },
    /// Finished.
    Done {
        /// The result as sent to clients.
        result: TaskResult,
    },
    /// Failed.
    Failed {
        /// Why.
        code: FailureCode,
        /// A message safe to show a client.
        message: String,
    },
}

impl From<&TaskState> for State {
    fn from(state: &TaskState) -> Self {
        match state {
            TaskState::Queued => State::Queued,
            TaskState::Running { progress } => State::Running {
                progress: *progress,
            },
            TaskState::Done(result) => State::Done {
                result: TaskResult::clone(result),
            },
            TaskState::Failed { code, message } => State::Failed {
                code: *code,
                message: message.clone(),
            },
        }
    }
}

impl From<State> for TaskState {
    fn from(state: State) -> Self {
        match state {
            State::Queued => TaskState::Queued,
            State::Running { progress } => TaskState::Running { progress },
            State::Done { result } => TaskState::Done(Arc::new(result)),
            State::Failed { code, message } => TaskState::Failed { code, message },
        }
    }
}

/// A task's entry in the KV bucket: where it stands and who may read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Where the task stands (its result once done).
    #[serde(flatten)]
    pub state: State,
    /// Who may read it (`None`: anyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// One event of a task, published on `earshot.task.<id>.<kind>` and kept in the events stream
/// so a follower that joins late replays them in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Progress changed.
    Progress {
        /// Percent, 0–100.
        progress: f64,
    },
    /// A final segment, numbered from 0 within one run of the job. A job run again after a
    /// node died numbers from 0 again, so a follower drops indexes it has already seen.
    Segment {
        /// Its number.
        index: usize,
        /// The segment.
        segment: Segment,
    },
    /// The task ended; nothing follows.
    End {
        /// How.
        #[serde(flatten)]
        state: State,
    },
}

impl Event {
    /// The last part of its subject.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Progress { .. } => "progress",
            Event::Segment { .. } => "segment",
            Event::End { .. } => "end",
        }
    }
}

/// A job on the work queue. The audio travels separately: a one-off file in the object store
/// under the task id; a finished upload as its chunks in the uploads stream, where they already
/// are (not a second copy).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    /// The task it publishes to.
    pub task_id: TaskId,
    /// Whisper options as asked; the node that runs it sets its own thread count.
    pub options: Options,
    /// The model asked for; `None` (and absent, from a node of an older version) = the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Who may read the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Whether the audio is a finished upload (kept by its node) or a one-off file.
    pub upload: bool,
    /// Whether the audio is read from the upload's chunks, not the object store: set for
    /// uploads by nodes of this version. Absent (from an older node): the object store.
    #[serde(default)]
    pub audio_in_upload: bool,
}

impl JobMessage {
    /// The message for a job.
    pub fn of(job: &Job) -> Self {
        JobMessage {
            task_id: job.task_id,
            options: job.options.clone(),
            model: job.model.clone(),
            owner: job.owner.clone(),
            upload: job.source == Source::Upload,
            audio_in_upload: job.source == Source::Upload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Task;
    use crate::transcript::Transcript;

    fn result() -> TaskResult {
        TaskResult {
            transcript: Transcript {
                language: "en".into(),
                language_probability: Some(0.97),
                duration: 2.0,
                segments: vec![Segment::new(0.0, 1.0, "hi")],
            },
            processing_seconds: 0.1,
            task: Task::Transcribe,
            truncated: None,
            interrupted: false,
        }
    }

    #[test]
    fn records_and_events_read_back_the_same() {
        let states = [
            State::Queued,
            State::Running { progress: 12.5 },
            State::Done { result: result() },
            State::Failed {
                code: FailureCode::UnsupportedAudio,
                message: "no".into(),
            },
        ];
        for state in states {
            let record = Record {
                state: state.clone(),
                owner: Some(Owner::of_key("k")),
            };
            let bytes = serde_json::to_vec(&record).unwrap();
            assert_eq!(serde_json::from_slice::<Record>(&bytes).unwrap(), record);
            let event = Event::End { state };
            let bytes = serde_json::to_vec(&event).unwrap();
            assert_eq!(serde_json::from_slice::<Event>(&bytes).unwrap(), event);
        }
        let seg = Event::Segment {
            index: 3,
            segment: Segment::new(1.0, 2.0, "x"),
        };
        let bytes = serde_json::to_vec(&seg).unwrap();
        assert_eq!(serde_json::from_slice::<Event>(&bytes).unwrap(), seg);
    }

    #[test]
    fn states_convert_both_ways() {
        let done = TaskState::Done(Arc::new(result()));
        assert_eq!(TaskState::from(State::from(&done)), done);
        let running = TaskState::Running { progress: 3.0 };
        assert_eq!(TaskState::from(State::from(&running)), running);
    }

    #[test]
    fn a_job_from_an_older_node_has_no_model_and_means_the_default() {
        let id = TaskId::from_bytes([7; 16]);
        let old = serde_json::json!({
            "task_id": id,
            "options": Options::default(),
            "upload": false,
        });
        let job: JobMessage = serde_json::from_value(old).unwrap();
        assert_eq!(job.model, None);
        let named = JobMessage {
            model: Some("base-q5_1".into()),
            ..job
        };
        let back: JobMessage =
            serde_json::from_slice(&serde_json::to_vec(&named).unwrap()).unwrap();
        assert_eq!(back.model.as_deref(), Some("base-q5_1"));
    }

    #[test]
    fn subjects_name_the_task_and_the_kind() {
        let id = TaskId::from_bytes([7; 16]);
        let s = event_subject(id, Event::Progress { progress: 1.0 }.kind());
        assert_eq!(s, format!("earshot.task.{id}.progress"));
        assert_eq!(events_of(id), format!("earshot.task.{id}.>"));
    }
}
