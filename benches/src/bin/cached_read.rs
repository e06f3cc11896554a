//! The Rust side of the bindings' call overhead: a cached read of one thread's messages
//! (`Client::messages`, no request) on a client folder the Python bindings filled, timed as
//! `client/ffi/tests/python/bench_cached_read.py` times the same call through the bindings
//! (which runs this binary and prints both). Usage: `cached_read DATA_DIR THREAD_ID CALLS`.
//! Prints one line: `rust <calls> calls: median <ns> ns per call (<n> messages)`.

use std::process::ExitCode;
use std::time::Instant;

use audio_dedup_client::{Client, ClientConfig};
use audio_dedup_core::ThreadId;

/// Batches timed; the median batch's per-call time is printed.
const BATCHES: usize = 5;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cached_read: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: cached_read DATA_DIR THREAD_ID CALLS";
    let (dir, thread, calls) = (
        args.next().ok_or(usage)?,
        args.next().ok_or(usage)?,
        args.next().ok_or(usage)?,
    );
    let thread: ThreadId = thread.parse().map_err(|e| format!("thread id: {e}"))?;
    let calls: usize = calls.parse().map_err(|e| format!("calls: {e}"))?;
    let calls = calls.clamp(1, 1_000_000);
    // No server: the read never leaves the cache.
    let mut cfg = ClientConfig::new("http://127.0.0.1:9", "unused", dir);
    cfg.background_sender = false;
    let client = Client::open(cfg).map_err(|e| format!("open: {e}"))?;
    let mut per_call = Vec::with_capacity(BATCHES);
    let mut n = 0;
    for _ in 0..BATCHES {
        let start = Instant::now();
        for _ in 0..calls {
            n = client
                .messages(&thread)
                .map_err(|e| format!("messages: {e}"))?
                .len();
        }
        per_call.push(start.elapsed().as_nanos() / calls as u128);
    }
    per_call.sort_unstable();
    println!(
        "rust {calls} calls: median {} ns per call ({n} messages)",
        per_call[BATCHES / 2]
    );
    Ok(())
}
