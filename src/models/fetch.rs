//! Getting one model file onto disk: from the mirror (directory copy or HTTP), else from the hub.
//!
//! Bytes stream into a partial file while being hashed; only a verified file is renamed to its
//! final name, and a file that fails verification is removed. An interrupted HTTP download is
//! resumed with a Range request. Nothing here decides which model is wanted or where it goes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::digest::DynDigest;

use super::catalog::{self, Checksum, Entry};
use super::{check_header, file_name, Fetcher, ModelError};

/// Copy and download buffer: big enough for throughput, small enough to never matter.
const CHUNK: usize = 256 * 1024;
/// A `SHA256SUMS` larger than this is not a checksum list.
const SUMS_LIMIT: u64 = 1024 * 1024;

/// What a mirror had to say about one file.
enum MirrorOutcome {
    /// The verified file is at its final path.
    Done,
    /// The mirror could not provide it (reason for the log); try the hub.
    Missing(String),
}

/// Why an HTTP transfer stopped.
enum HttpFailure {
    /// The server answered with this status.
    Status(u16),
    /// The server could not be reached or the connection broke.
    Unreachable(String),
    /// A local file operation failed.
    Local(ModelError),
}

impl From<ModelError> for HttpFailure {
    fn from(error: ModelError) -> Self {
        HttpFailure::Local(error)
    }
}

/// Puts a verified copy of `entry` at `dest`: mirror first, then the hub.
pub(super) fn fetch(fetcher: &Fetcher, entry: &Entry, dest: &Path) -> Result<(), ModelError> {
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| io_error(e, "cannot create", dir))?;
    }
    let mut mirror_without_file = None;
    if let Some(mirror) = &fetcher.mirror {
        match from_mirror(fetcher, mirror, entry, dest)? {
            MirrorOutcome::Done => return Ok(()),
            MirrorOutcome::Missing(reason) => {
                tracing::warn!(%mirror, %reason, "mirror cannot provide the model; trying the hub");
                mirror_without_file = Some(mirror.clone());
            }
        }
    }
    from_hub(fetcher, entry, dest, mirror_without_file)
}

fn from_mirror(
    fetcher: &Fetcher,
    mirror: &str,
    entry: &Entry,
    dest: &Path,
) -> Result<MirrorOutcome, ModelError> {
    let file = file_name(&entry.name);
    // Its own partial file: a mirror's bytes may differ from the hub's, so never mix the two.
    let part = with_suffix(dest, ".mirror.part");
    let base = mirror.trim_end_matches('/');
    if is_url(base) {
        let agent = agent();
        let sums = get_text(&agent, &format!("{base}/SHA256SUMS"));
        let (expected, origin) = mirror_checksum(sums, base, entry);
        let url = format!("{base}/{file}");
        return match download(&agent, &url, &part, expected.as_ref(), fetcher.progress) {
            Ok(digest) => {
                finish(&part, dest, expected.as_ref(), &digest, &origin)?;
                Ok(MirrorOutcome::Done)
            }
            Err(HttpFailure::Status(status)) => Ok(MirrorOutcome::Missing(format!(
                "{url} answered HTTP {status}"
            ))),
            Err(HttpFailure::Unreachable(reason)) => Ok(MirrorOutcome::Missing(reason)),
            Err(HttpFailure::Local(error)) => Err(error),
        };
    }
    let dir = Path::new(base);
    if !dir.is_dir() {
        return Err(ModelError::BadMirror(mirror.to_string()));
    }
    let source = dir.join(&file);
    let input = match File::open(&source) {
        Ok(input) => input,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(MirrorOutcome::Missing(format!("no {}", source.display())))
        }
        Err(e) => return Err(io_error(e, "cannot read", &source)),
    };
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).ok();
    let (expected, origin) = mirror_checksum(sums, base, entry);
    let digest = copy_from_dir(input, &source, &part, expected.as_ref(), fetcher.progress)?;
    finish(&part, dest, expected.as_ref(), &digest, &origin)?;
    Ok(MirrorOutcome::Done)
}

/// The mirror's own SHA-256 for the file when its `SHA256SUMS` lists it, else the hub's checksum
/// (a mirror without a list is taken to be a plain copy of the hub). Also says where it came from.
fn mirror_checksum(sums: Option<String>, base: &str, entry: &Entry) -> (Option<Checksum>, String) {
    let listed = sums.and_then(|text| catalog::sha256_for(&text, &file_name(&entry.name)));
    match listed {
        Some(checksum) => (Some(checksum), format!("{base}/SHA256SUMS")),
        None => (
            entry.checksum.clone(),
            format!("{base} (checked against the hub's published checksum)"),
        ),
    }
}

fn copy_from_dir(
    mut input: File,
    source: &Path,
    part: &Path,
    expected: Option<&Checksum>,
    progress: bool,
) -> Result<String, ModelError> {
    let total = input.metadata().ok().map(|m| m.len());
    let bar = progress_bar(progress, total, 0, &file_label(source));
    let mut output = File::create(part).map_err(|e| io_error(e, "cannot create", part))?;
    let mut hasher = new_hasher(expected);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = input
            .read(&mut buffer)
            .map_err(|e| io_error(e, "cannot read", source))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        output
            .write_all(&buffer[..read])
            .map_err(|e| io_error(e, "cannot write", part))?;
        bar.inc(read as u64);
    }
    output
        .sync_all()
        .map_err(|e| io_error(e, "cannot write", part))?;
    bar.finish_and_clear();
    Ok(hex::encode(hasher.finalize()))
}

fn from_hub(
    fetcher: &Fetcher,
    entry: &Entry,
    dest: &Path,
    mirror_without_file: Option<String>,
) -> Result<(), ModelError> {
    let file = file_name(&entry.name);
    let url = match &fetcher.hub {
        Some(hub) => format!("{}/{file}", hub.trim_end_matches('/')),
        None => entry.url.clone(),
    };
    let part = with_suffix(dest, ".part");
    let expected = entry.checksum.as_ref();
    tracing::info!(%url, "downloading model");
    match download(&agent(), &url, &part, expected, fetcher.progress) {
        Ok(digest) => finish(&part, dest, expected, &digest, &url),
        Err(HttpFailure::Status(status)) => Err(ModelError::Http { url, status }),
        Err(HttpFailure::Local(error)) => Err(error),
        Err(HttpFailure::Unreachable(reason)) => Err(match mirror_without_file {
            Some(mirror) => ModelError::NotOnMirror {
                file,
                mirror,
                url,
                reason,
            },
            None => ModelError::Offline { file, url, reason },
        }),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// A small text file over HTTP, or `None` if it is not there (or is unreasonably large).
fn get_text(agent: &ureq::Agent, url: &str) -> Option<String> {
    let mut response = agent.get(url).call().ok()?;
    if response.status().as_u16() != 200 {
        return None;
    }
    response
        .body_mut()
        .with_config()
        .limit(SUMS_LIMIT)
        .read_to_string()
        .ok()
}

/// Downloads `url` into `part`, resuming what `part` already holds, and returns the hex digest
/// of the whole file (SHA-1 when `expected` is SHA-1, else SHA-256). The partial file is kept
/// when the network fails so the next attempt resumes.
fn download(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    expected: Option<&Checksum>,
    progress: bool,
) -> Result<String, HttpFailure> {
    let mut hasher = new_hasher(expected);
    let have = hash_existing(part, hasher.as_mut())?;
    let mut request = agent.get(url);
    if have > 0 {
        tracing::info!(bytes = have, part = %part.display(), "resuming download");
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = request
        .call()
        .map_err(|e| HttpFailure::Unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 if have > 0 && range_start(&response) == Some(have) => true,
        200 => false,
        // Nothing left to send: the partial file is complete (verification will tell).
        416 if have > 0 => return Ok(hex::encode(hasher.finalize())),
        other => return Err(HttpFailure::Status(other)),
    };
    let mut output = if resumed {
        OpenOptions::new().append(true).open(part)
    } else {
        hasher.reset();
        File::create(part)
    }
    .map_err(|e| io_error(e, "cannot write", part))?;
    let start = if resumed { have } else { 0 };
    let total = response.body().content_length().map(|len| len + start);
    let bar = progress_bar(progress, total, start, &file_label(part));
    let mut body = response.body_mut().as_reader();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = body
            .read(&mut buffer)
            .map_err(|e| HttpFailure::Unreachable(format!("connection lost: {e}")))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        output
            .write_all(&buffer[..read])
            .map_err(|e| io_error(e, "cannot write", part))?;
        bar.inc(read as u64);
    }
    output
        .sync_all()
        .map_err(|e| io_error(e, "cannot write", part))?;
    bar.finish_and_clear();
    Ok(hex::encode(hasher.finalize()))
}

/// The first byte position of a 206 answer's `Content-Range: bytes START-END/TOTAL`.
fn range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// Feeds an existing partial file to the hasher; returns its length (0 when absent).
fn hash_existing(part: &Path, hasher: &mut dyn DynDigest) -> Result<u64, ModelError> {
    let mut input = match File::open(part) {
        Ok(input) => input,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(e, "cannot read", part)),
    };
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let read = input
            .read(&mut buffer)
            .map_err(|e| io_error(e, "cannot read", part))?;
        if read == 0 {
            return Ok(total);
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
}

/// Verifies the finished partial file and renames it into place, or removes it.
fn finish(
    part: &Path,
    dest: &Path,
    expected: Option<&Checksum>,
    digest: &str,
    origin: &str,
) -> Result<(), ModelError> {
    let file = file_label(dest);
    match expected {
        Some(checksum) if checksum.hex() != digest => {
            remove_quietly(part);
            return Err(ModelError::ChecksumMismatch {
                file,
                origin: origin.to_string(),
                algorithm: checksum.algorithm(),
                expected: checksum.hex().to_string(),
                actual: digest.to_string(),
            });
        }
        Some(checksum) => {
            tracing::info!(%file, algorithm = checksum.algorithm(), %origin, "model verified")
        }
        None => {
            if let Err(error) = check_header(part) {
                remove_quietly(part);
                return Err(match error {
                    ModelError::NotAModel { .. } => ModelError::NotAModel {
                        path: dest.to_path_buf(),
                    },
                    other => other,
                });
            }
            tracing::warn!(%file, %origin, sha256 = %digest, "no published checksum for this model; kept unverified");
        }
    }
    fs::rename(part, dest).map_err(|e| io_error(e, "cannot rename into", dest))
}

fn new_hasher(expected: Option<&Checksum>) -> Box<dyn DynDigest> {
    match expected {
        Some(Checksum::Sha1(_)) => Box::new(sha1::Sha1::default()),
        _ => Box::new(sha2::Sha256::default()),
    }
}

fn progress_bar(show: bool, total: Option<u64>, start: u64, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::no_length(),
    };
    let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar.set_position(start);
    bar
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a rejected download");
    }
}

fn io_error(source: io::Error, action: &str, path: &Path) -> ModelError {
    ModelError::Io {
        context: format!("{action} {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_append_to_the_whole_name() {
        assert_eq!(
            with_suffix(Path::new("m/ggml-tiny.en.bin"), ".part"),
            PathBuf::from("m/ggml-tiny.en.bin.part")
        );
    }

    #[test]
    fn hashers_follow_the_expected_algorithm() {
        let mut sha1 = new_hasher(Some(&Checksum::Sha1(String::new())));
        sha1.update(b"abc");
        assert_eq!(
            hex::encode(sha1.finalize()),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let mut sha256 = new_hasher(None);
        sha256.update(b"abc");
        assert_eq!(
            hex::encode(sha256.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_mismatch_removes_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("ggml-x.bin.part");
        let dest = dir.path().join("ggml-x.bin");
        fs::write(&part, b"lmgg-bytes").unwrap();
        let expected = Checksum::Sha256("00".repeat(32));
        let err = finish(&part, &dest, Some(&expected), "ff", "test").unwrap_err();
        assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{err}");
        assert!(!part.exists() && !dest.exists());
    }

    #[test]
    fn an_unverifiable_non_model_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("ggml-x.bin.part");
        let dest = dir.path().join("ggml-x.bin");
        fs::write(&part, b"<html>").unwrap();
        let err = finish(&part, &dest, None, "ff", "test").unwrap_err();
        assert!(matches!(err, ModelError::NotAModel { .. }), "{err}");
        assert!(!part.exists() && !dest.exists());
    }
}
