//! Test support: an in-process local server on an ephemeral loopback port, a client that
//! checks every response against docs/openapi.yaml, and dumps of the stores.

pub mod spec;

use std::path::{Path, PathBuf};

use audio_dedup_core::ports::{Item, Key, ObjectMeta};
use audio_dedup_core::protocol::{invariants, keys};
use audio_dedup_core::DedupConfig;
use audio_dedup_server::in_process::TempServer;
use audio_dedup_server::TokenTable;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const ALICE: &str = "alice-token-0000000001";
pub const BOB: &str = "bob-token-00000000000002";
pub const ADMIN: &str = "admin-token-000000000003";
/// A third user, in none of the others' threads unless a test adds her.
pub const CAROL: &str = "carol-token-0000000000004";

/// The local server in-process (`audio_dedup_server::in_process`) with four users, and a
/// client that checks every answer against the spec.
pub struct TestServer {
    pub base: String,
    inner: TempServer,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(DedupConfig::default()).await
    }

    pub async fn start_with(dedup: DedupConfig) -> Self {
        let mut tokens = TokenTable::default();
        tokens.insert(ALICE, "alice", false).expect("token");
        tokens.insert(BOB, "bob", false).expect("token");
        tokens.insert(ADMIN, "root", true).expect("token");
        tokens.insert(CAROL, "carol", false).expect("token");
        let inner = TempServer::start(tokens, |cfg| cfg.dedup = dedup)
            .await
            .expect("start the test server");
        Self {
            base: inner.url(),
            inner,
        }
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

    pub fn data_dir(&self) -> PathBuf {
        self.inner.data_dir()
    }

    /// Stops the server gracefully; returns what `run` returned.
    pub async fn stop(self) -> Result<(), String> {
        self.inner.stop().await
    }

    pub fn blob_dir(&self, hash: &str) -> PathBuf {
        audio_dedup_core::store::embedded::object_dir(
            &self.data_dir().join("blobs/objects"),
            &format!("audio/{hash}"),
        )
    }

    /// Everything the server stores: index rows, counters and blob files.
    pub fn dump(&self) -> StoreDump {
        StoreDump::read(&self.data_dir())
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
                    work_key: None,
                })
            })
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        let mut stmt = conn
            .prepare("SELECT name, SUM(value) FROM counters WHERE pk = ?1 OR pk GLOB ?1 || '#*' GROUP BY name")
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
        // Audio (`audio/<sha256>`) and big snapshots (`snapshots/<message>-<sha256>`), each
        // in its fan-out folder (`objects/<top>/~<first two bytes>/<name>/<version file>`).
        for top in ["audio", "snapshots"] {
            let Ok(fans) = std::fs::read_dir(data_dir.join("blobs/objects").join(top)) else {
                continue;
            };
            for e in fans
                .flatten()
                .flat_map(|fan| std::fs::read_dir(fan.path()))
                .flatten()
                .flatten()
            {
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
