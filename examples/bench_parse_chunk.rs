//! Cost of parsing one seed `upload_chunk` text frame carrying a 1 MiB chunk.
//!
//! Usage: `cargo run --release --example bench_parse_chunk [RUNS]` (default 200 runs).
//! Prints the median and best wall time of `protocol::parse_client` on the frame (JSON
//! envelope, base64 decode, MD5 check), and the bytes it allocates per parse, counted by a
//! wrapping global allocator: the decoded chunk itself is 1 MiB, so anything far above that
//! is a copy of the base64 text. For comparison it also times the frame copy
//! (`String::from(&str)`) the WebSocket session once made before parsing large frames.
//! Measures only; asserts nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use md5::{Digest, Md5};

use earshot::protocol::{parse_client, ClientMessage, Limits};

/// Counts the bytes requested from the system allocator, so a copy shows as bytes.
struct Counting;

/// Bytes allocated since start (never decreases; frees are not subtracted).
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The chunk size the CLI uses by default.
const CHUNK_BYTES: usize = 1 << 20;

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let frame = chunk_frame();
    let limits = Limits::default();

    let parse = measure(runs, || {
        let msg = parse_client(&frame, &limits).expect("the frame is valid");
        assert!(matches!(msg, ClientMessage::UploadChunk(ref c) if c.data.len() == CHUNK_BYTES));
    });
    let copy = measure(runs, || {
        std::hint::black_box(String::from(frame.as_str()));
    });

    println!(
        "upload_chunk frame: {} bytes of JSON, {CHUNK_BYTES} bytes decoded, {runs} runs",
        frame.len()
    );
    println!("| step | median | best | allocated per run |");
    println!("|---|---|---|---|");
    for (name, m) in [("parse_client", parse), ("frame copy (to_string)", copy)] {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.2} MiB |",
            ms(m.median),
            ms(m.best),
            m.allocated as f64 / f64::from(1 << 20)
        );
    }
}

/// A seed client's `upload_chunk` for a 1 MiB chunk of varied bytes.
fn chunk_frame() -> String {
    let data: Vec<u8> = (0..CHUNK_BYTES as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    serde_json::json!({"type": "upload_chunk", "data": {
        "task_id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "chunk_index": 0,
        "chunk_size": data.len(),
        "chunk_hash": hex::encode(Md5::digest(&data)),
        "chunk_data": base64::engine::general_purpose::STANDARD.encode(&data),
        "is_last": false,
    }})
    .to_string()
}

/// Timing and allocation of one step over many runs.
struct Measured {
    /// Middle run time.
    median: Duration,
    /// Fastest run.
    best: Duration,
    /// Bytes allocated by one run (the last).
    allocated: u64,
}

fn measure(runs: usize, mut step: impl FnMut()) -> Measured {
    for _ in 0..runs.min(10) {
        step(); // warm-up: page faults, allocator pools
    }
    let mut times = Vec::with_capacity(runs);
    let mut allocated = 0;
    for _ in 0..runs.max(1) {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let t = Instant::now();
        step();
        times.push(t.elapsed());
        allocated = ALLOCATED.load(Ordering::Relaxed) - before;
    }
    times.sort();
    Measured {
        median: times[times.len() / 2],
        best: times[0],
        allocated,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
