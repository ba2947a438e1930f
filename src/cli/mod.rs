//! The `earshot` command line. Each subcommand lives in its own file and is a thin layer over the
//! library; errors get context here (anyhow) and become a one-line reason with a non-zero exit.

mod serve;
mod stream;
mod transcribe;
mod upload;

use clap::{Parser, Subcommand};

/// Earshot: self-hosted speech transcription (live WebSocket streaming and resumable uploads,
/// Whisper on the CPU).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter, e.g. `info`, `earshot=debug` (also RUST_LOG).
    #[arg(
        long,
        global = true,
        env = "EARSHOT_LOG",
        default_value = "info,whisper_rs=warn"
    )]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: WebSocket live streaming and resumable uploads on one port.
    Serve(serve::ServeArgs),
    /// Transcribe audio files locally and print the text.
    Transcribe(transcribe::TranscribeArgs),
    /// Fetch a Whisper model by name into the models directory (verified).
    FetchModel(FetchModelArgs),
    /// Upload a file to a running server (resumable) and print its transcript.
    Upload(upload::UploadArgs),
    /// Stream audio to a running server live; print segments as they become final.
    Stream(stream::StreamArgs),
}

/// `earshot fetch-model`.
#[derive(Debug, clap::Args)]
pub struct FetchModelArgs {
    /// Model name: tiny, tiny.en, base, base.en, small, … (-q5_1/-q8_0 variants), silero-v6.2.0.
    pub name: String,
    /// Directory to store it in.
    #[arg(long, env = "EARSHOT_MODELS_DIR", default_value = "models")]
    pub models_dir: std::path::PathBuf,
}

/// Parses arguments, sets up logging and runs the chosen command.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Transcribe(args) => transcribe::run(args),
        Command::FetchModel(args) => fetch_model(args),
        Command::Upload(args) => upload::run(args),
        Command::Stream(args) => stream::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("earshot: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn fetch_model(args: FetchModelArgs) -> anyhow::Result<()> {
    let path = crate::models::ensure(&args.name, &args.models_dir, true)?;
    println!("{}", path.display());
    Ok(())
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
