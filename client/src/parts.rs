//! Parted uploads: content above the server's part size goes up in parts, each PUT to its
//! own signed URL with its SHA-256 (the blob store refuses a part whose bytes do not match).
//! The session is saved in the cache (`uploads` table) before the first part, so after a
//! kill or a lost network the next try asks the server which parts it holds and sends only
//! the rest. Progress counts bytes the server has confirmed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use audio_dedup_core::{ContentHash, Part, PartUpload, PartsPlan, UploadResult, UploadSession};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::audio::{Progress, Reporter};
use crate::error::{ApiError, ClientError, ErrorCode};
use crate::updates::Direction;
use crate::Client;

/// Parts read, signed and sent at once, each on its own: the next starts as soon as one
/// is done (no batch waits for its slowest part), and at most this many parts' bytes are
/// held in memory.
const PARTS_IN_FLIGHT: usize = 4;
/// Busy answers to a parted complete waited out before the error goes to the caller (the
/// server checks at most about 20 s of the file per call: 60 calls cover tens of GB).
const COMPLETE_WAITS: usize = 60;
/// A saved session is resumed only while it has at least this long left.
const RESUME_MARGIN_MS: i64 = 10 * 60 * 1000;

/// What sending the parts did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartsSent {
    /// Bytes the server held already when this run started.
    pub resumed_from: u64,
    /// Bytes this run sent.
    pub sent: u64,
}

/// Whether a session saved for `size` bytes may be resumed at `now`.
pub(crate) fn resumable(saved: &UploadSession, size: u64, now_ms: i64) -> bool {
    saved.parts.is_some_and(|p| p.size == size) && saved.expires_at - now_ms > RESUME_MARGIN_MS
}

/// Bytes `offset..offset+len` of the file and their SHA-256, read and hashed on the
/// blocking pool (a part is megabytes: hashing it on the runtime would stall other tasks).
async fn read_part(
    path: PathBuf,
    number: u32,
    offset: u64,
    len: u64,
) -> Result<(Part, Bytes), ClientError> {
    let len_usize = usize::try_from(len)
        .map_err(|_| ClientError::InvalidInput("a part too large for memory".into()))?;
    tokio::task::spawn_blocking(move || -> Result<(Part, Bytes), ClientError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len_usize];
        f.read_exact(&mut buf)?;
        let part = Part {
            number,
            size: len,
            sha256: ContentHash::of(&buf),
        };
        Ok((part, Bytes::from(buf)))
    })
    .await
    .map_err(|e| ClientError::Task(format!("reading a part: {e}")))?
}

impl Client {
    /// The parts of `session` the server does not hold yet, sent; then nothing is left but
    /// completing the session.
    pub(crate) async fn send_parts(
        &self,
        path: &Path,
        session: &UploadSession,
        plan: PartsPlan,
        progress: Option<Progress<'_>>,
    ) -> Result<PartsSent, ClientError> {
        let hash = session.content_hash;
        let view = match self.api.list_parts(&hash, &session.session_id).await {
            Ok(v) => v,
            Err(e) => {
                if matches!(
                    e.code(),
                    Some(ErrorCode::SessionExpired | ErrorCode::SessionNotFound)
                ) {
                    // Over on the server: the next try opens a new session.
                    self.store.forget_upload(&hash)?;
                    return Err(ApiError::Retryable {
                        status: 410,
                        code: ErrorCode::SessionExpired,
                        retry_after: None,
                    }
                    .into());
                }
                return Err(e.into());
            }
        };
        let held: BTreeMap<u32, u64> = view.parts.iter().map(|p| (p.number, p.size)).collect();
        let todo: Vec<(u32, u64, u64)> = (1..=plan.part_count)
            .filter_map(|n| plan.span(n).map(|(offset, len)| (n, offset, len)))
            .filter(|(n, _, len)| held.get(n) != Some(len))
            .collect();
        let resumed_from = plan.size - todo.iter().map(|(_, _, len)| len).sum::<u64>();
        if resumed_from > 0 {
            tracing::info!(%hash, resumed_from, size = plan.size, "resuming a parted upload");
        }
        let mut reporter =
            Reporter::new(&self.updates, hash, Direction::Upload, plan.size, progress);
        reporter.report(resumed_from);
        let (mut confirmed, mut sent) = (resumed_from, 0);
        let session_id = &session.session_id;
        let mut done = futures_util::stream::iter(todo)
            .map(|(number, offset, len)| async move {
                let (part, body) = read_part(path.to_owned(), number, offset, len).await?;
                let signed = self
                    .api
                    .sign_parts(&hash, session_id, std::slice::from_ref(&part))
                    .await?;
                self.put_part(signed.iter().find(|s| s.number == number), body)
                    .await?;
                Ok::<u64, ClientError>(len)
            })
            .buffer_unordered(PARTS_IN_FLIGHT);
        while let Some(len) = done.try_next().await? {
            confirmed += len;
            sent += len;
            reporter.report(confirmed);
        }
        Ok(PartsSent { resumed_from, sent })
    }

    /// Completes a parted session. The server checks the whole file's SHA-256 first; on S3
    /// a large file's check goes on across calls (each answers `503 busy` until it is done),
    /// so busy answers are waited out here, a bounded number of times.
    pub(crate) async fn complete_parted(
        &self,
        session: &UploadSession,
    ) -> Result<UploadResult, ApiError> {
        let mut waits = 0;
        loop {
            match self
                .api
                .complete(&session.content_hash, &session.session_id, None)
                .await
            {
                Err(ApiError::Retryable {
                    code: ErrorCode::Busy,
                    retry_after,
                    ..
                }) if waits < COMPLETE_WAITS => {
                    waits += 1;
                    let wait = retry_after.unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                }
                other => return other,
            }
        }
    }

    async fn put_part(&self, upload: Option<&PartUpload>, body: Bytes) -> Result<(), ClientError> {
        let Some(PartUpload { upload, .. }) = upload else {
            return Err(ApiError::Protocol("the server signed no URL for a part".into()).into());
        };
        let rb = self.signed_send(upload, body.len() as u64)?.body(body);
        self.api.send_signed(rb).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(size: u64, expires_at: i64) -> UploadSession {
        UploadSession {
            session_id: "s1".parse().unwrap(),
            content_hash: ContentHash::of(b"x"),
            upload: None,
            parts: Some(PartsPlan::new(size, 10)),
            challenge: audio_dedup_core::ChallengeView {
                nonce: String::new(),
                ranges: vec![],
            },
            expires_at,
        }
    }

    #[test]
    fn a_saved_session_resumes_only_for_the_same_size_with_time_left() {
        let now = 1_000_000_000;
        assert!(resumable(&session(25, now + RESUME_MARGIN_MS + 1), 25, now));
        assert!(!resumable(
            &session(25, now + RESUME_MARGIN_MS + 1),
            26,
            now
        ));
        assert!(!resumable(&session(25, now + RESUME_MARGIN_MS), 25, now));
        let mut whole = session(25, now + RESUME_MARGIN_MS * 2);
        whole.parts = None;
        assert!(!resumable(&whole, 25, now));
    }
}
