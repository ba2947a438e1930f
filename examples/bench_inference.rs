//! Inference overhead, in the same process and the same run, against a direct whisper-rs
//! `full()` call on pre-decoded PCM (same model, `FullParams` and threads):
//!
//! - **pool**: the same PCM submitted to the pool (queue, worker thread, streaming callbacks,
//!   reply channel) as one job;
//! - **pipeline**: what `earshot transcribe` does with the file: decode + resample
//!   (`AudioStream`), Silero VAD windows cut at pauses, one pool job per window
//!   (`long::transcribe`), the next window read while the current one is transcribed.
//!
//! The three alternate (rotating which goes first) so the load of a shared machine falls on all
//! alike; one warm-up round is discarded. A fourth measurement, decode + VAD alone, shows what
//! the pipeline spends outside Whisper.
//!
//! ```text
//! cargo run --example bench_inference -- [--runs N] [--threads T] [--model PATH] [FILE...]
//! ```
//! Default inputs: `en_jfk.wav` (11 s) and `en_JFK_inaugural_146s.ogg` (146 s) from
//! `../shared/corpus`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use earshot::audio::{AudioStream, DecodeLimits};
use earshot::eval::wer;
use earshot::inference::engine::{context_params, whisper_params};
use earshot::inference::long::{self, LongEvent};
use earshot::inference::{Options, Pool, PoolConfig, Vad};
use earshot::transcript::join_text;
use tokio_util::sync::CancellationToken;
use whisper_rs::WhisperContext;

const RATE: f64 = 16_000.0;
/// The window length `long::transcribe` analyses with the VAD.
const WINDOW: usize = 30 * 16_000;

/// What is needed to run every path on one model.
struct Bench {
    /// whisper-rs state for the direct `full()` baseline.
    state: whisper_rs::WhisperState,
    /// Whether the model is multilingual, for `whisper_params`.
    multilingual: bool,
    /// The pool both the pool and pipeline paths use.
    pool: Pool,
    /// Silero VAD model file, as `earshot transcribe` uses it.
    vad: PathBuf,
    /// Options shared by every path.
    options: Options,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = value("--runs").map_or(5, |v| v.parse().expect("--runs N"));
    let threads: usize = value("--threads").map_or(2, |v| v.parse().expect("--threads T"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models = std::env::var_os("EARSHOT_MODEL_MIRROR")
        .map_or_else(|| root.join("../shared/models"), PathBuf::from);
    let model = value("--model").map_or_else(|| models.join("ggml-tiny.en.bin"), PathBuf::from);
    let vad = models.join("ggml-silero-v6.2.0.bin");
    for file in [&model, &vad] {
        assert!(
            file.is_file(),
            "{} missing: set EARSHOT_MODEL_MIRROR or run scripts/download-model.sh",
            file.display()
        );
    }
    let mut files: Vec<PathBuf> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| PathBuf::from(a))
        .collect();
    if files.is_empty() {
        let corpus = root.join("../shared/corpus");
        files = vec![
            corpus.join("en_jfk.wav"),
            corpus.join("en_JFK_inaugural_146s.ogg"),
        ];
    }
    whisper_rs::install_logging_hooks();

    let context = WhisperContext::new_with_params(&model, context_params()).expect("model loads");
    let mut bench = Bench {
        state: context.create_state().expect("state"),
        multilingual: context.is_multilingual(),
        pool: Pool::start(PoolConfig {
            model_path: model.clone(),
            workers: 1,
            queue_capacity: 2,
            zh_script: Default::default(),
        })
        .expect("pool starts"),
        vad,
        options: Options {
            language: Some("en".into()),
            threads,
            ..Options::default()
        },
    };

    println!(
        "model {}, {threads} threads, {runs} rounds per input after one warm-up",
        bench.pool.model_name()
    );
    println!(
        "| input | direct `full()` min / median | pool min / median | pipeline (file → text) min / median | pool overhead | pipeline overhead | decode + VAD alone | pipeline windows | text agreement (WER direct→pipeline) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for file in &files {
        bench_file(&mut bench, file, runs);
    }
}

/// Times the three paths on one file and prints a table row.
fn bench_file(bench: &mut Bench, file: &Path, runs: usize) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let pcm = decode(file);
    let seconds = pcm.len() as f64 / RATE;
    let (mut direct, mut pooled, mut piped) = (Vec::new(), Vec::new(), Vec::new());
    let mut texts = [String::new(), String::new(), String::new()];
    let mut windows = 0;
    for round in 0..=runs {
        let mut times = [0.0; 3];
        for k in 0..3 {
            // Rotate the order so drifting machine load hits all three alike.
            let path = (round + k) % 3;
            times[path] = match path {
                0 => time_direct(bench, &pcm, &mut texts[0]),
                1 => time_pool(bench, &pcm, &mut texts[1]),
                _ => {
                    let (secs, n) = time_pipeline(bench, file, &mut texts[2]);
                    windows = n;
                    secs
                }
            };
        }
        eprintln!(
            "{name} round {round}: direct {:.3} s, pool {:.3} s, pipeline {:.3} s",
            times[0], times[1], times[2]
        );
        if round > 0 {
            direct.push(times[0]);
            pooled.push(times[1]);
            piped.push(times[2]);
        }
    }
    let overhead = |other: &[f64]| {
        let mut ratios: Vec<f64> = other.iter().zip(&direct).map(|(o, d)| o / d).collect();
        (median(&mut ratios) - 1.0) * 100.0
    };
    let (pool_overhead, pipe_overhead) = (overhead(&pooled), overhead(&piped));
    let front = time_decode_and_vad(bench, file);
    let cell = |values: &mut Vec<f64>| {
        let (lo, mid) = (min(values), median(values));
        format!("{lo:.3} / {mid:.3} s (RTF {:.3})", mid / seconds)
    };
    println!(
        "| {name} ({seconds:.1} s) | {} | {} | {} | {pool_overhead:+.1} % | {pipe_overhead:+.1} % | {front:.3} s | {windows} | {:.3} |",
        cell(&mut direct),
        cell(&mut pooled),
        cell(&mut piped),
        wer(&texts[0], &texts[2]),
    );
    if texts[0] != texts[1] {
        eprintln!("note: direct and pool texts differ for {name}");
    }
    eprintln!(
        "{name} direct:   {}\n{name} pipeline: {}",
        texts[0], texts[2]
    );
}

/// The whole file as 16 kHz mono PCM.
fn decode(file: &Path) -> Vec<f32> {
    let mut stream = AudioStream::open(file, DecodeLimits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut pcm = Vec::new();
    while let Some(chunk) = stream.next_chunk().expect("decodes") {
        pcm.extend_from_slice(&chunk);
    }
    pcm
}

/// Seconds for one direct `full()` call; leaves the text in `text`.
fn time_direct(bench: &mut Bench, audio: &[f32], text: &mut String) -> f64 {
    let started = Instant::now();
    bench
        .state
        .full(whisper_params(&bench.options, bench.multilingual), audio)
        .expect("direct full");
    let seconds = started.elapsed().as_secs_f64();
    *text = bench
        .state
        .as_iter()
        .map(|s| s.to_str_lossy().unwrap().trim().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    seconds
}

/// Seconds from submitting the PCM as one job to its final event.
fn time_pool(bench: &Bench, audio: &[f32], text: &mut String) -> f64 {
    let input = audio.to_vec();
    let started = Instant::now();
    let handle = bench
        .pool
        .submit(input, bench.options.clone())
        .expect("queue has room");
    let (segments, _) = handle.blocking_collect().expect("pool job");
    let seconds = started.elapsed().as_secs_f64();
    *text = join_text(&segments);
    seconds
}

/// Seconds from opening the file to the whole transcript, as `earshot transcribe` runs it,
/// and how many windows the input was cut into.
fn time_pipeline(bench: &Bench, file: &Path, text: &mut String) -> (f64, usize) {
    let started = Instant::now();
    let mut stream = AudioStream::open(file, DecodeLimits::default()).expect("opens");
    let mut windows = 0;
    let transcript = long::transcribe(
        &bench.pool,
        || stream.next_chunk(),
        &bench.options,
        Some(&bench.vad),
        &CancellationToken::new(),
        |event| {
            if let LongEvent::Progress { .. } = event {
                windows += 1;
            }
        },
    )
    .expect("pipeline");
    let seconds = started.elapsed().as_secs_f64();
    *text = transcript.text();
    (seconds, windows)
}

/// Decoding the file and running Silero over it in 30 s windows: the pipeline's work outside
/// Whisper (the pipeline may analyse some audio twice when a window is cut early).
fn time_decode_and_vad(bench: &Bench, file: &Path) -> f64 {
    let started = Instant::now();
    let pcm = decode(file);
    let mut vad = Vad::new(Some(&bench.vad)).expect("VAD loads");
    for window in pcm.chunks(WINDOW) {
        vad.speech_spans(window).expect("VAD runs");
    }
    started.elapsed().as_secs_f64()
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
