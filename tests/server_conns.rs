//! Connections that never become requests: silent sockets, slowloris heads, idle keep-alive
//! connections and a flood of them. Each must be closed by the server, and a flood must not
//! lock out a health check or a WebSocket client that was already connected.
//!
//! Timeouts here are upper bounds for "it did close", with generous slack; nothing measures speed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{Client, TestServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Head timeout the tests configure: short, so a test takes seconds.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a test waits for the server to close a connection before it calls that a failure.
const CLOSE_BOUND: Duration = Duration::from_secs(15);

/// Reads until the server ends the connection; the bytes it sent, or `None` if it was still
/// open after `bound`. A reset counts as closed.
async fn read_until_closed(mut socket: impl AsyncRead + Unpin, bound: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(bound, socket.read_to_end(&mut got)).await;
    match read {
        Err(_elapsed) => None,
        Ok(Ok(_)) | Ok(Err(_)) => Some(got),
    }
}

/// The value of one counter line (`name{labels} value`) in a Prometheus scrape, if present.
async fn counter(server: &TestServer, line_start: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

/// `GET /healthz` on a fresh connection (`Connection: close`); the whole response.
async fn healthz(server: &TestServer) -> String {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: earshot\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(tcp, CLOSE_BOUND)
        .await
        .expect("the health check is answered and closed");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let server = TestServer::start_with(|c| c.header_timeout = HEAD_TIMEOUT).await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let got = read_until_closed(silent, CLOSE_BOUND).await;
    assert!(
        got.is_some(),
        "a silent connection was still open after {CLOSE_BOUND:?}"
    );

    let line = "earshot_connections_shed_total{reason=\"head_timeout\"} ";
    let mut seen = None;
    for _ in 0..100 {
        seen = counter(&server, line).await;
        if seen.is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.is_some_and(|n| n >= 1.0),
        "slow heads not counted: {seen:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_is_closed_although_bytes_keep_arriving() {
    let server = TestServer::start_with(|c| c.header_timeout = HEAD_TIMEOUT).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (read_half, mut write_half) = tcp.into_split();
    write_half
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: earshot\r\nX-Slow: ")
        .await
        .unwrap();
    let closed = tokio::spawn(read_until_closed(read_half, CLOSE_BOUND));

    // One header byte every 300 ms, for longer than the bound; the head never ends.
    let mut dripped = 0;
    for _ in 0..(CLOSE_BOUND.as_millis() / 300 + 10) {
        if closed.is_finished() || write_half.write_all(b"a").await.is_err() {
            break;
        }
        dripped += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = closed.await.unwrap();
    assert!(
        got.is_some(),
        "a dripping head was still open after {CLOSE_BOUND:?}"
    );
    assert!(dripped >= 2, "the drip never got going ({dripped} bytes)");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    let server = TestServer::start_with(|c| c.header_timeout = HEAD_TIMEOUT).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: earshot\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(tcp, CLOSE_BOUND).await;
    let got = got.expect("an idle keep-alive connection was still open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_sheds_the_oldest_and_spares_the_rest() {
    const CAP: usize = 32;
    const FLOOD: usize = 200;
    let server = TestServer::start_with(|c| {
        c.max_pending_connections = CAP;
        // Long: any close during this test is an eviction, not a timeout.
        c.header_timeout = Duration::from_secs(120);
    })
    .await;
    let mut before = Client::connect(&server.url()).await;

    let closed = Arc::new(Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    for i in 0..FLOOD {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let closed = closed.clone();
        watchers.push(tokio::spawn(async move {
            if read_until_closed(tcp, Duration::from_secs(120))
                .await
                .is_some()
            {
                closed.lock().unwrap().push(i);
            }
        }));
    }
    let shed = FLOOD - CAP;
    let count = || closed.lock().unwrap().len();
    for _ in 0..600 {
        if count() >= shed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        count() >= shed,
        "only {} of {FLOOD} silent sockets shed",
        count()
    );

    let health = healthz(&server).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    before.send_text("this is not JSON").await;
    before.expect_error("invalid_message").await;

    let closed_now = closed.lock().unwrap().clone();
    assert!(
        !closed_now.contains(&(FLOOD - 1)),
        "the newest silent socket was shed, not the oldest: {closed_now:?}"
    );
    for w in watchers {
        w.abort();
    }
    server.shutdown().await;
}
