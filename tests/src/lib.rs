//! Test support: an in-process local server on an ephemeral loopback port, a client that
//! checks every response against docs/openapi.yaml, and dumps of the stores.

pub mod spec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use audio_dedup_core::ports::{Item, Key, ObjectMeta};
use audio_dedup_core::protocol::{invariants, keys};
use audio_dedup_core::store::embedded::Synchronous;
use audio_dedup_core::DedupConfig;
use audio_dedup_server::{ServerConfig, TokenTable};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const ALICE: &str = "alice-token-0000000001";
pub const BOB: &str = "bob-token-00000000000002";
pub const ADMIN: &str = "admin-token-000000000003";
/// A third user, in none of the others' threads unless a test adds her.
pub const CAROL: &str = "carol-token-0000000000004";

pub struct TestServer {
    pub base: String,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), audio_dedup_server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(DedupConfig::default()).await
    }

    pub async fn start_with(dedup: DedupConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut tokens = TokenTable::default();
        tokens.insert(ALICE, "alice", false).expect("token");
        tokens.insert(BOB, "bob", false).expect("token");
        tokens.insert(ADMIN, "root", true).expect("token");
        tokens.insert(CAROL, "carol", false).expect("token");
        let cfg = ServerConfig {
            data_dir: dir.path().to_owned(),
            public_url: None,
            tokens,
            dedup,
            reconcile_every: Duration::ZERO,
            sync: Synchronous::Normal,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(audio_dedup_server::run(listener, cfg, async move {
            let _ = rx.await;
        }));
        let server = Self {
            base,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("test server did not become ready in 2 s");
    }

    pub fn client(&self, token: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: self.base.clone(),
            token: Some(token.to_owned()),
        }
    }

    pub fn anonymous(&self) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: self.base.clone(),
            token: None,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server gracefully; returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => match tokio::time::timeout(Duration::from_secs(10), h).await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("shutdown timed out".into()),
            },
            None => Ok(()),
        }
    }

    pub fn blob_dir(&self, hash: &str) -> PathBuf {
        self.dir.path().join("blobs/objects/audio").join(hash)
    }

    /// Everything the server stores: index rows, counters and blob files.
    pub fn dump(&self) -> StoreDump {
        StoreDump::read(self.dir.path())
    }

    /// Safety invariants over the real stores.
    pub fn assert_invariants(&self) {
        let d = self.dump();
        let bad = invariants::safety(&d.items, &d.objects, &d.counters, "");
        assert!(bad.is_empty(), "invariants broken: {bad:#?}");
    }

    pub fn assert_settled(&self) {
        let d = self.dump();
        let bad = invariants::settled(&d.items, &d.objects, "");
        assert!(bad.is_empty(), "not settled: {bad:#?}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreDump {
    pub items: Vec<Item>,
    pub counters: std::collections::BTreeMap<String, i64>,
    pub objects: Vec<ObjectMeta>,
    pub files: Vec<String>,
}

impl StoreDump {
    pub fn read(data_dir: &Path) -> Self {
        let conn = rusqlite::Connection::open(data_dir.join("index.sqlite")).expect("open index");
        let mut stmt = conn
            .prepare("SELECT pk, sk, version, body FROM items ORDER BY pk, sk")
            .expect("prepare");
        let items = stmt
            .query_map([], |r| {
                Ok(Item {
                    key: Key {
                        pk: r.get(0)?,
                        sk: r.get(1)?,
                    },
                    version: r.get::<_, i64>(2)? as u64,
                    body: r.get(3)?,
                    owner_key: None,
                    work_key: None,
                })
            })
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        let mut stmt = conn
            .prepare("SELECT name, SUM(value) FROM counters WHERE pk = ?1 GROUP BY name")
            .expect("prepare");
        let counters = stmt
            .query_map([keys::STATS_PK], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let mut objects = Vec::new();
        let mut files = Vec::new();
        // Audio (`audio/<sha256>`) and big snapshots (`snapshots/<message>-<sha256>`).
        for top in ["audio", "snapshots"] {
            let Ok(entries) = std::fs::read_dir(data_dir.join("blobs/objects").join(top)) else {
                continue;
            };
            for e in entries.flatten() {
                let leaf = e.file_name().to_string_lossy().into_owned();
                for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    files.push(format!("{top}/{leaf}/{name}"));
                    let mut parts = name.splitn(3, '~');
                    let (Some(v), Some(sha), Some(up)) = (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    objects.push(ObjectMeta {
                        key: format!("{top}/{leaf}"),
                        version: v.to_owned(),
                        size: f.metadata().map(|m| m.len()).unwrap_or(0),
                        sha256: sha.parse().ok(),
                        uploader: Some(up.to_owned()),
                        last_modified: 0,
                    });
                }
            }
        }
        files.sort();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Self {
            items,
            counters,
            objects,
            files,
        }
    }
}

/// A response, already checked against the OpenAPI document.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

pub enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
}

impl Client {
    /// Calls `path` (documented as `template`) and checks the answer against the spec.
    pub async fn call(&self, method: Method, template: &str, path: &str, body: Body) -> Reply {
        self.call_with(method, template, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header("content-type", "application/json")
                .body(v.to_string()),
            Body::Raw(b) => req
                .header("content-type", "application/octet-stream")
                .body(b),
        };
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path} answered non-JSON ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        spec::check(method.as_str(), template, status.as_u16(), &body);
        Reply {
            status,
            body,
            headers,
        }
    }

    pub async fn upload(&self, bytes: &[u8], query: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/audio",
            &format!("/v1/audio?{query}"),
            Body::Raw(bytes.to_vec()),
        )
        .await
    }

    pub async fn add_ref(&self, hash: &str, ref_id: &str, kind: &str) -> Reply {
        let path = format!("/v1/audio/{hash}/references/{ref_id}");
        self.call(
            Method::PUT,
            "/v1/audio/{hash}/references/{ref_id}",
            &path,
            Body::Json(serde_json::json!({ "kind": kind })),
        )
        .await
    }

    pub async fn remove_ref(&self, hash: &str, ref_id: &str) -> Reply {
        let path = format!("/v1/audio/{hash}/references/{ref_id}");
        self.call(
            Method::DELETE,
            "/v1/audio/{hash}/references/{ref_id}",
            &path,
            Body::None,
        )
        .await
    }

    pub async fn stats(&self) -> Reply {
        self.call(
            Method::GET,
            "/v1/audio/stats",
            "/v1/audio/stats",
            Body::None,
        )
        .await
    }

    pub async fn describe(&self, hash: &str) -> Reply {
        self.call(
            Method::GET,
            "/v1/audio/{hash}",
            &format!("/v1/audio/{hash}"),
            Body::None,
        )
        .await
    }

    pub async fn open_session(&self, body: Value) -> Reply {
        self.call(
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads",
            Body::Json(body),
        )
        .await
    }

    pub async fn complete(&self, hash: &str, body: Value) -> Reply {
        self.call(
            Method::POST,
            "/v1/audio/{hash}/complete",
            &format!("/v1/audio/{hash}/complete"),
            Body::Json(body),
        )
        .await
    }

    pub async fn reconcile(&self) -> Reply {
        self.call(
            Method::POST,
            "/v1/admin/reconcile",
            "/v1/admin/reconcile",
            Body::None,
        )
        .await
    }

    /// Sends the signed request a session answered, exactly as a client would.
    pub async fn put_signed(&self, upload: &Value, body: Vec<u8>) -> (StatusCode, Value) {
        let mut req = self.http.put(upload["url"].as_str().expect("url"));
        for (k, v) in upload["headers"].as_object().expect("headers") {
            req = req.header(k, v.as_str().expect("header"));
        }
        let res = req.body(body).send().await.expect("put");
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    audio_dedup_core::ContentHash::of(bytes).to_string()
}

pub fn sha256_b64(bytes: &[u8]) -> String {
    audio_dedup_core::ContentHash::of(bytes).to_base64()
}

/// Deterministic pseudo-audio of a given size.
pub fn audio(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}
