//! The metrics facade: Prometheus names in one place and one-line calls for the code that
//! counts (WebSocket sessions, jobs, the HTTP API, the accept loop). The `GET /metrics` scrape
//! lives in `http::metrics`; it fills in [`Capacity`] and calls [`render`] (text rendered by
//! `metrics-exporter-prometheus`, never formatted by hand).
//!
//! Counters and histograms go through the `metrics` facade, so instrumented code stays a single
//! call and costs nothing when no recorder is installed (e.g. the `transcribe` command). Values
//! that already live elsewhere (pool queue, busy workers, slots in use, process memory) are read
//! at scrape time instead of being tracked twice.
//!
//! This module must not decide anything, nor know the types of the layers that call it: it
//! only counts plain numbers.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const CONNECTIONS_ACTIVE: &str = "earshot_connections_active";
const CONNECTIONS_TOTAL: &str = "earshot_connections_total";
const UPLOADS_ACTIVE: &str = "earshot_uploads_active";
const UPLOADS_COMPLETED: &str = "earshot_uploads_completed_total";
const UPLOADS_FAILED: &str = "earshot_uploads_failed_total";
const CHUNKS: &str = "earshot_chunks_total";
const BYTES_RECEIVED: &str = "earshot_received_bytes_total";
const QUEUE_DEPTH: &str = "earshot_queue_depth";
const WORKERS_BUSY: &str = "earshot_workers_busy";
const WORKERS: &str = "earshot_workers";
const PROCESSING_ACTIVE: &str = "earshot_processing_active";
const JOBS_COMPLETED: &str = "earshot_jobs_completed_total";
const JOBS_FAILED: &str = "earshot_jobs_failed_total";
const JOB_SECONDS: &str = "earshot_job_duration_seconds";
const REAL_TIME_FACTOR: &str = "earshot_job_real_time_factor";
const LIVE_LAG: &str = "earshot_live_lag_seconds";
const HTTP_RESPONSES: &str = "earshot_http_responses_total";
const REJECTED: &str = "earshot_rejected_total";
const CONNECTIONS_SHED: &str = "earshot_connections_shed_total";
const CONNECTIONS_PENDING: &str = "earshot_connections_pending";
const CLUSTER_QUEUE_DEPTH: &str = "earshot_cluster_queue_depth";
const CLUSTER_REDELIVERED: &str = "earshot_cluster_redelivered_total";
const MODEL_LOADED: &str = "earshot_model_loaded";
const MODEL_IN_USE: &str = "earshot_model_in_use";
const MODEL_REQUESTS: &str = "earshot_model_requests";
const MODEL_MEMORY: &str = "earshot_model_memory_bytes";
const MODEL_MEMORY_BUDGET: &str = "earshot_model_memory_budget_bytes";

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(10);

/// The installed recorder's handle; `None` if another recorder was installed first.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder for the process (once; later calls return the same handle).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(JOB_SECONDS.into()),
                    &[
                        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(REAL_TIME_FACTOR.into()),
                        &[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(LIVE_LAG.into()),
                        &[0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
                    )
                })
                .ok()?;
            let handle = builder
                .install_recorder()
                .map_err(|e| tracing::warn!(%e, "metrics recorder not installed"))
                .ok()?;
            metrics_process::Collector::default().describe();
            register_zeroes();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Makes every counter visible from the first scrape, before anything happened.
fn register_zeroes() {
    for name in [
        CONNECTIONS_TOTAL,
        UPLOADS_COMPLETED,
        UPLOADS_FAILED,
        BYTES_RECEIVED,
        JOBS_COMPLETED,
        JOBS_FAILED,
    ] {
        counter!(name).increment(0);
    }
    for result in ["accepted", "duplicate", "mismatched"] {
        counter!(CHUNKS, "result" => result).increment(0);
    }
    for reason in SHED_REASONS {
        counter!(CONNECTIONS_SHED, "reason" => reason).increment(0);
    }
    gauge!(CONNECTIONS_ACTIVE).increment(0.0);
    gauge!(CONNECTIONS_PENDING).increment(0.0);
}

/// Counts an open WebSocket connection for as long as it is held.
pub struct ConnectionGauge(());

impl ConnectionGauge {
    /// A connection was accepted.
    pub fn open() -> Self {
        counter!(CONNECTIONS_TOTAL).increment(1);
        gauge!(CONNECTIONS_ACTIVE).increment(1.0);
        ConnectionGauge(())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        gauge!(CONNECTIONS_ACTIVE).decrement(1.0);
    }
}

/// A chunk was stored (`duplicate` = it had been stored before).
pub fn chunk(duplicate: bool) {
    let result = if duplicate { "duplicate" } else { "accepted" };
    counter!(CHUNKS, "result" => result).increment(1);
}

/// A chunk failed its hash check.
pub fn chunk_mismatched() {
    counter!(CHUNKS, "result" => "mismatched").increment(1);
}

/// Bytes arrived from a client (WebSocket frames, HTTP uploads).
pub fn bytes_received(bytes: usize) {
    counter!(BYTES_RECEIVED).increment(bytes as u64);
}

/// An upload (WebSocket or HTTP) arrived whole.
pub fn upload_completed() {
    counter!(UPLOADS_COMPLETED).increment(1);
}

/// An upload failed (its file did not verify, or an HTTP body was cut short or refused).
pub fn upload_failed() {
    counter!(UPLOADS_FAILED).increment(1);
}

/// A file transcription finished: how long it took and how much audio it held.
pub fn job_done(processing_seconds: f64, audio_seconds: f64) {
    counter!(JOBS_COMPLETED).increment(1);
    histogram!(JOB_SECONDS).record(processing_seconds);
    if audio_seconds > 0.0 {
        histogram!(REAL_TIME_FACTOR).record(processing_seconds / audio_seconds);
    }
}

/// Jobs waiting in the cluster's queue (all nodes), sampled periodically (cluster mode only).
pub fn cluster_queue_depth(jobs: u64) {
    gauge!(CLUSTER_QUEUE_DEPTH).set(jobs as f64);
}

/// This node took over a job another node had been given and did not finish (cluster mode).
pub fn cluster_redelivered() {
    counter!(CLUSTER_REDELIVERED).increment(1);
}

/// A file transcription failed.
pub fn job_failed() {
    counter!(JOBS_FAILED).increment(1);
}

/// How far a live stream's transcript is behind its audio, sampled periodically.
pub fn live_lag(seconds: f64) {
    histogram!(LIVE_LAG).record(seconds);
}

/// An HTTP response went out (WebSocket upgrades count as 101).
pub fn http_response(status: u16) {
    counter!(HTTP_RESPONSES, "status" => status.to_string()).increment(1);
}

/// A request was refused before any work: `unauthorized`, `origin`, `rate`, `client_connections`.
pub fn rejected(reason: &'static str) {
    counter!(REJECTED, "reason" => reason).increment(1);
}

/// Why a connection can be closed before it made a request or finished its upgrade.
const SHED_REASONS: [&str; 3] = ["head_timeout", "evicted", "handshake_timeout"];

/// A connection was closed before it made a request: `head_timeout` (no complete request head
/// in time), `evicted` (too many were waiting for a head and it had waited longest),
/// `handshake_timeout` (a WebSocket upgrade not finished in time).
pub fn connection_shed(reason: &'static str) {
    debug_assert!(SHED_REASONS.contains(&reason), "{reason}");
    counter!(CONNECTIONS_SHED, "reason" => reason).increment(1);
}

/// How many accepted connections wait for a request head now.
pub fn pending_connections(count: usize) {
    gauge!(CONNECTIONS_PENDING).set(count as f64);
}

/// One served model as read at scrape time: loaded (1/0), requests, streams and jobs using it,
/// and leases taken on it since the start.
pub fn model(name: &str, loaded: bool, in_use: usize, requests: u64) {
    let label = || ("model", name.to_owned());
    gauge!(MODEL_LOADED, &[label()]).set(if loaded { 1.0 } else { 0.0 });
    gauge!(MODEL_IN_USE, &[label()]).set(in_use as f64);
    gauge!(MODEL_REQUESTS, &[label()]).set(requests as f64);
}

/// Bytes the loaded models take (their file sizes) and the budget they share.
pub fn model_memory(used: u64, budget: u64) {
    gauge!(MODEL_MEMORY).set(used as f64);
    gauge!(MODEL_MEMORY_BUDGET).set(budget as f64);
}

/// Values that live elsewhere (the pool, the semaphores), read at scrape time instead of being
/// tracked twice.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Jobs waiting for a Whisper worker.
    pub queue_depth: usize,
    /// Workers transcribing now.
    pub workers_busy: usize,
    /// Workers in the pool.
    pub workers: usize,
    /// Upload slots in use.
    pub uploads_active: usize,
    /// Processing slots in use.
    pub processing_active: usize,
}

/// The Prometheus text for a scrape, with `capacity` as read now; `None` when no recorder
/// could be installed.
pub fn render(capacity: Capacity) -> Option<String> {
    let handle = install()?;
    gauge!(QUEUE_DEPTH).set(capacity.queue_depth as f64);
    gauge!(WORKERS_BUSY).set(capacity.workers_busy as f64);
    gauge!(WORKERS).set(capacity.workers as f64);
    gauge!(UPLOADS_ACTIVE).set(capacity.uploads_active as f64);
    gauge!(PROCESSING_ACTIVE).set(capacity.processing_active as f64);
    metrics_process::Collector::default().collect();
    Some(handle.render())
}
