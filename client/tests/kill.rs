//! Kill tests: a child process running the client is killed (SIGKILL) at random points of
//! enqueue → send → ack → dequeue, again and again; after each kill a fresh process drains
//! the queue. No operation may be lost, none applied twice.
//!
//! The child is this test binary itself, re-run with `KILL_WORKER_DIR` set so that the
//! `kill_worker_entry` test acts as the worker. `CLIENT_KILL_ROUNDS` sets the number of kills
//! (default 200).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audio_dedup_client::{Client, ClientConfig};
use serde_json::json;
use support::*;

const THREAD: &str = "kills";

/// The worker: `send` writes three messages (printing `begin` before and `ok <id>` after
/// each durable enqueue) and processes the queue; `drain` processes until nothing is left.
#[test]
fn kill_worker_entry() {
    let Ok(dir) = std::env::var("KILL_WORKER_DIR") else {
        return; // an ordinary test run: nothing to do
    };
    let url = std::env::var("KILL_WORKER_URL").unwrap_or_default();
    let mode = std::env::var("KILL_WORKER_MODE").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut cfg = ClientConfig::new(url, ALICE, dir);
        cfg.retry_base = Duration::from_millis(5);
        cfg.max_retries = 1_000;
        cfg.request_timeout = Duration::from_secs(5);
        let c = Client::open(cfg).unwrap();
        let thread = THREAD.parse().unwrap();
        if mode == "send" {
            for i in 0..3 {
                println!("@@begin");
                let m = c
                    .send_message(&thread, &json!({"i": i}), None)
                    .await
                    .unwrap();
                println!("@@ok {}", m.id);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            c.process_queue().await.unwrap();
            if c.pending_count().unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("@@pending {}", c.pending_count().unwrap());
    });
}

fn worker(mode: &str, dir: &std::path::Path, url: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "kill_worker_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("KILL_WORKER_DIR", dir)
    .env("KILL_WORKER_URL", url)
    .env("KILL_WORKER_MODE", mode)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    cmd
}

/// The worker's own lines (`@@` marks them: the test harness prints on the same lines).
fn lines(child: std::process::Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .flat_map(|l| {
            l.split("@@")
                .skip(1)
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_clients_lose_nothing_and_apply_nothing_twice() {
    let rounds: u64 = std::env::var("CLIENT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    let (st, _) = s
        .call(
            ALICE,
            reqwest::Method::POST,
            "/v1/threads",
            Some(json!({"id": THREAD, "title": "kills", "members": []})),
        )
        .await;
    assert_eq!(st, 201);
    let cdir = dir.path().join("client");
    let url = s.url();
    let mut begun = 0usize;
    let mut acked: Vec<String> = Vec::new();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let started = Instant::now();
    for _ in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_micros(rng % 40_000);
        let mut child = worker("send", &cdir, &url).spawn().unwrap();
        tokio::time::sleep(delay).await;
        let _ = child.kill(); // SIGKILL; it may have finished already
        for l in lines(child) {
            if l == "begin" {
                begun += 1;
            } else if let Some(id) = l.strip_prefix("ok ") {
                acked.push(id.to_owned());
            }
        }
        let drain = worker("drain", &cdir, &url).spawn().unwrap();
        let out = lines(drain);
        assert!(
            out.iter().any(|l| l == "pending 0"),
            "the queue drained: {out:?}"
        );
    }
    let server = s.messages(ALICE, THREAD).await;
    let ids: Vec<&str> = server.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no message applied twice");
    for a in &acked {
        assert!(
            unique.contains(a.as_str()),
            "acknowledged enqueue {a} was lost"
        );
    }
    assert!(
        ids.len() <= begun,
        "{} messages on the server, {begun} sends begun",
        ids.len()
    );
    // Every message the server has came from one begun send; each begun send whose enqueue
    // committed is there (those killed before their enqueue committed never existed).
    assert!(ids.len() >= acked.len());
    let c = Client::open(ClientConfig::new(url, ALICE, &cdir)).unwrap();
    assert_eq!(c.pending_count().unwrap() + c.failed_count().unwrap(), 0);
    let local = c.messages(&THREAD.parse().unwrap()).unwrap();
    assert_eq!(local.len(), ids.len(), "the cache and the server agree");
    eprintln!(
        "kill test: {rounds} kills, {begun} sends begun, {} acknowledged enqueues, {} on the server, {:.1} s",
        acked.len(),
        ids.len(),
        started.elapsed().as_secs_f64()
    );
}
