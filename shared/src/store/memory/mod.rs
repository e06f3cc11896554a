//! In-memory ports with a fault hook: the simulation tests run the real protocol over these
//! and inject lost responses, crashes (failures before a write), conflicts, yields and slow
//! calls. Blob events are queued for the simulation to deliver (late, twice, reordered, or
//! never).

mod live;

pub use live::{MemoryConnections, RecordingPoster};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::domain::{ContentHash, Part, SignedRequest};
use crate::error::StoreError;
use crate::ports::{
    BlobBody, BlobEvent, BlobStore, Expect, IndexName, Item, Key, MultipartRef, ObjectMeta,
    ObjectPage, PresignPart, PresignPut, PutOutcome, PutRequest, Query, StartParts,
    TransactionalIndex, TxnError, WriteOp,
};

/// Which port call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    IndexGet,
    IndexQuery,
    IndexTransact,
    BlobPut,
    BlobHead,
    BlobDelete,
    BlobRead,
    BlobList,
    /// Starting, listing, finishing or aborting a multipart upload.
    BlobParts,
}

/// What to do to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Fail before doing anything (a crash or an unreachable store).
    FailBefore,
    /// Do it, then fail: the write committed but the caller never hears so.
    LoseResponse,
    /// A transaction conflict (transact only).
    Conflict,
}

/// Decides faults and scheduling. `yields` lets a simulation interleave tasks from a seed;
/// `delay` makes one call slow (a long pause in tokio time, so whole flows of other tasks
/// can run inside its window: a stale read acted on much later).
pub trait FaultHook: Send + Sync + 'static {
    fn fault(&self, op: Op) -> Fault;
    fn yields(&self, _op: Op) -> u32 {
        0
    }
    fn delay(&self, _op: Op) -> Duration {
        Duration::ZERO
    }
}

struct NoFaults;
impl FaultHook for NoFaults {
    fn fault(&self, _: Op) -> Fault {
        Fault::None
    }
}

/// DynamoDB refuses a transaction over the size limit or with two ops on one item. This
/// store serves only tests, and a protocol change that broke either rule would pass here
/// and fail on AWS, so it panics: the simulation reports a panicking client as a failure.
fn check_contract(ops: &[WriteOp]) {
    assert!(
        ops.len() <= crate::ports::MAX_TRANSACTION_OPS,
        "a transaction of {} ops (at most {})",
        ops.len(),
        crate::ports::MAX_TRANSACTION_OPS
    );
    let mut keys = std::collections::HashSet::new();
    for op in ops {
        let key = op_key(op);
        assert!(keys.insert(key), "two ops on {key} in one transaction");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn gate(hook: &dyn FaultHook, op: Op) -> Result<Fault, StoreError> {
    for _ in 0..hook.yields(op) {
        tokio::task::yield_now().await;
    }
    let pause = hook.delay(op);
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    match hook.fault(op) {
        Fault::FailBefore => Err(StoreError::Unavailable(format!(
            "injected failure before {op:?}"
        ))),
        f => Ok(f),
    }
}

fn lost(op: Op) -> StoreError {
    StoreError::Unavailable(format!("injected lost response after {op:?}"))
}

#[derive(Default)]
struct IndexState {
    items: BTreeMap<Key, Item>,
    counters: BTreeMap<Key, BTreeMap<String, i64>>,
    /// Items held by transactions in flight (only with a [`ConflictModel`]).
    held: std::collections::HashSet<Key>,
}

/// DynamoDB's optimistic concurrency, modelled: a transaction holds every item it names
/// (puts, condition checks and counter bumps alike) from when it starts until it commits,
/// and a transaction that names an item another one holds is cancelled at once with a
/// conflict (`TransactionCanceledException`, reason `TransactionConflict`), nothing
/// written. Reads never conflict (a `GetItem` or `Query` reads the last committed version).
/// Without a model a transaction is instantaneous and never conflicts by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConflictModel {
    /// How long a transaction holds its items (tokio time: paused in simulations and
    /// benchmarks, so this is model time).
    pub hold: Duration,
    /// Scheduler yields while it holds them (the window other tasks can run in, with no
    /// time passing).
    pub hold_yields: u32,
}

#[derive(Clone)]
pub struct MemoryIndex {
    state: Arc<Mutex<IndexState>>,
    hook: Arc<dyn FaultHook>,
    writes: Arc<AtomicU64>,
    bumps: Arc<AtomicU64>,
    conflict_model: Option<ConflictModel>,
    conflicts: Arc<AtomicU64>,
}

/// Releases a transaction's held items however it ends (committed, refused, or dropped
/// while it held them).
struct Held<'a> {
    state: &'a Mutex<IndexState>,
    keys: Vec<Key>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut s = lock(self.state);
        for k in &self.keys {
            s.held.remove(k);
        }
    }
}

fn op_key(op: &WriteOp) -> &Key {
    match op {
        WriteOp::Put { item, .. } => &item.key,
        WriteOp::Check { key, .. } | WriteOp::Bump { key, .. } => key,
    }
}

impl Default for MemoryIndex {
    fn default() -> Self {
        Self::new(Arc::new(NoFaults))
    }
}

impl MemoryIndex {
    pub fn new(hook: Arc<dyn FaultHook>) -> Self {
        Self {
            state: Arc::default(),
            hook,
            writes: Arc::new(AtomicU64::new(0)),
            bumps: Arc::new(AtomicU64::new(0)),
            conflict_model: None,
            conflicts: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same store with DynamoDB's transaction conflicts modelled (see [`ConflictModel`]).
    pub fn with_conflicts(mut self, model: ConflictModel) -> Self {
        self.conflict_model = Some(model);
        self
    }

    /// How many transactions the conflict model cancelled so far (injected conflicts from
    /// the fault hook not included).
    pub fn modelled_conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::SeqCst)
    }

    /// Takes `ops`' items for a transaction in flight, or `None` when another one holds
    /// one of them (a conflict).
    fn hold(&self, ops: &[WriteOp]) -> Option<Held<'_>> {
        let mut s = lock(&self.state);
        if ops.iter().any(|op| s.held.contains(op_key(op))) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        let keys: Vec<Key> = ops.iter().map(|op| op_key(op).clone()).collect();
        s.held.extend(keys.iter().cloned());
        Some(Held {
            state: &self.state,
            keys,
        })
    }

    /// How many committed transactions changed a counter so far.
    pub fn counter_writes(&self) -> u64 {
        self.bumps.load(Ordering::SeqCst)
    }

    /// How many transactions have committed so far (lost responses included). A simulation
    /// compares it between checks to skip re-checking a state that has not changed.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The sum of the versions of the items whose key matches `which`. Versions only grow, so
    /// it changes exactly when one of those items is written: a cheap "did anything I check
    /// change?" test for simulations.
    pub fn version_sum(&self, which: impl Fn(&Key) -> bool) -> u64 {
        lock(&self.state)
            .items
            .values()
            .filter(|i| which(&i.key))
            .map(|i| i.version)
            .sum()
    }

    /// Every item, for invariant checks and before/after comparisons.
    pub fn dump(&self) -> Vec<Item> {
        lock(&self.state).items.values().cloned().collect()
    }

    /// Calls `f` on every item, in key order, without copying them.
    pub fn visit(&self, f: impl FnMut(&Item)) {
        lock(&self.state).items.values().for_each(f);
    }

    /// The sums of each counter over partition `pk` and every partition `pk#…` (the stats
    /// shards' partitions, for invariant checks).
    pub fn counter_totals(&self, pk: &str) -> BTreeMap<String, i64> {
        let shard = format!("{pk}#");
        sum_counters(&lock(&self.state), |p| p == pk || p.starts_with(&shard))
    }
}

fn sum_counters(s: &IndexState, which: impl Fn(&str) -> bool) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (k, c) in &s.counters {
        if which(&k.pk) {
            for (name, v) in c {
                *out.entry(name.clone()).or_insert(0) += v;
            }
        }
    }
    out
}

fn holds(current: Option<&Item>, expect: Expect) -> bool {
    match expect {
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current.is_some_and(|i| i.version == v),
        Expect::Any => true,
    }
}

impl TransactionalIndex for MemoryIndex {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let f = gate(&*self.hook, Op::IndexGet).await?;
        let out = lock(&self.state).items.get(key).cloned();
        if f == Fault::LoseResponse {
            return Err(lost(Op::IndexGet));
        }
        Ok(out)
    }

    async fn query(&self, q: &Query) -> Result<Vec<Item>, StoreError> {
        gate(&*self.hook, Op::IndexQuery).await?;
        let s = lock(&self.state);
        let key_of = |i: &Item| -> Option<Key> {
            match q.index {
                IndexName::Primary => Some(i.key.clone()),
                IndexName::Work => i.work_key.clone(),
            }
        };
        let mut hits: Vec<(Key, Item)> = s
            .items
            .values()
            .filter_map(|i| key_of(i).map(|k| (k, i.clone())))
            .filter(|(k, _)| {
                k.pk == q.pk
                    && k.sk.starts_with(&q.sk_prefix)
                    && q.after.as_ref().is_none_or(|a| &k.sk > a)
                    && q.upto.as_ref().is_none_or(|u| &k.sk <= u)
            })
            .collect();
        hits.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(hits.into_iter().take(q.limit).map(|(_, i)| i).collect())
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), TxnError> {
        let f = gate(&*self.hook, Op::IndexTransact).await?;
        if f == Fault::Conflict {
            return Err(TxnError::Conflict);
        }
        check_contract(&ops);
        let _held = match self.conflict_model {
            Some(model) => {
                let Some(held) = self.hold(&ops) else {
                    return Err(TxnError::Conflict);
                };
                for _ in 0..model.hold_yields {
                    tokio::task::yield_now().await;
                }
                if !model.hold.is_zero() {
                    tokio::time::sleep(model.hold).await;
                }
                Some(held)
            }
            None => None,
        };
        let mut s = lock(&self.state);
        for (i, op) in ops.iter().enumerate() {
            let ok = match op {
                WriteOp::Put { item, expect } => holds(s.items.get(&item.key), *expect),
                WriteOp::Check { key, expect } => holds(s.items.get(key), *expect),
                WriteOp::Bump { .. } => true,
            };
            if !ok {
                return Err(TxnError::Rejected { op_index: i });
            }
        }
        let mut bumped = false;
        for op in ops {
            match op {
                WriteOp::Put { mut item, expect } => {
                    if expect == Expect::Any {
                        item.version = s.items.get(&item.key).map_or(1, |c| c.version + 1);
                    }
                    s.items.insert(item.key.clone(), item);
                }
                WriteOp::Check { .. } => {}
                WriteOp::Bump { key, deltas } => {
                    bumped = true;
                    let c = s.counters.entry(key).or_default();
                    for (name, d) in deltas {
                        *c.entry(name.to_owned()).or_insert(0) += d;
                    }
                }
            }
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        if bumped {
            self.bumps.fetch_add(1, Ordering::SeqCst);
        }
        drop(s);
        if f == Fault::LoseResponse {
            return Err(TxnError::Store(lost(Op::IndexTransact)));
        }
        Ok(())
    }

    async fn counters(&self, pk: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        gate(&*self.hook, Op::IndexQuery).await?;
        Ok(sum_counters(&lock(&self.state), |p| p == pk))
    }
}

#[derive(Default)]
struct BlobState {
    /// Current object per key (at most one: puts are if-none-match).
    objects: BTreeMap<String, (ObjectMeta, Bytes)>,
    events: Vec<BlobEvent>,
    /// Multipart uploads in progress, by upload id.
    uploads: BTreeMap<String, Upload>,
}

struct Upload {
    key: String,
    uploader: String,
    parts: BTreeMap<u32, (Part, Bytes)>,
}

/// In-memory versioned blob store. Events are queued for the simulation to deliver (or
/// duplicate, reorder, delay, drop) as it likes.
#[derive(Clone)]
pub struct MemoryBlobs {
    state: Arc<Mutex<BlobState>>,
    next: Arc<AtomicU64>,
    hook: Arc<dyn FaultHook>,
    writes: Arc<AtomicU64>,
    /// Stamps `last_modified` (the snapshot sweep's age test); `None` stamps 0.
    clock: Option<Arc<dyn crate::ports::Clock>>,
}

impl Default for MemoryBlobs {
    fn default() -> Self {
        Self::new(Arc::new(NoFaults))
    }
}

impl MemoryBlobs {
    pub fn new(hook: Arc<dyn FaultHook>) -> Self {
        Self {
            state: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
            hook,
            writes: Arc::new(AtomicU64::new(0)),
            clock: None,
        }
    }

    /// Objects carry this clock's time as `last_modified`, as S3 stamps its own.
    pub fn with_clock(mut self, clock: Arc<dyn crate::ports::Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Takes every queued event, oldest first. The caller decides what reaches the protocol
    /// (and when, how often, in what order).
    pub fn take_events(&self) -> Vec<BlobEvent> {
        std::mem::take(&mut lock(&self.state).events)
    }

    /// How many events are queued and not yet taken.
    pub fn pending_events(&self) -> usize {
        lock(&self.state).events.len()
    }

    pub fn objects(&self) -> Vec<(ObjectMeta, Bytes)> {
        lock(&self.state).objects.values().cloned().collect()
    }

    /// The current objects' metadata, in key order (what the invariant checkers take).
    pub fn metas(&self) -> Vec<ObjectMeta> {
        lock(&self.state)
            .objects
            .values()
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// How many objects have been created or deleted so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// What a client's signed part PUT does: stores the part if its bytes match what was
    /// signed (S3 answers `400 BadDigest` otherwise). `false`: refused, or no such upload.
    pub fn client_put_part(&self, upload_id: &str, part: Part, bytes: Bytes) -> bool {
        if ContentHash::of(&bytes) != part.sha256 || bytes.len() as u64 != part.size {
            return false;
        }
        let mut s = lock(&self.state);
        let Some(u) = s.uploads.get_mut(upload_id) else {
            return false;
        };
        u.parts.insert(part.number, (part, bytes));
        true
    }

    /// How many multipart uploads are in progress.
    pub fn uploads_in_progress(&self) -> usize {
        lock(&self.state).uploads.len()
    }

    /// What a client's signed PUT does: store if absent, as `uploader`, checksum verified.
    pub fn client_put(&self, key: &str, bytes: Bytes, uploader: &str) -> PutOutcome {
        let hash = ContentHash::of(&bytes);
        self.insert(key, bytes, hash, Some(uploader.to_owned()))
    }

    fn insert(
        &self,
        key: &str,
        bytes: Bytes,
        sha256: ContentHash,
        uploader: Option<String>,
    ) -> PutOutcome {
        let mut s = lock(&self.state);
        if s.objects.contains_key(key) {
            return PutOutcome::AlreadyExists;
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let version = format!("v{n:08}");
        let meta = ObjectMeta {
            key: key.to_owned(),
            version: version.clone(),
            size: bytes.len() as u64,
            sha256: Some(sha256),
            uploader,
            last_modified: self.clock.as_ref().map_or(0, |c| c.now_ms()),
        };
        s.objects.insert(key.to_owned(), (meta, bytes));
        self.writes.fetch_add(1, Ordering::SeqCst);
        s.events.push(BlobEvent::Created {
            key: key.to_owned(),
            version: version.clone(),
            sequencer: format!("{n:016X}"),
        });
        PutOutcome::Created { version }
    }
}

impl BlobStore for MemoryBlobs {
    async fn put_if_absent(&self, req: PutRequest) -> Result<PutOutcome, StoreError> {
        let f = gate(&*self.hook, Op::BlobPut).await?;
        let bytes = match req.body {
            BlobBody::Bytes(b) => b,
            BlobBody::File(p) => Bytes::from(std::fs::read(p)?),
        };
        if ContentHash::of(&bytes) != req.sha256 || bytes.len() as u64 != req.size {
            return Err(StoreError::Corrupt {
                key: req.key,
                reason: "body does not match its checksum".into(),
            });
        }
        let out = self.insert(&req.key, bytes, req.sha256, Some(req.uploader));
        if f == Fault::LoseResponse {
            return Err(lost(Op::BlobPut));
        }
        Ok(out)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        gate(&*self.hook, Op::BlobHead).await?;
        Ok(lock(&self.state).objects.get(key).map(|(m, _)| m.clone()))
    }

    async fn delete_version(&self, key: &str, version: &str) -> Result<(), StoreError> {
        let f = gate(&*self.hook, Op::BlobDelete).await?;
        {
            let mut s = lock(&self.state);
            if s.objects
                .get(key)
                .is_some_and(|(m, _)| m.version == version)
            {
                s.objects.remove(key);
                self.writes.fetch_add(1, Ordering::SeqCst);
                let n = self.next.fetch_add(1, Ordering::SeqCst);
                s.events.push(BlobEvent::Removed {
                    key: key.to_owned(),
                    version: version.to_owned(),
                    sequencer: format!("{n:016X}"),
                });
            }
        }
        if f == Fault::LoseResponse {
            return Err(lost(Op::BlobDelete));
        }
        Ok(())
    }

    async fn read_range(
        &self,
        key: &str,
        version: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        gate(&*self.hook, Op::BlobRead).await?;
        let s = lock(&self.state);
        Ok(s.objects
            .get(key)
            .filter(|(m, _)| m.version == version)
            .and_then(|(_, b)| {
                let start = usize::try_from(offset).ok()?;
                let end = start
                    .checked_add(usize::try_from(length).ok()?)?
                    .min(b.len());
                (start <= end).then(|| b.slice(start..end))
            }))
    }

    async fn stream_sha256(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<ContentHash>, StoreError> {
        gate(&*self.hook, Op::BlobRead).await?;
        let s = lock(&self.state);
        Ok(s.objects
            .get(key)
            .filter(|(m, _)| m.version == version)
            .map(|(_, b)| ContentHash::of(b)))
    }

    async fn presign_put(&self, req: &PresignPut) -> Result<SignedRequest, StoreError> {
        Ok(SignedRequest {
            url: format!("mem://{}?uploader={}", req.key, req.uploader),
            method: "PUT".into(),
            headers: [("x-amz-checksum-sha256".to_owned(), req.sha256.to_base64())].into(),
            expires_at: req.expires_in.as_millis() as i64,
        })
    }

    async fn start_parts(&self, req: &StartParts) -> Result<String, StoreError> {
        let f = gate(&*self.hook, Op::BlobParts).await?;
        let id = format!("u{:08}", self.next.fetch_add(1, Ordering::SeqCst));
        lock(&self.state).uploads.insert(
            id.clone(),
            Upload {
                key: req.key.clone(),
                uploader: req.uploader.clone(),
                parts: BTreeMap::new(),
            },
        );
        if f == Fault::LoseResponse {
            return Err(lost(Op::BlobParts));
        }
        Ok(id)
    }

    async fn presign_part(&self, req: &PresignPart) -> Result<SignedRequest, StoreError> {
        Ok(SignedRequest {
            url: format!(
                "mem://{}?uploadId={}&partNumber={}",
                req.upload.key, req.upload.upload_id, req.part.number
            ),
            method: "PUT".into(),
            headers: [(
                "x-amz-checksum-sha256".to_owned(),
                req.part.sha256.to_base64(),
            )]
            .into(),
            expires_at: req.expires_in.as_millis() as i64,
        })
    }

    async fn list_parts(&self, upload: &MultipartRef) -> Result<Option<Vec<Part>>, StoreError> {
        gate(&*self.hook, Op::BlobParts).await?;
        let s = lock(&self.state);
        Ok(s.uploads
            .get(&upload.upload_id)
            .filter(|u| u.key == upload.key)
            .map(|u| u.parts.values().map(|(p, _)| *p).collect()))
    }

    async fn finish_parts(
        &self,
        upload: &MultipartRef,
        parts: &[Part],
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let f = gate(&*self.hook, Op::BlobParts).await?;
        let meta = {
            let mut s = lock(&self.state);
            let Some(u) = s
                .uploads
                .get(&upload.upload_id)
                .filter(|u| u.key == upload.key)
            else {
                return Ok(None);
            };
            let mut whole = Vec::new();
            for want in parts {
                match u.parts.get(&want.number) {
                    Some((have, bytes)) if have == want => whole.extend_from_slice(bytes),
                    _ => {
                        return Err(StoreError::Corrupt {
                            key: upload.key.clone(),
                            reason: format!("part {} is not as listed", want.number),
                        })
                    }
                }
            }
            let uploader = u.uploader.clone();
            s.uploads.remove(&upload.upload_id);
            // S3 reports a checksum of part checksums here, never the whole object's.
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            let meta = ObjectMeta {
                key: upload.key.clone(),
                version: format!("v{n:08}"),
                size: whole.len() as u64,
                sha256: None,
                uploader: Some(uploader),
                last_modified: self.clock.as_ref().map_or(0, |c| c.now_ms()),
            };
            s.objects
                .insert(upload.key.clone(), (meta.clone(), Bytes::from(whole)));
            self.writes.fetch_add(1, Ordering::SeqCst);
            meta
        };
        if f == Fault::LoseResponse {
            return Err(lost(Op::BlobParts));
        }
        Ok(Some(meta))
    }

    async fn abort_parts(&self, upload: &MultipartRef) -> Result<(), StoreError> {
        let f = gate(&*self.hook, Op::BlobParts).await?;
        lock(&self.state).uploads.remove(&upload.upload_id);
        if f == Fault::LoseResponse {
            return Err(lost(Op::BlobParts));
        }
        Ok(())
    }

    async fn copy_if_absent(
        &self,
        from: &ObjectMeta,
        to_key: &str,
        _ct: &'static str,
        uploader: &str,
    ) -> Result<PutOutcome, StoreError> {
        let f = gate(&*self.hook, Op::BlobPut).await?;
        let source = lock(&self.state)
            .objects
            .get(&from.key)
            .filter(|(m, _)| m.version == from.version)
            .map(|(_, b)| b.clone());
        let Some(bytes) = source else {
            return Err(StoreError::Corrupt {
                key: from.key.clone(),
                reason: "the copy source version is gone".into(),
            });
        };
        let hash = ContentHash::of(&bytes);
        let out = self.insert(to_key, bytes, hash, Some(uploader.to_owned()));
        if f == Fault::LoseResponse {
            return Err(lost(Op::BlobPut));
        }
        Ok(out)
    }

    async fn presign_get(
        &self,
        key: &str,
        version: &str,
        _ct: &'static str,
        ttl: Duration,
    ) -> Result<SignedRequest, StoreError> {
        Ok(SignedRequest {
            url: format!("mem://{key}?versionId={version}"),
            method: "GET".into(),
            headers: BTreeMap::new(),
            expires_at: ttl.as_millis() as i64,
        })
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<ObjectPage, StoreError> {
        gate(&*self.hook, Op::BlobList).await?;
        let s = lock(&self.state);
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        let objects: Vec<ObjectMeta> = s
            .objects
            .range::<str, _>((from, std::ops::Bound::Unbounded))
            .map(|(_, (m, _))| m.clone())
            .take(limit)
            .collect();
        let next = (objects.len() == limit)
            .then(|| objects.last().map(|m| m.key.clone()))
            .flatten();
        Ok(ObjectPage { objects, next })
    }
}

#[cfg(test)]
mod contract_tests {
    use super::*;
    use crate::ports::{Expect, Item, Key, TransactionalIndex, TxnError, WriteOp};

    fn check(key: &str) -> WriteOp {
        WriteOp::Check {
            key: Key::new("P", key),
            expect: Expect::Absent,
        }
    }

    #[tokio::test]
    #[should_panic(expected = "two ops on P/a")]
    async fn two_ops_on_one_key_are_refused_as_dynamodb_does() {
        let index = MemoryIndex::new(Arc::new(NoFaults));
        let _ = index
            .transact(vec![check("a"), check("b"), check("a")])
            .await;
    }

    #[tokio::test]
    #[should_panic(expected = "a transaction of 101 ops")]
    async fn oversized_transactions_are_refused() {
        let index = MemoryIndex::new(Arc::new(NoFaults));
        let ops = (0..=crate::ports::MAX_TRANSACTION_OPS)
            .map(|i| check(&i.to_string()))
            .collect();
        let _ = index.transact(ops).await;
    }

    fn put(key: &str, expect: Expect) -> WriteOp {
        WriteOp::Put {
            item: Item {
                key: Key::new("P", key),
                version: match expect {
                    Expect::Version(v) => v + 1,
                    _ => 1,
                },
                body: "{}".into(),
                work_key: None,
            },
            expect,
        }
    }

    /// With the model on, a transaction naming an item another one holds is cancelled as a
    /// conflict, writing nothing, whatever the kind of op; one on other items commits
    /// meanwhile; once the holder commits, the item is free again. Reads never conflict.
    #[tokio::test(start_paused = true)]
    async fn transactions_holding_one_item_conflict_as_on_dynamodb() {
        let index = MemoryIndex::default().with_conflicts(ConflictModel {
            hold: Duration::from_millis(10),
            hold_yields: 0,
        });
        let slow = {
            let index = index.clone();
            tokio::spawn(async move { index.transact(vec![put("a", Expect::Absent)]).await })
        };
        tokio::task::yield_now().await;
        for op in [
            put("a", Expect::Absent),
            check("a"),
            WriteOp::Bump {
                key: Key::new("P", "a"),
                deltas: vec![("n", 1)],
            },
        ] {
            let r = index.transact(vec![check("z"), op]).await;
            assert!(matches!(r, Err(TxnError::Conflict)), "{r:?}");
        }
        assert_eq!(index.modelled_conflicts(), 3);
        assert_eq!(index.get(&Key::new("P", "a")).await.unwrap(), None);
        assert!(index.transact(vec![put("b", Expect::Absent)]).await.is_ok());
        assert!(slow.await.unwrap().is_ok());
        assert_eq!(index.writes(), 2, "nothing written by the cancelled ones");
        assert!(index
            .transact(vec![put("a", Expect::Version(1))])
            .await
            .is_ok());
        assert_eq!(index.modelled_conflicts(), 3);
        // Without the model, the same interleaving commits in turn.
        let plain = MemoryIndex::default();
        assert!(plain.transact(vec![put("a", Expect::Absent)]).await.is_ok());
        assert_eq!(plain.modelled_conflicts(), 0);
    }

    /// A transaction dropped while it holds its items releases them.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_transaction_releases_its_items() {
        let index = MemoryIndex::default().with_conflicts(ConflictModel {
            hold: Duration::from_secs(60),
            hold_yields: 0,
        });
        let held = {
            let index = index.clone();
            tokio::spawn(async move { index.transact(vec![put("a", Expect::Absent)]).await })
        };
        tokio::task::yield_now().await;
        assert!(matches!(
            index.transact(vec![check("a")]).await,
            Err(TxnError::Conflict)
        ));
        held.abort();
        let _ = held.await;
        assert!(matches!(index.transact(vec![check("a")]).await, Ok(())));
    }

    #[tokio::test]
    async fn a_full_transaction_of_distinct_keys_commits() {
        let index = MemoryIndex::new(Arc::new(NoFaults));
        let ops = (0..crate::ports::MAX_TRANSACTION_OPS)
            .map(|i| check(&i.to_string()))
            .collect();
        assert!(index.transact(ops).await.is_ok());
    }
}
