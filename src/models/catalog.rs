//! The list of models Earshot knows by name, and the checksum files that vouch for them.
//!
//! Parses `models/CHECKSUMS` (compiled in, shared with `scripts/download-model.sh`) and a
//! mirror's `SHA256SUMS`. Pure text handling: no files, no network.

use std::sync::LazyLock;

/// The repository's checksum file, the one source of model names, URLs and hub checksums.
const CHECKSUMS: &str = include_str!("../../models/CHECKSUMS");

static CATALOG: LazyLock<Vec<Entry>> = LazyLock::new(|| {
    // The file is part of the source tree and a unit test parses it, so failure is a build bug.
    parse_catalog(CHECKSUMS).expect("models/CHECKSUMS is well-formed")
});

/// A digest a file must have, with the algorithm that produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-1, as whisper.cpp publishes for its ggml files.
    Sha1(String),
    /// SHA-256, as mirrors list in `SHA256SUMS`.
    Sha256(String),
}

impl Checksum {
    /// The algorithm's name as `sha1sum`/`sha256sum` users know it.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha1(_) => "sha1",
            Checksum::Sha256(_) => "sha256",
        }
    }

    /// The expected digest in lowercase hex.
    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha1(hex) | Checksum::Sha256(hex) => hex,
        }
    }

    /// Reads `sha1:HEX` or `sha256:HEX`; `-` means no checksum (`Ok(None)`).
    fn parse(text: &str) -> Result<Option<Checksum>, String> {
        if text == "-" {
            return Ok(None);
        }
        let (algorithm, hex) = text
            .split_once(':')
            .ok_or_else(|| format!("checksum `{text}` is not ALGORITHM:HEX"))?;
        let hex = hex.to_ascii_lowercase();
        let (checksum, len) = match algorithm {
            "sha1" => (Checksum::Sha1(hex.clone()), 40),
            "sha256" => (Checksum::Sha256(hex.clone()), 64),
            other => return Err(format!("unknown checksum algorithm `{other}`")),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{text}` is not a {algorithm} digest"));
        }
        Ok(Some(checksum))
    }
}

/// One known model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The short name users type, e.g. `tiny.en`.
    pub name: String,
    /// The hub's checksum of the file; `None` where none is published, so a hub
    /// download can only be checked for the ggml header.
    pub checksum: Option<Checksum>,
    /// Where the public hub serves the file.
    pub url: String,
}

/// Parses the `NAME CHECKSUM URL` lines of a `CHECKSUMS` file (`#` starts a comment).
pub fn parse_catalog(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, checksum, url] = fields[..] else {
            return Err(format!("line {}: expected NAME CHECKSUM URL", index + 1));
        };
        let checksum = Checksum::parse(checksum).map_err(|e| format!("line {}: {e}", index + 1))?;
        entries.push(Entry {
            name: name.to_string(),
            checksum,
            url: url.to_string(),
        });
    }
    Ok(entries)
}

/// The compiled-in catalog entry for a model name.
pub fn lookup(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|entry| entry.name == name)
}

/// Every model name in the compiled-in catalog, in file order.
pub fn known_names() -> Vec<&'static str> {
    CATALOG.iter().map(|entry| entry.name.as_str()).collect()
}

/// Finds the SHA-256 a `SHA256SUMS` file (`sha256sum` output) lists for `file_name`.
pub fn sha256_for(sums: &str, file_name: &str) -> Option<Checksum> {
    sums.lines().find_map(|line| {
        let (hex, name) = line.trim().split_once(char::is_whitespace)?;
        let name = name.trim_start();
        // `sha256sum -b` marks binary mode with a leading `*`.
        let name = name.strip_prefix('*').unwrap_or(name);
        (name == file_name).then(|| Checksum::Sha256(hex.to_ascii_lowercase()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_has_every_advertised_model() {
        let names = known_names();
        for name in [
            "tiny",
            "tiny.en",
            "base",
            "base.en",
            "small",
            "small.en",
            "medium",
            "medium.en",
            "large-v1",
            "large-v2",
            "large-v3",
            "large-v3-turbo",
            "base-q5_1",
            "tiny-q8_0",
            "large-v3-turbo-q5_0",
            "silero-v6.2.0",
        ] {
            assert!(
                names.contains(&name),
                "{name} missing from models/CHECKSUMS"
            );
        }
    }

    #[test]
    fn embedded_catalog_points_at_the_right_hubs() {
        let tiny = lookup("tiny.en").unwrap();
        assert_eq!(
            tiny.url,
            "https://huggingface.co/ggerganov/whisper.cpp/resolve/main/ggml-tiny.en.bin"
        );
        assert_eq!(
            tiny.checksum,
            Some(Checksum::Sha1(
                "c78c86eb1a8faa21b369bcd33207cc90d64ae9df".into()
            ))
        );
        let vad = lookup("silero-v6.2.0").unwrap();
        assert_eq!(
            vad.url,
            "https://huggingface.co/ggml-org/whisper-vad/resolve/main/ggml-silero-v6.2.0.bin"
        );
        for entry in CATALOG.iter() {
            assert!(
                entry.url.ends_with(&format!("/ggml-{}.bin", entry.name)),
                "{} has URL {}",
                entry.name,
                entry.url
            );
        }
    }

    #[test]
    fn parses_lines_comments_and_missing_checksums() {
        let text =
            "# comment\n\n a  sha1:BD577A113A864445D4C299885E0CB97D4BA92B5F  http://x/ggml-a.bin\n\
                    b - http://x/ggml-b.bin\n";
        let entries = parse_catalog(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].checksum,
            Some(Checksum::Sha1(
                "bd577a113a864445d4c299885e0cb97d4ba92b5f".into()
            ))
        );
        assert_eq!(entries[1].name, "b");
        assert_eq!(entries[1].checksum, None);
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse_catalog("a sha1:abc http://x")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_catalog("a md5:00 http://x").is_err());
        assert!(parse_catalog("a - ").is_err());
        assert!(parse_catalog("a - http://x extra").is_err());
    }

    #[test]
    fn finds_files_in_sha256sums() {
        let sums =
            "4882B5E6  ggml-base-q5_1.bin\n2aa2  *ggml-silero-v6.2.0.bin\nfb51 ggml-tiny.en.bin\n";
        assert_eq!(
            sha256_for(sums, "ggml-base-q5_1.bin"),
            Some(Checksum::Sha256("4882b5e6".into()))
        );
        assert_eq!(
            sha256_for(sums, "ggml-silero-v6.2.0.bin"),
            Some(Checksum::Sha256("2aa2".into()))
        );
        assert_eq!(
            sha256_for(sums, "ggml-tiny.en.bin"),
            Some(Checksum::Sha256("fb51".into()))
        );
        assert_eq!(sha256_for(sums, "ggml-tiny.bin"), None);
    }
}
