//! What the two services share: the configuration, the store core (typed reads, the
//! transaction builder, compare-and-swap), the index's key layout and the invariants. It
//! imports neither service: [`crate::Dedup`] (`crate::dedup`, the composition root) builds
//! both over one store and runs the reconciler's pass. The flows themselves live in
//! [`crate::audio`] and [`crate::chat`]; docs/protocol.md gives the states, invariants and
//! races, and each flow's module says which it closes.

pub(crate) mod codec;
pub(crate) mod guards;
pub mod invariants;
pub mod keys;

use std::sync::Arc;
use std::time::Duration;

pub use codec::{CountShard, Versioned};

use crate::domain::{ContentHash, Millis};
use crate::error::DedupError;
use crate::ports::{BlobStore, Clock, Entropy, TransactionalIndex};

#[derive(Debug, Clone)]
pub struct DedupConfig {
    /// Prepended to every blob key (`prod/`, `dev/`, or empty).
    pub key_prefix: String,
    /// How long an upload session's URL is valid.
    pub session_ttl: Duration,
    /// Sessions for content larger than this take parts of this size (S3 allows 5 MiB to
    /// 5 GiB a part, at most 10,000 parts); smaller content takes one signed PUT.
    pub part_size: u64,
    /// How long a parted session stays open: long enough to resume a large upload after
    /// the app was killed or the network went away. Part URLs are signed on request.
    pub parted_session_ttl: Duration,
    /// How long one complete call may read a staged object through SHA-256 before it saves
    /// its progress and answers `503 busy` (the next call goes on): inside an HTTP API's
    /// 30 s, whatever the object's size.
    pub verify_budget: Duration,
    /// Extra time after a session's URL expires for a slow PUT to land and be completed.
    pub session_slack: Duration,
    /// Lifetime of download URLs (at most 15 minutes).
    pub download_ttl: Duration,
    /// Delay between the last reference going and deletion. Zero: at once.
    pub deletion_grace: Duration,
    /// How long uploaded content with no reference ever attached is kept.
    pub unreferenced_ttl: Duration,
    /// How long a direct upload may take between claiming the content and activating it.
    pub direct_lease: Duration,
    /// Stats counter shards, each in a partition of its own (at most
    /// `keys::MAX_STATS_SHARDS`). Stats read every one of them: never lower it on a store
    /// that has been written (the shards above the new count would no longer be read).
    pub stats_shards: u64,
    /// Snapshots longer than this (bytes of JSON) go to the blob store, not the index item:
    /// a DynamoDB item holds 400 KB, the message's other attributes included.
    pub snapshot_inline_max: usize,
    /// How long a snapshot object no message records is kept before the sweep deletes it
    /// (a create puts the object, then commits the message).
    pub snapshot_grace: Duration,
    /// How far before `changed_since` a thread's last change still counts as changed in
    /// `GET /v1/positions` (5 min): more than a request's lifetime plus the servers' clock
    /// skew, so a change stamped before an answer's `as_of` but committed after it is never
    /// missed. Threads inside the margin are listed again and found unchanged.
    pub positions_margin: Duration,
    /// Compare-and-swap attempts before answering `busy`.
    pub max_attempts: usize,
    /// Most reference adds to one audio committed in one transaction (1: one per
    /// transaction; adds to one audio still take turns rather than race).
    /// Clamped to 1..=`MAX_ADD_BATCH`, so a batch fits in one index transaction.
    pub max_add_batch: usize,
    /// Count every add on a count shard, opening one on a first attempt too (docs/protocol.md,
    /// "A hot track"). Off in production: an add to audio no one contends then counts on the
    /// audio record, with no extra item; the simulation turns it on in some seeds so the
    /// shard paths run on every add there.
    pub eager_count_shards: bool,
    /// What one user may make the system keep or do.
    pub limits: Limits,
    /// What one reconciler pass may do.
    pub reconcile: ReconcileBudget,
}

/// How much one reconciler pass may do: its cost follows this, not what is stored. What is
/// left is due again at the next pass, which resumes where this one stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileBudget {
    /// Due work items looked at per pass.
    pub work_items: usize,
    /// Blob-store pages swept per pass.
    pub sweep_pages: usize,
    /// Objects per sweep page.
    pub sweep_page_size: usize,
    /// Wall time after which a pass starts nothing new.
    pub time: Duration,
}

impl Default for ReconcileBudget {
    fn default() -> Self {
        Self {
            work_items: 2_000,
            sweep_pages: 10,
            sweep_page_size: 100,
            time: Duration::from_secs(60),
        }
    }
}

/// Per-user limits. Quotas are kept exact in the index, in the transactions that open and
/// close sessions; none costs a write on reference adds or message creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Upload sessions one user may hold open at once.
    pub open_sessions: u32,
    /// Bytes one user may declare in sessions and send in direct uploads per UTC day.
    pub upload_bytes_per_day: u64,
    /// Failed proofs of one content before that user is locked out of proving it.
    pub proof_failures: u32,
    /// How long that lockout lasts.
    pub proof_lockout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            open_sessions: 20,
            upload_bytes_per_day: 20 * 1024 * 1024 * 1024,
            proof_failures: 3,
            proof_lockout: Duration::from_secs(60 * 60),
        }
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            key_prefix: String::new(),
            session_ttl: Duration::from_secs(15 * 60),
            part_size: 8 * 1024 * 1024,
            parted_session_ttl: Duration::from_secs(24 * 60 * 60),
            verify_budget: Duration::from_secs(20),
            session_slack: Duration::from_secs(60 * 60),
            download_ttl: Duration::from_secs(10 * 60),
            deletion_grace: Duration::ZERO,
            unreferenced_ttl: Duration::from_secs(24 * 60 * 60),
            direct_lease: Duration::from_secs(5 * 60),
            stats_shards: 64,
            snapshot_inline_max: 350_000,
            snapshot_grace: Duration::from_secs(15 * 60),
            positions_margin: Duration::from_secs(5 * 60),
            max_attempts: 64,
            max_add_batch: 20,
            eager_count_shards: false,
            limits: Limits::default(),
            reconcile: ReconcileBudget::default(),
        }
    }
}

/// A batch's reference puts, its audio record, the count shard it opens and one stats
/// shard fit in one transaction.
const MAX_ADD_BATCH: usize = crate::ports::MAX_TRANSACTION_OPS - 3;

/// The store both services write through, with the clock and entropy they read.
pub(crate) struct Core<B, I> {
    pub(crate) blobs: B,
    pub(crate) index: I,
    pub(crate) cfg: DedupConfig,
    clock: Arc<dyn Clock>,
    pub(crate) entropy: Arc<dyn Entropy>,
}

impl<B, I> Core<B, I> {
    /// The store core over `blobs` and `index`, with `cfg` held to what a transaction can
    /// take (`max_add_batch`).
    pub(crate) fn new(
        blobs: B,
        index: I,
        cfg: DedupConfig,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Self {
        Self {
            blobs,
            index,
            cfg: DedupConfig {
                max_add_batch: cfg.max_add_batch.clamp(1, MAX_ADD_BATCH),
                ..cfg
            },
            clock,
            entropy,
        }
    }
}

impl<B: BlobStore, I: TransactionalIndex> Core<B, I> {
    pub(crate) fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub(crate) fn blob_key(&self, hash: &ContentHash) -> String {
        keys::blob_key(&self.cfg.key_prefix, hash)
    }

    /// Runs one compare-and-swap step until it is done, backing off between lost races.
    pub(crate) async fn cas<T, F, Fut>(&self, mut step: F) -> Result<T, DedupError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Step<T>, DedupError>>,
    {
        use backon::BackoffBuilder as _;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(50))
            .without_max_times()
            .build();
        for _ in 0..self.cfg.max_attempts {
            match step().await? {
                Step::Done(v) => return Ok(v),
                // State moved on (we helped it, or a lease changed it): look again at once.
                Step::Again => continue,
                Step::Lost => {
                    // Jitter from the entropy port keeps simulations replayable.
                    let base = delays.next().unwrap_or(Duration::from_millis(50));
                    let jitter = 0.5 + (self.entropy.next_u64() % 1000) as f64 / 1000.0;
                    tokio::time::sleep(base.mul_f64(jitter)).await;
                }
            }
        }
        tracing::warn!(
            attempts = self.cfg.max_attempts,
            "compare-and-swap retries exhausted"
        );
        Err(DedupError::Busy)
    }

    pub(crate) fn random_shard(&self) -> u64 {
        self.entropy.next_u64() % self.cfg.stats_shards.clamp(1, keys::MAX_STATS_SHARDS)
    }
}

/// The outcome of one compare-and-swap attempt.
pub(crate) enum Step<T> {
    Done(T),
    /// Lost a race: back off, then read again.
    Lost,
    /// The state changed under us on purpose; read again without waiting.
    Again,
}

pub(crate) fn ms(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}
