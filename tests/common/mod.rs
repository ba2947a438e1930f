//! Shared helpers for integration tests: where the real corpus lives and what its manifest says.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/corpus` relative to the crate root.
pub fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    assert!(
        dir.join("MANIFEST.tsv").is_file(),
        "test corpus not found at {} — the shared corpus (MANIFEST.tsv and audio files) must be \
         checked out next to the repository as ../shared/corpus",
        dir.display()
    );
    dir
}

/// Path of one corpus file; panics with a clear message when it is missing.
pub fn corpus_file(name: &str) -> PathBuf {
    let path = corpus_dir().join(name);
    assert!(
        path.is_file(),
        "corpus file {} is missing — restore ../shared/corpus (see MANIFEST.tsv)",
        path.display()
    );
    path
}

/// One row of MANIFEST.tsv.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File name inside the corpus directory.
    pub file: String,
    /// Spoken language code, or `none`.
    pub language: String,
    /// Duration in seconds, as measured when the corpus was built.
    pub duration_s: f64,
    /// Human description of container/codec/rate/channels.
    pub format: String,
    /// What is said, when known.
    pub reference_transcript: String,
}

/// All rows of MANIFEST.tsv (columns found by header name).
pub fn manifest() -> Vec<Entry> {
    let text =
        std::fs::read_to_string(corpus_dir().join("MANIFEST.tsv")).expect("read MANIFEST.tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("MANIFEST.tsv has a header")
        .split('\t')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("MANIFEST.tsv has no column {name}"))
    };
    let (file, language, duration, format, transcript) = (
        col("file"),
        col("language"),
        col("duration_s"),
        col("format"),
        col("reference_transcript"),
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or("").to_string();
            Entry {
                file: cell(file),
                language: cell(language),
                duration_s: cell(duration)
                    .parse()
                    .unwrap_or_else(|_| panic!("bad duration_s in line: {line}")),
                format: cell(format),
                reference_transcript: cell(transcript),
            }
        })
        .collect()
}

/// The model mirror the tests read from: `$EARSHOT_MODEL_MIRROR`, else `../shared/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("EARSHOT_MODEL_MIRROR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"),
    }
}

/// Path of a model file in the mirror; panics with how to get it when missing.
pub fn model(file: &str) -> PathBuf {
    let path = models_dir().join(file);
    assert!(
        path.is_file(),
        "model {} is missing: set EARSHOT_MODEL_MIRROR to a folder holding {file}, \
         or run scripts/download-model.sh",
        path.display()
    );
    path
}

/// The reference transcript of a corpus file from MANIFEST.tsv.
pub fn reference(file: &str) -> String {
    manifest()
        .into_iter()
        .find(|e| e.file == file)
        .unwrap_or_else(|| panic!("{file} is not in MANIFEST.tsv"))
        .reference_transcript
}
pub mod server;
