//! Accuracy measures for transcripts: word error rate (WER) and character error rate (CER).
//!
//! Both compare a reference text with a hypothesis after normalising away what a listener
//! would not count as an error: letter case and punctuation. CER also ignores whitespace,
//! which is how it is scored for languages written without spaces (Chinese, Japanese).
//!
//! Pure functions only: this module must not run models or read files.

/// Splits a text into normalised words: lower case, punctuation removed.
///
/// Apostrophes inside words are dropped rather than splitting the word, so "don't" and
/// "dont" compare equal; every other non-alphanumeric character separates words.
pub fn normalize_words(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_alphanumeric() {
            cleaned.extend(c.to_lowercase());
        } else if c == '\'' || c == '’' {
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
