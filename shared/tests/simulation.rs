//! Deterministic fault-injection simulation of the dedup protocol.
//!
//! Each seed builds a workload (5-8 clients, 2-8 distinct contents, so references collide)
//! and runs it against the REAL protocol (`Dedup<MemoryBlobs, MemoryIndex>`) on a
//! current-thread tokio runtime with paused time. Every client is a task; the fault hook
//! interleaves them (seeded `yield_now`s before each store call), makes calls slow, and
//! injects failures before a call, lost responses after a committed write, transaction
//! conflicts and crashes (a flow dies at its next store call after a write). An event pump
//! delivers blob events late, twice, out of order or never; a reconciler task, a clock task
//! (small steps and jumps of hours) and stray objects run alongside. Safety
//! (`invariants::safety`) is checked after every client operation, every event delivery and
//! every reconciler run; liveness (`invariants::settled`) once faults stop and the clock has
//! passed every due time. Unread counts (`Unread::violations`) are checked against the shared
//! thread's log after every step that touches it and at the end.
//!
//! Everything is replayable from the seed: ids and jitter come from `SeededEntropy`, time
//! from `ManualClock` and tokio's paused clock, decisions from a seeded SplitMix64.
//!
//! - `SIM_SEEDS=n` runs seeds `SIM_START..SIM_START+n` (default 0..10000).
//! - `SIM_SEED=n` replays one seed and prints its trace; `SIM_DROP=...` replays a shrunk one.
//! - `SIM_THREADS=n` worker threads (default: available cores; each seed is independent).
//! - `SIM_SHRINK=0` turns the minimiser off; `SIM_KEEP_GOING=1` lists every failing seed.
//! - `SIM_FULL_CHECK=1` hands `safety` the whole index dump (slower, same verdicts).
//! - `SIM_CONFLICT_MODEL=all|off`: DynamoDB's transaction conflicts modelled in the memory
//!   index in every seed, or in none (default: a tenth of the seeds).
//!
//! See docs/verification.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use audio_dedup_core::audio::{
    proof_for, Adoption, CompleteRequest, DirectUpload, SessionRequest, WHOLE_FILE_PROOF_MAX,
};
use audio_dedup_core::chat::{NewMessage, NewThread, MAX_PAGE};
use audio_dedup_core::ports::{
    BlobBody, BlobEvent, Clock, Key, ManualClock, PutOutcome, SeededEntropy, TransactionalIndex,
};
use audio_dedup_core::protocol::invariants::{self, Record};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::store::memory::{
    ConflictModel, Fault, FaultHook, MemoryBlobs, MemoryIndex, Op,
};
use audio_dedup_core::*;
use bytes::Bytes;

type D = Dedup<MemoryBlobs, MemoryIndex>;

const START_MS: i64 = 1_700_000_000_000;
const DEFAULT_SEEDS: u64 = 10_000;
const SHRINK_BUDGET: usize = 300;
const SETTLE_ROUNDS: usize = 12;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ----------------------------------------------------------------------------------------
// Seeded randomness (SplitMix64: tiny, stable across crate versions).

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Self(
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
                ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ 0xD1B5_4A32_D192_ED03,
        );
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// An index drawn by weight.
    fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

// ----------------------------------------------------------------------------------------
// The workload: generated from the seed alone, before anything runs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Up to 8 contents, every kind of operation.
    Mixed,
    /// Two or three contents, reference churn, sessions with slow PUTs on live content.
    Hot,
    /// Two contents uploaded and dropped over and over, with slow store calls: the last
    /// reference goes while others re-upload the same content.
    Churn,
}

#[derive(Debug, Clone)]
struct Params {
    shape: Shape,
    /// Per store call: fail before doing anything (a crash or an unreachable store).
    fail: f64,
    /// Per write (transact, put, delete): do it, then lose the response.
    lose: f64,
    /// Per transaction: a conflict.
    conflict: f64,
    /// Per write that went through: the calling flow crashes at its next store call.
    crash_after: f64,
    max_yields: u32,
    /// Per store call: a slow call (a pause of up to `slow_ms` tokio milliseconds first).
    slow: f64,
    slow_ms: u64,
    event_drop: f64,
    event_delay: f64,
    event_dup: f64,
    event_reorder: bool,
    /// Tokio milliseconds between reconciler runs.
    reconcile_every: (u64, u64),
    /// Whether the clock task may jump hours (past leases, session expiry, the unreferenced
    /// TTL) while clients are still working.
    big_clock_jumps: bool,
    /// How often a client repeats a request that failed with 5xx before moving on.
    retry_budget: u32,
    /// Whether clients remove every reference they added at the end of their script.
    cleanup: bool,
    /// Per clock tick: an object nobody claims appears under a content's key.
    strays: f64,
    deletion_grace: Duration,
    /// In a tenth of the seeds, DynamoDB's transaction conflicts are modelled: a
    /// transaction holds its items while in flight and cancels any other naming one of them.
    conflict_model: Option<ConflictModel>,
    /// In a quarter of the seeds every add counts on a count shard (opening one on a first
    /// attempt too), so the hot-track paths run on every add.
    eager_count_shards: bool,
}

/// Drawn from a stream of its own, so the rest of a seed's workload is what it was.
/// `SIM_CONFLICT_MODEL=all` turns it on in every seed, `off` in none.
fn conflict_model(seed: u64) -> Option<ConflictModel> {
    let mut r = Rng::new(seed, 11);
    let share = match std::env::var("SIM_CONFLICT_MODEL").as_deref() {
        Ok("all") => 1.0,
        Ok("off") => 0.0,
        _ => 0.1,
    };
    r.chance(share).then(|| ConflictModel {
        hold: Duration::from_millis(r.range(0, 5)),
        hold_yields: r.range(1, 3) as u32,
    })
}

#[derive(Debug, Clone, Copy)]
struct Ref {
    n: u32,
    kind: ReferenceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionMode {
    /// PUT to the signed URL, then complete (with a proof if the PUT found an object).
    Put,
    /// Complete with a proof of possession; upload if the proof is refused.
    Proof,
    /// Open the session and never come back.
    AbandonBeforePut,
    /// PUT, then never complete.
    AbandonAfterPut,
}

#[derive(Debug, Clone)]
enum Action {
    Upload {
        content: usize,
        format: AudioFormat,
        reference: Option<Ref>,
    },
    Session {
        content: usize,
        format: AudioFormat,
        reference: Option<Ref>,
        mode: SessionMode,
        put_delay_ms: u64,
    },
    Add {
        content: usize,
        reference: Ref,
    },
    Remove {
        content: usize,
        reference: Ref,
    },
    /// A message in the shared thread carrying content's audio (its reference is added in
    /// the same write). Snapshots over 64 bytes go to the blob store.
    Post {
        content: usize,
        msg: u32,
        snapshot_len: usize,
    },
    /// A message in the shared thread forwarding another client's message's audio
    /// (`from_message`): 404 if that message is unknown or deleted (maybe meanwhile).
    Forward {
        from_client: usize,
        from_msg: u32,
        msg: u32,
        snapshot_len: usize,
    },
    /// Deletes the client's message (and so its reference).
    Unpost {
        msg: u32,
    },
    /// A hostile user opening `sessions` upload sessions on content nobody has: the quota
    /// refuses those past the limit, and the honest clients' work must still settle.
    Flood {
        sessions: u32,
    },
    /// A change of the shared thread's members, about guest `guest` (a user no client
    /// is): added by this client (any member may), removed by this client (only the
    /// creator may: the others are refused), or leaving (the guest itself).
    Member {
        guest: u32,
        op: MemberOp,
    },
    /// Marks the shared thread read: at its head as `get_thread` answers it (`back` 0), or
    /// `back` positions behind it (a position the client has seen). A retry marks the same
    /// position again.
    MarkRead {
        back: u64,
    },
    /// Posts `msgs` text-only messages in the shared thread, then deletes them all: more
    /// deletions than a thread record remembers (`RECENT_DELETIONS`), so readers behind them
    /// are over-counted (the documented limit).
    Chatter {
        msgs: u32,
    },
    /// The same request as step `of` of this client, again (possibly much later).
    Retry {
        of: usize,
        action: Box<Action>,
    },
}

#[derive(Debug, Clone, Copy)]
enum MemberOp {
    Add,
    Remove,
    Leave,
}

fn guest(n: u32) -> UserId {
    format!("guest{n}").parse().expect("valid user")
}

#[derive(Debug, Clone)]
struct Step {
    id: usize,
    pause_ms: u64,
    action: Action,
}

#[derive(Debug, Clone)]
struct Client {
    idx: usize,
    user: UserId,
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
struct Workload {
    seed: u64,
    params: Params,
    contents: Vec<Bytes>,
    hashes: Vec<ContentHash>,
    clients: Vec<Client>,
}

fn ref_id(client: usize, r: Ref) -> ReferenceId {
    format!("c{client}r{}", r.n)
        .parse()
        .expect("valid reference id")
}

/// The thread every client posts in; all users are members.
const THREAD: &str = "sim-thread";

fn message_id(client: usize, msg: u32) -> MessageId {
    format!("c{client}m{msg}")
        .parse()
        .expect("valid message id")
}

fn snapshot_of(client: usize, msg: u32, len: usize) -> Box<serde_json::value::RawValue> {
    let json = format!(
        "{{\"c\":{client},\"m\":{msg},\"pad\":\"{}\"}}",
        "x".repeat(len)
    );
    serde_json::value::RawValue::from_string(json).expect("valid JSON")
}

fn describe(client: usize, a: &Action) -> String {
    let rf = |r: &Option<Ref>| match r {
        Some(r) => format!(" ref {}/{}", ref_id(client, *r), r.kind.as_str()),
        None => String::new(),
    };
    match a {
        Action::Upload {
            content,
            format,
            reference,
        } => format!(
            "upload_direct C{content} {}{}",
            format.as_str(),
            rf(reference)
        ),
        Action::Session {
            content,
            format,
            reference,
            mode,
            put_delay_ms,
        } => format!(
            "session C{content} {}{} {mode:?} put_delay={put_delay_ms}ms",
            format.as_str(),
            rf(reference)
        ),
        Action::Flood { sessions } => format!("flood: open {sessions} sessions on absent content"),
        Action::Add { content, reference } => format!(
            "add_reference C{content} {}/{}",
            ref_id(client, *reference),
            reference.kind.as_str()
        ),
        Action::Remove { content, reference } => {
            format!("remove_reference C{content} {}", ref_id(client, *reference))
        }
        Action::Post {
            content,
            msg,
            snapshot_len,
        } => format!(
            "create_message {} C{content} snapshot~{snapshot_len}B",
            message_id(client, *msg)
        ),
        Action::Forward {
            from_client,
            from_msg,
            msg,
            snapshot_len,
        } => format!(
            "forward_message {} from {} snapshot~{snapshot_len}B",
            message_id(client, *msg),
            message_id(*from_client, *from_msg)
        ),
        Action::Unpost { msg } => format!("delete_message {}", message_id(client, *msg)),
        Action::Member { guest: g, op } => format!("member {op:?} {}", guest(*g)),
        Action::MarkRead { back } => format!("mark_read head-{back}"),
        Action::Chatter { msgs } => format!("chatter: post and delete {msgs} messages"),
        Action::Retry { of, action } => format!("RETRY of #{of}: {}", describe(client, action)),
    }
}

fn generate(seed: u64) -> Workload {
    let mut r = Rng::new(seed, 0);
    let shape = match r.weighted(&[55, 30, 15]) {
        0 => Shape::Mixed,
        1 => Shape::Hot,
        _ => Shape::Churn,
    };
    let n_contents = match shape {
        Shape::Churn => 2,
        Shape::Hot => r.range(2, 3) as usize,
        Shape::Mixed => r.pick(&[2usize, 3, 4, 4, 5, 6, 8]),
    };
    let mut contents = Vec::new();
    for i in 0..n_contents {
        // Mostly small; sometimes one just over the whole-file proof size, so proofs use
        // sampled ranges.
        let size = if i == 0 && r.chance(0.1) {
            WHOLE_FILE_PROOF_MAX as usize + r.range(1, 8192) as usize
        } else {
            r.range(1, 256) as usize
        };
        let mut b = Vec::with_capacity(size);
        while b.len() < size {
            b.extend_from_slice(&r.next().to_le_bytes());
        }
        b.truncate(size);
        b[0] = i as u8; // distinct contents, whatever their sizes
        contents.push(Bytes::from(b));
    }
    let hashes = contents.iter().map(|c| ContentHash::of(c)).collect();
    let level = if shape == Shape::Churn {
        r.pick(&[0.0, 0.01, 0.03])
    } else {
        r.pick(&[0.0, 0.01, 0.03, 0.06, 0.1])
    };
    let hot = shape != Shape::Mixed;
    let params = Params {
        shape,
        fail: level,
        lose: r.pick(&[0.0, level, 2.0 * level]),
        conflict: r.pick(&[0.0, level]),
        crash_after: if hot {
            r.pick(&[0.02, 0.05, 0.1])
        } else {
            r.pick(&[0.0, level])
        },
        max_yields: r.range(0, 3) as u32,
        slow: if hot {
            r.pick(&[0.06, 0.1, 0.15])
        } else {
            r.pick(&[0.0, 0.0, 0.02, 0.05])
        },
        slow_ms: r.pick(&[20, 60, 150, 400]),
        event_drop: r.pick(&[0.0, 0.1, 0.3]),
        event_delay: r.pick(&[0.0, 0.2, 0.5]),
        event_dup: r.pick(&[0.0, 0.1, 0.3]),
        event_reorder: r.chance(0.7),
        reconcile_every: r.pick(&[(20, 80), (80, 400), (400, 2000)]),
        big_clock_jumps: r.chance(0.5),
        retry_budget: r.range(0, 3) as u32,
        cleanup: r.chance(0.5),
        strays: r.pick(&[0.0, 0.0, 0.02, 0.05]),
        deletion_grace: if r.chance(0.15) {
            Duration::from_secs(30)
        } else {
            Duration::ZERO
        },
        conflict_model: conflict_model(seed),
        eager_count_shards: Rng::new(seed, 12).chance(0.25),
    };
    let n_clients = r.range(5, 8) as usize;
    let n_users = r.range(3, n_clients as u64) as usize;
    let mut clients: Vec<Client> = (0..n_clients)
        .map(|c| Client {
            idx: c,
            user: format!("u{}", c % n_users).parse().expect("valid user"),
            steps: client_script(seed, c, n_clients, n_contents, &params),
        })
        .collect();
    // In some seeds, a flooding user beside the honest ones.
    if r.chance(0.15) {
        clients.push(Client {
            idx: n_clients,
            user: "mallory".parse().expect("valid user"),
            steps: vec![Step {
                id: 0,
                pause_ms: r.range(0, 50),
                action: Action::Flood {
                    sessions: r.range(21, 40) as u32,
                },
            }],
        });
    }
    Workload {
        seed,
        params,
        contents,
        hashes,
        clients,
    }
}

fn client_script(
    seed: u64,
    c: usize,
    n_clients: usize,
    n_contents: usize,
    p: &Params,
) -> Vec<Step> {
    let mut r = Rng::new(seed, 1000 + c as u64);
    // Forwards draw from a stream of their own, so the rest of each script is as before.
    let mut fwd = Rng::new(seed, 9000 + c as u64);
    // So do read markers (after a step, now and then) and chatter (in a few seeds).
    let mut rd = Rng::new(seed, 8000 + c as u64);
    let n = n_contents as u64;
    let n_ops = r.range(6, 12);
    let usual_format = |content: usize| AudioFormat::ALL[content % 2];
    let mut next_ref = 0u32;
    let mut new_ref = |r: &mut Rng| {
        next_ref += 1;
        Ref {
            n: next_ref,
            kind: if r.chance(0.5) {
                ReferenceKind::Message
            } else {
                ReferenceKind::Library
            },
        }
    };
    let mut live: Vec<(usize, Ref)> = Vec::new();
    let mut posts: Vec<u32> = Vec::new();
    let mut next_msg = 0u32;
    let mut touched: Vec<usize> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for _ in 0..n_ops {
        // Skewed towards the first contents, so clients collide on them.
        let content = r.below(n).min(r.below(n)) as usize;
        let format = if r.chance(0.9) {
            usual_format(content)
        } else {
            r.pick(&AudioFormat::ALL)
        };
        // upload, session, add, remove, retry, post a message, delete one
        let weights: &[u64] = match p.shape {
            Shape::Mixed => &[22, 22, 18, 20, 18, 14, 9],
            Shape::Hot => &[15, 30, 15, 25, 15, 12, 8],
            Shape::Churn => &[50, 15, 5, 20, 10, 10, 8],
        };
        let mut kind = r.weighted(weights);
        // Churn drops each reference right after adding it, so counts keep reaching zero.
        let just_added = steps.last().is_some_and(|s: &Step| {
            matches!(
                s.action,
                Action::Upload {
                    reference: Some(_),
                    ..
                } | Action::Session {
                    reference: Some(_),
                    ..
                } | Action::Add { .. }
            )
        });
        if p.shape == Shape::Churn && just_added && r.chance(0.8) {
            kind = 3;
        }
        if kind == 3 && live.is_empty() {
            kind = 2;
        }
        if kind == 4 && steps.is_empty() {
            kind = 0;
        }
        if kind == 6 && posts.is_empty() {
            kind = 5;
        }
        let action = match kind {
            0 => {
                let reference = r.chance(0.8).then(|| new_ref(&mut r));
                if let Some(rf) = reference {
                    live.push((content, rf));
                }
                touched.push(content);
                Action::Upload {
                    content,
                    format,
                    reference,
                }
            }
            1 => {
                let reference = r.chance(0.7).then(|| new_ref(&mut r));
                let mode = [
                    SessionMode::Put,
                    SessionMode::Proof,
                    SessionMode::AbandonBeforePut,
                    SessionMode::AbandonAfterPut,
                ][r.weighted(&[45, 25, 12, 18])];
                let put_delay_ms = match r.weighted(&[35, 25, 25, 15]) {
                    0 => 0,
                    1 => r.range(1, 10),
                    2 => r.range(10, 100),
                    _ => r.range(100, 400),
                };
                if let Some(rf) = reference {
                    live.push((content, rf));
                }
                touched.push(content);
                Action::Session {
                    content,
                    format,
                    reference,
                    mode,
                    put_delay_ms,
                }
            }
            2 => {
                let content = if !touched.is_empty() && r.chance(0.85) {
                    r.pick(&touched)
                } else {
                    content
                };
                let reference = new_ref(&mut r);
                live.push((content, reference));
                Action::Add { content, reference }
            }
            3 => {
                // Churn drops what it just added; the others anything they hold.
                let at = if p.shape == Shape::Churn {
                    live.len() - 1
                } else {
                    r.below(live.len() as u64) as usize
                };
                let (content, reference) = live.swap_remove(at);
                Action::Remove { content, reference }
            }
            5 => {
                let content = if !touched.is_empty() && r.chance(0.85) {
                    r.pick(&touched)
                } else {
                    content
                };
                next_msg += 1;
                posts.push(next_msg);
                let snapshot_len = r.pick(&[1, 10, 30, 80, 200]);
                if fwd.chance(0.3) {
                    Action::Forward {
                        from_client: fwd.below(n_clients as u64) as usize,
                        from_msg: fwd.range(1, u64::from(next_msg).max(2)) as u32,
                        msg: next_msg,
                        snapshot_len,
                    }
                } else {
                    Action::Post {
                        content,
                        msg: next_msg,
                        snapshot_len,
                    }
                }
            }
            6 => {
                let at = r.below(posts.len() as u64) as usize;
                Action::Unpost {
                    msg: posts.swap_remove(at),
                }
            }
            _ => {
                let of = r.below(steps.len() as u64) as usize;
                let (of, action) = match &steps[of].action {
                    Action::Retry { of, action } => (*of, action.as_ref().clone()),
                    a => (of, a.clone()),
                };
                Action::Retry {
                    of,
                    action: Box::new(action),
                }
            }
        };
        steps.push(Step {
            id: steps.len(),
            pause_ms: r.pick(&[0, 0, 1, 2, 5, 10, 20]),
            action,
        });
        if rd.chance(0.15) {
            let back = if rd.chance(0.7) { 0 } else { rd.range(1, 6) };
            steps.push(Step {
                id: steps.len(),
                pause_ms: rd.pick(&[0, 1, 5]),
                action: Action::MarkRead { back },
            });
        }
    }
    if c == 0 && rd.chance(0.04) {
        steps.push(Step {
            id: steps.len(),
            pause_ms: 0,
            action: Action::Chatter {
                msgs: rd.range(20, 40) as u32,
            },
        });
    }
    // Membership changes of the shared thread, from a stream of their own (so the rest of
    // each script is as before), without pauses, so clients' changes overlap.
    let mut mem = Rng::new(seed, 7000 + c as u64);
    if mem.chance(0.6) {
        for _ in 0..mem.range(1, 4) {
            let op = [MemberOp::Add, MemberOp::Remove, MemberOp::Leave][mem.weighted(&[5, 3, 2])];
            steps.push(Step {
                id: steps.len(),
                pause_ms: mem.pick(&[0, 0, 1]),
                action: Action::Member {
                    guest: mem.below(2) as u32,
                    op,
                },
            });
        }
    }
    if p.cleanup {
        r.shuffle(&mut posts);
        for msg in posts {
            steps.push(Step {
                id: steps.len(),
                pause_ms: r.pick(&[0, 1, 5]),
                action: Action::Unpost { msg },
            });
        }
        r.shuffle(&mut live);
        for (content, reference) in live {
            steps.push(Step {
                id: steps.len(),
                pause_ms: r.pick(&[0, 1, 5]),
                action: Action::Remove { content, reference },
            });
        }
    }
    steps
}

/// Steps a shrunk replay leaves out: a whole client (`c`) or one step (`c.i`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Drops(BTreeSet<(usize, Option<usize>)>);

impl Drops {
    fn parse(s: &str) -> Self {
        let mut out = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (c, i) = match part.split_once('.') {
                Some((c, i)) => (c, Some(i.parse().expect("SIM_DROP step"))),
                None => (part, None),
            };
            out.insert((c.parse().expect("SIM_DROP client"), i));
        }
        Self(out)
    }

    fn render(&self) -> String {
        self.0
            .iter()
            .map(|(c, i)| match i {
                Some(i) => format!("{c}.{i}"),
                None => c.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn apply(&self, w: &mut Workload) {
        w.clients.retain(|c| !self.0.contains(&(c.idx, None)));
        for c in &mut w.clients {
            let idx = c.idx;
            c.steps.retain(|s| !self.0.contains(&(idx, Some(s.id))));
        }
    }
}

// ----------------------------------------------------------------------------------------
// The trace, the fault hook and the shared simulation state.

struct Trace {
    lines: Mutex<Vec<String>>,
    /// Which simulated actor each tokio task is (task ids are process-wide, never printed).
    names: Mutex<Vec<(tokio::task::Id, String)>>,
    counters: Mutex<BTreeMap<&'static str, u64>>,
    clock: Arc<ManualClock>,
    start: tokio::time::Instant,
    enabled: bool,
}

impl Trace {
    fn who(&self) -> String {
        let id = tokio::task::try_id();
        lock(&self.names)
            .iter()
            .find(|(t, _)| Some(*t) == id)
            .map_or_else(|| "driver".to_owned(), |(_, n)| n.clone())
    }

    fn name_current_task(&self, name: String) {
        if let Some(id) = tokio::task::try_id() {
            lock(&self.names).push((id, name));
        }
    }

    /// Formats only when tracing: a first run of each seed records counters only; a failing
    /// seed is run again (deterministically) with the trace on.
    fn log(&self, msg: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let msg = msg();
        let who = self.who();
        let t = self.start.elapsed().as_millis();
        let clock = (self.clock.now_ms() - START_MS) / 1000;
        lock(&self.lines).push(format!("{t:>6}ms clock+{clock:>6}s {who:<10} {msg}"));
    }

    fn bump(&self, name: &'static str) {
        *lock(&self.counters).entry(name).or_insert(0) += 1;
    }
}

struct HookState {
    rng: Rng,
    on: bool,
    crashing: Vec<tokio::task::Id>,
}

/// Seeded faults and interleaving for every store call.
struct SimHook {
    p: Params,
    st: Mutex<HookState>,
    trace: Arc<Trace>,
}

impl SimHook {
    fn set_faults(&self, on: bool) {
        let mut st = lock(&self.st);
        st.on = on;
        st.crashing.clear();
    }

    fn clear_crash(&self) {
        if let Some(id) = tokio::task::try_id() {
            lock(&self.st).crashing.retain(|t| *t != id);
        }
    }
}

impl FaultHook for SimHook {
    fn yields(&self, _op: Op) -> u32 {
        let mut st = lock(&self.st);
        st.rng.below(u64::from(self.p.max_yields) + 1) as u32
    }

    fn delay(&self, op: Op) -> Duration {
        let mut st = lock(&self.st);
        if !st.on || !st.rng.chance(self.p.slow) {
            return Duration::ZERO;
        }
        let ms = st.rng.range(1, self.p.slow_ms);
        drop(st);
        self.trace.bump("fault.slow_call");
        self.trace.log(|| format!("SLOW {op:?}: {ms}ms"));
        Duration::from_millis(ms)
    }

    fn fault(&self, op: Op) -> Fault {
        let mut st = lock(&self.st);
        if !st.on {
            return Fault::None;
        }
        let task = tokio::task::try_id();
        if let Some(pos) = task.and_then(|t| st.crashing.iter().position(|c| *c == t)) {
            st.crashing.swap_remove(pos);
            drop(st);
            self.trace.bump("fault.crash");
            self.trace
                .log(|| format!("CRASH: flow died before {op:?} (after its last write)"));
            return Fault::FailBefore;
        }
        let p = &self.p;
        let write = matches!(op, Op::IndexTransact | Op::BlobPut | Op::BlobDelete);
        let f = if st.rng.chance(if write { p.fail } else { p.fail / 2.0 }) {
            Fault::FailBefore
        } else if write && st.rng.chance(p.lose) {
            Fault::LoseResponse
        } else if op == Op::IndexTransact && st.rng.chance(p.conflict) {
            Fault::Conflict
        } else {
            Fault::None
        };
        let crash = f == Fault::None && write && task.is_some() && st.rng.chance(p.crash_after);
        if crash {
            st.crashing.extend(task);
        }
        drop(st);
        match f {
            Fault::None => {}
            Fault::FailBefore => self.trace.bump("fault.fail_before"),
            Fault::LoseResponse => self.trace.bump("fault.lose_response"),
            Fault::Conflict => self.trace.bump("fault.conflict"),
        }
        if f != Fault::None {
            self.trace.log(|| format!("FAULT {op:?}: {f:?}"));
        }
        f
    }
}

#[derive(Debug, Clone)]
struct Failure {
    kind: &'static str,
    context: String,
    violations: Vec<String>,
}

struct Sim {
    w: Arc<Workload>,
    d: D,
    blobs: MemoryBlobs,
    index: MemoryIndex,
    clock: Arc<ManualClock>,
    hook: Arc<SimHook>,
    trace: Arc<Trace>,
    failure: Mutex<Option<Failure>>,
    failed: AtomicBool,
    stop_background: AtomicBool,
    /// (index writes, blob writes) and (versions `safety` reads, blob writes, counter writes)
    /// at the last check.
    #[allow(clippy::type_complexity)]
    last_checked: Mutex<(Option<(u64, u64)>, Option<(u64, u64, u64)>)>,
    checks: AtomicU64,
    /// Each item `safety` reads, decoded, with the version it was decoded at.
    decoded: Mutex<HashMap<Key, (u64, Arc<Record>)>>,
    full_check: bool,
    /// The shared thread's log as the unread check has decoded it so far.
    log_model: Mutex<LogModel>,
}

/// What the unread check keeps of the shared thread's log between checks: positions are
/// written once (a deletion's redaction of the creation's text changes nothing kept here),
/// so each entry is decoded once per run.
#[derive(Default)]
struct LogModel {
    /// Index writes at the last unread check: none since, nothing to check.
    at_writes: Option<u64>,
    entries: BTreeMap<Seq, LogMark>,
}

enum LogMark {
    Created(MessageId, UserId),
    Deleted(MessageId),
    Membership,
    Undecodable,
}

impl LogMark {
    fn of(body: &str) -> Self {
        match serde_json::from_str::<ThreadLogEntry>(body) {
            Ok(ThreadLogEntry::Message(m)) if m.state == EntryState::Live => {
                Self::Created(m.id, m.author)
            }
            Ok(ThreadLogEntry::Message(m)) => Self::Deleted(m.id),
            Ok(ThreadLogEntry::Membership(_)) => Self::Membership,
            Err(_) => Self::Undecodable,
        }
    }
}

/// A member's unread count as the server answers it, against the truth from the log.
struct Unread {
    read_seq: Seq,
    /// `ThreadRecord::unread_for` on the record and the member's marker (what `get_thread`
    /// and the feed answer).
    server: u64,
    /// Live messages of others created after the marker (all of them without one).
    truth: u64,
    /// Messages of others created after the marker and deleted since, whose deletion is
    /// older than the last `RECENT_DELETIONS` deletions: the record no longer knows them,
    /// so they are still counted (the documented over-count).
    missed: u64,
    /// Messages of others created after the marker, deleted or not.
    arrived: u64,
}

impl Unread {
    fn of(
        log: &BTreeMap<Seq, LogMark>,
        t: &ThreadRecord,
        member: &UserId,
        marker: Option<&ReadMarker>,
    ) -> Self {
        let read_seq = marker.map_or(0, |m| m.read_seq);
        let mut created: HashMap<&MessageId, (Seq, &UserId)> = HashMap::new();
        let mut deletions: Vec<&MessageId> = Vec::new();
        for (seq, e) in log.range(..=t.last_seq) {
            match e {
                LogMark::Created(id, author) => {
                    created.insert(id, (*seq, author));
                }
                LogMark::Deleted(id) => deletions.push(id),
                LogMark::Membership | LogMark::Undecodable => {}
            }
        }
        let unread = |id: &MessageId| {
            created
                .get(id)
                .is_some_and(|(seq, author)| *seq > read_seq && *author != member)
        };
        let deleted: BTreeSet<&MessageId> = deletions.iter().copied().collect();
        let arrived = created.keys().filter(|id| unread(id)).count() as u64;
        let truth = created
            .keys()
            .filter(|id| unread(id) && !deleted.contains(*id))
            .count() as u64;
        let forgotten = deletions.len().saturating_sub(RECENT_DELETIONS);
        let missed = deletions[..forgotten]
            .iter()
            .filter(|id| unread(id))
            .count() as u64;
        Self {
            read_seq,
            server: t.unread_for(member, marker),
            truth,
            missed,
            arrived,
        }
    }

    /// Never under-counted; exact while every deletion past the marker is among the last
    /// `RECENT_DELETIONS`; beyond, over-counted by exactly the deletions forgotten.
    fn violations(&self, member: &UserId) -> Vec<String> {
        let (r, server, truth, missed) = (self.read_seq, self.server, self.truth, self.missed);
        let mut bad = Vec::new();
        if server < truth {
            bad.push(format!(
                "{member} (marker at {r}): unread {server}, but {truth} messages of others \
                 after the marker are live (under-counted)"
            ));
        } else if missed == 0 && server != truth {
            bad.push(format!(
                "{member} (marker at {r}): unread {server}, the log says {truth}, and every \
                 deletion past the marker is among the last {RECENT_DELETIONS} (exact there)"
            ));
        } else if server != truth + missed {
            bad.push(format!(
                "{member} (marker at {r}): unread {server}, the log says {truth} live and \
                 {missed} deleted before the last {RECENT_DELETIONS} deletions (expected {})",
                truth + missed
            ));
        }
        bad
    }
}

fn retryable(e: &DedupError) -> bool {
    e.is_transient() || e.is_internal()
}

impl Sim {
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn fail(&self, kind: &'static str, context: &str, mut violations: Vec<String>) {
        violations.sort();
        let mut f = lock(&self.failure);
        if f.is_none() {
            self.trace
                .log(|| format!("VIOLATION ({kind}) {context}: {violations:?}"));
            *f = Some(Failure {
                kind,
                context: context.to_owned(),
                violations,
            });
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// The safety invariants, on the state as it is now. Runs without awaiting, so on the
    /// current-thread runtime it sees a state between two atomic store calls.
    fn check(&self, context: impl FnOnce() -> String) {
        // `safety` reads only the items `invariants::reads` names, the counters and the
        // objects; if none of them changed since the last check, neither did its answer.
        let writes = (self.index.writes(), self.blobs.writes());
        {
            let mut last = lock(&self.last_checked);
            if last.0 == Some(writes) {
                return; // no write at all
            }
            last.0 = Some(writes);
            let at = (
                self.index.version_sum(invariants::reads),
                self.blobs.writes(),
                self.index.counter_writes(),
            );
            if last.1 == Some(at) {
                return; // writes, but none that `safety` reads (possession grants, logs, fences)
            }
            last.1 = Some(at);
        }
        self.checks.fetch_add(1, Ordering::Relaxed);
        let (objects, counters) = (
            self.blobs.metas(),
            self.index.counter_totals(keys::STATS_PK),
        );
        let bad = if self.full_check {
            invariants::safety(&self.index.dump(), &objects, &counters, "")
        } else {
            let records = self.relevant_records();
            let records: Vec<&Record> = records.iter().map(|r| &**r).collect();
            invariants::safety_of(&records, &objects, &counters, "")
        };
        if !bad.is_empty() {
            self.fail("safety", &context(), bad);
        }
    }

    /// The membership invariant (`chat::membership_violations`): the shared thread's record
    /// lists exactly the users whose feed's latest entry for it is a join.
    fn check_membership(&self, context: impl FnOnce() -> String) {
        // Only the items it reads (thread records and feeds), not the whole index.
        let mut items = Vec::new();
        self.index.visit(|i| {
            let k = &i.key;
            if (k.pk.starts_with("THREAD#") && k.sk == "META") || k.pk.starts_with("FEED#") {
                items.push(i.clone());
            }
        });
        let bad = audio_dedup_core::chat::membership_violations(&items);
        if !bad.is_empty() {
            self.fail("safety", &context(), bad);
        }
    }

    /// The records `safety` reads, less removed references: `safety` skips those (it counts
    /// only live references), so leaving them out cannot change its answer, and they are most
    /// of the items by the end of a run. Each (key, version) is decoded once per run (an
    /// item's version changes on every write). `SIM_FULL_CHECK=1` hands `safety` the whole
    /// dump instead.
    fn relevant_records(&self) -> Vec<Arc<Record>> {
        let mut decoded = lock(&self.decoded);
        let mut out = Vec::new();
        self.index.visit(|i| {
            let k = &i.key;
            if !invariants::reads(k) {
                return;
            }
            let record = match decoded.get(k) {
                Some((v, r)) if *v == i.version => Arc::clone(r),
                _ => {
                    let r = Arc::new(Record::decode(i));
                    decoded.insert(k.clone(), (i.version, Arc::clone(&r)));
                    r
                }
            };
            if !matches!(&*record, Record::Reference(r) if r.state == ReferenceState::Removed) {
                out.push(record);
            }
        });
        out
    }

    /// The shared thread as it stands (one atomic look at the index, without awaiting): its
    /// record and its members' read markers, with `model` brought up to its log.
    fn thread_now(
        &self,
        model: &mut LogModel,
    ) -> Option<(ThreadRecord, BTreeMap<UserId, ReadMarker>)> {
        let thread: ThreadId = THREAD.parse().expect("valid thread id");
        let pk = keys::thread_log_pk(&thread);
        let marker_sk = keys::read_marker(&guest(0), &thread).sk;
        let mut record = None;
        let mut markers = BTreeMap::new();
        self.index.visit(|i| {
            let k = &i.key;
            if k.pk == pk {
                if k.sk == "META" {
                    record = serde_json::from_str::<ThreadRecord>(&i.body).ok();
                } else if let Some(seq) = k.sk.strip_prefix("LOG#").and_then(|s| s.parse().ok()) {
                    model
                        .entries
                        .entry(seq)
                        .or_insert_with(|| LogMark::of(&i.body));
                }
            } else if k.sk == marker_sk {
                let user = k.pk.strip_prefix("FEED#").and_then(|u| u.parse().ok());
                if let (Some(user), Ok(m)) = (user, serde_json::from_str(&i.body)) {
                    markers.insert(user, m);
                }
            }
        });
        record.map(|r| (r, markers))
    }

    /// The unread invariant: for every member of the shared thread, the count the server
    /// answers against the one the log gives ([`Unread::violations`]). Checked after every
    /// step that may change the thread (skipped when nothing was written since the last).
    fn check_unread(&self, context: impl FnOnce() -> String) {
        let mut model = lock(&self.log_model);
        let writes = self.index.writes();
        if model.at_writes == Some(writes) {
            return;
        }
        model.at_writes = Some(writes);
        let Some((t, markers)) = self.thread_now(&mut model) else {
            return;
        };
        self.trace.bump("read.checked");
        let mut bad = Vec::new();
        if model
            .entries
            .values()
            .any(|e| matches!(e, LogMark::Undecodable))
        {
            bad.push("the thread's log has an entry that is not a log entry".to_owned());
        }
        for m in &t.members {
            let u = Unread::of(&model.entries, &t, m, markers.get(m));
            if u.missed > 0 {
                self.trace.bump("read.over_counted");
            }
            bad.extend(u.violations(m));
        }
        drop(model);
        if !bad.is_empty() {
            self.fail("unread", &context(), bad);
        }
    }

    /// Right after `member` marked the thread read at `cursor`: their marker is there or
    /// past it, and with no message of others created after it their count is 0.
    fn check_read(&self, member: &UserId, cursor: Seq, context: impl FnOnce() -> String) {
        let mut model = lock(&self.log_model);
        let Some((t, markers)) = self.thread_now(&mut model) else {
            return;
        };
        let u = Unread::of(&model.entries, &t, member, markers.get(member));
        drop(model);
        let mut bad = u.violations(member);
        if u.read_seq < cursor {
            bad.push(format!(
                "{member}: marked read at {cursor}, the marker is at {}",
                u.read_seq
            ));
        } else if u.arrived == 0 && u.server != 0 {
            bad.push(format!(
                "{member}: marked read at {cursor} (marker at {}), nothing of others since, \
                 unread {}",
                u.read_seq, u.server
            ));
        }
        if !bad.is_empty() {
            self.fail("unread", &context(), bad);
        }
    }

    fn content_of(&self, hash: &ContentHash) -> String {
        self.w
            .hashes
            .iter()
            .position(|h| h == hash)
            .map_or_else(|| "C?".to_owned(), |i| format!("C{i}"))
    }

    fn describe_event(&self, e: &BlobEvent) -> String {
        let (what, key, version) = match e {
            BlobEvent::Created { key, version, .. } => ("Created", key, version),
            BlobEvent::Removed { key, version, .. } => ("Removed", key, version),
        };
        let c =
            keys::hash_from_blob_key("", key).map_or_else(|| key.clone(), |h| self.content_of(&h));
        format!("{what}({c} {version})")
    }
}

// ----------------------------------------------------------------------------------------
// Clients.

#[derive(Debug, Default, Clone)]
struct SessionProgress {
    opened: Option<UploadSession>,
    put: Option<PutOutcome>,
    gave_up: bool,
}

#[derive(Default)]
struct ClientState {
    sessions: BTreeMap<usize, SessionProgress>,
    /// The position each mark-read step marks (its retries mark the same).
    read_at: BTreeMap<usize, Seq>,
}

fn proof(s: &UploadSession, bytes: &[u8]) -> String {
    let chunks = s.challenge.ranges.iter().map(|r| {
        let start = (r.offset as usize).min(bytes.len());
        let end = (r.offset + r.length).min(bytes.len() as u64) as usize;
        &bytes[start..end]
    });
    proof_for(&s.challenge.nonce, chunks)
}

/// One request (or, for a session, the client's next steps of it).
async fn perform(
    sim: &Sim,
    c: &Client,
    st: &mut ClientState,
    key: usize,
    action: &Action,
    is_retry: bool,
) -> Result<String, DedupError> {
    let w = &sim.w;
    let owner = &c.user;
    let pending = |r: &Option<Ref>| {
        r.map(|r| PendingReference {
            kind: r.kind,
            ref_id: ref_id(c.idx, r),
        })
    };
    match action {
        Action::Flood { sessions } => {
            let limit = sim.d.config().limits.open_sessions;
            let (mut opened, mut refused) = (0u32, 0u32);
            for i in 0..*sessions {
                let hash = ContentHash::of(format!("flood {} {i}", w.seed).as_bytes());
                let r = sim
                    .d
                    .audio()
                    .open_session(SessionRequest {
                        owner: owner.clone(),
                        hash,
                        size: 1000,
                        format: AudioFormat::Mp3,
                        reference: None,
                    })
                    .await;
                sim.check(|| format!("c{} flooded session {i}", c.idx));
                match r {
                    Ok(_) => opened += 1,
                    Err(e) if e.code() == ErrorCode::QuotaExceeded => refused += 1,
                    // An injected fault: the flood goes on.
                    Err(e) if e.is_transient() || e.is_internal() => {}
                    Err(e) => return Err(e),
                }
            }
            // Sessions expire meanwhile (the clock jumps), so more than `limit` may open over
            // the flood; never more than `limit` at once (the quota record counts exactly the
            // open ones: an invariant checked after every step).
            let quota = sim
                .d
                .index()
                .get(&keys::user_quota(owner))
                .await
                .ok()
                .flatten()
                .and_then(|i| serde_json::from_str::<UserQuota>(&i.body).ok());
            if let Some(q) = quota.filter(|q| q.open_sessions > limit) {
                sim.fail(
                    "quota",
                    "a flooding user",
                    vec![format!(
                        "{} sessions open at once, the limit is {limit}",
                        q.open_sessions
                    )],
                );
            }
            if refused > 0 {
                sim.trace.bump("flood.refused");
            }
            Ok(format!("flood: {opened} opened, {refused} refused"))
        }
        Action::Upload {
            content,
            format,
            reference,
        } => {
            let bytes = w.contents[*content].clone();
            let r = sim
                .d
                .audio()
                .upload_direct(DirectUpload {
                    owner: owner.clone(),
                    format: *format,
                    hash: w.hashes[*content],
                    size: bytes.len() as u64,
                    body: BlobBody::Bytes(bytes),
                    reference: pending(reference),
                })
                .await?;
            sim.trace.bump(if r.deduplicated {
                "upload.deduplicated"
            } else {
                "upload.stored"
            });
            Ok(format!("ok deduplicated={}", r.deduplicated))
        }
        Action::Session {
            content,
            format,
            reference,
            mode,
            put_delay_ms,
        } => {
            let hash = w.hashes[*content];
            let bytes = w.contents[*content].clone();
            let prog = st.sessions.entry(key).or_default();
            if prog.opened.is_none() {
                let s = sim
                    .d
                    .audio()
                    .open_session(SessionRequest {
                        owner: owner.clone(),
                        hash,
                        size: bytes.len() as u64,
                        format: *format,
                        reference: pending(reference),
                    })
                    .await;
                sim.check(|| format!("c{} opened a session for C{content}", c.idx));
                let s = s?;
                sim.trace.log(|| {
                    format!(
                        "opened session {} for C{content}",
                        &s.session_id.as_str()[..8]
                    )
                });
                sim.trace.bump("session.opened");
                prog.opened = Some(s);
            }
            let s = prog.opened.clone().expect("opened above");
            if !is_retry && *mode == SessionMode::AbandonBeforePut {
                sim.trace.bump("session.abandoned_before_put");
                return Ok("abandoned before the PUT".into());
            }
            let complete = |proof: Option<String>| CompleteRequest {
                owner: owner.clone(),
                hash,
                session_id: s.session_id.clone(),
                proof: proof.map(|p| Proof::new(&p).expect("proof_for answers 64 hex digits")),
            };
            if *mode == SessionMode::Proof && prog.put.is_none() {
                let r = sim
                    .d
                    .audio()
                    .complete(complete(Some(proof(&s, &bytes))))
                    .await;
                sim.check(|| format!("c{} completed a session by proof", c.idx));
                match r {
                    Ok(r) => {
                        sim.trace.bump("session.completed_by_proof");
                        return Ok(format!(
                            "completed by proof deduplicated={}",
                            r.deduplicated
                        ));
                    }
                    Err(DedupError::UploadRequired) => {
                        sim.trace.bump("session.proof_refused");
                        sim.trace
                            .log(|| "proof refused (upload_required); uploading".into());
                    }
                    Err(e) => return Err(e),
                }
            }
            if prog.put.is_none() {
                if prog.gave_up {
                    return Ok("gave up earlier".into());
                }
                if !is_retry && *put_delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(*put_delay_ms)).await;
                }
                // The signed URL is valid until expires_at; a PUT started before then may land
                // up to the configured slack later. After that the store refuses it.
                let slack = sim.d.config().session_slack.as_millis() as i64;
                if sim.clock.now_ms() > s.expires_at + slack {
                    prog.gave_up = true;
                    sim.trace.bump("session.url_expired");
                    return Ok("the signed URL expired before the PUT; gave up".into());
                }
                let out = sim.blobs.client_put(
                    &keys::blob_key("", &hash),
                    bytes.clone(),
                    &Uploader::Session(s.session_id.clone()).to_string(),
                );
                sim.trace.log(|| format!("client PUT C{content}: {out:?}"));
                sim.trace.bump(match out {
                    PutOutcome::Created { .. } => "session.put_created",
                    PutOutcome::AlreadyExists => "session.put_exists",
                });
                sim.check(|| format!("c{} PUT C{content}", c.idx));
                prog.put = Some(out);
            }
            if !is_retry && *mode == SessionMode::AbandonAfterPut {
                sim.trace.bump("session.abandoned_after_put");
                return Ok("abandoned after the PUT".into());
            }
            let by_proof = prog.put == Some(PutOutcome::AlreadyExists);
            let r = sim
                .d
                .audio()
                .complete(complete(by_proof.then(|| proof(&s, &bytes))))
                .await?;
            sim.trace.bump("session.completed");
            Ok(format!(
                "completed (proof={by_proof}) deduplicated={}",
                r.deduplicated
            ))
        }
        Action::Add { content, reference } => {
            let v = sim
                .d
                .audio()
                .add_reference(
                    owner,
                    &w.hashes[*content],
                    &ref_id(c.idx, *reference),
                    reference.kind,
                )
                .await?;
            sim.trace.bump("reference.added");
            Ok(format!("ok {}", v.ref_id))
        }
        Action::Remove { content, reference } => {
            sim.d
                .audio()
                .remove_reference(owner, &w.hashes[*content], &ref_id(c.idx, *reference))
                .await?;
            sim.trace.bump("reference.removed");
            Ok("ok".into())
        }
        Action::Post {
            content,
            msg,
            snapshot_len,
        } => {
            let req = NewMessage {
                id: message_id(c.idx, *msg),
                snapshot: Snapshot::new(snapshot_of(c.idx, *msg, *snapshot_len))
                    .expect("a generated snapshot is valid"),
                audio: Some(MessageAudio::Render(AudioRender {
                    content_hash: w.hashes[*content],
                    format: AudioFormat::ALL[*content % 2],
                })),
                // Every other message carries text: its retries must match it too.
                text: (*msg % 2 == 0).then(|| {
                    MessageText::new(format!("take {msg}")).expect("a generated text is valid")
                }),
            };
            let thread: ThreadId = THREAD.parse().expect("valid thread id");
            let (v, created) = sim.d.chat().create_message(owner, &thread, req).await?;
            sim.trace.bump(if created {
                "message.created"
            } else {
                "message.replayed"
            });
            Ok(format!("ok cursor={} state={:?}", v.cursor, v.state))
        }
        Action::Forward {
            from_client,
            from_msg,
            msg,
            snapshot_len,
        } => {
            let req = NewMessage {
                id: message_id(c.idx, *msg),
                snapshot: Snapshot::new(snapshot_of(c.idx, *msg, *snapshot_len))
                    .expect("a generated snapshot is valid"),
                audio: Some(MessageAudio::FromMessage(message_id(
                    *from_client,
                    *from_msg,
                ))),
                text: None,
            };
            let thread: ThreadId = THREAD.parse().expect("valid thread id");
            let (v, created) = match sim.d.chat().create_message(owner, &thread, req).await {
                Err(e) if e.code() == ErrorCode::MessageNotFound => {
                    sim.trace.bump("message.forward_refused");
                    return Err(e);
                }
                r => r?,
            };
            sim.trace.bump(if created {
                "message.forwarded"
            } else {
                "message.replayed"
            });
            Ok(format!("ok cursor={} state={:?}", v.cursor, v.state))
        }
        Action::Unpost { msg } => {
            let thread: ThreadId = THREAD.parse().expect("valid thread id");
            sim.d
                .chat()
                .delete_message(owner, &thread, &message_id(c.idx, *msg))
                .await?;
            sim.trace.bump("message.deleted");
            Ok("ok".into())
        }
        Action::Member { guest: g, op } => {
            let thread: ThreadId = THREAD.parse().expect("valid thread id");
            let chat = sim.d.chat();
            let r = match op {
                MemberOp::Add => chat
                    .add_member(owner, &thread, &guest(*g))
                    .await
                    .map(|(_, added)| added),
                MemberOp::Remove => chat.remove_member(owner, &thread, &guest(*g)).await,
                MemberOp::Leave => chat.remove_member(&guest(*g), &thread, &guest(*g)).await,
            };
            // Checked at once, without awaiting: every state between two store calls holds it.
            sim.check_membership(|| format!("c{} after member {op:?} guest{g}", c.idx));
            let changed = r?;
            sim.trace.bump(match (op, changed) {
                (MemberOp::Add, true) => "member.added",
                (MemberOp::Remove, true) => "member.removed",
                (MemberOp::Leave, true) => "member.left",
                (_, false) => "member.unchanged",
            });
            Ok(format!("ok changed={changed}"))
        }
        Action::MarkRead { back } => {
            let thread: ThreadId = THREAD.parse().expect("valid thread id");
            let chat = sim.d.chat();
            let cursor = match st.read_at.get(&key) {
                Some(at) => *at,
                None => {
                    let head: Seq = chat
                        .get_thread(owner, &thread)
                        .await?
                        .last_cursor
                        .parse()
                        .expect("a cursor is a position");
                    let at = head.saturating_sub(*back);
                    st.read_at.insert(key, at);
                    at
                }
            };
            let changed = chat.mark_read(owner, &thread, cursor).await?;
            // At once, without awaiting: the marker is at `cursor` or past it; with no message
            // of others after it, the count is 0.
            sim.check_read(owner, cursor, || {
                format!("c{} right after marking read at {cursor}", c.idx)
            });
            sim.trace.bump(match (changed, *back) {
                (false, _) => "read.unchanged",
                (true, 0) => "read.marked_at_head",
                (true, _) => "read.marked_behind",
            });
            Ok(format!("ok cursor={cursor} changed={changed}"))
        }
        Action::Chatter { msgs } => {
            let thread: ThreadId = THREAD.parse().expect("valid thread id");
            let chat = sim.d.chat();
            let id = |i: u32| -> MessageId {
                format!("c{}x{i}", c.idx).parse().expect("valid message id")
            };
            for i in 0..*msgs {
                let req = NewMessage {
                    id: id(i),
                    snapshot: Snapshot::new(snapshot_of(c.idx, 1000 + i, 1))
                        .expect("a generated snapshot is valid"),
                    audio: None,
                    text: Some(MessageText::new(format!("chatter {i}")).expect("valid text")),
                };
                chat.create_message(owner, &thread, req).await?;
                sim.check_unread(|| format!("c{} chatter posted {i}", c.idx));
            }
            for i in 0..*msgs {
                chat.delete_message(owner, &thread, &id(i)).await?;
                sim.check_unread(|| format!("c{} chatter deleted {i}", c.idx));
            }
            sim.trace.bump("message.chatter");
            Ok(format!("ok {msgs} posted and deleted"))
        }
        Action::Retry { .. } => unreachable!("retries are unwrapped by the caller"),
    }
}

/// A request and the client's own retries of it after 5xx answers.
async fn attempt(
    sim: &Sim,
    c: &Client,
    st: &mut ClientState,
    step_id: usize,
    action: &Action,
    budget: u32,
    rng: &mut Rng,
) -> Result<String, DedupError> {
    let (key, inner, is_retry) = match action {
        Action::Retry { of, action } => (*of, action.as_ref(), true),
        a => (step_id, a, false),
    };
    if is_retry {
        sim.trace.bump("client.retry_step");
    }
    for n in 0..=budget {
        sim.hook.clear_crash();
        sim.trace
            .log(|| format!("#{step_id} starts: {}", describe(c.idx, action)));
        let r = perform(sim, c, st, key, inner, is_retry).await;
        let said = || {
            let shown = match &r {
                Ok(s) => s.clone(),
                Err(e) => format!("ERR {}", e.code()),
            };
            let again = if n > 0 { " (again)" } else { "" };
            format!("#{step_id}{again} {} -> {shown}", describe(c.idx, action))
        };
        sim.trace.log(said);
        sim.check(|| format!("c{} {}", c.idx, said()));
        if matches!(
            inner,
            Action::Post { .. }
                | Action::Forward { .. }
                | Action::Unpost { .. }
                | Action::Member { .. }
                | Action::MarkRead { .. }
                | Action::Chatter { .. }
        ) {
            sim.check_unread(|| format!("c{} {}", c.idx, said()));
        }
        match &r {
            Err(e) if retryable(e) && n < budget && !sim.failed() => {
                sim.trace.bump("client.retry_after_5xx");
                tokio::time::sleep(Duration::from_millis(rng.range(1, 30))).await;
            }
            _ => return r,
        }
    }
    unreachable!("the loop returns")
}

/// Runs a client's script. Returns the requests still unanswered (5xx after every retry),
/// which the client repeats once faults stop.
async fn client_task(sim: Arc<Sim>, c: Client) -> (Client, ClientState, Vec<Step>) {
    sim.trace
        .name_current_task(format!("c{}/{}", c.idx, c.user));
    let mut rng = Rng::new(sim.w.seed, 5000 + c.idx as u64);
    let mut st = ClientState::default();
    let mut unanswered = Vec::new();
    for step in &c.steps {
        if sim.failed() {
            break;
        }
        if step.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(step.pause_ms)).await;
        }
        let budget = sim.w.params.retry_budget;
        let r = attempt(&sim, &c, &mut st, step.id, &step.action, budget, &mut rng).await;
        if matches!(&r, Err(e) if retryable(e)) {
            unanswered.push(step.clone());
        }
    }
    (c, st, unanswered)
}

// ----------------------------------------------------------------------------------------
// Background actors: blob events, the reconciler, the clock.

async fn event_pump(sim: Arc<Sim>) -> Vec<BlobEvent> {
    sim.trace.name_current_task("events".into());
    let p = sim.w.params.clone();
    let mut rng = Rng::new(sim.w.seed, 7);
    let mut held: Vec<BlobEvent> = Vec::new();
    for _ in 0..20_000 {
        if sim.stop_background.load(Ordering::SeqCst) || sim.failed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(1, 12))).await;
        held.extend(sim.blobs.take_events());
        if held.is_empty() {
            continue;
        }
        let mut now = Vec::new();
        let mut later = Vec::new();
        for e in held.drain(..) {
            if rng.chance(p.event_drop) {
                sim.trace.bump("event.dropped");
                sim.trace
                    .log(|| format!("DROP event {}", sim.describe_event(&e)));
                continue;
            }
            if rng.chance(p.event_delay) {
                sim.trace.bump("event.delayed");
                later.push(e);
                continue;
            }
            if rng.chance(p.event_dup) {
                sim.trace.bump("event.duplicated");
                if rng.chance(0.5) {
                    now.push(e.clone());
                } else {
                    later.push(e.clone());
                }
            }
            now.push(e);
        }
        if p.event_reorder {
            rng.shuffle(&mut now);
        }
        for e in now {
            if sim.failed() {
                break;
            }
            if deliver(&sim, &e).await.is_err() && rng.chance(0.7) {
                later.push(e); // the queue redelivers after a failed handler
            }
        }
        held = later;
    }
    held
}

async fn deliver(sim: &Sim, e: &BlobEvent) -> Result<(), DedupError> {
    let r = sim.d.audio().on_blob_event(e).await;
    sim.trace.bump("event.delivered");
    sim.trace.bump(match &r {
        Ok(Adoption::Activated) => "event.activated",
        Ok(Adoption::AlreadyActive) => "event.already_active",
        Ok(Adoption::Deleted) => "event.deleted_object",
        Ok(Adoption::Ignored) => "event.ignored",
        Err(_) => "event.failed",
    });
    let said = || {
        let shown = match &r {
            Ok(a) => format!("{a:?}"),
            Err(e) => format!("ERR {}", e.code()),
        };
        format!("deliver {} -> {shown}", sim.describe_event(e))
    };
    sim.trace.log(said);
    sim.check(|| format!("after {}", said()));
    r.map(|_| ())
}

async fn reconcile_once(sim: &Sim) {
    let r = sim.d.reconcile().await;
    sim.trace.bump("reconcile.runs");
    match &r {
        Ok(rep) => {
            let nothing = ReconcileReport::default();
            if *rep != nothing {
                sim.trace.log(|| format!("reconcile -> {rep:?}"));
            }
            for (n, name) in [
                (rep.deletions_finished, "reconcile.deletions_finished"),
                (rep.pending_resolved, "reconcile.pending_resolved"),
                (rep.sessions_expired, "reconcile.sessions_expired"),
                (rep.unreferenced_deleted, "reconcile.unreferenced_deleted"),
                (rep.orphans_deleted, "reconcile.orphans_deleted"),
                (rep.activated, "reconcile.activated"),
                (rep.snapshots_purged, "reconcile.snapshots_purged"),
            ] {
                if n > 0 {
                    sim.trace.bump(name);
                }
            }
        }
        Err(e) => sim.trace.log(|| format!("reconcile -> ERR {}", e.code())),
    }
    sim.check(|| format!("after a reconciler run ({r:?})"));
}

async fn reconciler(sim: Arc<Sim>) {
    sim.trace.name_current_task("reconciler".into());
    let mut rng = Rng::new(sim.w.seed, 8);
    let (lo, hi) = sim.w.params.reconcile_every;
    for _ in 0..2_000 {
        tokio::time::sleep(Duration::from_millis(rng.range(lo, hi))).await;
        if sim.stop_background.load(Ordering::SeqCst) || sim.failed() {
            break;
        }
        reconcile_once(&sim).await;
    }
}

async fn clock_task(sim: Arc<Sim>) {
    sim.trace.name_current_task("clock".into());
    let mut rng = Rng::new(sim.w.seed, 9);
    let big = sim.w.params.big_clock_jumps;
    for _ in 0..20_000 {
        tokio::time::sleep(Duration::from_millis(rng.range(5, 60))).await;
        if sim.stop_background.load(Ordering::SeqCst) || sim.failed() {
            break;
        }
        let ms = match rng.weighted(&[75, 15, if big { 7 } else { 0 }, if big { 3 } else { 0 }]) {
            0 => rng.range(0, 2_000),
            1 => rng.range(2_000, 120_000),
            2 => rng.range(120_000, 20 * 60_000),
            _ => rng.range(20 * 60_000, 26 * 3_600_000),
        };
        sim.clock.advance(Duration::from_millis(ms));
        if ms >= 120_000 {
            sim.trace.bump("clock.big_jump");
            sim.trace.log(|| format!("clock jumps {}s", ms / 1000));
        }
        if rng.chance(sim.w.params.strays) {
            stray_object(&sim, &mut rng);
        }
    }
}

/// An object nobody in this run claims lands under a content's key: the leftover of a
/// direct upload whose process died long ago, or bytes that do not hash to the key. The
/// protocol must delete it (or adopt the right bytes for a claim) and never count it.
fn stray_object(sim: &Sim, rng: &mut Rng) {
    let c = rng.below(sim.w.contents.len() as u64) as usize;
    let key = keys::blob_key("", &sim.w.hashes[c]);
    let (bytes, what) = if rng.chance(0.5) {
        (sim.w.contents[c].clone(), "right bytes")
    } else {
        (Bytes::from(format!("not C{c}").into_bytes()), "WRONG bytes")
    };
    let out = sim
        .blobs
        .client_put(&key, bytes, &Uploader::Direct.to_string());
    sim.trace.bump("stray.put");
    sim.trace
        .log(|| format!("stray object under C{c}'s key ({what}): {out:?}"));
    sim.check(|| format!("after a stray object under C{c}'s key"));
}

// ----------------------------------------------------------------------------------------
// One seed.

struct RunResult {
    failure: Option<Failure>,
    trace: Vec<String>,
    counters: BTreeMap<&'static str, u64>,
    /// Over the trace and the final state: equal digests mean an identical run.
    digest: u64,
}

fn fnv(acc: &mut u64, s: &str) {
    for b in s.bytes().chain([0xff]) {
        *acc ^= u64::from(b);
        *acc = acc.wrapping_mul(0x0100_0000_01b3);
    }
}

/// How to run a seed; neither option changes what the run does.
#[derive(Debug, Clone, Copy)]
struct Opts {
    /// Record the trace (first runs only count; a failing seed is re-run traced).
    traced: bool,
    /// Hand `safety` the whole index dump instead of leaving out removed references.
    full_check: bool,
}

impl Opts {
    fn new(traced: bool) -> Self {
        Self {
            traced,
            full_check: std::env::var("SIM_FULL_CHECK").as_deref() == Ok("1"),
        }
    }
}

fn run(w: Workload, opts: Opts) -> RunResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(simulate(Arc::new(w), opts))
}

async fn simulate(w: Arc<Workload>, opts: Opts) -> RunResult {
    let clock = Arc::new(ManualClock::new(START_MS));
    let trace = Arc::new(Trace {
        lines: Mutex::default(),
        names: Mutex::default(),
        counters: Mutex::default(),
        clock: clock.clone(),
        start: tokio::time::Instant::now(),
        enabled: opts.traced,
    });
    let hook = Arc::new(SimHook {
        p: w.params.clone(),
        st: Mutex::new(HookState {
            rng: Rng::new(w.seed, 3),
            on: true,
            crashing: Vec::new(),
        }),
        trace: trace.clone(),
    });
    let blobs = MemoryBlobs::new(hook.clone()).with_clock(clock.clone());
    let index = match w.params.conflict_model {
        Some(model) => MemoryIndex::new(hook.clone()).with_conflicts(model),
        None => MemoryIndex::new(hook.clone()),
    };
    let cfg = DedupConfig {
        deletion_grace: w.params.deletion_grace,
        // Small, so some snapshots take the blob-store path (with its faults).
        snapshot_inline_max: 64,
        eager_count_shards: w.params.eager_count_shards,
        ..DedupConfig::default()
    };
    let d = Dedup::with_env(
        blobs.clone(),
        index.clone(),
        cfg,
        clock.clone(),
        Arc::new(SeededEntropy::new(w.seed)),
    );
    let sim = Arc::new(Sim {
        w: w.clone(),
        d,
        blobs,
        index,
        clock,
        hook,
        trace,
        failure: Mutex::default(),
        failed: AtomicBool::new(false),
        stop_background: AtomicBool::new(false),
        last_checked: Mutex::default(),
        checks: AtomicU64::new(0),
        decoded: Mutex::default(),
        full_check: opts.full_check,
        log_model: Mutex::default(),
    });
    sim.trace.log(|| {
        format!(
            "seed {} shape {:?}: {} clients, {} contents {:?}; params {:?}",
            w.seed,
            w.params.shape,
            w.clients.len(),
            w.contents.len(),
            w.contents.iter().map(Bytes::len).collect::<Vec<_>>(),
            w.params
        )
    });

    // The shared thread, made before anything runs (and without faults).
    sim.hook.set_faults(false);
    let mut users: Vec<UserId> = w.clients.iter().map(|c| c.user.clone()).collect();
    users.sort();
    users.dedup();
    if users.is_empty() {
        // Shrunk to no client at all: nothing to run.
        return RunResult {
            failure: None,
            trace: Vec::new(),
            counters: BTreeMap::new(),
            digest: 0,
        };
    }
    let made = sim
        .d
        .chat()
        .create_thread(
            &users[0],
            NewThread {
                id: Some(THREAD.parse().expect("valid thread id")),
                title: Title::new("sim").expect("a valid title"),
                members: Members::new(users[1..].to_vec()).expect("at most nine others"),
            },
        )
        .await;
    if let Err(e) = made {
        sim.fail("setup", "creating the shared thread", vec![e.to_string()]);
    }
    sim.hook.set_faults(true);

    let pump = tokio::spawn(event_pump(sim.clone()));
    let rec = tokio::spawn(reconciler(sim.clone()));
    let clk = tokio::spawn(clock_task(sim.clone()));
    let clients: Vec<_> = w
        .clients
        .iter()
        .map(|c| tokio::spawn(client_task(sim.clone(), c.clone())))
        .collect();
    let mut unanswered = Vec::new();
    for h in clients {
        match h.await {
            Ok(x) => unanswered.push(x),
            Err(e) => sim.fail("panic", "a client task", vec![e.to_string()]),
        }
    }

    // Faults stop; every client repeats what it never got an answer to.
    sim.hook.set_faults(false);
    sim.trace.log(|| "faults stopped".into());
    if !sim.failed() {
        let finals: Vec<_> = unanswered
            .into_iter()
            .filter(|(_, _, steps)| !steps.is_empty())
            .map(|(c, mut st, steps)| {
                let sim = sim.clone();
                tokio::spawn(async move {
                    sim.trace
                        .name_current_task(format!("c{}/{}", c.idx, c.user));
                    let mut rng = Rng::new(sim.w.seed, 6000 + c.idx as u64);
                    for s in steps {
                        sim.trace.bump("client.final_retry");
                        let again = Action::Retry {
                            of: s.id,
                            action: Box::new(match s.action {
                                Action::Retry { action, .. } => *action,
                                a => a,
                            }),
                        };
                        let _ = attempt(&sim, &c, &mut st, s.id, &again, 2, &mut rng).await;
                    }
                })
            })
            .collect();
        for h in finals {
            if let Err(e) = h.await {
                sim.fail("panic", "a client's final retries", vec![e.to_string()]);
            }
        }
    }
    sim.stop_background.store(true, Ordering::SeqCst);
    let mut held = match pump.await {
        Ok(h) => h,
        Err(e) => {
            sim.fail("panic", "the event pump", vec![e.to_string()]);
            Vec::new()
        }
    };
    for h in [rec, clk] {
        if let Err(e) = h.await {
            sim.fail("panic", "a background task", vec![e.to_string()]);
        }
    }

    // Liveness: deliver what is left (late, duplicated, reordered, none dropped), move the
    // clock past every due time, reconcile, until nothing changes.
    if !sim.failed() {
        settle(&sim, &mut held).await;
    }
    if !sim.failed() {
        let mut bad = invariants::settled(&sim.index.dump(), &sim.blobs.metas(), "");
        bad.extend(audio_dedup_core::chat::membership_violations(
            &sim.index.dump(),
        ));
        if !bad.is_empty() {
            sim.fail(
                "settled",
                "at the end (faults stopped, clock past every due time, reconciled)",
                bad,
            );
        }
    }
    if !sim.failed() {
        check_unread_answers(&sim).await;
    }

    let mut digest = 0xcbf2_9ce4_8422_2325;
    let trace = std::mem::take(&mut *lock(&sim.trace.lines));
    for l in &trace {
        fnv(&mut digest, l);
    }
    for i in sim.index.dump() {
        fnv(&mut digest, &i.key.to_string());
        fnv(&mut digest, &i.body);
    }
    for m in sim.blobs.metas() {
        fnv(&mut digest, &m.key);
        fnv(&mut digest, &m.version);
    }
    let mut counters = std::mem::take(&mut *lock(&sim.trace.counters));
    counters.insert("checks", sim.checks.load(Ordering::Relaxed));
    let mut count_shards = 0;
    sim.index
        .visit(|i| count_shards += u64::from(i.key.sk.starts_with("COUNT#")));
    counters.insert("reference.count_shards_opened", count_shards);
    if w.params.conflict_model.is_some() {
        counters.insert("index.conflict_model_seeds", 1);
        counters.insert("index.modelled_conflicts", sim.index.modelled_conflicts());
    }
    let failure = lock(&sim.failure).clone();
    RunResult {
        failure,
        trace,
        counters,
        digest,
    }
}

/// At the end: the unread invariant on every member, and `get_thread` and each of their feed
/// entries for the thread answer the count the record and their marker give.
async fn check_unread_answers(sim: &Sim) {
    lock(&sim.log_model).at_writes = None;
    sim.check_unread(|| "at the end".into());
    let Some((t, markers)) = sim.thread_now(&mut lock(&sim.log_model)) else {
        return;
    };
    let thread: ThreadId = THREAD.parse().expect("valid thread id");
    let chat = sim.d.chat();
    let mut bad = Vec::new();
    for m in &t.members {
        let want = t.unread_for(m, markers.get(m));
        match chat.get_thread(m, &thread).await {
            Ok(d) if d.unread == want => {}
            Ok(d) => bad.push(format!(
                "{m}: get_thread answers unread {}, record and marker give {want}",
                d.unread
            )),
            Err(e) => bad.push(format!("{m}: get_thread failed: {e}")),
        }
        let mut since = 0;
        loop {
            let page = match chat.list_threads(m, since, MAX_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    bad.push(format!("{m}: list_threads failed: {e}"));
                    break;
                }
            };
            for v in page.items.iter().filter(|v| v.id == thread && !v.left) {
                if v.unread != Some(want) {
                    bad.push(format!(
                        "{m}: a feed entry answers unread {:?}, record and marker give {want}",
                        v.unread
                    ));
                }
            }
            let next = page.next_cursor.parse().unwrap_or(since);
            if !page.has_more || next <= since {
                break;
            }
            since = next;
        }
    }
    if !bad.is_empty() {
        sim.fail("unread", "the answers at the end", bad);
    }
}

async fn settle(sim: &Sim, held: &mut Vec<BlobEvent>) {
    let mut rng = Rng::new(sim.w.seed, 10);
    let cfg = sim.d.config().clone();
    let past_everything = cfg.session_ttl
        + cfg.session_slack
        + cfg.unreferenced_ttl
        + cfg.direct_lease
        + cfg.deletion_grace
        + Duration::from_secs(60);
    let mut quiet_rounds = 0;
    // A last stray object whose created event is lost: only the reconciler's sweep finds it.
    if sim.w.params.strays > 0.0 && rng.chance(0.5) {
        held.extend(sim.blobs.take_events());
        stray_object(sim, &mut rng);
        for e in sim.blobs.take_events() {
            sim.trace.bump("event.dropped");
            sim.trace
                .log(|| format!("DROP event {}", sim.describe_event(&e)));
        }
    }
    for round in 0..SETTLE_ROUNDS {
        let before = (sim.index.writes(), sim.blobs.writes());
        let mut events = std::mem::take(held);
        events.extend(sim.blobs.take_events());
        let mut doubled = Vec::new();
        for e in &events {
            if rng.chance(sim.w.params.event_dup) {
                doubled.push(e.clone());
            }
        }
        events.extend(doubled);
        rng.shuffle(&mut events);
        for e in &events {
            let _ = deliver(sim, e).await;
            if sim.failed() {
                return;
            }
        }
        sim.clock.advance(past_everything);
        sim.trace.log(|| {
            format!(
                "settle round {round}: clock +{}s",
                past_everything.as_secs()
            )
        });
        reconcile_once(sim).await;
        if sim.failed() {
            return;
        }
        let after = (sim.index.writes(), sim.blobs.writes());
        if before == after && events.is_empty() && sim.blobs.pending_events() == 0 {
            quiet_rounds += 1;
            if quiet_rounds >= 2 {
                return;
            }
        } else {
            quiet_rounds = 0;
        }
    }
    sim.fail(
        "settled",
        "the state still changes after every settle round",
        vec![format!(
            "{SETTLE_ROUNDS} rounds did not reach a fixed point"
        )],
    );
}

// ----------------------------------------------------------------------------------------
// Driving many seeds, shrinking, reporting.

fn workload(seed: u64, drops: &Drops) -> Workload {
    let mut w = generate(seed);
    drops.apply(&mut w);
    w
}

/// Greedy minimiser: drop whole clients, then single steps, keeping each drop that still
/// fails the same way (same kind of violation). The seed (faults, interleaving, events,
/// clock) stays the same, so every candidate is itself a replayable run (`SIM_DROP`).
fn shrink(seed: u64, kind: &'static str) -> (Drops, usize) {
    let full = generate(seed);
    let mut drops = Drops::default();
    let mut runs = 0;
    let mut candidates: Vec<(usize, Option<usize>)> =
        full.clients.iter().rev().map(|c| (c.idx, None)).collect();
    for c in full.clients.iter().rev() {
        candidates.extend(c.steps.iter().rev().map(|s| (c.idx, Some(s.id))));
    }
    for _pass in 0..3 {
        let mut progressed = false;
        for cand in &candidates {
            if runs >= SHRINK_BUDGET {
                break;
            }
            if drops.0.contains(cand) || drops.0.contains(&(cand.0, None)) {
                continue;
            }
            let mut trial = drops.clone();
            trial.0.insert(*cand);
            let r = run(workload(seed, &trial), Opts::new(false));
            runs += 1;
            if r.failure.as_ref().is_some_and(|f| f.kind == kind) {
                drops = trial;
                progressed = true;
            }
        }
        if !progressed || runs >= SHRINK_BUDGET {
            break;
        }
    }
    (drops, runs)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn print_workload(w: &Workload) {
    eprintln!("contents:");
    for (i, (c, h)) in w.contents.iter().zip(&w.hashes).enumerate() {
        eprintln!("  C{i} = {h} ({} bytes)", c.len());
    }
    for c in &w.clients {
        eprintln!("  client c{} as {}:", c.idx, c.user);
        for s in &c.steps {
            eprintln!("    #{} {}", s.id, describe(c.idx, &s.action));
        }
    }
}

fn report(seed: u64, drops: &Drops, f: &Failure, trace: &[String]) -> String {
    let replay = if drops.0.is_empty() {
        format!("SIM_SEED={seed}")
    } else {
        format!("SIM_SEED={seed} SIM_DROP={}", drops.render())
    };
    eprintln!("\n==================== SIMULATION FAILURE ====================");
    eprintln!("seed {seed}: {} invariant violated", f.kind);
    eprintln!("at: {}", f.context);
    for v in &f.violations {
        eprintln!("  - {v}");
    }
    eprintln!(
        "replay: {replay} cargo test -p audio-dedup-core --test simulation simulate_seeds -- --nocapture"
    );
    print_workload(&workload(seed, drops));
    eprintln!("trace ({} lines):", trace.len());
    for l in trace {
        eprintln!("  {l}");
    }
    eprintln!("============================================================\n");
    format!(
        "seed {seed} violates {}: {:?} (replay: {replay})",
        f.kind, f.violations
    )
}

struct Batch {
    seeds_run: u64,
    first_failure: Option<(u64, Failure)>,
    counters: BTreeMap<&'static str, u64>,
    elapsed: Duration,
}

/// Runs `start..start+count` on worker threads. On a failure, workers stop taking new seeds
/// but finish the ones they hold, so the reported seed is the lowest failing one.
fn run_seeds(start: u64, count: u64, threads: usize) -> Batch {
    // SIM_KEEP_GOING=1: survey mode, list every failing seed instead of stopping at the first.
    let keep_going = std::env::var("SIM_KEEP_GOING").as_deref() == Ok("1");
    let t0 = Instant::now();
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let found: Mutex<Option<(u64, Failure)>> = Mutex::default();
    let totals: Mutex<BTreeMap<&'static str, u64>> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= start + count {
                    break;
                }
                let r = run(generate(seed), Opts::new(false));
                done.fetch_add(1, Ordering::SeqCst);
                {
                    let mut t = lock(&totals);
                    for (k, v) in r.counters {
                        *t.entry(k).or_insert(0) += v;
                    }
                }
                if let Some(f) = r.failure {
                    if keep_going {
                        eprintln!(
                            "FAILING seed {seed} ({:?}): {} {:?}",
                            generate(seed).params.shape,
                            f.kind,
                            f.violations
                        );
                    }
                    let mut found = lock(&found);
                    if found.as_ref().is_none_or(|(s, _)| seed < *s) {
                        *found = Some((seed, f));
                    }
                    stop.store(!keep_going, Ordering::SeqCst);
                }
            });
        }
    });
    Batch {
        seeds_run: done.load(Ordering::SeqCst),
        first_failure: found.into_inner().unwrap_or_else(|p| p.into_inner()),
        counters: totals.into_inner().unwrap_or_else(|p| p.into_inner()),
        elapsed: t0.elapsed(),
    }
}

#[test]
fn simulate_seeds() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let drops = Drops::parse(&std::env::var("SIM_DROP").unwrap_or_default());
        let w = workload(seed, &drops);
        let r = run(w.clone(), Opts::new(true));
        match &r.failure {
            Some(f) => panic!("{}", report(seed, &drops, f, &r.trace)),
            None => {
                print_workload(&w);
                for l in &r.trace {
                    eprintln!("  {l}");
                }
                eprintln!(
                    "seed {seed}: ok ({} trace lines, digest {:016x})",
                    r.trace.len(),
                    r.digest
                );
            }
        }
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("SIM_START").unwrap_or(0);
    let threads = env_u64("SIM_THREADS").map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n as usize,
    );
    let b = run_seeds(start, count, threads);
    let secs = b.elapsed.as_secs_f64();
    eprintln!(
        "simulation: {} seeds from {start} in {secs:.1}s on {threads} threads ({:.0} seeds/s)",
        b.seeds_run,
        b.seeds_run as f64 / secs.max(1e-9)
    );
    eprintln!("coverage: {:?}", b.counters);
    if let Some((seed, f)) = b.first_failure {
        eprintln!(
            "first failing seed: {seed} ({} seeds from {start} up to and including it); {} violated: {:?}",
            seed - start + 1,
            f.kind,
            f.violations
        );
        let drops = if std::env::var("SIM_SHRINK").as_deref() == Ok("0") {
            Drops::default()
        } else {
            let (drops, runs) = shrink(seed, f.kind);
            eprintln!("shrunk in {runs} runs: dropped [{}]", drops.render());
            drops
        };
        // Run it again with the trace on; the run is deterministic, so it fails the same way.
        let traced = run(workload(seed, &drops), Opts::new(true));
        match &traced.failure {
            Some(tf) => panic!("{}", report(seed, &drops, tf, &traced.trace)),
            None => panic!(
                "seed {seed} failed ({f:?}) but its traced replay passed: the run is not deterministic"
            ),
        }
    }
}

/// The same seed gives the same run: same trace, same final state, same verdict; and
/// neither the trace nor handing `safety` the whole dump (tombstones included) changes it.
#[test]
fn replays_are_deterministic() {
    for seed in [0, 1, 2, 3, 17, 99, 1234, 4242] {
        let traced = Opts {
            traced: true,
            full_check: false,
        };
        let a = run(generate(seed), traced);
        let b = run(generate(seed), traced);
        let full = run(
            generate(seed),
            Opts {
                full_check: true,
                ..traced
            },
        );
        let quiet = run(
            generate(seed),
            Opts {
                traced: false,
                full_check: false,
            },
        );
        assert!(a.trace.len() > 20, "seed {seed}: a trivial run");
        assert_eq!(a.trace, b.trace, "seed {seed}: traces differ");
        assert_eq!(a.digest, b.digest, "seed {seed}: runs differ");
        assert_eq!(
            a.digest, full.digest,
            "seed {seed}: the full-dump check differs"
        );
        let verdict = |r: &RunResult| r.failure.as_ref().map(|f| f.violations.clone());
        assert_eq!(verdict(&a), verdict(&full), "seed {seed}: verdicts differ");
        assert_eq!(
            verdict(&a),
            verdict(&quiet),
            "seed {seed}: tracing changed the run"
        );
        assert_eq!(
            a.counters, quiet.counters,
            "seed {seed}: tracing changed the run"
        );
    }
}

/// The workload reaches every flow and every fault, so a passing run means something.
#[test]
fn workload_exercises_every_flow_and_fault() {
    let b = run_seeds(100_000, 300, 2);
    if let Some((seed, f)) = &b.first_failure {
        panic!("seed {seed} failed: {f:?}");
    }
    for name in [
        "flood.refused",
        "upload.stored",
        "upload.deduplicated",
        "session.opened",
        "session.put_created",
        "session.put_exists",
        "session.completed",
        "session.completed_by_proof",
        "session.proof_refused",
        "session.abandoned_before_put",
        "session.abandoned_after_put",
        "session.url_expired",
        "reference.added",
        "reference.removed",
        "reference.count_shards_opened",
        "message.created",
        "message.replayed",
        "message.deleted",
        "message.forwarded",
        "message.forward_refused",
        "member.added",
        "member.removed",
        "member.left",
        "read.marked_at_head",
        "read.marked_behind",
        "read.unchanged",
        "read.checked",
        "read.over_counted",
        "message.chatter",
        "reconcile.snapshots_purged",
        "client.retry_step",
        "client.retry_after_5xx",
        "client.final_retry",
        "fault.fail_before",
        "fault.lose_response",
        "fault.conflict",
        "index.conflict_model_seeds",
        "index.modelled_conflicts",
        "fault.crash",
        "fault.slow_call",
        "event.delivered",
        "event.dropped",
        "event.delayed",
        "event.duplicated",
        "reconcile.deletions_finished",
        "reconcile.pending_resolved",
        "reconcile.sessions_expired",
        "reconcile.unreferenced_deleted",
        "reconcile.orphans_deleted",
        "event.deleted_object",
        "stray.put",
        "reconcile.activated",
        "clock.big_jump",
    ] {
        assert!(
            b.counters.get(name).copied().unwrap_or(0) > 0,
            "never happened in 300 seeds: {name}; counters {:?}",
            b.counters
        );
    }
}
