//! The whole-file hashes an upload announces: MD5 (`file_hash`, the seed's) and SHA-256
//! (`file_sha256`, the fast path's), computed in one streaming pass over the file.
//!
//! Reads in fixed-size blocks and never holds the file in memory. Blocking I/O: async
//! callers run it on the blocking pool.

use std::io::Read;
use std::path::Path;

use md5::Md5;
use sha2::{Digest, Sha256};

/// Bytes read per step; large enough for disk speed, small enough to stay cheap.
const BLOCK: usize = 1 << 20;

/// What an upload request says about its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Length in bytes.
    pub size: u64,
    /// MD5, lowercase hex.
    pub md5: String,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Hashes `path` in one pass.
pub fn file_digest(path: &Path) -> std::io::Result<FileDigest> {
    let mut file = std::fs::File::open(path)?;
    let mut md5 = Md5::new();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        size,
        md5: hex::encode(md5.finalize()),
        sha256: hex::encode(sha.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests_of_a_multi_block_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        // Spans several blocks and ends mid-block.
        let data: Vec<u8> = (0..(2 * BLOCK + 12345)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let d = file_digest(&path).unwrap();
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.md5, hex::encode(Md5::digest(&data)));
        assert_eq!(d.sha256, hex::encode(Sha256::digest(&data)));

        std::fs::write(&path, b"abc").unwrap();
        let d = file_digest(&path).unwrap();
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_missing_file_is_an_error() {
        assert!(file_digest(Path::new("/nonexistent/earshot-test")).is_err());
    }
}
