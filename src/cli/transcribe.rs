//! `earshot transcribe FILE...`: local transcription with a progress bar, text to stdout or files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::audio::decode::DecodeLimits;
use crate::audio::AudioStream;
use crate::format::{render, OutputFormat};
use crate::inference::engine::Options;
use crate::inference::long::{self, LongEvent};
use crate::inference::pool::{Pool, PoolConfig};
use crate::models;
use crate::transcript::Transcript;

/// Inputs shorter than this get no progress bar: it would only flicker.
const PROGRESS_MIN_SECS: f64 = 5.0;

#[derive(Debug, clap::Args)]
pub struct TranscribeArgs {
    /// Audio files (WAV, FLAC, MP3, Ogg/Vorbis, Opus, AAC/M4A, ALAC, AIFF, CAF, MKV/WebM).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Whisper model: a name (fetched into --models-dir when missing) or a path to a ggml file.
    #[arg(long, short, env = "EARSHOT_MODEL", default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Where model files are kept.
    #[arg(long, env = "EARSHOT_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Spoken language (`auto` to detect; English-only models always use `en`).
    #[arg(long, short, default_value = "auto")]
    pub language: String,
    /// Translate to English instead of transcribing.
    #[arg(long)]
    pub translate: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "txt")]
    pub format: OutputFormat,
    /// CPU threads for Whisper.
    #[arg(long, short, default_value_t = crate::server::config::default_threads())]
    pub threads: usize,
    /// Beam search width (default: greedy decoding, faster).
    #[arg(long)]
    pub beam_size: Option<u32>,
    /// Text that primes Whisper's vocabulary and style (names, jargon).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Write FILE.<format> into this directory instead of printing to stdout.
    #[arg(long, short)]
    pub output_dir: Option<PathBuf>,
}

pub fn run(args: TranscribeArgs) -> Result<()> {
    let model = models::ensure(&args.model, &args.models_dir, true)?;
    let vad = models::ensure(models::VAD_MODEL, &args.models_dir, true)
        .map_err(|e| tracing::warn!("no VAD model ({e}); cutting windows by energy"))
        .ok();
    let pool = Pool::start(PoolConfig {
        model_path: model,
        workers: 1,
        queue_capacity: 2,
    })
    .context("loading the model")?;
    let options = Options {
        language: language_option(&args.language),
        translate: args.translate,
        initial_prompt: args.prompt.clone(),
        beam_size: args.beam_size,
        threads: args.threads,
        token_timestamps: matches!(args.format, OutputFormat::VerboseJson),
        low_latency: false,
    };
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for file in &args.files {
        let transcript = transcribe_file(&pool, file, &options, vad.as_deref())
            .with_context(|| format!("{}", file.display()))?;
        emit(&args, file, &transcript)?;
    }
    Ok(())
}

fn language_option(language: &str) -> Option<String> {
    (language != "auto").then(|| language.to_string())
}

/// Decodes and transcribes one file in windows, showing progress for long inputs.
pub fn transcribe_file(
    pool: &Pool,
    file: &Path,
    options: &Options,
    vad: Option<&Path>,
) -> Result<Transcript> {
    let mut audio = AudioStream::open(file, DecodeLimits::default())?;
    let total = audio.duration_hint().unwrap_or(0.0);
    let bar = progress_bar(total);
    let transcript = long::transcribe(
        pool,
        || audio.next_chunk(),
        options,
        vad,
        |event| {
            if let LongEvent::Progress { processed_secs } = event {
                bar.set_position((processed_secs * 10.0) as u64);
            }
        },
    )?;
    bar.finish_and_clear();
    Ok(transcript)
}

fn progress_bar(total_secs: f64) -> ProgressBar {
    if total_secs < PROGRESS_MIN_SECS {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((total_secs * 10.0) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent}% audio, eta {eta}",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn emit(args: &TranscribeArgs, file: &Path, transcript: &Transcript) -> Result<()> {
    let text = render(transcript, args.format);
    let Some(dir) = &args.output_dir else {
        println!("{}", text.trim_end());
        return Ok(());
    };
    let stem = file.file_stem().unwrap_or(file.as_os_str());
    let out = dir.join(stem).with_extension(args.format.extension());
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))
}
