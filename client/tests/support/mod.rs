//! The local server in-process on a loopback port that survives restarts (so a client can
//! see it go away and come back), and a recording proxy that can lose responses.

#![allow(dead_code)]

pub mod live_server;
pub mod story;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audio_dedup_server::in_process::{test_config, InProcess};
use audio_dedup_server::TokenTable;

pub const ALICE: &str = "client-alice-token-00001";
pub const BOB: &str = "client-bob-token-0000002";
/// A third user, in no thread of the others.
pub const CAROL: &str = "client-carol-token-00003";

/// The server (`audio_dedup_server::in_process`) with the three users, plus the calls a
/// second device would make.
pub struct Server {
    pub addr: SocketAddr,
    inner: InProcess,
}

impl Server {
    /// Starts on `addr` (port 0: any), over `data` (kept across restarts).
    pub async fn start(data: &Path, addr: SocketAddr) -> Self {
        Self::start_with(data, addr, |_| {}).await
    }

    /// As `start`, with the test config changed by `configure` first.
    pub async fn start_with(
        data: &Path,
        addr: SocketAddr,
        configure: impl FnOnce(&mut audio_dedup_server::ServerConfig),
    ) -> Self {
        let mut tokens = TokenTable::default();
        tokens.insert(ALICE, "alice", false).expect("token");
        tokens.insert(BOB, "bob", false).expect("token");
        tokens.insert(CAROL, "carol", false).expect("token");
        let mut cfg = test_config(data, tokens);
        configure(&mut cfg);
        let inner = InProcess::start(cfg, addr).await.expect("start the server");
        Self {
            addr: inner.addr(),
            inner,
        }
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// Where the server keeps the object of `hash` (absent once the audio is deleted).
    pub fn blob_path(&self, hash: &str) -> PathBuf {
        audio_dedup_core::store::embedded::object_dir(
            &self.inner.data_dir().join("blobs/objects"),
            &format!("audio/{hash}"),
        )
    }

    /// Stops it; the port is free again once this returns.
    pub async fn stop(&mut self) {
        let _ = self.inner.stop().await;
    }

    pub async fn restart(&mut self) {
        self.inner.restart().await.expect("restart the server");
    }

    /// Direct HTTP calls, as another device would make them.
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        call_as(&self.url(), token, method, path, body).await
    }

    /// Every message change in the thread, from the start, as the server has them.
    pub async fn messages(&self, token: &str, thread: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut cursor = "0".to_owned();
        for _ in 0..1000 {
            let (s, v) = self
                .call(
                    token,
                    reqwest::Method::GET,
                    &format!("/v1/threads/{thread}/messages?after={cursor}&limit=500"),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            out.extend(v["items"].as_array().cloned().unwrap_or_default());
            cursor = v["next_cursor"].as_str().unwrap_or("0").to_owned();
            if v["has_more"] != true {
                break;
            }
        }
        out
    }
}

/// The server over a temporary data folder of its own, removed with it.
pub struct TempServer {
    pub base: String,
    pub inner: Server,
    _dir: tempfile::TempDir,
}

impl TempServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = Server::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
        Self {
            base: inner.url(),
            inner,
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        self.inner.stop().await;
    }
}

/// A reverse proxy in front of the server that records each request line and can hold back
/// the answers of the next `lose` requests matching a prefix past the client's timeout (the
/// server commits; the client never hears back).
#[derive(Clone, Default)]
pub struct Proxy {
    pub log: Arc<Mutex<Vec<String>>>,
    pub lose: Arc<AtomicUsize>,
    pub lose_prefix: Arc<Mutex<String>>,
    /// Answer the next requests with this status and `Retry-After` (seconds) instead of
    /// forwarding them: (count, status, retry_after).
    pub refuse: Arc<Mutex<(usize, u16, Option<u64>)>>,
    /// Requests whose line starts with the prefix wait this long before they are forwarded.
    pub slow: Arc<Mutex<(String, Duration)>>,
    /// Each forwarded request's line and the status it was answered.
    pub answered: Arc<Mutex<Vec<(String, u16)>>>,
}

impl Proxy {
    pub async fn start(upstream: String, hold: Duration) -> (Self, SocketAddr) {
        let p = Proxy::default();
        let state = p.clone();
        let http = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let state = state.clone();
            let http = http.clone();
            let upstream = upstream.clone();
            async move {
                let (parts, body) = req.into_parts();
                let line = format!(
                    "{} {}",
                    parts.method,
                    parts.uri.path_and_query().map_or("", |p| p.as_str())
                );
                state
                    .log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.clone());
                {
                    let mut r = state.refuse.lock().unwrap_or_else(|e| e.into_inner());
                    if r.0 > 0 {
                        r.0 -= 1;
                        let mut out = axum::response::Response::new(axum::body::Body::from(
                            r#"{"error":{"code":"busy","message":"slow down"}}"#,
                        ));
                        *out.status_mut() = http::StatusCode::from_u16(r.1)
                            .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
                        if let Some(secs) = r.2 {
                            out.headers_mut().insert("retry-after", secs.into());
                        }
                        return out;
                    }
                }
                let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
                    .await
                    .unwrap_or_default();
                let (slow_prefix, delay) =
                    state.slow.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if !slow_prefix.is_empty() && line.starts_with(&slow_prefix) {
                    tokio::time::sleep(delay).await;
                }
                let mut rb = http.request(
                    parts.method.clone(),
                    format!(
                        "{upstream}{}",
                        parts.uri.path_and_query().map_or("", |p| p.as_str())
                    ),
                );
                for (k, v) in &parts.headers {
                    if k != "host" {
                        rb = rb.header(k, v);
                    }
                }
                let res = rb.body(bytes).send().await;
                let prefix = state
                    .lose_prefix
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if !prefix.is_empty()
                    && line.starts_with(&prefix)
                    && state.lose.load(Ordering::SeqCst) > 0
                {
                    state.lose.fetch_sub(1, Ordering::SeqCst);
                    tokio::time::sleep(hold).await;
                }
                match res {
                    Ok(r) => {
                        let status = r.status();
                        state
                            .answered
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((line.clone(), status.as_u16()));
                        let headers = r.headers().clone();
                        let body = r.bytes().await.unwrap_or_default();
                        let mut out = axum::response::Response::new(axum::body::Body::from(body));
                        *out.status_mut() = status;
                        for (k, v) in &headers {
                            if k != "transfer-encoding" && k != "content-length" {
                                out.headers_mut().insert(k, v.clone());
                            }
                        }
                        out
                    }
                    Err(_) => {
                        let mut out = axum::response::Response::new(axum::body::Body::empty());
                        *out.status_mut() = http::StatusCode::BAD_GATEWAY;
                        out
                    }
                }
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        (p, addr)
    }

    pub fn lose_next(&self, n: usize, prefix: &str) {
        *self.lose_prefix.lock().unwrap_or_else(|e| e.into_inner()) = prefix.to_owned();
        self.lose.store(n, Ordering::SeqCst);
    }

    pub fn refuse_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        *self.refuse.lock().unwrap_or_else(|e| e.into_inner()) = (n, status, retry_after);
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests starting with `prefix` wait `delay` before they are forwarded.
    pub fn slow_down(&self, prefix: &str, delay: Duration) {
        *self.slow.lock().unwrap_or_else(|e| e.into_inner()) = (prefix.to_owned(), delay);
    }

    /// How many forwarded requests starting with `prefix` were answered `status`.
    pub fn answered(&self, prefix: &str, status: u16) -> usize {
        self.answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(line, s)| line.starts_with(prefix) && *s == status)
            .count()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// One HTTP call to the server at `url` as the owner of `token`: status and JSON body.
pub async fn call_as(
    url: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut rb = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Alice posts message `id` (its snapshot names it) in `thread` on the server at `url`.
pub async fn post_as_alice(url: &str, thread: &str, id: &str) {
    let (st, v) = call_as(
        url,
        ALICE,
        reqwest::Method::POST,
        &format!("/v1/threads/{thread}/messages"),
        Some(serde_json::json!({ "id": id, "snapshot": { "n": id } })),
    )
    .await;
    assert_eq!(st, 201, "{v}");
}

/// A free loopback port (bound and released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
