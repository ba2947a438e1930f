//! One Whisper model in memory ([`Model`]): its whisper.cpp context, its name and what it can
//! do. Jobs carry an `Arc<Model>` to the pool, whose workers make their own decoder state from
//! it; the memory is freed when the last `Arc` and the last state made from it are gone.
//!
//! This module must not decide which models are loaded or for how long (that is
//! [`super::served`]), nor run jobs (that is [`super::pool`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use whisper_rs::{WhisperContext, WhisperState};

use super::engine::{self, InferenceError};

/// A loaded ggml Whisper model.
pub struct Model {
    /// Unique for the life of the process, so a worker can tell a reloaded model from the
    /// one it made a state for.
    id: u64,
    /// Short name for requests, logs and the API ("tiny.en").
    name: String,
    /// Whether the model knows languages other than English (and can translate).
    multilingual: bool,
    /// Size of the file it was loaded from: what it counts against the memory budget.
    bytes: u64,
    /// whisper.cpp's context: the weights, shared by every worker's state.
    context: WhisperContext,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("multilingual", &self.multilingual)
            .finish()
    }
}

/// Source of [`Model::id`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Model {
    /// Loads the ggml file at `path` (slow: call it on a blocking thread), named `name`.
    pub fn load(name: &str, path: &Path) -> Result<Model, InferenceError> {
        whisper_rs::install_logging_hooks();
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(InferenceError::ModelLoad {
                path: shown,
                reason: "no such file".into(),
            });
        }
        let context =
            WhisperContext::new_with_params(path, engine::context_params()).map_err(|e| {
                InferenceError::ModelLoad {
                    path: shown,
                    reason: e.to_string(),
                }
            })?;
        Ok(Model {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            multilingual: context.is_multilingual(),
            bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
            context,
        })
    }

    /// The name requests use ("tiny.en").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the model handles languages other than English (and translation).
    pub fn is_multilingual(&self) -> bool {
        self.multilingual
    }

    /// The languages the model transcribes, as Whisper codes: `en` alone for an English-only
    /// model, Whisper's whole list for a multilingual one.
    pub fn languages(&self) -> Vec<&'static str> {
        languages(self.multilingual)
    }

    /// Size of the model's file in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Process-unique id of this load.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// A fresh decoder state on this model's weights, for one worker.
    pub(super) fn create_state(&self) -> Result<WhisperState, InferenceError> {
        self.context
            .create_state()
            .map_err(|e| InferenceError::Worker(e.to_string()))
    }
}

/// The languages a model transcribes: `en` alone for an English-only model, Whisper's whole
/// list for a multilingual one.
pub fn languages(multilingual: bool) -> Vec<&'static str> {
    if !multilingual {
        return vec!["en"];
    }
    (0..=whisper_rs::get_lang_max_id())
        .filter_map(whisper_rs::get_lang_str)
        .collect()
}

/// "…/ggml-tiny.en.bin" → "tiny.en".
pub fn name_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.strip_prefix("ggml-").unwrap_or(&stem).to_owned()
}
