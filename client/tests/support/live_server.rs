//! The local server built in-process with its live hub in reach (to count open WebSocket
//! connections) and every request line recorded (to count what a client asked for),
//! including the WebSocket upgrades. For the live-channel tests and benchmarks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audio_dedup_server::in_process::test_config;
use audio_dedup_server::live::LiveHub;
use audio_dedup_server::{ServerConfig, TokenTable};
use axum::extract::Request;
use axum::middleware::Next;
use tokio::sync::oneshot;

use super::{ALICE, BOB, CAROL};

pub struct LiveServer {
    pub hub: Arc<LiveHub>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl LiveServer {
    /// The three test users over a temporary folder; `configure` changes the test config.
    pub async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut tokens = TokenTable::default();
        tokens.insert(ALICE, "alice", false).expect("token");
        tokens.insert(BOB, "bob", false).expect("token");
        tokens.insert(CAROL, "carol", false).expect("token");
        let mut cfg = test_config(dir.path(), tokens);
        configure(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let built = audio_dedup_server::build(&cfg, addr).await.expect("build");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorder = log.clone();
        let app = built.app.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let recorder = recorder.clone();
                async move {
                    let line = format!("{} {}", req.method(), req.uri());
                    recorder
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line);
                    next.run(req).await
                }
            },
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let hub = built.live.clone();
        let closing = hub.clone();
        let limits = cfg.connections.clone();
        tokio::spawn(async move {
            audio_dedup_server::serve::serve(
                listener,
                app,
                &limits,
                async move {
                    let _ = stopped.await;
                    closing.close_all();
                },
                Duration::from_secs(5),
            )
            .await;
        });
        Self {
            hub,
            addr,
            log,
            stop: Some(stop),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Request lines (`GET /v1/positions`) since the last `clear`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn requests_to(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A direct call as another device makes it.
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        super::call_as(&self.url(), token, method, path, body).await
    }

    /// Waits (bounded) until `n` live connections are open.
    pub async fn until_open(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.hub.open_connections() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} live connections open, want {n}",
                self.hub.open_connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
