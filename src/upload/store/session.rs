//! One upload on disk, and the order in which its writes reach the disk.
//!
//! ```text
//! uploads/<task_id>/meta.json      the request, plan, status, times (rewritten atomically)
//! uploads/<task_id>/data.part      file_size bytes; chunk i written at i * chunk_size
//! uploads/<task_id>/received.log   append-only chunk indices, u32 LE, one per stored chunk
//! uploads/<task_id>/audio[.ext]    data.part after it was verified (finalise renames it)
//! ```
//!
//! Durability rule: a chunk counts as received only once its bytes are in `data.part` AND its
//! index is in `received.log`, both fdatasync'ed, data first ([`Session::commit`]). A crash
//! can therefore lose unacknowledged chunks but never claim a chunk whose bytes are missing.
//! `meta.json` is replaced by temp file, fsync, rename, fsync of the directory; a session is
//! created the same way, as a whole directory. The whole-file hashes run as chunks arrive, so
//! verifying a finished upload reads back only what was never hashed.
//!
//! Every method runs under the upload's own lock, held by the caller. This module must NOT
//! look at other uploads or decide quotas (the store's map does), must NOT acknowledge
//! anything itself, and must NOT read a whole file into memory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::schema::{self, unix_secs, Meta, UploadStatus, META};
use super::syncer::Syncer;
use super::{io_err, Progress, StoreError};
use crate::upload::digest::{FileHashes, HashKinds, RunningDigest};
use crate::upload::plan::{Insert, ReceivedSet};
use crate::upload::MAX_MISSING_LISTED;

/// The file chunks are written into until the upload is verified.
pub(super) const DATA: &str = "data.part";
/// The append-only list of durably stored chunks.
pub(super) const LOG: &str = "received.log";
/// Prefix of a session directory still being created (removed at open if a crash left it).
pub(super) const TMP_PREFIX: &str = ".tmp-";
/// Bytes per received-log entry (a u32 chunk index).
pub(super) const LOG_ENTRY: u64 = 4;

/// One upload's in-memory state, mirroring its directory.
pub(super) struct Session {
    /// The session's directory, `uploads/<task_id>`.
    pub(super) dir: PathBuf,
    /// Mirror of meta.json.
    pub(super) meta: Meta,
    /// Chunks durably stored (data and log entry synced).
    pub(super) received: ReceivedSet,
    /// Chunks written to data.part but not yet synced; acked only after [`Session::commit`].
    pending: Vec<u32>,
    /// Open handle on data.part, opened on first write (keeps idle sessions fd-free); shared
    /// with a sync thread while it syncs the file.
    data: Option<Arc<File>>,
    /// Open append handle on received.log, opened on first sync.
    log: Option<File>,
    /// Length of received.log known to hold whole, synced entries; a failed append is cut
    /// back to it so entries never misalign.
    log_len: u64,
    /// Last time anything happened; `sweep` expires sessions idle past the TTL.
    pub(super) last_activity: SystemTime,
    /// Set when the session was removed while a caller still held it.
    pub(super) removed: bool,
    /// The declared whole-file hashes over the file's leading bytes, advanced as chunks
    /// arrive so completing the upload reads back only what was never hashed.
    digest: RunningDigest,
}

impl Session {
    /// A session as loaded or just created: nothing pending, no file open, nothing hashed.
    pub(super) fn new(
        dir: PathBuf,
        meta: Meta,
        received: ReceivedSet,
        log_len: u64,
        last_activity: SystemTime,
    ) -> Self {
        Session {
            dir,
            digest: new_digest(&meta),
            meta,
            received,
            pending: Vec::new(),
            data: None,
            log: None,
            log_len,
            last_activity,
            removed: false,
        }
    }

    /// Creates the session's directory under `root`, durably and all at once: a temp
    /// directory with a reserved `data.part`, an empty log and the meta, renamed into place.
    pub(super) fn create(root: &Path, meta: Meta, now: SystemTime) -> Result<Self, StoreError> {
        let task_id = meta.task_id;
        let tmp = root.join(format!("{TMP_PREFIX}{task_id}"));
        if let Err(e) = create_dir(&tmp, &meta) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let dir = root.join(task_id.to_string());
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err("publishing a session")(e));
        }
        fsync_dir(root)?;
        let received = ReceivedSet::new(meta.plan.total_chunks);
        Ok(Session::new(dir, meta, received, 0, now))
    }

    /// Writes chunk `index` at its offset and hashes it if it continues the hashed prefix; not
    /// yet durable (see [`commit`](Self::commit)). `Duplicate` if it is stored or pending
    /// already, and then nothing is written.
    pub(super) fn write(&mut self, index: u32, data: &[u8]) -> Result<Insert, StoreError> {
        let insert = self.write_at(index, data)?;
        if insert == Insert::New && self.continues_digest(index) {
            self.digest.update(data);
            self.advance_digest()?;
        }
        Ok(insert)
    }

    /// [`write`](Self::write) and [`commit`](Self::commit) in one, for the seed path's
    /// per-chunk ack: a chunk that continues the running hash is hashed (CPU) while its bytes
    /// are synced (disk) on one of `syncer`'s threads; the log is written after that sync, as
    /// in `commit`. With no thread free, or nothing to hash now, it is write then commit.
    pub(super) fn put(
        &mut self,
        index: u32,
        data: &[u8],
        syncer: &Syncer,
    ) -> Result<Insert, StoreError> {
        let insert = self.write_at(index, data)?;
        if insert == Insert::New && self.continues_digest(index) {
            self.data_file()?;
            let syncing = syncer.start(Arc::clone(self.data.as_ref().expect("opened above")));
            self.digest.update(data);
            if let Some(syncing) = syncing {
                syncing.wait().map_err(io_err("syncing data.part"))?;
                self.append_log()?;
            }
        }
        self.commit()?;
        self.advance_digest()?;
        Ok(insert)
    }

    /// Makes every pending chunk durable: one fdatasync of the data, then one append +
    /// fdatasync of the log. Data first: after a crash the log never names a chunk whose bytes
    /// are not on disk.
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.data_file()?
            .sync_data()
            .map_err(io_err("syncing data.part"))?;
        self.append_log()
    }

    /// Appends the pending chunks to the log and syncs it, making them received. Only after
    /// their bytes in `data.part` were synced.
    fn append_log(&mut self) -> Result<(), StoreError> {
        let entries: Vec<u8> = self.pending.iter().flat_map(|i| i.to_le_bytes()).collect();
        let good_len = self.log_len;
        let log = self.log_file()?;
        let appended = log.write_all(&entries).and_then(|()| log.sync_data());
        if let Err(e) = appended {
            // Cut a partial append back so later entries stay aligned.
            let _ = log.set_len(good_len);
            return Err(io_err("appending to received.log")(e));
        }
        self.log_len += entries.len() as u64;
        for index in self.pending.drain(..) {
            // Indices were range-checked on write.
            let _ = self.received.insert(index);
        }
        self.last_activity = SystemTime::now();
        Ok(())
    }

    /// Where the upload stands, listing the gaps below the highest stored chunk (capped):
    /// what a pipelined sender must resend.
    pub(super) fn acked(&self) -> Progress {
        Progress::new(&self.received, self.received.gaps(MAX_MISSING_LISTED))
    }

    /// Where the upload stands, listing up to `missing_limit` missing chunks.
    pub(super) fn progress(&self, missing_limit: usize) -> Progress {
        Progress::new(&self.received, self.received.missing(missing_limit))
    }

    /// Verifies the assembled file against the declared hashes, then renames `data.part` to
    /// `audio[.ext]` and marks the session `Uploaded`. Returns the audio path. Idempotent
    /// once uploaded. On a hash mismatch nothing is deleted; the reason goes into the meta.
    pub(super) fn finalize(&mut self) -> Result<PathBuf, StoreError> {
        if self.meta.status != UploadStatus::Uploading {
            return Ok(self.audio());
        }
        self.commit()?;
        if !self.received.is_complete() {
            return Err(StoreError::Incomplete {
                missing: self.received.total() - self.received.count(),
            });
        }
        if self.meta.declared().kinds().is_empty() {
            return Err(StoreError::AwaitingHash);
        }
        if let Err(e) = self.verify_hashes() {
            if matches!(e, StoreError::HashMismatch { .. }) {
                self.meta.error = Some(e.to_string());
                self.meta.updated_at = unix_secs(SystemTime::now());
                write_meta(&self.dir, &self.meta)?;
            }
            return Err(e);
        }
        self.data = None;
        self.log = None;
        let audio = self.audio();
        fs::rename(self.dir.join(DATA), &audio).map_err(io_err("renaming the upload"))?;
        fsync_dir(&self.dir)?;
        self.set_status(UploadStatus::Uploaded, None)?;
        let _ = fs::remove_file(self.dir.join(LOG));
        Ok(audio)
    }

    /// Records hashes declared after the chunks; see `UploadStorage::declare_hashes`.
    pub(super) fn declare_hashes(
        &mut self,
        hashes: FileHashes,
    ) -> Result<Option<Progress>, StoreError> {
        let mut meta = self.meta.clone();
        meta.declare(hashes)?;
        if self.meta.status != UploadStatus::Uploading {
            // Verified already; the same hashes again are a late duplicate.
            return match meta == self.meta {
                true => Ok(None),
                false => Err(StoreError::WrongState {
                    status: self.meta.status,
                    needed: "uploading",
                }),
            };
        }
        if meta != self.meta {
            meta.updated_at = unix_secs(SystemTime::now());
            write_meta(&self.dir, &meta)?;
            if !self.digest.computes(meta.declared().kinds()) {
                self.digest = RunningDigest::new(meta.declared().kinds());
            }
            self.meta = meta;
        }
        Ok(Some(self.acked()))
    }

    /// Path of the verified audio file (status `Uploaded` or later).
    pub(super) fn audio_path(&self) -> Result<PathBuf, StoreError> {
        if self.meta.status == UploadStatus::Uploading {
            return Err(StoreError::WrongState {
                status: self.meta.status,
                needed: "uploaded",
            });
        }
        Ok(self.audio())
    }

    /// Records a status change (and the failure, if any) in the meta, durably.
    pub(super) fn set_status(
        &mut self,
        status: UploadStatus,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let mut meta = self.meta.clone();
        meta.status = status;
        meta.error = error;
        meta.updated_at = unix_secs(now);
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        self.last_activity = now;
        Ok(())
    }

    /// Deletes the session's files; later calls on it find it removed.
    pub(super) fn remove(&mut self) -> Result<(), StoreError> {
        self.removed = true;
        self.data = None;
        self.log = None;
        fs::remove_dir_all(&self.dir).map_err(io_err("removing a session"))
    }

    /// Bytes of the file's start already in the running hashes.
    #[cfg(test)]
    pub(super) fn hashed(&self) -> u64 {
        self.digest.hashed()
    }

    fn audio(&self) -> PathBuf {
        self.dir.join(audio_name(&self.meta))
    }

    /// Writes a chunk at its offset, not yet durable nor hashed; `Duplicate` if it is stored
    /// or pending already.
    fn write_at(&mut self, index: u32, data: &[u8]) -> Result<Insert, StoreError> {
        if self.meta.status != UploadStatus::Uploading {
            return Err(StoreError::WrongState {
                status: self.meta.status,
                needed: "uploading",
            });
        }
        self.meta.plan.check_chunk(index, data.len() as u64)?;
        if self.received.contains(index) || self.pending.contains(&index) {
            return Ok(Insert::Duplicate);
        }
        let offset = self.meta.plan.chunk_offset(index).unwrap_or(0);
        self.data_file()?
            .write_all_at(data, offset)
            .map_err(io_err("writing a chunk"))?;
        self.pending.push(index);
        self.last_activity = SystemTime::now();
        Ok(Insert::New)
    }

    fn data_file(&mut self) -> Result<&File, StoreError> {
        if self.data.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(DATA))
                .map_err(io_err("opening data.part"))?;
            self.data = Some(Arc::new(f));
        }
        Ok(self.data.as_deref().expect("just opened"))
    }

    fn log_file(&mut self) -> Result<&mut File, StoreError> {
        if self.log.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .open(self.dir.join(LOG))
                .map_err(io_err("opening received.log"))?;
            self.log = Some(f);
        }
        Ok(self.log.as_mut().expect("just opened"))
    }

    /// Whether chunk `index` starts right where the running hash stops.
    fn continues_digest(&self, index: u32) -> bool {
        self.meta.plan.chunk_offset(index) == Some(self.digest.hashed())
    }

    /// Hashes the chunks that arrived early and now follow the hashed prefix.
    fn advance_digest(&mut self) -> Result<(), StoreError> {
        let plan = self.meta.plan;
        self.data_file()?;
        let file = self.data.as_deref().expect("opened above");
        let (received, pending) = (&self.received, &self.pending);
        self.digest
            .catch_up(file, &plan, |i| {
                received.contains(i) || pending.contains(&i)
            })
            .map_err(io_err("reading data.part"))
    }

    /// Finishes the running hashes (reading whatever was not hashed yet) and compares them
    /// with the declared ones. The running state is spent either way; a later attempt starts
    /// over.
    fn verify_hashes(&mut self) -> Result<(), StoreError> {
        let mut digest = std::mem::replace(&mut self.digest, new_digest(&self.meta));
        let size = self.meta.plan.file_size;
        digest
            .update_from_file(self.data_file()?, size)
            .map_err(io_err("reading data.part"))?;
        let computed = digest.finish();
        if let Some(algorithm) = self.meta.declared().mismatch(&computed) {
            return Err(StoreError::HashMismatch { algorithm });
        }
        Ok(())
    }
}

/// Name of the verified file: `audio.<ext>`, or `audio` without a known extension.
pub(super) fn audio_name(meta: &Meta) -> String {
    match &meta.extension {
        Some(ext) => format!("audio.{ext}"),
        None => "audio".to_string(),
    }
}

/// Replaces the meta in `dir` atomically.
pub(super) fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    write_atomic(dir, META, &schema::encode(meta)?)
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

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing a directory"))
}

/// Fills a new session directory: `data.part` reserved at the file size, an empty log, the
/// meta; each synced.
fn create_dir(tmp: &Path, meta: &Meta) -> Result<(), StoreError> {
    fs::create_dir(tmp).map_err(io_err("creating a session directory"))?;
    let data = File::create(tmp.join(DATA)).map_err(io_err("creating data.part"))?;
    data.set_len(meta.plan.file_size)
        .map_err(io_err("reserving data.part"))?;
    data.sync_all().map_err(io_err("syncing data.part"))?;
    let log = File::create(tmp.join(LOG)).map_err(io_err("creating received.log"))?;
    log.sync_all().map_err(io_err("syncing received.log"))?;
    write_meta(tmp, meta)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::TaskId;
    use crate::upload::plan::ChunkPlan;
    use crate::upload::store::NewUpload;

    /// Waits until `syncer` has a thread free (probing with a sync of `probe`).
    fn until_a_thread_waits(syncer: &Syncer, probe: &Arc<File>) {
        let taken = (0..1000).find_map(|_| {
            std::thread::sleep(Duration::from_millis(1));
            syncer.start(Arc::clone(probe))
        });
        taken.expect("a sync thread is free").wait().unwrap();
        std::thread::sleep(Duration::from_millis(5)); // back to waiting
    }

    #[test]
    fn put_hashes_while_a_thread_syncs_then_logs() {
        let root = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let plan = ChunkPlan::new(2500, 1000, 3, &Default::default()).unwrap();
        let new = NewUpload {
            file_name: "a.bin".into(),
            extension: None,
            plan,
            hashes: FileHashes {
                blake3: Some(blake3::hash(&data).to_hex().to_string()),
                ..Default::default()
            },
            transport: Default::default(),
            options: Default::default(),
            owner: None,
            client: String::new(),
        };
        let now = SystemTime::now();
        let meta = Meta::new(TaskId::new_v4(), new, now);
        let mut s = Session::create(root.path(), meta, now).unwrap();
        let syncer = Syncer::new();
        let probe = Arc::new(File::create(root.path().join("probe")).unwrap());
        for (i, piece) in data.chunks(1000).enumerate() {
            until_a_thread_waits(&syncer, &probe);
            assert_eq!(s.put(i as u32, piece, &syncer).unwrap(), Insert::New);
            assert_eq!(s.hashed(), ((i as u64 + 1) * 1000).min(2500));
            assert_eq!(s.acked().received_chunks, i as u32 + 1);
        }
        let log = fs::read(s.dir.join(LOG)).unwrap();
        assert_eq!(log, [0u32, 1, 2].map(u32::to_le_bytes).concat());
        assert_eq!(
            s.put(1, &data[1000..2000], &syncer).unwrap(),
            Insert::Duplicate
        );
        assert_eq!(fs::read(s.finalize().unwrap()).unwrap(), data);
    }
}
