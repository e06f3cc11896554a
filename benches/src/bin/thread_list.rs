//! The thread list of issue #25: from the client's cache, and caught up over the wire.
//!
//! The local server runs in-process on 127.0.0.1:0. Bob creates `BENCH_THREADS` (1,000)
//! threads with Alice and posts one message with text into each; Alice's client syncs them
//! (`sync_threads`, `sync_messages`), as an app would. Then:
//! - `thread_list(None, all)` and `thread_list(None, 50)` from the cache (each entry with its
//!   last activity, preview and unread count), p50/p95 over `BENCH_REPS` (200); target: the
//!   whole list p95 ≤ 1 ms, as `cached_threads()` is;
//! - the catch-up after Bob posts into `k` threads (`BENCH_CHANGED`, "3,30,300"): the bytes of
//!   the answers a client reads to bring its list up to date (`GET /v1/positions?changed_since=`,
//!   the feed after its cursor, the changed threads' logs after theirs); target: the bytes
//!   grow with `k`, not with the 1,000 threads (300 changed < 150x the bytes of 3).
//!
//! The server's `positions_margin` is 0 here, so `changed_since` lists exactly the threads
//! changed since (the default 5-minute margin also lists those changed in the 5 minutes
//! before, which is bounded by activity, not by the number of threads).
//!
//! Exit codes: 0 targets met, 2 a target missed, 1 error.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};

use audio_dedup_benches::{call, connect, env_u64, machine_summary, pass_fail, percentile};
use audio_dedup_client::{Client, ClientConfig};
use audio_dedup_server::in_process::TempServer;
use audio_dedup_server::TokenTable;

const ALICE: &str = "bench-list-alice-000001";
const BOB: &str = "bench-list-bob-00000002";
const LIMIT: Duration = Duration::from_secs(30);

type Conn = SendRequest<Full<Bytes>>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn send(
    c: &mut Conn,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> Result<Bytes, String> {
    let (ct, body) = match body {
        Some(b) => (Some("application/json"), Bytes::from(b)),
        None => (None, Bytes::new()),
    };
    let a = call(c, addr, method, path, Some(token), ct, body, LIMIT).await?;
    if !a.status.is_success() && a.status != StatusCode::OK {
        return Err(format!("{path}: {} {}", a.status, a.text()));
    }
    Ok(a.body)
}

/// Bob's thread `i` with Alice, and one message with text in it, over `conns` connections.
async fn fill(addr: SocketAddr, n: u64, conns: u64) -> Result<(), String> {
    let mut tasks = Vec::new();
    for k in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await?;
            let mut i = k;
            while i < n {
                let t = format!(r#"{{"id":"t{i:05}","title":"thread {i}","members":["alice"]}}"#);
                send(&mut c, addr, Method::POST, "/v1/threads", BOB, Some(t)).await?;
                post_message(&mut c, addr, i, 0).await?;
                i += conns;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    Ok(())
}

async fn post_message(c: &mut Conn, addr: SocketAddr, thread: u64, n: u64) -> Result<(), String> {
    let m = format!(
        r#"{{"id":"m{thread:05}-{n}","snapshot":{{"bpm":{}}},"text":"take {n} of thread {thread}, in D"}}"#,
        90 + thread % 60
    );
    let path = format!("/v1/threads/t{thread:05}/messages");
    send(c, addr, Method::POST, &path, BOB, Some(m))
        .await
        .map(|_| ())
}

fn stats(v: &mut [u32]) -> (f64, f64) {
    v.sort_unstable();
    (
        percentile(v, 50.0) as f64 / 1e6,
        percentile(v, 95.0) as f64 / 1e6,
    )
}

async fn run() -> Result<bool, String> {
    let n = env_u64("BENCH_THREADS", 1000).max(1);
    let reps = env_u64("BENCH_REPS", 200).max(1);
    let changed: Vec<u64> = std::env::var("BENCH_CHANGED")
        .unwrap_or_else(|_| "3,30,300".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .map(|k: u64| k.min(n))
        .collect();
    println!("thread_list: {}", machine_summary());
    let mut tokens = TokenTable::default();
    tokens.insert(ALICE, "alice", false).map_err(err)?;
    tokens.insert(BOB, "bob", false).map_err(err)?;
    let server = TempServer::start(tokens, |cfg| {
        cfg.dedup.positions_margin = Duration::ZERO;
    })
    .await?;
    let addr = server.server.addr();
    let dir = tempfile::tempdir().map_err(err)?;
    let mut cfg = ClientConfig::new(format!("http://{addr}"), ALICE, dir.path());
    cfg.background_sender = false;
    let client = Client::open(cfg).map_err(err)?;

    let t = Instant::now();
    fill(addr, n, 8).await?;
    client.sync_threads().await.map_err(err)?;
    let ids: Vec<_> = client
        .thread_list(None, n as usize)
        .map_err(err)?
        .threads
        .into_iter()
        .map(|s| s.thread.id)
        .collect();
    for id in &ids {
        client.sync_messages(id).await.map_err(err)?;
    }
    println!(
        "filled: {} threads, one message each, synced in {:.1} s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );

    // From the cache.
    let mut lines = Vec::new();
    let mut ok = true;
    for (what, limit) in [("whole list", n as usize), ("first page of 50", 50)] {
        let mut v = Vec::with_capacity(reps as usize);
        let mut unread = 0;
        for _ in 0..reps {
            let t = Instant::now();
            let page = client.thread_list(None, limit).map_err(err)?;
            v.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
            unread = page.threads.iter().map(|s| s.unread).sum::<u64>();
            std::hint::black_box(page);
        }
        let (p50, p95) = stats(&mut v);
        let target = if limit == n as usize {
            let pass = p95 <= 1.0;
            ok &= pass;
            format!("  target p95 ≤ 1 ms: {}", pass_fail(pass))
        } else {
            String::new()
        };
        lines.push(format!(
            "thread_list(), {what} ({limit} of {n}, previews + unread, {unread} unread in all): p50 {p50:.3} ms  p95 {p95:.3} ms{target}"
        ));
    }

    // The same cache's `cached_threads()` (no summary), measured in the same run: the
    // machine's load moves both alike.
    let mut v = Vec::with_capacity(reps as usize);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(client.cached_threads().map_err(err)?);
        v.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
    }
    let (p50, p95) = stats(&mut v);
    lines.push(format!(
        "cached_threads() of the same cache, for comparison: p50 {p50:.3} ms  p95 {p95:.3} ms"
    ));

    // Over the wire: what a client reads to catch its list up after k threads changed.
    let mut c = connect(addr).await?;
    let mut bytes_by_k = Vec::new();
    for (round, &k) in changed.iter().enumerate() {
        let pos = send(&mut c, addr, Method::GET, "/v1/positions", ALICE, None).await?;
        let pos: serde_json::Value = serde_json::from_slice(&pos).map_err(err)?;
        let as_of = pos["as_of"].as_str().unwrap_or("0").to_owned();
        let feed = pos["feed"].as_str().unwrap_or("0").to_owned();
        // The server's clock is in ms: step past `as_of`.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let touched: Vec<u64> = (0..k).map(|i| (i * 7 + round as u64 * 13) % n).collect();
        for &t in &touched {
            post_message(&mut c, addr, t, 1 + round as u64).await?;
        }
        let mut total = 0usize;
        let path = format!("/v1/positions?changed_since={as_of}");
        let p = send(&mut c, addr, Method::GET, &path, ALICE, None).await?;
        total += p.len();
        let listed: serde_json::Value = serde_json::from_slice(&p).map_err(err)?;
        let listed = listed["threads"].as_object().map_or(0, |m| m.len());
        let path = format!("/v1/threads?since={feed}");
        total += send(&mut c, addr, Method::GET, &path, ALICE, None)
            .await?
            .len();
        for id in listed_ids(&p) {
            let after = client
                .thread_list(None, n as usize)
                .map_err(err)?
                .threads
                .iter()
                .find(|s| s.thread.id.as_str() == id)
                .map_or(0, |s| s.last_cursor);
            let path = format!("/v1/threads/{id}/messages?after={after}");
            total += send(&mut c, addr, Method::GET, &path, ALICE, None)
                .await?
                .len();
            let tid = id.parse().map_err(err)?;
            client.sync_messages(&tid).await.map_err(err)?;
        }
        let top = client.thread_list(None, 1).map_err(err)?;
        let first = top
            .threads
            .first()
            .map(|s| (s.thread.id.to_string(), s.unread));
        lines.push(format!(
            "catch-up after {k} of {n} threads changed: {listed} threads listed, {total} bytes read (positions + feed + {listed} logs); list's first entry now {first:?}"
        ));
        bytes_by_k.push((k, total));
    }
    if let [(k1, b1), .., (k2, b2)] = bytes_by_k.as_slice() {
        let ratio = *b2 as f64 / (*b1).max(1) as f64;
        let bound = (*k2 as f64 / (*k1).max(1) as f64) * 1.5;
        let pass = ratio <= bound;
        ok &= pass;
        lines.push(format!(
            "bytes grow with the changed threads: {k2} changed read {ratio:.1}x the bytes of {k1} (≤ {bound:.0}x: O(changed), not O({n})): {}",
            pass_fail(pass)
        ));
    }
    for l in &lines {
        println!("{l}");
    }
    drop(client);
    let _ = server.stop().await;
    Ok(ok)
}

/// The thread ids of a positions answer.
fn listed_ids(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["threads"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
        })
        .unwrap_or_default()
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("thread_list", run)
}
