//! Fetching real models: from a mirror directory, over HTTP with resume, and the ways it must fail.
//!
//! Uses the real model files in the mirror (`EARSHOT_MODEL_MIRROR`, default `../shared/models`)
//! and a small HTTP server on 127.0.0.1; nothing here touches the internet.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use earshot::models::{self, Fetcher, ModelError};
use sha2::{Digest, Sha256};

/// The mirror holding real models, as CI and developers set it up.
fn mirror() -> PathBuf {
    let dir = std::env::var("EARSHOT_MODEL_MIRROR")
        .ok()
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    for name in [models::DEFAULT_MODEL, models::VAD_MODEL] {
        let file = dir.join(models::file_name(name));
        assert!(
            file.is_file(),
            "{} is missing: set EARSHOT_MODEL_MIRROR to a directory holding the ggml models and \
             their SHA256SUMS, or run scripts/download-model.sh {name} DIR",
            file.display()
        );
    }
    assert!(
        dir.join("SHA256SUMS").is_file(),
        "{} has no SHA256SUMS",
        dir.display()
    );
    dir
}

/// The SHA-256 the mirror's SHA256SUMS lists for a file (read here independently of the crate).
fn listed_sha256(mirror: &Path, file: &str) -> String {
    let sums = fs::read_to_string(mirror.join("SHA256SUMS")).unwrap();
    sums.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let hex = fields.next()?;
            (fields.next()?.trim_start_matches('*') == file).then(|| hex.to_lowercase())
        })
        .unwrap_or_else(|| panic!("{file} not listed in the mirror's SHA256SUMS"))
}

fn sha256_of(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// Files in a directory, by name (to show nothing but the expected files was left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A base URL where nothing listens: a port the OS just handed out and we released.
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn offline(mirror: Option<&Path>) -> Fetcher {
    Fetcher {
        mirror: mirror.map(|m| m.to_string_lossy().into_owned()),
        hub: Some(closed_port_url()),
        progress: false,
    }
}

#[test]
fn ensures_tiny_en_and_silero_from_the_mirror_directory() {
    let mirror = mirror();
    let dir = tempfile::tempdir().unwrap();
    let models_dir = dir.path().join("models");
    let fetcher = offline(Some(&mirror));
    for name in [models::DEFAULT_MODEL, models::VAD_MODEL] {
        let path = fetcher.ensure(name, &models_dir).unwrap();
        let file = models::file_name(name);
        assert_eq!(path, models_dir.join(&file));
        assert_eq!(sha256_of(&path), listed_sha256(&mirror, &file));
    }
    assert_eq!(
        listing(&models_dir),
        ["ggml-silero-v6.2.0.bin", "ggml-tiny.en.bin"]
    );
    // Present files are used as they are: no mirror, no hub needed.
    let again = offline(None).ensure("tiny.en", &models_dir).unwrap();
    assert_eq!(again, models::resolve("tiny.en", &models_dir));
}

#[test]
fn a_corrupted_mirror_copy_is_refused_and_leaves_nothing() {
    let mirror = mirror();
    let bad = tempfile::tempdir().unwrap();
    fs::copy(mirror.join("SHA256SUMS"), bad.path().join("SHA256SUMS")).unwrap();
    let file = models::file_name(models::VAD_MODEL);
    let mut bytes = fs::read(mirror.join(&file)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(bad.path().join(&file), bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let err = offline(Some(bad.path()))
        .ensure(models::VAD_MODEL, dir.path())
        .unwrap_err();
    assert!(
        matches!(err, ModelError::ChecksumMismatch { .. }),
        "wrong error: {err}"
    );
    let message = err.to_string();
    assert!(message.contains(&file), "{message}");
    assert!(
        message.contains(&listed_sha256(&mirror, &file)),
        "{message}"
    );
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn an_unknown_name_errors_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = offline(None).ensure("tiny-en", dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("unknown model `tiny-en`"), "{message}");
    assert!(message.contains("tiny.en") && message.contains("large-v3-turbo"));
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn offline_without_a_mirror_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let err = offline(None).ensure("tiny.en", dir.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::Offline { .. }),
        "wrong error: {err}"
    );
    let message = err.to_string();
    assert!(message.contains("EARSHOT_MODEL_MIRROR"), "{message}");
    assert!(message.contains("ggml-tiny.en.bin"), "{message}");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn a_mirror_without_the_file_falls_back_to_the_hub() {
    let empty_mirror = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = offline(Some(empty_mirror.path()))
        .ensure("base.en", dir.path())
        .unwrap_err();
    assert!(
        matches!(err, ModelError::NotOnMirror { .. }),
        "wrong error: {err}"
    );
    let message = err.to_string();
    assert!(message.contains("EARSHOT_MODEL_MIRROR"), "{message}");
    assert!(message.contains("ggml-base.en.bin"), "{message}");
}

#[test]
fn an_http_mirror_resumes_a_partial_download() {
    let mirror = mirror();
    let server = FileServer::start(&mirror);
    let dir = tempfile::tempdir().unwrap();
    let file = models::file_name(models::DEFAULT_MODEL);
    // An earlier attempt that broke off halfway.
    let original = fs::read(mirror.join(&file)).unwrap();
    let half = original.len() / 2;
    fs::write(
        dir.path().join(format!("{file}.mirror.part")),
        &original[..half],
    )
    .unwrap();

    let fetcher = Fetcher {
        mirror: Some(format!("{}/", server.url)),
        hub: Some(closed_port_url()),
        progress: false,
    };
    let path = fetcher.ensure(models::DEFAULT_MODEL, dir.path()).unwrap();
    assert_eq!(sha256_of(&path), listed_sha256(&mirror, &file));
    assert_eq!(listing(dir.path()), vec![file.clone()]);
    let requests = server.requests();
    assert!(
        requests.contains(&format!("/{file} bytes={half}-")),
        "no resume request in {requests:?}"
    );
}

#[test]
fn a_corrupted_http_mirror_copy_is_refused() {
    let mirror = mirror();
    let bad = tempfile::tempdir().unwrap();
    fs::copy(mirror.join("SHA256SUMS"), bad.path().join("SHA256SUMS")).unwrap();
    let file = models::file_name(models::VAD_MODEL);
    let mut bytes = fs::read(mirror.join(&file)).unwrap();
    bytes.truncate(bytes.len() - 1);
    fs::write(bad.path().join(&file), bytes).unwrap();
    let server = FileServer::start(bad.path());

    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher {
        mirror: Some(server.url.clone()),
        hub: Some(closed_port_url()),
        progress: false,
    };
    let err = fetcher.ensure(models::VAD_MODEL, dir.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::ChecksumMismatch { .. }),
        "wrong error: {err}"
    );
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn a_hub_download_resumes_and_keeps_an_unverifiable_model_with_a_ggml_header() {
    // The hub publishes no checksum for the VAD model, so only its ggml header can be checked.
    let mirror = mirror();
    let server = FileServer::start(&mirror);
    let dir = tempfile::tempdir().unwrap();
    let file = models::file_name(models::VAD_MODEL);
    let original = fs::read(mirror.join(&file)).unwrap();
    let third = original.len() / 3;
    fs::write(dir.path().join(format!("{file}.part")), &original[..third]).unwrap();

    let fetcher = Fetcher {
        mirror: None,
        hub: Some(server.url.clone()),
        progress: false,
    };
    let path = fetcher.ensure(models::VAD_MODEL, dir.path()).unwrap();
    assert_eq!(fs::read(&path).unwrap(), original);
    assert_eq!(listing(dir.path()), vec![file.clone()]);
    assert!(server
        .requests()
        .contains(&format!("/{file} bytes={third}-")));
}

#[test]
fn a_hub_that_answers_not_found_is_an_error_not_a_file() {
    let empty = tempfile::tempdir().unwrap();
    let server = FileServer::start(empty.path());
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher {
        mirror: None,
        hub: Some(server.url.clone()),
        progress: false,
    };
    let err = fetcher.ensure("tiny", dir.path()).unwrap_err();
    assert!(
        matches!(err, ModelError::Http { status: 404, .. }),
        "wrong error: {err}"
    );
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

/// The only test that goes through the environment (the others pass settings explicitly,
/// so they cannot race over process-wide variables).
#[test]
fn ensure_reads_the_mirror_and_hub_from_the_environment() {
    let mirror = mirror();
    std::env::set_var("EARSHOT_MODEL_MIRROR", &mirror);
    std::env::set_var("EARSHOT_MODEL_HUB", closed_port_url());
    let dir = tempfile::tempdir().unwrap();
    let path = models::ensure(models::VAD_MODEL, dir.path(), false).unwrap();
    assert_eq!(
        sha256_of(&path),
        listed_sha256(&mirror, &models::file_name(models::VAD_MODEL))
    );
    let err = models::ensure("base.en", dir.path(), false).unwrap_err();
    assert!(
        matches!(err, ModelError::NotOnMirror { .. }),
        "wrong error: {err}"
    );
}

/// A minimal HTTP/1.1 file server on 127.0.0.1 that honours `Range: bytes=N-`, for testing
/// HTTP mirrors and resumption. It serves a bounded number of connections, then stops.
struct FileServer {
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    url: String,
    /// "PATH RANGE" for every request seen, to check that resumption really asked for a range.
    log: Arc<Mutex<Vec<String>>>,
}

impl FileServer {
    const MAX_CONNECTIONS: usize = 16;

    fn start(root: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let root = root.to_path_buf();
        let seen = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(Self::MAX_CONNECTIONS) {
                let Ok(stream) = stream else { continue };
                let _ = serve(stream, &root, &seen);
            }
        });
        FileServer { url, log }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range = String::from("-");
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = value.trim().to_string();
            }
        }
    }
    log.lock().unwrap().push(format!("{path} {range}"));

    let mut out = stream;
    let file_path = root.join(path.trim_start_matches('/'));
    let Ok(mut file) = fs::File::open(&file_path) else {
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    let len = file.metadata()?.len();
    let start: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if start >= len && start > 0 {
        return write!(
            out,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    if start > 0 {
        write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\n",
            len - 1
        )?;
    } else {
        write!(out, "HTTP/1.1 200 OK\r\n")?;
    }
    write!(
        out,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        len - start
    )?;
    file.seek(SeekFrom::Start(start))?;
    std::io::copy(&mut file.take(len - start), &mut out)?;
    out.flush()
}
