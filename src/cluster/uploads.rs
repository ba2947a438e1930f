//! The cluster's upload storage, [`ClusterUploads`]: the [`UploadStorage`] of a node started
//! with `--cluster`, so an upload begun on one node resumes on any other.
//!
//! - **Record**: one key per upload in the `earshot_uploads` KV bucket
//!   ([`UploadRecord`]: the meta, the lease, the stored chunks by generation), always written
//!   with compare-and-set on its revision.
//! - **Bytes**: each chunk goes to the cluster's [`ChunkStore`](super::chunk_store::ChunkStore)
//!   under the lease generation: pieces on the `EARSHOT_UPLOADS` stream, or one file in a
//!   directory every node shares (`--cluster-upload-store`).
//! - **Durable before acknowledged**: `write_chunk` stores; `sync` waits until the store says
//!   the chunks are durable, then writes the record naming them (CAS). Only then are they
//!   reported. The acks are awaited without the upload's lock, so the connection publishes
//!   its next chunks meanwhile; commits of one upload still run one at a time, in order. A crash or NATS failure in between leaves bytes no record names: unacknowledged,
//!   resent by the client, never half-counted.
//! - **One writer**: the node holding the lease writes; `upload_resume` takes it over
//!   (generation + 1) and a lapsed lease may be taken by any node. A stale node's commit fails
//!   its CAS and its chunk is refused ([`StoreError::HeldElsewhere`]); the bytes it published
//!   are under its old generation, which no record names for that chunk.
//! - **Whole-file hash**: computed when the file is assembled (`finalize`, or `audio_path` on a
//!   node without a copy), streaming the stored chunks into a local file in
//!   `<data_dir>/cluster-uploads/<id>/`; so nothing needs to move between nodes but the record.
//!   The node holding the lease also writes each chunk it publishes at its offset in a local
//!   copy ([`LocalCopy`]), hashing it as the prefix grows; when every chunk the record names is
//!   one it wrote there under the same generation, `finalize` checks the declared hash and
//!   renames the copy into place, reading nothing back from the store and writing nothing again
//!   (reading back and copying cost the cluster half its upload speed). The record still
//!   decides which bytes count, and the declared hash still checks them: a copy that fails it
//!   is dropped and the file assembled from the stored chunks. With the bytes in shared
//!   storage the copy keeps no bytes ([`LocalCopy::hash_only`]): the chunks are hashed as they
//!   arrive in order, and the node that runs the job assembles the file (`audio_path`).
//!
//! Calls are blocking (the trait's contract): each NATS operation runs on the node's runtime
//! through `block_in_place`, under [`OP_TIMEOUT`], and a NATS that does not answer is
//! [`StoreError::Unavailable`]. This module must not hold a whole file in memory (at most one
//! piece per read), must not count a chunk before its record is written, and must not write an
//! upload whose lease it does not hold.

use std::collections::HashMap;
use std::fs::{self, File};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;

use super::chunk_store::Stored;
use super::local_copy::LocalCopy;
use super::upload_record::{Claim, UploadRecord};
use super::{timed, Cluster, ClusterError, OP_TIMEOUT};
use crate::domain::TaskId;
use crate::upload::digest::{FileHashes, HashKinds, RunningDigest};
use crate::upload::plan::Insert;
use crate::upload::store::{
    free_bytes, is_full, unix_secs, Meta, NewUpload, Progress, StoreError, UploadStatus,
    UploadStorage,
};
use crate::upload::MAX_MISSING_LISTED;

/// How often a commit retries after a CAS conflict its own earlier write may have caused.
const CAS_RETRIES: usize = 3;

/// An upload whose lease this node holds.
struct Held {
    /// The record as this node last wrote or read it.
    record: UploadRecord,
    /// Its KV revision, for the next compare-and-set.
    revision: u64,
    /// Chunks published but not yet in the record.
    pending: Vec<u32>,
    /// Their stores' answers (the stream's acks, or the puts), awaited by the next commit.
    acks: Vec<Stored>,
    /// Chunks a commit took from `pending` and is making durable: the next chunks are
    /// published while it waits for the stream (this lock is not held meanwhile), and a chunk
    /// sent again in that time is still a duplicate.
    committing: Vec<u32>,
    /// Taken for a whole commit, before this lock: one commit of an upload at a time, so
    /// records are written in the order their chunks were published.
    turn: Arc<Mutex<()>>,
    /// The chunks this process published, also written to a local file: where they are the
    /// file the record names, `finalize` renames it into place instead of reading the store.
    copy: LocalCopy,
}

/// Uploads in the cluster (records in NATS, bytes in its chunk store); see the module docs.
pub struct ClusterUploads {
    /// The connection, the bucket and the stream.
    cluster: Arc<Cluster>,
    /// The runtime the NATS client runs on (calls come from blocking threads).
    runtime: tokio::runtime::Handle,
    /// This process's name as a lease holder (node address + a per-process id).
    holder: String,
    /// How long a lease lasts without a commit.
    lease: Duration,
    /// Where assembled files are kept, `<data_dir>/cluster-uploads`.
    spool: PathBuf,
    /// Free disk the spool must leave (`--min-free-disk`).
    min_free_bytes: u64,
    /// The uploads this node holds, each behind its own lock (calls on one upload are
    /// serialised, different uploads proceed in parallel).
    held: Mutex<HashMap<TaskId, Arc<Mutex<Held>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A failure to store a chunk: a full upload store is [`StoreError::DiskFull`], the rest as
/// [`unavailable`].
fn not_stored(err: ClusterError) -> StoreError {
    match err {
        ClusterError::Io { source, .. } if is_full(&source) => {
            tracing::warn!("the upload store is full");
            StoreError::DiskFull
        }
        other => unavailable(other),
    }
}

/// A NATS failure, as callers hear it; the detail goes to the log.
fn unavailable(err: ClusterError) -> StoreError {
    tracing::warn!(%err, "the cluster's upload storage did not answer");
    StoreError::Unavailable
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// Why a compare-and-set write did not happen.
enum Cas {
    /// Someone wrote the record since it was read.
    Conflict,
    /// NATS failed or did not answer.
    Failed(StoreError),
}

impl ClusterUploads {
    /// The storage, on the current runtime; assembled files go to `spool`.
    pub fn new(
        cluster: Arc<Cluster>,
        spool: PathBuf,
        min_free_bytes: u64,
    ) -> std::io::Result<Self> {
        fs::create_dir_all(&spool)?;
        let holder = format!(
            "{}/{}",
            cluster.config.node,
            &TaskId::new_v4().to_string()[..8]
        );
        let lease = cluster.config.upload_lease;
        Ok(ClusterUploads {
            cluster,
            runtime: tokio::runtime::Handle::current(),
            holder,
            lease,
            spool,
            min_free_bytes,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Runs a NATS operation from a blocking caller (or an async one, on a multi-thread
    /// runtime) under [`OP_TIMEOUT`].
    fn block<T, E: std::fmt::Display>(
        &self,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        self.run(timed(op)).map_err(unavailable)
    }

    /// Runs a cluster operation from a blocking caller under [`OP_TIMEOUT`], keeping its
    /// error as it is.
    fn run<T>(&self, op: impl Future<Output = Result<T, ClusterError>>) -> Result<T, ClusterError> {
        let timed = async {
            match tokio::time::timeout(OP_TIMEOUT, op).await {
                Ok(result) => result,
                Err(_) => Err(ClusterError::Timeout(OP_TIMEOUT)),
            }
        };
        let run = || self.runtime.block_on(timed);
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(run),
            Err(_) => run(),
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// The record and its revision, from NATS.
    fn load(&self, task_id: TaskId) -> Result<(UploadRecord, u64), StoreError> {
        let entry = self.block(self.cluster.uploads.entry(task_id.to_string()))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(StoreError::NotFound);
        };
        let record = serde_json::from_slice(&entry.value)
            .map_err(|e| StoreError::Corrupt(format!("upload record: {e}")))?;
        Ok((record, entry.revision))
    }

    /// Writes the record if its revision is still `revision`. Refused at once while NATS is
    /// unreachable: the client would keep the write and send it on reconnecting, so a chunk
    /// reported as refused would count after all.
    fn write(&self, task_id: TaskId, record: &UploadRecord, revision: u64) -> Result<u64, Cas> {
        if !self.cluster.connected() {
            return Err(Cas::Failed(unavailable(ClusterError::Nats(
                "not connected".into(),
            ))));
        }
        let bytes = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        let update = self
            .cluster
            .uploads
            .update(task_id.to_string(), bytes, revision);
        // The update's own error is kept: a conflict is an answer, not a failure.
        match self.run(async { Ok(update.await) }) {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Cas::Conflict),
            Ok(Err(e)) => Err(Cas::Failed(unavailable(ClusterError::nats(e)))),
            Err(e) => Err(Cas::Failed(unavailable(e))),
        }
    }

    /// Changes the record with `change` under compare-and-set, reading it again after a
    /// conflict; for changes that need no lease (status, after the upload is complete).
    fn update<T>(
        &self,
        task_id: TaskId,
        change: impl Fn(&mut UploadRecord) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for _ in 0..CAS_RETRIES {
            let (mut record, revision) = self.load(task_id)?;
            let out = change(&mut record)?;
            match self.write(task_id, &record, revision) {
                Ok(_) => return Ok(out),
                Err(Cas::Conflict) => continue,
                Err(Cas::Failed(e)) => return Err(e),
            }
        }
        Err(StoreError::HeldElsewhere)
    }

    /// The upload's lease for this node: the one it holds (renewed when half of it has
    /// passed), or taken now. `force` takes it from a live holder (`upload_resume`).
    fn holding(&self, task_id: TaskId, force: bool) -> Result<Arc<Mutex<Held>>, StoreError> {
        let known = lock(&self.held).get(&task_id).cloned();
        if let Some(held) = &known {
            let h = lock(held);
            let fresh = h.record.lease.until_ms > now_ms() + self.lease_ms() / 2;
            if fresh && h.record.meta.status == UploadStatus::Uploading {
                drop(h);
                return Ok(held.clone());
            }
        }
        let gen = known.as_ref().map_or(0, |h| lock(h).record.lease.gen);
        for _ in 0..CAS_RETRIES {
            let (record, revision) = self.load(task_id)?;
            if record.meta.status != UploadStatus::Uploading {
                return Err(StoreError::WrongState {
                    status: record.meta.status,
                    needed: "uploading",
                });
            }
            let now = now_ms();
            let claim = record.claim(&self.holder, gen, now, force);
            let Some(next) = record.claimed(claim, &self.holder, now, self.lease_ms()) else {
                self.forget(task_id);
                return Err(StoreError::HeldElsewhere);
            };
            match self.write(task_id, &next, revision) {
                Ok(revision) => {
                    if claim == Claim::Take {
                        tracing::info!(%task_id, gen = next.lease.gen, "took over an upload");
                    }
                    return Ok(self.keep(task_id, known, next, revision));
                }
                Err(Cas::Conflict) => continue,
                Err(Cas::Failed(e)) => return Err(e),
            }
        }
        Err(StoreError::HeldElsewhere)
    }

    /// Keeps (or refreshes) the held upload after a claim; chunks pending under an older
    /// generation are dropped (never acknowledged; the client resends them).
    fn keep(
        &self,
        task_id: TaskId,
        known: Option<Arc<Mutex<Held>>>,
        record: UploadRecord,
        revision: u64,
    ) -> Arc<Mutex<Held>> {
        if let Some(held) = known {
            let mut h = lock(&held);
            if h.record.lease.gen != record.lease.gen {
                h.pending.clear();
                h.acks.clear();
                h.committing.clear();
            }
            h.record = record;
            h.revision = revision;
            drop(h);
            lock(&self.held).insert(task_id, held.clone());
            return held;
        }
        let (dir, kinds) = (
            self.spool.join(task_id.to_string()),
            record.meta.declared().kinds(),
        );
        let copy = match self.cluster.chunks.is_shared() {
            true => LocalCopy::hash_only(&dir, kinds),
            false => LocalCopy::new(&dir, kinds),
        };
        let held = Arc::new(Mutex::new(Held {
            record,
            revision,
            pending: Vec::new(),
            acks: Vec::new(),
            committing: Vec::new(),
            turn: Arc::default(),
            copy,
        }));
        lock(&self.held).insert(task_id, held.clone());
        held
    }

    fn forget(&self, task_id: TaskId) {
        lock(&self.held).remove(&task_id);
    }

    /// Stores a chunk under the held generation (in one trip to the runtime: a blocking
    /// hand-over per NATS piece cost more than the piece's copy); its durability waits for the
    /// commit.
    fn publish(
        &self,
        task_id: TaskId,
        h: &mut Held,
        index: u32,
        data: Bytes,
    ) -> Result<(), StoreError> {
        let gen = h.record.lease.gen;
        let stored = self.run(self.cluster.chunks.put(task_id, gen, index, data.clone()));
        let stored = stored.map_err(not_stored)?;
        h.acks.push(stored);
        h.copy.write(&h.record.meta.plan, index, gen, &data);
        Ok(())
    }

    /// Makes the pending chunks durable: every piece acked by the stream, then the record
    /// naming them written with compare-and-set (which also renews the lease). The stream's
    /// acks are awaited without the upload's lock, so its next chunks are published meanwhile;
    /// the caller holds the upload's `turn`. Returns the upload, locked, as the write left it.
    fn commit<'a>(
        &self,
        task_id: TaskId,
        held: &'a Mutex<Held>,
    ) -> Result<std::sync::MutexGuard<'a, Held>, StoreError> {
        let (gen, acks) = {
            let mut h = lock(held);
            h.committing = std::mem::take(&mut h.pending);
            (h.record.lease.gen, std::mem::take(&mut h.acks))
        };
        let acked = acks
            .into_iter()
            .try_for_each(|ack| self.run(ack).map_err(not_stored));
        let mut h = lock(held);
        let batch = std::mem::take(&mut h.committing);
        acked?;
        if h.record.lease.gen != gen {
            // Taken over while the stream answered: these chunks are the old generation's.
            return Err(StoreError::HeldElsewhere);
        }
        self.record(task_id, &mut h, &batch)?;
        Ok(h)
    }

    /// Writes the held record with `added` chunks stored, under compare-and-set (renewing
    /// the lease).
    fn record(&self, task_id: TaskId, h: &mut Held, added: &[u32]) -> Result<(), StoreError> {
        let mut record = h.record.clone();
        for _ in 0..CAS_RETRIES {
            record.add(added);
            record.lease.until_ms = now_ms() + self.lease_ms();
            match self.write(task_id, &record, h.revision) {
                Ok(revision) => {
                    (h.record, h.revision) = (record, revision);
                    return Ok(());
                }
                Err(Cas::Conflict) => {
                    let (latest, revision) = self.load(task_id)?;
                    let lease = (&latest.lease.holder, latest.lease.gen);
                    if lease != (&h.record.lease.holder, h.record.lease.gen) {
                        // Taken over (or lapsed and taken): these chunks are refused.
                        tracing::info!(%task_id, "an upload moved to another node; refusing its chunks here");
                        h.pending.clear();
                        self.forget(task_id);
                        return Err(StoreError::HeldElsewhere);
                    }
                    // Our own earlier write landed unanswered: build on what it stored.
                    (record.stored, h.revision) = (latest.stored, revision);
                }
                Err(Cas::Failed(e)) => return Err(e),
            }
        }
        Err(StoreError::HeldElsewhere)
    }

    /// Changes the held record's meta and writes it (compare-and-set); on failure the held
    /// record stays as NATS has it.
    fn write_meta(
        &self,
        task_id: TaskId,
        h: &mut Held,
        change: impl FnOnce(&mut Meta),
    ) -> Result<(), StoreError> {
        let before = h.record.meta.clone();
        change(&mut h.record.meta);
        h.record.meta.updated_at = unix_secs(SystemTime::now());
        self.record(task_id, h, &[])
            .inspect_err(|_| h.record.meta = before)
    }

    /// Where the assembled file of an upload goes.
    fn audio_file(&self, meta: &Meta) -> PathBuf {
        let name = match &meta.extension {
            Some(ext) => format!("audio.{ext}"),
            None => "audio".to_string(),
        };
        self.spool.join(meta.task_id.to_string()).join(name)
    }

    /// Streams every stored chunk into the local file, hashing as it goes, and keeps it
    /// only if it matches the declared hashes. Never more than one piece in memory.
    fn assemble(&self, record: &UploadRecord) -> Result<PathBuf, StoreError> {
        let meta = &record.meta;
        let dest = self.audio_file(meta);
        let dir = dest.parent().unwrap_or(&self.spool).to_path_buf();
        fs::create_dir_all(&dir).map_err(io("creating an upload's directory"))?;
        // Its own name: two readers assembling at once (a job, a resume) never share a file.
        let part = dir.join(format!("audio.{}.part", &TaskId::new_v4().to_string()[..8]));
        let mut file = File::create(&part).map_err(io("creating an assembled upload"))?;
        let kinds = meta.declared().kinds();
        let mut digest = RunningDigest::new(if kinds.is_empty() {
            HashKinds::BLAKE3
        } else {
            kinds
        });
        let copied = self.copy_chunks(record, &mut file, &mut digest);
        let verified = copied.and_then(|()| {
            file.sync_all().map_err(io("syncing an assembled upload"))?;
            match meta.declared().mismatch(&digest.finish()) {
                Some(algorithm) => Err(StoreError::HashMismatch { algorithm }),
                None => Ok(()),
            }
        });
        if let Err(e) = verified {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        fs::rename(&part, &dest).map_err(io("renaming an assembled upload"))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing an upload's directory"))?;
        Ok(dest)
    }

    fn copy_chunks(
        &self,
        record: &UploadRecord,
        file: &mut File,
        digest: &mut RunningDigest,
    ) -> Result<(), StoreError> {
        let (task_id, plan) = (record.meta.task_id, record.meta.plan);
        for index in 0..plan.total_chunks {
            let missing =
                || StoreError::Corrupt(format!("upload {task_id}: chunk {index} is gone"));
            let gen = record.gen_of(index).ok_or_else(missing)?;
            let len = plan.chunk_len(index).unwrap_or(0);
            let mut sink = |bytes: &[u8]| {
                digest.update(bytes);
                file.write_all(bytes)
            };
            let read = self
                .cluster
                .chunks
                .read(task_id, gen, index, len, &mut sink);
            let got = self.run(read).map_err(|e| match e {
                ClusterError::Io { context, source } => StoreError::Io { context, source },
                other => {
                    tracing::warn!(%task_id, index, err = %other, "an upload's chunk could not be read");
                    missing()
                }
            })?;
            if got != len {
                return Err(missing());
            }
        }
        Ok(())
    }

    /// The verified file of a complete upload this node holds: its local copy's when the
    /// record names exactly the chunks in it; otherwise, or when the copy fails the declared
    /// hash, assembled from the stored chunks, which have the last word.
    fn adopt_copy(&self, h: &mut Held) -> Result<PathBuf, StoreError> {
        if h.record.matches_copy(h.copy.written()) {
            if let Some(path) = self.verified_copy(h)? {
                return Ok(path);
            }
        }
        h.copy.discard();
        self.assemble(&h.record)
    }

    /// The local copy, if it has the declared hashes: renamed into place (one write of every
    /// byte here, not two); or, for a copy that keeps no bytes (shared storage), verified as
    /// the chunks arrived, the file to be assembled where it is first read (`audio_path`).
    fn verified_copy(&self, h: &mut Held) -> Result<Option<PathBuf>, StoreError> {
        let (meta, dest) = (&h.record.meta, self.audio_file(&h.record.meta));
        if !h.copy.keeps_bytes() {
            let verified = h.copy.verify_hashed(&meta.plan, &meta.declared());
            return Ok((verified == Some(true)).then_some(dest));
        }
        match h.copy.verify_into(&meta.plan, &meta.declared(), &dest) {
            Ok(true) => {
                let dir = dest.parent().unwrap_or(&self.spool);
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("syncing an upload's directory"))?;
                return Ok(Some(dest));
            }
            Ok(false) => {
                tracing::info!(task_id = %meta.task_id, "the local copy fails the hash; assembling from the stored chunks");
            }
            Err(err) => {
                tracing::warn!(task_id = %meta.task_id, %err, "the local copy is unusable; assembling from the stored chunks");
            }
        }
        Ok(None)
    }

    /// The local copy of a verified upload, assembled again if this node has none.
    fn local_copy(&self, record: &UploadRecord) -> Result<PathBuf, StoreError> {
        let path = self.audio_file(&record.meta);
        if path.exists() {
            return Ok(path);
        }
        self.assemble(record).map_err(|e| match e {
            StoreError::HashMismatch { .. } => {
                StoreError::Corrupt("a verified upload changed".into())
            }
            other => other,
        })
    }

    /// Whether nothing will read the upload's bytes again: transcribed, failed, or its record
    /// gone (expired). Not when NATS cannot say.
    fn is_over(&self, task_id: TaskId) -> bool {
        match self.load(task_id) {
            Ok((record, _)) => record.meta.status.is_over(),
            Err(StoreError::NotFound) => true,
            Err(_) => false,
        }
    }

    /// Removes the chunks in shared storage of uploads whose record is gone (expired) or over.
    fn sweep_orphans(&self) {
        let Ok(stored) = self.run(self.cluster.chunks.uploads()) else {
            return;
        };
        for task_id in stored {
            if self.is_over(task_id) {
                match self.run(self.cluster.chunks.purge(task_id)) {
                    Ok(()) => tracing::info!(%task_id, "removed an expired upload's chunks"),
                    Err(err) => tracing::warn!(%task_id, %err, "an upload's chunks stay"),
                }
            }
        }
    }

    /// Where the upload stands: with a limit, its missing chunks (resume); without, the gaps
    /// below the highest stored chunk (acks).
    fn progress_of(record: &UploadRecord, missing: Option<usize>) -> Progress {
        let received = record.received();
        let listed = match missing {
            Some(limit) => received.missing(limit),
            None => received.gaps(MAX_MISSING_LISTED),
        };
        Progress::new(&received, listed)
    }
}

impl UploadStorage for ClusterUploads {
    fn create(&self, new: NewUpload) -> Result<TaskId, StoreError> {
        self.check_quota(&new.client, new.plan.file_size)?;
        let task_id = TaskId::new_v4();
        let meta = Meta::new(task_id, new, SystemTime::now());
        let record = UploadRecord::new(meta, &self.holder, now_ms(), self.lease_ms());
        let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let revision = self.block(self.cluster.uploads.create(task_id.to_string(), bytes))?;
        self.keep(task_id, None, record, revision);
        tracing::debug!(%task_id, "created a cluster upload");
        Ok(task_id)
    }

    fn write_chunk(&self, task_id: TaskId, index: u32, data: Bytes) -> Result<Insert, StoreError> {
        let held = self.holding(task_id, false)?;
        let mut h = lock(&held);
        h.record.meta.plan.check_chunk(index, data.len() as u64)?;
        let known =
            h.record.contains(index) || h.pending.contains(&index) || h.committing.contains(&index);
        if known {
            return Ok(Insert::Duplicate);
        }
        self.publish(task_id, &mut h, index, data)?;
        h.pending.push(index);
        Ok(Insert::New)
    }

    fn sync(&self, task_id: TaskId) -> Result<Progress, StoreError> {
        let held = self.holding(task_id, false)?;
        let turn = lock(&held).turn.clone();
        let _turn = lock(&turn);
        let h = self.commit(task_id, &held)?;
        Ok(Self::progress_of(&h.record, None))
    }

    fn progress(&self, task_id: TaskId, missing_limit: usize) -> Result<Progress, StoreError> {
        let (record, _) = self.load(task_id)?;
        Ok(Self::progress_of(&record, Some(missing_limit)))
    }

    fn meta(&self, task_id: TaskId) -> Result<Meta, StoreError> {
        Ok(self.load(task_id)?.0.meta)
    }

    fn declare_hashes(
        &self,
        task_id: TaskId,
        hashes: FileHashes,
    ) -> Result<Option<Progress>, StoreError> {
        let (record, _) = self.load(task_id)?;
        if record.meta.status != UploadStatus::Uploading {
            let mut meta = record.meta.clone();
            meta.declare(hashes)?;
            return match meta == record.meta {
                true => Ok(None),
                false => Err(StoreError::WrongState {
                    status: record.meta.status,
                    needed: "uploading",
                }),
            };
        }
        let held = self.holding(task_id, false)?;
        let turn = lock(&held).turn.clone();
        let _turn = lock(&turn);
        let mut h = self.commit(task_id, &held)?;
        let mut meta = h.record.meta.clone();
        meta.declare(hashes)?;
        if meta != h.record.meta {
            self.write_meta(task_id, &mut h, |m| *m = meta)?;
            let kinds = h.record.meta.declared().kinds();
            h.copy.declare(kinds);
        }
        Ok(Some(Self::progress_of(&h.record, None)))
    }

    fn finalize(&self, task_id: TaskId) -> Result<PathBuf, StoreError> {
        let (record, _) = self.load(task_id)?;
        if record.meta.status != UploadStatus::Uploading {
            return self.local_copy(&record);
        }
        let held = self.holding(task_id, false)?;
        let turn = lock(&held).turn.clone();
        let _turn = lock(&turn);
        let mut h = self.commit(task_id, &held)?;
        let received = h.record.received();
        if !received.is_complete() {
            return Err(StoreError::Incomplete {
                missing: received.total() - received.count(),
            });
        }
        if h.record.meta.declared().kinds().is_empty() {
            return Err(StoreError::AwaitingHash);
        }
        let path = match self.adopt_copy(&mut h) {
            Ok(path) => path,
            Err(e @ StoreError::HashMismatch { .. }) => {
                self.write_meta(task_id, &mut h, |m| m.error = Some(e.to_string()))?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.write_meta(task_id, &mut h, |m| m.status = UploadStatus::Uploaded)?;
        drop(h);
        self.forget(task_id);
        Ok(path)
    }

    fn audio_path(&self, task_id: TaskId) -> Result<PathBuf, StoreError> {
        let (record, _) = self.load(task_id)?;
        if record.meta.status == UploadStatus::Uploading {
            return Err(StoreError::WrongState {
                status: record.meta.status,
                needed: "uploaded",
            });
        }
        self.local_copy(&record)
    }

    fn set_status(
        &self,
        task_id: TaskId,
        status: UploadStatus,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.update(task_id, |record| {
            record.meta.status = status;
            record.meta.error = error.clone();
            record.meta.updated_at = unix_secs(SystemTime::now());
            Ok(())
        })?;
        if status.is_over() {
            // Transcribed: the chunks and this node's copy are no longer needed.
            self.run(self.cluster.chunks.purge(task_id))
                .map_err(unavailable)?;
            let _ = fs::remove_dir_all(self.spool.join(task_id.to_string()));
        }
        Ok(())
    }

    /// Empty: a cluster's uploads are not this node's to queue again at start. A verified
    /// upload whose job was never queued is queued by the client's `upload_resume`, on any node.
    fn list(&self) -> Vec<(TaskId, UploadStatus)> {
        Vec::new()
    }

    /// Records and chunks in NATS expire there (max age); here this node's assembled copies of
    /// uploads that are transcribed, failed or gone are removed, and chunks in shared storage
    /// whose record expired (any node may do it; deleting twice is harmless).
    fn sweep(&self, _ttl: Duration) -> Vec<TaskId> {
        self.sweep_orphans();
        let Ok(dirs) = fs::read_dir(&self.spool) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for dir in dirs.flatten() {
            let Ok(task_id) = dir.file_name().to_string_lossy().parse::<TaskId>() else {
                continue;
            };
            if self.is_over(task_id) && fs::remove_dir_all(dir.path()).is_ok() {
                removed.push(task_id);
            }
        }
        removed
    }

    /// This node's disk (an upload is assembled here when it completes or its job runs here)
    /// and a shared upload store's are checked; NATS's own limits bound what it stores.
    fn check_quota(&self, _client: &str, file_size: u64) -> Result<(), StoreError> {
        let here = free_bytes(&self.spool).unwrap_or(u64::MAX);
        let free = here.min(self.cluster.chunks.free_bytes().unwrap_or(u64::MAX));
        match file_size > free.saturating_sub(self.min_free_bytes) {
            true => Err(StoreError::DiskFull),
            false => Ok(()),
        }
    }

    fn take_over(&self, task_id: TaskId) -> Result<(), StoreError> {
        match self.holding(task_id, true) {
            Ok(_) | Err(StoreError::WrongState { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
