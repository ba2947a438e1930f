//! `earshot transcribe` as users run it: the real binary, real models, real recordings.
//!
//! Models are fetched by the binary itself from `EARSHOT_MODEL_MIRROR` (default
//! `../shared/models`) into a temporary `--models-dir`, so the fetch path runs too; the hub is
//! pointed at a closed local port so nothing ever goes online. English runs use tiny.en with
//! 2 threads; the first run (shared by all tests) fetches the models.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::LazyLock;

use common::{corpus_file, manifest, model, models_dir, reference};
use earshot::eval::{cer, wer};
use serde_json::Value;
use tempfile::TempDir;

const JFK_FILES: [&str; 4] = [
    "en_jfk.wav",
    "en_jfk.mp3",
    "en_jfk_44k_stereo.flac",
    "en_jfk_441khz.m4a",
];
/// A hub URL that refuses connections: tests must never download from the internet.
const NO_HUB: &str = "http://127.0.0.1:9";

/// The binary with a clean environment: the test mirror, no hub, warnings only.
fn earshot() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_earshot"));
    cmd.env("EARSHOT_MODEL_MIRROR", models_dir())
        .env("EARSHOT_MODEL_HUB", NO_HUB)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("EARSHOT_MODEL")
        .env_remove("EARSHOT_MODELS_DIR")
        .args(["--log", "warn"]);
    cmd
}

/// The models directory every test shares, filled by the first run, and that run's result.
struct Fetched {
    /// Where the binary put the models it fetched.
    dir: TempDir,
    /// The first run: `transcribe en_jfk.wav` into an empty models directory.
    first_run: Output,
}

static FETCHED: LazyLock<Fetched> = LazyLock::new(|| {
    model("ggml-tiny.en.bin");
    model("ggml-silero-v6.2.0.bin");
    let dir = tempfile::tempdir().expect("temp dir");
    let first_run = earshot()
        .args(["transcribe", "--threads", "2", "--models-dir"])
        .arg(dir.path())
        .arg(corpus_file("en_jfk.wav"))
        .output()
        .expect("run earshot");
    Fetched { dir, first_run }
});

/// `earshot transcribe --models-dir SHARED --threads 2 ARGS...`.
fn transcribe(args: &[&str], files: &[PathBuf]) -> Output {
    earshot()
        .args(["transcribe", "--threads", "2", "--models-dir"])
        .arg(FETCHED.dir.path())
        .args(args)
        .args(files)
        .output()
        .expect("run earshot")
}

/// [`transcribe`] with greedy decoding, for tests of formats and input handling: the default
/// beam 5 (whisper-cli's) costs several times the CPU and is tested by the runs that keep it.
fn transcribe_greedy(args: &[&str], files: &[PathBuf]) -> Output {
    let args: Vec<&str> = ["--beam-size", "1"].iter().chain(args).copied().collect();
    transcribe(&args, files)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the run succeeded, showing stderr when it did not.
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "earshot failed ({}):\n{}",
        output.status,
        stderr(output)
    );
}

/// Asserts a failed run: exit status 1, no panic, and exactly one `earshot:` line (the last)
/// that contains every one of `needles`. Returns that line.
fn assert_one_line_failure(output: &Output, needles: &[&str]) -> String {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit status 1, got {}; stderr:\n{err}",
        output.status
    );
    assert!(!err.contains("panicked"), "earshot panicked:\n{err}");
    let reasons: Vec<&str> = err.lines().filter(|l| l.starts_with("earshot:")).collect();
    assert_eq!(reasons.len(), 1, "expected one reason line, got:\n{err}");
    let line = reasons[0];
    assert_eq!(
        Some(line),
        err.lines().last(),
        "the reason must be the last line:\n{err}"
    );
    for needle in needles {
        assert!(
            line.contains(needle),
            "the reason should mention {needle:?}: {line}"
        );
    }
    line.to_string()
}

fn corpus_files(names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|name| corpus_file(name)).collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn fetches_the_model_from_the_mirror_and_prints_the_transcript() {
    let run = &FETCHED.first_run;
    assert_success(run);
    for file in ["ggml-tiny.en.bin", "ggml-silero-v6.2.0.bin"] {
        let fetched = std::fs::metadata(FETCHED.dir.path().join(file))
            .unwrap_or_else(|e| panic!("{file} was not fetched into --models-dir: {e}"));
        let original = std::fs::metadata(model(file)).unwrap();
        assert_eq!(fetched.len(), original.len(), "{file} fetched incompletely");
    }
    let text = stdout(run);
    assert_eq!(
        text.lines().count(),
        1,
        "one line of text expected: {text:?}"
    );
    let score = wer(&reference("en_jfk.wav"), &text);
    eprintln!("en_jfk.wav (stdout) WER {score:.3}: {}", text.trim());
    assert!(score <= 0.15, "WER {score:.3}: {text}");
}

#[test]
fn jfk_in_four_formats_to_verbose_json_files() {
    let out = tempfile::tempdir().unwrap();
    let files = corpus_files(&JFK_FILES);
    let output = transcribe_greedy(
        &[
            "--format",
            "verbose_json",
            "--output-dir",
            out.path().to_str().unwrap(),
        ],
        &files,
    );
    assert_success(&output);
    assert!(
        stdout(&output).is_empty(),
        "with --output-dir nothing goes to stdout"
    );
    let manifest = manifest();
    for file in &files {
        let name = file_name(file);
        let written = out.path().join(format!("{name}.json"));
        let body = std::fs::read_to_string(&written)
            .unwrap_or_else(|e| panic!("{} not written: {e}", written.display()));
        let json: Value = serde_json::from_str(&body).expect("verbose_json is JSON");
        let duration = manifest.iter().find(|e| e.file == name).unwrap().duration_s;
        check_verbose_json(&name, &json, duration);
        let text = json["text"].as_str().unwrap();
        let score = wer(&reference(&name), text);
        eprintln!("{name} WER {score:.3}: {text}");
        assert!(score <= 0.15, "{name}: WER {score:.3}: {text}");
    }
}

/// OpenAI's verbose_json shape, with times in order and inside the audio.
fn check_verbose_json(name: &str, json: &Value, duration: f64) {
    assert_eq!(json["task"], "transcribe", "{name}: {json}");
    assert_eq!(json["language"], "english", "{name}: {json}");
    let reported = json["duration"].as_f64().expect("duration");
    assert!(
        (reported - duration).abs() < 0.25,
        "{name}: duration {reported} vs {duration}"
    );
    let segments = json["segments"].as_array().expect("segments");
    assert!(!segments.is_empty(), "{name}: no segments");
    let mut previous_end = 0.0;
    for (i, segment) in segments.iter().enumerate() {
        assert_eq!(segment["id"], i, "{name}: segment ids count from 0");
        let (start, end) = (
            segment["start"].as_f64().unwrap(),
            segment["end"].as_f64().unwrap(),
        );
        assert!(
            previous_end <= start + 1e-3 && start <= end && end <= reported + 1e-3,
            "{name}: segment {i} at {start}..{end} (previous end {previous_end})"
        );
        assert!(segment["text"].is_string());
        assert!(segment["no_speech_prob"].is_number());
        previous_end = end;
    }
    let words = json["words"]
        .as_array()
        .expect("verbose_json carries word timing");
    assert!(words.len() >= 15, "{name}: {} words", words.len());
    for word in words {
        let (start, end) = (
            word["start"].as_f64().unwrap(),
            word["end"].as_f64().unwrap(),
        );
        assert!(
            start <= end && end <= reported + 1e-3,
            "{name}: word {word}"
        );
        assert!(!word["word"].as_str().unwrap().is_empty());
    }
}

#[test]
fn subtitles_and_json_are_well_formed() {
    let jfk = corpus_files(&["en_jfk.wav"]);
    let reference = reference("en_jfk.wav");

    let srt = stdout(&checked(transcribe_greedy(&["--format", "srt"], &jfk)));
    let cues = parse_cues(&srt, ',');
    assert!(!cues.is_empty(), "no SRT cues in {srt:?}");
    for (i, block) in srt.trim_end().split("\n\n").enumerate() {
        assert_eq!(
            block.lines().next(),
            Some((i + 1).to_string().as_str()),
            "{srt}"
        );
    }
    check_cues(&cues, 11.0, &reference);

    let vtt = stdout(&checked(transcribe_greedy(&["--format", "vtt"], &jfk)));
    assert!(vtt.starts_with("WEBVTT\n\n"), "{vtt:?}");
    check_cues(&parse_cues(&vtt, '.'), 11.0, &reference);

    let json = stdout(&checked(transcribe_greedy(&["--format", "json"], &jfk)));
    let json: Value = serde_json::from_str(&json).expect("json output is JSON");
    let text = json["text"].as_str().expect("{\"text\": ...}");
    assert!(wer(&reference, text) <= 0.15, "{text}");
}

fn checked(output: Output) -> Output {
    assert_success(&output);
    output
}

/// `(start, end, text)` of every cue line `HH:MM:SS<sep>mmm --> HH:MM:SS<sep>mmm`.
fn parse_cues(subtitles: &str, separator: char) -> Vec<(f64, f64, String)> {
    let time = |t: &str| -> f64 {
        let (hms, millis) = t
            .split_once(separator)
            .unwrap_or_else(|| panic!("bad time {t}"));
        let parts: Vec<f64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
        assert_eq!(parts.len(), 3, "HH:MM:SS expected in {t}");
        parts[0] * 3600.0 + parts[1] * 60.0 + parts[2] + millis.parse::<f64>().unwrap() / 1000.0
    };
    let lines: Vec<&str> = subtitles.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| {
            let (start, end) = line.split_once(" --> ")?;
            let text = lines.get(i + 1).copied().unwrap_or_default();
            Some((time(start), time(end), text.to_string()))
        })
        .collect()
}

fn check_cues(cues: &[(f64, f64, String)], duration: f64, reference: &str) {
    let mut previous_end = 0.0;
    for (start, end, text) in cues {
        assert!(
            previous_end <= *start && start <= end && *end <= duration + 0.01,
            "{cues:?}"
        );
        assert!(!text.trim().is_empty(), "empty cue text in {cues:?}");
        previous_end = *end;
    }
    let text: Vec<&str> = cues.iter().map(|c| c.2.as_str()).collect();
    let score = wer(reference, &text.join(" "));
    assert!(score <= 0.15, "WER {score:.3} of the cues {cues:?}");
}

#[test]
fn mandarin_with_base_q5_1_has_low_character_error_rate() {
    let names = [
        "zh_BAC009S0764W0121.wav",
        "zh_IT0011W0001.wav",
        "zh_TEST_NET_Y0000000000_S00000.wav",
        "zh_TEST_MEETING_T0000000001_S00000.wav",
        "zh_chinese_48k.flac",
    ];
    let out = tempfile::tempdir().unwrap();
    let base = model("ggml-base-q5_1.bin");
    let output = transcribe(
        &[
            "--model",
            base.to_str().unwrap(),
            "--language",
            "zh",
            "--output-dir",
            out.path().to_str().unwrap(),
        ],
        &corpus_files(&names),
    );
    assert_success(&output);
    let mut total = 0.0;
    for name in names {
        let text = std::fs::read_to_string(out.path().join(format!("{name}.txt")))
            .unwrap_or_else(|e| panic!("{name}.txt not written: {e}"));
        let score = cer(&reference(name), &text);
        eprintln!("{name} CER {score:.3}: {}", text.trim());
        total += score;
    }
    let mean = total / names.len() as f64;
    eprintln!("Mandarin mean CER {mean:.3}");
    assert!(mean <= 0.45, "mean CER {mean:.3}");
}

#[test]
fn translate_turns_mandarin_into_english() {
    let base = model("ggml-base-q5_1.bin");
    let output = checked(transcribe(
        &["--model", base.to_str().unwrap(), "--translate"],
        &corpus_files(&["zh_TEST_MEETING_T0000000001_S00000.wav"]),
    ));
    let text = stdout(&output);
    eprintln!("translated: {}", text.trim());
    let latin = text.chars().filter(char::is_ascii_alphabetic).count();
    let cjk = text
        .chars()
        .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
        .count();
    assert!(latin >= 20 && cjk == 0, "expected English, got {text:?}");
}

#[test]
fn noise_and_music_print_nothing() {
    let files = corpus_files(&[
        "noise_pico_empty.wav",
        "noise_speechbrain_noise2.wav",
        "music_rodio_music.opus",
    ]);
    let output = checked(transcribe_greedy(&[], &files));
    assert_eq!(
        stdout(&output),
        "",
        "no words expected from noise and music"
    );
}

/// Inputs that are not usable audio, each with what its one-line reason must say.
fn bad_inputs(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mp3 = std::fs::read(corpus_file("en_jfk.mp3")).unwrap();
    let random: Vec<u8> = (0..100_000u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    std::fs::create_dir(dir.join("folder.wav")).unwrap();
    vec![
        (write("empty.wav", b""), "no audio"),
        (
            write("random.mp3", &random),
            "not a recognised audio format",
        ),
        (write("truncated.mp3", &mp3[..mp3.len() / 3]), "truncated"),
        (write("huge_header.wav", &wav_declaring_4_gb()), "truncated"),
        (
            write("notes.wav", b"these are meeting notes, not audio\n"),
            "not a recognised audio format",
        ),
        (dir.join("folder.wav"), "directory"),
        (dir.join("missing.wav"), "not found"),
    ]
}

/// A WAV header claiming 4 000 000 000 bytes of samples, followed by one second of audio.
fn wav_declaring_4_gb() -> Vec<u8> {
    let data_len: u32 = 4_000_000_000;
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(data_len + 36).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..16_000u32 {
        let sample = ((i as f32 * 0.05).sin() * 3000.0) as i16;
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    for (path, reason) in bad_inputs(dir.path()) {
        let output = transcribe(&[], std::slice::from_ref(&path));
        let line = assert_one_line_failure(&output, &[&path.display().to_string(), reason]);
        eprintln!("{line}");
    }
}

#[test]
fn nan_infinite_and_huge_samples_in_a_float_wav_still_transcribe() {
    // Before sanitising, rubato panicked on the NaN and the binary died with status 101.
    let dir = tempfile::tempdir().unwrap();
    let wav = common::jfk_with_bad_samples(dir.path());
    let output = checked(transcribe_greedy(&[], &[wav]));
    let text = stdout(&output);
    let score = wer(&reference("en_jfk.wav"), &text);
    eprintln!("float WAV with bad samples WER {score:.3}: {}", text.trim());
    assert!(score <= 0.15, "WER {score:.3}: {text}");
}

#[test]
fn a_bad_file_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        dir.path().join("missing.wav"),
        corpus_file("en_harvard_birch_canoe.wav"),
    ];
    let output = transcribe_greedy(&[], &files);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(!err.contains("panicked"), "{err}");
    let reasons: Vec<&str> = err.lines().filter(|l| l.starts_with("earshot:")).collect();
    assert_eq!(reasons.len(), 2, "{err}");
    assert!(
        reasons[0].contains("missing.wav") && reasons[0].contains("not found"),
        "{err}"
    );
    assert_eq!(reasons[1], "earshot: 1 of 2 files failed");
    let text = stdout(&output);
    let score = wer(&reference("en_harvard_birch_canoe.wav"), &text);
    assert!(
        score <= 0.25,
        "the good file must still be transcribed: WER {score:.3} {text:?}"
    );
}

#[test]
fn unknown_model_and_language_are_named_with_the_choices() {
    let jfk = corpus_files(&["en_jfk.wav"]);
    let output = transcribe(&["--model", "tiny.xx"], &jfk);
    assert_one_line_failure(
        &output,
        &["unknown model `tiny.xx`", "tiny.en", "base-q5_1", "small"],
    );
    let output = transcribe(&["--language", "klingon"], &jfk);
    assert_one_line_failure(&output, &["unknown language", "klingon"]);
}

#[test]
fn offline_without_a_mirror_says_how_to_set_one() {
    let empty_models = tempfile::tempdir().unwrap();
    let output = earshot()
        .env_remove("EARSHOT_MODEL_MIRROR")
        .env("EARSHOT_MODEL_HUB", NO_HUB)
        .args(["transcribe", "--models-dir"])
        .arg(empty_models.path())
        .arg(corpus_file("en_jfk.wav"))
        .output()
        .unwrap();
    assert_one_line_failure(&output, &["ggml-tiny.en.bin", "EARSHOT_MODEL_MIRROR"]);
}

#[test]
fn help_explains_every_option() {
    let output = checked(earshot().args(["transcribe", "--help"]).output().unwrap());
    let help = stdout(&output);
    for needle in [
        "--model",
        "tiny.en",
        "--language",
        "auto",
        "--translate",
        "--format",
        "srt",
        "vtt",
        "verbose_json",
        "--threads",
        "--output-dir",
        "EARSHOT_MODEL_MIRROR",
        "exit status",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle}:\n{help}"
        );
    }
}
