//! [`LocalCopy`]: the chunks a node publishes for an upload it holds, also written at their
//! offsets in a local file and hashed as the file's prefix grows, so that when the upload
//! completes on this node the file is verified and renamed into place instead of being read
//! back from NATS and written again (which cost the cluster half its upload speed).
//!
//! Each copy is one file that only its own [`LocalCopy`] writes (a per-process counter in the
//! name), so a copy abandoned after a lost lease can never write into the one that replaced it.
//! Which chunks count is not this module's decision: the upload's record says that
//! ([`UploadRecord::matches_copy`](super::upload_record::UploadRecord::matches_copy)), and the
//! declared hash checks the bytes.
//!
//! When the cluster keeps upload bytes in shared storage, a copy keeps no bytes
//! ([`LocalCopy::hash_only`]): it only hashes the chunks that arrive in order, so the upload can
//! be verified without reading anything back, and the node that runs the job reads the shared
//! chunks.
//!
//! This module must not talk to NATS, must not hold more than one chunk in memory, and must not
//! hash bytes it did not write (the running hash covers only this copy's own writes, in order,
//! and starts over when a hashed offset is written again).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::upload::digest::{FileHashes, HashKinds, RunningDigest};
use crate::upload::plan::ChunkPlan;

/// Numbers the copies of this process, so no two share a file.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// One upload's local copy; see the module docs.
pub struct LocalCopy {
    /// `<dir>/received.<n>.part`, written only through this value.
    path: PathBuf,
    /// Whether chunks are written to `path` at all: not when the cluster keeps upload bytes
    /// in shared storage, where the node that runs the job reads them ([`Self::hash_only`]).
    keeps_bytes: bool,
    /// The file, opened (and truncated) at the first chunk.
    file: Option<File>,
    /// Chunk → the lease generation it was published under when written here; a chunk whose
    /// write failed is absent (then it is only in the chunk store).
    written: HashMap<u32, u64>,
    /// Which hashes `digest` computes (the declared ones).
    kinds: HashKinds,
    /// The hashes of the file's first `digest.hashed()` bytes, all written by this copy.
    digest: RunningDigest,
}

impl LocalCopy {
    /// An empty copy in `dir`, hashing `kinds` (BLAKE3 while none is declared: what Earshot's
    /// client declares after the chunks).
    pub fn new(dir: &Path, kinds: HashKinds) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let kinds = match kinds.is_empty() {
            true => HashKinds::BLAKE3,
            false => kinds,
        };
        LocalCopy {
            path: dir.join(format!("received.{n}.part")),
            keeps_bytes: true,
            file: None,
            written: HashMap::new(),
            kinds,
            digest: RunningDigest::new(kinds),
        }
    }

    /// A copy that keeps no bytes, only the hash of the chunks written in order (the cluster's
    /// bytes are in shared storage, so a second copy here would only double the writes):
    /// [`verify_hashed`](Self::verify_hashed) says whether they have the declared hashes.
    pub fn hash_only(dir: &Path, kinds: HashKinds) -> Self {
        let mut copy = LocalCopy::new(dir, kinds);
        copy.keeps_bytes = false;
        copy
    }

    /// Whether chunks are written to a file here.
    pub fn keeps_bytes(&self) -> bool {
        self.keeps_bytes
    }

    /// Chunk → generation, for [`UploadRecord::matches_copy`](super::upload_record::UploadRecord::matches_copy).
    pub fn written(&self) -> &HashMap<u32, u64> {
        &self.written
    }

    /// Makes the running hash compute `kinds` (declared after the chunks): started over if it
    /// computes other ones.
    pub fn declare(&mut self, kinds: HashKinds) {
        if !kinds.is_empty() && !self.digest.computes(kinds) {
            self.kinds = kinds;
            self.digest = RunningDigest::new(kinds);
        }
    }

    /// Writes chunk `index` (published under `gen`) at its offset and hashes what now continues
    /// the hashed prefix. A failed write only leaves the chunk out of the copy.
    pub fn write(&mut self, plan: &ChunkPlan, index: u32, gen: u64, data: &[u8]) {
        self.written.remove(&index);
        let Some(offset) = plan.chunk_offset(index) else {
            return;
        };
        if offset < self.digest.hashed() {
            // Hashed bytes are written again (a resend after a failed commit): start over.
            self.digest = RunningDigest::new(self.kinds);
        }
        let written = match self.keeps_bytes {
            true => self.write_at(offset, data),
            false => Ok(()),
        };
        match written {
            Ok(()) => {
                self.written.insert(index, gen);
            }
            Err(err) => {
                tracing::debug!(%err, path = %self.path.display(), "a chunk is kept in the chunk store only");
                return;
            }
        }
        if offset == self.digest.hashed() {
            self.digest.update(data);
            self.advance(plan);
        }
    }

    /// Finishes the hash (reading what was not hashed yet), syncs the file and, if it has the
    /// declared hashes, renames it to `dest`. `Ok(false)`: the bytes differ from the declared
    /// hashes (the copy is left for [`discard`](Self::discard)).
    pub fn verify_into(
        &mut self,
        plan: &ChunkPlan,
        declared: &FileHashes,
        dest: &Path,
    ) -> std::io::Result<bool> {
        let mut digest = std::mem::replace(&mut self.digest, RunningDigest::new(self.kinds));
        let Some(file) = &self.file else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        digest.update_from_file(file, plan.file_size)?;
        let size = file.metadata()?.len();
        if size != plan.file_size || declared.mismatch(&digest.finish()).is_some() {
            return Ok(false);
        }
        file.sync_data()?;
        fs::rename(&self.path, dest)?;
        self.file = None;
        self.written.clear();
        Ok(true)
    }

    /// For a copy that keeps no bytes: whether the chunks written here, every byte hashed in
    /// order as it arrived, have the declared hashes; `None` when not every byte was (a chunk
    /// came ahead of a gap, or a hash of another kind was declared after the chunks).
    pub fn verify_hashed(&mut self, plan: &ChunkPlan, declared: &FileHashes) -> Option<bool> {
        if self.digest.hashed() != plan.file_size {
            return None;
        }
        let digest = std::mem::replace(&mut self.digest, RunningDigest::new(self.kinds));
        Some(declared.mismatch(&digest.finish()).is_none())
    }

    /// Removes the file (after it was renamed, nothing is left to remove).
    pub fn discard(&mut self) {
        self.file = None;
        self.written.clear();
        let _ = fs::remove_file(&self.path);
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&self.path)?;
            self.file = Some(file);
        }
        let file = self.file.as_ref().expect("opened above");
        file.write_all_at(data, offset)
    }

    /// Hashes the chunks written early that now follow the hashed prefix.
    fn advance(&mut self, plan: &ChunkPlan) {
        let Some(file) = &self.file else {
            return;
        };
        let written = &self.written;
        if self
            .digest
            .catch_up(file, plan, |i| written.contains_key(&i))
            .is_err()
        {
            // Unreadable: start over; the finish reads the whole file again.
            self.digest = RunningDigest::new(self.kinds);
        }
    }
}

impl Drop for LocalCopy {
    /// A copy dropped before it became the file (its upload moved, or finished from NATS) is
    /// of no use to anyone.
    fn drop(&mut self) {
        if self.file.is_some() {
            self.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(size: u64, chunk: u64) -> ChunkPlan {
        ChunkPlan::new(size, chunk, size.div_ceil(chunk), &Default::default()).unwrap()
    }

    fn blake3_of(data: &[u8]) -> FileHashes {
        FileHashes {
            blake3: Some(blake3::hash(data).to_hex().to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_in_any_order_become_the_verified_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let p = plan(2500, 1000);
        let mut copy = LocalCopy::new(dir.path(), HashKinds::default());
        for i in [1u32, 2, 0] {
            let at = (i * 1000) as usize;
            copy.write(&p, i, 4, &data[at..(at + 1000).min(2500)]);
        }
        // Chunk 0 came last: the early chunks were hashed from the file then.
        assert_eq!(copy.digest.hashed(), 2500);
        assert_eq!(copy.written(), &HashMap::from([(0, 4), (1, 4), (2, 4)]));
        let dest = dir.path().join("audio.wav");
        assert!(copy.verify_into(&p, &blake3_of(&data), &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert!(!copy.path.exists());
    }

    #[test]
    fn bytes_written_again_are_hashed_again_and_a_mismatch_keeps_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(20, 10);
        let mut copy = LocalCopy::new(dir.path(), HashKinds::BLAKE3);
        copy.write(&p, 0, 1, &[1; 10]);
        copy.write(&p, 1, 1, &[2; 10]);
        // Chunk 0 again with other bytes (its commit failed and the client resent it).
        copy.write(&p, 0, 2, &[3; 10]);
        let mut want = vec![3u8; 10];
        want.extend([2u8; 10]);
        let dest = dir.path().join("audio");
        assert!(!copy
            .verify_into(&p, &blake3_of(&[[1u8; 10], [2u8; 10]].concat()), &dest)
            .unwrap());
        assert!(!dest.exists());
        assert!(copy.verify_into(&p, &blake3_of(&want), &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), want);
    }

    #[test]
    fn a_copy_without_bytes_verifies_what_came_in_order_and_knows_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let p = plan(2500, 1000);
        let chunk = |i: u32| &data[(i * 1000) as usize..((i + 1) * 1000).min(2500) as usize];
        let mut in_order = LocalCopy::hash_only(dir.path(), HashKinds::default());
        for i in 0..3 {
            in_order.write(&p, i, 1, chunk(i));
        }
        assert_eq!(in_order.written().len(), 3);
        assert_eq!(in_order.verify_hashed(&p, &blake3_of(&data)), Some(true));
        let mut again = LocalCopy::hash_only(dir.path(), HashKinds::default());
        for i in 0..3 {
            again.write(&p, i, 1, chunk(i));
        }
        assert_eq!(again.verify_hashed(&p, &blake3_of(b"other")), Some(false));
        // A chunk ahead of a gap cannot be hashed later without its bytes.
        let mut ahead = LocalCopy::hash_only(dir.path(), HashKinds::default());
        for i in [1u32, 0, 2] {
            ahead.write(&p, i, 1, chunk(i));
        }
        assert_eq!(ahead.verify_hashed(&p, &blake3_of(&data)), None);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file written"
        );
    }

    #[test]
    fn a_hash_declared_later_is_computed_and_discard_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(10, 10);
        let mut copy = LocalCopy::new(dir.path(), HashKinds::default());
        copy.write(&p, 0, 1, b"0123456789");
        copy.declare(HashKinds {
            sha256: true,
            ..Default::default()
        });
        let sha = FileHashes {
            sha256: Some("84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882".into()),
            ..Default::default()
        };
        let mut other = LocalCopy::new(dir.path(), HashKinds::BLAKE3);
        other.write(&p, 0, 1, b"0123456789");
        assert_ne!(copy.path, other.path);
        other.discard();
        assert!(!other.path.exists());
        assert!(copy.verify_into(&p, &sha, &dir.path().join("a")).unwrap());
    }
}
