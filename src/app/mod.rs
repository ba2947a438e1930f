//! The application's shared state, [`AppState`]: the Whisper pool, the upload store, the task
//! registry, the job runner, the semaphores and the shutdown signal every connection shares,
//! built from the [`ServerConfig`] — for one node ([`AppState::new`]), or for a node of a
//! cluster ([`AppState::clustered`]: registry and queue on NATS, see `crate::cluster`).
//!
//! [`threads`] is what every live transport asks for a hypothesis' thread count, and
//! [`speech`] what it feeds its audio through, so that its policy hears where speech is.
//!
//! This is what the WebSocket sessions (`ws`) and the HTTP API (`http`) are written against, so
//! both can be built and tested without the composition root (`server`). It must not know
//! about axum, routes or sockets, and it must not import `ws`, `http` or `server`.

pub mod config;
pub mod speech;
pub mod threads;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ServerConfig;

use crate::access::{Caller, ClientKey, Share, Shares};
use crate::cluster::queue::NatsQueue;
use crate::cluster::registry::NatsRegistry;
use crate::cluster::uploads::ClusterUploads;
use crate::cluster::Cluster;
use crate::inference::engine::Options;
use crate::inference::pool::Pool;
use crate::inference::served::{Served, ServedConfig};
use crate::jobs::batch::Batch;
use crate::jobs::{JobQueue, LocalRegistry, TaskRegistry};
use crate::live::resume::{DetachLimits, Resumable};
use crate::live::LiveCapacity;
use crate::upload::store::{UploadStorage, UploadStore};

/// How the session layer reaches one of its live streams, opaque here (it would otherwise
/// have to name a type of `ws`, a layer above).
pub type StreamHandle = Arc<dyn std::any::Any + Send + Sync>;

/// Everything connections share. Cloned as an `Arc` into every session.
pub struct AppState {
    /// The settings the server was started with.
    pub config: ServerConfig,
    /// The Whisper workers; every transcription goes through their bounded queue.
    pub pool: Pool,
    /// The models requests may choose (the pool's default model first), loaded on first use.
    pub models: Served,
    /// Silero VAD model for cutting long audio at pauses, when present.
    pub vad_model: Option<PathBuf>,
    /// Durable upload sessions: under `data_dir/uploads` on a single node, in the cluster's
    /// NATS on a cluster node (`cluster::uploads`), behind the same interface.
    pub uploads: Arc<dyn UploadStorage>,
    /// Progress and results of every task, for any connection to follow.
    pub tasks: Arc<dyn TaskRegistry>,
    /// Where finished uploads and HTTP requests are queued for transcription.
    pub jobs: Arc<dyn JobQueue>,
    /// Uploads receiving data at once (seed: 5); a connection holds one permit per active upload.
    pub upload_slots: Arc<Semaphore>,
    /// Upload slots held per client (key or address), so one client cannot hold them all.
    pub upload_shares: Arc<Shares<ClientKey>>,
    /// Files transcribed at once (seed: 3); the rest wait queued.
    pub processing_slots: Arc<Semaphore>,
    /// What the open live streams demand of the Whisper workers; a stream that does not fit
    /// is refused `busy` (`--live-capacity`).
    pub live_capacity: Arc<LiveCapacity>,
    /// Open connections; a session holds one owned permit for its whole life.
    pub connection_slots: Arc<Semaphore>,
    /// Cancelled when the server begins to shut down; sessions say goodbye and close.
    pub shutdown: CancellationToken,
    /// Background work (sessions, transcriptions) the shutdown waits for.
    pub tracker: TaskTracker,
    /// Live streams a client may continue after its connection dropped (`stream_start` with
    /// `resume`). The handle is the session layer's (`ws`), which this layer must not name.
    pub streams: Arc<Resumable<StreamHandle>>,
    /// The cluster this node belongs to (`--cluster`), whose NATS holds the tasks and jobs;
    /// `None` for a single node. Readiness and the requests that need NATS look at it.
    pub cluster: Option<Arc<Cluster>>,
}

impl AppState {
    /// Builds the shared state: opens the upload store (recovering sessions left by a previous
    /// run) and the task registry.
    pub fn new(
        config: ServerConfig,
        pool: Pool,
        vad_model: Option<PathBuf>,
    ) -> Result<Arc<Self>, crate::upload::store::StoreError> {
        Self::build(config, pool, vad_model, None)
    }

    /// Builds the shared state of a cluster node: tasks, jobs and uploads in the cluster's NATS
    /// (assembled uploads and running jobs' audio under the local data directory). Must be called inside the runtime (it starts the node's
    /// writer and job puller).
    pub fn clustered(
        config: ServerConfig,
        pool: Pool,
        vad_model: Option<PathBuf>,
        cluster: Arc<Cluster>,
    ) -> Result<Arc<Self>, crate::upload::store::StoreError> {
        Self::build(config, pool, vad_model, Some(cluster))
    }

    fn build(
        config: ServerConfig,
        pool: Pool,
        vad_model: Option<PathBuf>,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<Arc<Self>, crate::upload::store::StoreError> {
        let store_config = crate::upload::store::StoreConfig {
            quota_bytes: config.disk_quota_bytes.as_u64(),
            client_quota_bytes: config.disk_quota_per_client.as_u64(),
            reservation_ttl: config.reservation_ttl,
            min_free_bytes: config.min_free_disk.as_u64(),
        };
        let uploads: Arc<dyn UploadStorage> = match &cluster {
            None => Arc::new(UploadStore::open(&config.data_dir, store_config)?),
            Some(cluster) => {
                let spool = config.data_dir.join("cluster-uploads");
                let min_free = config.min_free_disk.as_u64();
                let uploads = ClusterUploads::new(cluster.clone(), spool, min_free);
                Arc::new(
                    uploads.map_err(|source| crate::upload::store::StoreError::Io {
                        context: "creating the cluster's upload directory",
                        source,
                    })?,
                )
            }
        };
        let registry = cluster.clone().map(NatsRegistry::start);
        let tasks: Arc<dyn TaskRegistry> = match &registry {
            Some(registry) => registry.clone(),
            None => LocalRegistry::new(&config.data_dir).map_err(|source| {
                crate::upload::store::StoreError::Io {
                    context: "creating the results directory",
                    source,
                }
            })?,
        };
        let processing_slots = Arc::new(Semaphore::new(config.max_processing));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let models = Served::new(pool.clone(), served_config(&config));
        let jobs = Batch {
            models: models.clone(),
            vad_model: vad_model.clone(),
            tasks: tasks.clone(),
            uploads: uploads.clone(),
            processing_slots: processing_slots.clone(),
            threads: config.threads,
            beam_size: config.beam_size,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            shutdown_grace: config.shutdown_grace,
        };
        let jobs: Arc<dyn JobQueue> = match (&cluster, registry) {
            (Some(cluster), Some(registry)) => {
                let spool = config.data_dir.join("cluster-jobs");
                let queue = NatsQueue::start(cluster.clone(), registry, jobs, spool);
                Arc::new(
                    queue.map_err(|source| crate::upload::store::StoreError::Io {
                        context: "creating the cluster's job directory",
                        source,
                    })?,
                )
            }
            _ => Arc::new(jobs),
        };
        let streams = Arc::new(Resumable::new(DetachLimits {
            grace: config.stream_resume_grace,
            total: config.max_connections,
            per_client: config.max_detached_streams_per_client,
        }));
        Ok(Arc::new(Self {
            streams,
            upload_slots: Arc::new(Semaphore::new(config.max_uploads)),
            upload_shares: Shares::new(config.max_uploads_per_client),
            processing_slots,
            live_capacity: LiveCapacity::new(pool.workers(), config.live_capacity),
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            shutdown,
            tracker,
            jobs,
            cluster,
            config,
            pool,
            models,
            vad_model,
            uploads,
            tasks,
        }))
    }
}

/// One upload slot held for a client: the server-wide permit and the client's share. Both are
/// given back when it is dropped.
pub struct UploadSlot {
    /// The server-wide permit (seed: 5 at once).
    _permit: OwnedSemaphorePermit,
    /// The client's share (`--max-uploads-per-client`).
    _share: Share<ClientKey>,
}

/// Why no upload slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot of the server is taken.
    Full,
    /// This client holds its share already.
    ClientShare,
}

impl AppState {
    /// Takes an upload slot for `caller`, without waiting.
    pub fn upload_slot(&self, caller: &Caller) -> Result<UploadSlot, NoSlot> {
        let share = self
            .upload_shares
            .acquire(caller.client())
            .ok_or(NoSlot::ClientShare)?;
        let permit = self
            .upload_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoSlot::Full)?;
        Ok(UploadSlot {
            _permit: permit,
            _share: share,
        })
    }

    /// Whether the requests that need shared state can be served now: always on a single node,
    /// while NATS is connected in a cluster.
    pub fn cluster_ready(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.connected())
    }

    /// Whisper options for what a client asked, with this server's thread count.
    pub fn engine_options(&self, options: &crate::domain::TaskOptions) -> Options {
        Options {
            beam_size: Some(self.config.beam_size),
            ..crate::jobs::engine_options(options, self.config.threads)
        }
    }

    /// The limits announced in `connected` and enforced by the parser.
    pub fn limits(&self) -> crate::protocol::Limits {
        limits_for(&self.config)
    }
}

/// The models besides the default a configuration serves, and how.
fn served_config(config: &ServerConfig) -> ServedConfig {
    let others = if config.serves_all() {
        crate::models::found_in(&config.models_dir).unwrap_or_else(|err| {
            tracing::warn!(%err, "--models all: no models found; serving the default alone");
            Vec::new()
        })
    } else {
        config.models.clone()
    };
    ServedConfig {
        others,
        models_dir: config.models_dir.clone(),
        fetcher: crate::models::Fetcher::from_env(false),
        budget: config.model_memory.map(|b| b.as_u64()),
        idle_unload: config.model_idle_unload,
    }
}

/// The protocol limits a configuration implies.
fn limits_for(config: &ServerConfig) -> crate::protocol::Limits {
    let defaults = crate::protocol::Limits::default();
    let max_message_bytes = config.max_message_bytes.as_u64();
    crate::protocol::Limits {
        max_message_bytes,
        max_file_bytes: config.max_file_bytes.as_u64(),
        // base64 grows a chunk by 4/3; leave room for the JSON around it. Saturating: a
        // tiny --max-message-bytes must give small chunks, not an overflow (a panic in
        // debug builds, a huge chunk limit in release ones).
        max_chunk_bytes: defaults
            .max_chunk_bytes
            .min((max_message_bytes / 4 * 3).saturating_sub(JSON_ROOM))
            .max(1),
        ..defaults
    }
}

/// Bytes of a text message kept for the JSON around a base64 chunk.
const JSON_ROOM: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_message: &str) -> ServerConfig {
        let mut c = ServerConfig::for_tests("tiny.en", PathBuf::from("unused"));
        c.max_message_bytes = max_message.parse().unwrap();
        c
    }

    #[test]
    fn chunks_fit_in_a_message_whatever_the_cap() {
        for cap in ["10MiB", "64KiB", "8KiB", "4KiB", "100B"] {
            let l = limits_for(&config(cap));
            assert!(l.max_chunk_bytes >= 1, "{cap}");
            assert!(
                l.max_chunk_bytes <= l.max_message_bytes,
                "{cap}: chunk {} > message {}",
                l.max_chunk_bytes,
                l.max_message_bytes
            );
        }
        let l = limits_for(&config("10MiB"));
        assert_eq!(
            l.max_chunk_bytes,
            crate::protocol::Limits::default().max_chunk_bytes
        );
    }
}
