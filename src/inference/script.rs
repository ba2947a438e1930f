//! Mandarin output in one script: Whisper writes Chinese in Simplified or Traditional
//! characters, sometimes both in one transcript; this puts every segment and word in the
//! script the request (or the server's `--zh-script`) asks for.
//!
//! The conversion is OpenCC's (the `ferrous-opencc` crate and OpenCC's own dictionaries, which
//! convert by phrase, not character by character). Each direction's converter is built once,
//! on first use, and shared by every worker.
//!
//! This module must not decide which language a job is in: the engine tells it. It must not
//! touch text that is not Mandarin (Japanese kanji are not Traditional Chinese) nor
//! translations into English.

use std::borrow::Cow;
use std::sync::LazyLock;

use ferrous_opencc::config::BuiltinConfig;
use ferrous_opencc::OpenCC;
use tracing::error;

use crate::domain::ZhScript;
use crate::transcript::Segment;

/// Traditional → Simplified, built on first use.
static TO_SIMPLIFIED: LazyLock<Option<OpenCC>> = LazyLock::new(|| build(BuiltinConfig::T2s));
/// Simplified → Traditional, built on first use.
static TO_TRADITIONAL: LazyLock<Option<OpenCC>> = LazyLock::new(|| build(BuiltinConfig::S2t));

fn build(config: BuiltinConfig) -> Option<OpenCC> {
    OpenCC::from_config(config)
        .map_err(|e| error!(error = %e, "cannot build the Chinese script converter; text is kept as written"))
        .ok()
}

/// The conversion a job's output needs: `Some` only for Mandarin (`zh`) that is transcribed,
/// not translated, and whose requested script is not `keep`.
pub fn conversion_for(language: &str, translate: bool, script: ZhScript) -> Option<ZhScript> {
    let mandarin = language == "zh" && !translate;
    (mandarin && script != ZhScript::Keep).then_some(script)
}

/// `text` in `script` (unchanged for `keep`, or if the converter could not be built).
pub fn convert(text: &str, script: ZhScript) -> Cow<'_, str> {
    let converter = match script {
        ZhScript::Simplified => &*TO_SIMPLIFIED,
        ZhScript::Traditional => &*TO_TRADITIONAL,
        ZhScript::Keep => &None,
    };
    match converter {
        Some(converter) if !text.is_ascii() => Cow::Owned(converter.convert(text)),
        _ => Cow::Borrowed(text),
    }
}

/// Converts a segment's text and its words' text in place.
pub fn apply(segment: &mut Segment, script: ZhScript) {
    convert_in_place(&mut segment.text, script);
    for token in segment.tokens.iter_mut().flatten() {
        convert_in_place(&mut token.text, script);
    }
}

fn convert_in_place(text: &mut String, script: ZhScript) {
    if let Cow::Owned(converted) = convert(text, script) {
        *text = converted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Token;

    #[test]
    fn only_transcribed_mandarin_is_converted() {
        let simplified = Some(ZhScript::Simplified);
        assert_eq!(
            conversion_for("zh", false, ZhScript::Simplified),
            simplified
        );
        assert_eq!(
            conversion_for("zh", false, ZhScript::Traditional),
            Some(ZhScript::Traditional)
        );
        assert_eq!(conversion_for("zh", false, ZhScript::Keep), None);
        assert_eq!(conversion_for("zh", true, ZhScript::Simplified), None);
        assert_eq!(conversion_for("ja", false, ZhScript::Simplified), None);
        assert_eq!(conversion_for("yue", false, ZhScript::Simplified), None);
        assert_eq!(conversion_for("en", false, ZhScript::Simplified), None);
    }

    #[test]
    fn the_issue_examples_come_out_in_one_script() {
        let mixed = "1,2線城市雖然也處於調整中";
        assert_eq!(
            convert(mixed, ZhScript::Simplified),
            "1,2线城市虽然也处于调整中"
        );
        assert_eq!(convert("換一首歌", ZhScript::Simplified), "换一首歌");
        assert_eq!(convert("换一首歌", ZhScript::Traditional), "換一首歌");
        assert_eq!(convert(mixed, ZhScript::Keep), mixed);
        assert!(matches!(
            convert("plain ascii", ZhScript::Simplified),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn segments_and_their_words_are_converted() {
        let mut segment = Segment::new(0.0, 1.0, "扎自己的腳");
        segment.tokens = Some(vec![Token {
            text: "腳".into(),
            start: 0.5,
            end: 1.0,
            probability: 0.9,
        }]);
        apply(&mut segment, ZhScript::Simplified);
        assert_eq!(segment.text, "扎自己的脚");
        assert_eq!(segment.tokens.unwrap()[0].text, "脚");
    }
}
