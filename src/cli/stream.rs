//! `earshot stream URL FILE|-`: stream audio to a running server as a live stream; partials
//! shown on stderr, final segments printed as they commit. A dropped connection is reconnected
//! and the stream resumed (said on stderr); the transcript still has every segment once.
//!
//! It must not speak the protocol itself: the live stream is [`crate::client`]'s.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::client::stream::{self, StreamEvent, StreamOptions, StreamSource};
use crate::client::upload::to_transcript;
use crate::domain::OutputFormat;
use crate::format::render;

/// Longest partial shown on the live line (its tail), so it stays on one terminal line.
const PARTIAL_CHARS: usize = 100;

#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    /// Server URL, e.g. ws://127.0.0.1:8767/
    pub url: String,
    /// Audio file (decoded here to 16 kHz), or `-` for raw 16-bit little-endian PCM on stdin.
    pub input: String,
    /// Send at real-time pace, as a live source would (default: as fast as the server takes it).
    #[arg(long)]
    pub realtime: bool,
    /// Output format. `txt` prints segments on stdout as they commit; other formats show them
    /// on stderr and print the whole transcript on stdout at the end.
    #[arg(long, short, value_enum, default_value = "txt")]
    pub format: OutputFormat,
    /// Spoken language (`auto` to let the server detect it).
    #[arg(long, short, default_value = "auto")]
    pub language: String,
    /// Translate to English instead of transcribing.
    #[arg(long)]
    pub translate: bool,
    /// Milliseconds of audio per frame.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunk_ms: u32,
    /// Sample rate of raw PCM on stdin.
    #[arg(long, default_value_t = 16_000)]
    pub sample_rate: u32,
    /// Channels of raw PCM on stdin (interleaved).
    #[arg(long, default_value_t = 1)]
    pub channels: u16,
    /// Reconnects (resuming the stream) after consecutive failures before giving up; 0 = a
    /// dropped connection ends the stream.
    #[arg(long, default_value_t = StreamOptions::default().max_retries)]
    pub max_retries: u32,
}

pub fn run(args: StreamArgs) -> Result<()> {
    let source = if args.input == "-" {
        StreamSource::RawS16 {
            reader: Box::new(tokio::io::stdin()),
            sample_rate: args.sample_rate,
            channels: args.channels,
        }
    } else {
        StreamSource::File(PathBuf::from(&args.input))
    };
    let options = StreamOptions {
        realtime: args.realtime,
        chunk_ms: args.chunk_ms,
        language: language_option(&args.language),
        translate: args.translate,
        max_retries: args.max_retries,
        ..StreamOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut view = LiveView::new(args.format == OutputFormat::Txt);
    let outcome = runtime
        .block_on(stream::stream(&args.url, source, &options, |e| {
            view.on_event(e)
        }))
        .with_context(|| format!("streaming {}", args.input));
    view.clear_partial();
    let outcome = outcome?;
    if args.format != OutputFormat::Txt {
        print!("{}", render(&to_transcript(&outcome.result), args.format));
    }
    Ok(())
}

/// `auto` (or empty) means "let the server detect the language".
pub(super) fn language_option(language: &str) -> Option<String> {
    let l = language.trim();
    (!l.is_empty() && !l.eq_ignore_ascii_case("auto")).then(|| l.to_string())
}

/// The terminal side of a stream: one overwritten dim line of partial text on stderr, final
/// segments on stdout (txt) or stderr (other formats, whose stdout is the final document).
struct LiveView {
    /// Whether segments go to stdout.
    segments_to_stdout: bool,
    /// Whether stderr is a terminal (partials only make sense there).
    tty: bool,
    /// Whether a partial is on screen and must be cleared before other output.
    partial_shown: bool,
}

impl LiveView {
    fn new(segments_to_stdout: bool) -> Self {
        LiveView {
            segments_to_stdout,
            tty: std::io::stderr().is_terminal(),
            partial_shown: false,
        }
    }

    fn on_event(&mut self, event: StreamEvent<'_>) {
        match event {
            StreamEvent::Partial { text, .. } if self.tty && text.trim().is_empty() => {
                self.clear_partial();
            }
            StreamEvent::Partial { text, .. } if self.tty => {
                let text = tail(text.trim(), PARTIAL_CHARS);
                eprint!("\r\x1b[2K\x1b[2m{text}\x1b[0m");
                let _ = std::io::stderr().flush();
                self.partial_shown = true;
            }
            StreamEvent::Segment(s) => {
                self.clear_partial();
                let text = s.text.trim();
                if self.segments_to_stdout {
                    println!("{text}");
                    let _ = std::io::stdout().flush();
                } else {
                    eprintln!("{text}");
                }
            }
            StreamEvent::Lag { behind_seconds } => {
                tracing::debug!(behind_seconds, "server behind real time");
            }
            StreamEvent::Started { task_id } => tracing::debug!(%task_id, "stream started"),
            StreamEvent::Reconnecting {
                attempt,
                max,
                delay,
                error,
            } => {
                self.clear_partial();
                let secs = delay.as_secs_f64();
                eprintln!("{error}; reconnecting in {secs:.1} s (attempt {attempt} of {max})");
            }
            StreamEvent::Resumed {
                task_id,
                received_bytes,
            } => {
                self.clear_partial();
                eprintln!("resumed stream {task_id} (the server had {received_bytes} bytes)");
            }
            StreamEvent::Partial { .. } => {}
        }
    }

    fn clear_partial(&mut self) {
        if self.partial_shown {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.partial_shown = false;
        }
    }
}

/// The last `max` characters of `text` (the newest words of a partial).
fn tail(text: &str, max: usize) -> &str {
    let count = text.chars().count();
    if count <= max {
        return text;
    }
    let skip = count - max;
    let at = text.char_indices().nth(skip).map_or(0, |(i, _)| i);
    &text[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_means_detect() {
        assert_eq!(language_option("auto"), None);
        assert_eq!(language_option(" AUTO "), None);
        assert_eq!(language_option(""), None);
        assert_eq!(language_option("en").as_deref(), Some("en"));
    }

    #[test]
    fn tail_keeps_the_newest_characters() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello world", 5), "world");
        assert_eq!(tail("日本語テキスト", 3), "キスト");
    }
}
