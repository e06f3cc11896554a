//! Incremental message sync: the local server in-process on 127.0.0.1:0, two threads filled
//! through the API (one with `BENCH_MESSAGES` messages, default 10,000, one with 100), then
//! rounds of "alice posts one small message, bob syncs with his cursor" on each, side by side.
//! Prints the incremental answer's bytes and latency percentiles for both thread sizes and
//! their ratio, plus what a full re-read of the big thread costs.
//!
//! Targets: the incremental answer for one small message is under 2 KB whatever the thread's
//! size (bytes equal for both sizes), and its latency does not grow with the thread (p50
//! ratio big/small under 2).
//!
//! Knobs: `BENCH_MESSAGES` (10000), `BENCH_ROUNDS` (300), `BENCH_FILL_CONNS` (8).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};

use audio_dedup_benches::{call, connect, env_u64, machine_summary, pass_fail, percentile};
use audio_dedup_core::store::embedded::Synchronous;
use audio_dedup_server::in_process::{test_config, InProcess};

const ALICE: &str = "bench-alice-token-00001";
const BOB: &str = "bench-bob-token-0000002";
const LIMIT: Duration = Duration::from_secs(10);
const TARGET_BYTES: usize = 2048;

type Conn = SendRequest<Full<Bytes>>;

fn message(id: &str, i: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"id":"{id}","snapshot":{{"bpm":{},"key":"C minor","bars":[1,2,3,4]}}}}"#,
        90 + i % 60
    ))
}

async fn post(
    c: &mut Conn,
    addr: SocketAddr,
    thread: &str,
    id: &str,
    i: u64,
) -> Result<(), String> {
    let a = call(
        c,
        addr,
        Method::POST,
        &format!("/v1/threads/{thread}/messages"),
        Some(ALICE),
        Some("application/json"),
        message(id, i),
        LIMIT,
    )
    .await?;
    if a.status != StatusCode::CREATED {
        return Err(format!("post {id}: {} {}", a.status, a.text()));
    }
    Ok(())
}

/// Bob's sync after `cursor`: (answer bytes, latency, next cursor, items).
async fn sync(
    c: &mut Conn,
    addr: SocketAddr,
    thread: &str,
    cursor: &str,
) -> Result<(usize, Duration, String, usize), String> {
    let t = Instant::now();
    let a = call(
        c,
        addr,
        Method::GET,
        &format!("/v1/threads/{thread}/messages?after={cursor}&limit=500"),
        Some(BOB),
        None,
        Bytes::new(),
        LIMIT,
    )
    .await?;
    let took = t.elapsed();
    if a.status != StatusCode::OK {
        return Err(format!("sync: {} {}", a.status, a.text()));
    }
    let v = a.json();
    let next = v["next_cursor"].as_str().unwrap_or_default().to_owned();
    let items = v["items"].as_array().map_or(0, Vec::len);
    Ok((a.body.len(), took, next, items))
}

async fn fill(addr: SocketAddr, thread: &str, n: u64, conns: u64) -> Result<(), String> {
    let mut tasks = Vec::new();
    for k in 0..conns {
        let thread = thread.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await?;
            let mut i = k;
            while i < n {
                post(&mut c, addr, &thread, &format!("{thread}-fill-{i}"), i).await?;
                i += conns;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

struct Figures {
    bytes: Vec<usize>,
    micros: Vec<u32>,
}

async fn run() -> Result<bool, String> {
    let n = env_u64("BENCH_MESSAGES", 10_000);
    let rounds = env_u64("BENCH_ROUNDS", 300);
    let conns = env_u64("BENCH_FILL_CONNS", 8).max(1);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tokens = audio_dedup_benches::alice_and_bob(ALICE, BOB)?;
    let mut cfg = test_config(dir.path(), tokens);
    cfg.sync = Synchronous::Full;
    let mut server = InProcess::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = server.addr();
    let mut c = connect(addr).await?;
    for (thread, size) in [("big", n), ("small", 100)] {
        let body = format!(r#"{{"id":"{thread}","title":"{thread}","members":["bob"]}}"#);
        let a = call(
            &mut c,
            addr,
            Method::POST,
            "/v1/threads",
            Some(ALICE),
            Some("application/json"),
            Bytes::from(body),
            LIMIT,
        )
        .await?;
        if a.status != StatusCode::CREATED {
            return Err(format!("create thread: {} {}", a.status, a.text()));
        }
        let t = Instant::now();
        fill(addr, thread, size, conns).await?;
        println!(
            "filled thread {thread:>5} with {size:>6} messages in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

    // Bob is current on both; then, alternately on each thread, one new message and one sync.
    let mut bob = connect(addr).await?;
    let mut cursors = Vec::new();
    for thread in ["big", "small"] {
        let mut cur = "0".to_owned();
        for _ in 0..(n / 500 + 2) {
            let (_, _, next, items) = sync(&mut bob, addr, thread, &cur).await?;
            cur = next;
            if items == 0 {
                break;
            }
        }
        cursors.push(cur);
    }
    let mut figs = [
        Figures {
            bytes: vec![],
            micros: vec![],
        },
        Figures {
            bytes: vec![],
            micros: vec![],
        },
    ];
    for r in 0..rounds {
        for (k, thread) in ["big", "small"].into_iter().enumerate() {
            post(&mut c, addr, thread, &format!("{thread}-new-{r}"), r).await?;
            let (bytes, took, next, items) = sync(&mut bob, addr, thread, &cursors[k]).await?;
            if items != 1 {
                return Err(format!(
                    "{thread}: incremental sync answered {items} messages, not 1"
                ));
            }
            cursors[k] = next;
            figs[k].bytes.push(bytes);
            figs[k]
                .micros
                .push(took.as_micros().min(u32::MAX as u128) as u32);
        }
    }
    // For scale: re-reading the big thread from the start, page by page.
    let t = Instant::now();
    let (mut total, mut cur) = (0usize, "0".to_owned());
    for _ in 0..(n / 500 + 4) {
        let (bytes, _, next, items) = sync(&mut bob, addr, "big", &cur).await?;
        total += bytes;
        cur = next;
        if items == 0 {
            break;
        }
    }
    let full_ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = server.stop().await;

    println!();
    println!("{}", machine_summary());
    println!("incremental sync of 1 new message, {rounds} rounds per thread (Synchronous::Full):");
    let mut p50 = [0u32; 2];
    for (k, (name, size)) in [("big", n), ("small", 100)].into_iter().enumerate() {
        let f = &mut figs[k];
        f.micros.sort_unstable();
        let max_bytes = f.bytes.iter().copied().max().unwrap_or(0);
        p50[k] = percentile(&f.micros, 50.0);
        println!(
            "  thread of {:>6}: answer {:>4} B (max)  latency p50 {:>5} µs  p95 {:>5} µs  p99 {:>5} µs",
            size + rounds,
            max_bytes,
            p50[k],
            percentile(&f.micros, 95.0),
            percentile(&f.micros, 99.0),
        );
        let _ = name;
    }
    let bytes_big = figs[0].bytes.iter().copied().max().unwrap_or(usize::MAX);
    let bytes_small = figs[1].bytes.iter().copied().max().unwrap_or(0);
    let ratio = p50[0] as f64 / p50[1].max(1) as f64;
    println!("  latency ratio big/small (p50): {ratio:.2}");
    println!("  full re-read of the big thread: {total} B in {full_ms:.1} ms ({:.0}x the incremental answer)", total as f64 / bytes_big.max(1) as f64);
    let bytes_ok = bytes_big < TARGET_BYTES && bytes_big.abs_diff(bytes_small) <= 8;
    let latency_ok = ratio < 2.0;
    println!(
        "target: answer < {TARGET_BYTES} B and independent of thread size: {}",
        pass_fail(bytes_ok)
    );
    println!(
        "target: latency independent of thread size (p50 ratio < 2): {}",
        pass_fail(latency_ok)
    );
    Ok(bytes_ok && latency_ok)
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("sync_incremental", run)
}
