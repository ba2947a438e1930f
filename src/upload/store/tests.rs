//! Tests for the durable upload store, on real files in temp directories.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::local::lock;
use super::schema::{META, V1_META};
use super::session::{DATA, LOG, TMP_PREFIX};
use super::*;
use crate::domain::TaskId;
use crate::upload::plan::Insert;
use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};

const CHUNK: u64 = 1000;

/// Deterministic file contents that differ per byte position.
fn file_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn new_upload(data: &[u8]) -> NewUpload {
    let plan = ChunkPlan::new(
        data.len() as u64,
        CHUNK,
        (data.len() as u64).div_ceil(CHUNK),
        &Default::default(),
    )
    .unwrap();
    NewUpload {
        file_name: "talk.mp3".into(),
        extension: Some("mp3".into()),
        plan,
        hashes: FileHashes {
            md5: Some(hex::encode(Md5::digest(data))),
            sha256: Some(hex::encode(Sha256::digest(data))),
            blake3: None,
        },
        transport: Transport::Binary,
        options: TaskOptions {
            language: Some("en".into()),
            translate: false,
            format: None,
            zh_script: None,
            model: None,
        },
        owner: None,
        client: "ip:127.0.0.1".into(),
    }
}

fn sha256(hex: String) -> FileHashes {
    FileHashes {
        sha256: Some(hex),
        ..Default::default()
    }
}

fn md5(data: &[u8]) -> FileHashes {
    FileHashes {
        md5: Some(hex::encode(Md5::digest(data))),
        ..Default::default()
    }
}

fn chunk(data: &[u8], i: u32) -> Bytes {
    let start = (u64::from(i) * CHUNK) as usize;
    Bytes::copy_from_slice(&data[start..(start + CHUNK as usize).min(data.len())])
}

fn open(dir: &Path) -> UploadStore {
    UploadStore::open(dir, StoreConfig::default()).unwrap()
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<UploadStore>();
}

#[test]
fn write_reopen_resume_finalize() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(4500); // 5 chunks, the last 500 bytes
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    for i in [4, 0, 2] {
        assert_eq!(
            store.write_chunk(id, i, chunk(&data, i)).unwrap(),
            Insert::New
        );
    }
    let p = store.sync(id).unwrap();
    assert_eq!((p.received_chunks, p.total_chunks), (3, 5));
    assert_eq!(p.received_through, 1);
    assert_eq!(p.missing, vec![1, 3]);
    assert!(!p.complete);
    drop(store);

    // A restart: the three synced chunks are still there.
    let store = open(tmp.path());
    let p = store.progress(id, 100).unwrap();
    assert_eq!(p.received_chunks, 3);
    assert_eq!(p.missing, vec![1, 3]);
    assert_eq!(p.progress, 60.0);
    let meta = store.meta(id).unwrap();
    assert_eq!(meta.status, UploadStatus::Uploading);
    assert_eq!(meta.options.language.as_deref(), Some("en"));
    assert_eq!(meta.transport, Transport::Binary);

    assert!(matches!(
        store.finalize(id),
        Err(StoreError::Incomplete { missing: 2 })
    ));
    for i in [1, 3] {
        let (insert, _) = store.put_chunk(id, i, chunk(&data, i)).unwrap();
        assert_eq!(insert, Insert::New);
    }
    let p = store.progress(id, 100).unwrap();
    assert!(p.complete);
    assert_eq!(p.received_through, 5);
    let audio = store.finalize(id).unwrap();
    assert_eq!(audio.file_name().unwrap(), "audio.mp3");
    assert_eq!(fs::read(&audio).unwrap(), data);
    assert_eq!(store.meta(id).unwrap().status, UploadStatus::Uploaded);
    assert_eq!(store.audio_path(id).unwrap(), audio);
    // Idempotent, and chunks after completion are refused.
    assert_eq!(store.finalize(id).unwrap(), audio);
    let e = store.write_chunk(id, 0, chunk(&data, 0)).unwrap_err();
    assert!(matches!(e, StoreError::WrongState { .. }), "{e:?}");
    drop(store);

    let store = open(tmp.path());
    assert_eq!(store.meta(id).unwrap().status, UploadStatus::Uploaded);
    assert!(store.progress(id, 10).unwrap().complete);
}

#[test]
fn unsynced_chunks_are_not_acknowledged_or_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(3000);
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    store.write_chunk(id, 0, chunk(&data, 0)).unwrap();
    store.write_chunk(id, 1, chunk(&data, 1)).unwrap();
    // Pending: written but not yet durable, so not counted.
    assert_eq!(store.progress(id, 10).unwrap().received_chunks, 0);
    // A resend of a pending chunk is a duplicate, not a second write.
    assert_eq!(
        store.write_chunk(id, 1, chunk(&data, 1)).unwrap(),
        Insert::Duplicate
    );
    // Group commit: one sync makes both durable.
    let p = store.sync(id).unwrap();
    assert_eq!((p.received_chunks, p.received_through), (2, 2));
    assert!(p.missing.is_empty());
    store.write_chunk(id, 2, chunk(&data, 2)).unwrap();
    drop(store); // "crash" before syncing chunk 2

    let store = open(tmp.path());
    let p = store.progress(id, 10).unwrap();
    assert_eq!(p.received_chunks, 2);
    assert_eq!(p.missing, vec![2]);
}

#[test]
fn duplicates_and_bad_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(2500);
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    assert_eq!(
        store.put_chunk(id, 0, chunk(&data, 0)).unwrap().0,
        Insert::New
    );
    assert_eq!(
        store.put_chunk(id, 0, chunk(&data, 0)).unwrap().0,
        Insert::Duplicate
    );
    let e = store
        .write_chunk(id, 3, Bytes::from_static(b"x"))
        .unwrap_err();
    assert!(matches!(
        e,
        StoreError::Chunk(PlanError::IndexOutOfRange { .. })
    ));
    // The last chunk must be exactly 500 bytes, the others exactly 1000.
    let e = store.write_chunk(id, 2, chunk(&data, 1)).unwrap_err();
    assert!(matches!(
        e,
        StoreError::Chunk(PlanError::WrongChunkLength { .. })
    ));
    assert!(store
        .write_chunk(id, 1, Bytes::copy_from_slice(&data[..999]))
        .is_err());
    assert_eq!(store.progress(id, 10).unwrap().received_chunks, 1);
}

#[test]
fn torn_log_tail_is_cut_and_the_rest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(5000);
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    for i in [0, 1, 3] {
        store.write_chunk(id, i, chunk(&data, i)).unwrap();
    }
    store.sync(id).unwrap();
    drop(store);

    let log = tmp.path().join("uploads").join(id.to_string()).join(LOG);
    // A crash in the middle of appending the entry for chunk 2: two of its four bytes.
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&2u32.to_le_bytes()[..2]).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&log).unwrap().len(), 14);

    let store = open(tmp.path());
    assert_eq!(fs::metadata(&log).unwrap().len(), 12);
    let p = store.progress(id, 10).unwrap();
    assert_eq!(p.received_chunks, 3);
    assert_eq!(p.missing, vec![2, 4]);
    // Appending after the cut stays aligned.
    for i in [2, 4] {
        store.put_chunk(id, i, chunk(&data, i)).unwrap();
    }
    drop(store);
    let store = open(tmp.path());
    assert!(store.progress(id, 10).unwrap().complete);
    assert_eq!(fs::read(store.finalize(id).unwrap()).unwrap(), data);
}

#[test]
fn out_of_range_log_entries_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(2000);
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    store.put_chunk(id, 1, chunk(&data, 1)).unwrap();
    drop(store);
    let log = tmp.path().join("uploads").join(id.to_string()).join(LOG);
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&999u32.to_le_bytes()).unwrap();
    drop(f);
    let store = open(tmp.path());
    let p = store.progress(id, 10).unwrap();
    assert_eq!((p.received_chunks, p.missing.clone()), (1, vec![0]));
}

#[test]
fn hash_mismatch_keeps_the_data_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(2200);
    let store = open(tmp.path());
    let mut upload = new_upload(&data);
    upload.hashes.md5 = Some(hex::encode(Md5::digest(b"a different file")));
    let id = store.create(upload).unwrap();
    for i in 0..3 {
        store.write_chunk(id, i, chunk(&data, i)).unwrap();
    }
    let e = store.finalize(id).unwrap_err();
    assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
    // Asked again, it hashes the file afresh and still refuses it.
    let again = store.finalize(id).unwrap_err();
    assert!(matches!(again, StoreError::HashMismatch { .. }), "{again}");
    let dir = tmp.path().join("uploads").join(id.to_string());
    assert_eq!(fs::read(dir.join(DATA)).unwrap(), data);
    assert!(!dir.join("audio.mp3").exists());
    let meta = store.meta(id).unwrap();
    assert_eq!(meta.status, UploadStatus::Uploading);
    assert!(meta.error.unwrap().contains("MD5"));
    // The pending chunks were committed by finalise; they survive a restart.
    drop(store);
    let store = open(tmp.path());
    assert!(store.progress(id, 10).unwrap().complete);
    assert!(store.meta(id).unwrap().error.is_some());
}

#[test]
fn sha256_alone_is_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(1500);
    let store = open(tmp.path());
    let mut good = new_upload(&data);
    good.hashes.md5 = None;
    let mut bad = good.clone();
    bad.hashes.sha256 = Some("00".repeat(32));
    let good_id = store.create(good).unwrap();
    let bad_id = store.create(bad).unwrap();
    for id in [good_id, bad_id] {
        for i in 0..2 {
            store.write_chunk(id, i, chunk(&data, i)).unwrap();
        }
    }
    assert!(store.finalize(good_id).is_ok());
    let e = store.finalize(bad_id).unwrap_err();
    assert!(e.to_string().contains("file_sha256"));
}

#[test]
fn file_without_extension_is_named_audio() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(10);
    let store = open(tmp.path());
    let mut up = new_upload(&data);
    up.extension = None;
    let id = store.create(up).unwrap();
    store
        .put_chunk(id, 0, Bytes::copy_from_slice(&data))
        .unwrap();
    assert_eq!(store.finalize(id).unwrap().file_name().unwrap(), "audio");
}

#[test]
fn statuses_persist() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(100);
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    assert!(store.audio_path(id).is_err());
    store
        .put_chunk(id, 0, Bytes::copy_from_slice(&data))
        .unwrap();
    store.finalize(id).unwrap();
    store
        .set_status(id, UploadStatus::Transcribing, None)
        .unwrap();
    drop(store);

    // A transcription interrupted by a restart goes back to Uploaded.
    let store = open(tmp.path());
    assert_eq!(store.list(), vec![(id, UploadStatus::Uploaded)]);
    store.set_status(id, UploadStatus::Done, None).unwrap();
    drop(store);

    let store = open(tmp.path());
    assert_eq!(store.meta(id).unwrap().status, UploadStatus::Done);
    assert_eq!(fs::read(store.audio_path(id).unwrap()).unwrap(), data);
}

#[test]
fn sweep_removes_idle_sessions_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(100);
    let store = open(tmp.path());
    let a = store.create(new_upload(&data)).unwrap();
    let b = store.create(new_upload(&data)).unwrap();
    let busy = store.create(new_upload(&data)).unwrap();
    store
        .put_chunk(busy, 0, Bytes::copy_from_slice(&data))
        .unwrap();
    store.finalize(busy).unwrap();
    store
        .set_status(busy, UploadStatus::Transcribing, None)
        .unwrap();
    let ttl = Duration::from_secs(3600);
    assert!(store.sweep_at(ttl, SystemTime::now()).is_empty());
    let mut removed = store.sweep_at(ttl, SystemTime::now() + 2 * ttl);
    removed.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(removed, expected);
    let uploads = tmp.path().join("uploads");
    assert!(!uploads.join(a.to_string()).exists());
    assert!(uploads.join(busy.to_string()).exists());
    assert!(matches!(store.meta(a), Err(StoreError::NotFound)));
    assert_eq!(store.list(), vec![(busy, UploadStatus::Transcribing)]);
    drop(store);
    assert_eq!(open(tmp.path()).list().len(), 1);
}

#[test]
fn quota_counts_reserved_file_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = UploadStore::open(
        tmp.path(),
        StoreConfig {
            quota_bytes: 5000,
            ..Default::default()
        },
    )
    .unwrap();
    let big = file_bytes(3000);
    let a = store.create(new_upload(&big)).unwrap();
    assert_eq!(store.reserved_bytes(), 3000);
    assert!(store.check_quota("ip:127.0.0.1", 2000).is_ok());
    let e = store.create(new_upload(&big)).unwrap_err();
    assert!(matches!(
        e,
        StoreError::QuotaExceeded {
            needed: 3000,
            available: 2000
        }
    ));
    assert!(store.check_quota("ip:127.0.0.1", 2001).is_err());
    store.remove(a).unwrap();
    assert_eq!(store.reserved_bytes(), 0);
    assert!(store.create(new_upload(&big)).is_ok());
}

fn store_with(tmp: &Path, config: StoreConfig) -> UploadStore {
    UploadStore::open(tmp, config).unwrap()
}

fn upload_from(client: &str, data: &[u8]) -> NewUpload {
    NewUpload {
        client: client.into(),
        ..new_upload(data)
    }
}

#[test]
fn an_idle_upload_reserves_only_what_it_holds_until_it_takes_its_room_back() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough that a loaded machine does not let the reservation lapse between the first
    // chunk and the refused second upload (200 ms did, once, under parallel builds).
    let ttl = Duration::from_secs(1);
    let config = StoreConfig {
        quota_bytes: 5000,
        reservation_ttl: ttl,
        ..Default::default()
    };
    let store = store_with(tmp.path(), config);
    let data = file_bytes(3000);
    let idle = store.create(new_upload(&data)).unwrap();
    store.put_chunk(idle, 0, chunk(&data, 0)).unwrap();
    assert_eq!(store.reserved_bytes(), 3000);
    assert!(
        store.create(new_upload(&data)).is_err(),
        "3000 + 3000 > 5000"
    );
    std::thread::sleep(ttl * 2);
    assert_eq!(store.reserved_bytes(), 1000, "only its one stored chunk");
    let other = store.create(new_upload(&data)).unwrap();
    // The idle upload's next chunk needs its 2000 bytes back: 1000 + 3000 + 2000 > 5000.
    let e = store.put_chunk(idle, 1, chunk(&data, 1)).unwrap_err();
    assert!(matches!(e, StoreError::QuotaExceeded { .. }), "{e:?}");
    store.remove(other).unwrap();
    store.put_chunk(idle, 1, chunk(&data, 1)).unwrap();
    assert_eq!(store.reserved_bytes(), 3000);
    store.put_chunk(idle, 2, chunk(&data, 2)).unwrap();
    store.finalize(idle).unwrap();
    std::thread::sleep(ttl * 2);
    assert_eq!(
        store.reserved_bytes(),
        3000,
        "a finished file's bytes stay reserved"
    );
}

#[test]
fn one_client_cannot_take_the_whole_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        quota_bytes: 10_000,
        client_quota_bytes: 5000,
        ..Default::default()
    };
    let store = store_with(tmp.path(), config);
    let data = file_bytes(3000);
    store.create(upload_from("key:a", &data)).unwrap();
    let e = store.create(upload_from("key:a", &data)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::ClientQuotaExceeded {
                needed: 3000,
                available: 2000
            }
        ),
        "{e:?}"
    );
    store.create(upload_from("key:b", &data)).unwrap();
    store.create(upload_from("ip:10.0.0.1", &data)).unwrap();
}

/// An upload of `size` bytes in 4 MiB chunks (nothing is written by creating it).
fn sized_upload(size: u64) -> NewUpload {
    let chunk = 4 << 20;
    let plan = ChunkPlan::new(size, chunk, size.div_ceil(chunk), &Default::default()).unwrap();
    NewUpload {
        plan,
        ..new_upload(b"x")
    }
}

#[test]
fn uploads_are_refused_when_the_disk_would_fall_below_its_floor() {
    let tmp = tempfile::tempdir().unwrap();
    let free = free_bytes(tmp.path()).unwrap();
    assert!(free > 2 << 30, "the test needs 2 GiB free in the temp dir");
    // 1 GiB may still be used: one 600 MiB upload fits, a second does not (its bytes are not
    // written yet, but the first upload still needs its own).
    let config = StoreConfig {
        quota_bytes: u64::MAX,
        min_free_bytes: free - (1 << 30),
        ..Default::default()
    };
    let store = store_with(tmp.path(), config);
    let first = store.create(sized_upload(600 << 20)).unwrap();
    let e = store.create(sized_upload(600 << 20)).unwrap_err();
    assert!(matches!(e, StoreError::DiskFull), "{e:?}");
    store.remove(first).unwrap();
    store.create(sized_upload(600 << 20)).unwrap();
}

#[test]
fn unknown_ids_and_odd_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let uploads = tmp.path().join("uploads");
    fs::create_dir_all(uploads.join("not-a-task")).unwrap();
    fs::create_dir_all(uploads.join(format!("{TMP_PREFIX}{}", TaskId::new_v4()))).unwrap();
    // A session directory with a corrupt meta is skipped, not deleted.
    let broken = TaskId::new_v4();
    fs::create_dir_all(uploads.join(broken.to_string())).unwrap();
    fs::write(uploads.join(broken.to_string()).join(META), b"{nope").unwrap();

    let store = open(tmp.path());
    assert!(store.list().is_empty());
    assert!(uploads.join("not-a-task").exists());
    assert!(uploads.join(broken.to_string()).exists());
    let leftovers: Vec<_> = fs::read_dir(&uploads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TMP_PREFIX))
        .collect();
    assert!(leftovers.is_empty());
    let missing = TaskId::new_v4();
    let e = store.progress(missing, 1).unwrap_err();
    assert!(matches!(e, StoreError::NotFound), "{e:?}");
    assert!(store
        .write_chunk(missing, 0, Bytes::from_static(b"x"))
        .is_err());
    assert!(matches!(store.remove(missing), Err(StoreError::NotFound)));
}

#[test]
fn crash_between_rename_and_meta_update_recovers_as_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(100);
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    store
        .put_chunk(id, 0, Bytes::copy_from_slice(&data))
        .unwrap();
    drop(store);
    let dir = tmp.path().join("uploads").join(id.to_string());
    fs::rename(dir.join(DATA), dir.join("audio.mp3")).unwrap();
    let store = open(tmp.path());
    assert_eq!(store.meta(id).unwrap().status, UploadStatus::Uploaded);
    assert_eq!(fs::read(store.audio_path(id).unwrap()).unwrap(), data);
}

#[test]
fn concurrent_writers_on_one_session() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(40_000); // 40 chunks
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let (store, data) = (&store, &data);
            scope.spawn(move || {
                for i in (t..40).step_by(4) {
                    store.write_chunk(id, i, chunk(data, i)).unwrap();
                    if i % 3 == 0 {
                        store.sync(id).unwrap();
                    }
                }
            });
        }
    });
    assert!(store.sync(id).unwrap().complete);
    assert_eq!(fs::read(store.finalize(id).unwrap()).unwrap(), data);
}

#[test]
fn chunks_are_hashed_as_they_arrive_even_out_of_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(4500);
    let store = open(tmp.path());
    let id = store.create(new_upload(&data)).unwrap();
    let hashed = |store: &UploadStore| lock(&store.entry(id).unwrap().state).hashed();
    for i in [1, 2] {
        store.write_chunk(id, i, chunk(&data, i)).unwrap();
    }
    assert_eq!(hashed(&store), 0, "a gap at the start: nothing hashed yet");
    store.write_chunk(id, 0, chunk(&data, 0)).unwrap();
    assert_eq!(hashed(&store), 3000, "chunk 0 and the early ones after it");
    store.sync(id).unwrap();
    store.write_chunk(id, 4, chunk(&data, 4)).unwrap();
    assert_eq!(hashed(&store), 3000);
    store.write_chunk(id, 3, chunk(&data, 3)).unwrap();
    assert_eq!(
        hashed(&store),
        4500,
        "the whole file, without reading it back"
    );
    store.sync(id).unwrap();
    assert_eq!(fs::read(store.finalize(id).unwrap()).unwrap(), data);
}

#[test]
fn a_hash_declared_after_the_chunks_completes_the_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(2500);
    let store = open(tmp.path());
    let mut upload = new_upload(&data);
    upload.hashes.md5 = None;
    upload.hashes.sha256 = None;
    let id = store.create(upload).unwrap();
    for i in 0..3 {
        store.write_chunk(id, i, chunk(&data, i)).unwrap();
    }
    assert!(store.sync(id).unwrap().complete);
    assert!(matches!(store.finalize(id), Err(StoreError::AwaitingHash)));
    let sha = hex::encode(Sha256::digest(&data));
    let progress = store.declare_hashes(id, sha256(sha.clone())).unwrap();
    assert!(progress.unwrap().complete);
    // The same value again is fine; another one is refused.
    store.declare_hashes(id, sha256(sha.clone())).unwrap();
    let other = hex::encode(Sha256::digest(b"other"));
    let e = store.declare_hashes(id, sha256(other)).unwrap_err();
    assert!(matches!(e, StoreError::HashConflict { .. }), "{e:?}");
    // The declaration survives a restart.
    drop(store);
    let store = open(tmp.path());
    assert_eq!(store.meta(id).unwrap().file_sha256, Some(sha.clone()));
    assert_eq!(fs::read(store.finalize(id).unwrap()).unwrap(), data);
    // Once verified, the same hash again needs nothing; another one is refused.
    assert_eq!(store.declare_hashes(id, sha256(sha)).unwrap(), None);
    let e = store.declare_hashes(id, md5(b"x")).unwrap_err();
    assert!(
        matches!(e, StoreError::WrongState { .. }),
        "only while uploading: {e:?}"
    );
}

#[test]
fn a_wrong_hash_declared_later_is_a_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(1500);
    let store = open(tmp.path());
    let mut upload = new_upload(&data);
    upload.hashes.md5 = None;
    upload.hashes.sha256 = None;
    let id = store.create(upload).unwrap();
    // An MD5 is declared (the running digest computed BLAKE3): the file is read back.
    store.declare_hashes(id, md5(b"not it")).unwrap();
    for i in 0..2 {
        store.write_chunk(id, i, chunk(&data, i)).unwrap();
    }
    let e = store.finalize(id).unwrap_err();
    assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
}

#[test]
fn a_session_written_in_meta_layout_1_resumes_and_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = file_bytes(4500);
    let id = TaskId::parse("6f9d2c1e-3b7a-4c5d-8e9f-0a1b2c3d4e5f").unwrap();
    let dir = tmp.path().join("uploads").join(id.to_string());
    fs::create_dir_all(&dir).unwrap();
    // The session as an earlier Earshot left it: chunks 0 and 2 stored, the rest missing.
    let blake3 = blake3::hash(&data).to_hex().to_string();
    let stored = "6e1ee5bd2d3c6d4c1e4e5a3a2b8f0f4f3c5d6e7f8091a2b3c4d5e6f708192a3b";
    fs::write(dir.join(META), V1_META.replace(stored, &blake3)).unwrap();
    let mut part = data.clone();
    part[1000..2000].fill(0);
    part[3000..].fill(0);
    fs::write(dir.join(DATA), &part).unwrap();
    let log: Vec<u8> = [0u32, 2].iter().flat_map(|i| i.to_le_bytes()).collect();
    fs::write(dir.join(LOG), log).unwrap();

    let store = open(tmp.path());
    let p = store.progress(id, 10).unwrap();
    assert_eq!((p.received_chunks, p.missing), (2, vec![1, 3, 4]));
    let meta = store.meta(id).unwrap();
    assert_eq!(
        (meta.transport, meta.client.as_str()),
        (Transport::Binary, "key:0123456789abcdef")
    );
    assert_eq!(meta.options.format, Some(crate::domain::OutputFormat::Srt));
    for i in [1, 3, 4] {
        store.put_chunk(id, i, chunk(&data, i)).unwrap();
    }
    assert_eq!(fs::read(store.finalize(id).unwrap()).unwrap(), data);
    drop(store);
    let store = open(tmp.path());
    assert_eq!(store.meta(id).unwrap().status, UploadStatus::Uploaded);
}
