//! The Wyoming port of the real `earshot serve` process (tiny.en), driven by the `wyoming`
//! Python package's own client, as Home Assistant drives it: tests/wyoming_client.py checks
//! describe/info, a transcription, the streaming variant and bad input on raw sockets beside
//! a client being served; this side starts the server from a settings file on port 0, learns
//! the Wyoming port from its log, converts the corpus file with ffmpeg, scores the texts and
//! checks the connection cap and a graceful shutdown with a connection open.
//! tests/wyoming_models.py does the same for a server with two models (`transcribe` chooses, `info`
//! lists them) and for one whose live capacity takes one transcription at a time (`busy`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use earshot::wyoming::frame::{Decoder, Event, Limits};
use serde_json::Value;

/// A hub URL that refuses connections: tests must never download from the internet.
const NO_HUB: &str = "http://127.0.0.1:9";
/// Longest wait for the server to start, answer or stop before the test fails.
const HANG_GUARD: Duration = Duration::from_secs(180);
/// The recording: JFK, 44.1 kHz stereo FLAC, converted for each use.
const RECORDING: &str = "en_jfk_44k_stereo.flac";

/// A running `earshot serve`; killed when dropped.
struct Server {
    child: Child,
    /// The Wyoming address it logged.
    wyoming: SocketAddr,
    /// Its settings file, models and data (kept as long as the server).
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with `settings` as its config file (plus `env`) and waits for its
    /// `wyoming listening: tcp://ADDR` log line.
    fn start(settings: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("earshot.toml");
        std::fs::write(&config, settings).unwrap();
        let mut child = common::earshot_serve()
            .arg("--config")
            .arg(&config)
            .arg("--model")
            .arg(common::model("ggml-tiny.en.bin"))
            .arg("--models-dir")
            .arg(dir.path().join("models"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--threads", "2"])
            .env("EARSHOT_MODEL_HUB", NO_HUB)
            .envs(env.iter().copied())
            .spawn()
            .expect("earshot starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, rest)) = line.split_once("wyoming listening: tcp://") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(HANG_GUARD) else {
            let _ = child.kill();
            panic!("earshot serve did not log its Wyoming address");
        };
        let wyoming = addr.parse().expect("a socket address in the log line");
        Server {
            child,
            wyoming,
            dir,
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("earshot serve did not stop after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The recording as raw 16-bit little-endian PCM at `rate` with `channels`, via ffmpeg.
fn pcm(dir: &Path, rate: u32, channels: u32) -> std::path::PathBuf {
    corpus_pcm(dir, RECORDING, rate, channels)
}

/// A corpus file as raw 16-bit little-endian PCM at `rate` with `channels`, via ffmpeg.
fn corpus_pcm(dir: &Path, file: &str, rate: u32, channels: u32) -> std::path::PathBuf {
    let out = dir.join(format!("{file}_{rate}_{channels}.s16le"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(common::corpus_file(file))
        .args(["-ac", &channels.to_string(), "-ar", &rate.to_string()])
        .args(["-f", "s16le"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs (install ffmpeg)");
    assert!(status.success(), "ffmpeg converts {file}");
    out
}

/// A raw connection with a read deadline.
fn connect(addr: SocketAddr) -> TcpStream {
    let socket = TcpStream::connect(addr).expect("the Wyoming port accepts");
    socket.set_read_timeout(Some(HANG_GUARD)).unwrap();
    socket
}

/// Every event the server writes until it closes the connection, read with Earshot's own
/// decoder (the Python client is the independent check; this only reads server output).
fn events_to_close(mut socket: TcpStream) -> Vec<Event> {
    let mut bytes = Vec::new();
    let _ = socket.read_to_end(&mut bytes);
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let mut decoder = Decoder::new(Limits::default());
    let mut events = Vec::new();
    while let Some(event) = decoder.decode(&mut buf).expect("the server writes Wyoming") {
        events.push(event);
    }
    events
}

/// The `code` of the last event before the close, which must be an `error`.
fn closing_error(socket: TcpStream) -> String {
    let events = events_to_close(socket);
    let last = events.last().expect("an event before the close");
    assert_eq!(last.kind, "error", "{events:?}");
    last.data["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn home_assistant_s_wyoming_client_works_unchanged() {
    // Bad input arrives on other connections while a client is served: room for several
    // live transcriptions at once, so the refusals checked are the bad input's, not `busy`.
    let server = Server::start(
        "wyoming = \"127.0.0.1:0\"\nwyoming-idle-timeout = \"2s\"\n",
        &[("EARSHOT_LIVE_CAPACITY", "8")],
    );
    let mono = pcm(server.dir.path(), 16_000, 1);
    let stereo = pcm(server.dir.path(), 44_100, 2);
    let args = [
        server.wyoming.ip().to_string(),
        server.wyoming.port().to_string(),
        mono.display().to_string(),
        stereo.display().to_string(),
    ];
    let texts = common::python_checks("wyoming_client.py", &args, "wyoming");
    let reference = common::reference(RECORDING);
    for key in ["batch", "streaming", "beside_bad_input"] {
        let text = texts[key].as_str().unwrap();
        let wer = earshot::eval::wer(&reference, text);
        assert!(wer <= 0.25, "{key}: WER {wer} for {text:?}");
    }

    // Shutdown with an utterance open: the client is told, and the process exits cleanly.
    let mut open = connect(server.wyoming);
    open.write_all(
        b"{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1}}\n",
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(&open).read_line(&mut line).unwrap();
    assert!(line.contains("transcript-start"), "{line}");
    assert!(server.terminate(), "earshot serve exits with success");
    assert_eq!(closing_error(open), "shutting-down");
}

#[test]
fn connections_over_the_cap_are_told_busy_and_a_freed_slot_serves_again() {
    let server = Server::start(
        "wyoming = \"127.0.0.1:0\"\n",
        &[
            ("EARSHOT_WYOMING_MAX_CONNECTIONS", "1"),
            ("EARSHOT_WYOMING_IDLE_TIMEOUT", "1s"),
        ],
    );
    let held = connect(server.wyoming);
    // The held connection is accepted first; the next one is over the cap.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(closing_error(connect(server.wyoming)), "busy");
    // The held one goes silent and is closed after the idle timeout, freeing the slot.
    assert_eq!(closing_error(held), "timeout");
    let mut next = connect(server.wyoming);
    next.write_all(b"{\"type\":\"describe\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&next).read_line(&mut line).unwrap();
    let header: Value = serde_json::from_str(&line).expect("a header line");
    assert_eq!(header["type"], "info", "{line}");
    assert!(server.terminate());
}

/// Mandarin: "甚至出现交易几乎停滞的情况".
const ZH: &str = "zh_BAC009S0764W0121.wav";

#[test]
fn transcribe_chooses_among_the_served_models_and_info_lists_them() {
    let server = Server::start(
        "wyoming = \"127.0.0.1:0\"\n",
        &[("EARSHOT_MODELS", "tiny.en,base-q5_1")],
    );
    let en = pcm(server.dir.path(), 16_000, 1);
    let zh = corpus_pcm(server.dir.path(), ZH, 16_000, 1);
    let args = [
        "models".to_string(),
        server.wyoming.ip().to_string(),
        server.wyoming.port().to_string(),
        en.display().to_string(),
        zh.display().to_string(),
    ];
    let texts = common::python_checks("wyoming_models.py", &args, "wyoming");
    let heard = texts["zh"].as_str().unwrap();
    let cer = earshot::eval::cer(&common::reference(ZH), heard);
    assert!(cer <= 0.4, "base-q5_1 on Mandarin: CER {cer} for {heard:?}");
    let heard = texts["en"].as_str().unwrap();
    let wer = earshot::eval::wer(&common::reference(RECORDING), heard);
    assert!(wer <= 0.25, "the default, tiny.en: WER {wer} for {heard:?}");
    assert!(server.terminate());
}

#[test]
fn an_utterance_beyond_the_live_capacity_is_told_busy_and_a_freed_share_serves_again() {
    let server = Server::start(
        "wyoming = \"127.0.0.1:0\"\n",
        &[("EARSHOT_LIVE_CAPACITY", "0")],
    );
    let en = pcm(server.dir.path(), 16_000, 1);
    let args = [
        "busy".to_string(),
        server.wyoming.ip().to_string(),
        server.wyoming.port().to_string(),
        en.display().to_string(),
    ];
    let texts = common::python_checks("wyoming_models.py", &args, "wyoming");
    let reference = common::reference(RECORDING);
    for key in ["first", "held", "again"] {
        let text = texts[key].as_str().unwrap();
        let wer = earshot::eval::wer(&reference, text);
        assert!(wer <= 0.25, "{key}: WER {wer} for {text:?}");
    }
    assert!(server.terminate());
}
