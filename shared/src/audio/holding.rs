//! The capability the chat service holds audio through, and all it may do with it: check
//! that audio can be held, plan holding a reference in the caller's transaction, plan
//! dropping one, finish a deletion a drop started, and describe audio a message shares.
//! The audio records, holders and counters stay the engine's.

use super::read::audio_not_found;
use super::references::not_attachable;
use super::AudioEngine;
use crate::domain::{
    AudioRecord, AudioState, AudioView, ContentHash, HolderRecord, PendingReference, ReferenceId,
    ReferenceRecord, ReferenceState, UserId,
};
use crate::error::DedupError;
use crate::ports::{BlobStore, TransactionalIndex};
use crate::protocol::codec::{expect_of, Txn};
use crate::protocol::{guards, keys};

/// How the owner of a new reference came to the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Possession {
    /// They hold it (uploaded it or proved possession): the holder check applies.
    Held,
    /// A live message they can read shares it (the chat service checked that, and puts the
    /// message's version in the same transaction): they become a holder of its current
    /// generation.
    Shared,
}

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// What `plan_hold_reference` would refuse, checked ahead of work that writes before
    /// it (staging a snapshot): the owner may hold the audio, and it is active.
    pub(crate) async fn check_holdable(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        possession: Possession,
    ) -> Result<(), DedupError> {
        let a = match possession {
            Possession::Held => self.held_audio(owner, hash).await?,
            Possession::Shared => self.referenced_audio(hash).await?,
        };
        if a.value.state() != AudioState::Active {
            return Err(not_attachable(a.value.state()));
        }
        Ok(())
    }

    /// Plans, in a caller's transaction, the reference a message or library item holds on
    /// audio; it must be active. The audio record's version is part of the transaction, so
    /// a deletion racing this write makes one of the two lose and re-read.
    pub(crate) async fn plan_hold_reference(
        &self,
        txn: &mut Txn,
        owner: &UserId,
        hash: &ContentHash,
        possession: Possession,
        wanted: &PendingReference,
    ) -> Result<(), DedupError> {
        let p = match possession {
            Possession::Held => {
                let p = self.held_audio(owner, hash).await?;
                if p.value.state() != AudioState::Active && guards::state_check() {
                    return Err(not_attachable(p.value.state()));
                }
                p
            }
            Possession::Shared => {
                let p = self.referenced_audio(hash).await?;
                if p.value.state() != AudioState::Active {
                    // Only a store out of step reaches here: the live message holds a
                    // reference.
                    return Err(audio_not_found());
                }
                p
            }
        };
        // On audio with open count shards, the count may go to one of them alone, so a
        // message create does not contend for the record (docs/protocol.md, "A hot track").
        let route = self.add_route(&p, true).await?;
        let mut a: AudioRecord = p.value.clone();
        if possession == Possession::Shared {
            self.grant_holder(txn, &a, owner).await?;
        }
        self.plan_new_reference(txn, &mut a, owner, wanted)?;
        self.plan_count(txn, route, a, &p, 1)
    }

    /// Plans dropping the reference a message or library item holds. Returns whether the
    /// audio becomes `Deleting`.
    pub(crate) async fn plan_drop_reference(
        &self,
        txn: &mut Txn,
        owner: &UserId,
        hash: &ContentHash,
        ref_id: &ReferenceId,
    ) -> Result<bool, DedupError> {
        let key = keys::reference(hash, owner, ref_id);
        let Some(r) = self.core.load::<ReferenceRecord>(&key).await? else {
            return Err(crate::error::StoreError::Corrupt {
                key: key.to_string(),
                reason: "a live holder without its reference".into(),
            }
            .into());
        };
        if r.value.state == ReferenceState::Removed {
            return Ok(false);
        }
        let p = self.referenced_audio(hash).await?;
        self.plan_remove_reference(txn, &r, &p).await
    }

    /// Finishes a deletion that a dropped reference started (the reconciler does if not).
    pub(crate) async fn finish_dropped(&self, deleting: Option<ContentHash>) {
        if let Some(hash) = deleting {
            if let Err(e) = self.finish_deletion(&hash).await {
                tracing::warn!(%hash, error = %e, "deletion left for the reconciler");
            }
        }
    }

    /// Active audio a message shares, with a short-lived URL for its exact version; `None`
    /// if it is not active (a store out of step: a live message holds a live reference).
    pub(crate) async fn shared_audio(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<AudioView>, DedupError> {
        let a = self.referenced_audio(hash).await?;
        if a.value.state() != AudioState::Active {
            return Ok(None);
        }
        self.view_with_url(&a.value).await.map(Some)
    }

    /// Makes `owner` a holder of `a`'s current generation, unless they are already.
    pub(crate) async fn grant_holder(
        &self,
        txn: &mut Txn,
        a: &AudioRecord,
        owner: &UserId,
    ) -> Result<(), DedupError> {
        let holder = self
            .core
            .load::<HolderRecord>(&keys::holder(&a.hash, owner))
            .await?;
        if holder.as_ref().map(|h| h.value.generation) != Some(a.generation) {
            let rec = HolderRecord {
                owner: owner.clone(),
                generation: a.generation,
                granted_at: self.core.now(),
            };
            txn.put_holder(&a.hash, &rec, expect_of(holder.as_ref()))?;
        }
        Ok(())
    }
}
