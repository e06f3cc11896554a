//! Shared helpers for the benchmark binaries in `src/bin/`: a deterministic byte source, a
//! minimal hyper 1 client over loopback, `/proc` readers (RSS, per-thread CPU), and report
//! formatting. Benchmarks print their figures; they are not timed tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Reads a numeric knob from the environment, falling back to `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("warning: {name}={v:?} is not a number; using {default}");
                default
            }
        },
        Err(_) => default,
    }
}

pub fn env_f64(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => n,
            _ => {
                eprintln!("warning: {name}={v:?} is not a non-negative number; using {default}");
                default
            }
        },
        Err(_) => default,
    }
}

pub const MIB: u64 = 1024 * 1024;

/// `cores`, CPU model and load average, for the header of every report.
pub fn machine_summary() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model}), loadavg {}", loadavg())
}

/// The 1/5/15-minute load averages (other builds share this machine).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// splitmix64: a fast deterministic generator of incompressible-looking bytes.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf`; the stream of bytes is the same for any split into chunks whose lengths
    /// (except the last) are multiples of 8.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let last = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }
}

/// Chunk size of every generated stream (a multiple of 8, see [`Rng::fill`]).
pub const CHUNK: usize = 256 * 1024;

/// `size` deterministic pseudo-random bytes, produced chunk by chunk and never held whole.
pub struct PseudoRandomSource {
    rng: Rng,
    remaining: u64,
}

impl PseudoRandomSource {
    pub fn new(seed: u64, size: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            remaining: size,
        }
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next chunk (at most [`CHUNK`] bytes), or `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; n];
        self.rng.fill(&mut buf);
        self.remaining -= n as u64;
        Some(buf)
    }
}

/// A request body that streams a [`PseudoRandomSource`]: the client never holds the file.
pub struct PseudoRandomBody(pub PseudoRandomSource);

impl Body for PseudoRandomBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.0.next_chunk().map(|c| Ok(Frame::data(Bytes::from(c)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.remaining() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.remaining())
    }
}

/// Refuses anything but a loopback address: the benchmarks never leave the machine.
pub fn require_loopback(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!("{addr} is not a loopback address"))
    }
}

/// One keep-alive HTTP/1.1 connection; the connection task runs on the current runtime.
pub async fn connect<B>(addr: SocketAddr) -> Result<SendRequest<B>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    require_loopback(&addr)?;
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        // Ends when the SendRequest is dropped or the server closes the connection.
        let _ = conn.await;
    });
    Ok(send)
}

/// A finished response: status and whole body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        s.chars().take(300).collect()
    }
}

/// Sends one request with a small in-memory body and reads the whole answer, bounded in time.
#[allow(clippy::too_many_arguments)]
pub async fn call(
    send: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Bytes,
    limit: Duration,
) -> Result<Answer, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let fut = async {
        send.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let res = send
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{path}: no answer within {limit:?}"))?
}

/// Polls `/healthz` until it answers 200, for at most `limit`.
pub async fn wait_healthy(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match connect::<Full<Bytes>>(addr).await {
            Ok(mut send) => match call(
                &mut send,
                addr,
                Method::GET,
                "/healthz",
                None,
                None,
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await
            {
                Ok(a) if a.status == StatusCode::OK => return Ok(()),
                Ok(a) => last = format!("healthz answered {}", a.status),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("server not healthy within {limit:?}: {last}"))
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, field)
}

pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Linux reports thread CPU times in USER_HZ ticks, 100 per second on every mainstream arch.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) used so far by each live thread of this process, keyed by
/// thread id, with the thread's name.
pub fn thread_cpu() -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: field 0 is state (stat field 3); utime and stime are fields 14, 15.
        let (Some(ut), Some(st)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let ticks = ut.parse::<u64>().unwrap_or(0) + st.parse::<u64>().unwrap_or(0);
        out.insert(tid, (comm, ticks as f64 / TICKS_PER_SEC));
    }
    out
}

/// CPU seconds used between two [`thread_cpu`] snapshots, summed by thread-name group:
/// the name up to its first `-` (`srv-worker` and `srv-blocking` both count as `srv`).
pub fn cpu_by_group(
    before: &BTreeMap<u32, (String, f64)>,
    after: &BTreeMap<u32, (String, f64)>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (tid, (name, secs)) in after {
        let prev = before.get(tid).map(|(_, s)| *s).unwrap_or(0.0);
        let group = name.split('-').next().unwrap_or(name).to_owned();
        *out.entry(group).or_insert(0.0) += (secs - prev).max(0.0);
    }
    out
}

/// How many live threads each thread-name group has (see [`cpu_by_group`]).
pub fn threads_by_group(snapshot: &BTreeMap<u32, (String, f64)>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (name, _) in snapshot.values() {
        let group = name.split('-').next().unwrap_or(name).to_owned();
        *out.entry(group).or_insert(0) += 1;
    }
    out
}

/// The `p`-th percentile (0..=100) of ascending `sorted` values (nearest rank).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of a few figures (sorted copy).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// An async benchmark's `main`: runs `run` on a multi-threaded runtime. Exit 0 when every
/// target passed, 2 when one missed, 1 on an error.
pub fn main_async<F>(name: &str, run: impl FnOnce() -> F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<bool, String>>,
{
    use std::process::ExitCode;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn pass_fail(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// A token table of two users, `alice` and `bob`, with the given tokens.
pub fn alice_and_bob(alice: &str, bob: &str) -> Result<audio_dedup_server::TokenTable, String> {
    let mut tokens = audio_dedup_server::TokenTable::default();
    for (token, user) in [(alice, "alice"), (bob, "bob")] {
        tokens
            .insert(token, user, false)
            .map_err(|e| e.to_string())?;
    }
    Ok(tokens)
}

/// Grows a store by direct uploads `from..to` through the protocol: 64 distinct bytes each,
/// with a library reference (so nothing becomes due), `concurrency` at a time.
pub async fn grow_store<B, I>(
    d: &std::sync::Arc<audio_dedup_core::Dedup<B, I>>,
    from: u64,
    to: u64,
    concurrency: u64,
) -> Result<(), String>
where
    B: audio_dedup_core::ports::BlobStore,
    I: audio_dedup_core::ports::TransactionalIndex,
{
    use audio_dedup_core::audio::DirectUpload;
    use audio_dedup_core::ports::BlobBody;
    use audio_dedup_core::{AudioFormat, ContentHash, PendingReference, ReferenceKind};
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let d = d.clone();
        tasks.spawn(async move {
            let mut i = from + w;
            while i < to {
                let body = bytes::Bytes::from(format!("{i:064}"));
                let up = DirectUpload {
                    owner: "bench".parse().map_err(|e| format!("{e:?}"))?,
                    format: AudioFormat::Mp3,
                    hash: ContentHash::of(&body),
                    size: body.len() as u64,
                    body: BlobBody::Bytes(body),
                    reference: Some(PendingReference {
                        kind: ReferenceKind::Library,
                        ref_id: format!("r{i}").parse().map_err(|e| format!("{e:?}"))?,
                    }),
                };
                d.audio()
                    .upload_direct(up)
                    .await
                    .map_err(|e| format!("upload {i}: {e}"))?;
                i += concurrency;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_stream_is_independent_of_chunking() {
        let mut a = Rng::new(7);
        let mut whole = vec![0u8; 100];
        a.fill(&mut whole);
        let mut b = Rng::new(7);
        let mut parts = vec![0u8; 100];
        let (x, y) = parts.split_at_mut(64);
        b.fill(x);
        b.fill(y);
        assert_eq!(whole, parts);
    }

    #[test]
    fn source_yields_exactly_size_bytes() {
        let mut s = PseudoRandomSource::new(1, CHUNK as u64 * 2 + 5);
        let mut total = 0;
        let mut chunks = 0;
        while let Some(c) = s.next_chunk() {
            total += c.len();
            chunks += 1;
            assert!(chunks <= 3);
        }
        assert_eq!(total, CHUNK * 2 + 5);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn parses_proc_status_fields() {
        let s = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    999 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(12345));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(999));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn cpu_groups_by_name_prefix() {
        let before = BTreeMap::from([(1, ("srv-worker".to_owned(), 1.0))]);
        let after = BTreeMap::from([
            (1, ("srv-worker".to_owned(), 3.0)),
            (2, ("srv-blocking".to_owned(), 0.5)),
            (3, ("loadgen".to_owned(), 1.5)),
        ]);
        let g = cpu_by_group(&before, &after);
        assert_eq!(g["srv"], 2.5);
        assert_eq!(g["loadgen"], 1.5);
    }
}
