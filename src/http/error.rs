//! Errors of the HTTP API in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with the matching status code and, for "try again later", a `Retry-After` header.
//!
//! Messages here are shown to clients: they say what to change, never internal details (those
//! go to the log where the error is made).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// One failed HTTP request, ready to be answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status: 400, 401, 403, 404, 413, 415, 429, 503 or 500.
    pub status: StatusCode,
    /// What went wrong and what to do about it, for the caller.
    pub message: String,
    /// OpenAI's error class (`invalid_request_error`, `authentication_error`, …) so SDKs and
    /// clients written for OpenAI branch on it as they already do.
    pub kind: &'static str,
    /// The request parameter at fault, when one is.
    pub param: Option<&'static str>,
    /// A stable machine-readable code (`unsupported_audio`, `file_too_large`, …).
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying, for busy and rate-limited answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// Names the parameter at fault.
    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// Sets the machine-readable code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401: no API key, or not one of ours.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or invalid API key: send Authorization: Bearer <key>",
        )
        .code("invalid_api_key")
    }

    /// 403: a browser page from an origin that is not allowed.
    pub fn forbidden_origin() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "this origin may not connect (see --allowed-origins)",
        )
        .code("origin_not_allowed")
    }

    /// 404: no such thing (or it expired).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    /// 413: the file (or the request) is over a limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .param("file")
        .code("file_too_large")
    }

    /// 415: the file is not audio we can decode.
    pub fn unsupported_audio(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            message,
        )
        .param("file")
        .code("unsupported_audio")
    }

    /// 429: this client is sending too much; retry after `secs`.
    pub fn rate_limited(message: impl Into<String>, secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
            .code("rate_limit_exceeded");
        e.retry_after = Some(secs.max(1));
        e
    }

    /// 503: the server is at capacity; retry after `secs`.
    pub fn busy(message: impl Into<String>, secs: u64) -> Self {
        let mut e =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("busy");
        e.retry_after = Some(secs.max(1));
        e
    }

    /// 503 `not_ready`: a cluster node cannot reach the cluster's NATS now; retrying (here or
    /// on another node) may work.
    pub fn not_ready(secs: u64) -> Self {
        let message = "this node cannot reach the cluster's shared state now; retry later";
        let mut e =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("not_ready");
        e.retry_after = Some(secs.max(1));
        e
    }

    /// 507: the server's disk has no room for this upload (or ran out while it was written);
    /// retrying later may work, retrying at once will not.
    pub fn disk_full() -> Self {
        let mut e = Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "server_error",
            "the server is out of disk space for uploads; try again later",
        )
        .code("quota_exceeded");
        e.retry_after = Some(60);
        e
    }

    /// 500: our fault; the details are in the server log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error; see the server log",
        )
        .code("internal")
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_openai_fields_even_when_empty() {
        let body = ApiError::bad_request("no file").param("file").body();
        assert_eq!(body["error"]["message"], "no file");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "file");
        assert!(body["error"]["code"].is_null());
        assert!(body["error"].as_object().unwrap().contains_key("code"));
    }

    #[test]
    fn busy_answers_carry_retry_after() {
        let response = ApiError::busy("full", 0).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::unsupported_audio("not audio").into_response();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
