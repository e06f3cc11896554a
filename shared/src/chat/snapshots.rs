//! Snapshot objects: a deleted message's is purged, and one that no message records (a
//! create that failed or died after putting it) is swept by the reconciler.

use super::ChatService;
use crate::domain::{EntryState, MessageId, MessageRecord, SnapshotStore};
use crate::error::DedupError;
use crate::ports::{BlobStore, Expect, ObjectMeta, TransactionalIndex};
use crate::protocol::{keys, ms, Step};

/// The sweep's fence on one snapshot object version (see `sweep_snapshot`).
#[derive(serde::Serialize)]
struct FenceRecord {
    at: crate::domain::Millis,
}

impl<B: BlobStore, I: TransactionalIndex> ChatService<B, I> {
    /// Deletes a deleted message's snapshot object, then records that it is gone.
    pub(crate) async fn purge_snapshot(&self, id: &MessageId) -> Result<(), DedupError> {
        self.core.cas(|| self.purge_step(id)).await
    }

    async fn purge_step(&self, id: &MessageId) -> Result<Step<()>, DedupError> {
        let Some(m) = self.core.load::<MessageRecord>(&keys::message(id)).await? else {
            return Ok(Step::Done(()));
        };
        let SnapshotStore::Blob { key, version } = &m.value.snapshot else {
            return Ok(Step::Done(()));
        };
        if m.value.state != EntryState::Deleted {
            return Ok(Step::Done(()));
        }
        self.core.blobs.delete_version(key, version).await?;
        let mut purged = m.value.clone();
        purged.snapshot = SnapshotStore::Purged;
        let mut txn = self.core.txn();
        txn.put(keys::message(id), &purged, m.expect())?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(())
        } else {
            Step::Lost
        })
    }

    /// A snapshot object no message records: a create that failed or died after putting it.
    /// If its message exists, it never will (a message is created once): delete it. If not,
    /// wait out the grace, then fence the version in the index (conditioned on the message
    /// still being absent) before deleting, so a slow create can never commit a message
    /// that records a deleted object. A deleted message's object is purged.
    pub(crate) async fn sweep_snapshot(
        &self,
        id: &MessageId,
        meta: &ObjectMeta,
    ) -> Result<bool, DedupError> {
        let m = self.core.load::<MessageRecord>(&keys::message(id)).await?;
        if let Some(m) = &m {
            let recorded = matches!(&m.value.snapshot,
                SnapshotStore::Blob { key, version } if key == &meta.key && version == &meta.version);
            if recorded {
                if m.value.state == EntryState::Live {
                    return Ok(false);
                }
                self.purge_snapshot(id).await?;
                return Ok(true);
            }
        } else {
            if self.core.now() - meta.last_modified < ms(self.core.cfg.snapshot_grace) {
                return Ok(false);
            }
            let fence = keys::snapshot_fence(id, &meta.version);
            if self.core.index.get(&fence).await?.is_none() {
                let mut txn = self.core.txn();
                txn.check(keys::message(id), Expect::Absent);
                txn.put(
                    fence,
                    &FenceRecord {
                        at: self.core.now(),
                    },
                    Expect::Absent,
                )?;
                if !self.core.commit(txn).await? {
                    return Ok(false); // a create committed, or another sweep fenced it
                }
            }
        }
        self.core
            .blobs
            .delete_version(&meta.key, &meta.version)
            .await?;
        Ok(true)
    }
}
