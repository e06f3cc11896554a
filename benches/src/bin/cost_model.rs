//! The cost model (issue #24): what scripted workloads cost in billed units on AWS.
//!
//! Drives the real HTTP router (`audio_dedup_api::router`, every route, through tower's
//! `oneshot`) over the in-memory store, and counts:
//! - every index call, with the size of each item it reads or writes, as DynamoDB bills it:
//!   read request units (RRU) per 4 KB per call (strongly consistent GetItem and table
//!   Query: 1 per 4 KB; the work index, a GSI, reads eventually consistent: 0.5), write
//!   request units (WRU) per 1 KB of the larger of the old and new item, x2 in a transaction
//!   (every op of `TransactWriteItems`, a `ConditionCheck` included), and the work index's
//!   own writes (1 WRU per KB put, 1 per entry removed);
//! - every blob store call (the memory store's `FaultHook` sees each `Op`), plus what the
//!   client does with presigned URLs: its PUT of new audio, its GET of a download, with bytes;
//! - every HTTP API request and the Lambda function it invokes (the route's `RouteSet`, as
//!   template.yaml maps it), S3 event invocations (`s3-events`, audio keys only, as the
//!   bucket's notification filters them), one `live-stream` invocation per transaction that
//!   writes a log entry (a quiet table: each write its own stream batch, the worst case), and
//!   the WebSocket side: pokes posted (`fan_out`, the function's own code, over counting
//!   connection ports), pings and pongs, connects and connection minutes.
//!
//! Workloads (each on a fresh store; its setup is not counted):
//! 1. `new audio`: messages with new audio in 2-member threads. The sender's client uploads as
//!    client/src/upload.rs does (session, proof refused, signed PUT, complete), then posts;
//!    both members are online and get a poke; each syncs the thread; the recipient fetches the
//!    snapshot and downloads the audio (signed GET).
//! 2. `forwarded audio`: the same, forwarding a stored message's audio (`from_message`); a
//!    recipient downloads a content once (the client's cache is by hash).
//! 3. `no audio`: text-only messages in 2-member threads.
//! 4. `100 members`: text-only messages in one thread of 100 members, all online.
//! 5. `big snapshots`: text-only messages whose snapshot is `BENCH_BIG_SNAPSHOT_BYTES`: since
//!    the snapshot cut (chat/messages.rs, over 4 KB an object) one PUT each instead of a
//!    message item of that size (docs/cost.md has both runs).
//! 6. `idle day`: one user with the app open for 24 h: a keepalive every 5 min, rotation every
//!    110 min, `BENCH_RECONNECTS_PER_DAY` network reconnects, each (re)connect's catch-up.
//!
//! Then reconciler passes over what workload 1 left: one sweep cycle, and the scheduled
//! function's monthly cost (the pass, the drift check and the dedup figures' read, each
//! measured over steady passes and scaled to 8,640 passes).
//!
//! Prices (list prices, us-east-1, as of 2025; to be checked before quoting) turn the counts
//! into dollars; see docs/cost.md. Lambda duration is not measured here: `BENCH_LAMBDA_MS`
//! (50 ms) at the template's 256 MB, arm64.
//!
//! Knobs: `BENCH_MESSAGES` (1000), `BENCH_AUDIO_BYTES` (100000: about 30 s of voice),
//! `BENCH_SNAPSHOT_BYTES` (600), `BENCH_BIG_SNAPSHOT_BYTES` (50000), `BENCH_BIG_MEMBERS`
//! (100), `BENCH_RECONNECTS_PER_DAY` (4), `BENCH_LAMBDA_MS` (50), `BENCH_BUDGET_WRU` (1: the
//! write units the per-user request budget spends per HTTP request, which it makes on
//! DynamoDB directly; deploy.md counts 1 under the rate, 2 at most; 0 with the limit off).
//!
//! Exit code: 0 (it prints figures; there is no target).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use audio_dedup_api::{router, ApiConfig, Authenticator, Caller, RouteSet};
use audio_dedup_benches::{env_u64, machine_summary, Rng};
use audio_dedup_core::domain::{ConnectionId, UserId};
use audio_dedup_core::error::StoreError;
use audio_dedup_core::live::{connected, disconnected, fan_out};
use audio_dedup_core::ports::{
    BlobEvent, ConnectionRegistry, IndexName, Item, Key, OsEntropy, Query, SystemClock,
    TransactionalIndex, TxnError, WriteOp,
};
use audio_dedup_core::store::memory::{
    Fault, FaultHook, MemoryBlobs, MemoryConnections, MemoryIndex, Op, RecordingPoster,
};
use audio_dedup_core::{ContentHash, Dedup, DedupConfig};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

// ---------- prices (list prices, us-east-1, as of 2025; check before quoting) ----------

const LAMBDA_PER_REQUEST: f64 = 0.20 / 1e6;
const LAMBDA_PER_GB_S_ARM: f64 = 0.000_013_333_4;
const LAMBDA_MEMORY_GB: f64 = 0.25;
const HTTP_API_PER_REQUEST: f64 = 1.00 / 1e6;
const WS_PER_MESSAGE: f64 = 1.00 / 1e6;
const WS_PER_CONNECTION_MINUTE: f64 = 0.25 / 1e6;
const DDB_PER_WRU: f64 = 0.625 / 1e6;
const DDB_PER_RRU: f64 = 0.125 / 1e6;
const S3_PER_PUT: f64 = 0.005 / 1e3;
const S3_PER_GET: f64 = 0.0004 / 1e3;

// ---------- what is counted ----------

#[derive(Debug, Default, Clone)]
struct Counts {
    gets: u64,
    queries: u64,
    /// Read request units (strongly consistent = 1 per 4 KB; eventually = 0.5).
    rru: f64,
    /// The part of `rru` a read that may be stale could halve (strongly consistent reads).
    rru_strong: f64,
    txns: u64,
    txn_ops: u64,
    txn_rejected: u64,
    /// Transactional write units (2 per KB per op) and the work index's own writes.
    wru_txn: u64,
    wru_gsi: u64,
    /// Non-transactional writes (the live connection records).
    wru_plain: u64,
    /// Largest item written, and the WRU spent on items over 4 KB.
    largest_item: usize,
    wru_big_items: u64,
    // blob store, server side (the FaultHook's ops)
    s3_put: u64,
    s3_head: u64,
    s3_read: u64,
    s3_delete: u64,
    s3_list: u64,
    s3_other: u64,
    // client side, through presigned URLs
    client_put: u64,
    client_put_bytes: u64,
    client_get: u64,
    client_get_bytes: u64,
    // API and functions
    http: BTreeMap<&'static str, u64>,
    lambda: BTreeMap<&'static str, u64>,
    ws_messages: u64,
    ws_connect_minutes: f64,
    /// Per step (a route, or what a function set off): calls, then index gets, queries,
    /// RRU, WRU and S3 requests, summed.
    steps: BTreeMap<String, [f64; 6]>,
}

impl Counts {
    fn http_total(&self) -> u64 {
        self.http.values().sum()
    }
    fn lambda_total(&self) -> u64 {
        self.lambda.values().sum()
    }
    fn wru(&self) -> u64 {
        self.wru_txn + self.wru_gsi + self.wru_plain
    }
    fn s3_put_class(&self) -> u64 {
        // DELETE requests are free.
        self.s3_put + self.s3_list + self.client_put
    }
    fn s3_get_class(&self) -> u64 {
        self.s3_head + self.s3_read + self.client_get
    }

    /// Dollars, by service.
    fn dollars(&self, lambda_ms: f64) -> BTreeMap<&'static str, f64> {
        let lambda = self.lambda_total() as f64;
        BTreeMap::from([
            (
                "lambda",
                lambda * LAMBDA_PER_REQUEST
                    + lambda * lambda_ms / 1e3 * LAMBDA_MEMORY_GB * LAMBDA_PER_GB_S_ARM,
            ),
            ("http api", self.http_total() as f64 * HTTP_API_PER_REQUEST),
            (
                "websocket",
                self.ws_messages as f64 * WS_PER_MESSAGE
                    + self.ws_connect_minutes * WS_PER_CONNECTION_MINUTE,
            ),
            ("dynamodb writes", self.wru() as f64 * DDB_PER_WRU),
            ("dynamodb reads", self.rru * DDB_PER_RRU),
            (
                "s3 requests",
                self.s3_put_class() as f64 * S3_PER_PUT + self.s3_get_class() as f64 * S3_PER_GET,
            ),
        ])
    }

    fn scaled(&self, f: f64) -> Scaled {
        Scaled { c: self.clone(), f }
    }
}

/// Counts multiplied by `f` for printing (per 1,000 messages).
struct Scaled {
    c: Counts,
    f: f64,
}

type Meter = Arc<Mutex<Counts>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------- item sizes as DynamoDB counts them ----------

/// A number's stored size: about one byte per two significant digits, plus one.
fn number_size(v: u64) -> usize {
    v.to_string().len().div_ceil(2) + 1
}

/// Attribute names plus values, as the DynamoDB adapter stores an item (pk, sk, v, body,
/// and wpk/wsk when it is in the work index).
fn item_size(item: &Item) -> usize {
    let mut n = 2 + item.key.pk.len() + 2 + item.key.sk.len() + 1 + number_size(item.version);
    n += 4 + item.body.len();
    if let Some(w) = &item.work_key {
        n += 3 + w.pk.len() + 3 + w.sk.len();
    }
    n
}

/// A counter shard item: its key and a few `c_<name>` numbers.
const COUNTER_ITEM_BYTES: usize = 200;
/// A live connection record (`LIVE#<user>` / `CONN#<id>`, `expires_at`).
const CONNECTION_ITEM_BYTES: usize = 120;

fn units(bytes: usize, per: usize) -> u64 {
    (bytes.div_ceil(per)).max(1) as u64
}

// ---------- the counting index ----------

/// The memory index, counting what each call would bill. The keys of log entries written
/// are kept for the stream (`live-stream` reads them).
#[derive(Clone)]
struct CountingIndex {
    inner: MemoryIndex,
    meter: Meter,
    written_logs: Arc<Mutex<Vec<Vec<Key>>>>,
}

impl TransactionalIndex for CountingIndex {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let out = self.inner.get(key).await?;
        let size = out.as_ref().map_or(0, item_size);
        let mut m = lock(&self.meter);
        m.gets += 1;
        let u = units(size, 4096) as f64;
        m.rru += u;
        m.rru_strong += u;
        Ok(out)
    }

    async fn query(&self, q: &Query) -> Result<Vec<Item>, StoreError> {
        let out = self.inner.query(q).await?;
        let size: usize = out.iter().map(item_size).sum();
        let mut m = lock(&self.meter);
        m.queries += 1;
        let u = units(size, 4096) as f64;
        match q.index {
            // The work index is a GSI: eventually consistent reads only.
            IndexName::Work => m.rru += u / 2.0,
            IndexName::Primary => {
                m.rru += u;
                m.rru_strong += u;
            }
        }
        Ok(out)
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), TxnError> {
        let (mut wru, mut gsi, mut big, mut largest) = (0u64, 0u64, 0u64, 0usize);
        let mut logs = Vec::new();
        for op in &ops {
            match op {
                WriteOp::Put { item, .. } => {
                    let old = self.inner.get(&item.key).await?;
                    let new_size = item_size(item);
                    let size = old
                        .as_ref()
                        .map_or(new_size, |o| item_size(o).max(new_size));
                    let w = 2 * units(size, 1024);
                    wru += w;
                    largest = largest.max(new_size);
                    if new_size > 4096 {
                        big += w;
                    }
                    let old_work = old.as_ref().and_then(|o| o.work_key.clone());
                    match (&old_work, &item.work_key) {
                        (None, Some(_)) => gsi += units(new_size, 1024),
                        (Some(a), Some(b)) if a == b => gsi += units(new_size, 1024),
                        (Some(_), Some(_)) => gsi += 1 + units(new_size, 1024),
                        (Some(_), None) => gsi += 1,
                        (None, None) => {}
                    }
                    if item.key.sk.starts_with("LOG#") {
                        logs.push(item.key.clone());
                    }
                }
                WriteOp::Check { key, .. } => {
                    let cur = self.inner.get(key).await?;
                    wru += 2 * units(cur.as_ref().map_or(0, item_size), 1024);
                }
                WriteOp::Bump { .. } => wru += 2 * units(COUNTER_ITEM_BYTES, 1024),
            }
        }
        let n = ops.len() as u64;
        let out = self.inner.transact(ops).await;
        let mut m = lock(&self.meter);
        m.txns += 1;
        m.txn_ops += n;
        // A cancelled transaction is billed too.
        m.wru_txn += wru;
        m.wru_big_items += big;
        m.largest_item = m.largest_item.max(largest);
        match &out {
            Ok(()) => {
                m.wru_gsi += gsi;
                if !logs.is_empty() {
                    lock(&self.written_logs).push(logs);
                }
            }
            Err(TxnError::Rejected { .. }) => m.txn_rejected += 1,
            Err(_) => {}
        }
        out
    }

    async fn counters(&self, pk: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        let out = self.inner.counters(pk).await?;
        let mut m = lock(&self.meter);
        m.queries += 1;
        // One consistent Query per partition: each stats shard has a partition of its own
        // (keys::stats_partitions), holding one counter item, so each call reads under 4 KB:
        // one read unit (a Query that finds nothing is billed the same minimum).
        let u = units(COUNTER_ITEM_BYTES, 4096) as f64;
        m.rru += u;
        m.rru_strong += u;
        Ok(out)
    }
}

// ---------- blob calls, through the memory store's fault hook ----------

struct BlobCounter(Meter);

impl FaultHook for BlobCounter {
    fn fault(&self, op: Op) -> Fault {
        let mut m = lock(&self.0);
        match op {
            Op::BlobPut => m.s3_put += 1,
            Op::BlobHead => m.s3_head += 1,
            Op::BlobRead => m.s3_read += 1,
            Op::BlobDelete => m.s3_delete += 1,
            Op::BlobList => m.s3_list += 1,
            Op::IndexGet | Op::IndexQuery | Op::IndexTransact => {}
            #[allow(unreachable_patterns)]
            _ => m.s3_other += 1,
        }
        Fault::None
    }
}

// ---------- live connection records ----------

/// The connection registry (on AWS: items in the table), counting its reads and writes.
struct CountingConnections {
    inner: MemoryConnections,
    meter: Meter,
}

impl ConnectionRegistry for CountingConnections {
    async fn add(
        &self,
        user: &UserId,
        c: &ConnectionId,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        lock(&self.meter).wru_plain += units(CONNECTION_ITEM_BYTES, 1024);
        self.inner.add(user, c, expires_at).await
    }

    async fn remove(&self, user: &UserId, c: &ConnectionId) -> Result<(), StoreError> {
        lock(&self.meter).wru_plain += units(CONNECTION_ITEM_BYTES, 1024);
        self.inner.remove(user, c).await
    }

    async fn list(&self, user: &UserId, limit: usize) -> Result<Vec<ConnectionId>, StoreError> {
        let out = self.inner.list(user, limit).await?;
        let mut m = lock(&self.meter);
        m.queries += 1;
        // An eventually consistent Query (the adapter does not ask for consistency).
        m.rru += units(out.len() * CONNECTION_ITEM_BYTES, 4096) as f64 / 2.0;
        Ok(out)
    }
}

// ---------- identity: the bearer token is the user id ----------

struct BearerIsUser;

impl Authenticator for BearerIsUser {
    fn authenticate(&self, parts: &axum::http::request::Parts) -> Option<Caller> {
        let user = audio_dedup_api::bearer(parts)?.parse().ok()?;
        Some(Caller { user, admin: false })
    }
}

/// The Lambda function a route invokes (template.yaml's events; `RouteSet` in api/src/lib.rs).
fn function_of(path: &str) -> &'static str {
    let p = path.split('?').next().unwrap_or(path);
    if p == "/v1/audio/stats" {
        "stats"
    } else if p.starts_with("/v1/audio/") && p.contains("/references/") {
        "references"
    } else if p.starts_with("/v1/audio") {
        "upload"
    } else if p.starts_with("/v1/library") {
        "library"
    } else {
        // /v1/threads..., /v1/messages/..., /v1/positions
        "threads"
    }
}

/// A path with its ids replaced by the route's parameter names.
fn route_of(path: &str) -> String {
    let p = path.split('?').next().unwrap_or(path);
    let mut out = Vec::new();
    let mut prev = "";
    for seg in p.split('/') {
        let named = match prev {
            "threads" => "{id}",
            "messages" if seg != "snapshot" => "{message_id}",
            "audio" if seg.len() == 64 => "{hash}",
            "references" => "{ref_id}",
            "library" => "{item_id}",
            _ => seg,
        };
        out.push(named);
        prev = seg;
    }
    out.join("/")
}

// ---------- one deployment ----------

type Store = Dedup<MemoryBlobs, CountingIndex>;

struct Env {
    dedup: Arc<Store>,
    app: axum::Router,
    blobs: MemoryBlobs,
    index: CountingIndex,
    conns: CountingConnections,
    poster: RecordingPoster,
    meter: Meter,
    /// Each user's open connection, if online.
    online: BTreeMap<String, ConnectionId>,
    /// WRU the per-user request budget writes per HTTP request.
    budget_wru: u64,
    next_conn: u64,
}

impl Env {
    fn new(cfg: DedupConfig) -> Self {
        let meter: Meter = Arc::default();
        let hook = Arc::new(BlobCounter(meter.clone()));
        let blobs = MemoryBlobs::new(hook.clone()).with_clock(Arc::new(SystemClock));
        let index = CountingIndex {
            inner: MemoryIndex::new(hook),
            meter: meter.clone(),
            written_logs: Arc::default(),
        };
        let dedup = Arc::new(Dedup::with_env(
            blobs.clone(),
            index.clone(),
            cfg,
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
        ));
        let app = router(
            dedup.clone(),
            Arc::new(BearerIsUser),
            ApiConfig::default(),
            RouteSet::All,
        );
        Self {
            dedup,
            app,
            blobs,
            index,
            conns: CountingConnections {
                inner: MemoryConnections::default(),
                meter: meter.clone(),
            },
            poster: RecordingPoster::default(),
            meter,
            online: BTreeMap::new(),
            budget_wru: env_u64("BENCH_BUDGET_WRU", 1),
            next_conn: 0,
        }
    }

    fn reset(&self) -> Counts {
        std::mem::take(&mut *lock(&self.meter))
    }

    fn counts(&self) -> Counts {
        lock(&self.meter).clone()
    }

    /// Index gets, queries, RRU, WRU and S3 requests so far.
    fn tally(&self) -> [f64; 5] {
        let m = lock(&self.meter);
        [
            m.gets as f64,
            m.queries as f64,
            m.rru,
            m.wru() as f64,
            (m.s3_put + m.s3_head + m.s3_read + m.s3_delete + m.s3_list) as f64,
        ]
    }

    /// Books what happened since `before` to `step`.
    fn book(&self, step: String, before: [f64; 5]) {
        let now = self.tally();
        let mut m = lock(&self.meter);
        let e = m.steps.entry(step).or_insert([0.0; 6]);
        e[0] += 1.0;
        for i in 0..5 {
            e[i + 1] += now[i] - before[i];
        }
    }

    fn lambda(&self, f: &'static str, n: u64) {
        *lock(&self.meter).lambda.entry(f).or_insert(0) += n;
    }

    /// One HTTP API request: the router answers; then what its writes set off (S3 events,
    /// the table stream's pokes) runs, as on AWS.
    async fn call(
        &self,
        user: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let f = function_of(path);
        {
            let mut m = lock(&self.meter);
            *m.http.entry(f).or_insert(0) += 1;
            *m.lambda.entry(f).or_insert(0) += 1;
            // The per-user request budget (api/src/budget.rs) writes its token bucket item on
            // DynamoDB directly, not through the index port: counted here, as deploy.md's
            // "Per-user request limits" counts it (1 WRU for a user under the rate).
            m.wru_plain += self.budget_wru;
        }
        let step = format!("{method} {}", route_of(path));
        let before = self.tally();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {user}"));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.book(step, before);
        self.settle().await;
        (status, v)
    }

    /// S3 notifications (audio keys only) and the stream's pokes.
    async fn settle(&self) {
        for event in self.blobs.take_events() {
            let key = match &event {
                BlobEvent::Created { key, .. } | BlobEvent::Removed { key, .. } => key,
            };
            if !key.starts_with("audio/") {
                continue;
            }
            self.lambda("s3-events", 1);
            let before = self.tally();
            self.dedup.audio().on_blob_event(&event).await.unwrap();
            self.book("s3-events".into(), before);
        }
        let batches = std::mem::take(&mut *lock(&self.index.written_logs));
        for keys in batches {
            self.lambda("live-stream", 1);
            let before = self.poster.delivered().len();
            let t = self.tally();
            fan_out(self.dedup.chat(), &self.conns, &self.poster, keys)
                .await
                .unwrap();
            self.book("live-stream".into(), t);
            let posted = (self.poster.delivered().len() - before) as u64;
            lock(&self.meter).ws_messages += posted;
        }
    }

    /// `$connect`: the authorizer and live-connections run, the record is written; then the
    /// client's catch-up (`GET /v1/positions`).
    async fn connect(&mut self, user: &str) {
        self.next_conn += 1;
        let c: ConnectionId = format!("conn{:06}", self.next_conn).parse().unwrap();
        self.lambda("live-authorizer", 1);
        self.lambda("live-connections", 1);
        let u: UserId = user.parse().unwrap();
        connected(&self.conns, &u, &c, 0).await.unwrap();
        self.online.insert(user.to_owned(), c);
        self.call(user, Method::GET, "/v1/positions", None).await;
    }

    /// `$disconnect`: live-connections forgets the record.
    async fn disconnect(&mut self, user: &str) {
        if let Some(c) = self.online.remove(user) {
            self.lambda("live-connections", 1);
            let u: UserId = user.parse().unwrap();
            disconnected(&self.conns, &u, &c).await.unwrap();
        }
    }

    async fn thread(&self, owner: &str, id: &str, members: &[String]) {
        let (s, v) = self
            .call(
                owner,
                Method::POST,
                "/v1/threads",
                Some(json!({ "id": id, "title": id, "members": members })),
            )
            .await;
        assert!(s.is_success(), "thread {id}: {s} {v}");
    }

    /// The sender's client uploads new audio as client/src/upload.rs does.
    async fn upload(&self, user: &str, bytes: bytes::Bytes) -> ContentHash {
        let hash = ContentHash::of(&bytes);
        let (s, session) = self
            .call(
                user,
                Method::POST,
                "/v1/audio/uploads",
                Some(json!({ "sha256": hash, "size": bytes.len(), "format": "m4a" })),
            )
            .await;
        assert!(s.is_success(), "session: {s} {session}");
        let sid = session["session_id"].as_str().unwrap().to_owned();
        let nonce = session["challenge"]["nonce"].as_str().unwrap_or("");
        let ranges: Vec<(usize, usize)> = session["challenge"]["ranges"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["offset"].as_u64().unwrap_or(0) as usize,
                            r["length"].as_u64().unwrap_or(0) as usize,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let chunks: Vec<&[u8]> = ranges
            .iter()
            .map(|&(o, l)| &bytes[o.min(bytes.len())..(o + l).min(bytes.len())])
            .collect();
        let proof = audio_dedup_core::audio::proof_for(nonce, chunks);
        let path = format!("/v1/audio/{hash}/complete");
        let (s, v) = self
            .call(
                user,
                Method::POST,
                &path,
                Some(json!({ "session_id": sid, "proof": proof })),
            )
            .await;
        if s.is_success() {
            return hash; // deduplicated
        }
        assert_eq!(s, StatusCode::CONFLICT, "proof: {v}");
        // The signed PUT, straight to S3.
        let url = session["upload"]["url"].as_str().unwrap();
        let rest = url.strip_prefix("mem://").unwrap();
        let (key, uploader) = rest.split_once("?uploader=").unwrap();
        {
            let mut m = lock(&self.meter);
            m.client_put += 1;
            m.client_put_bytes += bytes.len() as u64;
        }
        self.blobs.client_put(key, bytes, uploader);
        self.settle().await;
        let (s, v) = self
            .call(
                user,
                Method::POST,
                &path,
                Some(json!({ "session_id": sid })),
            )
            .await;
        assert!(s.is_success(), "complete: {s} {v}");
        hash
    }

    /// Posts a message; answers its id.
    async fn post(
        &self,
        user: &str,
        thread: &str,
        id: &str,
        snapshot_bytes: usize,
        audio: Option<Value>,
    ) {
        let text = "x".repeat(snapshot_bytes.saturating_sub(12));
        let mut body = json!({ "id": id, "snapshot": { "text": text } });
        if let Some(a) = audio {
            body["audio"] = a;
        }
        let path = format!("/v1/threads/{thread}/messages");
        let (s, v) = self.call(user, Method::POST, &path, Some(body)).await;
        assert!(s.is_success(), "post: {s} {v}");
    }

    /// What a poked member's client does: sync the thread from its cursor; a recipient then
    /// fetches the snapshot and (unless cached) downloads the audio.
    async fn sync(
        &self,
        user: &str,
        thread: &str,
        cursor: &mut String,
        recipient: bool,
        cache: &mut BTreeSet<String>,
    ) {
        let path = format!("/v1/threads/{thread}/messages?after={cursor}&limit=100");
        let (s, page) = self.call(user, Method::GET, &path, None).await;
        assert!(s.is_success(), "sync: {s} {page}");
        *cursor = page["next_cursor"].as_str().unwrap_or("0").to_owned();
        if !recipient {
            return;
        }
        for m in page["items"].as_array().cloned().unwrap_or_default() {
            let id = m["id"].as_str().unwrap_or_default().to_owned();
            if m["author"].as_str() == Some(user) {
                continue;
            }
            self.call(
                user,
                Method::GET,
                &format!("/v1/messages/{id}/snapshot"),
                None,
            )
            .await;
            let Some(hash) = m["audio"]["content_hash"].as_str() else {
                continue;
            };
            if !cache.insert(format!("{user}/{hash}")) {
                continue;
            }
            let path = format!("/v1/threads/{thread}/messages/{id}/audio");
            let (s, v) = self.call(user, Method::GET, &path, None).await;
            assert!(s.is_success(), "audio: {s} {v}");
            let size = m["audio"]["size"]
                .as_u64()
                .or(v["size"].as_u64())
                .unwrap_or(0);
            let mut c = lock(&self.meter);
            c.client_get += 1;
            c.client_get_bytes += size;
        }
    }
}

fn audio_bytes(seed: u64, n: usize) -> bytes::Bytes {
    let mut buf = vec![0u8; n];
    Rng::new(seed).fill(&mut buf);
    bytes::Bytes::from(buf)
}

struct Knobs {
    messages: u64,
    audio: usize,
    snapshot: usize,
    big_snapshot: usize,
    big_members: u64,
    reconnects: u64,
}

/// Messages in 2-member threads (alice with bob0..bob9); `audio`: none, new, or forwarded.
async fn two_member(k: &Knobs, audio: &str, cfg: DedupConfig, snapshot: usize) -> (Counts, Env) {
    let mut env = Env::new(cfg);
    let pairs = 10u64;
    let mut cursors: BTreeMap<(String, u64), String> = BTreeMap::new();
    for p in 0..pairs {
        env.thread("alice", &format!("t{p}"), &[format!("bob{p}")])
            .await;
    }
    // The forwarded audio: one message in a thread alice shares with carol.
    if audio == "forwarded" {
        env.thread("alice", "src", &["carol".to_owned()]).await;
        let h = env.upload("alice", audio_bytes(u64::MAX, k.audio)).await;
        env.post(
            "alice",
            "src",
            "m-src",
            snapshot,
            Some(json!({ "content_hash": h, "format": "m4a" })),
        )
        .await;
    }
    env.connect("alice").await;
    for p in 0..pairs {
        env.connect(&format!("bob{p}")).await;
    }
    let mut cache = BTreeSet::new();
    env.reset();
    for i in 0..k.messages {
        let p = i % pairs;
        let thread = format!("t{p}");
        let bob = format!("bob{p}");
        let a = match audio {
            "new" => {
                let h = env.upload("alice", audio_bytes(i, k.audio)).await;
                Some(json!({ "content_hash": h, "format": "m4a" }))
            }
            "forwarded" => Some(json!({ "from_message": "m-src" })),
            _ => None,
        };
        env.post("alice", &thread, &format!("m{i}"), snapshot, a)
            .await;
        for (user, recipient) in [("alice", false), (bob.as_str(), true)] {
            let cur = cursors
                .entry((user.to_owned(), p))
                .or_insert_with(|| "0".into());
            env.sync(user, &thread, cur, recipient, &mut cache).await;
        }
    }
    (env.counts(), env)
}

/// Text messages in one thread of `members`, all online; every member syncs each poke.
async fn big_thread(k: &Knobs, messages: u64) -> Counts {
    let mut env = Env::new(DedupConfig::default());
    let others: Vec<String> = (1..k.big_members).map(|i| format!("u{i}")).collect();
    env.thread("alice", "big", &others).await;
    env.connect("alice").await;
    for u in &others {
        env.connect(u).await;
    }
    let mut cursors: BTreeMap<String, String> = BTreeMap::new();
    let mut cache = BTreeSet::new();
    env.reset();
    for i in 0..messages {
        env.post("alice", "big", &format!("m{i}"), k.snapshot, None)
            .await;
        for u in std::iter::once("alice".to_owned()).chain(others.iter().cloned()) {
            let recipient = u != "alice";
            let cur = cursors.entry(u.clone()).or_insert_with(|| "0".into());
            env.sync(&u, "big", cur, recipient, &mut cache).await;
        }
    }
    env.counts()
}

/// One user with the app open for a day, in 10 threads, nothing new arriving.
async fn idle_day(k: &Knobs) -> Counts {
    let mut env = Env::new(DedupConfig::default());
    for p in 0..10 {
        env.thread("alice", &format!("t{p}"), &[format!("bob{p}")])
            .await;
    }
    env.reset();
    let minutes = 24 * 60u64;
    let pings = minutes / 5;
    let rotations = minutes / 110;
    env.connect("alice").await;
    for _ in 0..rotations + k.reconnects {
        // A rotation opens the new connection first, then closes the old; a reconnect after
        // a network change finds the old one closed. Either way: one connect, one disconnect.
        env.disconnect("alice").await;
        env.connect("alice").await;
    }
    // Each ping is a message in and its pong a message out, and invokes live-connections.
    env.lambda("live-connections", pings);
    let mut m = lock(&env.meter);
    m.ws_messages += 2 * pings;
    m.ws_connect_minutes += minutes as f64;
    m.clone()
}

/// Reconciler passes over what a workload left, until a sweep cycle completes.
async fn reconcile_cycle(env: &Env) -> (u64, Counts) {
    env.reset();
    let mut passes = 0;
    loop {
        passes += 1;
        env.lambda("reconciler", 1);
        let r = env.dedup.reconcile().await.unwrap();
        if r.sweep_cycle_completed || passes >= 10_000 {
            break;
        }
    }
    (passes, env.counts())
}

/// Passes measured for the fixed monthly cost, in steady state.
const STEADY_PASSES: u64 = 24;
/// Reconciler passes in a 30-day month at the template's `rate(5 minutes)`.
const PASSES_PER_MONTH: f64 = 8_640.0;

/// What the scheduled function does each pass, each part measured over `STEADY_PASSES`
/// passes once the sweep has gone round: the pass itself, the drift check (the reconciler
/// function's `check_drift`) and the read of the dedup figures it publishes.
async fn steady_passes(env: &Env) -> [(&'static str, Counts); 3] {
    env.reset();
    for _ in 0..STEADY_PASSES {
        env.lambda("reconciler", 1);
        env.dedup.reconcile().await.unwrap();
    }
    let pass = env.reset();
    for _ in 0..STEADY_PASSES {
        reconciler::check_drift(&*env.dedup).await.unwrap();
    }
    let drift = env.reset();
    for _ in 0..STEADY_PASSES {
        env.dedup.audio().stats().await.unwrap();
    }
    let stats = env.reset();
    [
        ("reconcile pass", pass),
        ("drift check", drift),
        ("dedup figures read", stats),
    ]
}

// ---------- printing ----------

fn row(name: &str, s: &Scaled, lambda_ms: f64) -> Vec<String> {
    let c = &s.c;
    let f = s.f;
    let d: f64 = c.dollars(lambda_ms).values().sum::<f64>() * f;
    vec![
        name.to_owned(),
        format!("{:.0}", c.http_total() as f64 * f),
        format!("{:.0}", c.lambda_total() as f64 * f),
        format!("{:.0}", c.gets as f64 * f),
        format!("{:.0}", c.queries as f64 * f),
        format!("{:.0}", c.rru * f),
        format!("{:.0}", c.txns as f64 * f),
        format!("{:.0}", c.wru() as f64 * f),
        format!("{:.0}", c.s3_put_class() as f64 * f),
        format!("{:.0}", c.s3_get_class() as f64 * f),
        format!(
            "{:.1}",
            (c.client_put_bytes + c.client_get_bytes) as f64 * f / 1e6
        ),
        format!("{:.0}", c.ws_messages as f64 * f),
        format!("{:.4}", d),
    ]
}

fn print_table(title: &str, rows: &[Vec<String>]) {
    let head = [
        "workload",
        "http",
        "lambda",
        "gets",
        "queries",
        "RRU",
        "txns",
        "WRU",
        "s3 put/list",
        "s3 get",
        "s3 MB",
        "ws msgs",
        "USD",
    ];
    println!("\n{title}");
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                s.push_str(&format!("{:<w$}", c, w = widths[i]));
            } else {
                s.push_str(&format!("  {:>w$}", c, w = widths[i]));
            }
        }
        println!("{s}");
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn detail(name: &str, c: &Counts, lambda_ms: f64) {
    let d = c.dollars(lambda_ms);
    println!(
        "  {name}: http {:?}; lambda {:?}; RRU {:.0} ({:.0} strongly consistent); WRU {} (txn {}, work index {}, plain {}; items > 4 KB: {}), {} txn ops, {} rejected, largest item {} B; s3 server put {} head {} read {} delete {} list {} other {}; client put {} ({:.1} MB) get {} ({:.1} MB); ws msgs {} conn-min {:.0}",
        c.http, c.lambda, c.rru, c.rru_strong, c.wru(), c.wru_txn, c.wru_gsi, c.wru_plain, c.wru_big_items,
        c.txn_ops, c.txn_rejected, c.largest_item, c.s3_put, c.s3_head, c.s3_read, c.s3_delete, c.s3_list,
        c.s3_other, c.client_put, c.client_put_bytes as f64 / 1e6, c.client_get, c.client_get_bytes as f64 / 1e6,
        c.ws_messages, c.ws_connect_minutes
    );
    println!(
        "    USD: {}",
        d.iter()
            .map(|(k, v)| format!("{k} {v:.5}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("cost_model", run)
}

async fn run() -> Result<bool, String> {
    println!("cost_model: {}", machine_summary());
    let k = Knobs {
        messages: env_u64("BENCH_MESSAGES", 1000).max(1),
        audio: env_u64("BENCH_AUDIO_BYTES", 100_000).max(1) as usize,
        snapshot: env_u64("BENCH_SNAPSHOT_BYTES", 600).max(16) as usize,
        big_snapshot: env_u64("BENCH_BIG_SNAPSHOT_BYTES", 50_000).max(16) as usize,
        big_members: env_u64("BENCH_BIG_MEMBERS", 100).max(2),
        reconnects: env_u64("BENCH_RECONNECTS_PER_DAY", 4),
    };
    let lambda_ms = env_u64("BENCH_LAMBDA_MS", 50) as f64;
    println!(
        "{} messages; audio {} B; snapshot {} B (big: {} B); {}-member thread; {} reconnects/day; Lambda {} ms x 256 MB arm64 assumed",
        k.messages, k.audio, k.snapshot, k.big_snapshot, k.big_members, k.reconnects, lambda_ms
    );
    let per1k = 1000.0 / k.messages as f64;
    let mut rows = Vec::new();
    let mut details = Vec::new();

    let (new_audio, env_new) = two_member(&k, "new", DedupConfig::default(), k.snapshot).await;
    rows.push(row(
        "new audio, 2 members",
        &new_audio.scaled(per1k),
        lambda_ms,
    ));
    details.push(("new audio", new_audio.clone()));

    let (fwd, _) = two_member(&k, "forwarded", DedupConfig::default(), k.snapshot).await;
    rows.push(row(
        "forwarded audio, 2 members",
        &fwd.scaled(per1k),
        lambda_ms,
    ));
    details.push(("forwarded audio", fwd));

    let (text, _) = two_member(&k, "none", DedupConfig::default(), k.snapshot).await;
    rows.push(row("no audio, 2 members", &text.scaled(per1k), lambda_ms));
    details.push(("no audio", text));

    let big_n = (k.messages / 10).max(1);
    let big = big_thread(&k, big_n).await;
    rows.push(row(
        &format!("no audio, {} members", k.big_members),
        &big.scaled(1000.0 / big_n as f64),
        lambda_ms,
    ));
    details.push(("big thread", big));

    // The snapshot cut (chat/messages.rs, SNAPSHOT_INLINE_COST_MAX): snapshots over 4 KB are
    // objects. Before it (commit 5729fdd), this workload wrote them inside the message item.
    let (snap, _) = two_member(&k, "none", DedupConfig::default(), k.big_snapshot).await;
    rows.push(row(
        &format!("no audio, {} B snapshots", k.big_snapshot),
        &snap.scaled(per1k),
        lambda_ms,
    ));
    details.push(("big snapshots", snap));

    print_table(
        "per 1,000 messages (USD: request charges only; storage and transfer below)",
        &rows,
    );
    println!(
        "\nstorage added and transfer out per 1,000 messages (S3 $0.023/GB-month; transfer out $0.09/GB past the free 100 GB/month):"
    );
    for (name, c) in &details {
        let f = if *name == "big thread" {
            1000.0 / big_n as f64
        } else {
            per1k
        };
        let stored = c.client_put_bytes as f64 * f / 1e9;
        let out = c.client_get_bytes as f64 * f / 1e9;
        let dominant = c
            .dollars(lambda_ms)
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, _)| k)
            .unwrap_or("-");
        println!(
            "  {name:<16} audio stored {stored:.3} GB (${:.4} per month, kept), downloaded {out:.3} GB (${:.4}); largest request charge: {dominant}",
            stored * 0.023,
            out * 0.09
        );
    }

    let idle = idle_day(&k).await;
    print_table(
        "one idle user, app open 24 h",
        &[row("idle day", &idle.scaled(1.0), lambda_ms)],
    );
    details.push(("idle day", idle));

    let objects = env_new.blobs.objects().len();
    let (passes, rec) = reconcile_cycle(&env_new).await;
    print_table(
        &format!("reconciler: one sweep cycle over {objects} objects ({passes} passes)"),
        &[row("reconcile cycle", &rec.scaled(1.0), lambda_ms)],
    );
    details.push(("reconcile cycle", rec));
    let parts = steady_passes(&env_new).await;
    let month = PASSES_PER_MONTH / STEADY_PASSES as f64;
    print_table(
        &format!("reconciler over {objects} objects, per 30-day month (8,640 passes; {STEADY_PASSES} measured)"),
        &parts
            .iter()
            .map(|(name, c)| row(name, &c.scaled(month), lambda_ms))
            .collect::<Vec<_>>(),
    );

    println!(
        "\nper step, new audio workload (per call: index gets, queries, RRU, WRU, S3 requests):"
    );
    for (step, v) in &new_audio.steps {
        let n = v[0].max(1.0);
        println!(
            "  {step:<48} {:>6} calls  gets {:>5.2}  queries {:>4.2}  RRU {:>5.2}  WRU {:>5.2}  s3 {:>4.2}",
            v[0],
            v[1] / n,
            v[2] / n,
            v[3] / n,
            v[4] / n,
            v[5] / n
        );
    }
    println!("\ndetail (unscaled counts of each run):");
    for (name, c) in &details {
        detail(name, c, lambda_ms);
    }
    Ok(true)
}
