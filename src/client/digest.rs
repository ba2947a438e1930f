//! The whole-file hashes an upload announces in its request (the seed's MD5 `file_hash`),
//! computed in one streaming pass over the file.
//!
//! Reads in fixed-size blocks and never holds the file in memory. Blocking I/O: async
//! callers run it on the blocking pool.

use std::path::Path;

use crate::upload::digest::{FileHashes, HashKinds, RunningDigest};

/// What an upload request says about its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Length in bytes.
    pub size: u64,
    /// The hashes asked for, lowercase hex.
    pub hashes: FileHashes,
}

/// Hashes `path` in one pass, computing only the hashes asked for (none: just its size).
pub fn file_digest(path: &Path, kinds: HashKinds) -> std::io::Result<FileDigest> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut digest = RunningDigest::new(kinds);
    if !kinds.is_empty() {
        digest.update_from_file(&file, size)?;
    }
    Ok(FileDigest {
        size,
        hashes: digest.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests_of_a_small_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"abc").unwrap();
        let all = HashKinds {
            md5: true,
            sha256: true,
            blake3: false,
        };
        let d = file_digest(&path, all).unwrap();
        assert_eq!(d.size, 3);
        assert_eq!(
            d.hashes.md5.as_deref(),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            d.hashes.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let size_only = file_digest(&path, HashKinds::default()).unwrap();
        assert_eq!(size_only.size, 3);
        assert!(size_only.hashes.kinds().is_empty());
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let md5 = HashKinds {
            md5: true,
            ..Default::default()
        };
        assert!(file_digest(Path::new("/nonexistent/earshot-test"), md5).is_err());
    }
}
