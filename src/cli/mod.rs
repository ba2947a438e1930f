//! The `earshot` command line. Each subcommand lives in its own file and is a thin layer over the
//! library; errors get context here (anyhow) and become a one-line reason with a non-zero exit.
//!
//! It must not hold logic the library lacks: a command only parses, calls and reports.

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

    /// Log line format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, env = "EARSHOT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with span fields (connection id, peer).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: WebSocket live streaming and resumable uploads on one port.
    // Boxed: the server's settings are several times the size of any other command's.
    Serve(Box<serve::ServeArgs>),
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
    let (cli, matches) = match parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("earshot: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => {
            let serve = serve_command();
            let sub = matches
                .subcommand_matches("serve")
                .expect("serve was parsed");
            serve::run(*args, sub, &serve)
        }
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

/// Parses the command line; for `serve --config FILE`, applies the file's settings under the
/// flags and environment (see [`crate::server::settings`]) by parsing again with them added.
/// Help, version and usage errors exit here, as clap does.
fn parse(args: Vec<std::ffi::OsString>) -> anyhow::Result<(Cli, clap::ArgMatches)> {
    use clap::{CommandFactory, FromArgMatches};
    let first = Cli::command().get_matches_from(&args);
    let file = first
        .subcommand_matches("serve")
        .and_then(|sub| Some((sub, sub.get_one::<std::path::PathBuf>("config_file")?)));
    let matches = match file {
        Some((sub, path)) => {
            let table = crate::server::settings::read_file(path)?;
            let extra = crate::server::settings::file_args(&serve_command(), sub, &table)?;
            Cli::command().get_matches_from(args.into_iter().chain(extra))
        }
        None => first,
    };
    Ok((Cli::from_arg_matches(&matches)?, matches))
}

/// The built `serve` subcommand (global flags included), for the settings file layer.
fn serve_command() -> clap::Command {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("serve")
        .expect("serve is a subcommand")
        .clone()
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}
