//! `earshot transcribe FILE...`: local transcription with a progress bar, text to stdout or files.
//!
//! Each file is decoded, cut into windows at pauses and transcribed in turn; a file that fails
//! is reported on stderr in one line and the others still run. This module must not hold a
//! whole file's audio (it streams through [`long::transcribe`]) and must not print logs to
//! stdout, which carries only transcripts.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::audio::decode::DecodeLimits;
use crate::audio::{AudioStream, Truncation};
use crate::domain::{split_language_tag, OutputFormat, Task, ZhScript};
use crate::format::render_task;
use crate::inference::engine::{self, Options};
use crate::inference::long::{self, LongEvent};
use crate::inference::pool::{Pool, PoolConfig};
use crate::models;
use crate::transcript::Transcript;

/// Inputs shorter than this get no progress bar: it would only flicker.
const PROGRESS_MIN_SECS: f64 = 5.0;

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Output: with one format per run, transcripts go to stdout one file after the other (nothing is \
printed for audio without speech), or with --output-dir into DIR/NAME.EXT where NAME is the \
input's file name (en_jfk.wav -> en_jfk.wav.srt; json and verbose_json both use .json). \
A progress bar is drawn on stderr for inputs longer than a few seconds when stderr is a terminal.

Models: a name such as tiny.en resolves to MODELS_DIR/ggml-tiny.en.bin; a missing file is fetched \
(with progress) from EARSHOT_MODEL_MIRROR (a directory or URL) first, then the public hub, and \
verified before use. The Silero VAD model (silero-v6.2.0) is fetched the same way; without it \
windows are cut by an energy detector.

Errors: a file that cannot be transcribed is reported on stderr as `earshot: FILE: reason` and \
the remaining files are still transcribed; the exit status is then 1. A file whose audio ends \
before the length its header declares (truncated download, damaged header) is transcribed as \
far as it can be read, and also counts as failed. Model and option errors stop before any file.")]
pub struct TranscribeArgs {
    /// Audio files (WAV, FLAC, MP3, Ogg/Vorbis, Opus, AAC/M4A, ALAC, AIFF, CAF, MKV/WebM).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Whisper model: a name (tiny.en, base, base-q5_1, small, …; fetched into --models-dir when
    /// missing) or a path to a ggml file.
    #[arg(long, short, env = "EARSHOT_MODEL", default_value = models::DEFAULT_MODEL)]
    pub model: String,
    /// Where model files are kept.
    #[arg(long, env = "EARSHOT_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Spoken language: `auto` to detect it, or a code such as en, zh, de, fr, ja; `zh-Hans` /
    /// `zh-Hant` mean Mandarin written in that script (English-only `.en` models always use `en`).
    #[arg(long, short, default_value = "auto")]
    pub language: String,
    /// Script for Mandarin output: simplified, traditional, or keep (as Whisper wrote it).
    #[arg(
        long,
        env = "EARSHOT_ZH_SCRIPT",
        value_enum,
        default_value = "simplified"
    )]
    pub zh_script: ZhScript,
    /// Translate to English instead of transcribing (multilingual models only).
    #[arg(long)]
    pub translate: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "txt")]
    pub format: OutputFormat,
    /// CPU threads for Whisper.
    #[arg(long, short, default_value_t = crate::app::config::default_threads())]
    pub threads: usize,
    /// Beam search width; 1 decodes greedily (faster, a little less accurate). The default is
    /// whisper-cli's.
    #[arg(long, default_value_t = engine::DEFAULT_BEAM_SIZE, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub beam_size: u32,
    /// Text that primes Whisper's vocabulary and style (names, jargon).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Sampling temperature to start at, 0 to 1 (0: most likely text; Whisper raises it on
    /// its own when a window decodes to repetitive or unlikely text).
    #[arg(long, default_value_t = 0.0, value_parser = temperature)]
    pub temperature: f32,
    /// Write one file per input, DIR/NAME.EXT (created if needed), instead of printing to stdout.
    #[arg(long, short)]
    pub output_dir: Option<PathBuf>,
}

/// Transcribes every file; fails (after trying them all) if any file failed.
pub fn run(args: TranscribeArgs) -> Result<()> {
    let options = options(&args);
    engine::validate(&options).map_err(|e| anyhow!("{e}"))?;
    let model = models::ensure(&args.model, &args.models_dir, true).map_err(|e| anyhow!("{e}"))?;
    let vad = models::ensure(models::VAD_MODEL, &args.models_dir, true)
        .map_err(|e| tracing::warn!("no VAD model ({e}); cutting windows by energy"))
        .ok();
    let pool = Pool::start(PoolConfig {
        model_path: model,
        workers: 1,
        queue_capacity: 2,
        zh_script: args.zh_script,
    })
    .map_err(|e| anyhow!("{e}"))?;
    if args.translate && !pool.is_multilingual() {
        tracing::warn!(
            "{} is English-only: --translate has no effect",
            pool.model_name()
        );
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let mut written = HashSet::new();
    let mut failed = 0;
    for file in &args.files {
        if let Err(reason) =
            transcribe_and_emit(&args, &pool, &options, vad.as_deref(), file, &mut written)
        {
            let line = format!("{}: {reason}", file.display());
            if args.files.len() == 1 {
                bail!(line);
            }
            eprintln!("earshot: {line}");
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
        n => bail!("{n} of {} files failed", args.files.len()),
    }
}

/// Whisper options from the command line.
fn options(args: &TranscribeArgs) -> Options {
    let (language, zh_script) = split_language_tag(&args.language);
    Options {
        language: (language != "auto").then_some(language),
        zh_script,
        translate: args.translate,
        initial_prompt: args.prompt.clone(),
        beam_size: Some(args.beam_size),
        threads: args.threads,
        token_timestamps: matches!(args.format, OutputFormat::VerboseJson),
        low_latency: false,
        temperature: args.temperature,
    }
}

fn temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

/// One file: transcribe, write the result, and say why if it failed (a user-facing reason).
fn transcribe_and_emit(
    args: &TranscribeArgs,
    pool: &Pool,
    options: &Options,
    vad: Option<&Path>,
    file: &Path,
    written: &mut HashSet<PathBuf>,
) -> Result<(), String> {
    let (transcript, truncated) = transcribe_file(pool, file, options, vad)?;
    let task = if options.translate && pool.is_multilingual() {
        Task::Translate
    } else {
        Task::Transcribe
    };
    emit(
        args,
        file,
        &render_task(&transcript, args.format, task),
        written,
    )?;
    match truncated {
        Some(cut) => Err(cut.to_string()),
        None => Ok(()),
    }
}

/// Decodes and transcribes one file in windows, showing progress for long inputs.
/// Returns the transcript and, when the audio ends well before its header says, by how much.
pub fn transcribe_file(
    pool: &Pool,
    file: &Path,
    options: &Options,
    vad: Option<&Path>,
) -> Result<(Transcript, Option<Truncation>), String> {
    let mut audio = AudioStream::open(file, DecodeLimits::default()).map_err(|e| e.to_string())?;
    let declared = audio.duration_hint();
    let bar = progress_bar(declared);
    let transcript = long::transcribe(
        pool,
        || audio.next_chunk(),
        options,
        vad,
        &CancellationToken::new(),
        |event| {
            if let LongEvent::Progress { processed_secs } = event {
                bar.set_position((processed_secs * 10.0) as u64);
            }
        },
    );
    bar.finish_and_clear();
    let transcript = transcript.map_err(|e| e.to_string())?;
    Ok((transcript, audio.truncation()))
}

/// A bar over the declared duration, a spinner when it is unknown, nothing for short inputs.
/// indicatif draws nothing when stderr is not a terminal.
fn progress_bar(declared_secs: Option<f64>) -> ProgressBar {
    let template = match declared_secs {
        Some(secs) if secs < PROGRESS_MIN_SECS => return ProgressBar::hidden(),
        Some(_) => "{spinner} [{elapsed_precise}] {wide_bar} {percent}% of the audio, eta {eta}",
        None => "{spinner} [{elapsed_precise}] transcribing…",
    };
    let bar = match declared_secs {
        Some(secs) => ProgressBar::new((secs * 10.0) as u64),
        None => ProgressBar::no_length(),
    };
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints `text` (nothing when empty) or writes it to `DIR/NAME.EXT`, refusing to overwrite
/// an output written earlier in this run (two inputs with the same file name).
fn emit(
    args: &TranscribeArgs,
    file: &Path,
    text: &str,
    written: &mut HashSet<PathBuf>,
) -> Result<(), String> {
    let Some(dir) = &args.output_dir else {
        let text = text.trim_end();
        if text.is_empty() {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        return writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"));
    };
    let out = output_path(dir, file, args.format);
    if !written.insert(out.clone()) {
        return Err(format!(
            "{} was already written for another input with the same name in this run",
            out.display()
        ));
    }
    std::fs::write(&out, text).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// `DIR/NAME.EXT` with NAME the input's whole file name, so en_jfk.wav and en_jfk.mp3 do not
/// overwrite each other.
fn output_path(dir: &Path, file: &Path, format: OutputFormat) -> PathBuf {
    let mut name = file.file_name().unwrap_or(file.as_os_str()).to_os_string();
    name.push(".");
    name.push(format.extension());
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_keep_the_input_extension() {
        let dir = Path::new("/out");
        assert_eq!(
            output_path(dir, Path::new("a/talk.2024.mp3"), OutputFormat::Srt),
            PathBuf::from("/out/talk.2024.mp3.srt")
        );
        assert_eq!(
            output_path(dir, Path::new("en_jfk.wav"), OutputFormat::VerboseJson),
            PathBuf::from("/out/en_jfk.wav.json")
        );
    }
}
