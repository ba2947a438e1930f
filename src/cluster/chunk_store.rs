//! Where a cluster's upload chunk bytes live, [`ChunkStore`]: in NATS (the `EARSHOT_UPLOADS`
//! stream, the default) or in shared object storage (`--cluster-upload-store`, through the
//! `object_store` crate), so the bytes of uploads need not pass through NATS at all.
//!
//! Either way a chunk is stored under its upload's lease generation
//! (`<task id>/<gen>/<index>`), so a stale node's late bytes land where no record points, and
//! a chunk counts only once its [`Stored`] future says it is durable. The record that names
//! the chunks, the lease and every decision stay in NATS ([`super::uploads`]).
//!
//! This module must not decide which chunks count (the upload record does), must not hold more
//! than one chunk of an upload in memory, and must not know about sockets or the wire protocol.

use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use ::object_store::local::LocalFileSystem;
use ::object_store::path::Path;
use ::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::upload_record::{chunks_of, piece_subject, pieces, PIECE};
use super::ClusterError;
use crate::domain::TaskId;
use crate::upload::store::is_full;

/// Resolves once a chunk is durable where it was stored.
pub type Stored = Pin<Box<dyn Future<Output = Result<(), ClusterError>> + Send>>;

/// The storage of upload chunk bytes; see the module docs.
#[derive(Clone)]
pub enum ChunkStore {
    /// In the `EARSHOT_UPLOADS` stream, each chunk in pieces of at most [`PIECE`] bytes on
    /// `earshot.upload.<id>.<gen>.<index>.<piece>` (a 2.9 server's max payload is 1 MiB).
    Stream {
        /// JetStream, to publish the pieces.
        js: jetstream::Context,
        /// The stream, to read them back and purge them (boxed: its info is large).
        stream: Box<stream::Stream>,
    },
    /// One object per chunk, `<task id>/<gen>/<index>`, in a store every node reaches.
    Objects {
        /// The store (a directory every node mounts; fsynced before a put returns).
        store: Arc<dyn ObjectStore>,
        /// That directory, for its free space.
        dir: PathBuf,
        /// Where it is, for the log.
        location: String,
    },
}

/// A storage failure as a cluster error; the detail goes to the log by the caller.
fn storage(err: impl std::fmt::Display) -> ClusterError {
    ClusterError::Storage(err.to_string())
}

/// A failed put: a full file system stays an I/O error (the client hears "disk full"), the
/// rest is a storage failure.
fn put_failed(err: ::object_store::Error) -> ClusterError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>().filter(|io| is_full(io)) {
            return ClusterError::Io {
                context: "storing a chunk in the upload store",
                source: std::io::Error::from(io.kind()),
            };
        }
        cause = e.source();
    }
    storage(err)
}

/// The object of one chunk.
fn object(task_id: TaskId, gen: u64, index: u32) -> Path {
    Path::from(format!("{task_id}/{gen}/{index}"))
}

/// The directory of a `--cluster-upload-store` URL: `file:///dir` or a plain absolute path.
/// Other schemes are refused by name (S3 and the like are not built in).
pub fn store_dir(url: &str) -> Result<PathBuf, ClusterError> {
    let dir = match url.split_once("://") {
        Some(("file", path)) => path,
        Some((scheme, _)) => {
            return Err(storage(format!(
                "{url}: {scheme}:// is not built in; use file:///DIR, a directory \
                 every node mounts"
            )))
        }
        None => url,
    };
    let dir = FsPath::new(dir);
    match dir.is_absolute() {
        true => Ok(dir.to_path_buf()),
        false => Err(storage(format!(
            "{url}: the directory must be an absolute path"
        ))),
    }
}

impl ChunkStore {
    /// Chunks in a directory every node mounts (created if missing); each put is fsynced,
    /// file and directory, before it counts.
    pub fn directory(url: &str) -> Result<ChunkStore, ClusterError> {
        let dir = store_dir(url)?;
        std::fs::create_dir_all(&dir).map_err(|source| ClusterError::Io {
            context: "creating the upload store's directory",
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&dir)
            .map_err(storage)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(ChunkStore::Objects {
            store: Arc::new(store),
            location: format!("file://{}", dir.display()),
            dir,
        })
    }

    /// Whether the bytes are in storage every node reads directly (not NATS): then a node
    /// keeps no local copy of what it stores.
    pub fn is_shared(&self) -> bool {
        matches!(self, ChunkStore::Objects { .. })
    }

    /// Free bytes where the chunks go, when this node can tell (a shared directory).
    pub fn free_bytes(&self) -> Option<u64> {
        match self {
            ChunkStore::Stream { .. } => None,
            ChunkStore::Objects { dir, .. } => crate::upload::store::free_bytes(dir),
        }
    }

    /// Where the bytes go, for the log.
    pub fn location(&self) -> &str {
        match self {
            ChunkStore::Stream { .. } => "NATS",
            ChunkStore::Objects { location, .. } => location,
        }
    }

    /// Starts storing one chunk under generation `gen` (its bytes shared, not copied); the
    /// returned future resolves once it is durable.
    pub async fn put(
        &self,
        task_id: TaskId,
        gen: u64,
        index: u32,
        data: Bytes,
    ) -> Result<Stored, ClusterError> {
        match self {
            ChunkStore::Stream { js, .. } => {
                let mut acks = Vec::with_capacity(data.len().div_ceil(PIECE));
                for (piece, start) in (0..data.len()).step_by(PIECE).enumerate() {
                    let subject = piece_subject(task_id, gen, index, piece);
                    let bytes = data.slice(start..(start + PIECE).min(data.len()));
                    acks.push(
                        js.publish(subject, bytes)
                            .await
                            .map_err(ClusterError::nats)?,
                    );
                }
                Ok(Box::pin(async move {
                    for ack in acks {
                        ack.await.map_err(ClusterError::nats)?;
                    }
                    Ok(())
                }))
            }
            ChunkStore::Objects { store, .. } => {
                let (store, path) = (store.clone(), object(task_id, gen, index));
                let payload = PutPayload::from(data);
                let put = tokio::spawn(async move { store.put(&path, payload).await });
                Ok(Box::pin(async move {
                    put.await.map_err(storage)?.map_err(put_failed)?;
                    Ok(())
                }))
            }
        }
    }

    /// Streams the chunk stored under `gen` to `sink`, in order, one piece in memory at a
    /// time; returns how many bytes there were (`len` is what the plan expects).
    pub async fn read(
        &self,
        task_id: TaskId,
        gen: u64,
        index: u32,
        len: u64,
        sink: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
    ) -> Result<u64, ClusterError> {
        let write = |sink: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send), b: &[u8]| {
            sink(b).map_err(|source| ClusterError::Io {
                context: "writing an assembled upload",
                source,
            })
        };
        let mut got = 0u64;
        match self {
            ChunkStore::Stream { stream, .. } => {
                for piece in 0..pieces(len) {
                    let subject = piece_subject(task_id, gen, index, piece);
                    let message = stream
                        .get_last_raw_message_by_subject(&subject)
                        .await
                        .map_err(ClusterError::nats)?;
                    write(sink, &message.payload)?;
                    got += message.payload.len() as u64;
                }
            }
            ChunkStore::Objects { store, .. } => {
                let found = store
                    .get(&object(task_id, gen, index))
                    .await
                    .map_err(storage)?;
                let mut parts = found.into_stream();
                while let Some(part) = parts.next().await {
                    let part = part.map_err(storage)?;
                    write(sink, &part)?;
                    got += part.len() as u64;
                }
            }
        }
        Ok(got)
    }

    /// Removes every chunk of an upload, of every generation.
    pub async fn purge(&self, task_id: TaskId) -> Result<(), ClusterError> {
        match self {
            ChunkStore::Stream { stream, .. } => {
                stream
                    .purge()
                    .filter(chunks_of(task_id))
                    .await
                    .map_err(ClusterError::nats)?;
            }
            ChunkStore::Objects { store, .. } => {
                let prefix = Path::from(task_id.to_string());
                let mut found = store.list(Some(&prefix));
                while let Some(meta) = found.next().await {
                    let meta = meta.map_err(storage)?;
                    match store.delete(&meta.location).await {
                        Ok(()) | Err(::object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(storage(e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// The uploads that have chunks in shared storage (none listed for NATS, whose stream
    /// expires its own messages), for the sweep of uploads whose record is gone.
    pub async fn uploads(&self) -> Result<Vec<TaskId>, ClusterError> {
        let ChunkStore::Objects { store, .. } = self else {
            return Ok(Vec::new());
        };
        let listed = store.list_with_delimiter(None).await.map_err(storage)?;
        let ids = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.as_ref().parse().ok());
        Ok(ids.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            store_dir("file:///srv/up").unwrap(),
            PathBuf::from("/srv/up")
        );
        assert_eq!(store_dir("/srv/up").unwrap(), PathBuf::from("/srv/up"));
        let s3 = store_dir("s3://bucket/x").unwrap_err().to_string();
        assert!(s3.contains("s3:// is not built in"), "{s3}");
        assert!(store_dir("relative/dir").is_err());
        assert!(store_dir("file://relative").is_err());
    }

    #[test]
    fn a_full_file_system_is_told_apart_from_other_failures() {
        let wrap = |io: std::io::Error| ::object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io),
        };
        let full = put_failed(wrap(std::io::ErrorKind::StorageFull.into()));
        assert!(matches!(full, ClusterError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull));
        let other = put_failed(wrap(std::io::ErrorKind::PermissionDenied.into()));
        assert!(matches!(other, ClusterError::Storage(_)), "{other}");
    }

    #[tokio::test]
    async fn chunks_go_in_and_out_by_generation_and_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::directory(dir.path().to_str().unwrap()).unwrap();
        let (task, other) = (TaskId::new_v4(), TaskId::new_v4());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let put = |task, gen, index, bytes: &[u8]| {
            store.put(task, gen, index, Bytes::copy_from_slice(bytes))
        };
        put(task, 1, 0, &data).await.unwrap().await.unwrap();
        put(task, 2, 0, b"newer").await.unwrap().await.unwrap();
        put(other, 1, 3, b"x").await.unwrap().await.unwrap();

        let mut read = Vec::new();
        let mut sink = |b: &[u8]| {
            read.extend_from_slice(b);
            Ok(())
        };
        let got = store
            .read(task, 1, 0, data.len() as u64, &mut sink)
            .await
            .unwrap();
        assert_eq!((got, read == data), (data.len() as u64, true));
        let gone = store.read(task, 1, 1, 10, &mut |_: &[u8]| Ok(())).await;
        assert!(gone.is_err(), "a chunk never stored");

        let mut listed = store.uploads().await.unwrap();
        listed.sort();
        let mut both = vec![task, other];
        both.sort();
        assert_eq!(listed, both);
        store.purge(task).await.unwrap();
        assert_eq!(store.uploads().await.unwrap(), vec![other]);
        assert!(store
            .read(task, 2, 0, 5, &mut |_: &[u8]| Ok(()))
            .await
            .is_err());
    }
}
