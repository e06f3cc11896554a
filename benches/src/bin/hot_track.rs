//! Hot track on Lambda, modelled: many writers add references to one content at once, each
//! writer its own process (its own `Dedup`, `max_add_batch` 1: nothing batches across
//! requests, as on Lambda), over the memory store with DynamoDB's transaction conflicts
//! modelled (`ConflictModel`: a transaction holds its items while in flight and cancels any
//! other naming one of them) and DynamoDB-like latencies (each read `BENCH_READ_MS`, each
//! transaction holds its items `BENCH_HOLD_MS`). Time is tokio's paused clock, so the
//! figures are in model seconds: they do not depend on this machine's speed or load.
//!
//! Each writer adds references in a closed loop (the next as soon as the previous answers);
//! an add retries inside the protocol (re-read and try again, up to `max_attempts`) and
//! fails after that. Printed per run: adds/s that succeeded, retries per add (p50, p99:
//! transactions tried beyond the first), adds failed after retries, the write units per
//! second of the busiest item and of the busiest partition key (2 per item a committed
//! transaction writes or checks; DynamoDB: 1,000 per item or partition), and how many adds
//! wrote the audio record.
//!
//! Scenarios: `one` (1, 10, 100, 1,000 writers on one content) and `many` (the writers
//! spread over `BENCH_CONTENTS` contents: the system-wide figure, where the stats shards are
//! what everyone shares).
//!
//! Knobs: `BENCH_SECS` (measured model seconds, 4), `BENCH_WARMUP_SECS` (1),
//! `BENCH_WRITERS` (`1,10,100,1000`), `BENCH_READ_MS` (3), `BENCH_HOLD_MS` (10),
//! `BENCH_CONTENTS` (500), `BENCH_SCENARIOS` (`one,many`), `BENCH_STATS_SHARDS` (the
//! default config's, 64; 16 was the count before they had partitions of their own).
//! Target (one content, 1,000 writers): >= 2,000 adds/s, no item above 1,000 WU/s, <= 0.1 %
//! of adds failing after retries.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use audio_dedup_benches::{env_u64, percentile};
use audio_dedup_core::audio::DirectUpload;
use audio_dedup_core::ports::{
    BlobBody, Item, Key, ManualClock, OsEntropy, Query, TransactionalIndex, TxnError, WriteOp,
};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::store::memory::{
    ConflictModel, Fault, FaultHook, MemoryBlobs, MemoryIndex, Op,
};
use audio_dedup_core::{
    AudioFormat, ContentHash, Dedup, DedupConfig, PendingReference, ReferenceId, ReferenceKind,
    StoreError, UserId,
};

const TARGET_ADDS: f64 = 2_000.0;
const ITEM_WU_LIMIT: f64 = 1_000.0;
const TARGET_FAIL_SHARE: f64 = 0.001;

/// DynamoDB-like latency: every read takes `read`; transactions hold for the model's time.
struct Latency {
    read: Duration,
}

impl FaultHook for Latency {
    fn fault(&self, _: Op) -> Fault {
        Fault::None
    }
    fn delay(&self, op: Op) -> Duration {
        match op {
            Op::IndexGet | Op::IndexQuery => self.read,
            _ => Duration::ZERO,
        }
    }
}

/// Write units per key, counted while the window is open.
#[derive(Default)]
struct Meter {
    open: AtomicBool,
    units: Mutex<HashMap<Key, u64>>,
    record_writes: AtomicU64,
}

/// One writer's view of the shared index: counts its transactions, and every committed
/// transaction's write units per item.
#[derive(Clone)]
struct Counting {
    inner: MemoryIndex,
    meter: Arc<Meter>,
    tries: Arc<AtomicU64>,
}

impl TransactionalIndex for Counting {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.inner.get(key).await
    }

    async fn query(&self, query: &Query) -> Result<Vec<Item>, StoreError> {
        self.inner.query(query).await
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), TxnError> {
        self.tries.fetch_add(1, Ordering::Relaxed);
        let keys: Vec<Key> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { item, .. } => item.key.clone(),
                WriteOp::Check { key, .. } | WriteOp::Bump { key, .. } => key.clone(),
            })
            .collect();
        let out = self.inner.transact(ops).await;
        if out.is_ok() && self.meter.open.load(Ordering::Relaxed) {
            let mut units = self.meter.units.lock().unwrap_or_else(|p| p.into_inner());
            for k in keys {
                if k.sk == "META" && k.pk.starts_with("AUDIO#") {
                    self.meter.record_writes.fetch_add(1, Ordering::Relaxed);
                }
                // A transactional write of an item up to 1 KB: 2 write units.
                *units.entry(k).or_insert(0) += 2;
            }
        }
        out
    }

    async fn counters(
        &self,
        pk: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        self.inner.counters(pk).await
    }
}

struct Knobs {
    secs: u64,
    warmup_secs: u64,
    read_ms: u64,
    hold_ms: u64,
    stats_shards: u64,
}

struct Outcome {
    ok: u64,
    failed: u64,
    retries: Vec<u32>,
    busiest_item: (f64, String),
    busiest_pk: (f64, String),
    record_writes: u64,
    modelled_conflicts: u64,
    exact: bool,
}

fn user(i: usize) -> Result<UserId, String> {
    format!("u{i}")
        .parse()
        .map_err(|e| format!("user id: {e:?}"))
}

async fn run(k: &Knobs, writers: usize, contents: usize) -> Result<Outcome, String> {
    let hook = Arc::new(Latency {
        read: Duration::from_millis(k.read_ms),
    });
    let blobs = MemoryBlobs::new(hook.clone());
    let index = MemoryIndex::new(hook).with_conflicts(ConflictModel {
        hold: Duration::from_millis(k.hold_ms),
        hold_yields: 0,
    });
    let meter = Arc::new(Meter::default());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let process = |tries: Arc<AtomicU64>| {
        Dedup::with_env(
            blobs.clone(),
            Counting {
                inner: index.clone(),
                meter: meter.clone(),
                tries,
            },
            DedupConfig {
                max_add_batch: 1,
                stats_shards: k.stats_shards,
                ..DedupConfig::default()
            },
            clock.clone(),
            Arc::new(OsEntropy),
        )
    };
    // Setup, one at a time: each content uploaded, each writer made a holder of its content.
    let setup = process(Arc::default());
    let bodies: Vec<Bytes> = (0..contents)
        .map(|c| Bytes::from(format!("content {c:06} {}", "x".repeat(4000))))
        .collect();
    for w in 0..writers {
        let body = bodies[w % contents].clone();
        setup
            .audio()
            .upload_direct(DirectUpload {
                owner: user(w)?,
                format: AudioFormat::Mp3,
                hash: ContentHash::of(&body),
                size: body.len() as u64,
                body: BlobBody::Bytes(body),
                reference: None::<PendingReference>,
            })
            .await
            .map_err(|e| format!("setup upload: {e}"))?;
    }
    let conflicts_before = index.modelled_conflicts();
    let start = tokio::time::Instant::now();
    let window_from = start + Duration::from_secs(k.warmup_secs);
    let end = window_from + Duration::from_secs(k.secs);
    let opener = {
        let meter = meter.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(window_from).await;
            meter.open.store(true, Ordering::Relaxed);
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let tries = Arc::new(AtomicU64::new(0));
        let d = process(tries.clone());
        let owner = user(w)?;
        let hash = ContentHash::of(&bodies[w % contents]);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut retries, mut acked) = (0u64, 0u64, Vec::new(), 0u64);
            let mut n = 0u64;
            while tokio::time::Instant::now() < end && n < 1_000_000 {
                n += 1;
                let Ok(ref_id) = format!("w{w}-{n}").parse::<ReferenceId>() else {
                    break;
                };
                let before = tries.load(Ordering::Relaxed);
                let r = d
                    .audio()
                    .add_reference(&owner, &hash, &ref_id, ReferenceKind::Library)
                    .await;
                let now = tokio::time::Instant::now();
                acked += u64::from(r.is_ok());
                if now < window_from || now > end {
                    continue;
                }
                match r {
                    Ok(_) => {
                        ok += 1;
                        let tried = tries.load(Ordering::Relaxed).saturating_sub(before + 1);
                        retries.push(u32::try_from(tried).unwrap_or(u32::MAX));
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, retries, acked)
        }));
    }
    let (mut ok, mut failed, mut retries, mut acked) = (0, 0, Vec::new(), 0);
    for t in tasks {
        let (o, f, r, a) = t.await.map_err(|e| format!("writer: {e}"))?;
        ok += o;
        failed += f;
        retries.extend(r);
        acked += a;
    }
    meter.open.store(false, Ordering::Relaxed);
    opener.abort();
    let secs = k.secs as f64;
    let (busiest_item, busiest_pk) = {
        let units = meter.units.lock().unwrap_or_else(|p| p.into_inner());
        busiest(&units, secs)
    };
    // Every acknowledged add is counted, exactly.
    let stats = setup
        .audio()
        .stats()
        .await
        .map_err(|e| format!("stats: {e}"))?;
    Ok(Outcome {
        ok,
        failed,
        retries,
        busiest_item,
        busiest_pk,
        record_writes: meter.record_writes.load(Ordering::Relaxed),
        modelled_conflicts: index.modelled_conflicts() - conflicts_before,
        exact: stats.total_references == acked as i64,
    })
}

/// The busiest item and the busiest partition key, in write units per second.
fn busiest(units: &HashMap<Key, u64>, secs: f64) -> ((f64, String), (f64, String)) {
    let item = units
        .iter()
        .max_by_key(|(_, u)| **u)
        .map(|(key, u)| (*u as f64 / secs, key.to_string()))
        .unwrap_or((0.0, "-".into()));
    let mut by_pk: HashMap<&str, u64> = HashMap::new();
    for (key, u) in units {
        *by_pk.entry(key.pk.as_str()).or_insert(0) += u;
    }
    let pk = by_pk
        .iter()
        .max_by_key(|(_, u)| **u)
        .map(|(pk, u)| (*u as f64 / secs, (*pk).to_owned()))
        .unwrap_or((0.0, "-".into()));
    (item, pk)
}

fn short(key: &str) -> String {
    // `AUDIO#<64 hex>/COUNT#07` → `AUDIO#1a2b…/COUNT#07`.
    match key.split_once('#') {
        Some((kind, rest)) if rest.len() >= 64 && kind == "AUDIO" => {
            format!("AUDIO#{}…{}", &rest[..4], &rest[64..])
        }
        _ => key.to_owned(),
    }
}

fn main() -> ExitCode {
    let k = Knobs {
        secs: env_u64("BENCH_SECS", 4).max(1),
        warmup_secs: env_u64("BENCH_WARMUP_SECS", 1),
        read_ms: env_u64("BENCH_READ_MS", 3),
        hold_ms: env_u64("BENCH_HOLD_MS", 10),
        stats_shards: env_u64("BENCH_STATS_SHARDS", DedupConfig::default().stats_shards),
    };
    let writers: Vec<usize> = std::env::var("BENCH_WRITERS")
        .unwrap_or_else(|_| "1,10,100,1000".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    let contents = env_u64("BENCH_CONTENTS", 500).max(1) as usize;
    let scenarios = std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| "one,many".into());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "hot_track: model time, reads {} ms, transactions hold their items {} ms; {} s measured after {} s warm-up; stats shards {}, count shards {}",
        k.read_ms,
        k.hold_ms,
        k.secs,
        k.warmup_secs,
        k.stats_shards,
        keys::COUNT_SHARDS
    );
    println!("| scenario | writers | adds ok/s | retries p50 | retries p99 | failed after retries | busiest item WU/s | busiest partition WU/s | adds writing the audio record | conflicts/s | stats exact |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut pass = true;
    for scenario in scenarios.split(',').map(str::trim) {
        for &w in &writers {
            let n_contents = match scenario {
                "one" => 1,
                "many" => contents.min(w).max(1),
                other => {
                    eprintln!("unknown scenario {other}");
                    return ExitCode::from(1);
                }
            };
            let o = match rt.block_on(run(&k, w, n_contents)) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("{scenario} {w}: {e}");
                    return ExitCode::from(1);
                }
            };
            let mut r = o.retries.clone();
            r.sort_unstable();
            let total = o.ok + o.failed;
            let fail_share = if total > 0 {
                o.failed as f64 / total as f64
            } else {
                0.0
            };
            let adds = o.ok as f64 / k.secs as f64;
            println!(
                "| {} | {w} | {adds:.0} | {} | {} | {} ({:.3} %) | {:.0} ({}) | {:.0} ({}) | {:.1} % | {:.0} | {} |",
                if scenario == "one" { "one content".to_owned() } else { format!("{n_contents} contents") },
                percentile(&r, 50.0),
                percentile(&r, 99.0),
                o.failed,
                fail_share * 100.0,
                o.busiest_item.0,
                short(&o.busiest_item.1),
                o.busiest_pk.0,
                short(&o.busiest_pk.1),
                if o.ok > 0 { o.record_writes as f64 * 100.0 / o.ok as f64 } else { 0.0 },
                o.modelled_conflicts as f64 / (k.secs + k.warmup_secs) as f64,
                if o.exact { "yes" } else { "NO" },
            );
            pass &= o.exact && o.busiest_item.0 <= ITEM_WU_LIMIT && fail_share <= TARGET_FAIL_SHARE;
            if scenario == "one" && w >= 1000 {
                pass &= adds >= TARGET_ADDS;
            }
        }
    }
    println!(
        "target (one content, 1,000 writers: >= {TARGET_ADDS:.0} adds/s; every run: no item above {ITEM_WU_LIMIT:.0} WU/s, <= {:.1} % failed, stats exact): {}",
        TARGET_FAIL_SHARE * 100.0,
        if pass { "PASS" } else { "MISS" }
    );
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
