//! OpenAI's streamed transcription (`stream=true`) as server-sent events: a
//! `transcript.text.delta` for each piece of text as the task's segments are produced, then one
//! `transcript.text.done` with the whole text, each a `data: {json}` event. The done event ends
//! the stream; no `data: [DONE]` follows it (OpenAI's SDKs stop at the end of the body, and a
//! client that parses every `data:` line as JSON is not tripped up).
//!
//! The response starts only when there is a first event to send, so a task that fails before
//! producing any text gets its HTTP status (415, 503, …) like a plain request; a failure after
//! that is an `error` event carrying OpenAI's error object, and the stream ends. The deltas
//! concatenated are exactly the done event's `text`, which is the plain request's `text`
//! ([`TextJoiner`]). The done event has no `usage`: OpenAI's type for it counts billed tokens,
//! which Earshot neither bills nor counts; it has `truncated` when the file was cut short, as
//! the JSON bodies do.
//!
//! This module must not run Whisper or read the audio: it only relays what the task registry
//! publishes, and it holds the request's admission until the stream ends.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::openai::{mark_truncated, name_task, task_error};
use super::{ApiError, Http};
use crate::domain::TaskId;
use crate::jobs::{Follow, TaskResult, Update};
use crate::transcript::TextJoiner;

/// Answers with the task's text as events once it has a first one, or with the HTTP error of a
/// task that failed before. `hold` (what admitted the request: its job permit, disk
/// reservation and per-address slot) is kept until the stream ends or the client goes away, so
/// a long stream counts against the same limits as a waiting plain request.
pub async fn respond<H: Send + 'static>(
    http: &Http,
    task_id: TaskId,
    hold: H,
) -> Result<Response, ApiError> {
    let follow = Follow::new(http.app.tasks.clone(), task_id)
        .await
        .ok_or_else(ApiError::internal)?;
    let mut relay = Relay {
        task_id,
        follow,
        joiner: TextJoiner::default(),
        over: false,
        _hold: hold,
    };
    let first = relay
        .step()
        .await
        .unwrap_or_else(|| Err(ApiError::internal()))?;
    let rest = stream::unfold(relay, |mut relay| async move {
        let event = relay.step().await?.unwrap_or_else(|err| error(&err));
        Some((event, relay))
    });
    let events = stream::once(async { first }).chain(rest);
    let sse = Sse::new(events.map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default());
    let mut response = sse.into_response();
    name_task(&mut response, task_id);
    Ok(response)
}

/// One streamed answer: the task followed and the text given out so far.
struct Relay<H> {
    /// The task, for the log.
    task_id: TaskId,
    /// The task's segments and end, each once.
    follow: Follow,
    /// Turns segments into deltas that add up to the transcript's text.
    joiner: TextJoiner,
    /// Whether the last event (done or error) was produced.
    over: bool,
    /// The request's admission, released when the stream is dropped.
    _hold: H,
}

impl<H> Relay<H> {
    /// The next event, or why the task failed (the last either way); `None` after the last.
    async fn step(&mut self) -> Option<Result<Event, ApiError>> {
        if self.over {
            return None;
        }
        let last = loop {
            match self.follow.next().await {
                Some(Update::Segment(segment)) => {
                    if let Some(piece) = self.joiner.piece(&segment) {
                        return Some(Ok(delta(&piece)));
                    }
                }
                Some(Update::Done(result)) => break Ok(done(&result)),
                Some(Update::Failed { code, message }) => break Err(task_error(code, &message)),
                None => {
                    let task_id = self.task_id;
                    tracing::error!(%task_id, "the task vanished from the registry while it streamed");
                    break Err(ApiError::internal());
                }
            }
        };
        self.over = true;
        Some(last)
    }
}

/// `transcript.text.delta`: the next piece of text.
fn delta(piece: &str) -> Event {
    data(&json!({"type": "transcript.text.delta", "delta": piece}))
}

/// `transcript.text.done`: the whole text.
fn done(result: &TaskResult) -> Event {
    let mut body = json!({"type": "transcript.text.done", "text": result.transcript.text()});
    mark_truncated(&mut body, result);
    data(&body)
}

/// `error`: OpenAI's error object, which OpenAI's SDKs raise as an API error.
fn error(err: &ApiError) -> Event {
    let mut body = err.body();
    body["type"] = json!("error");
    data(&body)
}

fn data(body: &Value) -> Event {
    Event::default().data(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureCode;

    /// The event as it goes on the wire, parsed back: exactly one `data:` line and a blank one.
    async fn wire(event: Event) -> Value {
        let stream = stream::iter([Ok::<_, Infallible>(event)]);
        let body = Sse::new(stream).into_response().into_body();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        let wire = String::from_utf8(bytes.to_vec()).unwrap();
        let json = wire
            .strip_prefix("data: ")
            .and_then(|w| w.strip_suffix("\n\n"))
            .filter(|json| !json.contains('\n'));
        serde_json::from_str(json.unwrap_or_else(|| panic!("one data line: {wire:?}"))).unwrap()
    }

    #[tokio::test]
    async fn events_have_openai_shapes_on_one_data_line() {
        let piece = wire(delta(" ask not")).await;
        assert_eq!(
            piece,
            json!({"type": "transcript.text.delta", "delta": " ask not"})
        );

        let err = wire(error(&task_error(
            FailureCode::Stopped,
            "the server shut down",
        )))
        .await;
        assert_eq!(err["type"], "error");
        assert_eq!(err["error"]["message"], "the server shut down");
        assert_eq!(err["error"]["code"], "busy");
        assert_eq!(err["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn the_done_event_has_the_whole_text_and_a_truncation_mark() {
        use crate::transcript::{Segment, Transcript};
        let mut result = TaskResult {
            transcript: Transcript {
                language: "en".into(),
                language_probability: None,
                duration: 11.0,
                segments: vec![
                    Segment::new(0.0, 5.0, " And so"),
                    Segment::new(5.0, 9.0, " ask not."),
                ],
            },
            processing_seconds: 0.1,
            task: crate::domain::Task::Transcribe,
            truncated: None,
            interrupted: false,
        };
        let done_event = wire(done(&result)).await;
        assert_eq!(
            done_event,
            json!({"type": "transcript.text.done", "text": "And so ask not."})
        );
        result.truncated = crate::audio::Truncation::detect(7.6, Some(11.0));
        let cut = wire(done(&result)).await;
        assert_eq!(cut["truncated"]["declared_seconds"], 11.0);
    }
}
