//! Adding and removing references. Each reference is its own record, created with an
//! `Absent` condition in the same transaction as the count change, so a retry at any later
//! time is a no-op rather than a second increment (DynamoDB's `ClientRequestToken` only
//! lasts 10 minutes). Removed references stay as tombstones: a retried DELETE answers the
//! same, and a late retried PUT cannot resurrect them.
//!
//! Race closed: the last reference removed while another is added. Both transactions CAS the
//! audio record's version; the add re-reads, sees `Deleting`, and answers 409. Concurrent adds
//! to one audio are batched in-process (`combine`), so they do not lose to each other.
//!
//! A hot track (docs/protocol.md, "A hot track"): adds from many processes at once (one
//! Lambda each) would all compare-and-swap the one audio record. An add that lost once opens
//! one of the audio's count shards instead (one compare-and-swap of the record, which counts
//! the open shard as a `SHARD_TOKEN`); later adds and removals that find an open shard write
//! only that shard, under its version, and never the record. A shard is opened and closed
//! only together with the record, so "a shard is open" implies "the record counts a
//! reference", which implies "the record is active": the deletion argument is unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::join_all;

use super::combine::Turn;
use super::read::audio_not_found;
use super::AudioEngine;
use crate::domain::{
    AudioPhase, AudioRecord, AudioState, ContentHash, HolderRecord, PendingReference, ReferenceId,
    ReferenceKind, ReferenceRecord, ReferenceState, ReferenceView, UserId,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, Expect, TransactionalIndex};
use crate::protocol::codec::{
    direct_refs, expect_of, open_shards, CountShard, Txn, Versioned, SHARD_TOKEN,
};
use crate::protocol::{guards, keys, ms, Step};

/// One reference add waiting in a batch.
#[derive(Debug, Clone)]
pub(crate) struct AddRequest {
    owner: UserId,
    wanted: PendingReference,
    /// What the request read before it queued, so the batch need not read it again.
    seen: Arc<Seen>,
}

/// Reads an add makes while an earlier batch on its audio commits. Each stays valid for the
/// batch: a holder's generation is never taken back; a reference found live or removed was
/// so during the request; a reference found absent is written `Absent`, so if it appeared
/// since, the commit fails and the retry reads afresh.
#[derive(Debug)]
struct Seen {
    holder_generation: Option<u64>,
    reference: Result<Option<ReferenceView>, DedupError>,
}

impl AddRequest {
    fn same_reference(&self, other: &Self) -> bool {
        self.owner == other.owner && self.wanted.ref_id == other.wanted.ref_id
    }
}

pub(crate) type AddAnswer = Result<ReferenceView, DedupError>;

/// Where an add's count goes.
pub(crate) enum AddRoute {
    /// The audio record's own count (its compare-and-swap).
    Direct,
    /// Open shard `n`, read at this version: written alone, the record untouched.
    Shard(u64, Versioned<CountShard>),
    /// Closed shard `n` (as read): opened together with the record.
    Open(u64, Option<Versioned<CountShard>>),
}

/// Where a removal's count comes off.
enum RemoveRoute {
    /// The record's own count (and its transitions at zero).
    Direct,
    /// Shard `n`, which keeps at least one reference: written alone.
    Shard(u64, Versioned<CountShard>),
    /// Shard `n`, whose last reference this is: closed together with the record.
    Close(u64, Versioned<CountShard>),
}

/// Writes open shard `n` (as read in `s`) with `count` references, conditioned on the
/// version read: two writers of one shard must not both succeed (the mutants switch drops the
/// condition, `no-count-shard-guard`).
fn put_shard_count(
    txn: &mut Txn,
    n: u64,
    s: &Versioned<CountShard>,
    count: u64,
) -> Result<(), DedupError> {
    let shard = CountShard {
        count,
        ..s.value.clone()
    };
    let expect = if guards::count_shard_guard() {
        s.expect()
    } else {
        Expect::Any
    };
    txn.put_count_shard(n, &shard, expect)
}

fn is_open(s: &Versioned<CountShard>, a: &AudioRecord) -> bool {
    s.value.count > 0 && s.value.generation == a.generation
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    Strict,
    Lenient,
}

fn view(r: &ReferenceRecord) -> ReferenceView {
    ReferenceView {
        content_hash: r.hash,
        ref_id: r.ref_id.clone(),
        kind: r.kind,
        created_at: r.created_at,
    }
}

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// The audio a live reference (or a live message) holds. It exists by the invariants,
    /// so its absence is a store out of step with itself, not a caller's mistake.
    pub(crate) async fn referenced_audio(
        &self,
        hash: &ContentHash,
    ) -> Result<Versioned<AudioRecord>, DedupError> {
        match self.core.load_audio(hash).await? {
            Some(p) => Ok(p),
            None => Err(live_reference_without_audio(hash)),
        }
    }

    /// Adds a reference owned by `owner`. Requires that `owner` proved possession of the
    /// content in its current generation; otherwise answers 404, as for unknown content.
    ///
    /// Concurrent adds to one audio in this process commit together (see `combine`): one
    /// leader runs a batch of up to `max_add_batch` of them as one transaction.
    pub async fn add_reference(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        ref_id: &ReferenceId,
        kind: ReferenceKind,
    ) -> Result<ReferenceView, DedupError> {
        let wanted = PendingReference {
            kind,
            ref_id: ref_id.clone(),
        };
        let holder_key = keys::holder(hash, owner);
        let (holder, reference) = tokio::join!(
            self.core.load::<HolderRecord>(&holder_key),
            self.existing_reference(hash, owner, &wanted)
        );
        let me = AddRequest {
            owner: owner.clone(),
            wanted,
            seen: Arc::new(Seen {
                holder_generation: holder?.map(|h| h.value.generation),
                reference,
            }),
        };
        let lead = match self.adds.join(*hash, &me).await {
            Turn::Done(answer) => return answer,
            Turn::Lead(lead) => lead,
        };
        let mut batch = vec![me];
        // One request per reference key in a batch: a second add of the same reference
        // waits for the next batch, where it finds the first one's record.
        let others = lead.take(&mut batch, self.core.cfg.max_add_batch, |chosen, r| {
            !chosen.iter().any(|c| c.same_reference(r))
        });
        let first = AtomicBool::new(true);
        let attempt = || self.add_batch_step(hash, &batch, first.swap(false, Ordering::Relaxed));
        let mut answers = match self.core.cas(attempt).await {
            Ok(answers) => answers,
            Err(e) if batch.len() == 1 => vec![Err(e)],
            // One failure is not every add's: each is tried again on its own, so each
            // caller gets its own answer (its own success, refusal or error), not a copy.
            Err(e) => {
                tracing::warn!(%hash, adds = batch.len(), error = %e, "a batch of adds failed; each is tried alone");
                self.add_each_alone(hash, &batch).await
            }
        };
        let mine = answers.remove(0);
        for (taken, answer) in others.into_iter().zip(answers) {
            taken.send(answer);
        }
        drop(lead);
        mine
    }

    /// Runs each add of a failed batch as a batch of its own, all at once.
    async fn add_each_alone(&self, hash: &ContentHash, batch: &[AddRequest]) -> Vec<AddAnswer> {
        join_all(batch.iter().map(|r| async move {
            let one = std::slice::from_ref(r);
            match self
                .core
                .cas(|| self.add_batch_step(hash, one, false))
                .await
            {
                Ok(answers) => answers.into_iter().next().unwrap_or(Err(DedupError::Busy)),
                Err(e) => Err(e),
            }
        }))
        .await
    }

    /// One attempt at a batch of adds to one audio: every request is answered on its own
    /// (404, 409, or its existing reference); the new ones commit in one transaction that
    /// expects the audio record's version, so a racing deletion makes the batch re-read.
    async fn add_batch_step(
        &self,
        hash: &ContentHash,
        batch: &[AddRequest],
        use_seen: bool,
    ) -> Result<Step<Vec<AddAnswer>>, DedupError> {
        let Some(p) = self.core.load_audio(hash).await? else {
            return Ok(Step::Done(
                batch.iter().map(|_| Err(audio_not_found())).collect(),
            ));
        };
        let checks = join_all(batch.iter().map(|r| async {
            let seen = &r.seen;
            if use_seen
                && seen.holder_generation == Some(p.value.generation)
                && p.value.state() != AudioState::Gone
            {
                return match &seen.reference {
                    Ok(existing) => Ok(existing.clone()),
                    Err(e) => Err(e.duplicate()),
                };
            }
            self.check_holds(&r.owner, &p.value).await?;
            self.existing_reference(hash, &r.owner, &r.wanted).await
        }))
        .await;
        let mut answers = Vec::with_capacity(batch.len());
        let mut new = Vec::new();
        for (i, check) in checks.into_iter().enumerate() {
            match check {
                Ok(Some(existing)) => answers.push(Ok(existing)),
                Err(e) => answers.push(Err(e)),
                Ok(None) => {
                    new.push(i);
                    answers.push(Err(DedupError::Busy)); // replaced below
                }
            }
        }
        if new.is_empty() {
            return Ok(Step::Done(answers));
        }
        if p.value.state() != AudioState::Active && guards::state_check() {
            for &i in &new {
                answers[i] = Err(DedupError::refused(
                    ErrorCode::AudioNotActive,
                    format!(
                        "the audio is {}; a reference can only be added to active audio",
                        p.value.state().as_str()
                    ),
                ));
            }
            return Ok(Step::Done(answers));
        }
        let route = self.add_route(&p, use_seen).await?;
        let mut a = p.value.clone();
        let mut txn = self.core.txn();
        for &i in &new {
            let r = &batch[i];
            answers[i] = Ok(self.plan_new_reference(&mut txn, &mut a, &r.owner, &r.wanted)?);
        }
        self.plan_count(&mut txn, route, a, &p, new.len() as u64)?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(answers)
        } else {
            Step::Lost
        })
    }

    /// Plans where `added` new references to `p` (already planned on `a`, `p`'s record with
    /// them counted) are counted: the record, an open shard alone, or a shard opened with
    /// the record.
    pub(crate) fn plan_count(
        &self,
        txn: &mut Txn,
        route: AddRoute,
        mut a: AudioRecord,
        p: &Versioned<AudioRecord>,
        added: u64,
    ) -> Result<(), DedupError> {
        let hash = &p.value.hash;
        match route {
            AddRoute::Direct => self.put_or_check_audio(txn, a, p),
            AddRoute::Shard(n, s) => {
                put_shard_count(txn, n, &s, s.value.count + added)?;
                txn.stats_shard_for(hash, n);
                Ok(())
            }
            AddRoute::Open(n, s) => {
                a.refs = p.value.refs + SHARD_TOKEN;
                let shard = CountShard {
                    hash: *hash,
                    generation: p.value.generation,
                    count: added,
                };
                txn.put_count_shard(n, &shard, expect_of(s.as_ref()))?;
                txn.stats_shard_for(hash, n);
                self.put_or_check_audio(txn, a, p)
            }
        }
    }

    /// Where the count of an add to active audio `p` goes. One random shard is read when
    /// the record has shards open, or when this is a retry (the first attempt lost a race
    /// for the record): an open one takes the add alone; a closed one is opened on a retry.
    /// A first attempt on audio with no open shard counts on the record, as always, so
    /// audio that is not contended costs no extra item.
    pub(crate) async fn add_route(
        &self,
        p: &Versioned<AudioRecord>,
        first: bool,
    ) -> Result<AddRoute, DedupError> {
        let eager = self.core.cfg.eager_count_shards;
        if first && !eager && open_shards(p.value.refs) == 0 {
            return Ok(AddRoute::Direct);
        }
        let n = self.core.entropy.next_u64() % keys::COUNT_SHARDS;
        let s = self
            .core
            .load::<CountShard>(&keys::count_shard(&p.value.hash, n))
            .await?;
        Ok(match s {
            Some(s) if is_open(&s, &p.value) => AddRoute::Shard(n, s),
            _ if first && !eager => AddRoute::Direct,
            s => AddRoute::Open(n, s),
        })
    }

    /// Where the count of a removal from audio `p` comes off. Audio with no open shard: the
    /// record. Otherwise a random shard with two or more references, else (all shards read,
    /// after `p`, so a shard opened or closed since makes the record's condition fail) any
    /// such shard, else the record's own count, else an open shard's last reference.
    async fn remove_route(&self, p: &Versioned<AudioRecord>) -> Result<RemoveRoute, DedupError> {
        let a = &p.value;
        if open_shards(a.refs) == 0 {
            return Ok(RemoveRoute::Direct);
        }
        let n = self.core.entropy.next_u64() % keys::COUNT_SHARDS;
        let one = self
            .core
            .load::<CountShard>(&keys::count_shard(&a.hash, n))
            .await?;
        if let Some(s) = one.filter(|s| is_open(s, a) && s.value.count >= 2) {
            return Ok(RemoveRoute::Shard(n, s));
        }
        let all = join_all((0..keys::COUNT_SHARDS).map(|n| async move {
            let s = self
                .core
                .load::<CountShard>(&keys::count_shard(&a.hash, n))
                .await;
            (n, s)
        }))
        .await;
        let mut open = Vec::new();
        for (n, s) in all {
            if let Some(s) = s?.filter(|s| is_open(s, a)) {
                open.push((n, s));
            }
        }
        if let Some(i) = open.iter().position(|(_, s)| s.value.count >= 2) {
            let (n, s) = open.swap_remove(i);
            return Ok(RemoveRoute::Shard(n, s));
        }
        if direct_refs(a.refs) > 0 {
            return Ok(RemoveRoute::Direct);
        }
        match open.pop() {
            Some((n, s)) => Ok(RemoveRoute::Close(n, s)),
            // The record counts an open shard that the reads did not find: they straddled
            // a change to the record. Nothing is written; the caller retries.
            None => Err(DedupError::Busy),
        }
    }

    /// An existing live reference with the same kind answers as the first add did.
    async fn existing_reference(
        &self,
        hash: &ContentHash,
        owner: &UserId,
        wanted: &PendingReference,
    ) -> Result<Option<ReferenceView>, DedupError> {
        if !guards::reference_items() {
            return Ok(None);
        }
        let Some(r) = self
            .core
            .load::<ReferenceRecord>(&keys::reference(hash, owner, &wanted.ref_id))
            .await?
        else {
            return Ok(None);
        };
        match (r.value.state, r.value.kind == wanted.kind) {
            (ReferenceState::Live, true) => Ok(Some(view(&r.value))),
            (ReferenceState::Live, false) => Err(DedupError::refused(
                ErrorCode::ReferenceKindMismatch,
                format!(
                    "reference {} exists with kind {}",
                    wanted.ref_id,
                    r.value.kind.as_str()
                ),
            )),
            (ReferenceState::Removed, _) => Err(DedupError::refused(
                ErrorCode::ReferenceRemoved,
                format!(
                    "reference {} was removed; reference ids are single-use",
                    wanted.ref_id
                ),
            )),
        }
    }

    /// Plans a reference already checked absent (its `Absent` condition re-checks at commit).
    pub(crate) fn plan_new_reference(
        &self,
        txn: &mut Txn,
        a: &mut AudioRecord,
        owner: &UserId,
        wanted: &PendingReference,
    ) -> Result<ReferenceView, DedupError> {
        let rec = ReferenceRecord {
            hash: a.hash,
            owner: owner.clone(),
            ref_id: wanted.ref_id.clone(),
            kind: wanted.kind,
            state: ReferenceState::Live,
            generation: a.generation,
            created_at: self.core.now(),
            removed_at: None,
        };
        let expect = if guards::reference_items() {
            Expect::Absent
        } else {
            Expect::Any
        };
        txn.put_reference(&rec, expect)?;
        a.refs += 1;
        if let AudioPhase::Active { due_at, .. } = &mut a.phase {
            *due_at = None;
        }
        txn.stats.reference(a.size, 1);
        Ok(view(&rec))
    }

    /// Grants `owner` possession of active record `a` and plans the optional reference.
    /// `Attach::Strict` fails on a conflicting reference (the caller is waiting for the
    /// answer); `Attach::Lenient` (events, sweeps) skips it, so an upload can always be
    /// adopted even if its session's reference was removed meanwhile.
    pub(crate) async fn plan_attach(
        &self,
        txn: &mut Txn,
        a: &mut AudioRecord,
        owner: &UserId,
        reference: Option<&PendingReference>,
        mode: Attach,
    ) -> Result<Option<ReferenceView>, DedupError> {
        self.grant_holder(txn, a, owner).await?;
        let Some(wanted) = reference else {
            return Ok(None);
        };
        // The reference on active record `a` (which the caller then writes): the existing
        // one (a retry), else a new one.
        let planned = match self.existing_reference(&a.hash, owner, wanted).await {
            Ok(Some(existing)) => Ok(existing),
            Ok(None) => self.plan_new_reference(txn, a, owner, wanted),
            Err(e) => Err(e),
        };
        match planned {
            Ok(v) => Ok(Some(v)),
            Err(
                e @ DedupError::Refused {
                    code: ErrorCode::ReferenceKindMismatch | ErrorCode::ReferenceRemoved,
                    ..
                },
            ) if mode == Attach::Lenient => {
                tracing::warn!(hash = %a.hash, %owner, ref_id = %wanted.ref_id, error = %e, "pending reference not attached");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Refuses a reference that can never be attached (removed, or another kind).
    pub(crate) async fn check_reference_usable(
        &self,
        hash: &ContentHash,
        owner: &UserId,
        reference: Option<&PendingReference>,
    ) -> Result<(), DedupError> {
        match reference {
            Some(wanted) => self
                .existing_reference(hash, owner, wanted)
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// Removes the caller's reference. Idempotent: removing a removed reference answers the
    /// same. Removing the last one deletes the audio at once (or after the grace period).
    pub async fn remove_reference(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        ref_id: &ReferenceId,
    ) -> Result<(), DedupError> {
        let became_deleting = self
            .core
            .cas(|| self.remove_step(owner, hash, ref_id))
            .await?;
        if became_deleting {
            // A crash here leaves `Deleting`, which the reconciler and the removed-object
            // event both finish.
            if let Err(e) = self.finish_deletion(hash).await {
                tracing::warn!(%hash, error = %e, "deletion left for the reconciler");
            }
        }
        Ok(())
    }

    /// Plans removing live reference `r` from audio `p`: the reference becomes a tombstone
    /// and the count drops (on the record, or on one of its count shards), both conditioned
    /// on the versions read. Returns whether the audio becomes `Deleting` (the caller then
    /// finishes the deletion after committing).
    pub(crate) async fn plan_remove_reference(
        &self,
        txn: &mut Txn,
        r: &Versioned<ReferenceRecord>,
        p: &Versioned<AudioRecord>,
    ) -> Result<bool, DedupError> {
        match self.remove_route(p).await? {
            RemoveRoute::Direct => self.plan_remove_counted(txn, r, p, 1),
            RemoveRoute::Shard(n, s) => {
                put_shard_count(txn, n, &s, s.value.count - 1)?;
                txn.stats_shard_for(&p.value.hash, n);
                txn.stats.reference(p.value.size, -1);
                self.plan_tombstone(txn, r)?;
                Ok(false)
            }
            RemoveRoute::Close(n, s) => {
                let shard = CountShard {
                    count: 0,
                    ..s.value.clone()
                };
                txn.put_count_shard(n, &shard, s.expect())?;
                txn.stats_shard_for(&p.value.hash, n);
                self.plan_remove_counted(txn, r, p, SHARD_TOKEN)
            }
        }
    }

    fn plan_tombstone(
        &self,
        txn: &mut Txn,
        r: &Versioned<ReferenceRecord>,
    ) -> Result<(), DedupError> {
        let mut removed = r.value.clone();
        removed.state = ReferenceState::Removed;
        removed.removed_at = Some(self.core.now());
        txn.put_reference(&removed, r.expect())
    }

    /// The removal's count comes off the record (`minus`: 1, or a closed shard's token).
    fn plan_remove_counted(
        &self,
        txn: &mut Txn,
        r: &Versioned<ReferenceRecord>,
        p: &Versioned<AudioRecord>,
        minus: u64,
    ) -> Result<bool, DedupError> {
        let now = self.core.now();
        let mut a = p.value.clone();
        a.refs = a.refs.saturating_sub(minus);
        a.updated_at = now;
        txn.stats.reference(a.size, -1);
        let mut deleting = false;
        if let (0, AudioPhase::Active { blob_version, .. }) = (a.refs, &a.phase) {
            if self.core.cfg.deletion_grace.is_zero() {
                a.phase = AudioPhase::Deleting {
                    blob_version: blob_version.clone(),
                };
                txn.stats.transition(
                    Some((AudioState::Active, a.size)),
                    (AudioState::Deleting, a.size),
                );
                deleting = true;
            } else {
                a.phase = AudioPhase::Active {
                    blob_version: blob_version.clone(),
                    due_at: Some(now + ms(self.core.cfg.deletion_grace)),
                };
            }
        }
        let expect = if guards::decrement_guard() {
            p.expect()
        } else {
            Expect::Any
        };
        txn.put_audio_expecting(&a, Some(&p.value), expect)?;
        self.plan_tombstone(txn, r)?;
        Ok(deleting)
    }

    async fn remove_step(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        ref_id: &ReferenceId,
    ) -> Result<Step<bool>, DedupError> {
        let Some(r) = self
            .core
            .load::<ReferenceRecord>(&keys::reference(hash, owner, ref_id))
            .await?
        else {
            return Err(DedupError::refused(
                ErrorCode::ReferenceNotFound,
                "no such reference for this caller",
            ));
        };
        if r.value.state == ReferenceState::Removed {
            return Ok(Step::Done(false));
        }
        let p = self.referenced_audio(hash).await?;
        let mut txn = self.core.txn();
        let deleting = match self.plan_remove_reference(&mut txn, &r, &p).await {
            Ok(deleting) => deleting,
            Err(DedupError::Busy) => return Ok(Step::Lost),
            Err(e) => return Err(e),
        };
        Ok(if self.core.commit(txn).await? {
            Step::Done(deleting)
        } else {
            Step::Lost
        })
    }
}

/// 409 for a message or library item naming audio that is not active.
pub(crate) fn not_attachable(state: AudioState) -> DedupError {
    DedupError::refused(
        ErrorCode::AudioNotActive,
        format!(
            "the audio is {}; only active audio can be attached",
            state.as_str()
        ),
    )
}

fn live_reference_without_audio(hash: &ContentHash) -> DedupError {
    crate::error::StoreError::Corrupt {
        key: keys::audio(hash).to_string(),
        reason: "live reference without audio".into(),
    }
    .into()
}
