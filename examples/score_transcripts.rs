//! Scores transcripts against references with Earshot's own measures (`earshot::eval`), so
//! `scripts/bench-accuracy` grades whisper-cli and Earshot alike, with one normalisation.
//!
//! Reads tab-separated lines on stdin: `LANGUAGE <TAB> REFERENCE <TAB> HYPOTHESIS_FILE`.
//! Writes one line per input: `METRIC <TAB> ERROR_RATE <TAB> REFERENCE_UNITS <TAB> TEXT`, where
//! METRIC is `cer` for Chinese and Japanese (written without spaces) and `wer` otherwise, and
//! TEXT is the hypothesis as scored (on one line).
//!
//! Both sides' hypotheses go through the same steps before scoring: each line is cleaned as
//! Earshot cleans a segment (`engine::clean_text`: `[BLANK_AUDIO]`, `(music)`, `♪…♪` removed),
//! and Mandarin is put in Simplified characters as Earshot's default `--zh-script` does
//! (`inference::script`, OpenCC's tables), so neither side is counted wrong for the script.
//! Scoring is `eval::score`: number words become digits on both sides ("One, two, three." and
//! "1, 2, 3." agree, as Whisper's English normaliser has them), then WER or CER.
//!
//! ```text
//! cargo run --release --example score_transcripts < rows.tsv
//! ```

use std::io::{BufRead, Write};

use earshot::domain::ZhScript;
use earshot::eval::score;
use earshot::inference::{engine, script};

fn main() {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line.expect("stdin is readable UTF-8");
        let mut fields = line.splitn(3, '\t');
        let (Some(language), Some(reference), Some(file)) =
            (fields.next(), fields.next(), fields.next())
        else {
            panic!("expected LANGUAGE<TAB>REFERENCE<TAB>HYPOTHESIS_FILE, got {line:?}");
        };
        let raw = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read the hypothesis {file}: {e}"));
        let text = scored_text(language, &raw);
        let scored = score(language, reference, &text);
        let (metric, rate, units) = (scored.metric.name(), scored.error, scored.units);
        writeln!(out, "{metric}\t{rate:.6}\t{units}\t{text}").expect("stdout is writable");
    }
}

/// The hypothesis as it is scored: each line cleaned, Mandarin in Simplified, joined by spaces.
fn scored_text(language: &str, raw: &str) -> String {
    let cleaned: Vec<String> = raw
        .lines()
        .map(engine::clean_text)
        .filter(|l| !l.is_empty())
        .collect();
    let text = cleaned.join(" ");
    match script::conversion_for(language, false, ZhScript::Simplified) {
        Some(to) => script::convert(&text, to).into_owned(),
        None => text,
    }
}
