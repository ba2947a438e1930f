//! Model names, where their files live, and getting a verified copy onto disk.
//!
//! A model is named like whisper.cpp names it (`tiny.en`, `base-q5_1`, `silero-v6.2.0`) and lives
//! at `MODELS_DIR/ggml-NAME.bin`. [`ensure`] fetches a missing file, from `EARSHOT_MODEL_MIRROR`
//! first and then the public hub, verifies it and only then gives it its final name, behaving
//! like `scripts/download-model.sh` (both read `models/CHECKSUMS`).
//!
//! [`resident`] decides which models may be in memory at once (budget, idle time, LRU);
//! [`found_in`] lists the models a directory holds, for `--models-dir` without `--models`.
//!
//! This module does not load models (that is `inference`) and never deletes a finished model file.

mod catalog;
mod fetch;
pub mod resident;

use std::path::{Path, PathBuf};

pub use catalog::{known_names, Checksum};

/// The model used when the user names none: small, fast, English.
pub const DEFAULT_MODEL: &str = "tiny.en";
/// The voice-activity model whisper.cpp's VAD uses to cut long audio at pauses.
pub const VAD_MODEL: &str = "silero-v6.2.0";

/// Environment variable naming a mirror (directory or http(s) URL) tried before the hub.
pub const MIRROR_ENV: &str = "EARSHOT_MODEL_MIRROR";
/// Environment variable replacing the public hub's base URL (files are `BASE/ggml-NAME.bin`).
pub const HUB_ENV: &str = "EARSHOT_MODEL_HUB";
/// Environment variable naming the default models directory.
pub const MODELS_DIR_ENV: &str = "EARSHOT_MODELS_DIR";

/// Why a model could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The name is neither a path nor a model in `models/CHECKSUMS`.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// What the user asked for.
        name: String,
        /// The known names, space-separated, so the user can pick one.
        known: String,
    },
    /// A path was given and there is no file there.
    #[error("model file {} does not exist", path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The file exists but does not start like a ggml model.
    #[error("{} is not a ggml model file", path.display())]
    NotAModel {
        /// The offending file.
        path: PathBuf,
    },
    /// Neither the mirror (none set) nor the hub could be reached.
    #[error(
        "cannot download {file} from {url} ({reason}); without internet access, set \
         EARSHOT_MODEL_MIRROR to a directory or URL holding {file}"
    )]
    Offline {
        /// The file wanted, e.g. `ggml-tiny.en.bin`.
        file: String,
        /// The hub URL tried.
        url: String,
        /// What went wrong, in a few words.
        reason: String,
    },
    /// The mirror lacks the file and the hub could not be reached.
    #[error(
        "the mirror EARSHOT_MODEL_MIRROR={mirror} has no {file}, and {url} cannot be reached ({reason})"
    )]
    NotOnMirror {
        /// The file wanted.
        file: String,
        /// The mirror as configured.
        mirror: String,
        /// The hub URL tried after it.
        url: String,
        /// Why the hub failed.
        reason: String,
    },
    /// The mirror setting is neither an existing directory nor an http(s) URL.
    #[error("EARSHOT_MODEL_MIRROR={0} is neither a directory nor an http(s) URL")]
    BadMirror(String),
    /// A server answered with an error status.
    #[error("{url} answered HTTP {status}")]
    Http {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The bytes received are not the ones the checksum vouches for; they were discarded.
    #[error(
        "{file} from {origin} failed verification: expected {algorithm} {expected}, got {actual}; \
         the download was discarded"
    )]
    ChecksumMismatch {
        /// The file wanted.
        file: String,
        /// Where the bytes came from (mirror or URL).
        origin: String,
        /// `sha1` or `sha256`.
        algorithm: &'static str,
        /// The digest the checksum file lists.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Reading or writing a local file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// How and where [`Fetcher::ensure`] gets missing models.
///
/// [`ensure`] builds one from the environment; tests build their own so they never depend on
/// (or race over) process-wide variables.
#[derive(Debug, Clone, Default)]
pub struct Fetcher {
    /// A directory or http(s) URL holding `ggml-NAME.bin` files, tried before the hub, because
    /// machines without internet access still need models.
    pub mirror: Option<String>,
    /// Replaces the public hub's base URL, for private hubs and for tests that must not go online.
    pub hub: Option<String>,
    /// Draw a progress bar on stderr while copying or downloading (interactive use only).
    pub progress: bool,
}

impl Fetcher {
    /// Reads `EARSHOT_MODEL_MIRROR` and `EARSHOT_MODEL_HUB` (empty counts as unset).
    pub fn from_env(progress: bool) -> Fetcher {
        Fetcher {
            mirror: env_var(MIRROR_ENV),
            hub: env_var(HUB_ENV),
            progress,
        }
    }

    /// Returns the path of a usable model file, fetching and verifying it first if missing.
    pub fn ensure(&self, name_or_path: &str, models_dir: &Path) -> Result<PathBuf, ModelError> {
        if looks_like_path(name_or_path) {
            let path = PathBuf::from(name_or_path);
            if !path.is_file() {
                return Err(ModelError::NotFound { path });
            }
            check_header(&path)?;
            return Ok(path);
        }
        let entry = catalog::lookup(name_or_path).ok_or_else(|| ModelError::UnknownModel {
            name: name_or_path.to_string(),
            known: known_names().join(" "),
        })?;
        let dest = models_dir.join(file_name(name_or_path));
        if dest.is_file() {
            check_header(&dest)?;
            return Ok(dest);
        }
        fetch::fetch(self, entry, &dest)?;
        Ok(dest)
    }
}

/// Checks, without fetching anything, that a model can be had: a path must be a file, a name
/// must be in the catalog. For settings that name models to fetch later.
pub fn check(name_or_path: &str) -> Result<(), ModelError> {
    if looks_like_path(name_or_path) {
        let path = PathBuf::from(name_or_path);
        return match path.is_file() {
            true => Ok(()),
            false => Err(ModelError::NotFound { path }),
        };
    }
    match catalog::lookup(name_or_path) {
        Some(_) => Ok(()),
        None => Err(ModelError::UnknownModel {
            name: name_or_path.to_string(),
            known: known_names().join(" "),
        }),
    }
}

/// `tiny.en` → `ggml-tiny.en.bin`.
pub fn file_name(name: &str) -> String {
    format!("ggml-{name}.bin")
}

/// A path if `name_or_path` looks like one (has a separator or ends in `.bin`),
/// else `models_dir/ggml-NAME.bin`. Touches no files.
pub fn resolve(name_or_path: &str, models_dir: &Path) -> PathBuf {
    if looks_like_path(name_or_path) {
        PathBuf::from(name_or_path)
    } else {
        models_dir.join(file_name(name_or_path))
    }
}

/// Where models live by default: `$EARSHOT_MODELS_DIR`, else `./models`.
pub fn models_dir() -> PathBuf {
    env_var(MODELS_DIR_ENV).map_or_else(|| PathBuf::from("models"), PathBuf::from)
}

/// Returns a usable model file, fetching it (mirror first, then hub) and verifying it if missing.
/// Settings come from the environment (see [`Fetcher::from_env`]).
pub fn ensure(
    name_or_path: &str,
    models_dir: &Path,
    progress: bool,
) -> Result<PathBuf, ModelError> {
    Fetcher::from_env(progress).ensure(name_or_path, models_dir)
}

/// OpenAI's model names, which an OpenAI client sends as it is: they mean the server's default
/// model.
pub const OPENAI_NAMES: &[&str] = &[
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime",
    "gpt-4o-realtime-preview",
    "gpt-4o-mini-realtime-preview",
];

/// Whether `name` is one of OpenAI's model names (including dated snapshots such as
/// `gpt-4o-mini-transcribe-2025-03-20`), which mean the default model.
pub fn is_openai_name(name: &str) -> bool {
    OPENAI_NAMES
        .iter()
        .any(|known| name == *known || name.strip_prefix(known).is_some_and(|r| r.starts_with('-')))
}

/// Whether a model's name says it is English-only, as whisper.cpp names them (`tiny.en`,
/// `small.en-q5_1`); the model file itself is the final word once loaded.
pub fn is_english_only(name: &str) -> bool {
    name.split(['-', '_'])
        .next()
        .is_some_and(|base| base.ends_with(".en"))
}

/// The Whisper models a directory holds (`ggml-NAME.bin`, the VAD model excepted), by name,
/// sorted: what `earshot serve --models-dir DIR` serves when no `--models` list is given.
pub fn found_in(dir: &Path) -> Result<Vec<String>, ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        context: format!("cannot list the models directory {}", dir.display()),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|file| {
            let name = file.strip_prefix("ggml-")?.strip_suffix(".bin")?;
            (!name.is_empty() && !name.starts_with("silero")).then(|| name.to_owned())
        })
        .collect();
    names.sort();
    Ok(names)
}

fn looks_like_path(name_or_path: &str) -> bool {
    name_or_path.contains('/')
        || name_or_path.contains(std::path::MAIN_SEPARATOR)
        || name_or_path.ends_with(".bin")
}

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|value| !value.is_empty())
}

/// ggml files start with the magic 0x67676d6c stored little-endian.
const GGML_MAGIC: &[u8; 4] = b"lmgg";

/// A cheap check that a file is a ggml model, so a stray HTML page or empty file is caught
/// here with a clear message instead of deep inside whisper.cpp.
fn check_header(path: &Path) -> Result<(), ModelError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut magic));
    match read {
        Ok(()) if &magic == GGML_MAGIC => Ok(()),
        Ok(()) => Err(ModelError::NotAModel {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ModelError::NotAModel {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(ModelError::Io {
            context: format!("cannot read {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_whisper_cpp() {
        assert_eq!(file_name("tiny.en"), "ggml-tiny.en.bin");
        assert_eq!(file_name(VAD_MODEL), "ggml-silero-v6.2.0.bin");
        assert_eq!(
            file_name("large-v3-turbo-q5_0"),
            "ggml-large-v3-turbo-q5_0.bin"
        );
    }

    #[test]
    fn names_resolve_into_the_models_dir() {
        let dir = Path::new("/srv/models");
        assert_eq!(
            resolve("tiny.en", dir),
            PathBuf::from("/srv/models/ggml-tiny.en.bin")
        );
        assert_eq!(resolve(DEFAULT_MODEL, dir), dir.join("ggml-tiny.en.bin"));
    }

    #[test]
    fn paths_resolve_to_themselves() {
        let dir = Path::new("/srv/models");
        assert_eq!(resolve("./my.bin", dir), PathBuf::from("./my.bin"));
        assert_eq!(resolve("/abs/model", dir), PathBuf::from("/abs/model"));
        assert_eq!(
            resolve("ggml-custom.bin", dir),
            PathBuf::from("ggml-custom.bin")
        );
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = Fetcher::default()
            .ensure("tiny.fr", Path::new("/nonexistent"))
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("unknown model `tiny.fr`"), "{message}");
        assert!(message.contains("tiny.en") && message.contains("silero-v6.2.0"));
    }

    #[test]
    fn openai_names_and_their_snapshots_are_recognised() {
        for name in [
            "whisper-1",
            "gpt-4o-transcribe",
            "gpt-4o-mini-transcribe-2025-03-20",
        ] {
            assert!(is_openai_name(name), "{name}");
        }
        for name in ["tiny.en", "whisper-10", "gpt-4o", "base-q5_1"] {
            assert!(!is_openai_name(name), "{name}");
        }
    }

    #[test]
    fn english_only_names_end_their_base_in_dot_en() {
        for name in ["tiny.en", "base.en", "small.en-q5_1", "medium.en-q8_0"] {
            assert!(is_english_only(name), "{name}");
        }
        for name in ["tiny", "base-q5_1", "large-v3-turbo", "ggml-enx"] {
            assert!(!is_english_only(name), "{name}");
        }
    }

    #[test]
    fn a_directory_lists_its_whisper_models_but_not_the_vad() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "ggml-tiny.en.bin",
            "ggml-base-q5_1.bin",
            "ggml-silero-v6.2.0.bin",
            "notes.txt",
            "ggml-.bin",
        ] {
            std::fs::write(dir.path().join(file), "x").unwrap();
        }
        assert_eq!(found_in(dir.path()).unwrap(), ["base-q5_1", "tiny.en"]);
        assert!(found_in(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn missing_paths_are_not_fetched() {
        let err = Fetcher::default()
            .ensure("/nonexistent/ggml-tiny.en.bin", Path::new("/nonexistent"))
            .unwrap_err();
        assert!(matches!(err, ModelError::NotFound { .. }), "{err}");
    }

    #[test]
    fn non_ggml_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let html = dir.path().join("page.bin");
        std::fs::write(&html, "<html>not found</html>").unwrap();
        let empty = dir.path().join("empty.bin");
        std::fs::write(&empty, "").unwrap();
        for path in [html, empty] {
            let err = Fetcher::default()
                .ensure(path.to_str().unwrap(), dir.path())
                .unwrap_err();
            assert!(matches!(err, ModelError::NotAModel { .. }), "{err}");
        }
    }
}
