//! Opening the store after a restart or a crash: every session directory is read back into a
//! [`Session`], finishing or undoing what a crash interrupted.
//!
//! - A directory still named `.tmp-…` is a create that never completed (nothing was
//!   acknowledged): it is removed.
//! - `received.log` is replayed; a torn last entry is cut off, out-of-range entries ignored.
//! - A crash between the verified rename and the meta update is completed (`Uploaded`).
//! - A transcription cut off by the restart goes back to `Uploaded`, to be queued again.
//!
//! This module must NOT delete a session it cannot read (it is logged and skipped, so a
//! person can look at it), must NOT trust a log entry beyond the plan, and must NOT read
//! `data.part` itself: whatever was not hashed is hashed when the upload is verified.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::schema::{self, unix_secs, Meta, UploadStatus, META};
use super::session::{audio_name, write_meta, Session, DATA, LOG, LOG_ENTRY, TMP_PREFIX};
use super::{io_err, StoreError};
use crate::domain::TaskId;
use crate::upload::plan::ReceivedSet;

/// Every readable session under `root` (the uploads directory). Torn creates are removed;
/// unreadable sessions are logged and left where they are.
pub(super) fn load_all(root: &Path) -> Result<Vec<Session>, StoreError> {
    let mut sessions = Vec::new();
    for entry in fs::read_dir(root).map_err(io_err("listing the uploads directory"))? {
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
        match load(root, &entry.path(), task_id) {
            Ok(session) => sessions.push(session),
            Err(e) => warn!(%task_id, error = %e, "skipping unreadable upload session"),
        }
    }
    Ok(sessions)
}

/// Rebuilds a session from its directory `dir` (named after `task_id`, under `root`).
fn load(root: &Path, dir: &Path, task_id: TaskId) -> Result<Session, StoreError> {
    let bytes = fs::read(dir.join(META)).map_err(io_err("reading meta.json"))?;
    let mut meta = schema::decode(&bytes)?;
    if meta.task_id != task_id {
        return Err(StoreError::Corrupt("meta.json names another task".into()));
    }
    let mut received = ReceivedSet::new(meta.plan.total_chunks);
    let mut log_len = 0;
    let data_path = dir.join(DATA);
    if meta.status == UploadStatus::Uploading && !data_path.exists() {
        if dir.join(audio_name(&meta)).exists() {
            // Crashed between the verified rename and the meta update.
            set_status(dir, &mut meta, UploadStatus::Uploaded)?;
        } else {
            return Err(StoreError::Corrupt("data.part is missing".into()));
        }
    }
    if meta.status == UploadStatus::Transcribing {
        // The transcription died with the previous process; queue it again.
        set_status(dir, &mut meta, UploadStatus::Uploaded)?;
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
    let dir = root.join(task_id.to_string());
    Ok(Session::new(dir, meta, received, log_len, last_activity))
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn set_status(dir: &Path, meta: &mut Meta, status: UploadStatus) -> Result<(), StoreError> {
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
