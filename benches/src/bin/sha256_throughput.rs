//! Streaming SHA-256 throughput: `audio_dedup_core::hash_reader` (the server's and client's
//! chunked hasher) against the system `sha256sum`, on the same file, alternating in one run.
//!
//! Knobs: `BENCH_SHA_MIB` (file size, default 256), `BENCH_SHA_ROUNDS` (default 5),
//! `BENCH_TMPDIR` (where the file goes; default the system temp dir).
//! Target: ours / sha256sum >= 0.95.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use audio_dedup_benches::{env_u64, machine_summary, median, pass_fail, PseudoRandomSource, MIB};
use audio_dedup_core::{hash_reader, ContentHash, StreamingHasher};

const TARGET_RATIO: f64 = 0.95;
/// Upper bound on one `sha256sum` run; it is killed past this.
const TOOL_LIMIT: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("sha256_throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn ours(path: &Path) -> Result<(String, u64, Duration), String> {
    let start = Instant::now();
    let file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let (hash, len) = hash_reader(file).map_err(|e| format!("hash_reader: {e}"))?;
    Ok((hash.to_hex(), len, start.elapsed()))
}

fn system(path: &Path) -> Result<(String, Duration), String> {
    let start = Instant::now();
    let mut child = Command::new("sha256sum")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn sha256sum: {e}"))?;
    // Bounded wait: poll until exit or the limit.
    loop {
        match child.try_wait().map_err(|e| format!("wait: {e}"))? {
            Some(_) => break,
            None if start.elapsed() > TOOL_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("sha256sum took longer than {TOOL_LIMIT:?}"));
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    let elapsed = start.elapsed();
    let out = child
        .wait_with_output()
        .map_err(|e| format!("sha256sum output: {e}"))?;
    if !out.status.success() {
        return Err(format!("sha256sum failed: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let digest = text
        .split_whitespace()
        .next()
        .ok_or("sha256sum printed nothing")?
        .to_owned();
    Ok((digest, elapsed))
}

/// The hashing ceiling with no I/O: `StreamingHasher` over an in-memory buffer.
fn in_memory(size: u64) -> (ContentHash, Duration) {
    let buf_len = (64 * MIB).min(size) as usize;
    let mut buf = vec![0u8; buf_len];
    audio_dedup_benches::Rng::new(99).fill(&mut buf);
    let start = Instant::now();
    let mut h = StreamingHasher::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(buf_len as u64) as usize;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    (h.finish().0, start.elapsed())
}

fn run() -> Result<bool, String> {
    let size_mib = env_u64("BENCH_SHA_MIB", 256).clamp(1, 16 * 1024);
    let rounds = env_u64("BENCH_SHA_ROUNDS", 5).clamp(1, 100);
    let size = size_mib * MIB;
    let dir = match std::env::var_os("BENCH_TMPDIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .map_err(|e| format!("temp dir: {e}"))?;
    let path = dir.path().join("sample.bin");

    println!("== sha256_throughput ==");
    println!("machine: {}", machine_summary());
    println!(
        "file: {} ({size_mib} MiB, deterministic pseudo-random), {rounds} alternating rounds, page cache warm for both",
        path.display()
    );

    // Write the file in chunks: nothing here holds it whole.
    {
        let f = File::create(&path).map_err(|e| format!("create: {e}"))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut src = PseudoRandomSource::new(0x5A17, size);
        while let Some(chunk) = src.next_chunk() {
            w.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
        }
        w.into_inner()
            .map_err(|e| format!("flush: {e}"))?
            .sync_all()
            .map_err(|e| format!("sync: {e}"))?;
    }

    // Warm-up (untimed): fills the page cache and checks the digests agree once.
    let (ours_hex, len, _) = ours(&path)?;
    let (sys_hex, _) = system(&path)?;
    if len != size {
        return Err(format!("hash_reader read {len} bytes, expected {size}"));
    }
    let digests_agree = ours_hex == sys_hex;
    println!("digest (ours):      {ours_hex}");
    println!("digest (sha256sum): {sys_hex}");
    if !digests_agree {
        return Err("digests differ".into());
    }

    let mut ours_mbs = Vec::new();
    let mut sys_mbs = Vec::new();
    let mut ratios = Vec::new();
    println!();
    println!(
        "{:>5}  {:>16}  {:>16}  {:>12}",
        "round", "ours MB/s", "sha256sum MB/s", "ours/sys"
    );
    for round in 0..rounds {
        // Alternate which goes first so drift on a shared machine hits both alike.
        let (o, s) = if round % 2 == 0 {
            let o = ours(&path)?;
            let s = system(&path)?;
            (o, s)
        } else {
            let s = system(&path)?;
            let o = ours(&path)?;
            (o, s)
        };
        if o.0 != ours_hex || s.0 != sys_hex {
            return Err(format!("round {round}: digest changed"));
        }
        let om = mb_per_s(size, o.2);
        let sm = mb_per_s(size, s.1);
        ours_mbs.push(om);
        sys_mbs.push(sm);
        ratios.push(om / sm);
        println!("{round:>5}  {om:>16.0}  {sm:>16.0}  {:>11.2}x", om / sm);
    }
    let (mem_hash, mem_elapsed) = in_memory(size);
    std::hint::black_box(mem_hash);

    let om = median(&ours_mbs);
    let sm = median(&sys_mbs);
    let ratio = median(&ratios);
    let ok = ratio >= TARGET_RATIO && digests_agree;
    println!();
    println!("median ours (hash_reader, 256 KiB reads): {om:.0} MB/s");
    println!("median sha256sum (GNU coreutils):         {sm:.0} MB/s");
    println!(
        "StreamingHasher in memory, no I/O:        {:.0} MB/s (ceiling)",
        mb_per_s(size, mem_elapsed)
    );
    println!("digests agree: {digests_agree}");
    println!(
        "ratio ours/sha256sum (median of per-round ratios): {ratio:.2}x  target >= {TARGET_RATIO:.2}x  {}",
        pass_fail(ok)
    );
    println!("loadavg at end: {}", audio_dedup_benches::loadavg());
    Ok(ok)
}
