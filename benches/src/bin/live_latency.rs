//! Live-update latency on loopback: the local server in-process (on a runtime of its own, as
//! a separate server would be, unless `BENCH_SERVER_RT=shared`); alice posts messages through
//! the API, one after another; devices keep the live channel (the WebSocket, `GET /v1/live`)
//! open with `Client::go_live`. Rounds: `1` (1 device of bob); `100u` (100 members of one
//! thread, one device each, alice's own second device among them); `50d` (50 devices of
//! bob); `100p` (the 100 members' connections as bare WebSockets that only read pokes: the
//! hub's fan-out alone, no client sync). For each message and device: the time from alice's
//! POST being answered to that device's cache holding the message (its `MessagesSynced`
//! update, then the message looked up by id; in `100p`, the poke's arrival). Each round also
//! prints the CPU it took, split between the server's threads and the rest (clients, alice,
//! the bench).
//!
//! Target: p99 <= 100 ms in every round.
//!
//! Knobs: `BENCH_ROUNDS` (`1,100u,50d,100p`), `BENCH_MESSAGES` (1000 with 1 device),
//! `BENCH_MESSAGES_MANY` (200 in the other rounds), `BENCH_GAP_MS` (pause between messages,
//! 20), `BENCH_SERVER_RT` (`own`: the server on its own 2-thread runtime; `shared`: on the
//! clients' runtime).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use audio_dedup_benches::{
    cpu_by_group, env_u64, machine_summary, pass_fail, percentile, thread_cpu,
};
use audio_dedup_client::{Client, ClientConfig, Update};
use audio_dedup_core::{MessageId, ThreadId};
use audio_dedup_server::in_process::{test_config, InProcess};

const ALICE: &str = "live-bench-alice-000001";
const BOB: &str = "live-bench-bob-00000002";
/// Members besides alice in the 100-member rounds.
const OTHERS: usize = 99;
/// Thread names of the server's own runtime (`cpu_by_group` groups them as `srv`).
const SERVER_THREADS: &str = "srv-live";

fn member_token(i: usize) -> String {
    format!("live-bench-member-{i:05}")
}

fn client(url: &str, token: &str, dir: &std::path::Path) -> Result<Client, String> {
    let mut c = ClientConfig::new(url, token, dir);
    c.background_sender = false;
    Client::open(c).map_err(|e| e.to_string())
}

/// When each message's POST was answered (or sent, until answered), by id.
type Answered = HashMap<MessageId, Instant>;

/// What a watcher answers: latencies (µs), or for a bare WebSocket the arrival of each
/// cursor's poke.
enum Seen {
    Latencies(Vec<u32>, Box<Client>),
    Pokes(HashMap<String, Instant>),
}

/// A device: a full client with the live channel on, or a bare WebSocket reading pokes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Devices {
    Clients,
    BarePokes,
}

/// A device of the app: waits for `MessagesSynced` of `thread` and reads the newest page, as
/// a screen showing the thread would; answers a latency (µs) per message, and the client:
/// dropping it closes its database (a WAL checkpoint, milliseconds of blocking), which must
/// not happen while other devices are still being measured.
async fn watch_client(
    bob: Client,
    mut updates: tokio::sync::broadcast::Receiver<Update>,
    thread: ThreadId,
    answered: Arc<Mutex<Answered>>,
    n: u64,
) -> (Vec<u32>, Client) {
    let mut seen = HashSet::new();
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while (seen.len() as u64) < n && Instant::now() < deadline {
        let Ok(Ok(u)) = tokio::time::timeout(Duration::from_secs(30), updates.recv()).await else {
            break;
        };
        if !matches!(u, Update::MessagesSynced { ref thread_id, .. } if *thread_id == thread) {
            continue;
        }
        let now = Instant::now();
        // Looks up only the messages posted and not seen yet (usually one): constant cost,
        // where reading the thread (or its newest page) would add the bench's own reads to
        // every delivery.
        let answered = answered.lock().await;
        for (id, at) in answered.iter() {
            if seen.contains(id) {
                continue;
            }
            if let Ok(Some(_)) = bob.local_message(&thread, id) {
                seen.insert(id.clone());
                lat.push(now.saturating_duration_since(*at).as_micros() as u32);
            }
        }
    }
    (lat, bob)
}

/// A bare WebSocket on `GET /v1/live` that reads pokes of `thread` until `n` cursors came;
/// answers when each cursor's first poke arrived.
async fn watch_pokes(
    url: String,
    token: String,
    thread: ThreadId,
    n: u64,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<HashMap<String, Instant>, String> {
    let addr = url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
    let head = format!(
        "GET /v1/live HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         authorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        got.push(s.read_u8().await.map_err(|e| e.to_string())?);
    }
    if !got.starts_with(b"HTTP/1.1 101") {
        return Err(format!("upgrade: {}", String::from_utf8_lossy(&got)));
    }
    let _ = ready.send(()).await;
    let want = thread.to_string();
    let mut arrived = HashMap::new();
    while (arrived.len() as u64) < n {
        // Server frames are unmasked; pokes are short text frames.
        let read = async {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await?;
            let mut len = usize::from(h[1] & 0x7f);
            if len == 126 {
                len = usize::from(s.read_u16().await?);
            } else if len == 127 {
                len = s.read_u64().await? as usize;
            }
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((h[0] & 0x0f, payload))
        };
        let (opcode, payload) = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| "no poke for 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        if opcode != 1 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
        if v["kind"] == "thread" && v["id"] == want.as_str() {
            let cursor = v["cursor"].as_str().unwrap_or_default().to_owned();
            arrived.entry(cursor).or_insert(now);
        }
    }
    Ok(arrived)
}

/// What one round measured.
struct Measured {
    lat: Vec<u32>,
    wall: Duration,
    /// CPU seconds by thread group (`srv`: the server's runtime).
    cpu: BTreeMap<String, f64>,
}

/// Posts `n` messages into a thread of alice and `members`; for each, the latency to every
/// device in `devices` (a token each), in microseconds.
#[allow(clippy::too_many_arguments)]
async fn run_round(
    url: &str,
    dir: &std::path::Path,
    label: &str,
    members: &[String],
    devices: &[String],
    kind: Devices,
    n: u64,
    gap: Duration,
) -> Result<Measured, String> {
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
    let answered: Arc<Mutex<Answered>> = Arc::default();
    let mut watchers = Vec::new();
    let mut handles = Vec::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(listeners.max(1));
    for (d, token) in devices.iter().enumerate() {
        let thread = thread.clone();
        match kind {
            Devices::Clients => {
                let bob = client(url, token, &dir.join(format!("device-{label}-{d}")))?;
                let (answered, updates) = (answered.clone(), bob.subscribe());
                handles.push(bob.go_live());
                watchers.push(tokio::spawn(async move {
                    let (lat, bob) = watch_client(bob, updates, thread, answered, n).await;
                    Ok(Seen::Latencies(lat, Box::new(bob)))
                }));
            }
            Devices::BarePokes => {
                let (url, token, ready) = (url.to_owned(), token.clone(), ready_tx.clone());
                watchers.push(tokio::spawn(async move {
                    watch_pokes(url, token, thread, n, ready)
                        .await
                        .map(Seen::Pokes)
                }));
            }
        }
    }
    drop(ready_tx);
    if kind == Devices::BarePokes {
        for _ in 0..listeners {
            if ready.recv().await.is_none() {
                break;
            }
        }
    }
    // Let every device connect and do its first sync.
    tokio::time::sleep(Duration::from_millis(500 + 20 * listeners as u64)).await;
    let snapshot = serde_json::value::RawValue::from_string(r#"{"bpm":120}"#.to_owned())
        .map_err(|e| e.to_string())?;
    // Each message's cursor, when its POST was sent and when answered.
    let mut posts: HashMap<String, (Instant, Instant)> = HashMap::new();
    let (cpu0, t0) = (thread_cpu(), Instant::now());
    for i in 0..n {
        let id: MessageId = format!("m{label}-{i}")
            .parse()
            .map_err(|e| format!("{e:?}"))?;
        // Recorded before the POST: an update may beat the answer back.
        let sent = Instant::now();
        answered.lock().await.insert(id.clone(), sent);
        let view = alice
            .api()
            .create_message(&thread, &id, &snapshot, None)
            .await
            .map_err(|e| e.to_string())?;
        let at = Instant::now();
        answered.lock().await.insert(id, at);
        posts.insert(view.cursor, (sent, at));
        tokio::time::sleep(gap).await;
    }
    let mut all = Vec::new();
    let mut clients = Vec::new();
    for w in watchers {
        let lat = match w.await.map_err(|e| e.to_string())?? {
            Seen::Latencies(lat, c) => {
                clients.push(c);
                lat
            }
            // From the answer, or from the send for a poke that beat the answer back.
            Seen::Pokes(arrived) => arrived
                .iter()
                .filter_map(|(cursor, got)| {
                    let (sent, at) = posts.get(cursor)?;
                    let from = if got < at { sent } else { at };
                    Some(got.saturating_duration_since(*from).as_micros() as u32)
                })
                .collect(),
        };
        if (lat.len() as u64) < n {
            return Err(format!("a device saw {} of {n} messages", lat.len()));
        }
        all.extend(lat);
    }
    let (wall, cpu) = (t0.elapsed(), cpu_by_group(&cpu0, &thread_cpu()));
    drop(handles);
    // Closed off the runtime's workers: each close checkpoints its database.
    tokio::task::spawn_blocking(move || drop(clients))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Measured {
        lat: all,
        wall,
        cpu,
    })
}

/// One round: who is in the thread, which devices listen (a token each), how many messages.
struct Round {
    label: &'static str,
    what: &'static str,
    members: Vec<String>,
    devices: Vec<String>,
    kind: Devices,
    n: u64,
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("live_latency", run)
}

/// The server's own runtime (2 workers, as many as the machine's cores), so its tasks are
/// not queued behind 100 clients' on one scheduler, as they would not be in a real deployment.
fn server_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Shuts the server's runtime down without waiting (a runtime may not be dropped, waiting,
/// inside another's async context), also when a round fails.
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
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
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let own_rt = std::env::var("BENCH_SERVER_RT").map_or(true, |v| v != "shared");
    let server_rt = ServerRuntime(if own_rt {
        Some(server_runtime()?)
    } else {
        None
    });
    let mut server = match &server_rt.0 {
        Some(rt) => rt
            .spawn(InProcess::start(cfg, addr))
            .await
            .map_err(|e| e.to_string())??,
        None => InProcess::start(cfg, addr).await?,
    };
    println!(
        "server: in this process, {}",
        if own_rt {
            "on its own 2-thread runtime (threads `srv-live`)"
        } else {
            "on the clients' runtime (BENCH_SERVER_RT=shared)"
        }
    );
    let url = server.url();
    let gap = Duration::from_millis(env_u64("BENCH_GAP_MS", 20));
    let many = env_u64("BENCH_MESSAGES_MANY", 200);
    let wanted = std::env::var("BENCH_ROUNDS").unwrap_or_else(|_| "1,100u,50d,100p".into());
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
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
            kind: Devices::Clients,
            n: env_u64("BENCH_MESSAGES", 1000),
        },
        Round {
            label: "100u",
            what: "100 members, one device each",
            members: others.clone(),
            devices: member_devices.clone(),
            kind: Devices::Clients,
            n: many,
        },
        Round {
            label: "50d",
            what: "50 devices of bob",
            members: bob,
            devices: vec![BOB.to_owned(); 50],
            kind: Devices::Clients,
            n: many,
        },
        Round {
            label: "100p",
            what: "100 members, bare WebSockets (pokes only, no sync)",
            members: others,
            devices: member_devices,
            kind: Devices::BarePokes,
            n: many,
        },
    ];
    let target_ms = 100u32;
    let mut ok = true;
    println!(
        "{:<52} {:>5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6}  {:<28} verdict",
        "round",
        "msgs",
        "deliv.",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "wall s",
        "CPU s: server / rest"
    );
    for Round {
        label,
        what,
        members,
        devices,
        kind,
        n,
    } in rounds
    {
        if !wanted.contains(&label) {
            continue;
        }
        let m = run_round(&url, dir.path(), label, &members, &devices, kind, n, gap).await?;
        let mut lat = m.lat;
        lat.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let p99 = percentile(&lat, 99.0);
        let pass = p99 <= target_ms * 1000;
        ok &= pass;
        let server_cpu = m.cpu.get("srv").copied().unwrap_or(0.0);
        let rest: f64 = m.cpu.values().sum::<f64>() - server_cpu;
        let cpu = if own_rt {
            format!(
                "{server_cpu:.1} / {rest:.1} ({:.2} ms per delivery)",
                1000.0 * (server_cpu + rest) / lat.len() as f64
            )
        } else {
            format!("- / {rest:.1}")
        };
        println!(
            "{:<52} {n:>5} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6.1}  {cpu:<28} {}",
            format!("{label}: {what}"),
            lat.len(),
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 95.0)),
            ms(p99),
            ms(lat[lat.len() - 1]),
            m.wall.as_secs_f64(),
            pass_fail(pass)
        );
    }
    let poke = r#"{"kind":"thread","id":"live-1","cursor":"1000"}"#;
    println!(
        "one poke on the wire: {} bytes of text frame payload + 2 bytes of frame header; the keepalive: {{\"action\":\"ping\"}} (17 bytes + 6 of masked header) answered {{\"kind\":\"pong\"}} (15 + 2) every 5 min",
        poke.len()
    );
    server.stop().await?;
    drop(server_rt);
    println!("load after: {}", audio_dedup_benches::loadavg());
    println!("verdict: {}", pass_fail(ok));
    Ok(ok)
}
