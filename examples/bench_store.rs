//! Upload store throughput, without sockets: a file of SIZE_MB pushed through the store in
//! 1 MiB chunks, the two ways the server drives it.
//!
//! Usage: `cargo run --release --example bench_store [SIZE_MB] [ROUNDS] [DIR]` (DIR: where
//! the store lives, default the system temp dir; put it on the disk you care about).
//!
//! - `seed`: `put_chunk` per chunk (write, whole-file MD5, fdatasync, ack), as the JSON path.
//! - `fast`: `write_chunk` × 16 then one `sync` (group commit), BLAKE3, as the binary path.
//!
//! Only store calls are timed (create, chunks, finalize); the chunks are generated outside the
//! clock. Prints the median and range over the rounds, which take turns.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use earshot::upload::digest::FileHashes;
use earshot::upload::plan::ChunkPlan;
use earshot::upload::store::{NewUpload, StoreConfig, UploadStorage, UploadStore};

/// Chunk size of both clients' defaults.
const CHUNK: usize = 1 << 20;
/// Chunks per group commit on the fast path (the server's default window).
const WINDOW: u32 = 16;

/// How the chunks are stored.
#[derive(Clone, Copy)]
enum Path {
    /// One write + sync + ack per chunk.
    Seed,
    /// A window of writes, then one sync.
    Fast,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size_mb: usize = args.next().map_or(200, |a| a.parse().expect("SIZE_MB"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let dir = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let size = size_mb << 20;
    let hashes = expected_hashes(size);
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, path) in [Path::Seed, Path::Fast].into_iter().enumerate() {
            times[i].push(run(&dir, size, path, &hashes));
        }
    }
    println!(
        "{size_mb} MB in 1 MiB chunks, {rounds} rounds, store in {}",
        dir.display()
    );
    println!("| path | seconds (median) | min–max | MB/s |");
    println!("|---|---:|---:|---:|");
    for (name, t) in [
        "seed (put_chunk, MD5)",
        "fast (write_chunk×16 + sync, BLAKE3)",
    ]
    .iter()
    .zip(&mut times)
    {
        t.sort();
        let median = t[t.len() / 2].as_secs_f64();
        let mb = size as f64 / 1e6;
        println!(
            "| {name} | {median:.3} | {:.3}–{:.3} | {:.0} |",
            t[0].as_secs_f64(),
            t[t.len() - 1].as_secs_f64(),
            mb / median
        );
    }
}

/// Chunk `i` of the file: cheap, deterministic bytes that differ per position.
fn fill(buf: &mut Vec<u8>, size: usize, i: usize) {
    let start = i * CHUNK;
    let len = CHUNK.min(size - start);
    buf.clear();
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    buf.extend((0..len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
}

/// MD5 and BLAKE3 of the whole file, computed once before any round.
fn expected_hashes(size: usize) -> FileHashes {
    use md5::{Digest, Md5};
    let (mut md5, mut blake3) = (Md5::new(), blake3::Hasher::new());
    let mut buf = Vec::with_capacity(CHUNK);
    for i in 0..size.div_ceil(CHUNK) {
        fill(&mut buf, size, i);
        md5.update(&buf);
        blake3.update(&buf);
    }
    FileHashes {
        md5: Some(hex::encode(md5.finalize())),
        sha256: None,
        blake3: Some(blake3.finalize().to_hex().to_string()),
    }
}

/// One upload through a fresh store; returns the time spent in store calls.
fn run(dir: &std::path::Path, size: usize, path: Path, hashes: &FileHashes) -> Duration {
    let tmp = tempfile::tempdir_in(dir).expect("temp dir");
    let store = UploadStore::open(tmp.path(), StoreConfig::default()).expect("open");
    let total = size.div_ceil(CHUNK) as u64;
    let plan = ChunkPlan::new(size as u64, CHUNK as u64, total, &Default::default()).unwrap();
    let hashes = match path {
        Path::Seed => FileHashes {
            md5: hashes.md5.clone(),
            ..Default::default()
        },
        Path::Fast => FileHashes {
            blake3: hashes.blake3.clone(),
            ..Default::default()
        },
    };
    let new = NewUpload {
        file_name: "bench.bin".into(),
        extension: None,
        plan,
        hashes,
        transport: Default::default(),
        options: Default::default(),
        owner: None,
        client: String::new(),
    };
    let mut spent = Duration::ZERO;
    let mut timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        spent += t.elapsed();
    };
    let mut id = None;
    timed(&mut || id = Some(store.create(new.clone()).expect("create")));
    let id = id.unwrap();
    let mut buf = Vec::with_capacity(CHUNK);
    for i in 0..total as u32 {
        fill(&mut buf, size, i as usize);
        // Made outside the timed part: a server has the frame's bytes already.
        let chunk = bytes::Bytes::copy_from_slice(&buf);
        match path {
            Path::Seed => timed(&mut || {
                store.put_chunk(id, i, chunk.clone()).expect("put_chunk");
            }),
            Path::Fast => timed(&mut || {
                store
                    .write_chunk(id, i, chunk.clone())
                    .expect("write_chunk");
                if (i + 1) % WINDOW == 0 || u64::from(i + 1) == total {
                    store.sync(id).expect("sync");
                }
            }),
        }
    }
    timed(&mut || {
        store.finalize(id).expect("finalize");
    });
    spent
}
