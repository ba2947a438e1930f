//! Inference overhead: the pool (queue, worker thread, streaming callbacks, reply channel)
//! against a direct whisper-rs `full()` call on the same PCM, model, parameters and threads,
//! in the same process, runs interleaved so machine load hits both alike.
//!
//! ```text
//! cargo run --example bench_inference -- [--runs N] [--threads T] [--model PATH]
//! ```
//! Inputs: `en_jfk.wav` (11 s) and the same clip repeated to about 143 s (so whisper.cpp
//! seeks through several 30 s windows), read from `../shared/corpus`.

use std::path::PathBuf;
use std::time::Instant;

use earshot::inference::engine::whisper_params;
use earshot::inference::{Options, Pool, PoolConfig};
use whisper_rs::{WhisperContext, WhisperContextParameters};

const RATE: f64 = 16_000.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
    assert!(
        model.is_file(),
        "model {} missing: set EARSHOT_MODEL_MIRROR or run scripts/download-model.sh",
        model.display()
    );
    whisper_rs::install_logging_hooks();

    let jfk = read_wav(&root.join("../shared/corpus/en_jfk.wav"));
    let long = jfk.repeat(13);
    let options = Options {
        language: Some("en".into()),
        threads,
        ..Options::default()
    };

    let context = WhisperContext::new_with_params(&model, WhisperContextParameters::default())
        .expect("model loads");
    let mut state = context.create_state().expect("state");
    let multilingual = context.is_multilingual();
    let pool = Pool::start(PoolConfig {
        model_path: model.clone(),
        workers: 1,
        queue_capacity: 4,
    })
    .expect("pool starts");

    println!(
        "model {}, {threads} threads, {runs} paired runs per input after one warm-up",
        pool.model_name()
    );
    println!(
        "| input | direct full() min / median | pool min / median | overhead (median of paired ratios) | overhead (min vs min) |"
    );
    println!("|---|---|---|---|---|");
    for (name, audio) in [("en_jfk.wav (11 s)", &jfk), ("JFK x13 (143 s)", &long)] {
        let mut direct = Vec::new();
        let mut pooled = Vec::new();
        let mut texts = (String::new(), String::new());
        for run in 0..=runs {
            // Alternate which goes first so drifting machine load hits both alike.
            let (d, p) = if run % 2 == 0 {
                let d = time_direct(&mut state, &options, multilingual, audio, &mut texts.0);
                (d, time_pool(&pool, &options, audio, &mut texts.1))
            } else {
                let p = time_pool(&pool, &options, audio, &mut texts.1);
                (
                    time_direct(&mut state, &options, multilingual, audio, &mut texts.0),
                    p,
                )
            };
            eprintln!("{name} run {run}: direct {d:.3} s, pool {p:.3} s");
            if run > 0 {
                direct.push(d);
                pooled.push(p);
            }
        }
        let mut ratios: Vec<f64> = pooled.iter().zip(&direct).map(|(p, d)| p / d).collect();
        let (d_min, p_min) = (min(&direct), min(&pooled));
        let (d, p) = (median(&mut direct), median(&mut pooled));
        let seconds = audio.len() as f64 / RATE;
        println!(
            "| {name} | {d_min:.3} / {d:.3} s (RTF {:.3}) | {p_min:.3} / {p:.3} s (RTF {:.3}) | {:+.1} % | {:+.1} % |",
            d / seconds,
            p / seconds,
            (median(&mut ratios) - 1.0) * 100.0,
            (p_min / d_min - 1.0) * 100.0,
        );
        if texts.0 != texts.1 {
            eprintln!(
                "note: texts differ for {name}:\n direct: {}\n pool:   {}",
                texts.0, texts.1
            );
        }
    }
}

/// Seconds for one direct `full()` call; leaves the text in `text`.
fn time_direct(
    state: &mut whisper_rs::WhisperState,
    options: &Options,
    multilingual: bool,
    audio: &[f32],
    text: &mut String,
) -> f64 {
    let started = Instant::now();
    state
        .full(whisper_params(options, multilingual), audio)
        .expect("direct full");
    let seconds = started.elapsed().as_secs_f64();
    *text = state
        .as_iter()
        .map(|s| s.to_str_lossy().unwrap().trim().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    seconds
}

/// Seconds from submitting a job to its final event; leaves the text in `text`.
fn time_pool(pool: &Pool, options: &Options, audio: &[f32], text: &mut String) -> f64 {
    let input = audio.to_vec();
    let started = Instant::now();
    let handle = pool.submit(input, options.clone()).expect("queue has room");
    let (segments, _) = handle.blocking_collect().expect("pool job");
    let seconds = started.elapsed().as_secs_f64();
    *text = earshot::transcript::join_text(&segments);
    seconds
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn read_wav(path: &std::path::Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the corpus lives in ../shared/corpus)",
            path.display()
        )
    });
    assert_eq!(reader.spec().sample_rate, 16_000, "16 kHz WAV expected");
    reader
        .samples::<i16>()
        .map(|s| s.expect("sample") as f32 / 32_768.0)
        .collect()
}
