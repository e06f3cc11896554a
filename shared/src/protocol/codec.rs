//! Typed records over the index's JSON items, and the transaction builder every flow uses.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{keys, ms, Core};
use crate::domain::{
    AudioPhase, AudioRecord, AudioState, HolderRecord, Millis, ReferenceRecord, SessionRecord,
    SessionState,
};
use crate::error::{DedupError, StoreError};
use crate::ports::{BlobStore, Expect, Item, Key, TransactionalIndex, TxnError, WriteOp};

/// A record as read, with the version a later write must expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

impl<T> Versioned<T> {
    pub fn expect(&self) -> Expect {
        Expect::Version(self.version)
    }
}

pub(crate) fn expect_of<T>(prev: Option<&Versioned<T>>) -> Expect {
    prev.map_or(Expect::Absent, Versioned::expect)
}

pub(crate) fn decode<T: DeserializeOwned>(item: &Item) -> Result<Versioned<T>, StoreError> {
    let value = serde_json::from_str(&item.body).map_err(|e| StoreError::Corrupt {
        key: item.key.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Versioned {
        value,
        version: item.version,
    })
}

impl<B: BlobStore, I: TransactionalIndex> Core<B, I> {
    pub(crate) async fn load<T: DeserializeOwned>(
        &self,
        key: &Key,
    ) -> Result<Option<Versioned<T>>, DedupError> {
        match self.index.get(key).await? {
            Some(item) => Ok(Some(decode(&item)?)),
            None => Ok(None),
        }
    }

    pub(crate) async fn load_audio(
        &self,
        hash: &crate::domain::ContentHash,
    ) -> Result<Option<Versioned<AudioRecord>>, DedupError> {
        self.load(&keys::audio(hash)).await
    }

    pub(crate) fn txn(&self) -> Txn {
        Txn {
            ops: Vec::new(),
            stats: StatsDelta::default(),
            slack: ms(self.cfg.session_slack),
            stats_shard: None,
        }
    }

    /// Commits; `Ok(false)` when a condition failed or a transaction conflicted (nothing written).
    pub(crate) async fn commit(&self, txn: Txn) -> Result<bool, DedupError> {
        let Txn {
            mut ops,
            stats,
            stats_shard,
            ..
        } = txn;
        if !stats.is_zero() {
            let shard = stats_shard
                .map(|s| s % self.cfg.stats_shards.clamp(1, keys::MAX_STATS_SHARDS))
                .unwrap_or_else(|| self.random_shard());
            ops.push(WriteOp::Bump {
                key: keys::stats_shard(shard),
                deltas: stats.deltas(),
            });
        }
        match self.index.transact(ops).await {
            Ok(()) => Ok(true),
            Err(TxnError::Rejected { .. } | TxnError::Conflict) => Ok(false),
            Err(TxnError::Store(e)) => Err(e.into()),
        }
    }
}

/// Changes to the global counters, written in the same transaction as the state change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatsDelta {
    pub active_files: i64,
    pub stored_bytes: i64,
    pub live_refs: i64,
    pub referenced_bytes: i64,
    pub pending: i64,
    pub deleting: i64,
    /// Active files no reference holds (waiting out their grace or lease), and their bytes.
    pub unreferenced_files: i64,
    pub unreferenced_bytes: i64,
}

impl StatsDelta {
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    fn deltas(&self) -> Vec<(&'static str, i64)> {
        [
            ("active_files", self.active_files),
            ("stored_bytes", self.stored_bytes),
            ("live_refs", self.live_refs),
            ("referenced_bytes", self.referenced_bytes),
            ("pending", self.pending),
            ("deleting", self.deleting),
            ("unreferenced_files", self.unreferenced_files),
            ("unreferenced_bytes", self.unreferenced_bytes),
        ]
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .collect()
    }

    /// Counts an audio record leaving state `from` (size `size`) for state `to` (size `to_size`).
    pub fn transition(&mut self, from: Option<(AudioState, u64)>, to: (AudioState, u64)) {
        if let Some((state, size)) = from {
            self.count(state, size, -1);
        }
        self.count(to.0, to.1, 1);
    }

    fn count(&mut self, state: AudioState, size: u64, sign: i64) {
        match state {
            AudioState::PendingUpload => self.pending += sign,
            AudioState::Active => {
                self.active_files += sign;
                self.stored_bytes += sign * size as i64;
            }
            AudioState::Deleting => self.deleting += sign,
            AudioState::Gone => {}
        }
    }

    /// Counts an audio record entering or leaving "active with no reference", from the
    /// record before and after the write, so no flow has to remember to.
    fn unreferenced(&mut self, before: Option<&AudioRecord>, after: &AudioRecord) {
        let unreferenced = |a: &AudioRecord| a.state() == AudioState::Active && a.refs == 0;
        for (a, sign) in before.map(|b| (b, -1)).into_iter().chain([(after, 1)]) {
            if unreferenced(a) {
                self.unreferenced_files += sign;
                self.unreferenced_bytes += sign * a.size as i64;
            }
        }
    }

    pub fn reference(&mut self, size: u64, sign: i64) {
        self.live_refs += sign;
        self.referenced_bytes += sign * size as i64;
    }
}

pub(crate) struct Txn {
    ops: Vec<WriteOp>,
    pub stats: StatsDelta,
    slack: i64,
    /// The stats shard to bump (modulo the shard count); `None`: a random one.
    stats_shard: Option<u64>,
}

/// One of an audio record's reference-count shards (`AUDIO#h / COUNT#nn`). A shard is *open*
/// while `count >= 1`; the audio record then counts it as one [`SHARD_TOKEN`] in `refs`, and
/// `generation` is the record's. See docs/protocol.md, "A hot track".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountShard {
    pub hash: crate::domain::ContentHash,
    pub generation: u64,
    pub count: u64,
}

/// What one open count shard weighs in an audio record's `refs`: `refs` is the references
/// counted on the record itself plus `SHARD_TOKEN` per open shard, so `refs == 0` still
/// means "no reference at all", and each part can be told from the other.
pub const SHARD_TOKEN: u64 = 1 << 32;

/// How many count shards audio with `refs` has open.
pub fn open_shards(refs: u64) -> u64 {
    refs / SHARD_TOKEN
}

/// The references an audio record with `refs` counts on itself.
pub fn direct_refs(refs: u64) -> u64 {
    refs % SHARD_TOKEN
}

impl Txn {
    fn put_json<T: Serialize>(
        &mut self,
        key: Key,
        value: &T,
        expect: Expect,
        work_due: Option<i64>,
    ) -> Result<(), DedupError> {
        let version = match expect {
            Expect::Version(v) => v + 1,
            Expect::Absent | Expect::Any => 1,
        };
        let body = serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        let work_key = work_due.map(|due| keys::work(due, &key));
        self.ops.push(WriteOp::Put {
            item: Item {
                key,
                version,
                body,
                work_key,
            },
            expect,
        });
        Ok(())
    }

    /// Writes an audio record, expecting `prev` (absent if `None`) unless `expect` overrides.
    pub fn put_audio(
        &mut self,
        rec: &AudioRecord,
        prev: Option<&Versioned<AudioRecord>>,
    ) -> Result<(), DedupError> {
        self.put_audio_expecting(rec, prev.map(|p| &p.value), expect_of(prev))
    }

    /// Writes an audio record that was `before`, under condition `expect`.
    pub fn put_audio_expecting(
        &mut self,
        rec: &AudioRecord,
        before: Option<&AudioRecord>,
        expect: Expect,
    ) -> Result<(), DedupError> {
        self.stats.unreferenced(before, rec);
        let due = match &rec.phase {
            AudioPhase::PendingUpload { due_at } => Some(*due_at),
            AudioPhase::Active { due_at, .. } if rec.refs == 0 => *due_at,
            AudioPhase::Deleting { .. } => Some(rec.updated_at),
            _ => None,
        };
        self.put_json(keys::audio(&rec.hash), rec, expect, due)
    }

    pub fn put_reference(
        &mut self,
        rec: &ReferenceRecord,
        expect: Expect,
    ) -> Result<(), DedupError> {
        self.put_json(
            keys::reference(&rec.hash, &rec.owner, &rec.ref_id),
            rec,
            expect,
            None,
        )
    }

    pub fn put_holder(
        &mut self,
        hash: &crate::domain::ContentHash,
        rec: &HolderRecord,
        expect: Expect,
    ) -> Result<(), DedupError> {
        self.put_json(keys::holder(hash, &rec.owner), rec, expect, None)
    }

    pub fn put_session(&mut self, rec: &SessionRecord, expect: Expect) -> Result<(), DedupError> {
        let due = (rec.state == SessionState::Open).then_some(rec.expires_at + self.slack);
        self.put_json(keys::session(&rec.hash, &rec.id), rec, expect, due)
    }

    /// Writes any other record (threads, messages, logs, library items).
    pub fn put<T: Serialize>(
        &mut self,
        key: Key,
        value: &T,
        expect: Expect,
    ) -> Result<(), DedupError> {
        self.put_json(key, value, expect, None)
    }

    /// Writes a record the reconciler must visit at `due`.
    pub fn put_due<T: Serialize>(
        &mut self,
        key: Key,
        value: &T,
        expect: Expect,
        due: Millis,
    ) -> Result<(), DedupError> {
        self.put_json(key, value, expect, Some(due))
    }

    /// Writes count shard `n` of `rec.hash`.
    pub fn put_count_shard(
        &mut self,
        n: u64,
        rec: &CountShard,
        expect: Expect,
    ) -> Result<(), DedupError> {
        self.put_json(keys::count_shard(&rec.hash, n), rec, expect, None)
    }

    /// Bumps the stats shard tied to count shard `n` of `hash`: concurrent writes to one
    /// audio's distinct count shards then bump distinct stats shards (while there are at
    /// least as many stats shards as count shards), so they cannot conflict on stats.
    pub fn stats_shard_for(&mut self, hash: &crate::domain::ContentHash, n: u64) {
        let bytes = hash.as_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes[..8]);
        self.stats_shard = Some(u64::from_le_bytes(first).wrapping_add(n));
    }

    pub fn check(&mut self, key: Key, expect: Expect) {
        self.ops.push(WriteOp::Check { key, expect });
    }
}
