//! The audio side of the reconciler's pass (`crate::dedup::reconcile`): finishes
//! deletions, resolves claims whose lease ran out, expires sessions and unreferenced audio,
//! and adopts or deletes objects the index does not account for. Every step is one of the
//! idempotent flows the API uses.

use super::events::Adoption;
use super::AudioEngine;
use crate::domain::{
    AudioPhase, AudioRecord, AudioState, ContentHash, ReconcileReport, SessionRecord, SessionState,
};
use crate::error::DedupError;
use crate::ports::{BlobStore, ObjectMeta, TransactionalIndex};
use crate::protocol::{keys, ms, Step};

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// One due work item of audio `hash` (`sk` names the record: the audio or a session).
    pub(crate) async fn reconcile_item(
        &self,
        hash: &ContentHash,
        sk: &str,
        report: &mut ReconcileReport,
    ) -> Result<(), DedupError> {
        let hash = *hash;
        if sk == "META" {
            let Some(p) = self.core.load_audio(&hash).await? else {
                return Ok(());
            };
            let due = p.value.due_at().is_some_and(|d| d <= self.core.now());
            match p.value.state() {
                AudioState::Deleting => {
                    self.finish_deletion(&hash).await?;
                    report.deletions_finished += 1;
                }
                AudioState::PendingUpload if due => {
                    self.resolve_pending(&hash).await?;
                    report.pending_resolved += 1;
                }
                AudioState::Active
                    if p.value.refs == 0
                        && due
                        && self
                            .core
                            .cas(|| self.expire_unreferenced_step(&hash))
                            .await? =>
                {
                    self.finish_deletion(&hash).await?;
                    report.unreferenced_deleted += 1;
                }
                _ => {}
            }
        } else if let Some(id) = sk.strip_prefix("SESSION#").and_then(|i| i.parse().ok()) {
            let key = keys::session(&hash, &id);
            if let Some(s) = self.core.load::<SessionRecord>(&key).await? {
                let over = s.value.expires_at + ms(self.core.cfg.session_slack) <= self.core.now();
                if s.value.state == SessionState::Open && over {
                    // An abandoned multipart upload goes first: the session names it.
                    self.drop_parted(&s.value).await?;
                    if self.expire_session(&s.value).await? {
                        report.sessions_expired += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks an open session expired and gives its quota slot back; `false` if it was no
    /// longer open (completed or expired by someone else).
    pub(crate) async fn expire_session(&self, s: &SessionRecord) -> Result<bool, DedupError> {
        let key = keys::session(&s.hash, &s.id);
        self.core
            .cas(|| async {
                let Some(cur) = self.core.load::<SessionRecord>(&key).await? else {
                    return Ok(Step::Done(false));
                };
                if cur.value.state != SessionState::Open {
                    return Ok(Step::Done(false));
                }
                let mut e = cur.value.clone();
                e.state = SessionState::Expired;
                let mut txn = self.core.txn();
                txn.put_session(&e, cur.expect())?;
                self.plan_session_closed(&mut txn, &e.owner).await?;
                Ok(if self.core.commit(txn).await? {
                    Step::Done(true)
                } else {
                    Step::Lost
                })
            })
            .await
    }

    /// An audio object in the blob store: if the index does not account for it (a crash
    /// after the put, a lost event, a slow PUT after its session expired), adopt or delete it.
    pub(crate) async fn sweep_object(
        &self,
        hash: &ContentHash,
        meta: &ObjectMeta,
        report: &mut ReconcileReport,
    ) -> Result<(), DedupError> {
        let hash = *hash;
        let accounted = self.core.load_audio(&hash).await?.is_some_and(|p| {
            p.value.state() == AudioState::Active
                && p.value.blob_version() == Some(meta.version.as_str())
        });
        if accounted {
            return Ok(());
        }
        // A listing may leave out the uploader and checksum (S3 lists without them): the few
        // objects the index does not account for are looked at whole.
        let Some(meta) = self.core.blobs.head(&meta.key).await? else {
            return Ok(());
        };
        match self.adopt_object(&hash, &meta).await {
            Ok(Adoption::Deleted) => report.orphans_deleted += 1,
            Ok(Adoption::Activated) => report.activated += 1,
            Ok(_) => {}
            Err(e) => tracing::warn!(%hash, error = %e, "orphan sweep step failed"),
        }
        Ok(())
    }

    /// A pending claim whose lease ran out: adopt the object if one landed, else drop it.
    async fn resolve_pending(&self, hash: &ContentHash) -> Result<(), DedupError> {
        if let Some(meta) = self.core.blobs.head(&self.core.blob_key(hash)).await? {
            self.adopt_object(hash, &meta).await?;
            return Ok(());
        }
        self.core.cas(|| self.drop_pending_step(hash)).await
    }

    async fn drop_pending_step(&self, hash: &ContentHash) -> Result<Step<()>, DedupError> {
        let Some(p) = self.core.load_audio(hash).await? else {
            return Ok(Step::Done(()));
        };
        if p.value.state() != AudioState::PendingUpload
            || p.value.due_at().is_some_and(|d| d > self.core.now())
        {
            return Ok(Step::Done(()));
        }
        let a = AudioRecord {
            phase: AudioPhase::Gone,
            updated_at: self.core.now(),
            ..p.value.clone()
        };
        let mut txn = self.core.txn();
        txn.stats
            .transition(Some((AudioState::PendingUpload, 0)), (AudioState::Gone, 0));
        txn.put_audio(&a, Some(&p))?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(())
        } else {
            Step::Lost
        })
    }

    async fn expire_unreferenced_step(&self, hash: &ContentHash) -> Result<Step<bool>, DedupError> {
        let Some(p) = self.core.load_audio(hash).await? else {
            return Ok(Step::Done(false));
        };
        let due = p.value.due_at().is_some_and(|d| d <= self.core.now());
        let AudioPhase::Active { blob_version, .. } = &p.value.phase else {
            return Ok(Step::Done(false));
        };
        if p.value.refs != 0 || !due {
            return Ok(Step::Done(false));
        }
        let a = AudioRecord {
            phase: AudioPhase::Deleting {
                blob_version: blob_version.clone(),
            },
            updated_at: self.core.now(),
            ..p.value.clone()
        };
        let mut txn = self.core.txn();
        txn.stats.transition(
            Some((AudioState::Active, p.value.size)),
            (AudioState::Deleting, p.value.size),
        );
        txn.put_audio(&a, Some(&p))?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(true)
        } else {
            Step::Lost
        })
    }
}
