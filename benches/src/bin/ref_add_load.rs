//! Reference-add load: the local server in-process on 127.0.0.1:0, one small file uploaded by
//! one user, then many keep-alive connections each sending `PUT
//! /v1/audio/{hash}/references/{ref_id}` with unique ref ids, for a bounded time and request
//! count. Runs `Synchronous::Full` (the production default) and `Synchronous::Normal`, each
//! with reference adds batched per audio (the default, `max_add_batch` 20) and unbatched
//! (`max_add_batch` 1), side by side in one process, and prints them with their ratios.
//!
//! Scenarios: `hot` (the brief: every request adds to the same audio) and `spread` (each
//! connection adds to its own audio, to show what one hot audio record costs).
//!
//! Knobs: `BENCH_SECS` (measured seconds per run, default 10), `BENCH_WARMUP_SECS` (1),
//! `BENCH_CONNS` (16), `BENCH_MAX_REQUESTS` (per run, 2,000,000), `BENCH_ROUNDS` (1),
//! `BENCH_SCENARIOS` (`hot,spread`), `BENCH_SYNCS` (`full,normal`), `BENCH_ADD_BATCH`
//! (`max_add_batch` values, `20,1`), `BENCH_SERVER_THREADS` (server runtime workers, default
//! all cores), `BENCH_CLIENT_THREADS` (load generator workers, default 1), `BENCH_TMPDIR`,
//! `BENCH_LOG` (a tracing filter, e.g. `warn`: the server's logs to stderr, to see why a
//! request failed; off by default, since logging costs CPU).
//! Targets (hot, Full, batched): >= 10,000 requests/s and p99 <= 5 ms with zero errors, on 2
//! cores shared with the load generator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};

use audio_dedup_benches::{
    call, connect, cpu_by_group, env_f64, env_u64, machine_summary, pass_fail, percentile,
    thread_cpu, threads_by_group, wait_healthy, Rng,
};
use audio_dedup_core::store::embedded::Synchronous;
use audio_dedup_core::DedupConfig;
use audio_dedup_server::in_process::{test_config, InProcess};
use audio_dedup_server::TokenTable;

const TOKEN: &str = "bench-user-a-token-0001";
const TARGET_RPS: f64 = 10_000.0;
const TARGET_P99_US: u32 = 5_000;
const BODY: &[u8] = br#"{"kind":"library"}"#;
const FILE_SIZE: usize = 4096;
/// Per-request limit; a request past it counts as a transport error.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Knobs {
    secs: f64,
    warmup_secs: f64,
    conns: usize,
    max_requests: u64,
    server_threads: usize,
    client_threads: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Scenario {
    Hot,
    Spread,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Hot => "hot",
            Scenario::Spread => "spread",
        }
    }
}

fn sync_name(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Full => "Full",
        Synchronous::Normal => "Normal",
    }
}

#[derive(Default)]
struct WorkerOut {
    ok: u64,
    errors: u64,
    transport_errors: u64,
    latencies_us: Vec<u32>,
    samples: Vec<String>,
}

struct RunResult {
    scenario: Scenario,
    sync: Synchronous,
    batch: usize,
    elapsed: Duration,
    ok: u64,
    errors: u64,
    transport_errors: u64,
    sorted_us: Vec<u32>,
    samples: Vec<String>,
    cpu: BTreeMap<String, f64>,
    threads: BTreeMap<String, usize>,
    refs_expected: u64,
    refs_counted: Option<u64>,
}

impl RunResult {
    fn requests(&self) -> u64 {
        self.ok + self.errors + self.transport_errors
    }

    fn rps(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    fn ok_rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&self, q: f64) -> u32 {
        percentile(&self.sorted_us, q)
    }

    fn server_cpu(&self) -> f64 {
        self.cpu.get("srv").copied().unwrap_or(0.0) + self.cpu.get("sqlite").copied().unwrap_or(0.0)
    }

    fn client_cpu(&self) -> f64 {
        self.cpu
            .iter()
            .filter(|(k, _)| k.as_str() != "srv" && k.as_str() != "sqlite")
            .map(|(_, v)| v)
            .sum()
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("ref_add_load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let knobs = Knobs {
        secs: env_f64("BENCH_SECS", 10.0).clamp(0.5, 300.0),
        warmup_secs: env_f64("BENCH_WARMUP_SECS", 1.0).clamp(0.0, 60.0),
        conns: env_u64("BENCH_CONNS", 16).clamp(1, 1024) as usize,
        max_requests: env_u64("BENCH_MAX_REQUESTS", 2_000_000).clamp(1, 50_000_000),
        server_threads: env_u64("BENCH_SERVER_THREADS", cores as u64).clamp(1, 64) as usize,
        client_threads: env_u64("BENCH_CLIENT_THREADS", 1).clamp(1, 64) as usize,
    };
    let rounds = env_u64("BENCH_ROUNDS", 1).clamp(1, 20);
    let scenarios: Vec<Scenario> = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "hot,spread".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "hot" => Some(Scenario::Hot),
            "spread" => Some(Scenario::Spread),
            "" => None,
            other => {
                eprintln!("warning: unknown scenario {other:?} ignored");
                None
            }
        })
        .collect();
    if scenarios.is_empty() {
        return Err("no scenario selected (BENCH_SCENARIOS=hot,spread)".into());
    }
    let syncs: Vec<Synchronous> = std::env::var("BENCH_SYNCS")
        .unwrap_or_else(|_| "full,normal".into())
        .split(',')
        .filter_map(|s| match s.trim().to_ascii_lowercase().as_str() {
            "full" => Some(Synchronous::Full),
            "normal" => Some(Synchronous::Normal),
            "" => None,
            other => {
                eprintln!("warning: unknown sync mode {other:?} ignored");
                None
            }
        })
        .collect();
    // The server's default `max_add_batch`: the configuration the target is judged on.
    let default_batch = DedupConfig::default().max_add_batch;
    let batches: Vec<usize> = std::env::var("BENCH_ADD_BATCH")
        .unwrap_or_else(|_| format!("{default_batch},1"))
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .filter(|&b| b >= 1)
        .collect();
    if syncs.is_empty() || batches.is_empty() {
        return Err("no mode selected (BENCH_SYNCS=full,normal, BENCH_ADD_BATCH=20,1)".into());
    }

    println!("== ref_add_load ==");
    println!("machine: {}", machine_summary());
    println!(
        "{} keep-alive connections (hyper 1, HTTP/1.1, loopback), {:.1} s warm-up + {:.1} s measured per run, at most {} requests per run, {rounds} round(s)",
        knobs.conns, knobs.warmup_secs, knobs.secs, knobs.max_requests
    );
    println!(
        "server: in-process audio_dedup_server::run, {} tokio worker(s); load generator: {} tokio worker(s), same process, same {cores} cores",
        knobs.server_threads, knobs.client_threads
    );
    println!();

    let mut results = Vec::new();
    let modes: Vec<(Synchronous, usize)> = syncs
        .iter()
        .flat_map(|&s| batches.iter().map(move |&b| (s, b)))
        .collect();
    for round in 0..rounds {
        for &scenario in &scenarios {
            // Alternate the order so drift on a shared machine hits every mode alike.
            let mut order = modes.clone();
            if (round + scenario as u64) % 2 == 1 {
                order.reverse();
            }
            for (sync, batch) in order {
                let r = run_one(&knobs, scenario, sync, batch, round)?;
                print_row(&r);
                results.push(r);
            }
        }
    }

    println!();
    println!("== summary (median over rounds of requests/s; worst p99) ==");
    let mut ok_all = true;
    let mut primary: Option<bool> = None;
    let median_of = |scenario: Scenario, sync: Synchronous, batch: usize| {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.scenario == scenario && r.sync == sync && r.batch == batch)
            .collect();
        let rps = audio_dedup_benches::median(&runs.iter().map(|r| r.rps()).collect::<Vec<_>>());
        let p99 = runs.iter().map(|r| r.p(99.0)).max().unwrap_or(0);
        let errors: u64 = runs.iter().map(|r| r.errors + r.transport_errors).sum();
        let consistent = runs.iter().all(|r| r.refs_counted == Some(r.refs_expected));
        (rps, p99, errors, consistent)
    };
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    for &scenario in &scenarios {
        for &(sync, batch) in &modes {
            let (rps, p99, errors, consistent) = median_of(scenario, sync, batch);
            println!(
                "{:<6} {:<6} batch {:>2}  {:>9.0} req/s  p99 {:>7.2} ms  errors {:>6}  stats consistent: {}",
                scenario.name(),
                sync_name(sync),
                batch,
                rps,
                p99 as f64 / 1000.0,
                errors,
                consistent
            );
            ok_all &= consistent;
            if scenario == Scenario::Hot && sync == Synchronous::Full && batch == default_batch {
                primary = Some(rps >= TARGET_RPS && p99 <= TARGET_P99_US && errors == 0);
            }
        }
        for &batch in &batches {
            if syncs.len() == 2 {
                println!(
                    "{:<6} batch {:>2}  Normal/Full throughput ratio: {:.2}x",
                    scenario.name(),
                    batch,
                    ratio(
                        median_of(scenario, Synchronous::Normal, batch).0,
                        median_of(scenario, Synchronous::Full, batch).0
                    )
                );
            }
        }
        for &sync in &syncs {
            for &batch in batches.iter().filter(|&&b| b != 1) {
                if batches.contains(&1) {
                    println!(
                        "{:<6} {:<6}  batch {batch} / batch 1 throughput ratio: {:.2}x",
                        scenario.name(),
                        sync_name(sync),
                        ratio(
                            median_of(scenario, sync, batch).0,
                            median_of(scenario, sync, 1).0
                        )
                    );
                }
            }
        }
    }
    if scenarios.contains(&Scenario::Hot) && scenarios.contains(&Scenario::Spread) {
        for &(sync, batch) in &modes {
            println!(
                "{:<6} batch {:>2}  spread/hot throughput ratio: {:.2}x",
                sync_name(sync),
                batch,
                ratio(
                    median_of(Scenario::Spread, sync, batch).0,
                    median_of(Scenario::Hot, sync, batch).0
                )
            );
        }
    }
    println!();
    match primary {
        Some(pass) => {
            println!(
                "target (hot, Full, batch {default_batch}): >= {TARGET_RPS:.0} req/s, p99 <= {} ms, 0 errors: {}",
                TARGET_P99_US / 1000,
                pass_fail(pass)
            );
            ok_all &= pass;
        }
        None => println!("target (hot, Full, batch {default_batch}): not measured in this run"),
    }
    println!("loadavg at end: {}", audio_dedup_benches::loadavg());
    Ok(ok_all)
}

fn print_row(r: &RunResult) {
    let cpu_total = r.server_cpu() + r.client_cpu();
    println!(
        "[{:<6} {:<6} b{:<2}] {:>8} req in {:>5.2} s = {:>8.0} req/s ({:>8.0} ok/s) | p50 {:>6.2} p95 {:>6.2} p99 {:>6.2} max {:>7.2} ms | errors {} (+{} transport)",
        r.scenario.name(),
        sync_name(r.sync),
        r.batch,
        r.requests(),
        r.elapsed.as_secs_f64(),
        r.rps(),
        r.ok_rps(),
        r.p(50.0) as f64 / 1000.0,
        r.p(95.0) as f64 / 1000.0,
        r.p(99.0) as f64 / 1000.0,
        r.p(100.0) as f64 / 1000.0,
        r.errors,
        r.transport_errors,
    );
    let secs = r.elapsed.as_secs_f64();
    println!(
        "                 CPU: server {:.2} cores (srv {:.2}, sqlite-writer {:.2}), load generator {:.2} cores, total {:.2}; server CPU per request {:.1} us => {:.0} req/s per server core",
        r.server_cpu() / secs,
        r.cpu.get("srv").copied().unwrap_or(0.0) / secs,
        r.cpu.get("sqlite").copied().unwrap_or(0.0) / secs,
        r.client_cpu() / secs,
        cpu_total / secs,
        r.server_cpu() * 1e6 / r.requests().max(1) as f64,
        r.requests() as f64 / r.server_cpu().max(1e-9),
    );
    let threads = |g: &str| r.threads.get(g).copied().unwrap_or(0);
    println!(
        "                 threads at end: server runtime (workers + blocking pool) {}, sqlite-writer {}, load generator {}; stats.total_references {} (expected {})",
        threads("srv"),
        threads("sqlite"),
        threads("loadgen"),
        r.refs_counted
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into()),
        r.refs_expected
    );
    for s in &r.samples {
        println!("                 sample error: {s}");
    }
}

fn audio_bytes(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; FILE_SIZE];
    Rng::new(seed).fill(&mut v);
    v
}

fn run_one(
    knobs: &Knobs,
    scenario: Scenario,
    sync: Synchronous,
    batch: usize,
    round: u64,
) -> Result<RunResult, String> {
    let dir = match std::env::var_os("BENCH_TMPDIR") {
        Some(d) => tempfile::Builder::new()
            .prefix("ref-add-load")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("ref-add-load").tempdir(),
    }
    .map_err(|e| format!("temp dir: {e}"))?;
    let mut tokens = TokenTable::default();
    tokens
        .insert(TOKEN, "user-a", false)
        .map_err(|e| e.to_string())?;
    let mut cfg = test_config(dir.path(), tokens);
    cfg.dedup.max_add_batch = batch;
    cfg.sync = sync;

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.server_threads)
        .thread_name("srv-rt")
        .enable_all()
        .build()
        .map_err(|e| format!("server runtime: {e}"))?;
    // Started inside the server runtime, so its tasks run on the server's workers.
    let mut server =
        server_rt.block_on(InProcess::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let addr = server.addr();

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.client_threads)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let outcome = client_rt.block_on(async {
        let limit =
            Duration::from_secs_f64(knobs.warmup_secs + knobs.secs) + Duration::from_secs(60);
        tokio::time::timeout(limit, drive(knobs, addr, scenario, round))
            .await
            .map_err(|_| format!("run exceeded {limit:?}"))?
    });
    drop(client_rt);

    let stopped = server_rt.block_on(server.stop());
    server_rt.shutdown_timeout(Duration::from_secs(5));
    let mut r = outcome?;
    stopped?;
    r.sync = sync;
    r.batch = batch;
    Ok(r)
}

async fn drive(
    knobs: &Knobs,
    addr: SocketAddr,
    scenario: Scenario,
    round: u64,
) -> Result<RunResult, String> {
    wait_healthy(addr, Duration::from_secs(5)).await?;
    let mut send = connect(addr).await?;
    let files = match scenario {
        Scenario::Hot => 1,
        Scenario::Spread => knobs.conns,
    };
    let mut hashes = Vec::with_capacity(files);
    for i in 0..files {
        let a = call(
            &mut send,
            addr,
            Method::POST,
            "/v1/audio?format=mp3",
            Some(TOKEN),
            Some("application/octet-stream"),
            Bytes::from(audio_bytes(1000 + i as u64)),
            Duration::from_secs(10),
        )
        .await?;
        if a.status != StatusCode::CREATED {
            return Err(format!("upload answered {}: {}", a.status, a.text()));
        }
        let hash = a.json()["content_hash"]
            .as_str()
            .ok_or("upload answered no content_hash")?
            .to_owned();
        hashes.push(hash);
    }
    let hashes = Arc::new(hashes);

    let warm = if knobs.warmup_secs > 0.0 {
        load(
            knobs,
            addr,
            &hashes,
            &format!("w{round}"),
            knobs.warmup_secs,
        )
        .await
    } else {
        Vec::new()
    };
    let warm_ok: u64 = warm.iter().map(|w| w.ok).sum();

    let before = thread_cpu();
    let start = Instant::now();
    let outs = load(knobs, addr, &hashes, &format!("m{round}"), knobs.secs).await;
    let elapsed = start.elapsed();
    let after = thread_cpu();

    let mut r = RunResult {
        scenario,
        sync: Synchronous::Full,
        batch: 0, // set by run_one
        elapsed,
        ok: 0,
        errors: 0,
        transport_errors: 0,
        sorted_us: Vec::new(),
        samples: Vec::new(),
        cpu: cpu_by_group(&before, &after),
        threads: threads_by_group(&after),
        refs_expected: 0,
        refs_counted: None,
    };
    for o in outs {
        r.ok += o.ok;
        r.errors += o.errors;
        r.transport_errors += o.transport_errors;
        r.sorted_us.extend(o.latencies_us);
        for s in o.samples {
            if r.samples.len() < 5 {
                r.samples.push(s);
            }
        }
    }
    r.sorted_us.sort_unstable();
    r.refs_expected = warm_ok + r.ok;

    // Every acknowledged add must be counted exactly once.
    let mut send = connect(addr).await?;
    let stats = call(
        &mut send,
        addr,
        Method::GET,
        "/v1/audio/stats",
        Some(TOKEN),
        None,
        Bytes::new(),
        Duration::from_secs(10),
    )
    .await?;
    r.refs_counted = stats.json()["total_references"].as_u64();
    Ok(r)
}

/// Runs `conns` connections for `secs` (and at most `max_requests` in all); returns each
/// connection's figures.
async fn load(
    knobs: &Knobs,
    addr: SocketAddr,
    hashes: &Arc<Vec<String>>,
    prefix: &str,
    secs: f64,
) -> Vec<WorkerOut> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let budget = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(knobs.conns);
    for idx in 0..knobs.conns {
        let hashes = hashes.clone();
        let budget = budget.clone();
        let prefix = prefix.to_owned();
        let max = knobs.max_requests;
        tasks.push(tokio::spawn(async move {
            worker(idx, addr, hashes, prefix, deadline, budget, max).await
        }));
    }
    let mut outs = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(o) => outs.push(o),
            Err(e) => outs.push(WorkerOut {
                transport_errors: 1,
                samples: vec![format!("worker task failed: {e}")],
                ..WorkerOut::default()
            }),
        }
    }
    outs
}

async fn worker(
    idx: usize,
    addr: SocketAddr,
    hashes: Arc<Vec<String>>,
    prefix: String,
    deadline: Instant,
    budget: Arc<AtomicU64>,
    max: u64,
) -> WorkerOut {
    const MAX_RECONNECTS: u32 = 5;
    let mut out = WorkerOut::default();
    let hash = &hashes[idx % hashes.len()];
    let mut reconnects = 0;
    let mut send = match connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            out.transport_errors += 1;
            out.samples.push(e);
            return out;
        }
    };
    let body = Bytes::from_static(BODY);
    let mut seq: u64 = 0;
    while Instant::now() < deadline && budget.fetch_add(1, Ordering::Relaxed) < max {
        let path = format!("/v1/audio/{hash}/references/{prefix}-{idx}-{seq}");
        seq += 1;
        let t0 = Instant::now();
        let answer = call(
            &mut send,
            addr,
            Method::PUT,
            &path,
            Some(TOKEN),
            Some("application/json"),
            body.clone(),
            REQUEST_LIMIT,
        )
        .await;
        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        match answer {
            Ok(a) if a.status == StatusCode::OK => {
                out.ok += 1;
                out.latencies_us.push(us);
            }
            Ok(a) => {
                out.errors += 1;
                out.latencies_us.push(us);
                if out.samples.len() < 2 {
                    out.samples.push(format!("{} {}", a.status, a.text()));
                }
            }
            Err(e) => {
                out.transport_errors += 1;
                if out.samples.len() < 2 {
                    out.samples.push(e);
                }
                reconnects += 1;
                if reconnects > MAX_RECONNECTS {
                    break;
                }
                match connect(addr).await {
                    Ok(s) => send = s,
                    Err(e) => {
                        out.samples.push(e);
                        break;
                    }
                }
            }
        }
    }
    out
}
