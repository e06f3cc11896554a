//! Blob events and adoption of stored objects. Created-object events, a session's complete
//! call, and the reconciler's sweep all go through `adopt_object`; whichever comes first
//! wins and the rest find nothing to do. Events may be duplicated, late, reordered or lost:
//! every decision is made from the current object's exact version (an event for another
//! version is ignored), never from the event's order.

use super::references::Attach;
use super::AudioEngine;
use crate::domain::{AudioPhase, AudioState, ContentHash, SessionRecord, SessionState, Uploader};
use crate::error::DedupError;
use crate::ports::{BlobEvent, BlobStore, ObjectMeta, TransactionalIndex};
use crate::protocol::{keys, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The object became the content's active object.
    Activated,
    /// Already active; an uploading session was attached if it was not.
    AlreadyActive,
    /// Nobody claims the object, or its bytes do not match the key: it was deleted.
    Deleted,
    /// The event was about a key we do not own, or a version that is no longer current.
    Ignored,
}

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    pub async fn on_blob_event(&self, event: &BlobEvent) -> Result<Adoption, DedupError> {
        match event {
            BlobEvent::Created { key, version, .. } => {
                let Some(hash) = keys::hash_from_blob_key(&self.core.cfg.key_prefix, key) else {
                    tracing::info!(%key, "ignoring created event for a key we do not own");
                    return Ok(Adoption::Ignored);
                };
                match self.core.blobs.head(key).await? {
                    Some(meta) if &meta.version == version => self.adopt_object(&hash, &meta).await,
                    _ => Ok(Adoption::Ignored),
                }
            }
            BlobEvent::Removed { key, version, .. } => {
                let Some(hash) = keys::hash_from_blob_key(&self.core.cfg.key_prefix, key) else {
                    tracing::info!(%key, "ignoring removed event for a key we do not own");
                    return Ok(Adoption::Ignored);
                };
                match self.core.load_audio(&hash).await? {
                    Some(p)
                        if p.value.state() == AudioState::Deleting
                            && p.value.blob_version() == Some(version.as_str()) =>
                    {
                        self.finish_deletion(&hash).await?;
                        Ok(Adoption::Deleted)
                    }
                    _ => Ok(Adoption::Ignored),
                }
            }
        }
    }

    /// Brings the index in line with an object that exists under `hash`'s key.
    pub async fn adopt_object(
        &self,
        hash: &ContentHash,
        meta: &ObjectMeta,
    ) -> Result<Adoption, DedupError> {
        self.core.cas(|| self.adopt_step(hash, meta)).await
    }

    async fn adopt_step(
        &self,
        hash: &ContentHash,
        meta: &ObjectMeta,
    ) -> Result<Step<Adoption>, DedupError> {
        // The session whose signed PUT wrote this object, if it still waits for completion.
        let session = match Uploader::parse(meta.uploader.as_deref()) {
            Some(Uploader::Session(id)) => self
                .core
                .load::<SessionRecord>(&keys::session(hash, &id))
                .await?
                .filter(|s| s.value.state != SessionState::Completed && s.value.size == meta.size),
            _ => None,
        };
        let prev = self.core.load_audio(hash).await?;
        let state = prev.as_ref().map_or(AudioState::Gone, |p| p.value.state());
        match state {
            AudioState::Deleting => {
                self.finish_deletion(hash).await?;
                Ok(Step::Again)
            }
            AudioState::Active => {
                let Some(p) = prev else {
                    return Ok(Step::Again);
                };
                if p.value.blob_version() != Some(meta.version.as_str()) {
                    tracing::warn!(%hash, version = %meta.version, "object version differs from the active one; left alone");
                    return Ok(Step::Done(Adoption::Ignored));
                }
                let Some(s) = session else {
                    return Ok(Step::Done(Adoption::AlreadyActive));
                };
                let mut a = p.value.clone();
                let mut txn = self.core.txn();
                self.complete_uploading_session(&mut txn, &mut a, &s)
                    .await?;
                self.put_or_check_audio(&mut txn, a, &p)?;
                Ok(if self.core.commit(txn).await? {
                    Step::Done(Adoption::AlreadyActive)
                } else {
                    Step::Lost
                })
            }
            AudioState::PendingUpload | AudioState::Gone => {
                // `meta` may be stale (read before this record was). Activate only a version
                // that still exists now: from here on, deleting it needs a write to this
                // record, which our compare-and-swap would see. (Found by the simulation.)
                let Some(fresh) = self
                    .core
                    .blobs
                    .head(&meta.key)
                    .await?
                    .filter(|m| m.version == meta.version)
                else {
                    return Ok(Step::Done(Adoption::Ignored));
                };
                let meta = &fresh;
                let claimed = state == AudioState::PendingUpload || session.is_some();
                if !claimed || !self.verify_object(hash, meta).await? {
                    return Ok(if self.quarantine(hash, prev.as_ref(), meta).await? {
                        Step::Done(Adoption::Deleted)
                    } else {
                        Step::Lost
                    });
                }
                let from = match &prev {
                    Some(p) => p.value.clone(),
                    None => crate::domain::AudioRecord {
                        hash: *hash,
                        phase: AudioPhase::Gone,
                        generation: 0,
                        format: session
                            .as_ref()
                            .map_or(crate::domain::AudioFormat::Mp3, |s| s.value.format),
                        size: 0,
                        refs: 0,
                        updated_at: 0,
                    },
                };
                let mut a = self.activated(&from, meta);
                let mut txn = self.core.txn();
                txn.stats.transition(
                    prev.as_ref().map(|p| (p.value.state(), p.value.size)),
                    (AudioState::Active, a.size),
                );
                if let Some(s) = &session {
                    self.complete_uploading_session(&mut txn, &mut a, s).await?;
                }
                txn.put_audio(&a, prev.as_ref())?;
                Ok(if self.core.commit(txn).await? {
                    Step::Done(Adoption::Activated)
                } else {
                    Step::Lost
                })
            }
        }
    }

    /// Plans the completion of the session whose PUT stored the object: its owner's grant,
    /// its reference (leniently: a removed reference must not block adoption), and the
    /// session marked completed.
    async fn complete_uploading_session(
        &self,
        txn: &mut crate::protocol::codec::Txn,
        a: &mut crate::domain::AudioRecord,
        s: &crate::protocol::Versioned<SessionRecord>,
    ) -> Result<(), DedupError> {
        self.plan_attach(
            txn,
            a,
            &s.value.owner,
            s.value.reference.as_ref(),
            Attach::Lenient,
        )
        .await?;
        if s.value.state == SessionState::Open {
            self.plan_session_closed(txn, &s.value.owner).await?;
        }
        let mut done = s.value.clone();
        done.state = SessionState::Completed;
        done.deduplicated = Some(false);
        txn.put_session(&done, s.expect())
    }
}
