//! Peak RSS of the server process during large uploads through an upload session, and the
//! two paths side by side: one signed PUT of the whole file (the server run with parts as
//! large as S3 allows, so no session takes parts), and parts of 8 MiB (the default: signed
//! per part, four in flight as the client sends them, assembled and verified by the
//! server at completion). Each: open the session, send the bytes with exactly the signed
//! headers (plus content-length), complete; the time is from the first byte to the
//! completion's answer. The server is the real binary in a separate process (so its
//! RSS is its own), read from `/proc/<pid>/status` (`VmHWM`, the kernel's peak, plus sampled
//! `VmRSS`), with its most threads (sampled) and its CPU time (`/proc/<pid>/stat`) from the
//! session's open to the completion. The client streams deterministic pseudo-random bytes
//! and never holds the file (parts: four parts at a time, each sent as its chunks were
//! generated, with no copy the single PUT's stream does not make either).
//! `BENCH_PHASES=1` prints each round's time to the last byte and to the completion.
//!
//! Build the server first, in the same profile as this binary:
//! `cargo build --profile bench -p audio-dedup-server -p audio-dedup-benches`.
//!
//! Knobs: `BENCH_RSS_SIZES_MIB` (default `256,1024`), `BENCH_RSS_ROUNDS` (default 3), `BENCH_SERVER_BIN` (default: the
//! `audio-dedup-server` next to this binary), `BENCH_TMPDIR` (server data dirs; default the
//! system temp dir). Targets: server peak RSS < 64 MiB at every size and on both paths, flat
//! as the file grows; the parts path's throughput at least 0.9x the single PUT's.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode, Uri};

use audio_dedup_benches::{
    call, connect, machine_summary, pass_fail, proc_status_kib, require_loopback, wait_healthy,
    PseudoRandomBody, PseudoRandomSource, MIB,
};
use audio_dedup_core::StreamingHasher;

const TARGET_PEAK_KIB: u64 = 64 * 1024;
const TARGET_PARTS_RATIO: f64 = 0.9;
/// Parts sent at once, as the client does.
const PARTS_IN_FLIGHT: usize = 4;
/// The server's default part size (8 MiB).
const PART_SIZE: u64 = 8 * MIB;

/// Which way the bytes go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// One signed PUT of the whole file.
    Single,
    /// Parts of the server's default size.
    Parts,
}

impl Route {
    fn server_args(self) -> &'static [&'static str] {
        match self {
            Self::Single => &["--part-size-mib", "5120"],
            Self::Parts => &[],
        }
    }
}
const SEED: u64 = 0xA0D1_0000;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("upload_rss: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Measured {
    size: u64,
    /// The larger of the kernel's `VmHWM` and the largest sampled `VmRSS` (the kernel
    /// updates its high-water mark lazily, so a sample can exceed it).
    peak_kib: u64,
    idle_kib: u64,
    hwm_kib: u64,
    sampled_max_kib: u64,
    samples: u64,
    /// The most threads the server ran at once (sampled).
    max_threads: u64,
    /// CPU seconds (user + system) the server spent from the session's open to the
    /// completion's answer.
    server_cpu_secs: f64,
    final_kib: u64,
    hash_secs: f64,
    put_secs: f64,
    complete_state: String,
}

/// CPU seconds (user + system) a process has used so far (`/proc/<pid>/stat`, in USER_HZ
/// ticks of 1/100 s).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

fn run() -> Result<bool, String> {
    let sizes: Vec<u64> = std::env::var("BENCH_RSS_SIZES_MIB")
        .unwrap_or_else(|_| "256,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .map(|m| m.clamp(1, 5 * 1024))
        .take(8)
        .collect();
    if sizes.is_empty() {
        return Err("BENCH_RSS_SIZES_MIB selects no size".into());
    }
    let rounds: usize = std::env::var("BENCH_RSS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 9);
    let server_bin = server_binary()?;
    let modified = std::fs::metadata(&server_bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| format!("built {:.0} min ago", d.as_secs_f64() / 60.0))
        .unwrap_or_default();

    println!("== upload_rss ==");
    println!("machine: {}", machine_summary());
    println!(
        "server: {} ({modified}), separate process, --sync default (full)",
        server_bin.display()
    );
    println!(
        "sizes: {sizes:?} MiB; {rounds} rounds per size and path (median time, highest peak), \
         one fresh server process and data dir per round"
    );
    println!();

    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for &mib in &sizes {
        let mut secs = [0f64; 2];
        for (i, route) in [Route::Single, Route::Parts].into_iter().enumerate() {
            let m = measure_rounds(&server_bin, mib * MIB, route, rounds)?;
            println!(
                "[{:>5} MiB {:>6}] server peak RSS {:>6.1} MiB (VmHWM {:.1}, sampled max VmRSS {:.1} over {} samples, {} threads at most); idle {:.1}, after {:.1} MiB | client hash pass {:.0} MB/s, upload {:.0} MB/s ({:.2} s to completed, server CPU {:.2} s), state {}",
                mib,
                format!("{route:?}").to_lowercase(),
                kib_to_mib(m.peak_kib),
                kib_to_mib(m.hwm_kib),
                kib_to_mib(m.sampled_max_kib),
                m.samples,
                m.max_threads,
                kib_to_mib(m.idle_kib),
                kib_to_mib(m.final_kib),
                m.size as f64 / 1e6 / m.hash_secs,
                m.size as f64 / 1e6 / m.put_secs,
                m.put_secs,
                m.server_cpu_secs,
                m.complete_state,
            );
            secs[i] = m.put_secs;
            results.push(m);
        }
        let ratio = secs[0] / secs[1];
        println!(
            "[{mib:>5} MiB] parts / single throughput: {ratio:.2}x (target >= {TARGET_PARTS_RATIO})"
        );
        ratios.push(ratio);
    }

    let client_hwm = proc_status_kib(std::process::id(), "VmHWM").unwrap_or(0);
    println!();
    println!(
        "client (this process) peak RSS: {:.1} MiB (streams the body; never holds the file)",
        kib_to_mib(client_hwm)
    );
    let worst = results.iter().map(|m| m.peak_kib).max().unwrap_or(0);
    for route in 0..2 {
        let same: Vec<&Measured> = results.iter().skip(route).step_by(2).collect();
        if let (Some(first), Some(last)) = (same.first(), same.last()) {
            if same.len() > 1 {
                println!(
                    "growth ({}): {} MiB -> {} MiB file ({:.1}x bytes): peak {:.1} -> {:.1} MiB ({:+.1} MiB)",
                    ["single", "parts"][route],
                    first.size / MIB,
                    last.size / MIB,
                    last.size as f64 / first.size as f64,
                    kib_to_mib(first.peak_kib),
                    kib_to_mib(last.peak_kib),
                    kib_to_mib(last.peak_kib) - kib_to_mib(first.peak_kib),
                );
            }
        }
    }
    let rss_ok = worst < TARGET_PEAK_KIB && results.iter().all(|m| m.complete_state == "active");
    println!(
        "target: server peak RSS < {} MiB at every size, both paths: worst {:.1} MiB  {}",
        TARGET_PEAK_KIB / 1024,
        kib_to_mib(worst),
        pass_fail(rss_ok)
    );
    let slowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let ratio_ok = slowest >= TARGET_PARTS_RATIO;
    println!(
        "target: parts path >= {TARGET_PARTS_RATIO}x the single PUT's throughput at every size: lowest {slowest:.2}x  {}",
        pass_fail(ratio_ok)
    );
    let ok = rss_ok && ratio_ok;
    println!("loadavg at end: {}", audio_dedup_benches::loadavg());
    Ok(ok)
}

fn server_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BENCH_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let candidate = exe
        .parent()
        .map(|d| d.join("audio-dedup-server"))
        .ok_or("no parent dir of this binary")?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --profile bench -p audio-dedup-server) or set BENCH_SERVER_BIN",
            candidate.display()
        ))
    }
}

/// The server process; killed (TERM, then KILL) on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    token: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Graceful first (by pid), then forceful; bounded either way.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn spawn_server(bin: &Path, route: Route) -> Result<Server, String> {
    let mut last = String::new();
    for _ in 0..3 {
        match try_spawn(bin, route) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn try_spawn(bin: &Path, route: Route) -> Result<Server, String> {
    let dir = match std::env::var_os("BENCH_TMPDIR") {
        Some(d) => tempfile::Builder::new().prefix("upload-rss").tempdir_in(d),
        None => tempfile::Builder::new().prefix("upload-rss").tempdir(),
    }
    .map_err(|e| format!("temp dir: {e}"))?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("addr: {e}"))?;
    let data_dir = dir.path().join("data");
    let stderr = std::fs::File::create(dir.path().join("server.stderr"))
        .map_err(|e| format!("stderr file: {e}"))?;
    let mut child = Command::new(bin)
        .arg("--dev")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--log-format")
        .arg("json")
        .args(route.server_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let log_path = dir.path().join("server.stdout");
    let (tx, rx) = mpsc::channel::<String>();
    // Drains stdout (the token line, then JSON logs) to a file so the pipe never fills.
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(log_path).ok();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = line.strip_prefix("export TOKEN=") {
                let _ = tx.send(t.trim().to_owned());
            }
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let token = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(t) => t,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(dir.path().join("server.stderr")).unwrap_or_default();
            return Err(format!("server printed no token within 10 s: {err}"));
        }
    };
    Ok(Server {
        child,
        addr,
        token,
        _dir: dir,
    })
}

/// The client's hash pass over the generated stream (nothing held whole): the whole
/// file's SHA-256 and, in the same pass, each default-size part's (what a client that
/// expects parts computes while it reads the file once).
fn stream_hash(size: u64) -> (String, Vec<String>, f64) {
    let start = Instant::now();
    let mut src = PseudoRandomSource::new(SEED ^ size, size);
    let mut whole = StreamingHasher::new();
    let mut part = StreamingHasher::new();
    let mut parts = Vec::new();
    while let Some(c) = src.next_chunk() {
        whole.update(&c);
        let mut rest: &[u8] = &c;
        while !rest.is_empty() {
            let room = (PART_SIZE - part.len()) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            part.update(now);
            rest = later;
            if part.len() == PART_SIZE {
                parts.push(std::mem::take(&mut part).finish().0.to_hex());
            }
        }
    }
    if !part.is_empty() {
        parts.push(part.finish().0.to_hex());
    }
    (
        whole.finish().0.to_hex(),
        parts,
        start.elapsed().as_secs_f64(),
    )
}

/// `rounds` runs of one size and path: the median time, the highest peak.
fn measure_rounds(bin: &Path, size: u64, route: Route, rounds: usize) -> Result<Measured, String> {
    let mut runs = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        runs.push(measure(bin, size, route)?);
    }
    let peak = runs.iter().map(|m| m.peak_kib).max().unwrap_or(0);
    runs.sort_by(|a, b| a.put_secs.total_cmp(&b.put_secs));
    let mut m = runs.swap_remove(runs.len() / 2);
    m.peak_kib = peak;
    Ok(m)
}

fn measure(bin: &Path, size: u64, route: Route) -> Result<Measured, String> {
    let (sha, part_hashes, hash_secs) = stream_hash(size);
    let mut server = spawn_server(bin, route)?;
    let pid = server.pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(wait_healthy(server.addr, Duration::from_secs(10)))?;
    let idle_kib = proc_status_kib(pid, "VmRSS").ok_or("cannot read server VmRSS")?;

    // Samples VmRSS every 5 ms while the upload runs (VmHWM is the kernel's exact peak).
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(idle_kib));
    let count = Arc::new(AtomicU64::new(0));
    let threads = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_seen, count) = (stop.clone(), max_seen.clone(), count.clone());
        let threads = threads.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(3600) {
                if let Some(k) = proc_status_kib(pid, "VmRSS") {
                    max_seen.fetch_max(k, Ordering::Relaxed);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(n) = proc_status_kib(pid, "Threads") {
                    threads.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let cpu_before = process_cpu_secs(pid).unwrap_or(0.0);
    // At least 10 MB/s, plus a minute: a bound, not an expectation.
    let limit = Duration::from_secs(60 + size / 10_000_000);
    let outcome = rt.block_on(async {
        tokio::time::timeout(limit, upload(&server, &sha, &part_hashes, size, route))
            .await
            .map_err(|_| format!("upload of {size} bytes exceeded {limit:?}"))?
    });
    let server_cpu_secs = process_cpu_secs(pid).unwrap_or(0.0) - cpu_before;
    // Let deferred work (the blob event pump) settle before the last reading.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm_kib = proc_status_kib(pid, "VmHWM").ok_or("cannot read server VmHWM")?;
    let final_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    server.stop();
    let (put_secs, complete_state) = outcome?;
    let sampled_max_kib = max_seen.load(Ordering::Relaxed);
    Ok(Measured {
        size,
        peak_kib: hwm_kib.max(sampled_max_kib),
        idle_kib,
        hwm_kib,
        sampled_max_kib,
        samples: count.load(Ordering::Relaxed),
        max_threads: threads.load(Ordering::Relaxed),
        server_cpu_secs,
        final_kib,
        hash_secs,
        put_secs,
        complete_state,
    })
}

/// Where a signed URL points: its loopback address, authority and path.
fn target_of(url: &str) -> Result<(SocketAddr, String, String), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("signed url {url:?}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or("signed url has no authority")?
        .as_str()
        .to_owned();
    let target: SocketAddr = authority
        .parse()
        .map_err(|e| format!("signed url authority {authority:?}: {e}"))?;
    require_loopback(&target)?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .ok_or("signed url has no path")?;
    Ok((target, authority, path))
}

/// Session, the bytes (one PUT or parts), complete. Returns the time from the first byte
/// sent to the completion's answer, and the completed state.
async fn upload(
    server: &Server,
    sha: &str,
    part_hashes: &[String],
    size: u64,
    route: Route,
) -> Result<(f64, String), String> {
    let addr = server.addr;
    let token = server.token.as_str();
    let mut api = connect(addr).await?;
    let open = call(
        &mut api,
        addr,
        Method::POST,
        "/v1/audio/uploads",
        Some(token),
        Some("application/json"),
        Bytes::from(
            serde_json::json!({ "sha256": sha, "size": size, "format": "mp3" }).to_string(),
        ),
        Duration::from_secs(10),
    )
    .await?;
    if open.status != StatusCode::CREATED {
        return Err(format!(
            "open session answered {}: {}",
            open.status,
            open.text()
        ));
    }
    let session = open.json();
    let session_id = session["session_id"]
        .as_str()
        .ok_or("no session_id")?
        .to_owned();
    let start = Instant::now();
    let phase = std::env::var_os("BENCH_PHASES").is_some();
    match (route, session["parts"].is_object()) {
        (Route::Single, false) => put_whole(&session, size).await?,
        (Route::Parts, true) => {
            put_parts(server, sha, &session_id, &session, part_hashes, size).await?
        }
        (route, parted) => {
            return Err(format!(
                "{route:?} route, but the session {} parts",
                if parted { "takes" } else { "takes no" }
            ))
        }
    }
    let sent_at = start.elapsed().as_secs_f64();
    // A fresh connection: the first one sat idle through the upload.
    let mut api = connect(addr).await?;
    let done = call(
        &mut api,
        addr,
        Method::POST,
        &format!("/v1/audio/{sha}/complete"),
        Some(token),
        Some("application/json"),
        Bytes::from(serde_json::json!({ "session_id": session_id }).to_string()),
        Duration::from_secs(120),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    if phase {
        eprintln!(
            "  phases: bytes sent {sent_at:.2} s, complete {:.2} s",
            secs - sent_at
        );
    }
    if done.status != StatusCode::OK {
        return Err(format!(
            "complete answered {}: {}",
            done.status,
            done.text()
        ));
    }
    let state = done.json()["state"].as_str().unwrap_or("?").to_owned();
    Ok((secs, state))
}

/// The parts, `PARTS_IN_FLIGHT` in flight at any time (the next starts as one ends), each
/// on a connection of its own; URLs signed up front, 100 parts a request, from the hashes
/// of the hash pass. Part bytes are generated just before their PUT.
async fn put_parts(
    server: &Server,
    sha: &str,
    session_id: &str,
    session: &serde_json::Value,
    part_hashes: &[String],
    size: u64,
) -> Result<(), String> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let part_size = session["parts"]["part_size"]
        .as_u64()
        .ok_or("no part_size")?;
    let count = session["parts"]["part_count"]
        .as_u64()
        .ok_or("no part_count")? as usize;
    if part_size != PART_SIZE || part_hashes.len() != count {
        return Err(format!(
            "the server cuts {part_size}-byte parts; the bench hashed {PART_SIZE}"
        ));
    }
    let len_of = |n: usize| part_size.min(size - (n as u64 - 1) * part_size);
    let mut urls: Vec<serde_json::Value> = Vec::with_capacity(count);
    for first in (1..=count).step_by(100) {
        let parts: Vec<serde_json::Value> = (first..=count.min(first + 99))
            .map(|n| serde_json::json!({ "number": n, "size": len_of(n), "sha256": part_hashes[n - 1] }))
            .collect();
        let mut api = connect(server.addr).await?;
        let signed = call(
            &mut api,
            server.addr,
            Method::POST,
            &format!("/v1/audio/{sha}/parts"),
            Some(server.token.as_str()),
            Some("application/json"),
            Bytes::from(
                serde_json::json!({ "session_id": session_id, "parts": parts }).to_string(),
            ),
            Duration::from_secs(10),
        )
        .await?;
        if signed.status != StatusCode::OK {
            return Err(format!(
                "sign parts answered {}: {}",
                signed.status,
                signed.text()
            ));
        }
        urls.extend(
            signed.json()["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    if urls.len() != count {
        return Err(format!("{} of {count} parts signed", urls.len()));
    }
    let mut src = PseudoRandomSource::new(SEED ^ size, size);
    let mut pending: Option<Bytes> = None;
    // Generated lazily, in order, as each PUT is about to start: a part is held whole (as
    // a client holds it: its SHA-256 is signed before it is sent), as the chunks came, with
    // no copy the single PUT's stream does not make either.
    let mut next_body = move |len: usize| -> Result<PartBody, String> {
        let mut chunks = std::collections::VecDeque::new();
        let mut have = 0;
        while have < len {
            let mut chunk = match pending.take() {
                Some(c) => c,
                None => Bytes::from(src.next_chunk().ok_or("the source ended early")?),
            };
            if have + chunk.len() > len {
                pending = Some(chunk.split_off(len - have));
            }
            have += chunk.len();
            chunks.push_back(chunk);
        }
        Ok(PartBody {
            chunks,
            remaining: len as u64,
        })
    };
    let puts = stream::iter(urls.into_iter().enumerate().map(|(i, signed)| {
        let body = next_body(len_of(i + 1) as usize);
        async move {
            let body = body?;
            let upload = &signed["upload"];
            let url = upload["url"].as_str().ok_or("no part url")?;
            let (target, authority, path) = target_of(url)?;
            let mut req = Request::builder()
                .method(Method::PUT)
                .uri(path)
                .header("host", authority)
                .header("content-length", body.remaining.to_string());
            for (k, v) in upload["headers"].as_object().ok_or("no part headers")? {
                req = req.header(k.as_str(), v.as_str().ok_or("non-string header")?);
            }
            let req = req.body(body).map_err(|e| format!("request: {e}"))?;
            let mut blob = connect::<PartBody>(target).await?;
            blob.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let res = blob
                .send_request(req)
                .await
                .map_err(|e| format!("part PUT: {e}"))?;
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("part body: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "part {} answered {status}: {}",
                    i + 1,
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok::<(), String>(())
        }
    }));
    puts.buffer_unordered(PARTS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// One part's body: the generated chunks, sent as they are.
struct PartBody {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl hyper::body::Body for PartBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let chunk = this.chunks.pop_front();
        if let Some(c) = &chunk {
            this.remaining -= c.len() as u64;
        }
        std::task::Poll::Ready(chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// One signed PUT of the whole file, streamed.
async fn put_whole(session: &serde_json::Value, size: u64) -> Result<(), String> {
    let upload = &session["upload"];
    let url = upload["url"].as_str().ok_or("no upload.url")?;
    let method = upload["method"].as_str().unwrap_or("PUT");
    if method != "PUT" {
        return Err(format!("upload.method is {method}, expected PUT"));
    }
    let (target, authority, path) = target_of(url)?;
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(path)
        .header("host", authority);
    let mut has_length = false;
    for (k, v) in upload["headers"].as_object().ok_or("no upload.headers")? {
        let v = v.as_str().ok_or("non-string signed header")?;
        has_length |= k.eq_ignore_ascii_case("content-length");
        req = req.header(k.as_str(), v);
    }
    if !has_length {
        req = req.header("content-length", size.to_string());
    }
    let req = req
        .body(PseudoRandomBody(PseudoRandomSource::new(SEED ^ size, size)))
        .map_err(|e| format!("request: {e}"))?;
    let mut blob = connect::<PseudoRandomBody>(target).await?;
    blob.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let res = blob
        .send_request(req)
        .await
        .map_err(|e| format!("PUT: {e}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("PUT body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "PUT answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}
