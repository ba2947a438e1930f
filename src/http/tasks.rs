//! `GET /v1/tasks/{task_id}`: where any task stands (upload, live stream or HTTP request) and
//! its result once done, from the task registry — so a client that dropped its connection can
//! still fetch its transcript.
//!
//! Without `response_format` the answer is a status object (JSON); with it, a finished task's
//! transcript is rendered exactly as the transcription endpoint would (202 + status while it
//! runs). This module must not start or change tasks.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::openai::{output_format, respond, task_error};
use super::{ApiError, Http};
use crate::access::Caller;
use crate::domain::OutputFormat;
use crate::domain::TaskId;
use crate::jobs::{Snapshot, TaskState};
use crate::protocol::ErrorCode;

/// The query string.
#[derive(Debug, Deserialize)]
pub struct TaskQuery {
    /// Render a finished result like the transcription endpoint (json, text, srt, vtt,
    /// verbose_json); absent = status object.
    response_format: Option<String>,
}

/// `GET /v1/tasks/{task_id}`.
/// With API keys on, only the key that created a task sees it; others get 404, as for an id
/// that does not exist.
pub async fn get(
    State(http): State<Arc<Http>>,
    Extension(caller): Extension<Caller>,
    Path(task_id): Path<String>,
    Query(query): Query<TaskQuery>,
) -> Response {
    let format = query.response_format.as_deref();
    lookup(&http, &caller, &task_id, format)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn lookup(
    http: &Http,
    caller: &Caller,
    task_id: &str,
    format: Option<&str>,
) -> Result<Response, ApiError> {
    let format = format.map(output_format).transpose()?;
    let id = TaskId::parse(task_id).map_err(|_| not_found())?;
    if !http.app.cluster_ready() {
        return Err(ApiError::not_ready(1));
    }
    let snapshot = http
        .app
        .tasks
        .snapshot_for(id, caller)
        .await
        .ok_or_else(not_found)?;
    match (&snapshot.state, format) {
        (TaskState::Done(result), Some(format)) => Ok(respond(id, result, format, result.task)),
        (TaskState::Failed { code, message }, Some(_)) => Err(task_error(*code, message)),
        (_, Some(_)) => Ok((StatusCode::ACCEPTED, Json(status(id, &snapshot))).into_response()),
        (_, None) => Ok(Json(status(id, &snapshot)).into_response()),
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("no such task (or its result has expired)")
}

/// The status object: state, progress, the text so far, and the full result when done (with
/// `truncated` when the file ended before its declared duration; status `interrupted` for a
/// live stream whose connection dropped and was not resumed in time).
pub fn status(id: TaskId, snapshot: &Snapshot) -> serde_json::Value {
    let text = crate::transcript::join_text(&snapshot.segments);
    let (status, progress) = match &snapshot.state {
        TaskState::Queued => ("queued", 0.0),
        TaskState::Running { progress } => ("in_progress", *progress),
        TaskState::Done(result) if result.interrupted => ("interrupted", 100.0),
        TaskState::Done(_) => ("completed", 100.0),
        TaskState::Failed { .. } => ("failed", 0.0),
    };
    let mut body = json!({
        "id": id.to_string(),
        "object": "earshot.task",
        "status": status,
        "progress": progress,
        "text": text,
        "segments_done": snapshot.segments.len(),
    });
    match &snapshot.state {
        TaskState::Done(result) => {
            let rendered = crate::format::render(&result.transcript, OutputFormat::VerboseJson);
            body["result"] = serde_json::from_str(&rendered).unwrap_or_default();
            body["text"] = json!(result.transcript.text());
            body["processing_seconds"] = json!(result.processing_seconds);
            if let Some(cut) = &result.truncated {
                body["truncated"] = json!(cut);
            }
        }
        TaskState::Failed { code, message } => {
            let code = ErrorCode::from(*code);
            body["error"] = json!({"code": code, "message": message});
        }
        _ => {}
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FailureCode, Task};
    use crate::jobs::TaskResult;
    use crate::transcript::{Segment, Transcript};

    fn segment(text: &str) -> Segment {
        Segment::new(0.0, 1.0, text)
    }

    #[test]
    fn status_objects_follow_the_task() {
        let id = TaskId::new_v4();
        let running = Snapshot {
            state: TaskState::Running { progress: 40.0 },
            segments: vec![segment(" Hello")],
        };
        let body = status(id, &running);
        assert_eq!(body["status"], "in_progress");
        assert_eq!(body["progress"], 40.0);
        assert_eq!(body["text"], "Hello");
        assert!(body.get("result").is_none());

        let result = TaskResult {
            transcript: Transcript {
                language: "en".into(),
                language_probability: None,
                duration: 1.0,
                segments: vec![segment(" Hello there")],
            },
            processing_seconds: 0.5,
            task: Task::Transcribe,
            truncated: None,
            interrupted: false,
        };
        let done = Snapshot {
            state: TaskState::Done(Arc::new(result.clone())),
            segments: vec![],
        };
        let body = status(id, &done);
        assert_eq!(body["status"], "completed");
        assert_eq!(body["text"], "Hello there");
        assert_eq!(body["result"]["segments"][0]["text"], " Hello there");
        assert!(body.get("truncated").is_none(), "{body}");

        let interrupted = Snapshot {
            state: TaskState::Done(Arc::new(TaskResult {
                interrupted: true,
                ..result
            })),
            segments: vec![],
        };
        let body = status(id, &interrupted);
        assert_eq!(body["status"], "interrupted");
        assert_eq!(
            body["text"], "Hello there",
            "the committed text is the result"
        );

        let failed = Snapshot {
            state: TaskState::Failed {
                code: FailureCode::UnsupportedAudio,
                message: "bad".into(),
            },
            segments: vec![],
        };
        assert_eq!(status(id, &failed)["error"]["code"], "unsupported_audio");
    }
}
