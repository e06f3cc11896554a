//! Finishing a deletion. Race closed: a crash between the index write (`Deleting`) and the
//! blob delete. `Deleting` records the exact version to delete, so the step is safe to run
//! any number of times, by anyone (the remover, a re-uploader helping, the removed-object
//! event, the reconciler): a late or duplicate run can never delete a newer upload of the
//! same content, because that upload has a different version id.

use super::AudioEngine;
use crate::domain::{AudioPhase, AudioRecord, AudioState, ContentHash};
use crate::error::DedupError;
use crate::ports::{BlobStore, ObjectMeta, TransactionalIndex};
use crate::protocol::{guards, Step, Versioned};

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// Deletes the recorded version and marks the record `Gone`. No-op unless `Deleting`.
    pub async fn finish_deletion(&self, hash: &ContentHash) -> Result<(), DedupError> {
        self.core.cas(|| self.finish_step(hash)).await
    }

    async fn finish_step(&self, hash: &ContentHash) -> Result<Step<()>, DedupError> {
        let Some(p) = self.core.load_audio(hash).await? else {
            return Ok(Step::Done(()));
        };
        if p.value.state() != AudioState::Deleting {
            return Ok(Step::Done(()));
        }
        let key = self.core.blob_key(hash);
        if !guards::exact_version_delete() {
            if let Some(current) = self.core.blobs.head(&key).await? {
                self.core
                    .blobs
                    .delete_version(&key, &current.version)
                    .await?;
            }
        } else if let Some(version) = p.value.blob_version() {
            self.core.blobs.delete_version(&key, version).await?;
        }
        let mut a = p.value.clone();
        a.phase = AudioPhase::Gone;
        a.refs = 0;
        a.updated_at = self.core.now();
        let mut txn = self.core.txn();
        txn.stats.transition(
            Some((AudioState::Deleting, p.value.size)),
            (AudioState::Gone, 0),
        );
        txn.put_audio(&a, Some(&p))?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(())
        } else {
            Step::Lost
        })
    }

    /// An object under our key that we must not keep (bytes do not match, or nobody claims
    /// it): record it as `Deleting` at its exact version, then delete it.
    pub(crate) async fn quarantine(
        &self,
        hash: &ContentHash,
        prev: Option<&Versioned<AudioRecord>>,
        meta: &ObjectMeta,
    ) -> Result<bool, DedupError> {
        let now = self.core.now();
        let from = prev.map(|p| p.value.clone());
        let a = AudioRecord {
            hash: *hash,
            phase: AudioPhase::Deleting {
                blob_version: meta.version.clone(),
            },
            generation: from.as_ref().map_or(1, |f| f.generation + 1),
            format: from
                .as_ref()
                .map_or(crate::domain::AudioFormat::Mp3, |f| f.format),
            size: meta.size,
            refs: 0,
            updated_at: now,
        };
        let mut txn = self.core.txn();
        txn.stats.transition(
            from.as_ref().map(|f| (f.state(), f.size)),
            (AudioState::Deleting, a.size),
        );
        txn.put_audio(&a, prev)?;
        if !self.core.commit(txn).await? {
            return Ok(false);
        }
        tracing::warn!(%hash, version = %meta.version, "deleting an object nobody may keep");
        self.finish_deletion(hash).await?;
        Ok(true)
    }
}
