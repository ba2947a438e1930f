//! A real Earshot server for integration tests: in-process, on `127.0.0.1:0`, with the real
//! tiny.en model from the mirror and a fresh data directory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use earshot::inference::pool::{Pool, PoolConfig};
use earshot::server::{self, AppState, ServerConfig};
use tokio::sync::oneshot;

/// One tiny.en pool shared by every server a test binary starts (loading is the slow part).
pub static TINY: LazyLock<Pool> = LazyLock::new(|| {
    Pool::start(PoolConfig {
        model_path: super::model("ggml-tiny.en.bin"),
        workers: 1,
        queue_capacity: 16,
    })
    .expect("the tiny.en pool starts")
});

/// A multilingual pool (base, q5_1) for tests of other languages and translation.
pub static MULTILINGUAL: LazyLock<Pool> = LazyLock::new(|| {
    Pool::start(PoolConfig {
        model_path: super::model("ggml-base-q5_1.bin"),
        workers: 1,
        queue_capacity: 16,
    })
    .expect("the base-q5_1 pool starts")
});

/// A running server; shuts down when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state, for looking inside in assertions.
    pub state: Arc<AppState>,
    /// Its data directory (kept alive as long as the server).
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts its settings.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_with_pool(TINY.clone(), tweak).await
    }

    /// Starts a server on the given pool (e.g. [`MULTILINGUAL`]) after `tweak`.
    pub async fn start_with_pool(pool: Pool, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("a temp dir");
        let mut config = ServerConfig::for_tests("tiny.en", data_dir.path().to_path_buf());
        config.threads = 2;
        tweak(&mut config);
        let vad = Some(super::model("ggml-silero-v6.2.0.bin"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(config, pool, vad).expect("state");
        let (stop, stopped) = oneshot::channel::<()>();
        let st = state.clone();
        let handle = tokio::spawn(async move {
            server::run(listener, st, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            state,
            data_dir,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// `ws://addr/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// `http://addr`, for the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }

    /// Where the data directory is.
    pub fn data_path(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
