//! Upload sessions: the client PUTs the bytes straight to the blob store with a signed URL,
//! or proves it holds them. Proof of possession: the session carries a challenge (a nonce and
//! byte ranges); the answer is SHA-256(nonce || those ranges). The server checks it with
//! ranged reads of the stored object. A caller without the bytes gets one answer whether or
//! not the content exists (`upload_required`), and the session itself looks the same in both
//! cases, so neither the session nor a failed proof reveals that a hash exists.
//!
//! Against a partial holder (`docs/protocol.md` has the arithmetic): a challenge samples
//! [`PROOF_RANGES`] ranges (the whole file when small); one user gets one standing challenge
//! per content until it is answered or expires, whatever sessions they open; and after
//! `limits.proof_failures` failed answers they are locked out of proving it for a while.
//!
//! Race closed: a session that never completes. Its pending claim has a due time; the
//! reconciler resolves it (adopting an object that did land, or dropping the claim).

use futures_util::{stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::references::Attach;
use super::AudioEngine;
use crate::domain::{
    AudioFormat, AudioPhase, AudioRecord, AudioState, ByteRange, Challenge, ChallengeView,
    ContentHash, PendingReference, Proof, ProverRecord, SessionId, SessionRecord, SessionState,
    UploadResult, UploadSession, Uploader, UserId,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, Expect, PresignPut, TransactionalIndex};
use crate::protocol::codec::{expect_of, Txn};
use crate::protocol::{keys, ms, Step, Versioned};

/// Largest object a single signed PUT may carry (S3's single-part limit). Only a single-part
/// PUT proves the whole-object SHA-256.
pub const MAX_SESSION_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Content up to this size is challenged on all of its bytes.
pub const WHOLE_FILE_PROOF_MAX: u64 = 1024 * 1024;
/// Ranges a challenge samples from larger content: someone missing 10% of the bytes answers
/// it with probability below 2^-20 (docs/protocol.md).
pub const PROOF_RANGES: u64 = 140;
pub const PROOF_RANGE_LEN: u64 = 1024;
/// Ranged reads one proof check keeps in flight.
const PROOF_READS_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub owner: UserId,
    pub hash: ContentHash,
    pub size: u64,
    pub format: AudioFormat,
    pub reference: Option<PendingReference>,
}

#[derive(Debug, Clone)]
pub struct CompleteRequest {
    pub owner: UserId,
    pub hash: ContentHash,
    pub session_id: SessionId,
    /// Hex SHA-256 answer to the session's challenge, to claim content without sending it.
    pub proof: Option<Proof>,
}

/// The answer to a challenge: SHA-256 over the nonce's bytes, then each range's bytes.
pub fn proof_for<'a>(nonce_hex: &str, chunks: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    h.update(hex::decode(nonce_hex).unwrap_or_default());
    for c in chunks {
        h.update(c);
    }
    hex::encode(h.finalize())
}

/// `s`'s challenge as its owner's standing one on this content, living as long as `s`.
/// Failures and a lockout counted on an earlier challenge (`before`) carry over.
fn standing_challenge(s: &SessionRecord, before: Option<&ProverRecord>) -> ProverRecord {
    ProverRecord {
        owner: s.owner.clone(),
        hash: s.hash,
        challenge: s.challenge.clone(),
        expires_at: s.expires_at,
        failures: before.map_or(0, |p| p.failures),
        locked_until: before.and_then(|p| p.locked_until),
        last_session: Some(s.id.clone()),
    }
}

/// The answer for someone else's session and for one that does not exist alike.
pub(super) fn session_not_found() -> DedupError {
    DedupError::refused(
        ErrorCode::SessionNotFound,
        "no such upload session for this caller",
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    pub async fn open_session(&self, req: SessionRequest) -> Result<UploadSession, DedupError> {
        if req.size == 0 || req.size > MAX_SESSION_SIZE {
            return Err(DedupError::refused(
                ErrorCode::InvalidSize,
                format!("size must be between 1 and {MAX_SESSION_SIZE} bytes"),
            ));
        }
        self.check_reference_usable(&req.hash, &req.owner, req.reference.as_ref())
            .await?;
        if let Some(open) = self.reopenable(&req).await? {
            return self.answer_session(&open).await;
        }
        let now = self.core.now();
        let mut id = [0u8; 16];
        self.core.entropy.fill(&mut id);
        let id = SessionId::from_random(id);
        let plan = self.parts_plan(req.size);
        let parts = match plan {
            Some(plan) => Some(self.start_parted(&id, &req.hash, req.format, plan).await?),
            None => None,
        };
        let fresh = SessionRecord {
            id,
            hash: req.hash,
            owner: req.owner.clone(),
            size: req.size,
            format: req.format,
            reference: req.reference.clone(),
            challenge: self.make_challenge(req.size),
            state: SessionState::Open,
            created_at: now,
            expires_at: now + ms(self.session_ttl(req.size)),
            deduplicated: None,
            parts,
            verifying: None,
        };
        match self.core.cas(|| self.open_step(&fresh)).await {
            Ok(rec) => self.answer_session(&rec).await,
            Err(e) => {
                // Refused or failed: the upload this session started is nobody's.
                if let Err(abort) = self.drop_parted(&fresh).await {
                    tracing::warn!(error = %abort, "abandoned multipart upload left to the lifecycle rule");
                }
                Err(e)
            }
        }
    }

    /// How long a session for `size` bytes stays open: parted ones long enough to resume.
    fn session_ttl(&self, size: u64) -> std::time::Duration {
        match self.parts_plan(size) {
            Some(_) => self.core.cfg.parted_session_ttl,
            None => self.core.cfg.session_ttl,
        }
    }

    /// The caller's last session on this content, when a retried open may answer it again:
    /// still open, for the same size, format and reference, with at least half its life left
    /// (so the URL answered again is worth having). Reading it writes nothing.
    async fn reopenable(&self, req: &SessionRequest) -> Result<Option<SessionRecord>, DedupError> {
        let prover = self
            .core
            .load::<ProverRecord>(&keys::prover(&req.hash, &req.owner))
            .await?;
        let Some(id) = prover.and_then(|p| p.value.last_session) else {
            return Ok(None);
        };
        let Some(s) = self
            .core
            .load::<SessionRecord>(&keys::session(&req.hash, &id))
            .await?
        else {
            return Ok(None);
        };
        let s = s.value;
        let left = s.expires_at - self.core.now();
        let same = s.owner == req.owner
            && s.size == req.size
            && s.format == req.format
            && s.reference == req.reference;
        let fresh_enough = left >= ms(self.session_ttl(s.size)) / 2;
        Ok((same && s.state == SessionState::Open && fresh_enough).then_some(s))
    }

    /// The answer for an open session: its URL signed for the rest of its life.
    async fn answer_session(&self, rec: &SessionRecord) -> Result<UploadSession, DedupError> {
        let left = u64::try_from(rec.expires_at - self.core.now()).unwrap_or(0);
        let upload = match &rec.parts {
            Some(_) => None,
            None => Some(
                self.core
                    .blobs
                    .presign_put(&PresignPut {
                        key: self.core.blob_key(&rec.hash),
                        sha256: rec.hash,
                        size: rec.size,
                        content_type: rec.format.content_type(),
                        uploader: Uploader::Session(rec.id.clone()).to_string(),
                        expires_in: std::time::Duration::from_millis(left),
                    })
                    .await?,
            ),
        };
        Ok(UploadSession {
            session_id: rec.id.clone(),
            content_hash: rec.hash,
            upload,
            parts: rec.parts.as_ref().map(|p| p.plan),
            challenge: ChallengeView {
                nonce: rec.challenge.nonce.clone(),
                ranges: rec.challenge.ranges.clone(),
            },
            expires_at: rec.expires_at,
        })
    }

    /// Writes the session, its owner's standing challenge (reused while live) and quota, and
    /// the pending claim the PUT will complete. Returns the session as written.
    async fn open_step(&self, fresh: &SessionRecord) -> Result<Step<SessionRecord>, DedupError> {
        let lease_until = fresh.expires_at + ms(self.core.cfg.session_slack);
        let prev = self.core.load_audio(&fresh.hash).await?;
        let state = prev.as_ref().map_or(AudioState::Gone, |p| p.value.state());
        let mut txn = self.core.txn();
        // Limits first: a refused open writes nothing, not even the claim below.
        let rec = self.plan_standing_challenge(&mut txn, fresh).await?;
        self.plan_session_opened(&mut txn, &rec.owner, rec.size)
            .await?;
        match (state, &prev) {
            (AudioState::Deleting, _) => {
                self.finish_deletion(&fresh.hash).await?;
                return Ok(Step::Again);
            }
            // The claim goes in the session's own transaction, and stored content is checked
            // there: one transaction either way, so the work does not say which it was.
            (AudioState::Gone, _) => self.plan_claim(
                &mut txn,
                &fresh.hash,
                fresh.format,
                prev.as_ref(),
                lease_until - self.core.now(),
            )?,
            (AudioState::PendingUpload, Some(p)) => {
                // Keep the claim alive until this session's URL (plus slack) runs out too.
                let mut a = p.value.clone();
                if let AudioPhase::PendingUpload { due_at } = &mut a.phase {
                    *due_at = (*due_at).max(lease_until);
                }
                self.put_or_check_audio(&mut txn, a, p)?;
            }
            (_, Some(p)) => txn.check(keys::audio(&fresh.hash), p.expect()),
            (_, None) => {}
        }
        txn.put_session(&rec, Expect::Absent)?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(rec)
        } else {
            Step::Lost
        })
    }

    /// The session to write: `fresh`, carrying its owner's live challenge on this content if
    /// there is one (extended to this session's life), else its own new one.
    async fn plan_standing_challenge(
        &self,
        txn: &mut Txn,
        fresh: &SessionRecord,
    ) -> Result<SessionRecord, DedupError> {
        let key = keys::prover(&fresh.hash, &fresh.owner);
        let prev = self.core.load::<ProverRecord>(&key).await?;
        let mut rec = fresh.clone();
        let prover = match prev.as_ref().map(|p| &p.value) {
            Some(p) if p.expires_at > self.core.now() => {
                rec.challenge = p.challenge.clone();
                ProverRecord {
                    expires_at: p.expires_at.max(rec.expires_at),
                    last_session: Some(rec.id.clone()),
                    ..p.clone()
                }
            }
            other => standing_challenge(&rec, other),
        };
        txn.put(key, &prover, expect_of(prev.as_ref()))?;
        Ok(rec)
    }

    fn make_challenge(&self, size: u64) -> Challenge {
        let mut nonce = [0u8; 16];
        self.core.entropy.fill(&mut nonce);
        let ranges = if size <= WHOLE_FILE_PROOF_MAX {
            vec![ByteRange {
                offset: 0,
                length: size,
            }]
        } else {
            let mut r: Vec<ByteRange> = (0..PROOF_RANGES)
                .map(|_| ByteRange {
                    offset: self.core.entropy.next_u64() % (size - PROOF_RANGE_LEN + 1),
                    length: PROOF_RANGE_LEN,
                })
                .collect();
            r.sort_by_key(|r| r.offset);
            r
        };
        Challenge {
            nonce: hex::encode(nonce),
            ranges,
        }
    }

    /// Who opened session `id` on `hash`, if it exists (the local server charges signed
    /// PUTs to them).
    pub async fn session_owner(
        &self,
        hash: &ContentHash,
        id: &SessionId,
    ) -> Result<Option<UserId>, DedupError> {
        Ok(self
            .core
            .load::<SessionRecord>(&keys::session(hash, id))
            .await?
            .map(|s| s.value.owner))
    }

    /// Finishes a session: after the PUT (the stored object must be this session's upload),
    /// or with a proof of possession. Idempotent.
    pub async fn complete(&self, req: CompleteRequest) -> Result<UploadResult, DedupError> {
        let key = keys::session(&req.hash, &req.session_id);
        let Some(s) = self.core.load::<SessionRecord>(&key).await? else {
            return Err(session_not_found());
        };
        if s.value.owner != req.owner {
            return Err(session_not_found());
        }
        match s.value.state {
            SessionState::Completed => {
                return self
                    .completed_result(&req.hash, s.value.deduplicated.unwrap_or(false))
                    .await
            }
            SessionState::Expired => {
                return Err(DedupError::refused(
                    ErrorCode::SessionExpired,
                    "the upload session expired; open a new one",
                ))
            }
            SessionState::Open => {}
        }
        if let Some(proof) = &req.proof {
            return self.core.cas(|| self.prove_step(&s.value, proof)).await;
        }
        if let Some(up) = &s.value.parts {
            self.publish_parted(&s.value, up).await?;
        }
        let blob_key = self.core.blob_key(&req.hash);
        let Some(meta) = self.core.blobs.head(&blob_key).await? else {
            return Err(DedupError::UploadRequired);
        };
        if Uploader::parse(meta.uploader.as_deref()) != Some(Uploader::Session(s.value.id.clone()))
        {
            // Someone else's upload: this caller has not shown it has the bytes.
            return Err(DedupError::UploadRequired);
        }
        self.adopt_object(&req.hash, &meta).await?;
        match self
            .core
            .load::<SessionRecord>(&key)
            .await?
            .map(|s| s.value)
        {
            Some(done) if done.state == SessionState::Completed => {
                self.completed_result(&req.hash, done.deduplicated.unwrap_or(false))
                    .await
            }
            _ => Err(DedupError::UploadRequired),
        }
    }

    async fn prove_step(
        &self,
        s: &SessionRecord,
        proof: &Proof,
    ) -> Result<Step<UploadResult>, DedupError> {
        let now = self.core.now();
        // A challenge is answered within the session's life, whether or not the reconciler
        // has marked it expired yet: an old challenge must not stay open to answer at will.
        if now > s.expires_at {
            return Err(DedupError::refused(
                ErrorCode::SessionExpired,
                "the upload session expired; open a new one",
            ));
        }
        let prover_key = keys::prover(&s.hash, &s.owner);
        let prover = self.core.load::<ProverRecord>(&prover_key).await?;
        if let Some(until) = prover
            .as_ref()
            .and_then(|p| p.value.locked_until)
            .filter(|u| *u > now)
        {
            return Err(DedupError::limited(
                ErrorCode::RateLimited,
                "too many failed proofs of this content; upload the bytes or wait",
                std::time::Duration::from_millis((until - now) as u64),
            ));
        }
        let Some(p) = self.answered_audio(s, proof).await? else {
            return self.record_failed_proof(s, prover.as_ref()).await;
        };
        let mut a = p.value.clone();
        let mut txn = self.core.txn();
        self.plan_attach(
            &mut txn,
            &mut a,
            &s.owner,
            s.reference.as_ref(),
            Attach::Strict,
        )
        .await?;
        self.put_or_check_audio(&mut txn, a.clone(), &p)?;
        let sess_key = keys::session(&s.hash, &s.id);
        let Some(cur) = self.core.load::<SessionRecord>(&sess_key).await? else {
            return Ok(Step::Lost);
        };
        let mut done = cur.value.clone();
        done.state = SessionState::Completed;
        done.deduplicated = Some(true);
        txn.put_session(&done, cur.expect())?;
        if cur.value.state == SessionState::Open {
            self.plan_session_closed(&mut txn, &s.owner).await?;
        }
        if let Some(pr) = &prover {
            // Answered: the next session on this content (another generation) draws afresh.
            let answered = ProverRecord {
                expires_at: now,
                failures: 0,
                ..pr.value.clone()
            };
            txn.put(prover_key, &answered, pr.expect())?;
        }
        Ok(if self.core.commit(txn).await? {
            Step::Done(self.upload_result(&a, true).await?)
        } else {
            Step::Lost
        })
    }

    /// The active audio record if `proof` answers the session's challenge over its stored
    /// bytes; `None` for every other case, absent content included.
    async fn answered_audio(
        &self,
        s: &SessionRecord,
        proof: &Proof,
    ) -> Result<Option<Versioned<AudioRecord>>, DedupError> {
        let Some(p) = self.core.load_audio(&s.hash).await? else {
            return Ok(None);
        };
        let AudioPhase::Active { blob_version, .. } = &p.value.phase else {
            return Ok(None);
        };
        if p.value.size != s.size {
            return Ok(None);
        }
        let key = self.core.blob_key(&s.hash);
        let (blobs, version) = (&self.core.blobs, blob_version.as_str());
        let reads = stream::iter(s.challenge.ranges.clone())
            .map(|r| blobs.read_range(&key, version, r.offset, r.length))
            .buffered(PROOF_READS_IN_FLIGHT);
        let chunks: Vec<Option<bytes::Bytes>> = reads.try_collect().await?;
        let mut held = Vec::with_capacity(chunks.len());
        for (r, chunk) in s.challenge.ranges.iter().zip(chunks) {
            match chunk {
                Some(bytes) if bytes.len() as u64 == r.length => held.push(bytes),
                _ => return Ok(None),
            }
        }
        let expected = proof_for(&s.challenge.nonce, held.iter().map(|c| c.as_ref()));
        Ok(constant_time_eq(expected.as_bytes(), proof.as_str().as_bytes()).then_some(p))
    }

    /// Counts a failed answer against the owner's standing challenge (the same whether or not
    /// the content exists), locking them out of proving it after `limits.proof_failures`.
    async fn record_failed_proof<T>(
        &self,
        s: &SessionRecord,
        prev: Option<&Versioned<ProverRecord>>,
    ) -> Result<Step<T>, DedupError> {
        let limits = &self.core.cfg.limits;
        let mut pr = prev
            .map(|p| p.value.clone())
            .unwrap_or_else(|| standing_challenge(s, None));
        pr.failures += 1;
        if pr.failures >= limits.proof_failures {
            pr.failures = 0;
            pr.locked_until = Some(self.core.now() + ms(limits.proof_lockout));
        }
        let mut txn = self.core.txn();
        txn.put(keys::prover(&s.hash, &s.owner), &pr, expect_of(prev))?;
        if self.core.commit(txn).await? {
            Err(DedupError::UploadRequired)
        } else {
            Ok(Step::Lost)
        }
    }

    async fn completed_result(
        &self,
        hash: &ContentHash,
        deduplicated: bool,
    ) -> Result<UploadResult, DedupError> {
        match self.core.load_audio(hash).await? {
            Some(p) if p.value.state() == AudioState::Active => {
                self.upload_result(&p.value, deduplicated).await
            }
            _ => Err(DedupError::refused(
                ErrorCode::AudioNotFound,
                "the upload completed, but the audio has since been deleted",
            )),
        }
    }
}
