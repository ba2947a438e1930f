//! Transcripts rendered as the text formats people and tools expect: plain text, SubRip (srt),
//! WebVTT, and OpenAI's `json` / `verbose_json` response shapes.
//!
//! Pure functions from a [`Transcript`] to a `String`; this module does no I/O, and never
//! changes what was recognised (only how it is laid out).

use serde::Serialize;
use serde_json::json;

use crate::domain::{OutputFormat, Task};
use crate::transcript::{Segment, Token, Transcript};

/// Renders a transcription (task `transcribe`). Non-empty output ends with a newline.
pub fn render(t: &Transcript, f: OutputFormat) -> String {
    render_task(t, f, Task::Transcribe)
}

/// Like [`render`], naming the task in verbose JSON.
pub fn render_task(t: &Transcript, f: OutputFormat, task: Task) -> String {
    match f {
        OutputFormat::Txt => txt(t),
        OutputFormat::Srt => srt(t),
        OutputFormat::Vtt => vtt(t),
        OutputFormat::Json => json_body(t, false, task).to_string() + "\n",
        OutputFormat::VerboseJson => json_body(t, true, task).to_string() + "\n",
    }
}

/// OpenAI's `json` (`{"text"}`) or, when `verbose`, `verbose_json` body as a value, for a
/// caller that adds its own fields next to OpenAI's.
pub fn json_body(t: &Transcript, verbose: bool, task: Task) -> serde_json::Value {
    if verbose {
        verbose_json(t, task)
    } else {
        json!({ "text": t.text() })
    }
}

fn txt(t: &Transcript) -> String {
    let text = t.text();
    if text.is_empty() {
        text
    } else {
        text + "\n"
    }
}

fn srt(t: &Transcript) -> String {
    let mut out = String::new();
    for (index, segment) in cues(t).enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            index + 1,
            timestamp(segment.start, ','),
            timestamp(segment.end, ','),
            cue_text(&segment.text)
        ));
    }
    out
}

fn vtt(t: &Transcript) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for segment in cues(t) {
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(segment.start, '.'),
            timestamp(segment.end, '.'),
            // "-->" would end a WebVTT cue's text early.
            cue_text(&segment.text).replace("-->", "->")
        ));
    }
    out
}

/// Segments worth a subtitle cue: those with text.
fn cues(t: &Transcript) -> impl Iterator<Item = &Segment> {
    t.segments.iter().filter(|s| !s.text.trim().is_empty())
}

/// Cue text on one line: a blank line inside a cue would end it.
fn cue_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `HH:MM:SS<sep>mmm`, hours unbounded, negative or non-finite times as zero.
fn timestamp(seconds: f64, separator: char) -> String {
    let millis = if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0).round() as u64
    } else {
        0
    };
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (secs, millis) = (rest / 1000, rest % 1000);
    format!("{hours:02}:{minutes:02}:{secs:02}{separator}{millis:03}")
}

fn verbose_json(t: &Transcript, task: Task) -> serde_json::Value {
    let segments: Vec<_> = t
        .segments
        .iter()
        .enumerate()
        .map(|(id, s)| verbose_segment(id, s))
        .collect();
    let mut body = json!({
        "task": task,
        "language": language_name(&t.language),
        "duration": round_ms(t.duration),
        "text": t.text(),
        "segments": segments,
    });
    // Earshot's addition: how sure Whisper was of the language it detected (absent when the
    // request named the language).
    if let Some(probability) = t.language_probability {
        body["language_probability"] = json!(probability);
    }
    if t.segments.iter().any(|s| s.tokens.is_some()) {
        let words: Vec<_> = t
            .segments
            .iter()
            .flat_map(|s| words(s.tokens.as_deref().unwrap_or_default()))
            .collect();
        body["words"] = json!(words);
    }
    body
}

fn verbose_segment(id: usize, s: &Segment) -> serde_json::Value {
    let mut segment = json!({
        "id": id,
        "start": round_ms(s.start),
        "end": round_ms(s.end),
        "text": s.text,
        "no_speech_prob": s.no_speech_prob,
    });
    let probabilities: Vec<f64> = text_tokens(s.tokens.as_deref().unwrap_or_default())
        .map(|token| f64::from(token.probability).max(f64::MIN_POSITIVE).ln())
        .collect();
    if !probabilities.is_empty() {
        let mean = probabilities.iter().sum::<f64>() / probabilities.len() as f64;
        segment["avg_logprob"] = json!(mean);
    }
    segment
}

/// One word with its timing, as in OpenAI's `timestamp_granularities[]=word`.
#[derive(Debug, Serialize)]
struct Word {
    /// The word without surrounding spaces (punctuation stays attached, as Whisper emits it).
    word: String,
    /// Seconds from the start of the input.
    start: f64,
    /// Seconds from the start of the input.
    end: f64,
    /// Mean probability of the tokens that make up the word, for confidence display.
    probability: f32,
}

/// Joins a segment's sub-word tokens into words: a token starting with a space starts a word.
fn words(tokens: &[Token]) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    for token in text_tokens(tokens) {
        let starts_word = token.text.starts_with(char::is_whitespace) || words.is_empty();
        if starts_word {
            words.push(Word {
                word: token.text.trim().to_string(),
                start: round_ms(token.start),
                end: round_ms(token.end),
                probability: token.probability,
            });
            counts.push(1);
        } else if let (Some(word), Some(count)) = (words.last_mut(), counts.last_mut()) {
            word.word.push_str(token.text.trim_end());
            word.end = round_ms(token.end);
            word.probability += token.probability;
            *count += 1;
        }
    }
    for (word, count) in words.iter_mut().zip(counts) {
        word.probability /= count as f32;
    }
    words.retain(|w| !w.word.is_empty());
    words
}

/// Tokens that carry text: Whisper's special tokens (`[_BEG_]`, `<|endoftext|>`, …) do not.
fn text_tokens(tokens: &[Token]) -> impl Iterator<Item = &Token> {
    tokens.iter().filter(|token| {
        let text = token.text.trim();
        let special = text.starts_with("[_") || text.starts_with("<|");
        !special && !token.text.is_empty()
    })
}

/// OpenAI reports the language by name (`english`); falls back to the code when unknown.
/// Searches Whisper's table rather than asking `whisper_lang_id`, which logs unknown codes.
fn language_name(code: &str) -> String {
    (0..=whisper_rs::get_lang_max_id())
        .find(|&id| whisper_rs::get_lang_str(id) == Some(code))
        .and_then(whisper_rs::get_lang_str_full)
        .map_or_else(|| code.to_string(), str::to_string)
}

/// Seconds rounded to the millisecond, so JSON shows `3.32` rather than `3.3200000000000003`.
fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(start: f64, end: f64, text: &str) -> Segment {
        Segment {
            start,
            end,
            text: text.to_string(),
            no_speech_prob: 0.01,
            tokens: None,
        }
    }

    fn token(text: &str, start: f64, end: f64, probability: f32) -> Token {
        Token {
            text: text.to_string(),
            start,
            end,
            probability,
        }
    }

    fn sample() -> Transcript {
        Transcript {
            language: "en".into(),
            language_probability: None,
            duration: 3725.5,
            segments: vec![
                segment(0.0, 2.5, "And so, my fellow Americans,"),
                segment(2.5, 2.5, "  "),
                segment(3723.0, 3725.25, "ask not."),
            ],
        }
    }

    fn empty() -> Transcript {
        Transcript {
            language: "en".into(),
            language_probability: None,
            duration: 0.0,
            segments: vec![],
        }
    }

    #[test]
    fn timestamps_carry_hours_and_round_to_milliseconds() {
        assert_eq!(timestamp(0.0, ','), "00:00:00,000");
        assert_eq!(timestamp(3723.0456, '.'), "01:02:03.046");
        assert_eq!(timestamp(59.9996, ','), "00:01:00,000");
        assert_eq!(timestamp(360_000.0, ','), "100:00:00,000");
        assert_eq!(timestamp(-1.0, ','), "00:00:00,000");
        assert_eq!(timestamp(f64::NAN, ','), "00:00:00,000");
    }

    #[test]
    fn txt_is_the_text() {
        assert_eq!(
            render(&sample(), OutputFormat::Txt),
            "And so, my fellow Americans, ask not.\n"
        );
        assert_eq!(render(&empty(), OutputFormat::Txt), "");
    }

    #[test]
    fn srt_numbers_cues_and_skips_empty_segments() {
        let expected = "1\n00:00:00,000 --> 00:00:02,500\nAnd so, my fellow Americans,\n\n\
                        2\n01:02:03,000 --> 01:02:05,250\nask not.\n\n";
        assert_eq!(render(&sample(), OutputFormat::Srt), expected);
        assert_eq!(render(&empty(), OutputFormat::Srt), "");
    }

    #[test]
    fn vtt_has_a_header_and_dotted_timestamps() {
        let expected = "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nAnd so, my fellow Americans,\n\n\
                        01:02:03.000 --> 01:02:05.250\nask not.\n\n";
        assert_eq!(render(&sample(), OutputFormat::Vtt), expected);
        assert_eq!(render(&empty(), OutputFormat::Vtt), "WEBVTT\n\n");
    }

    #[test]
    fn cue_text_cannot_break_the_cue() {
        let t = Transcript {
            segments: vec![segment(1.0, 2.0, "a\n\nb --> c")],
            ..empty()
        };
        assert_eq!(
            render(&t, OutputFormat::Vtt),
            "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\na b -> c\n\n"
        );
        assert!(render(&t, OutputFormat::Srt).contains("\na b --> c\n\n"));
    }

    #[test]
    fn json_is_openais_text_object() {
        let value: serde_json::Value =
            serde_json::from_str(&render(&sample(), OutputFormat::Json)).unwrap();
        assert_eq!(
            value,
            json!({"text": "And so, my fellow Americans, ask not."})
        );
        assert_eq!(render(&empty(), OutputFormat::Json), "{\"text\":\"\"}\n");
    }

    #[test]
    fn verbose_json_has_openais_shape() {
        let value: serde_json::Value =
            serde_json::from_str(&render(&sample(), OutputFormat::VerboseJson)).unwrap();
        assert_eq!(value["task"], "transcribe");
        assert_eq!(value["language"], "english");
        assert_eq!(value["duration"], 3725.5);
        assert_eq!(value["text"], "And so, my fellow Americans, ask not.");
        let segments = value["segments"].as_array().unwrap();
        assert_eq!(segments.len(), 3);
        assert_eq!(segments[2]["id"], 2);
        assert_eq!(segments[2]["start"], 3723.0);
        assert_eq!(segments[2]["end"], 3725.25);
        assert_eq!(segments[2]["text"], "ask not.");
        assert!((segments[0]["no_speech_prob"].as_f64().unwrap() - 0.01).abs() < 1e-6);
        assert!(value.get("words").is_none());
        assert!(segments[0].get("avg_logprob").is_none());
        assert!(value.get("language_probability").is_none(), "not detected");
    }

    #[test]
    fn verbose_json_says_how_sure_detection_was() {
        let detected = Transcript {
            language: "zh".into(),
            language_probability: Some(0.75),
            ..sample()
        };
        let value: serde_json::Value =
            serde_json::from_str(&render(&detected, OutputFormat::VerboseJson)).unwrap();
        assert_eq!(value["language"], "chinese");
        assert_eq!(value["language_probability"], 0.75);
    }

    #[test]
    fn verbose_json_of_nothing_is_still_complete() {
        let value: serde_json::Value = serde_json::from_str(&render_task(
            &empty(),
            OutputFormat::VerboseJson,
            Task::Translate,
        ))
        .unwrap();
        assert_eq!(
            value,
            json!({"task": "translate", "language": "english", "duration": 0.0, "text": "", "segments": []})
        );
    }

    #[test]
    fn verbose_json_joins_tokens_into_words() {
        let mut first = segment(0.0, 1.5, "Ask not, fellow");
        first.tokens = Some(vec![
            token("[_BEG_]", 0.0, 0.0, 1.0),
            token(" Ask", 0.0, 0.3, 0.9),
            token(" not", 0.3, 0.6, 0.8),
            token(",", 0.6, 0.62, 0.6),
            token(" fell", 0.7, 1.0, 0.5),
            token("ow", 1.0, 1.5, 0.7),
            token("<|endoftext|>", 1.5, 1.5, 1.0),
        ]);
        let mut second = segment(1.5, 2.0, "Americans");
        second.tokens = Some(vec![token("Americans", 1.5, 2.0, 1.0)]);
        let t = Transcript {
            language: "xx".into(),
            language_probability: None,
            duration: 2.0,
            segments: vec![first, second],
        };
        let value: serde_json::Value =
            serde_json::from_str(&render(&t, OutputFormat::VerboseJson)).unwrap();
        assert_eq!(value["language"], "xx");
        assert_eq!(language_name("de"), "german");
        assert_eq!(language_name("a\0b"), "a\0b");
        let words: Vec<(String, f64, f64)> = value["words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["word"].as_str().unwrap().to_string(),
                    w["start"].as_f64().unwrap(),
                    w["end"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            words,
            [
                ("Ask".to_string(), 0.0, 0.3),
                ("not,".to_string(), 0.3, 0.62),
                ("fellow".to_string(), 0.7, 1.5),
                ("Americans".to_string(), 1.5, 2.0),
            ]
        );
        let fellow = &value["words"][2]["probability"];
        assert!((fellow.as_f64().unwrap() - 0.6).abs() < 1e-6);
        let avg = value["segments"][0]["avg_logprob"].as_f64().unwrap();
        let expected = [0.9f64, 0.8, 0.6, 0.5, 0.7]
            .iter()
            .map(|p| p.ln())
            .sum::<f64>()
            / 5.0;
        assert!((avg - expected).abs() < 1e-6, "{avg} vs {expected}");
    }

    #[test]
    fn formats_parse_like_openais_response_format() {
        use clap::ValueEnum;
        assert_eq!(
            OutputFormat::from_str("verbose_json", false),
            Ok(OutputFormat::VerboseJson)
        );
        assert_eq!(
            serde_json::from_str::<OutputFormat>("\"verbose_json\"").unwrap(),
            OutputFormat::VerboseJson
        );
        assert_eq!(
            serde_json::to_string(&OutputFormat::Srt).unwrap(),
            "\"srt\""
        );
        assert_eq!(OutputFormat::VerboseJson.extension(), "json");
    }
}
