//! What a reconnect costs: bob's client caches N threads, its live channel drops (the app
//! paused it), alice posts in 3 of them, bob's channel comes back. Counted between bob's
//! client and the server (a byte-counting TCP proxy in front of the HTTP API; the WebSocket
//! goes straight to the server): requests and bytes both ways, for the first catch-up after
//! start (no `changed_since`: every thread's position) and for the reconnect (only what
//! changed since). N = 10, 100, 1,000 by default (`BENCH_THREADS`).
//!
//! The server's `positions_margin` is 0 here: the threads were all made a moment ago, which
//! the default 5-minute margin would count as "changed lately"; in use, a thread idle for
//! more than the margin is left out of a reconnect's answer, as here.
//!
//! Target: the reconnect spends O(moved): 1 + 3 requests and under 8 KB whatever N.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use audio_dedup_benches::{alice_and_bob, machine_summary, pass_fail};
use audio_dedup_client::{Client, ClientConfig};
use audio_dedup_core::ThreadId;
use audio_dedup_server::in_process::{test_config, InProcess};

const ALICE: &str = "catch-up-bench-alice-001";
const BOB: &str = "catch-up-bench-bob-00002";
/// Bytes a reconnect may spend, whatever N.
const TARGET_BYTES: u64 = 8 * 1024;
const MOVED: usize = 3;

/// Bytes and HTTP requests through the proxy.
#[derive(Default)]
struct Counts {
    up: AtomicU64,
    down: AtomicU64,
    requests: AtomicU64,
}

impl Counts {
    fn take(&self) -> (u64, u64, u64) {
        (
            self.requests.swap(0, Ordering::SeqCst),
            self.up.swap(0, Ordering::SeqCst),
            self.down.swap(0, Ordering::SeqCst),
        )
    }
}

/// Copies `from` to `to`, counting bytes (and, upstream, request lines).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counts: Arc<Counts>,
    upstream: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk, so a request line split across two reads still counts.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if upstream {
            counts.up.fetch_add(n as u64, Ordering::SeqCst);
            let mut seen = std::mem::take(&mut tail);
            seen.extend_from_slice(&buf[..n]);
            let lines = seen.windows(11).filter(|w| w == b" HTTP/1.1\r\n").count();
            counts.requests.fetch_add(lines as u64, Ordering::SeqCst);
            tail = seen[seen.len().saturating_sub(10)..].to_vec();
        } else {
            counts.down.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

async fn proxy(listener: TcpListener, server: std::net::SocketAddr, counts: Arc<Counts>) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(upstream) = TcpStream::connect(server).await else {
            continue;
        };
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        tokio::spawn(pump(cr, uw, counts.clone(), true));
        tokio::spawn(pump(ur, cw, counts.clone(), false));
    }
}

/// Alice's HTTP/1.1 connection to the server (the benches' own hyper client).
struct Alice {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    addr: std::net::SocketAddr,
}

impl Alice {
    async fn post(&mut self, path: &str, body: serde_json::Value) -> Result<(), String> {
        let r = audio_dedup_benches::call(
            &mut self.send,
            self.addr,
            hyper::Method::POST,
            path,
            Some(ALICE),
            Some("application/json"),
            bytes::Bytes::from(body.to_string()),
            Duration::from_secs(10),
        )
        .await?;
        if !r.status.is_success() {
            return Err(format!("POST {path}: {} {}", r.status, r.text()));
        }
        Ok(())
    }
}

/// Waits until `done`, at most `limit`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until no request has gone through for a second (the syncs a catch-up started are
/// done), at most two minutes.
async fn quiet(counts: &Counts) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = u64::MAX;
    loop {
        let now = counts.requests.load(Ordering::SeqCst);
        if now == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("requests never stopped".into());
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Row {
    threads: usize,
    first: (u64, u64, u64),
    reconnect: (u64, u64, u64),
}

async fn one_size(n: usize) -> Result<Row, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cfg = test_config(&dir.path().join("server"), alice_and_bob(ALICE, BOB)?);
    cfg.dedup.positions_margin = Duration::ZERO;
    let server = InProcess::start(cfg, "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?).await?;
    let mut alice = Alice {
        send: audio_dedup_benches::connect(server.addr()).await?,
        addr: server.addr(),
    };
    let threads: Vec<String> = (0..n).map(|i| format!("t{i:05}")).collect();
    for t in &threads {
        let body = serde_json::json!({ "id": t, "title": t, "members": ["bob"] });
        alice.post("/v1/threads", body).await?;
    }

    let counts = Arc::new(Counts::default());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let paddr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(proxy(listener, server.addr(), counts.clone()));

    let mut c = ClientConfig::new(format!("http://{paddr}"), BOB, dir.path().join("bob"));
    c.background_sender = false;
    c.live_url = Some(format!("ws://{}/v1/live", server.addr()));
    let bob = Client::open(c).map_err(|e| e.to_string())?;
    let _live = bob.go_live();
    // The first catch-up: every thread's position, every thread synced once (all new).
    until(
        Duration::from_secs(120),
        "bob to cache every thread",
        || bob.cached_threads().map(|t| t.len()).unwrap_or(0) == n,
    )
    .await?;
    quiet(&counts).await?;
    let first = counts.take();

    bob.pause();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for t in threads.iter().take(MOVED) {
        let body = serde_json::json!({ "id": format!("m-{t}"), "snapshot": { "t": t } });
        alice
            .post(&format!("/v1/threads/{t}/messages"), body)
            .await?;
    }
    let _ = counts.take();
    bob.resume();
    for t in threads.iter().take(MOVED) {
        let id: ThreadId = t.parse().map_err(|e| format!("{e}"))?;
        until(Duration::from_secs(30), "the moved threads to sync", || {
            bob.messages(&id).map(|m| m.len()).unwrap_or(0) == 1
        })
        .await?;
    }
    quiet(&counts).await?;
    let reconnect = counts.take();
    Ok(Row {
        threads: n,
        first,
        reconnect,
    })
}

async fn run() -> Result<bool, String> {
    let sizes: Vec<usize> = std::env::var("BENCH_THREADS")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("reconnect_catch_up: {}", machine_summary());
    println!(
        "{:>8} | {:>14} {:>12} | {:>14} {:>10} {:>10} | target",
        "threads", "first: reqs", "bytes", "reconnect: reqs", "up B", "down B"
    );
    let mut ok = true;
    for n in sizes {
        let r = one_size(n).await?;
        let (rq, up, down) = r.reconnect;
        let pass = rq == 1 + MOVED as u64 && up + down <= TARGET_BYTES;
        ok &= pass;
        println!(
            "{:>8} | {:>14} {:>12} | {:>14} {:>10} {:>10} | {}",
            r.threads,
            r.first.0,
            r.first.1 + r.first.2,
            rq,
            up,
            down,
            pass_fail(pass)
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("reconnect_catch_up", run)
}
