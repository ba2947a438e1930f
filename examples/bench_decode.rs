//! Decode + resample speed per corpus format, single thread, against ffmpeg on the same file.
//!
//! Usage: `cargo run --release --example bench_decode [CORPUS_DIR]` (see scripts/bench-decode.sh).
//! Prints a Markdown table: × real time for earshot (open + decode + resample to 16 kHz mono f32,
//! in process) and for `ffmpeg -threads 1 -i FILE -ar 16000 -ac 1 -f f32le -` (a process per run,
//! as the CLI is used), and their ratio. Each measurement repeats until at least 1 s has passed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use earshot::audio::{AudioStream, DecodeLimits};

/// One representative file per container/codec/rate in the corpus.
const FILES: &[(&str, &str)] = &[
    ("WAV s16 16 kHz mono", "en_jfk.wav"),
    ("WAV s16 44.1 kHz mono", "en_one_two_three_44k.wav"),
    ("WAV s16 16 kHz stereo", "en_stereo_diarization.wav"),
    ("AIFF s16 44.1 kHz mono", "fr_dictee_44k.aiff"),
    ("FLAC 24-bit 44.1 kHz stereo", "en_jfk_44k_stereo.flac"),
    ("FLAC 16-bit 48 kHz mono", "zh_chinese_48k.flac"),
    ("MP3 16 kHz mono", "en_jfk.mp3"),
    ("AAC-LC (M4A) 44.1 kHz mono", "en_jfk_441khz.m4a"),
    (
        "Vorbis (Ogg) 16 kHz mono, 146 s",
        "en_JFK_inaugural_146s.ogg",
    ),
    ("Opus (Ogg) 48 kHz stereo", "music_rodio_music.opus"),
];

/// Least wall time spent per measurement, so short files are repeated enough to be stable.
const MIN_TIME: Duration = Duration::from_secs(1);
/// Least repetitions per measurement.
const MIN_RUNS: u32 = 3;

fn main() {
    let corpus = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    println!(
        "| Format | File | Audio s | earshot × RT | ffmpeg × RT, one process per file \
         | ffmpeg × RT, start-up amortised | earshot / ffmpeg (amortised) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (label, name) in FILES {
        let path = corpus.join(name);
        assert!(path.is_file(), "missing corpus file {}", path.display());
        let (secs, ours) = measure(|| earshot_decode(&path));
        let (_, per_process) = measure(|| ffmpeg_decode(&path, 1));
        // Loop the input inside one ffmpeg process (≥ 300 s of audio) to amortise start-up.
        let loops = (300.0 / secs).ceil().max(1.0) as u32;
        let (_, looped) = measure(|| ffmpeg_decode(&path, loops) / loops as usize);
        let amortised = looped / f64::from(loops);
        println!(
            "| {label} | {name} | {secs:.2} | {:.0} | {:.0} | {:.0} | {:.2} |",
            secs / ours,
            secs / per_process,
            secs / amortised,
            amortised / ours
        );
    }
}

/// Runs `f` until `MIN_TIME` and `MIN_RUNS` are reached; returns (audio seconds, seconds per run).
fn measure(mut f: impl FnMut() -> usize) -> (f64, f64) {
    let samples = f(); // warm-up: page cache, lazy registries
    let start = Instant::now();
    let mut runs = 0;
    while runs < MIN_RUNS || start.elapsed() < MIN_TIME {
        let n = f();
        assert!(n.abs_diff(samples) <= 1, "runs gave different lengths");
        runs += 1;
    }
    let per_run = start.elapsed().as_secs_f64() / f64::from(runs);
    (samples as f64 / 16_000.0, per_run)
}

/// 16 kHz samples from earshot's pipeline.
fn earshot_decode(path: &Path) -> usize {
    let mut stream = AudioStream::open(path, DecodeLimits::default()).expect("decode");
    let mut n = 0;
    while let Some(chunk) = stream.next_chunk().expect("decode") {
        n += std::hint::black_box(chunk).len();
    }
    n
}

/// 16 kHz samples from ffmpeg, one thread, the input played `loops` times.
fn ffmpeg_decode(path: &Path, loops: u32) -> usize {
    let mut child = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-threads", "1"])
        .args(["-stream_loop", &(loops - 1).to_string(), "-i"])
        .arg(path)
        .args([
            "-filter_threads",
            "1",
            "-ar",
            "16000",
            "-ac",
            "1",
            "-f",
            "f32le",
            "-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ffmpeg must be installed");
    let mut bytes = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert!(child.wait().unwrap().success(), "ffmpeg failed");
    bytes.len() / 4
}
