//! The upload store on one data directory: the map of sessions, the disk quota (overall, per
//! client, and the file system's free space) and the sweep of idle sessions; the local
//! implementation of [`UploadStorage`].
//!
//! How it keeps the interface's promises here: `sync` is one fdatasync of `data.part`, then
//! one append + fdatasync of `received.log`, for all the chunks written since; `finalize`
//! hashes only what the running hash has not seen, reading it in blocks; an incomplete upload
//! idle past the reservation TTL holds only the bytes it has, and takes its full size back
//! (if there is room) with its next chunk; a disk that fills up while writing removes the
//! upload, so what it took is free again.
//!
//! `UploadStore` is `Send + Sync`: a map lock guards the set of sessions and each session has
//! its own mutex, so different uploads proceed in parallel and calls on one upload are
//! serialised. Quota sums read per-session atomics, never another session's lock.
//!
//! This module must NOT do a session's file I/O itself (that is [`super::session`], under the
//! session's lock) and must NOT hold the map lock during any file I/O on a session, except
//! create and remove, which touch only their own directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{debug, warn};

use super::schema::{Meta, UploadStatus};
use super::session::Session;
use super::syncer::Syncer;
use super::{io_err, recovery, NewUpload, Progress, StoreError, UploadStorage};
use crate::domain::TaskId;
use crate::upload::digest::FileHashes;
use crate::upload::plan::{ChunkPlan, Insert, ReceivedSet};

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

/// Bytes available to this (unprivileged) process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
}

/// A session in the map: what the quota needs to know, readable without locking the session
/// (quota sums run while another session's lock is held), and the session itself.
pub(super) struct Entry {
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
    pub(super) state: Mutex<Session>,
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
    /// Threads that sync a seed-path chunk while `put_chunk` hashes it.
    syncer: Syncer,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl UploadStore {
    /// Opens (creating if needed) the store under `data_dir` and loads every session.
    /// Broken sessions are logged and skipped, never deleted; torn creates are cleaned up.
    pub fn open(data_dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let root = data_dir.join("uploads");
        std::fs::create_dir_all(&root).map_err(io_err("creating the uploads directory"))?;
        let sessions: HashMap<_, _> = recovery::load_all(&root)?
            .into_iter()
            .map(|s| (s.meta.task_id, Arc::new(Entry::new(s))))
            .collect();
        debug!(count = sessions.len(), "loaded upload sessions");
        Ok(UploadStore {
            root,
            config,
            sessions: RwLock::new(sessions),
            reserving: Mutex::new(()),
            syncer: Syncer::new(),
        })
    }

    pub(super) fn entry(&self, task_id: TaskId) -> Result<Arc<Entry>, StoreError> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.get(&task_id).cloned().ok_or(StoreError::NotFound)
    }

    /// Runs `f` on the live session `task_id`, then publishes its state for quota sums.
    fn with_session<T>(
        &self,
        task_id: TaskId,
        f: impl FnOnce(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let entry = self.entry(task_id)?;
        let mut session = lock(&entry.state);
        if session.removed {
            return Err(StoreError::NotFound);
        }
        let result = f(&mut session);
        entry.publish(&session);
        result
    }

    /// Runs a write on a session that is receiving chunks: an upload whose reservation lapsed
    /// takes it back first (or is refused, if the room went to others meanwhile). A full disk
    /// removes the upload, freeing what it took; the caller answers `quota_exceeded`.
    fn with_receiving<T>(
        &self,
        task_id: TaskId,
        f: impl FnOnce(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let entry = self.entry(task_id)?;
        let result = self.with_session(task_id, |s| {
            let now = SystemTime::now();
            if entry.lapsed(unix_ms(now), self.config.reservation_ttl) {
                self.reclaim(task_id, &entry)?;
            }
            f(s)
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

    /// Deletes a session and its files.
    pub fn remove(&self, task_id: TaskId) -> Result<(), StoreError> {
        let entry = {
            let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            map.remove(&task_id).ok_or(StoreError::NotFound)?
        };
        let result = lock(&entry.state).remove();
        result
    }

    /// [`sweep`](UploadStorage::sweep) as if the time were `now`.
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

impl UploadStorage for UploadStore {
    fn create(&self, new: NewUpload) -> Result<TaskId, StoreError> {
        let task_id = TaskId::new_v4();
        let now = SystemTime::now();
        let meta = Meta::new(task_id, new, now);
        // Held across the check and the insert so two creates cannot both squeeze in.
        let _reserving = lock(&self.reserving);
        let size = meta.plan.file_size;
        self.check_room(None, &meta.client, size, size)?;
        let session = Session::create(&self.root, meta, now)?;
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        map.insert(task_id, Arc::new(Entry::new(session)));
        debug!(%task_id, "created upload session");
        Ok(task_id)
    }

    fn write_chunk(&self, task_id: TaskId, index: u32, data: Bytes) -> Result<Insert, StoreError> {
        self.with_receiving(task_id, |s| s.write(index, &data))
    }

    fn sync(&self, task_id: TaskId) -> Result<Progress, StoreError> {
        self.with_receiving(task_id, |s| {
            s.commit()?;
            Ok(s.acked())
        })
    }

    fn put_chunk(
        &self,
        task_id: TaskId,
        index: u32,
        data: Bytes,
    ) -> Result<(Insert, Progress), StoreError> {
        self.with_receiving(task_id, |s| {
            Ok((s.put(index, &data, &self.syncer)?, s.acked()))
        })
    }

    fn progress(&self, task_id: TaskId, missing_limit: usize) -> Result<Progress, StoreError> {
        self.with_session(task_id, |s| Ok(s.progress(missing_limit)))
    }

    fn meta(&self, task_id: TaskId) -> Result<Meta, StoreError> {
        self.with_session(task_id, |s| Ok(s.meta.clone()))
    }

    fn declare_hashes(
        &self,
        task_id: TaskId,
        hashes: FileHashes,
    ) -> Result<Option<Progress>, StoreError> {
        self.with_session(task_id, |s| s.declare_hashes(hashes))
    }

    fn finalize(&self, task_id: TaskId) -> Result<PathBuf, StoreError> {
        self.with_session(task_id, Session::finalize)
    }

    fn audio_path(&self, task_id: TaskId) -> Result<PathBuf, StoreError> {
        self.with_session(task_id, |s| s.audio_path())
    }

    fn set_status(
        &self,
        task_id: TaskId,
        status: UploadStatus,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.with_session(task_id, |s| s.set_status(status, error))
    }

    fn list(&self) -> Vec<(TaskId, UploadStatus)> {
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

    fn sweep(&self, ttl: Duration) -> Vec<TaskId> {
        self.sweep_at(ttl, SystemTime::now())
    }

    fn check_quota(&self, client: &str, file_size: u64) -> Result<(), StoreError> {
        let _reserving = lock(&self.reserving);
        self.check_room(None, client, file_size, file_size)
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
