//! Live-update latency on loopback: the local server in-process; alice posts messages through
//! the API, one after another; devices keep the live channel (the WebSocket, `GET /v1/live`)
//! open with `Client::go_live`. Three rounds: 1 device of bob; 100 members of one thread,
//! one device each (alice's own second device among them); 50 devices of bob. For each
//! message and device: the time from alice's POST being answered to that device's cache
//! holding the message (its `MessagesSynced` update). Also the bytes of a poke and of the
//! keepalive on the wire.
//!
//! Target: p99 <= 100 ms in every round.
//!
//! Knobs: `BENCH_MESSAGES` (1000 with 1 device), `BENCH_MESSAGES_MANY` (200 in the other
//! rounds), `BENCH_GAP_MS` (pause between messages, 20).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use audio_dedup_benches::{env_u64, machine_summary, pass_fail, percentile};
use audio_dedup_client::{Client, ClientConfig, Update};
use audio_dedup_core::{MessageId, ThreadId};
use audio_dedup_server::in_process::{test_config, InProcess};

const ALICE: &str = "live-bench-alice-000001";
const BOB: &str = "live-bench-bob-00000002";
/// Members besides alice in the 100-member round.
const OTHERS: usize = 99;

fn member_token(i: usize) -> String {
    format!("live-bench-member-{i:05}")
}

fn client(url: &str, token: &str, dir: &std::path::Path) -> Result<Client, String> {
    let mut c = ClientConfig::new(url, token, dir);
    c.background_sender = false;
    Client::open(c).map_err(|e| e.to_string())
}

/// Posts `n` messages into a thread of alice and `members`; for each, the latency to every
/// device in `devices` (a token each), in microseconds.
async fn run_round(
    url: &str,
    dir: &std::path::Path,
    label: &str,
    members: &[String],
    devices: &[String],
    n: u64,
    gap: Duration,
) -> Result<Vec<u32>, String> {
    let listeners = devices.len();
    let alice = client(url, ALICE, &dir.join(format!("alice-{label}")))?;
    let thread: ThreadId = format!("live-{label}")
        .parse()
        .map_err(|e| format!("{e:?}"))?;
    alice
        .api()
        .create_thread(Some(&thread), "live", members)
        .await
        .map_err(|e| e.to_string())?;
    // When each message's POST was answered, by id.
    let answered: Arc<Mutex<HashMap<MessageId, Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    let mut handles = Vec::new();
    for (d, token) in devices.iter().enumerate() {
        let bob = client(url, token, &dir.join(format!("device-{label}-{d}")))?;
        let mut updates = bob.subscribe();
        handles.push(bob.go_live());
        let (thread, answered) = (thread.clone(), answered.clone());
        watchers.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut lat = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(600);
            while (seen.len() as u64) < n && Instant::now() < deadline {
                let Ok(Ok(u)) = tokio::time::timeout(Duration::from_secs(30), updates.recv()).await
                else {
                    break;
                };
                if !matches!(u, Update::MessagesSynced { ref thread_id, .. } if *thread_id == thread)
                {
                    continue;
                }
                let now = Instant::now();
                let msgs = bob.messages(&thread).unwrap_or_default();
                let answered = answered.lock().await;
                for m in msgs {
                    if let Some(at) = answered.get(&m.id) {
                        if seen.insert(m.id.clone()) {
                            lat.push(now.saturating_duration_since(*at).as_micros() as u32);
                        }
                    }
                }
            }
            lat
        }));
    }
    // Let every device connect and do its first sync.
    tokio::time::sleep(Duration::from_millis(500 + 20 * listeners as u64)).await;
    let snapshot = serde_json::value::RawValue::from_string(r#"{"bpm":120}"#.to_owned())
        .map_err(|e| e.to_string())?;
    for i in 0..n {
        let id: MessageId = format!("m{label}-{i}")
            .parse()
            .map_err(|e| format!("{e:?}"))?;
        // Recorded before the POST: a poke may beat the answer back.
        let sent = Instant::now();
        answered.lock().await.insert(id.clone(), sent);
        alice
            .api()
            .create_message(&thread, &id, &snapshot, None)
            .await
            .map_err(|e| e.to_string())?;
        answered.lock().await.insert(id, Instant::now());
        tokio::time::sleep(gap).await;
    }
    let mut all = Vec::new();
    for w in watchers {
        let lat = w.await.map_err(|e| e.to_string())?;
        if (lat.len() as u64) < n {
            return Err(format!("a device saw {} of {n} messages", lat.len()));
        }
        all.extend(lat);
    }
    drop(handles);
    Ok(all)
}

/// One round: who is in the thread, which devices listen (a token each), how many messages.
struct Round {
    label: &'static str,
    what: &'static str,
    members: Vec<String>,
    devices: Vec<String>,
    n: u64,
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("live_latency", run)
}

async fn run() -> Result<bool, String> {
    println!("live_latency: {}", machine_summary());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut tokens = audio_dedup_benches::alice_and_bob(ALICE, BOB)?;
    for i in 0..OTHERS {
        tokens
            .insert(&member_token(i), &format!("member{i}"), false)
            .map_err(|e| e.to_string())?;
    }
    let cfg = test_config(&dir.path().join("server"), tokens);
    let mut server = InProcess::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = server.url();
    let gap = Duration::from_millis(env_u64("BENCH_GAP_MS", 20));
    let many = env_u64("BENCH_MESSAGES_MANY", 200);
    let bob = vec!["bob".to_owned()];
    let others: Vec<String> = (0..OTHERS).map(|i| format!("member{i}")).collect();
    let mut member_devices: Vec<String> = (0..OTHERS).map(member_token).collect();
    member_devices.push(ALICE.to_owned());
    let rounds = [
        Round {
            label: "1",
            what: "1 device of bob",
            members: bob.clone(),
            devices: vec![BOB.to_owned()],
            n: env_u64("BENCH_MESSAGES", 1000),
        },
        Round {
            label: "100u",
            what: "100 members, one device each",
            members: others,
            devices: member_devices,
            n: many,
        },
        Round {
            label: "50d",
            what: "50 devices of bob",
            members: bob,
            devices: vec![BOB.to_owned(); 50],
            n: many,
        },
    ];
    let target_ms = 100u32;
    let mut ok = true;
    for Round {
        label,
        what,
        members,
        devices,
        n,
    } in rounds
    {
        let mut lat = run_round(&url, dir.path(), label, &members, &devices, n, gap).await?;
        lat.sort();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let (p50, p99, max) = (
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat[lat.len() - 1],
        );
        let pass = p99 <= target_ms * 1000;
        ok &= pass;
        println!(
            "{what}, {n} messages ({} deliveries): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= {target_ms} ms): {}",
            lat.len(),
            ms(p50),
            ms(p99),
            ms(max),
            pass_fail(pass)
        );
    }
    let poke = r#"{"kind":"thread","id":"live-1","cursor":"1000"}"#;
    println!(
        "one poke on the wire: {} bytes of text frame payload + 2 bytes of frame header; the keepalive: {{\"action\":\"ping\"}} (17 bytes + 6 of masked header) answered {{\"kind\":\"pong\"}} (15 + 2) every 5 min",
        poke.len()
    );
    server.stop().await?;
    println!("verdict: {}", pass_fail(ok));
    Ok(ok)
}
