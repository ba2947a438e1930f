//! `GET /metrics`: reads what the pool and the semaphores hold now and renders the process's
//! metrics through the [`crate::metrics`] facade.
//!
//! This module must not count anything itself: the code that sees an event counts it through
//! the facade.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Http;
use crate::metrics::Capacity;

/// `GET /metrics`: Prometheus text exposition format.
pub async fn scrape(State(http): State<Arc<Http>>) -> Response {
    let app = &http.app;
    let in_use = |total: usize, available: usize| total.saturating_sub(available);
    let capacity = Capacity {
        queue_depth: app.pool.queue_len(),
        workers_busy: app.pool.busy_workers(),
        workers: app.pool.workers(),
        uploads_active: in_use(app.config.max_uploads, app.upload_slots.available_permits()),
        processing_active: in_use(
            app.config.max_processing,
            app.processing_slots.available_permits(),
        ),
    };
    for model in app.models.status() {
        crate::metrics::model(&model.name, model.loaded, model.in_use, model.requests);
    }
    let (used, budget) = app.models.memory();
    crate::metrics::model_memory(used, budget);
    match crate::metrics::render(capacity) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => super::ApiError::internal().into_response(),
    }
}
