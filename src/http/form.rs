//! Reading an OpenAI-style `multipart/form-data` request: the `file` part is streamed to a
//! spool file chunk by chunk (never held whole in memory) and counted against the size limit
//! as it arrives; the small text parts are collected, each bounded.
//!
//! This module must not interpret the fields: [`super::openai`] validates them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::Multipart;
use axum::http::StatusCode;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use crate::metrics;

/// Largest text part (a long `prompt` fits easily).
const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Most text parts one request may carry.
const MAX_FIELDS: usize = 32;
/// How much of an oversized file is still read (and thrown away) before answering 413, so a
/// client that is still sending sees the answer instead of a reset connection.
const DRAIN_BYTES: u64 = 2 * 1024 * 1024;

/// The parts of one request.
#[derive(Debug, Default)]
pub struct Form {
    /// The uploaded audio, spooled to disk; `None` if the request had no `file` part.
    pub file: Option<SpooledFile>,
    /// Text parts by name, in arrival order (names like `timestamp_granularities[]` repeat).
    pub fields: HashMap<String, Vec<String>>,
}

impl Form {
    /// The last value given for `name`, trimmed; empty values count as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every value given for `name` or `name[]`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        let bracketed = format!("{name}[]");
        [name, bracketed.as_str()]
            .iter()
            .filter_map(|n| self.fields.get(*n))
            .flatten()
            .map(|v| v.trim())
            .collect()
    }
}

/// An uploaded file on disk; deleted when dropped unless [`SpooledFile::keep`] hands it on.
#[derive(Debug)]
pub struct SpooledFile {
    /// Where the bytes are.
    pub path: PathBuf,
    /// How many bytes were received.
    pub bytes: u64,
    /// Whether the file is still ours to delete.
    armed: bool,
}

impl SpooledFile {
    /// Gives up ownership of the file: the caller now deletes it.
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for SpooledFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads every part: the file goes to `dir/<stem>.<ext>` (extension from the client's file
/// name, as a decoding hint), at most `max_file_bytes` of it.
pub async fn read(
    mut multipart: Multipart,
    dir: &Path,
    stem: &str,
    max_file_bytes: u64,
) -> Result<Form, ApiError> {
    let mut form = Form::default();
    let mut fields = 0;
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            if form.file.is_some() {
                return Err(ApiError::bad_request("only one file per request").param("file"));
            }
            let path = dir.join(format!("{stem}.{}", extension(field.file_name())));
            form.file = Some(spool(field, path, max_file_bytes).await?);
        } else {
            fields += 1;
            if fields > MAX_FIELDS {
                return Err(ApiError::bad_request("too many form fields"));
            }
            let value = text(field, &name).await?;
            form.fields.entry(name).or_default().push(value);
        }
    }
    Ok(form)
}

/// The file's extension if it is a plausible one (letters and digits, short), else `bin`.
fn extension(file_name: Option<&str>) -> String {
    file_name
        .and_then(|n| Path::new(n).extension())
        .and_then(|e| e.to_str())
        .filter(|e| (1..=8).contains(&e.len()) && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map_or_else(|| "bin".to_string(), |e| e.to_ascii_lowercase())
}

async fn spool(
    mut field: Field<'_>,
    path: PathBuf,
    max_file_bytes: u64,
) -> Result<SpooledFile, ApiError> {
    let mut out = tokio::fs::File::create(&path).await.map_err(|err| {
        tracing::error!(%err, path = %path.display(), "cannot create an HTTP upload file");
        ApiError::internal()
    })?;
    let mut spooled = SpooledFile {
        path,
        bytes: 0,
        armed: true,
    };
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        spooled.bytes += chunk.len() as u64;
        metrics::bytes_received(chunk.len());
        if spooled.bytes > max_file_bytes {
            drain(field, DRAIN_BYTES).await;
            return Err(too_large(max_file_bytes));
        }
        if let Err(err) = out.write_all(&chunk).await {
            drain(field, DRAIN_BYTES).await;
            return Err(write_error(err));
        }
    }
    out.flush().await.map_err(write_error)?;
    Ok(spooled)
}

/// Reads and discards up to `limit` more bytes of a refused part.
async fn drain(mut field: Field<'_>, limit: u64) {
    let mut left = limit;
    while let Ok(Some(chunk)) = field.chunk().await {
        match left.checked_sub(chunk.len() as u64) {
            Some(rest) => left = rest,
            None => break,
        }
    }
}

/// A failed write of the spool file: a full disk is the client's 507 (try later), anything
/// else ours (logged). The partial file is removed when the `SpooledFile` drops.
fn write_error(err: std::io::Error) -> ApiError {
    match err.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            tracing::warn!(%err, "an HTTP upload ran out of disk space");
            ApiError::disk_full()
        }
        _ => {
            tracing::error!(%err, "writing an HTTP upload");
            ApiError::internal()
        }
    }
}

async fn text(mut field: Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        if bytes.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(format!(
                "form field {name:?} is longer than {MAX_FIELD_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request(format!("form field {name:?} is not UTF-8 text")))
}

/// The error for a file over `max` bytes.
pub fn too_large(max: u64) -> ApiError {
    ApiError::too_large(format!(
        "the file is larger than this server accepts ({})",
        bytesize::ByteSize::b(max)
    ))
}

fn malformed(err: MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large("the request body is too large");
    }
    ApiError::bad_request(format!("malformed multipart body: {}", err.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_hints_only_when_plausible() {
        assert_eq!(extension(Some("talk.MP3")), "mp3");
        assert_eq!(extension(Some("a.tar.ogg")), "ogg");
        assert_eq!(extension(Some("../../etc/passwd")), "bin");
        assert_eq!(extension(Some("x.../y")), "bin");
        assert_eq!(extension(Some("x.w/av")), "bin");
        assert_eq!(extension(None), "bin");
    }

    #[test]
    fn repeated_and_bracketed_fields_are_all_seen() {
        let mut form = Form::default();
        form.fields
            .insert("timestamp_granularities[]".into(), vec!["word".into()]);
        form.fields
            .insert("timestamp_granularities".into(), vec!["segment".into()]);
        form.fields.insert("language".into(), vec!["  ".into()]);
        let mut all = form.all("timestamp_granularities");
        all.sort();
        assert_eq!(all, ["segment", "word"]);
        assert_eq!(form.get("language"), None);
    }
}
