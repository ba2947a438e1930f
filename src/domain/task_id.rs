//! [`TaskId`]: the one name of an upload, an HTTP transcription or a live stream.
//!
//! Must not accept any spelling but the canonical one, so no client string becomes a path.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use uuid::Uuid;

/// A task id: a UUID, always written in canonical lowercase hyphenated form.
///
/// Because it can only be built from a parsed UUID, its string form is 36 characters of
/// `[0-9a-f-]` and is safe to use as a file or directory name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Uuid);

/// Why a string is not a task id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TaskIdError {
    /// Not a hyphenated 36-character UUID (the id as given, shortened for messages).
    #[error("task_id {0:?} is not a valid task id")]
    Malformed(String),
    /// A UUID, but not a random (version 4) one, where the client chose it.
    #[error(
        "task_id must be a random (version 4) UUID, e.g. from uuid.uuid4(); ids others could \
         guess are refused"
    )]
    NotRandom,
}

impl TaskId {
    /// A fresh random (v4) id.
    pub fn new_v4() -> Self {
        TaskId(Uuid::new_v4())
    }

    /// Parses the hyphenated 36-character form (any case). Other UUID spellings (braced, urn,
    /// no hyphens) are refused so one task has one spelling.
    pub fn parse(s: &str) -> Result<Self, TaskIdError> {
        let malformed = || TaskIdError::Malformed(shorten(s, 40));
        if s.len() != 36 {
            return Err(malformed());
        }
        Uuid::try_parse(s).map(TaskId).map_err(|_| malformed())
    }

    /// A task id a client chose for a new task: it must be a random (version 4, RFC 4122
    /// variant) UUID, so ids like all zeros, counters or timestamps, which others could
    /// guess, are refused.
    pub fn parse_chosen(s: &str) -> Result<Self, TaskIdError> {
        let id = TaskId::parse(s)?;
        let random = id.0.get_version() == Some(uuid::Version::Random)
            && id.0.get_variant() == uuid::Variant::RFC4122;
        random.then_some(id).ok_or(TaskIdError::NotRandom)
    }

    /// From the 16 raw bytes of a binary frame.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        TaskId(Uuid::from_bytes(bytes))
    }

    /// The 16 raw bytes, for binary frames.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

/// Cuts `s` to at most `max` characters (adding `…`), for echoing client input in messages.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl std::str::FromStr for TaskId {
    type Err = TaskIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskId::parse(s)
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TaskId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_round_trips_and_canonicalises() {
        let id = TaskId::new_v4();
        let s = id.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(TaskId::parse(&s).unwrap(), id);
        assert_eq!(TaskId::parse(&s.to_uppercase()).unwrap().to_string(), s);
        assert_eq!(TaskId::from_bytes(*id.as_bytes()), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
    }

    #[test]
    fn task_id_rejects_paths_and_other_spellings() {
        for bad in [
            "",
            "../../etc/passwd",
            "..",
            "abc",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "67e55044-10b1-426f-9247-bb680e5fe0c/",
            "67e55044-10b1-426f-9247-bb680e5fe0cg",
            "67e55044/10b1/426f/9247/bb680e5fe0c8",
        ] {
            let e = TaskId::parse(bad).unwrap_err();
            assert!(matches!(e, TaskIdError::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn chosen_ids_must_be_random() {
        assert!(TaskId::parse_chosen(&TaskId::new_v4().to_string()).is_ok());
        for guessable in [
            "00000000-0000-0000-0000-000000000000",
            "67e55044-10b1-126f-9247-bb680e5fe0c8",
        ] {
            assert_eq!(TaskId::parse_chosen(guessable), Err(TaskIdError::NotRandom));
        }
    }

    #[test]
    fn messages_shorten_what_they_echo() {
        let e = TaskId::parse(&"日".repeat(100)).unwrap_err();
        assert!(e.to_string().contains(&format!("{}…", "日".repeat(40))));
    }
}
