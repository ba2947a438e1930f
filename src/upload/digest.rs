//! Whole-file hashes of an upload, computed while its chunks arrive so that finishing the
//! upload does not read the whole file back from disk.
//!
//! Chunks usually arrive in order; each one that extends the hashed prefix is hashed from the
//! bytes just received. Chunks that arrive early wait on disk and are hashed (read back from
//! the page cache) once the gap before them is filled. Whatever is still unhashed when the
//! upload completes — after a restart, nothing was hashed in memory — is read from the file.
//!
//! This module must not decide what a mismatch means; the store does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use md5::Md5;
use sha2::{Digest, Sha256};

use super::plan::ChunkPlan;

/// Read size when hashing bytes already on disk.
const BLOCK: usize = 1 << 20;

/// Which whole-file hashes to compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashKinds {
    /// MD5: the seed protocol's `file_hash`.
    pub md5: bool,
    /// SHA-256: `file_sha256`.
    pub sha256: bool,
    /// BLAKE3: `file_blake3`, the fast path's (several times faster than either).
    pub blake3: bool,
}

impl HashKinds {
    /// Only BLAKE3, what Earshot's own client sends.
    pub const BLAKE3: HashKinds = HashKinds {
        md5: false,
        sha256: false,
        blake3: true,
    };

    /// No hash at all.
    pub fn is_empty(&self) -> bool {
        !(self.md5 || self.sha256 || self.blake3)
    }
}

/// The hashes of the file's first [`RunningDigest::hashed`] bytes.
#[derive(Clone)]
pub struct RunningDigest {
    /// How many leading bytes of the file went into the hashes.
    len: u64,
    /// MD5 state, kept only when asked for.
    md5: Option<Md5>,
    /// SHA-256 state, kept only when asked for.
    sha256: Option<Sha256>,
    /// BLAKE3 state, kept only when asked for.
    blake3: Option<blake3::Hasher>,
}

/// Finished whole-file hashes, lowercase hex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileHashes {
    /// MD5, if it was asked for.
    pub md5: Option<String>,
    /// SHA-256, if it was asked for.
    pub sha256: Option<String>,
    /// BLAKE3 (32 bytes), if it was asked for.
    pub blake3: Option<String>,
}

impl FileHashes {
    /// Which hashes are present.
    pub fn kinds(&self) -> HashKinds {
        HashKinds {
            md5: self.md5.is_some(),
            sha256: self.sha256.is_some(),
            blake3: self.blake3.is_some(),
        }
    }

    /// The name of the first hash present in both that differs, if any.
    pub fn mismatch(&self, computed: &FileHashes) -> Option<&'static str> {
        let differs =
            |declared: &Option<String>, got: &Option<String>| declared.is_some() && declared != got;
        [
            (&self.md5, &computed.md5, "file_hash (MD5)"),
            (&self.sha256, &computed.sha256, "file_sha256"),
            (&self.blake3, &computed.blake3, "file_blake3"),
        ]
        .into_iter()
        .find(|(declared, got, _)| differs(declared, got))
        .map(|(_, _, name)| name)
    }
}

impl RunningDigest {
    /// Starts empty, computing only the hashes asked for.
    pub fn new(kinds: HashKinds) -> Self {
        RunningDigest {
            len: 0,
            md5: kinds.md5.then(Md5::new),
            sha256: kinds.sha256.then(Sha256::new),
            blake3: kinds.blake3.then(blake3::Hasher::new),
        }
    }

    /// Whether this digest computes (at least) the given hashes.
    pub fn computes(&self, kinds: HashKinds) -> bool {
        (!kinds.md5 || self.md5.is_some())
            && (!kinds.sha256 || self.sha256.is_some())
            && (!kinds.blake3 || self.blake3.is_some())
    }

    /// Bytes hashed so far (always a prefix of the file).
    pub fn hashed(&self) -> u64 {
        self.len
    }

    /// Adds the bytes at offset [`hashed`](Self::hashed) of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = self.md5.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = self.sha256.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = self.blake3.as_mut() {
            h.update(bytes);
        }
        self.len += bytes.len() as u64;
    }

    /// Hashes `file` from [`hashed`](Self::hashed) up to `end`, in blocks.
    pub fn update_from_file(&mut self, file: &File, end: u64) -> io::Result<()> {
        let mut buf = vec![0u8; BLOCK];
        while self.len < end {
            let want = (end - self.len).min(BLOCK as u64) as usize;
            let n = file.read_at(&mut buf[..want], self.len)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.update(&buf[..n]);
        }
        Ok(())
    }

    /// Hashes, read back from `file`, the chunks of `plan` that now follow the hashed prefix
    /// and for which `written` holds (chunks that arrived early, from the page cache: they were
    /// just written). Stops at the first chunk not written.
    pub fn catch_up(
        &mut self,
        file: &File,
        plan: &ChunkPlan,
        written: impl Fn(u32) -> bool,
    ) -> io::Result<()> {
        loop {
            let hashed = self.len;
            if hashed >= plan.file_size || !hashed.is_multiple_of(plan.chunk_size) {
                return Ok(());
            }
            let next = (hashed / plan.chunk_size) as u32;
            if !written(next) {
                return Ok(());
            }
            self.update_from_file(file, hashed + plan.chunk_len(next).unwrap_or(0))?;
        }
    }

    /// The hashes of everything added.
    pub fn finish(self) -> FileHashes {
        FileHashes {
            md5: self.md5.map(|h| hex::encode(h.finalize())),
            sha256: self.sha256.map(|h| hex::encode(h.finalize())),
            blake3: self.blake3.map(|h| h.finalize().to_hex().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ALL: HashKinds = HashKinds {
        md5: true,
        sha256: true,
        blake3: true,
    };

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn pieces_and_file_reads_give_the_hash_of_the_whole() {
        let bytes = data(3 * BLOCK + 999);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let mut d = RunningDigest::new(ALL);
        d.update(&bytes[..1000]);
        d.update(&bytes[1000..5000]);
        d.update_from_file(&file, 2 * BLOCK as u64 + 17).unwrap();
        d.update(&bytes[2 * BLOCK + 17..2 * BLOCK + 20]);
        d.update_from_file(&file, bytes.len() as u64).unwrap();
        assert_eq!(d.hashed(), bytes.len() as u64);
        let h = d.finish();
        assert_eq!(h.md5, Some(hex::encode(Md5::digest(&bytes))));
        assert_eq!(h.sha256, Some(hex::encode(Sha256::digest(&bytes))));
        assert_eq!(h.blake3, Some(blake3::hash(&bytes).to_hex().to_string()));
    }

    #[test]
    fn only_the_hashes_asked_for_are_computed() {
        let mut d = RunningDigest::new(HashKinds::BLAKE3);
        assert!(d.computes(HashKinds::BLAKE3));
        assert!(!d.computes(ALL));
        d.update(b"abc");
        let h = d.finish();
        assert_eq!((h.md5, h.sha256), (None, None));
        // The BLAKE3 test vector for "abc".
        assert_eq!(
            h.blake3.as_deref(),
            Some("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")
        );
    }

    #[test]
    fn mismatches_name_the_hash_that_differs() {
        let declared = FileHashes {
            sha256: Some("aa".into()),
            ..Default::default()
        };
        let same = FileHashes {
            sha256: Some("aa".into()),
            blake3: Some("bb".into()),
            ..Default::default()
        };
        assert_eq!(declared.mismatch(&same), None);
        let other = FileHashes {
            sha256: Some("ab".into()),
            ..Default::default()
        };
        assert_eq!(declared.mismatch(&other), Some("file_sha256"));
        assert!(declared.kinds().sha256);
        assert!(FileHashes::default().kinds().is_empty());
    }

    #[test]
    fn catching_up_hashes_the_written_chunks_after_the_prefix_and_stops_at_a_gap() {
        let bytes = data(10_000);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let plan = ChunkPlan::new(10_000, 1_000, 10, &Default::default()).unwrap();
        let mut d = RunningDigest::new(ALL);
        d.update(&bytes[..1_000]);
        d.catch_up(&file, &plan, |i| i != 4).unwrap();
        assert_eq!(d.hashed(), 4_000);
        d.catch_up(&file, &plan, |_| true).unwrap();
        assert_eq!(d.hashed(), 10_000);
        assert_eq!(
            d.finish().blake3,
            Some(blake3::hash(&bytes).to_hex().to_string())
        );
    }

    #[test]
    fn a_file_shorter_than_claimed_is_an_error() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"short").unwrap();
        let mut d = RunningDigest::new(ALL);
        assert!(d.update_from_file(&file, 100).is_err());
    }
}
