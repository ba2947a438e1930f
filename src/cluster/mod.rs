//! Cluster mode (`earshot serve --cluster nats://…`): several nodes share their tasks, results
//! and batch jobs through NATS JetStream, so any node answers for any task and any node with a
//! free processing slot runs the next job. docs/CLUSTER.md has the design.
//!
//! - [`Cluster`]: the connection, and the JetStream resources every node uses (created by the
//!   first node that starts, found by the others): the `earshot_tasks` KV bucket (one record per
//!   task), the `EARSHOT_EVENTS` stream (each task's events on its own subject), the
//!   `EARSHOT_JOBS` work-queue stream and the `earshot_audio` object store (an HTTP job's audio,
//!   readable by whichever node runs it), the `earshot_uploads` KV bucket (one record per
//!   upload: meta, lease, stored chunks) and the `EARSHOT_UPLOADS` stream (chunk bytes, unless
//!   [`chunk_store`] puts them in a directory every node mounts). Their
//!   max age is the session TTL, so expiry is cluster-wide and happens once, in NATS; each is
//!   created with `replicas` copies.
//! - [`uploads::ClusterUploads`]: the [`UploadStorage`](crate::upload::store::UploadStorage)
//!   over them, so an upload resumes on any node; [`upload_record`] holds its pure decisions
//!   (leases, chunk bookkeeping), [`local_copy`] the holding node's own copy of the chunks it
//!   published, which becomes the file when the upload completes there.
//! - [`registry::NatsRegistry`]: the [`TaskRegistry`](crate::jobs::TaskRegistry) over them.
//! - [`queue::NatsQueue`]: the [`JobQueue`](crate::jobs::JobQueue) over them; jobs run here
//!   through [`Batch`](crate::jobs::batch::Batch).
//! - [`wire`]: what is written, as pure serde types.
//!
//! Only what a 2.9 server (Debian's `nats-server`) supports is used: one filter subject per
//! consumer, no per-message TTL. Every NATS call has a deadline ([`OP_TIMEOUT`]), so a request
//! that needs NATS while it is unreachable fails quickly instead of hanging.
//!
//! This module must not know about sockets, routes or the wire protocol of clients, and must not
//! hold a job's audio or an upload in memory: files go to and from NATS in chunks.

pub mod chunk_store;
pub mod local_copy;
pub mod queue;
pub mod registry;
pub mod upload_record;
pub mod uploads;
pub mod wire;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};

/// The deadline of one NATS operation (a KV read or write, a publish and its ack).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The KV bucket of task records.
const TASKS_BUCKET: &str = "earshot_tasks";
/// The stream of task events.
const EVENTS_STREAM: &str = "EARSHOT_EVENTS";
/// The work-queue stream of jobs.
const JOBS_STREAM: &str = "EARSHOT_JOBS";
/// The object store of HTTP jobs' audio (an upload's job reads the upload's chunks).
const AUDIO_BUCKET: &str = "earshot_audio";
/// The KV bucket of upload records.
const UPLOADS_BUCKET: &str = "earshot_uploads";
/// The stream of upload chunk bytes.
const UPLOADS_STREAM: &str = "EARSHOT_UPLOADS";

/// Why a cluster operation failed. Details are for the log; clients hear "unavailable".
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS did not answer in time (unreachable, or reconnecting).
    #[error("NATS did not answer within {0:?}")]
    Timeout(Duration),
    /// NATS answered with an error.
    #[error("NATS: {0}")]
    Nats(String),
    /// The shared storage of upload bytes (`--cluster-upload-store`) failed.
    #[error("upload store: {0}")]
    Storage(String),
    /// Local file I/O around a transfer.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl ClusterError {
    fn nats(err: impl std::fmt::Display) -> Self {
        ClusterError::Nats(err.to_string())
    }
}

/// Runs one NATS operation under [`OP_TIMEOUT`].
pub async fn timed<T, E: std::fmt::Display>(
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, ClusterError> {
    within(OP_TIMEOUT, op).await
}

/// Runs one NATS operation under `limit`.
pub async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, op).await {
        Ok(result) => result.map_err(ClusterError::nats),
        Err(_) => Err(ClusterError::Timeout(limit)),
    }
}

/// A KV bucket, made here as `create_key_value` would, because that call first reads account
/// fields a 2.9 server does not send.
async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    timed(js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }))
    .await?;
    timed(js.get_key_value(bucket)).await
}

/// The stream of upload chunk bytes, for a cluster without shared upload storage. Chunks may
/// wait for their upload's end: they are kept twice the session TTL.
async fn upload_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
    replicas: usize,
) -> Result<chunk_store::ChunkStore, ClusterError> {
    let stream = timed(js.get_or_create_stream(stream::Config {
        name: UPLOADS_STREAM.into(),
        subjects: vec![format!("{}.>", upload_record::UPLOAD_PREFIX)],
        max_messages_per_subject: 1,
        max_age: config.ttl * 2,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }))
    .await?;
    Ok(chunk_store::ChunkStore::Stream {
        js: js.clone(),
        stream: Box::new(stream),
    })
}

/// How to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`); the client fails over between them.
    pub urls: Vec<String>,
    /// How long task records, events and audio are kept (the session TTL).
    pub ttl: Duration,
    /// How long a job may go unacknowledged before another node takes it over; a node that
    /// runs a job tells NATS it is still working three times per period.
    pub ack_wait: Duration,
    /// This node's name, for the NATS server's connection list and upload leases.
    pub node: String,
    /// Copies NATS keeps of every stream, bucket and object (1; 3 on a three-node NATS
    /// cluster, so the loss of one NATS machine loses nothing).
    pub replicas: usize,
    /// How long a node keeps the right to write an upload without storing a chunk; after it,
    /// another node may take the upload over (`upload_resume` takes it at once).
    pub upload_lease: Duration,
    /// Where upload chunk bytes go instead of NATS: `file:///DIR`, a directory every node
    /// mounts (`--cluster-upload-store`). None = the `EARSHOT_UPLOADS` stream.
    pub upload_store: Option<String>,
}

/// One node's connection to the cluster and the shared resources on it.
pub struct Cluster {
    /// The NATS connection; reconnects by itself.
    client: async_nats::Client,
    /// JetStream on it, every request under [`OP_TIMEOUT`].
    js: jetstream::Context,
    /// Task records by task id.
    tasks: kv::Store,
    /// Task events (`earshot.task.<id>.<kind>`).
    events: stream::Stream,
    /// Jobs waiting for a node.
    jobs: stream::Stream,
    /// Each job's audio, named by its task id.
    audio: object_store::ObjectStore,
    /// Upload records by task id.
    uploads: kv::Store,
    /// Upload chunk bytes: the `EARSHOT_UPLOADS` stream, or shared storage
    /// (`--cluster-upload-store`).
    chunks: chunk_store::ChunkStore,
    /// The settings it was joined with.
    config: ClusterConfig,
}

impl Cluster {
    /// Connects and finds (or creates) the shared resources. Fails if NATS cannot be reached
    /// now; once connected, the client reconnects by itself.
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let addrs = config
            .urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClusterError::nats)?;
        let options = async_nats::ConnectOptions::new()
            .name(format!("earshot {}", config.node))
            .connection_timeout(OP_TIMEOUT)
            .max_reconnects(None)
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS connection");
            });
        let client = within(OP_TIMEOUT * 2, options.connect(addrs)).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(OP_TIMEOUT)
            .build(client.clone());
        let replicas = config.replicas.max(1);
        let tasks = kv_bucket(&js, TASKS_BUCKET, config.ttl, replicas).await?;
        let uploads = kv_bucket(&js, UPLOADS_BUCKET, config.ttl, replicas).await?;
        let events = timed(js.get_or_create_stream(stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![format!("{}.>", wire::EVENT_PREFIX)],
            max_age: config.ttl,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }))
        .await?;
        let jobs = timed(js.get_or_create_stream(stream::Config {
            name: JOBS_STREAM.into(),
            subjects: vec![wire::JOB_SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: config.ttl,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }))
        .await?;
        let audio = match timed(js.get_object_store(AUDIO_BUCKET)).await {
            Ok(found) => found,
            Err(_) => {
                timed(js.create_object_store(object_store::Config {
                    bucket: AUDIO_BUCKET.into(),
                    max_age: config.ttl,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                }))
                .await?
            }
        };
        let chunks = match &config.upload_store {
            Some(url) => chunk_store::ChunkStore::directory(url)?,
            None => upload_stream(&js, &config, replicas).await?,
        };
        tracing::info!(store = chunks.location(), "upload bytes");
        Ok(Cluster {
            client,
            js,
            tasks,
            events,
            jobs,
            audio,
            uploads,
            chunks,
            config,
        })
    }

    /// Whether the connection to NATS is up now.
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Jobs in the queue (waiting or running, on every node), for the metrics.
    pub async fn queue_depth(&self) -> Result<u64, ClusterError> {
        let mut jobs = self.jobs.clone();
        let info = timed(jobs.info()).await?;
        Ok(info.state.messages)
    }
}
