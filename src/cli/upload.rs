//! `earshot upload URL FILE`: upload a file to a running server (resuming after dropped
//! connections), show progress on stderr, print the transcript on stdout (and a line on stderr
//! when the server found the file truncated).
//!
//! It must not speak the protocol itself: the resumable upload is [`crate::client`]'s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::upload::{self, UploadEvent, UploadOptions, UploadOutcome, UploadProtocol};
use crate::domain::OutputFormat;
use crate::domain::TaskId;
use crate::format::render;

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// Server URL, e.g. ws://127.0.0.1:8767/
    pub url: String,
    /// Audio file to upload.
    pub file: PathBuf,
    /// Output format of the transcript.
    #[arg(long, short, value_enum, default_value = "txt")]
    pub format: OutputFormat,
    /// Bytes per chunk (at most the server's max_chunk_bytes, 5 MiB by default).
    #[arg(long, default_value = "1MiB")]
    pub chunk_size: ByteSize,
    /// Chunks in flight on the binary path (default and maximum: the server's chunk_window).
    #[arg(long)]
    pub parallel: Option<u32>,
    /// `binary` (fast path) or `seed` (base64 JSON chunks, one at a time).
    #[arg(long, value_enum, default_value = "binary")]
    pub protocol: UploadProtocol,
    /// Spoken language (`auto` to let the server detect it).
    #[arg(long, short, default_value = "auto")]
    pub language: String,
    /// Translate to English instead of transcribing.
    #[arg(long)]
    pub translate: bool,
    /// Reconnect attempts after consecutive failures before giving up.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
    /// Print a JSON summary (ids, sizes, timings, text, segments) instead of the transcript.
    #[arg(long)]
    pub json: bool,
    /// Continue an earlier upload of the same file (its task id) instead of starting anew.
    #[arg(long, value_name = "TASK_ID", value_parser = parse_task_id)]
    pub resume: Option<TaskId>,
}

fn parse_task_id(s: &str) -> Result<TaskId, String> {
    TaskId::parse(s).map_err(|_| format!("{s:?} is not a task id (a UUID)"))
}

pub fn run(args: UploadArgs) -> Result<()> {
    let options = UploadOptions {
        protocol: args.protocol,
        chunk_size: args.chunk_size.as_u64(),
        window: args.parallel,
        language: super::stream::language_option(&args.language),
        translate: args.translate,
        max_retries: args.retries,
        ..UploadOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut progress = Progress::default();
    let on_event = |e: UploadEvent<'_>| progress.on_event(e);
    let outcome = runtime
        .block_on(async {
            match args.resume {
                Some(id) => upload::resume(&args.url, id, &args.file, &options, on_event).await,
                None => upload::upload(&args.url, &args.file, &options, on_event).await,
            }
        })
        .with_context(|| format!("uploading {}", args.file.display()));
    progress.clear();
    let outcome = outcome?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary(&args, &outcome))?
        );
    } else {
        print!("{}", render(&outcome.transcript(), args.format));
    }
    if let Some(cut) = &outcome.result.truncated {
        eprintln!("earshot: {}: {cut}", args.file.display());
    }
    Ok(())
}

/// The `--json` output.
fn summary(args: &UploadArgs, o: &UploadOutcome) -> serde_json::Value {
    let r = &o.result;
    serde_json::json!({
        "task_id": o.task_id,
        "file": args.file.display().to_string(),
        "bytes": o.file_bytes,
        "bytes_sent": o.bytes_sent,
        "reconnects": o.reconnects,
        "upload_seconds": round3(o.upload_seconds),
        "upload_mb_per_s": round3(o.upload_mb_per_s()),
        "transcription_seconds": round3(o.transcription_seconds),
        "processing_seconds": round3(r.processing_seconds),
        "language": r.language,
        "duration": r.duration,
        "text": r.text,
        "segments": r.segments,
        "truncated": r.truncated,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Progress bars on stderr: bytes stored, then transcription percent. Hidden when stderr is
/// not a terminal (indicatif checks).
#[derive(Default)]
struct Progress {
    /// The current bar, if one is shown.
    bar: Option<ProgressBar>,
}

impl Progress {
    fn on_event(&mut self, event: UploadEvent<'_>) {
        match event {
            UploadEvent::Started { file_bytes } => {
                let bar = ProgressBar::new(file_bytes).with_style(bytes_style());
                bar.set_message("uploading");
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bar = Some(bar);
            }
            UploadEvent::Stored { bytes, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(bytes);
                }
            }
            UploadEvent::Reconnecting {
                attempt,
                max,
                delay,
                error,
            } => self.println(&format!(
                "earshot: {error}; reconnecting in {:.1} s (attempt {attempt} of {max})",
                delay.as_secs_f64()
            )),
            UploadEvent::UploadComplete => {
                self.clear();
                let bar = ProgressBar::new(100).with_style(percent_style());
                bar.set_message("transcribing");
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bar = Some(bar);
            }
            UploadEvent::TranscriptionProgress { percent } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(percent.clamp(0.0, 100.0) as u64);
                }
            }
            UploadEvent::Ready { .. } | UploadEvent::Segment(_) => {}
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn percent_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}% {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
