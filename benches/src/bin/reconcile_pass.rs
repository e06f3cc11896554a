//! One reconciler pass with nothing due, over the embedded store (SQLite + files, as the
//! local server runs it) holding 1,000, 10,000 and 100,000 stored objects, side by side; then
//! the time for one full sweep cycle over the largest store.
//!
//! The store grows in place from one size to the next: each object is a real direct upload
//! (with a reference, so nothing is due) through the protocol. Before timing, passes run until
//! the sweep has gone round once, so the figures are the steady state.
//!
//! Target (issue #12): a pass costs the same at every size, at most 1.2x from the smallest to
//! the largest, and under 100 ms.
//!
//! Knobs: `BENCH_SIZES` (comma list, default 1000,10000,100000), `BENCH_PASSES` (timed passes
//! per size, 9), `BENCH_UPLOAD_CONCURRENCY` (8).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audio_dedup_benches::{env_u64, machine_summary, pass_fail, percentile};
use audio_dedup_core::ports::{OsEntropy, SystemClock};
use audio_dedup_core::store::embedded::{FsBlobStore, SqliteIndex, Synchronous, UrlSigner};
use audio_dedup_core::{Dedup, DedupConfig, ReconcileReport};

fn sizes() -> Vec<u64> {
    std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000])
}

async fn pass(d: &Dedup<FsBlobStore, SqliteIndex>) -> Result<(Duration, ReconcileReport), String> {
    let t = Instant::now();
    let r = d.reconcile().await.map_err(|e| e.to_string())?;
    Ok((t.elapsed(), r))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("reconcile_pass", run)
}

async fn run() -> Result<bool, String> {
    println!("reconcile_pass: {}", machine_summary());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let clock = Arc::new(SystemClock);
    let blobs = FsBlobStore::open(
        &dir.path().join("blobs"),
        UrlSigner::new("http://127.0.0.1:9", [9; 32]),
        None,
        clock.clone(),
    )
    .map_err(|e| e.to_string())?;
    let index = SqliteIndex::open(&dir.path().join("index.sqlite"), Synchronous::Normal)
        .map_err(|e| e.to_string())?;
    let cfg = DedupConfig::default();
    let budget = cfg.reconcile.clone();
    let d = Arc::new(Dedup::with_env(
        blobs,
        index,
        cfg,
        clock,
        Arc::new(OsEntropy),
    ));
    let passes = env_u64("BENCH_PASSES", 9).max(1);
    let concurrency = env_u64("BENCH_UPLOAD_CONCURRENCY", 8).max(1);
    println!(
        "budget per pass: {} work items, {} pages of {} objects, {:?}",
        budget.work_items, budget.sweep_pages, budget.sweep_page_size, budget.time
    );
    println!(
        "{:>9}  {:>9}  {:>8}  {:>8}  {:>8}  {:>7}  {:>6}  {:>9}",
        "objects", "setup s", "p50 ms", "max ms", "swept", "work", "due", "cycle"
    );
    let (mut stored, mut rows) = (0u64, Vec::new());
    let mut last_cycle = None;
    for n in sizes() {
        let t = Instant::now();
        audio_dedup_benches::grow_store(&d, stored, n, concurrency).await?;
        stored = n.max(stored);
        let setup = t.elapsed();
        // Steady state: the sweep has gone round once since the store last grew.
        let mut warm = 0;
        while warm < 10_000 && !pass(&d).await?.1.sweep_cycle_completed {
            warm += 1;
        }
        let mut micros: Vec<u32> = Vec::new();
        let mut report = ReconcileReport::default();
        for _ in 0..passes {
            let (took, r) = pass(&d).await?;
            micros.push(took.as_micros().min(u32::MAX as u128) as u32);
            report = r;
        }
        micros.sort();
        let us = |v: u32| Duration::from_micros(u64::from(v));
        let (p50, max) = (us(percentile(&micros, 50.0)), us(micros[micros.len() - 1]));
        println!(
            "{:>9}  {:>9.1}  {:>8.1}  {:>8.1}  {:>8}  {:>7}  {:>6}  {:>9}",
            n,
            setup.as_secs_f64(),
            ms(p50),
            ms(max),
            report.objects_swept,
            report.work_items,
            report.due_left,
            if report.sweep_cycle_completed {
                "each pass"
            } else {
                "resumes"
            }
        );
        rows.push((n, p50));
        // One whole cycle over this size: from the end of one cycle to the end of the next.
        let mut settle = 0;
        while settle < 100_000 && !pass(&d).await?.1.sweep_cycle_completed {
            settle += 1;
        }
        let t = Instant::now();
        let mut cycle_passes = 0;
        loop {
            cycle_passes += 1;
            if pass(&d).await?.1.sweep_cycle_completed || cycle_passes > 100_000 {
                break;
            }
        }
        last_cycle = Some((n, cycle_passes, t.elapsed()));
    }
    if let Some((n, p, took)) = last_cycle {
        println!(
            "full sweep cycle over {n} objects: {p} passes, {:.1} s of pass time (one pass every 60 s locally, every 5 min on AWS)",
            took.as_secs_f64()
        );
    }
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    let ratio = ms(last.1) / ms(first.1).max(1e-9);
    println!(
        "pass p50 at {} vs {} objects: {:.2}x (target <= 1.2x), largest {:.1} ms (target < 100 ms)",
        last.0,
        first.0,
        ratio,
        ms(last.1)
    );
    let ok = ratio <= 1.2 && ms(last.1) < 100.0;
    println!("verdict: {}", pass_fail(ok));
    Ok(ok)
}
