//! Durable upload sessions on disk, so an upload survives a dropped connection, a server
//! restart and `kill -9`.
//!
//! Layout under the data directory:
//!
//! ```text
//! uploads/<task_id>/meta.json      the request, plan, status, times (rewritten atomically)
//! uploads/<task_id>/data.part      file_size bytes; chunk i written at i * chunk_size
//! uploads/<task_id>/received.log   append-only chunk indices, u32 LE, one per stored chunk
//! uploads/<task_id>/audio[.ext]    data.part after it was verified (finalise renames it)
//! ```
//!
//! Durability rule: a chunk counts as received only once its bytes are in `data.part` AND
//! its index is in `received.log`, both fdatasync'ed, data first. A crash can therefore lose
//! unacknowledged chunks but never claim a chunk whose bytes are missing. Writes and syncs
//! are separate calls so the fast path can group-commit: write several chunks, [`sync`]
//! once, ack them together.
//!
//! The API is synchronous and blocking (call it from `spawn_blocking`). `UploadStore` is
//! `Send + Sync`: a map lock guards the set of sessions and each session has its own mutex,
//! so different uploads proceed in parallel and calls on one upload are serialised.
//!
//! This module must NOT parse wire messages, hold network state or read a whole file into
//! memory. Task ids are [`TaskId`]s (parsed UUIDs), the only client input that becomes a
//! path component; file names never do.
//!
//! [`sync`]: UploadStore::sync

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, warn};

use super::digest::{FileHashes, HashKinds, RunningDigest};
use super::plan::{ChunkPlan, Insert, PlanError, ReceivedSet};
use super::{Transport, MAX_MISSING_LISTED};
use crate::access::Owner;
use crate::protocol::message::TaskOptions;
use crate::protocol::TaskId;

const META: &str = "meta.json";
const DATA: &str = "data.part";
const LOG: &str = "received.log";
const TMP_PREFIX: &str = ".tmp-";
/// Bytes per received-log entry (a u32 chunk index).
const LOG_ENTRY: u64 = 4;
/// Version of meta.json's layout, so a later Earshot can migrate old sessions.
const META_VERSION: u32 = 1;

/// Store-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Most bytes all sessions on disk may reserve together (see [`UploadStore::reserved_bytes`]);
    /// a new upload beyond it is refused with `quota_exceeded` instead of filling the disk.
    pub quota_bytes: u64,
    /// Most bytes the uploads of one client (key or address) may reserve, so one client cannot
    /// take the whole quota; 0 = no per-client limit.
    pub client_quota_bytes: u64,
    /// How long an incomplete upload keeps its whole file size reserved without receiving a
    /// chunk. After that it reserves only the bytes it holds, and takes the rest again (if
    /// there is room) when it resumes: declared sizes alone cannot lock others out for long.
    pub reservation_ttl: Duration,
    /// Free space the file system must keep beyond what uploads still need; a new upload that
    /// would eat into it is refused, whatever the quota says.
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            quota_bytes: 20 << 30,
            client_quota_bytes: 0,
            reservation_ttl: Duration::from_secs(15 * 60),
            min_free_bytes: 0,
        }
    }
}

/// Where an upload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadStatus {
    /// Chunks are arriving.
    Uploading,
    /// Every chunk stored and the file verified; waiting to be transcribed (also the state
    /// a transcription interrupted by a restart returns to, so it can be queued again).
    Uploaded,
    /// A transcription is running.
    Transcribing,
    /// Transcribed; the task registry holds the result.
    Done,
    /// Transcription failed; `error` in the meta says why.
    Failed,
}

/// What a new upload is, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUpload {
    /// Sanitised display name.
    pub file_name: String,
    /// Validated lowercase extension, used to name the finished file (the decoder's hint).
    pub extension: Option<String>,
    /// How the file is cut into chunks.
    pub plan: ChunkPlan,
    /// Expected whole-file hashes (lowercase hex), verified by [`UploadStore::finalize`];
    /// none yet for a binary upload that declares them later.
    pub hashes: FileHashes,
    /// How chunks travel, so a resumed upload keeps its transport.
    pub transport: Transport,
    /// Transcription options, so a resumed upload is transcribed as first asked.
    pub options: TaskOptions,
    /// The API key that may resume it and read its result (`None`: anyone).
    pub owner: Option<Owner>,
    /// Whose share of the quota it uses (`ClientKey`'s text form).
    pub client: String,
}

/// The contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Layout version of this file.
    pub version: u32,
    /// The session's id (also its directory name).
    pub task_id: TaskId,
    /// Sanitised display name.
    pub file_name: String,
    /// Validated lowercase extension of the finished file.
    pub extension: Option<String>,
    /// How the file is cut into chunks.
    pub plan: ChunkPlan,
    /// Expected MD5, lowercase hex.
    pub file_md5: Option<String>,
    /// Expected SHA-256, lowercase hex.
    pub file_sha256: Option<String>,
    /// Expected BLAKE3, lowercase hex.
    #[serde(default)]
    pub file_blake3: Option<String>,
    /// Transport the client chose.
    pub transport: Transport,
    /// Transcription options.
    pub options: TaskOptions,
    /// Unix seconds when the upload was created.
    pub created_at: u64,
    /// Unix seconds of the last status change.
    pub updated_at: u64,
    /// Where the upload is in its life.
    pub status: UploadStatus,
    /// The last failure (hash mismatch, transcription error), for `get_result` and logs.
    #[serde(default)]
    pub error: Option<String>,
    /// The API key (fingerprint) that may resume the upload and read its result; `None` for
    /// sessions of an open server (and those written before owners were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Whose share of the quota the upload uses; empty in sessions written before shares.
    #[serde(default)]
    pub client: String,
}

impl Meta {
    /// The whole-file hashes the client declared so far.
    pub fn declared(&self) -> FileHashes {
        FileHashes {
            md5: self.file_md5.clone(),
            sha256: self.file_sha256.clone(),
            blake3: self.file_blake3.clone(),
        }
    }
}

/// Where an upload stands, for acks and resume answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Chunks durably stored.
    pub received_chunks: u32,
    /// Chunks in the plan.
    pub total_chunks: u32,
    /// Every index below this is durably stored (for cumulative acks).
    pub received_through: u32,
    /// 0–100.
    pub progress: f64,
    /// Whether every chunk is stored (time to finalise).
    pub complete: bool,
    /// Missing indices, lowest first, capped (see the method that produced this).
    pub missing: Vec<u32>,
}

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No such session (never created, removed, or expired).
    #[error("upload session not found")]
    NotFound,
    /// The chunk does not fit the session's plan.
    #[error(transparent)]
    Chunk(#[from] PlanError),
    /// Finalise was called before every chunk was stored.
    #[error("upload incomplete: {missing} chunks missing")]
    Incomplete {
        /// How many chunks are still missing.
        missing: u32,
    },
    /// The operation does not apply in the session's current status.
    #[error("upload is {status:?}; this operation needs it {needed}")]
    WrongState {
        /// The session's status.
        status: UploadStatus,
        /// What the operation needed, for the message.
        needed: &'static str,
    },
    /// Every chunk is in but the client has not yet declared the file's hash (a binary
    /// upload sends it in `upload_finish`); the upload completes when it does.
    #[error("waiting for the file's hash (upload_finish)")]
    AwaitingHash,
    /// The client declared a hash different from the one it declared before.
    #[error("this upload's {algorithm} was already declared with a different value")]
    HashConflict {
        /// `file_hash` (MD5), `file_sha256` or `file_blake3`.
        algorithm: &'static str,
    },
    /// The assembled file does not match the client's hash. `data.part` is kept.
    #[error("assembled file does not match its {algorithm}")]
    HashMismatch {
        /// `file_hash` (MD5) or `file_sha256`.
        algorithm: &'static str,
    },
    /// Accepting this upload would exceed the disk quota.
    #[error("upload storage is full: {needed} bytes needed, {available} available")]
    QuotaExceeded {
        /// Bytes the new upload needs.
        needed: u64,
        /// Bytes left under the quota.
        available: u64,
    },
    /// Accepting this upload would exceed the client's own share of the quota.
    #[error(
        "this client's uploads already reserve its share of the server's storage: {needed} \
         bytes needed, {available} available; finish or let go of other uploads first"
    )]
    ClientQuotaExceeded {
        /// Bytes the new upload needs.
        needed: u64,
        /// Bytes left in the client's share.
        available: u64,
    },
    /// The file system has not enough free space (or ran out while writing). An upload that
    /// ran out while writing is removed, so what it took is free again.
    #[error("the server is out of disk space for uploads; try again later")]
    DiskFull,
    /// A filesystem error (details for logs only).
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A session's files are inconsistent (details for logs only).
    #[error("corrupt upload session: {0}")]
    Corrupt(String),
}

/// Maps an I/O error; a full disk (or quota of the file system) becomes [`StoreError::DiskFull`].
fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::DiskFull,
        _ => StoreError::Io { context, source },
    }
}

/// Bytes available to this (unprivileged) process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
}

/// One session's in-memory state.
struct Session {
    /// Mirror of meta.json.
    meta: Meta,
    /// Chunks durably stored (data and log entry synced).
    received: ReceivedSet,
    /// Chunks written to data.part but not yet synced; acked only after [`UploadStore::sync`].
    pending: Vec<u32>,
    /// Open handle on data.part, opened on first write (keeps idle sessions fd-free).
    data: Option<File>,
    /// Open append handle on received.log, opened on first sync.
    log: Option<File>,
    /// Length of received.log known to hold whole, synced entries; a failed append is cut
    /// back to it so entries never misalign.
    log_len: u64,
    /// Last time anything happened; `sweep` expires sessions idle past the TTL.
    last_activity: SystemTime,
    /// Set when the session was removed while a caller still held it.
    removed: bool,
    /// The declared whole-file hashes over the file's leading bytes, advanced as chunks
    /// arrive so completing the upload reads back only what was never hashed.
    digest: RunningDigest,
}

/// A session in the map: what the quota needs to know, readable without locking the session
/// (quota sums run while another session's lock is held), and the session itself.
struct Entry {
    /// The plan's file size.
    file_size: u64,
    /// Whose share of the quota the session uses.
    client: String,
    /// Bytes of the chunks durably stored (what an idle upload still reserves).
    received_bytes: AtomicU64,
    /// Unix milliseconds of the last chunk or resume: an upload idle past the reservation TTL
    /// reserves only `received_bytes`.
    active_ms: AtomicU64,
    /// Whether the session is still receiving chunks (its reservation can lapse).
    uploading: AtomicBool,
    /// The session, locked per operation.
    state: Mutex<Session>,
}

impl Entry {
    fn new(session: Session) -> Self {
        let plan = session.meta.plan;
        let received = stored_bytes(&plan, &session.received);
        Entry {
            file_size: plan.file_size,
            client: session.meta.client.clone(),
            received_bytes: AtomicU64::new(received),
            active_ms: AtomicU64::new(unix_ms(session.last_activity)),
            uploading: AtomicBool::new(session.meta.status == UploadStatus::Uploading),
            state: Mutex::new(session),
        }
    }

    /// Whether the upload's full reservation has lapsed at `now_ms`.
    fn lapsed(&self, now_ms: u64, ttl: Duration) -> bool {
        let idle = now_ms.saturating_sub(self.active_ms.load(Ordering::Relaxed));
        self.uploading.load(Ordering::Relaxed) && u128::from(idle) > ttl.as_millis()
    }

    /// Bytes this session counts against the quota at `now_ms`.
    fn reserved(&self, now_ms: u64, ttl: Duration) -> u64 {
        match self.lapsed(now_ms, ttl) {
            true => self.received_bytes.load(Ordering::Relaxed),
            false => self.file_size,
        }
    }

    /// Bytes this session may still write to disk at `now_ms` (reserved, not yet stored).
    fn outstanding(&self, now_ms: u64, ttl: Duration) -> u64 {
        match self.uploading.load(Ordering::Relaxed) {
            true => self
                .reserved(now_ms, ttl)
                .saturating_sub(self.received_bytes.load(Ordering::Relaxed)),
            false => 0,
        }
    }

    /// Copies the session's state into the lock-free fields.
    fn publish(&self, s: &Session) {
        let received = stored_bytes(&s.meta.plan, &s.received);
        self.received_bytes.store(received, Ordering::Relaxed);
        self.active_ms
            .store(unix_ms(s.last_activity), Ordering::Relaxed);
        self.uploading
            .store(s.meta.status == UploadStatus::Uploading, Ordering::Relaxed);
    }
}

/// Bytes of the stored chunks of `plan` (the last chunk may be short).
fn stored_bytes(plan: &ChunkPlan, received: &ReceivedSet) -> u64 {
    let whole = u64::from(received.count()).saturating_mul(plan.chunk_size);
    whole.min(plan.file_size)
}

/// All upload sessions under one data directory.
pub struct UploadStore {
    /// `<data_dir>/uploads`.
    root: PathBuf,
    /// Quota.
    config: StoreConfig,
    /// Sessions by id. Held only to look up, insert or remove; never during file I/O on a
    /// session (except create/remove, which touch only their own directory).
    sessions: RwLock<HashMap<TaskId, Arc<Entry>>>,
    /// Held while a reservation is decided (a create, an idle upload taking its reservation
    /// back), so two of them cannot both squeeze under the quota. Lock order: a session, then
    /// this, then the map.
    reserving: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing a directory"))
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync dir.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err("creating a temp file"))?;
    f.write_all(bytes).map_err(io_err("writing a temp file"))?;
    f.sync_all().map_err(io_err("syncing a temp file"))?;
    fs::rename(&tmp, dir.join(name)).map_err(io_err("renaming a temp file"))?;
    fsync_dir(dir)
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    write_atomic(dir, META, &json)
}

fn audio_name(meta: &Meta) -> String {
    match &meta.extension {
        Some(ext) => format!("audio.{ext}"),
        None => "audio".to_string(),
    }
}

impl UploadStore {
    /// Opens (creating if needed) the store under `data_dir` and loads every session.
    /// Broken sessions are logged and skipped, never deleted; torn creates are cleaned up.
    pub fn open(data_dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let root = data_dir.join("uploads");
        fs::create_dir_all(&root).map_err(io_err("creating the uploads directory"))?;
        let mut sessions = HashMap::new();
        for entry in fs::read_dir(&root).map_err(io_err("listing the uploads directory"))? {
            let entry = entry.map_err(io_err("listing the uploads directory"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                // A create that crashed before its rename: nothing was acknowledged.
                let _ = fs::remove_dir_all(entry.path());
                continue;
            }
            let Ok(task_id) = TaskId::parse(&name) else {
                warn!(dir = %name, "ignoring unexpected entry in uploads directory");
                continue;
            };
            match load_session(&entry.path(), task_id) {
                Ok(session) => {
                    sessions.insert(task_id, Arc::new(Entry::new(session)));
                }
                Err(e) => warn!(%task_id, error = %e, "skipping unreadable upload session"),
            }
        }
        debug!(count = sessions.len(), "loaded upload sessions");
        Ok(UploadStore {
            root,
            config,
            sessions: RwLock::new(sessions),
            reserving: Mutex::new(()),
        })
    }

    fn dir(&self, task_id: TaskId) -> PathBuf {
        self.root.join(task_id.to_string())
    }

    fn entry(&self, task_id: TaskId) -> Result<Arc<Entry>, StoreError> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.get(&task_id).cloned().ok_or(StoreError::NotFound)
    }

    /// Runs `f` on the live session `task_id`, then publishes its state for quota sums.
    fn with_session<T>(
        &self,
        task_id: TaskId,
        f: impl FnOnce(&mut Session, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let entry = self.entry(task_id)?;
        let mut session = lock(&entry.state);
        if session.removed {
            return Err(StoreError::NotFound);
        }
        let result = f(&mut session, &self.dir(task_id));
        entry.publish(&session);
        result
    }

    /// Runs a write on a session that is receiving chunks: an upload whose reservation lapsed
    /// takes it back first (or is refused, if the room went to others meanwhile). A full disk
    /// removes the upload, freeing what it took; the caller answers `quota_exceeded`.
    fn with_receiving<T>(
        &self,
        task_id: TaskId,
        f: impl FnOnce(&mut Session, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let entry = self.entry(task_id)?;
        let result = self.with_session(task_id, |s, dir| {
            let now = SystemTime::now();
            if entry.lapsed(unix_ms(now), self.config.reservation_ttl) {
                self.reclaim(task_id, &entry)?;
            }
            f(s, dir)
        });
        if matches!(result, Err(StoreError::DiskFull)) {
            warn!(%task_id, "the disk is full; removing the upload to free its space");
            let _ = self.remove(task_id);
        }
        result
    }

    /// Takes back the full reservation of an upload that was idle past the TTL.
    fn reclaim(&self, task_id: TaskId, entry: &Entry) -> Result<(), StoreError> {
        let _reserving = lock(&self.reserving);
        let to_write = entry.file_size - entry.received_bytes.load(Ordering::Relaxed);
        self.check_room(Some(task_id), &entry.client, entry.file_size, to_write)?;
        entry
            .active_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        debug!(%task_id, "an idle upload took its reservation back");
        Ok(())
    }

    /// Bytes all sessions on disk reserve now: the file size of each, except incomplete
    /// uploads idle past the reservation TTL, which reserve only what they hold.
    pub fn reserved_bytes(&self) -> u64 {
        let now = unix_ms(SystemTime::now());
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|e| e.reserved(now, self.config.reservation_ttl))
            .sum()
    }

    /// Whether `client` may reserve `bytes` now (of which `to_write` are still to be written):
    /// under the quota, under its share, and with the file system keeping `min_free_bytes`
    /// after every upload has written what it reserved. `except` is left out of the sums (it
    /// is the one asking).
    fn check_room(
        &self,
        except: Option<TaskId>,
        client: &str,
        bytes: u64,
        to_write: u64,
    ) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        let ttl = self.config.reservation_ttl;
        let (mut reserved, mut by_client, mut outstanding) = (0u64, 0u64, 0u64);
        {
            let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
            let others = map.iter().filter(|(id, _)| Some(**id) != except);
            for e in others.map(|(_, e)| e) {
                let r = e.reserved(now, ttl);
                reserved += r;
                outstanding += e.outstanding(now, ttl);
                if e.client == client && !client.is_empty() {
                    by_client += r;
                }
            }
        }
        check_quota(reserved, bytes, self.config.quota_bytes)?;
        if self.config.client_quota_bytes > 0 {
            let available = self.config.client_quota_bytes.saturating_sub(by_client);
            if bytes > available {
                return Err(StoreError::ClientQuotaExceeded {
                    needed: bytes,
                    available,
                });
            }
        }
        let free = free_bytes(&self.root).unwrap_or(u64::MAX);
        let usable = free
            .saturating_sub(self.config.min_free_bytes)
            .saturating_sub(outstanding);
        if to_write > usable {
            warn!(
                free,
                needed = to_write,
                outstanding,
                "refusing an upload: not enough free disk"
            );
            return Err(StoreError::DiskFull);
        }
        Ok(())
    }

    /// Whether `client` may add `file_size` bytes now (quota, its share, free disk space);
    /// for uploads that do not go through the store (HTTP requests).
    pub fn check_quota(&self, client: &str, file_size: u64) -> Result<(), StoreError> {
        let _reserving = lock(&self.reserving);
        self.check_room(None, client, file_size, file_size)
    }

    /// Creates a session: reserves `data.part`, writes meta and an empty log, durably.
    pub fn create(&self, new: NewUpload) -> Result<TaskId, StoreError> {
        let task_id = TaskId::new_v4();
        let now = SystemTime::now();
        let meta = Meta {
            version: META_VERSION,
            task_id,
            file_name: new.file_name,
            extension: new.extension,
            plan: new.plan,
            file_md5: new.hashes.md5,
            file_sha256: new.hashes.sha256,
            file_blake3: new.hashes.blake3,
            transport: new.transport,
            options: new.options,
            created_at: unix_secs(now),
            updated_at: unix_secs(now),
            status: UploadStatus::Uploading,
            error: None,
            owner: new.owner,
            client: new.client,
        };
        // Held across the check and the insert so two creates cannot both squeeze in.
        let _reserving = lock(&self.reserving);
        let size = meta.plan.file_size;
        self.check_room(None, &meta.client, size, size)?;
        let tmp = self.root.join(format!("{TMP_PREFIX}{task_id}"));
        if let Err(e) = create_session_dir(&tmp, &meta) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, self.dir(task_id)) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err("publishing a session")(e));
        }
        fsync_dir(&self.root)?;
        let session = Session {
            received: ReceivedSet::new(meta.plan.total_chunks),
            digest: new_digest(&meta),
            meta,
            pending: Vec::new(),
            data: None,
            log: None,
            log_len: 0,
            last_activity: now,
            removed: false,
        };
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        map.insert(task_id, Arc::new(Entry::new(session)));
        debug!(%task_id, "created upload session");
        Ok(task_id)
    }

    /// Writes chunk `index` at its offset in `data.part` (not yet durable: call [`sync`]
    /// before acknowledging). `Duplicate` means it was already stored or is pending, and
    /// nothing was written. The data length must match the plan.
    ///
    /// [`sync`]: UploadStore::sync
    pub fn write_chunk(
        &self,
        task_id: TaskId,
        index: u32,
        data: &[u8],
    ) -> Result<Insert, StoreError> {
        self.with_receiving(task_id, |s, dir| {
            let insert = write_locked(s, dir, index, data)?;
            if insert == Insert::New && continues_digest(s, index) {
                s.digest.update(data);
                advance_digest(s, dir)?;
            }
            Ok(insert)
        })
    }

    /// Makes every pending chunk durable (one fdatasync of the data, then one append +
    /// fdatasync of the log) and returns the state to acknowledge. `missing` lists the
    /// gaps below the highest stored chunk (capped), which is what a pipelined sender
    /// must resend.
    pub fn sync(&self, task_id: TaskId) -> Result<Progress, StoreError> {
        self.with_receiving(task_id, |s, dir| {
            commit_pending(s, dir)?;
            Ok(progress_of(
                &s.received,
                s.received.gaps(MAX_MISSING_LISTED),
            ))
        })
    }

    /// Write and sync one chunk: the JSON path's per-chunk ack.
    pub fn put_chunk(
        &self,
        task_id: TaskId,
        index: u32,
        data: &[u8],
    ) -> Result<(Insert, Progress), StoreError> {
        self.with_receiving(task_id, |s, dir| {
            let insert = write_locked(s, dir, index, data)?;
            let hash_now = insert == Insert::New && continues_digest(s, index);
            // The whole-file hash (CPU) runs while the chunk is synced (disk).
            let mut digest =
                std::mem::replace(&mut s.digest, RunningDigest::new(HashKinds::default()));
            let synced = std::thread::scope(|scope| {
                let hashing = hash_now.then(|| scope.spawn(|| digest.update(data)));
                let synced = commit_pending(s, dir);
                (synced, hashing.map(|h| h.join().is_ok()))
            });
            s.digest = match synced.1 {
                Some(false) => new_digest(&s.meta), // cannot happen; hash again at the end
                _ => digest,
            };
            synced.0?;
            advance_digest(s, dir)?;
            Ok((
                insert,
                progress_of(&s.received, s.received.gaps(MAX_MISSING_LISTED)),
            ))
        })
    }

    /// Where the upload stands, listing up to `missing_limit` missing chunks (for
    /// `upload_resume`). Pending (unsynced) chunks count as missing.
    pub fn progress(&self, task_id: TaskId, missing_limit: usize) -> Result<Progress, StoreError> {
        self.with_session(task_id, |s, _| {
            Ok(progress_of(&s.received, s.received.missing(missing_limit)))
        })
    }

    /// A copy of the session's meta.
    pub fn meta(&self, task_id: TaskId) -> Result<Meta, StoreError> {
        self.with_session(task_id, |s, _| Ok(s.meta.clone()))
    }

    /// Every session and its status (e.g. to queue `Uploaded` ones after a restart).
    pub fn list(&self) -> Vec<(TaskId, UploadStatus)> {
        let entries: Vec<_> = {
            let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(id, e)| (*id, Arc::clone(e))).collect()
        };
        let mut out: Vec<_> = entries
            .into_iter()
            .map(|(id, e)| (id, lock(&e.state).meta.status))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Verifies the assembled file against `file_hash` (MD5) and/or `file_sha256`, streaming
    /// it in blocks, then renames `data.part` to `audio[.ext]` and marks the session
    /// `Uploaded`. Returns the audio path. Idempotent once uploaded.
    ///
    /// On a hash mismatch nothing is deleted: `data.part` and the log stay as they were,
    /// the reason is recorded in the meta's `error`, and `HashMismatch` is returned.
    pub fn finalize(&self, task_id: TaskId) -> Result<PathBuf, StoreError> {
        self.with_session(task_id, |s, dir| {
            if s.meta.status != UploadStatus::Uploading {
                return Ok(dir.join(audio_name(&s.meta)));
            }
            commit_pending(s, dir)?;
            if !s.received.is_complete() {
                return Err(StoreError::Incomplete {
                    missing: s.received.total() - s.received.count(),
                });
            }
            if s.meta.declared().kinds().is_empty() {
                return Err(StoreError::AwaitingHash);
            }
            if let Err(e) = verify_hashes(s, dir) {
                if matches!(e, StoreError::HashMismatch { .. }) {
                    s.meta.error = Some(e.to_string());
                    s.meta.updated_at = unix_secs(SystemTime::now());
                    write_meta(dir, &s.meta)?;
                }
                return Err(e);
            }
            s.data = None;
            s.log = None;
            let audio = dir.join(audio_name(&s.meta));
            fs::rename(dir.join(DATA), &audio).map_err(io_err("renaming the upload"))?;
            fsync_dir(dir)?;
            set_status(s, dir, UploadStatus::Uploaded, None)?;
            let _ = fs::remove_file(dir.join(LOG));
            Ok(audio)
        })
    }

    /// Records the whole-file hashes a binary upload sends after its chunks
    /// (`upload_finish`). Declaring the same value again is harmless; a different one is
    /// refused. Returns the upload's progress, so the caller can finalise a complete upload,
    /// or `None` when the upload was already verified with these hashes (nothing to do).
    pub fn declare_hashes(
        &self,
        task_id: TaskId,
        hashes: FileHashes,
    ) -> Result<Option<Progress>, StoreError> {
        self.with_session(task_id, |s, dir| {
            let mut meta = s.meta.clone();
            declare(&mut meta.file_md5, hashes.md5, "file_hash (MD5)")?;
            declare(&mut meta.file_sha256, hashes.sha256, "file_sha256")?;
            declare(&mut meta.file_blake3, hashes.blake3, "file_blake3")?;
            if s.meta.status != UploadStatus::Uploading {
                // Verified already; the same hashes again are a late duplicate.
                return match meta == s.meta {
                    true => Ok(None),
                    false => Err(StoreError::WrongState {
                        status: s.meta.status,
                        needed: "uploading",
                    }),
                };
            }
            if meta != s.meta {
                meta.updated_at = unix_secs(SystemTime::now());
                write_meta(dir, &meta)?;
                if !s.digest.computes(meta.declared().kinds()) {
                    s.digest = RunningDigest::new(meta.declared().kinds());
                }
                s.meta = meta;
            }
            Ok(Some(progress_of(
                &s.received,
                s.received.gaps(MAX_MISSING_LISTED),
            )))
        })
    }

    /// Path of the verified audio file (status `Uploaded` or later).
    pub fn audio_path(&self, task_id: TaskId) -> Result<PathBuf, StoreError> {
        self.with_session(task_id, |s, dir| {
            if s.meta.status == UploadStatus::Uploading {
                return Err(StoreError::WrongState {
                    status: s.meta.status,
                    needed: "uploaded",
                });
            }
            Ok(dir.join(audio_name(&s.meta)))
        })
    }

    /// Records a status change (e.g. `Transcribing`, or `Failed` with a reason).
    pub fn set_status(
        &self,
        task_id: TaskId,
        status: UploadStatus,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.with_session(task_id, |s, dir| set_status(s, dir, status, error))
    }

    /// Deletes a session and its files.
    pub fn remove(&self, task_id: TaskId) -> Result<(), StoreError> {
        let entry = {
            let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            map.remove(&task_id).ok_or(StoreError::NotFound)?
        };
        let mut s = lock(&entry.state);
        s.removed = true;
        s.data = None;
        s.log = None;
        fs::remove_dir_all(self.dir(task_id)).map_err(io_err("removing a session"))
    }

    /// Deletes sessions idle for longer than `ttl` (`Transcribing` ones excepted: their
    /// worker is still using the file). Returns the removed ids.
    pub fn sweep(&self, ttl: Duration) -> Vec<TaskId> {
        self.sweep_at(ttl, SystemTime::now())
    }

    /// [`sweep`](UploadStore::sweep) as if the time were `now`.
    pub fn sweep_at(&self, ttl: Duration, now: SystemTime) -> Vec<TaskId> {
        let candidates: Vec<_> = {
            let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(id, e)| (*id, Arc::clone(e))).collect()
        };
        let mut removed = Vec::new();
        for (task_id, entry) in candidates {
            let expired = {
                let s = lock(&entry.state);
                s.meta.status != UploadStatus::Transcribing
                    && now
                        .duration_since(s.last_activity)
                        .is_ok_and(|idle| idle > ttl)
            };
            if !expired {
                continue;
            }
            match self.remove(task_id) {
                Ok(()) => removed.push(task_id),
                Err(StoreError::NotFound) => {}
                Err(e) => warn!(%task_id, error = %e, "could not remove an expired session"),
            }
        }
        if !removed.is_empty() {
            debug!(count = removed.len(), "swept expired upload sessions");
        }
        removed
    }
}

fn check_quota(reserved: u64, file_size: u64, quota: u64) -> Result<(), StoreError> {
    let available = quota.saturating_sub(reserved);
    if file_size > available {
        return Err(StoreError::QuotaExceeded {
            needed: file_size,
            available,
        });
    }
    Ok(())
}

fn require_status(
    s: &Session,
    status: UploadStatus,
    needed: &'static str,
) -> Result<(), StoreError> {
    if s.meta.status != status {
        return Err(StoreError::WrongState {
            status: s.meta.status,
            needed,
        });
    }
    Ok(())
}

fn set_status(
    s: &mut Session,
    dir: &Path,
    status: UploadStatus,
    error: Option<String>,
) -> Result<(), StoreError> {
    let now = SystemTime::now();
    let mut meta = s.meta.clone();
    meta.status = status;
    meta.error = error;
    meta.updated_at = unix_secs(now);
    write_meta(dir, &meta)?;
    s.meta = meta;
    s.last_activity = now;
    Ok(())
}

fn progress_of(received: &ReceivedSet, missing: Vec<u32>) -> Progress {
    Progress {
        received_chunks: received.count(),
        total_chunks: received.total(),
        received_through: received.contiguous_prefix(),
        progress: received.progress(),
        complete: received.is_complete(),
        missing,
    }
}

fn create_session_dir(tmp: &Path, meta: &Meta) -> Result<(), StoreError> {
    fs::create_dir(tmp).map_err(io_err("creating a session directory"))?;
    let data = File::create(tmp.join(DATA)).map_err(io_err("creating data.part"))?;
    data.set_len(meta.plan.file_size)
        .map_err(io_err("reserving data.part"))?;
    data.sync_all().map_err(io_err("syncing data.part"))?;
    let log = File::create(tmp.join(LOG)).map_err(io_err("creating received.log"))?;
    log.sync_all().map_err(io_err("syncing received.log"))?;
    write_meta(tmp, meta)
}

fn data_file<'s>(s: &'s mut Session, dir: &Path) -> Result<&'s File, StoreError> {
    if s.data.is_none() {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(DATA))
            .map_err(io_err("opening data.part"))?;
        s.data = Some(f);
    }
    Ok(s.data.as_ref().expect("just opened"))
}

fn log_file<'s>(s: &'s mut Session, dir: &Path) -> Result<&'s mut File, StoreError> {
    if s.log.is_none() {
        let f = OpenOptions::new()
            .append(true)
            .open(dir.join(LOG))
            .map_err(io_err("opening received.log"))?;
        s.log = Some(f);
    }
    Ok(s.log.as_mut().expect("just opened"))
}

/// Data first, then the log: after a crash the log never names a chunk whose bytes are
/// not on disk.
fn commit_pending(s: &mut Session, dir: &Path) -> Result<(), StoreError> {
    if s.pending.is_empty() {
        return Ok(());
    }
    data_file(s, dir)?
        .sync_data()
        .map_err(io_err("syncing data.part"))?;
    let entries: Vec<u8> = s.pending.iter().flat_map(|i| i.to_le_bytes()).collect();
    let good_len = s.log_len;
    let log = log_file(s, dir)?;
    let appended = log.write_all(&entries).and_then(|()| log.sync_data());
    if let Err(e) = appended {
        // Cut a partial append back so later entries stay aligned.
        let _ = log.set_len(good_len);
        return Err(io_err("appending to received.log")(e));
    }
    s.log_len += entries.len() as u64;
    for index in s.pending.drain(..) {
        // Indices were range-checked on write.
        let _ = s.received.insert(index);
    }
    s.last_activity = SystemTime::now();
    Ok(())
}

/// Writes a chunk at its offset, not yet durable nor hashed; `Duplicate` if it is stored or
/// pending already.
fn write_locked(
    s: &mut Session,
    dir: &Path,
    index: u32,
    data: &[u8],
) -> Result<Insert, StoreError> {
    require_status(s, UploadStatus::Uploading, "uploading")?;
    s.meta.plan.check_chunk(index, data.len() as u64)?;
    if s.received.contains(index) || s.pending.contains(&index) {
        return Ok(Insert::Duplicate);
    }
    let offset = s.meta.plan.chunk_offset(index).unwrap_or(0);
    data_file(s, dir)?
        .write_all_at(data, offset)
        .map_err(io_err("writing a chunk"))?;
    s.pending.push(index);
    s.last_activity = SystemTime::now();
    Ok(Insert::New)
}

/// Whether chunk `index` starts right where the running hash stops.
fn continues_digest(s: &Session, index: u32) -> bool {
    s.meta.plan.chunk_offset(index) == Some(s.digest.hashed())
}

/// The running hashes for a session: the declared ones, or BLAKE3 when the client will
/// declare its hash after the chunks (what Earshot's client sends then).
fn new_digest(meta: &Meta) -> RunningDigest {
    let kinds = meta.declared().kinds();
    RunningDigest::new(match kinds.is_empty() {
        true => HashKinds::BLAKE3,
        false => kinds,
    })
}

/// Sets a declared hash, refusing to change one already declared.
fn declare(
    slot: &mut Option<String>,
    value: Option<String>,
    algorithm: &'static str,
) -> Result<(), StoreError> {
    match (slot.as_deref(), value) {
        (_, None) => Ok(()),
        (Some(old), Some(new)) if old != new => Err(StoreError::HashConflict { algorithm }),
        (_, Some(new)) => {
            *slot = Some(new);
            Ok(())
        }
    }
}

/// Hashes the chunks that arrived early and now follow the hashed prefix (from the page
/// cache: they were just written).
fn advance_digest(s: &mut Session, dir: &Path) -> Result<(), StoreError> {
    let plan = s.meta.plan;
    loop {
        let hashed = s.digest.hashed();
        if hashed >= plan.file_size || !hashed.is_multiple_of(plan.chunk_size) {
            return Ok(());
        }
        let next = (hashed / plan.chunk_size) as u32;
        if !s.received.contains(next) && !s.pending.contains(&next) {
            return Ok(());
        }
        let end = hashed + plan.chunk_len(next).unwrap_or(0);
        data_file(s, dir)?;
        let Session { data, digest, .. } = s;
        let file = data.as_ref().expect("opened above");
        digest
            .update_from_file(file, end)
            .map_err(io_err("reading data.part"))?;
    }
}

/// Finishes the running hashes (reading whatever was not hashed yet) and compares them with
/// the declared ones. The running state is spent either way; a later attempt starts over.
fn verify_hashes(s: &mut Session, dir: &Path) -> Result<(), StoreError> {
    let mut digest = std::mem::replace(&mut s.digest, new_digest(&s.meta));
    let size = s.meta.plan.file_size;
    digest
        .update_from_file(data_file(s, dir)?, size)
        .map_err(io_err("reading data.part"))?;
    let computed = digest.finish();
    if let Some(algorithm) = s.meta.declared().mismatch(&computed) {
        return Err(StoreError::HashMismatch { algorithm });
    }
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Rebuilds a session from its directory.
fn load_session(dir: &Path, task_id: TaskId) -> Result<Session, StoreError> {
    let bytes = fs::read(dir.join(META)).map_err(io_err("reading meta.json"))?;
    let mut meta: Meta = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("meta.json: {e}")))?;
    if meta.task_id != task_id {
        return Err(StoreError::Corrupt("meta.json names another task".into()));
    }
    let mut received = ReceivedSet::new(meta.plan.total_chunks);
    let mut log_len = 0;
    let data_path = dir.join(DATA);
    if meta.status == UploadStatus::Uploading && !data_path.exists() {
        if dir.join(audio_name(&meta)).exists() {
            // Crashed between the verified rename and the meta update.
            set_meta_status(dir, &mut meta, UploadStatus::Uploaded)?;
        } else {
            return Err(StoreError::Corrupt("data.part is missing".into()));
        }
    }
    if meta.status == UploadStatus::Transcribing {
        // The transcription died with the previous process; queue it again.
        set_meta_status(dir, &mut meta, UploadStatus::Uploaded)?;
    }
    if meta.status == UploadStatus::Uploading {
        let len = fs::metadata(&data_path)
            .map_err(io_err("reading data.part"))?
            .len();
        if len != meta.plan.file_size {
            return Err(StoreError::Corrupt(format!(
                "data.part has {len} bytes, expected {}",
                meta.plan.file_size
            )));
        }
        log_len = replay_log(&dir.join(LOG), &mut received)?;
    } else {
        for i in 0..meta.plan.total_chunks {
            let _ = received.insert(i);
        }
    }
    let updated = UNIX_EPOCH + Duration::from_secs(meta.updated_at);
    let last_activity = modified(&dir.join(LOG)).map_or(updated, |m| m.max(updated));
    Ok(Session {
        digest: new_digest(&meta),
        meta,
        received,
        pending: Vec::new(),
        data: None,
        log: None,
        log_len,
        last_activity,
        removed: false,
    })
}

fn set_meta_status(dir: &Path, meta: &mut Meta, status: UploadStatus) -> Result<(), StoreError> {
    meta.status = status;
    meta.updated_at = unix_secs(SystemTime::now());
    write_meta(dir, meta)
}

/// Reads received.log into `received`, cutting a torn trailing entry. Returns the log's
/// whole-entry length. Reads in blocks; the log is at most 4 bytes per chunk.
fn replay_log(path: &Path, received: &mut ReceivedSet) -> Result<u64, StoreError> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            File::create(path).map_err(io_err("creating received.log"))?;
            return Ok(0);
        }
        Err(e) => return Err(io_err("opening received.log")(e)),
    };
    let len = file
        .metadata()
        .map_err(io_err("reading received.log"))?
        .len();
    let whole = len - len % LOG_ENTRY;
    if whole != len {
        warn!(path = %path.display(), "cutting a torn entry off received.log");
        file.set_len(whole)
            .and_then(|()| file.sync_data())
            .map_err(io_err("truncating received.log"))?;
    }
    let mut reader = io::BufReader::new(file.take(whole));
    let mut entry = [0u8; LOG_ENTRY as usize];
    loop {
        match reader.read_exact(&mut entry) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err("reading received.log")(e)),
        }
        let index = u32::from_le_bytes(entry);
        if received.insert(index).is_err() {
            warn!(index, "ignoring out-of-range entry in received.log");
        }
    }
    Ok(whole)
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
