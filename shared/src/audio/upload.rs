//! Direct upload (small files through the API). Races closed here:
//! - two users upload the same new content at once: both claim `PendingUpload` by CAS, the
//!   blob put is put-if-absent, and activation is one CAS, so exactly one object and one
//!   active record result; the loser attaches to the winner's object.
//! - a re-upload while the content is `Deleting`: the uploader finishes the deletion first
//!   (deleting only the recorded version), then starts a new generation.

use std::sync::atomic::{AtomicBool, Ordering};

use super::references::Attach;
use super::AudioEngine;
use crate::domain::{
    AudioFormat, AudioPhase, AudioRecord, AudioState, ContentHash, PendingReference, UploadResult,
    Uploader, UserId,
};
use crate::error::{DedupError, ErrorCode, StoreError};
use crate::ports::{BlobBody, BlobStore, ObjectMeta, PutOutcome, PutRequest, TransactionalIndex};
use crate::protocol::{keys, ms, Step, Versioned};

/// Bytes the caller sent through the API, already hashed while they were spooled.
#[derive(Debug, Clone)]
pub struct DirectUpload {
    pub owner: UserId,
    pub format: AudioFormat,
    pub hash: ContentHash,
    pub size: u64,
    pub body: BlobBody,
    pub reference: Option<PendingReference>,
}

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// Stores the content once, grants the caller possession, and attaches the optional
    /// reference, all idempotently.
    pub async fn upload_direct(&self, up: DirectUpload) -> Result<UploadResult, DedupError> {
        if up.size == 0 {
            return Err(DedupError::refused(
                ErrorCode::EmptyBody,
                "the audio body is empty",
            ));
        }
        self.charge_direct_upload(&up.owner, up.size).await?;
        let created = AtomicBool::new(false);
        self.core.cas(|| self.direct_step(&up, &created)).await
    }

    async fn direct_step(
        &self,
        up: &DirectUpload,
        created: &AtomicBool,
    ) -> Result<Step<UploadResult>, DedupError> {
        let prev = self.core.load_audio(&up.hash).await?;
        let Some(p) = prev
            .as_ref()
            .filter(|p| p.value.state() != AudioState::Gone)
        else {
            return self
                .claim_pending(
                    &up.hash,
                    up.format,
                    prev.as_ref(),
                    ms(self.core.cfg.direct_lease),
                )
                .await;
        };
        match p.value.state() {
            AudioState::Active => {
                self.attach_and_commit(self.core.txn(), p.value.clone(), p, up, created)
                    .await
            }
            AudioState::Deleting => {
                self.finish_deletion(&up.hash).await?;
                Ok(Step::Again)
            }
            AudioState::PendingUpload => {
                let key = self.core.blob_key(&up.hash);
                let put = PutRequest {
                    key: key.clone(),
                    body: up.body.clone(),
                    sha256: up.hash,
                    size: up.size,
                    content_type: up.format.content_type(),
                    uploader: Uploader::Direct.to_string(),
                };
                let meta = match self.core.blobs.put_if_absent(put).await? {
                    PutOutcome::Created { version } => {
                        created.store(true, Ordering::SeqCst);
                        ObjectMeta {
                            key,
                            version,
                            size: up.size,
                            sha256: Some(up.hash),
                            uploader: Some(Uploader::Direct.to_string()),
                            last_modified: self.core.now(),
                        }
                    }
                    PutOutcome::AlreadyExists => match self.core.blobs.head(&key).await? {
                        Some(meta) => meta,
                        None => return Ok(Step::Again),
                    },
                };
                if !self.verify_object(&up.hash, &meta).await? {
                    self.quarantine(&up.hash, prev.as_ref(), &meta).await?;
                    return Ok(Step::Again);
                }
                let a = self.activated(&p.value, &meta);
                let mut txn = self.core.txn();
                txn.stats.transition(
                    Some((AudioState::PendingUpload, 0)),
                    (AudioState::Active, a.size),
                );
                self.attach_and_commit(txn, a, p, up, created).await
            }
            AudioState::Gone => Ok(Step::Again),
        }
    }

    /// Both ends of a direct upload: attaches the caller's reference to active record `a`,
    /// writes `a` over `prev` (or checks `prev` if nothing changed) and commits `txn`.
    async fn attach_and_commit(
        &self,
        mut txn: crate::protocol::codec::Txn,
        mut a: AudioRecord,
        prev: &Versioned<AudioRecord>,
        up: &DirectUpload,
        created: &AtomicBool,
    ) -> Result<Step<UploadResult>, DedupError> {
        let (owner, reference) = (&up.owner, up.reference.as_ref());
        self.plan_attach(&mut txn, &mut a, owner, reference, Attach::Strict)
            .await?;
        self.put_or_check_audio(&mut txn, a.clone(), prev)?;
        if !self.core.commit(txn).await? {
            return Ok(Step::Lost);
        }
        let created = created.load(Ordering::SeqCst);
        Ok(Step::Done(self.upload_result(&a, !created).await?))
    }

    /// Claims absent or gone content as `PendingUpload` for `lease_ms`: the fence that makes a
    /// later activation a compare-and-swap against this exact claim.
    pub(crate) async fn claim_pending<T>(
        &self,
        hash: &ContentHash,
        format: AudioFormat,
        prev: Option<&Versioned<AudioRecord>>,
        lease_ms: i64,
    ) -> Result<Step<T>, DedupError> {
        let mut txn = self.core.txn();
        self.plan_claim(&mut txn, hash, format, prev, lease_ms)?;
        Ok(if self.core.commit(txn).await? {
            Step::Again
        } else {
            Step::Lost
        })
    }

    /// Plans the claim of absent or gone content as `PendingUpload` for `lease_ms` in `txn`.
    pub(crate) fn plan_claim(
        &self,
        txn: &mut crate::protocol::codec::Txn,
        hash: &ContentHash,
        format: AudioFormat,
        prev: Option<&Versioned<AudioRecord>>,
        lease_ms: i64,
    ) -> Result<(), DedupError> {
        let now = self.core.now();
        let a = AudioRecord {
            hash: *hash,
            phase: AudioPhase::PendingUpload {
                due_at: now + lease_ms,
            },
            generation: prev.map_or(0, |p| p.value.generation) + 1,
            format,
            size: 0,
            refs: 0,
            updated_at: now,
        };
        txn.stats.transition(None, (AudioState::PendingUpload, 0));
        txn.put_audio(&a, prev)
    }

    /// The active record for a verified object, from a pending (or gone) record.
    pub(crate) fn activated(&self, from: &AudioRecord, meta: &ObjectMeta) -> AudioRecord {
        let now = self.core.now();
        let generation = match from.state() {
            AudioState::PendingUpload => from.generation,
            _ => from.generation + 1,
        };
        AudioRecord {
            hash: from.hash,
            phase: AudioPhase::Active {
                blob_version: meta.version.clone(),
                due_at: Some(now + ms(self.core.cfg.unreferenced_ttl)),
            },
            generation,
            format: from.format,
            size: meta.size,
            refs: 0,
            updated_at: now,
        }
    }

    /// Writes `a` if attaching changed it, else only checks `prev` is still current.
    pub(crate) fn put_or_check_audio(
        &self,
        txn: &mut crate::protocol::codec::Txn,
        mut a: AudioRecord,
        prev: &Versioned<AudioRecord>,
    ) -> Result<(), DedupError> {
        if a == prev.value {
            txn.check(keys::audio(&a.hash), prev.expect());
            Ok(())
        } else {
            a.updated_at = self.core.now();
            txn.put_audio(&a, Some(prev))
        }
    }

    /// Whether the object's bytes hash to the content's key.
    pub(crate) async fn verify_object(
        &self,
        hash: &ContentHash,
        meta: &ObjectMeta,
    ) -> Result<bool, DedupError> {
        if meta.size == 0 {
            return Ok(false);
        }
        let actual = match meta.sha256 {
            Some(h) => Some(h),
            None => {
                self.core
                    .blobs
                    .stream_sha256(&meta.key, &meta.version)
                    .await?
            }
        };
        Ok(actual == Some(*hash))
    }

    pub(crate) async fn upload_result(
        &self,
        a: &AudioRecord,
        deduplicated: bool,
    ) -> Result<UploadResult, DedupError> {
        let (url, url_expires_at) = self.download_url(a).await?;
        Ok(UploadResult {
            content_hash: a.hash,
            format: a.format,
            size: a.size,
            url,
            url_expires_at,
            deduplicated,
            state: a.state(),
        })
    }

    pub(crate) async fn download_url(&self, a: &AudioRecord) -> Result<(String, i64), DedupError> {
        let AudioPhase::Active { blob_version, .. } = &a.phase else {
            // Callers serve only active audio; anything else is a store out of step.
            return Err(StoreError::Corrupt {
                key: keys::audio(&a.hash).to_string(),
                reason: format!("a download of {} audio", a.state().as_str()),
            }
            .into());
        };
        let version = blob_version.as_str();
        let signed = self
            .core
            .blobs
            .presign_get(
                &self.core.blob_key(&a.hash),
                version,
                a.format.content_type(),
                self.core.cfg.download_ttl,
            )
            .await?;
        Ok((signed.url, signed.expires_at))
    }
}
