//! Large uploads in parts. A session for content above `cfg.part_size` starts a multipart
//! upload under a staging key (`keys::staging_blob_key`), never under the content's key.
//! The client asks for each part's signed PUT with the part's SHA-256 and length, which the
//! blob store checks as the part arrives; it can ask which parts the store holds (to resume
//! after a kill) and send only the rest.
//!
//! Completing assembles the parts, then checks the whole object's SHA-256 on the server side
//! (S3 keeps only a checksum of part checksums for multipart objects), and only then copies
//! it under the content's key with if-none-match. An object whose whole hash does not match
//! is deleted and never appears under the hash. From there on it is the single PUT's path:
//! the object names the session as its uploader and is adopted as one.
//!
//! The session's open slot and declared bytes count against the owner's quota until it
//! completes or the reconciler expires it; expiring aborts the upload and deletes what was
//! staged.

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};

use super::AudioEngine;
use crate::domain::{
    AudioFormat, ContentHash, Part, PartUpload, PartedUpload, PartsPlan, PartsView, SessionId,
    SessionRecord, SessionState, Uploader, UserId, VerifyProgress,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{
    BlobStore, MultipartRef, ObjectMeta, PresignPart, PutOutcome, StartParts, TransactionalIndex,
};
use crate::protocol::keys;

/// Parts one request may ask signed URLs for.
pub const MAX_PARTS_PER_REQUEST: usize = 100;
/// S3 takes at most this many parts in one upload.
pub const MAX_PARTS: u32 = 10_000;

/// Part URLs asked for in one request: numbers in the session's plan, each at most once,
/// each with exactly the length the plan gives it.
#[derive(Debug, Clone)]
pub struct PartsRequest {
    pub owner: UserId,
    pub hash: ContentHash,
    pub session_id: SessionId,
    pub parts: Vec<Part>,
}

fn invalid_part(message: impl Into<String>) -> DedupError {
    DedupError::refused(ErrorCode::InvalidPart, message)
}

/// Checks `parts` against `plan` (the one place the rule lives).
fn check_parts(plan: &PartsPlan, parts: &[Part]) -> Result<(), DedupError> {
    if parts.is_empty() || parts.len() > MAX_PARTS_PER_REQUEST {
        return Err(invalid_part(format!(
            "ask for 1 to {MAX_PARTS_PER_REQUEST} parts at a time"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in parts {
        let Some((_, len)) = plan.span(p.number) else {
            return Err(invalid_part(format!(
                "part {} is not in this session's {} parts",
                p.number, plan.part_count
            )));
        };
        if p.size != len {
            return Err(invalid_part(format!(
                "part {} is {len} bytes long, not {}",
                p.number, p.size
            )));
        }
        if !seen.insert(p.number) {
            return Err(invalid_part(format!(
                "part {} is asked for twice",
                p.number
            )));
        }
    }
    Ok(())
}

/// What publishing a parted session's object came to.
enum Published {
    /// The content's key holds this session's object.
    Ready,
    /// Parts are missing: the first few numbers, and how many parts the store holds.
    Missing { first: Vec<u32>, held: usize },
    /// The assembled bytes do not hash to the session's content: deleted.
    Mismatch,
    /// Another upload's object holds the content's key: only a proof claims it now.
    Taken,
    /// The whole-object check goes on in the next complete call.
    Verifying,
}

/// What the whole-object check found.
enum Whole {
    Matches,
    Differs,
    /// Not finished within this call's budget; its progress is saved.
    Pending,
    /// The assembled version is gone (aborted, or expired by the lifecycle rule).
    Gone,
}

/// Bytes read per ranged GET of the whole-object check.
const VERIFY_CHUNK: u64 = 8 * 1024 * 1024;

/// A hash state saved by `save_progress`; `None` if it does not read back.
fn restore(state_hex: &str) -> Option<Sha256> {
    let raw = hex::decode(state_hex).ok()?;
    let state = sha2::digest::common::hazmat::SerializedState::<Sha256>::try_from(&raw[..]).ok()?;
    Sha256::deserialize(&state).ok()
}

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// The plan a session of `size` bytes takes, if it takes parts.
    pub(super) fn parts_plan(&self, size: u64) -> Option<PartsPlan> {
        let part_size = self
            .core
            .cfg
            .part_size
            .max(size.div_ceil(u64::from(MAX_PARTS)));
        (size > part_size).then(|| PartsPlan::new(size, part_size))
    }

    /// Starts the multipart upload of a fresh session.
    pub(super) async fn start_parted(
        &self,
        id: &SessionId,
        hash: &ContentHash,
        format: AudioFormat,
        plan: PartsPlan,
    ) -> Result<PartedUpload, DedupError> {
        let upload_id = self
            .core
            .blobs
            .start_parts(&StartParts {
                key: keys::staging_blob_key(&self.core.cfg.key_prefix, hash, id),
                content_type: format.content_type(),
                uploader: Uploader::Session(id.clone()).to_string(),
                part_size: plan.part_size,
            })
            .await?;
        Ok(PartedUpload { upload_id, plan })
    }

    fn multipart_of(&self, s: &SessionRecord, up: &PartedUpload) -> MultipartRef {
        MultipartRef {
            key: keys::staging_blob_key(&self.core.cfg.key_prefix, &s.hash, &s.id),
            upload_id: up.upload_id.clone(),
        }
    }

    /// The caller's open parted session, or the answer a caller gets for it.
    async fn open_parted(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        id: &SessionId,
    ) -> Result<(SessionRecord, PartedUpload), DedupError> {
        let s = self
            .core
            .load::<SessionRecord>(&keys::session(hash, id))
            .await?
            .map(|s| s.value)
            .filter(|s| &s.owner == owner)
            .ok_or_else(super::session::session_not_found)?;
        if s.state != SessionState::Open || s.expires_at < self.core.now() {
            return Err(DedupError::refused(
                ErrorCode::SessionExpired,
                "the upload session is over; open a new one",
            ));
        }
        let Some(up) = s.parts.clone() else {
            return Err(invalid_part("this session takes one PUT of the whole file"));
        };
        Ok((s, up))
    }

    /// Signed PUTs for the parts asked for, valid for the rest of the session.
    pub async fn sign_parts(&self, req: PartsRequest) -> Result<Vec<PartUpload>, DedupError> {
        let (s, up) = self
            .open_parted(&req.owner, &req.hash, &req.session_id)
            .await?;
        check_parts(&up.plan, &req.parts)?;
        let left = u64::try_from(s.expires_at - self.core.now()).unwrap_or(0);
        let upload = self.multipart_of(&s, &up);
        let uploader = Uploader::Session(s.id.clone()).to_string();
        let mut out = Vec::with_capacity(req.parts.len());
        for part in req.parts {
            let signed = self
                .core
                .blobs
                .presign_part(&PresignPart {
                    upload: upload.clone(),
                    part,
                    uploader: uploader.clone(),
                    expires_in: std::time::Duration::from_millis(left),
                })
                .await?;
            out.push(PartUpload {
                number: part.number,
                upload: signed,
            });
        }
        Ok(out)
    }

    /// The parts the blob store holds for the caller's open parted session.
    pub async fn uploaded_parts(
        &self,
        owner: &UserId,
        hash: &ContentHash,
        id: &SessionId,
    ) -> Result<PartsView, DedupError> {
        let (s, up) = self.open_parted(owner, hash, id).await?;
        let parts = self
            .core
            .blobs
            .list_parts(&self.multipart_of(&s, &up))
            .await?
            .unwrap_or_default();
        Ok(PartsView {
            plan: up.plan,
            parts,
        })
    }

    /// Completes a parted session's upload up to the content's key (then the caller adopts
    /// it as a single PUT's object). Idempotent: each step finds what an earlier try did.
    pub(super) async fn publish_parted(
        &self,
        s: &SessionRecord,
        up: &PartedUpload,
    ) -> Result<(), DedupError> {
        match self.publish_step(s, up).await? {
            Published::Ready => Ok(()),
            Published::Taken => Err(DedupError::UploadRequired),
            Published::Verifying => Err(DedupError::limited(
                ErrorCode::Busy,
                "checking the whole upload's SHA-256; complete again to go on",
                std::time::Duration::from_secs(1),
            )),
            // Nothing sent: the single PUT's answer, whether or not the content exists.
            Published::Missing { held: 0, .. } => Err(DedupError::UploadRequired),
            Published::Missing { first: numbers, .. } => Err(DedupError::refused(
                ErrorCode::PartsMissing,
                format!(
                    "the blob store is missing parts of this upload (for example {numbers:?}); \
                     send them, then complete again"
                ),
            )),
            Published::Mismatch => {
                self.expire_session(s).await?;
                Err(DedupError::refused(
                    ErrorCode::ChecksumMismatch,
                    "the parts put together do not hash to the session's content; \
                     the session is closed",
                ))
            }
        }
    }

    async fn publish_step(
        &self,
        s: &SessionRecord,
        up: &PartedUpload,
    ) -> Result<Published, DedupError> {
        let blobs = &self.core.blobs;
        let staging = self.multipart_of(s, up);
        let ours = Uploader::Session(s.id.clone());
        let target = self.core.blob_key(&s.hash);
        if let Some(m) = blobs.head(&target).await? {
            if Uploader::parse(m.uploader.as_deref()).as_ref() == Some(&ours) {
                self.drop_staged(&staging).await?;
                return Ok(Published::Ready);
            }
        }
        // Assembled by an earlier try: what a HEAD reports of a multipart object is never its
        // whole SHA-256 (S3 keeps a checksum of part checksums), so the check reads it.
        let staged = || async {
            Ok::<_, DedupError>(
                blobs
                    .head(&staging.key)
                    .await?
                    .map(|m| ObjectMeta { sha256: None, ..m }),
            )
        };
        let assembled = match blobs.list_parts(&staging).await? {
            Some(have) => {
                let missing = missing_parts(&up.plan, &have);
                if !missing.is_empty() {
                    return Ok(Published::Missing {
                        first: missing,
                        held: have.len(),
                    });
                }
                match blobs.finish_parts(&staging, &have).await? {
                    Some(m) => Some(m),
                    // Finished by a concurrent try.
                    None => staged().await?,
                }
            }
            None => staged().await?,
        };
        let Some(assembled) = assembled else {
            // Nothing in progress and nothing assembled: aborted, or never sent.
            return Ok(Published::Missing {
                first: (1..=up.plan.part_count.min(10)).collect(),
                held: 0,
            });
        };
        match self.verify_whole(s, &assembled).await? {
            Whole::Matches => {}
            Whole::Pending => return Ok(Published::Verifying),
            Whole::Gone => {
                return Ok(Published::Missing {
                    first: (1..=up.plan.part_count.min(10)).collect(),
                    held: 0,
                })
            }
            Whole::Differs => {
                blobs
                    .delete_version(&assembled.key, &assembled.version)
                    .await?;
                tracing::warn!(hash = %s.hash, session = %s.id, "parted upload does not hash to its content; deleted");
                return Ok(Published::Mismatch);
            }
        }
        let out = blobs
            .copy_if_absent(
                &assembled,
                &target,
                s.format.content_type(),
                &ours.to_string(),
            )
            .await?;
        blobs
            .delete_version(&assembled.key, &assembled.version)
            .await?;
        Ok(match out {
            PutOutcome::Created { .. } => Published::Ready,
            PutOutcome::AlreadyExists => Published::Taken,
        })
    }

    /// Whether the assembled object is the session's content, byte for byte: its whole
    /// SHA-256, from the store where it computed one while assembling it, else read through
    /// in ranges, within `cfg.verify_budget` per call: past it, the progress is saved in the
    /// session and the next complete goes on from there.
    async fn verify_whole(
        &self,
        s: &SessionRecord,
        assembled: &ObjectMeta,
    ) -> Result<Whole, DedupError> {
        if assembled.size != s.size {
            return Ok(Whole::Differs);
        }
        if let Some(h) = assembled.sha256 {
            return Ok(if h == s.hash {
                Whole::Matches
            } else {
                Whole::Differs
            });
        }
        let (mut hasher, mut offset) = match s
            .verifying
            .as_ref()
            .filter(|v| v.version == assembled.version)
            .and_then(|v| Some((restore(&v.state)?, v.offset)))
        {
            Some(resumed) => resumed,
            None => (Sha256::new(), 0),
        };
        let started = std::time::Instant::now();
        while offset < assembled.size {
            let len = VERIFY_CHUNK.min(assembled.size - offset);
            let Some(bytes) = self
                .core
                .blobs
                .read_range(&assembled.key, &assembled.version, offset, len)
                .await?
                .filter(|b| b.len() as u64 == len)
            else {
                return Ok(Whole::Gone);
            };
            hasher.update(&bytes);
            offset += len;
            if offset < assembled.size && started.elapsed() >= self.core.cfg.verify_budget {
                self.save_progress(s, &assembled.version, offset, &hasher)
                    .await?;
                return Ok(Whole::Pending);
            }
        }
        let whole = ContentHash::from_bytes(hasher.finalize().into());
        Ok(if whole == s.hash {
            Whole::Matches
        } else {
            Whole::Differs
        })
    }

    /// Records how far the check got (a lost race only means the next call reads again).
    async fn save_progress(
        &self,
        s: &SessionRecord,
        version: &str,
        offset: u64,
        hasher: &Sha256,
    ) -> Result<(), DedupError> {
        let key = keys::session(&s.hash, &s.id);
        let Some(cur) = self.core.load::<SessionRecord>(&key).await? else {
            return Ok(());
        };
        if cur.value.state != SessionState::Open {
            return Ok(());
        }
        let mut rec = cur.value.clone();
        rec.verifying = Some(VerifyProgress {
            version: version.to_owned(),
            offset,
            state: hex::encode(hasher.serialize().as_slice()),
        });
        let mut txn = self.core.txn();
        txn.put_session(&rec, cur.expect())?;
        self.core.commit(txn).await?;
        Ok(())
    }

    /// Aborts the upload and deletes anything assembled from it.
    async fn drop_staged(&self, staging: &MultipartRef) -> Result<(), DedupError> {
        let blobs = &self.core.blobs;
        blobs.abort_parts(staging).await?;
        if let Some(m) = blobs.head(&staging.key).await? {
            blobs.delete_version(&m.key, &m.version).await?;
        }
        Ok(())
    }

    /// What the reconciler does before expiring a parted session.
    pub(super) async fn drop_parted(&self, s: &SessionRecord) -> Result<(), DedupError> {
        match &s.parts {
            Some(up) => self.drop_staged(&self.multipart_of(s, up)).await,
            None => Ok(()),
        }
    }
}

/// Part numbers of `plan` not held with the length the plan gives them (the first few).
fn missing_parts(plan: &PartsPlan, have: &[Part]) -> Vec<u32> {
    let held: std::collections::BTreeMap<u32, u64> =
        have.iter().map(|p| (p.number, p.size)).collect();
    (1..=plan.part_count)
        .filter(|n| plan.span(*n).map(|(_, len)| len) != held.get(n).copied())
        .take(10)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, size: u64) -> Part {
        Part {
            number,
            size,
            sha256: ContentHash::of(b"x"),
        }
    }

    #[test]
    fn a_plan_cuts_every_byte_once() {
        let plan = PartsPlan::new(25, 10);
        assert_eq!(plan.part_count, 3);
        assert_eq!(plan.span(1), Some((0, 10)));
        assert_eq!(plan.span(3), Some((20, 5)));
        assert_eq!(plan.span(0), None);
        assert_eq!(plan.span(4), None);
        let exact = PartsPlan::new(20, 10);
        assert_eq!((exact.part_count, exact.span(2)), (2, Some((10, 10))));
    }

    #[test]
    fn parts_outside_the_plan_or_of_the_wrong_length_are_refused() {
        let plan = PartsPlan::new(25, 10);
        assert!(check_parts(&plan, &[part(1, 10), part(3, 5)]).is_ok());
        for bad in [
            vec![],
            vec![part(4, 10)],
            vec![part(0, 10)],
            vec![part(3, 10)],
            vec![part(1, 10), part(1, 10)],
        ] {
            let e = check_parts(&plan, &bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidPart, "{bad:?}");
        }
        let many: Vec<Part> = (1..=101).map(|n| part(n, 10)).collect();
        assert!(check_parts(&PartsPlan::new(2000, 10), &many).is_err());
    }

    #[test]
    fn missing_parts_names_absent_and_short_ones() {
        let plan = PartsPlan::new(25, 10);
        assert_eq!(missing_parts(&plan, &[part(1, 10)]), vec![2, 3]);
        assert_eq!(
            missing_parts(&plan, &[part(1, 10), part(2, 9), part(3, 5)]),
            vec![2]
        );
        assert!(missing_parts(&plan, &[part(1, 10), part(2, 10), part(3, 5)]).is_empty());
    }
}
