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
pub mod process;
pub mod server;

/// Where [`jfk_with_bad_samples`] puts its non-finite and absurd samples, in seconds: all
/// inside the speech.
pub const BAD_SAMPLE_SECS: [f64; 5] = [1.5, 3.0, 4.5, 6.0, 7.5];

/// `en_jfk.wav` written as a 48 kHz mono 32-bit float WAV (so it must be resampled) with NaN,
/// +inf, -inf, 1e30 and `f32::MAX` samples poked into the speech at [`BAD_SAMPLE_SECS`]: what a
/// broken float recorder or a hostile client sends. Returns the file's path inside `dir`.
pub fn jfk_with_bad_samples(dir: &std::path::Path) -> PathBuf {
    let mut reader = hound::WavReader::open(corpus_file("en_jfk.wav")).expect("read en_jfk.wav");
    assert_eq!(reader.spec().sample_rate, 16_000, "en_jfk.wav is 16 kHz");
    let speech: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("a sample")) / 32768.0)
        .collect();
    let mut samples = upsample_3x(&speech);
    let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, f32::MAX];
    for (secs, value) in BAD_SAMPLE_SECS.iter().zip(bad) {
        samples[(secs * 48_000.0) as usize] = value;
    }
    let path = dir.join("jfk_bad_samples.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(&path, spec).expect("create the float WAV");
    for s in samples {
        writer.write_sample(s).expect("write a sample");
    }
    writer.finalize().expect("finish the float WAV");
    path
}

/// 16 kHz → 48 kHz by linear interpolation: plenty for speech recognition, and independent of
/// the resampler under test.
fn upsample_3x(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() * 3);
    for (i, &a) in x.iter().enumerate() {
        let b = x.get(i + 1).copied().unwrap_or(a);
        out.extend([a, a + (b - a) / 3.0, a + 2.0 * (b - a) / 3.0]);
    }
    out
}

/// The first half of a corpus file's bytes: its header still declares the whole duration
/// (a cut download). Written into `dir`; returns the path.
pub fn first_half(dir: &std::path::Path, name: &str) -> PathBuf {
    let bytes = std::fs::read(corpus_file(name)).expect("read a corpus file");
    let path = dir.join(format!("half_{name}"));
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write the cut file");
    path
}

/// `earshot serve` as the process tests run it: the model mirror, no colour, the default log
/// filter, stdout discarded and the log (stderr) on a pipe the test must keep draining.
pub fn earshot_serve() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_earshot"));
    cmd.arg("serve")
        .env("EARSHOT_MODEL_MIRROR", models_dir())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Runs `python3 tests/SCRIPT ARGS…`, a test that drives the server with a real client
/// package (`module`), and returns the JSON object its last line prints. Fails the test when
/// the package is missing or any of the script's own checks fails.
pub fn python_checks(script: &str, args: &[String], module: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let output = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 runs ({e}): install Python 3 and `pip install {module}`")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "a Python package is missing (scripts/test installs them; or pip install {module}):\n{stderr}"
    );
    assert!(
        output.status.success(),
        "{script} checks failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script}'s last line is JSON ({e}):\n{stdout}"))
}

/// [`python_checks`] from async code: runs it on the blocking pool.
pub async fn run_python(
    script: &'static str,
    args: Vec<String>,
    module: &'static str,
) -> serde_json::Value {
    tokio::task::spawn_blocking(move || python_checks(script, &args, module))
        .await
        .unwrap()
}
