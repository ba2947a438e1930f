//! `GET /readyz`: whether this instance should get traffic — the model is loaded, the data
//! directory takes writes, its disk has more free space than `--min-free-disk`, and (in a
//! cluster) NATS is connected. 200 when all hold, 503 otherwise, with each check in the JSON
//! body.
//!
//! Liveness (`/healthz`) stays separate and cheap; this module must not change any state
//! beyond its own probe file.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Http;
use crate::upload::store::free_bytes;

/// `GET /readyz`.
pub async fn readyz(State(http): State<Arc<Http>>) -> Response {
    let model_loaded = http.app.pool.workers() > 0;
    let dir = http.app.config.data_dir.clone();
    let floor = http.app.config.min_free_disk.as_u64();
    let (writable, free) = tokio::task::spawn_blocking(move || (writable(&dir), free_bytes(&dir)))
        .await
        .unwrap_or((false, None));
    let disk_ok = free.is_some_and(|f| f >= floor);
    let cluster = http.app.cluster.as_ref().map(|c| c.connected());
    let ready = model_loaded
        && writable
        && disk_ok
        && cluster != Some(false)
        && !http.app.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "model_loaded": model_loaded,
        "model": http.app.pool.model_name(),
        "data_dir_writable": writable,
        "free_disk_bytes": free,
        "min_free_disk_bytes": floor,
        "shutting_down": http.app.shutdown.is_cancelled(),
    });
    if let Some(connected) = cluster {
        body["cluster_connected"] = json!(connected);
    }
    (status, Json(body)).into_response()
}

/// Creates, writes and removes a probe file.
fn writable(dir: &Path) -> bool {
    let probe = dir.join(".readyz-probe");
    let ok = std::fs::write(&probe, b"ok").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_writable_and_has_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(writable(dir.path()));
        assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
        assert!(!writable(&dir.path().join("missing")));
        assert_eq!(free_bytes(&dir.path().join("missing")), None);
    }
}
