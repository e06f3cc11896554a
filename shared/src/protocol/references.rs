//! Adding and removing references. Each reference is its own record, created with an
//! `Absent` condition in the same transaction as the count change, so a retry at any later
//! time is a no-op rather than a second increment (DynamoDB's `ClientRequestToken` only
//! lasts 10 minutes). Removed references stay as tombstones: a retried DELETE answers the
//! same, and a late retried PUT cannot resurrect them.
//!
//! Race closed: the last reference removed while another is added. Both transactions CAS the
//! audio record's version; the add re-reads, sees `Deleting`, and answers 409.

use super::codec::{expect_of, Txn, Versioned};
use super::{keys, ms, Dedup, Step};
use crate::domain::{
    AudioRecord, AudioState, ContentHash, HolderRecord, PendingReference, ReferenceId,
    ReferenceKind, ReferenceRecord, ReferenceState, ReferenceView, UserId,
};
use crate::error::DedupError;
use crate::ports::{BlobStore, Expect, TransactionalIndex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attach {
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

impl<B: BlobStore, I: TransactionalIndex> Dedup<B, I> {
    /// Adds a reference owned by `owner`. Requires that `owner` proved possession of the
    /// content in its current generation; otherwise answers 404, as for unknown content.
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
        self.cas(|| self.add_step(owner, hash, &wanted)).await
    }

    async fn add_step(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        wanted: &PendingReference,
    ) -> Result<Step<ReferenceView>, DedupError> {
        let p = self.held_audio(owner, hash).await?;
        if let Some(existing) = self.existing_reference(hash, owner, wanted).await? {
            return Ok(Step::Done(existing));
        }
        if p.value.state != AudioState::Active && !cfg!(feature = "mutation-no-state-check") {
            return Err(DedupError::conflict(
                "audio_not_active",
                format!(
                    "the audio is {}; a reference can only be added to active audio",
                    p.value.state.as_str()
                ),
            ));
        }
        let mut a = p.value.clone();
        let mut txn = self.txn();
        let v = self.plan_new_reference(&mut txn, &mut a, owner, wanted)?;
        self.put_or_check_audio(&mut txn, a, &p)?;
        Ok(if self.commit(txn).await? {
            Step::Done(v)
        } else {
            Step::Lost
        })
    }

    /// An existing live reference with the same kind answers as the first add did.
    async fn existing_reference(
        &self,
        hash: &ContentHash,
        owner: &UserId,
        wanted: &PendingReference,
    ) -> Result<Option<ReferenceView>, DedupError> {
        if cfg!(feature = "mutation-no-reference-items") {
            return Ok(None);
        }
        let Some(r) = self
            .load::<ReferenceRecord>(&keys::reference(hash, owner, &wanted.ref_id))
            .await?
        else {
            return Ok(None);
        };
        match (r.value.state, r.value.kind == wanted.kind) {
            (ReferenceState::Live, true) => Ok(Some(view(&r.value))),
            (ReferenceState::Live, false) => Err(DedupError::conflict(
                "reference_kind_mismatch",
                format!(
                    "reference {} exists with kind {}",
                    wanted.ref_id,
                    r.value.kind.as_str()
                ),
            )),
            (ReferenceState::Removed, _) => Err(DedupError::conflict(
                "reference_removed",
                format!(
                    "reference {} was removed; reference ids are single-use",
                    wanted.ref_id
                ),
            )),
        }
    }

    /// Plans a live reference on active record `a` (which the caller then writes), unless
    /// one exists already.
    async fn plan_reference(
        &self,
        txn: &mut Txn,
        a: &mut AudioRecord,
        owner: &UserId,
        wanted: &PendingReference,
    ) -> Result<ReferenceView, DedupError> {
        if let Some(existing) = self.existing_reference(&a.hash, owner, wanted).await? {
            return Ok(existing);
        }
        self.plan_new_reference(txn, a, owner, wanted)
    }

    /// Plans a reference already checked absent (its `Absent` condition re-checks at commit).
    fn plan_new_reference(
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
            created_at: self.now(),
            removed_at: None,
        };
        let expect = if cfg!(feature = "mutation-no-reference-items") {
            Expect::Any
        } else {
            Expect::Absent
        };
        txn.put_reference(&rec, expect)?;
        a.refs += 1;
        a.due_at = None;
        txn.stats.reference(a.size, 1);
        Ok(view(&rec))
    }

    /// Grants `owner` possession of active record `a` and plans the optional reference.
    /// `Attach::Strict` fails on a conflicting reference (the caller is waiting for the
    /// answer); `Attach::Lenient` (events, sweeps) skips it, so an upload can always be
    /// adopted even if its session's reference was removed meanwhile.
    pub(super) async fn plan_attach(
        &self,
        txn: &mut Txn,
        a: &mut AudioRecord,
        owner: &UserId,
        reference: Option<&PendingReference>,
        mode: Attach,
    ) -> Result<Option<ReferenceView>, DedupError> {
        let key = keys::holder(&a.hash, owner);
        let holder = self.load::<HolderRecord>(&key).await?;
        if holder.as_ref().map(|h| h.value.generation) != Some(a.generation) {
            let rec = HolderRecord {
                owner: owner.clone(),
                generation: a.generation,
                granted_at: self.now(),
            };
            txn.put_holder(&a.hash, &rec, expect_of(holder.as_ref()))?;
        }
        let Some(wanted) = reference else {
            return Ok(None);
        };
        match self.plan_reference(txn, a, owner, wanted).await {
            Ok(v) => Ok(Some(v)),
            Err(e @ DedupError::Conflict { .. }) if mode == Attach::Lenient => {
                tracing::warn!(hash = %a.hash, %owner, ref_id = %wanted.ref_id, error = %e, "pending reference not attached");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Refuses a reference that can never be attached (removed, or another kind).
    pub(super) async fn check_reference_usable(
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
        let became_deleting = self.cas(|| self.remove_step(owner, hash, ref_id)).await?;
        if became_deleting {
            // A crash here leaves `Deleting`, which the reconciler and the removed-object
            // event both finish.
            if let Err(e) = self.finish_deletion(hash).await {
                tracing::warn!(%hash, error = %e, "deletion left for the reconciler");
            }
        }
        Ok(())
    }

    /// Plans, in a caller's transaction, the reference a message or library item holds on
    /// audio. The owner must hold the audio (as for the references API) and it must be
    /// active; the audio record's version is part of the transaction, so a deletion racing
    /// this write makes one of the two lose and re-read.
    pub(super) async fn plan_held_reference(
        &self,
        txn: &mut Txn,
        owner: &UserId,
        hash: &ContentHash,
        wanted: &PendingReference,
    ) -> Result<(), DedupError> {
        let p = self.held_audio(owner, hash).await?;
        if p.value.state != AudioState::Active && !cfg!(feature = "mutation-no-state-check") {
            return Err(DedupError::conflict(
                "audio_not_active",
                format!(
                    "the audio is {}; only active audio can be attached",
                    p.value.state.as_str()
                ),
            ));
        }
        let mut a = p.value.clone();
        self.plan_new_reference(txn, &mut a, owner, wanted)?;
        self.put_or_check_audio(txn, a, &p)
    }

    /// Plans dropping the reference a message or library item holds. Returns whether the
    /// audio becomes `Deleting`.
    pub(super) async fn plan_drop_reference(
        &self,
        txn: &mut Txn,
        owner: &UserId,
        hash: &ContentHash,
        ref_id: &ReferenceId,
    ) -> Result<bool, DedupError> {
        let key = keys::reference(hash, owner, ref_id);
        let Some(r) = self.load::<ReferenceRecord>(&key).await? else {
            return Err(crate::error::StoreError::Corrupt {
                key: key.to_string(),
                reason: "a live holder without its reference".into(),
            }
            .into());
        };
        if r.value.state == ReferenceState::Removed {
            return Ok(false);
        }
        let Some(p) = self.load_audio(hash).await? else {
            return Err(live_reference_without_audio(hash));
        };
        self.plan_remove_reference(txn, &r, &p)
    }

    /// Plans removing live reference `r` from audio `p`: the reference becomes a tombstone
    /// and the count drops, both conditioned on the versions read. Returns whether the
    /// audio becomes `Deleting` (the caller then finishes the deletion after committing).
    pub(super) fn plan_remove_reference(
        &self,
        txn: &mut Txn,
        r: &Versioned<ReferenceRecord>,
        p: &Versioned<AudioRecord>,
    ) -> Result<bool, DedupError> {
        let now = self.now();
        let mut a = p.value.clone();
        a.refs = a.refs.saturating_sub(1);
        a.updated_at = now;
        txn.stats.reference(a.size, -1);
        let mut deleting = false;
        if a.refs == 0 {
            if self.cfg.deletion_grace.is_zero() {
                a.state = AudioState::Deleting;
                a.due_at = None;
                txn.stats.transition(
                    Some((AudioState::Active, a.size)),
                    (AudioState::Deleting, a.size),
                );
                deleting = true;
            } else {
                a.due_at = Some(now + ms(self.cfg.deletion_grace));
            }
        }
        let expect = if cfg!(feature = "mutation-no-decrement-guard") {
            Expect::Any
        } else {
            p.expect()
        };
        txn.put_audio_expecting(&a, expect)?;
        let mut removed = r.value.clone();
        removed.state = ReferenceState::Removed;
        removed.removed_at = Some(now);
        txn.put_reference(&removed, r.expect())?;
        Ok(deleting)
    }

    async fn remove_step(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        ref_id: &ReferenceId,
    ) -> Result<Step<bool>, DedupError> {
        let Some(r) = self
            .load::<ReferenceRecord>(&keys::reference(hash, owner, ref_id))
            .await?
        else {
            return Err(DedupError::not_found(
                "reference_not_found",
                "no such reference for this caller",
            ));
        };
        if r.value.state == ReferenceState::Removed {
            return Ok(Step::Done(false));
        }
        let Some(p) = self.load_audio(hash).await? else {
            return Err(live_reference_without_audio(hash));
        };
        let mut txn = self.txn();
        let deleting = self.plan_remove_reference(&mut txn, &r, &p)?;
        Ok(if self.commit(txn).await? {
            Step::Done(deleting)
        } else {
            Step::Lost
        })
    }
}

pub(super) fn live_reference_without_audio(hash: &ContentHash) -> DedupError {
    crate::error::StoreError::Corrupt {
        key: keys::audio(hash).to_string(),
        reason: "live reference without audio".into(),
    }
    .into()
}
