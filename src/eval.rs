//! Accuracy measures for transcripts: word error rate (WER) and character error rate (CER).
//!
//! Both compare a reference text with a hypothesis after normalising away what a listener
//! would not count as an error: letter case and punctuation. CER also ignores whitespace,
//! which is how it is scored for languages written without spaces (Chinese, Japanese).
//! [`score`] also writes number words as digits on both sides first ("One, two, three." and
//! "1, 2, 3." are the same words), as Whisper's own English normaliser does, for the languages
//! the `text2num` crate knows (en, de, fr, es, it, pt, nl, da).
//!
//! Pure functions only: this module must not run models or read files.

use std::borrow::Cow;

/// How a language is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Word error rate, for languages written with spaces between words.
    Wer,
    /// Character error rate, for Chinese and Japanese (written without spaces).
    Cer,
}

impl Metric {
    /// The metric for a language code (`zh`, `ja`: CER; everything else: WER).
    pub fn for_language(language: &str) -> Metric {
        match language {
            "zh" | "ja" => Metric::Cer,
            _ => Metric::Wer,
        }
    }

    /// Lower-case name, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Wer => "wer",
            Metric::Cer => "cer",
        }
    }
}

/// One hypothesis scored against its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// WER or CER, by language.
    pub metric: Metric,
    /// Edits over reference units.
    pub error: f64,
    /// Reference words (WER) or characters (CER), to pool errors over several files.
    pub units: usize,
}

/// Scores `hypothesis` against `reference` in `language`: numbers normalised on both sides
/// ([`normalize_numbers`]), then WER or CER as [`Metric::for_language`] says.
pub fn score(language: &str, reference: &str, hypothesis: &str) -> Score {
    let reference = normalize_numbers(language, reference);
    let hypothesis = normalize_numbers(language, hypothesis);
    let metric = Metric::for_language(language);
    let (error, units) = match metric {
        Metric::Wer => (
            wer(&reference, &hypothesis),
            normalize_words(&reference).len(),
        ),
        Metric::Cer => (
            cer(&reference, &hypothesis),
            normalize_chars(&reference).len(),
        ),
    };
    Score {
        metric,
        error,
        units,
    }
}

/// `text` with every number written in words replaced by its digits ("twenty-one" → "21",
/// "One, two, three." → "1, 2, 3.", "first" → "1st"), for the languages `text2num` knows;
/// other languages' text comes back unchanged.
pub fn normalize_numbers<'a>(language: &str, text: &'a str) -> Cow<'a, str> {
    match text2num::get_interpreter_for(language) {
        // Threshold 0: small isolated numbers too, so "two things" and "2 things" agree.
        Some(interpreter) => text2num::replace_numbers_in_text(text, &interpreter, 0.0).into(),
        None => text.into(),
    }
}

/// Splits a text into normalised words: lower case, punctuation removed.
///
/// Apostrophes inside words are dropped rather than splitting the word, so "don't" and
/// "dont" compare equal, and so are commas between digits ("1,000" is "1000"); every other
/// non-alphanumeric character separates words.
pub fn normalize_words(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        let next = chars.peek().copied().unwrap_or(' ');
        let digit_comma = c == ',' && previous.is_ascii_digit() && next.is_ascii_digit();
        previous = c;
        if c.is_alphanumeric() {
            cleaned.extend(c.to_lowercase());
        } else if c == '\'' || c == '’' || digit_comma {
            continue;
        } else {
            cleaned.push(' ');
        }
    }
    cleaned.split_whitespace().map(str::to_owned).collect()
}

/// The characters that count for CER: lower case, no whitespace, no punctuation.
pub fn normalize_chars(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Word error rate: (substitutions + deletions + insertions) / reference words.
///
/// An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise, so the result
/// is always finite.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    error_rate(&normalize_words(reference), &normalize_words(hypothesis))
}

/// Character error rate over [`normalize_chars`]: edits / reference characters.
///
/// Same convention as [`wer`] for an empty reference.
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    error_rate(&normalize_chars(reference), &normalize_chars(hypothesis))
}

fn error_rate<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> f64 {
    if reference.is_empty() {
        return if hypothesis.is_empty() { 0.0 } else { 1.0 };
    }
    edit_distance(reference, hypothesis) as f64 / reference.len() as f64
}

/// Levenshtein distance with one row of memory.
fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(x != y);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_score_zero_despite_case_and_punctuation() {
        let r = "And so, my fellow Americans: ask not!";
        assert_eq!(wer(r, "and so my fellow americans ask not"), 0.0);
    }

    #[test]
    fn counts_substitution_deletion_insertion() {
        assert_eq!(wer("a b c d", "a x c d"), 0.25);
        assert_eq!(wer("a b c d", "a c d"), 0.25);
        assert_eq!(wer("a b c d", "a b c d e"), 0.25);
        assert_eq!(wer("a b", "c d e f"), 2.0);
    }

    #[test]
    fn apostrophes_do_not_split_words() {
        assert_eq!(normalize_words("Don't stop"), vec!["dont", "stop"]);
    }

    #[test]
    fn commas_between_digits_do_not_split_numbers() {
        assert_eq!(
            normalize_words("1,000 people, 2"),
            vec!["1000", "people", "2"]
        );
    }

    #[test]
    fn number_words_and_digits_score_alike() {
        let en = score("en", "One, two, three.", "1, 2, 3.");
        assert_eq!((en.metric, en.error, en.units), (Metric::Wer, 0.0, 3));
        assert_eq!(score("en", "1, 2, 3.", "One, two, three.").error, 0.0);
        assert_eq!(score("en", "twenty-one guns", "21 guns").error, 0.0);
        assert_eq!(score("en", "one thousand days", "1,000 days").error, 0.0);
        assert_eq!(score("en", "two things", "2 things").error, 0.0);
        assert_eq!(score("en", "one two three", "1 2 4").error, 1.0 / 3.0);
        assert_eq!(score("de", "drei Tage", "3 Tage").error, 0.0);
        assert_eq!(score("fr", "vingt et un ans", "21 ans").error, 0.0);
    }

    #[test]
    fn numbers_stay_as_written_where_text2num_has_no_rules() {
        assert_eq!(normalize_numbers("ru", "два дня"), "два дня");
        assert_eq!(normalize_numbers("xx", "one"), "one");
        let zh = score("zh", "一二线城市", "1,2线城市");
        assert_eq!((zh.metric, zh.units), (Metric::Cer, 5));
        assert!(zh.error > 0.0, "CER counts digits against characters");
    }

    #[test]
    fn normalize_numbers_leaves_other_words_alone() {
        assert_eq!(
            normalize_numbers("en", "And so, my fellow Americans"),
            "And so, my fellow Americans"
        );
    }

    #[test]
    fn empty_reference_is_finite() {
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer("", "hello"), 1.0);
        assert_eq!(cer("。", ""), 0.0);
    }

    #[test]
    fn cer_ignores_spaces_and_chinese_punctuation() {
        assert_eq!(cer("换一首歌", "换 一首歌。"), 0.0);
        assert_eq!(cer("换一首歌", "换一首哥"), 0.25);
        assert_eq!(cer("砸自己的脚", "，砸自己脚！"), 0.2);
    }

    #[test]
    fn edit_distance_matches_known_values() {
        let a: Vec<char> = "kitten".chars().collect();
        let b: Vec<char> = "sitting".chars().collect();
        assert_eq!(edit_distance(&a, &b), 3);
        assert_eq!(edit_distance::<char>(&[], &b), 7);
    }
}
