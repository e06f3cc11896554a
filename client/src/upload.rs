//! The upload service. The file is hashed (streamed, never held in memory) before anything
//! leaves the device; then an upload session (`POST /v1/audio/uploads`) with the hash and
//! size only:
//!
//! 1. Claim by proof: read exactly the challenged byte ranges of the local file and answer
//!    `SHA-256(nonce ‖ ranges)` (`POST /v1/audio/{hash}/complete` with `proof`). Accepted:
//!    the content was on the server already, and no audio byte was sent.
//! 2. `409 upload_required`: PUT the file to the signed URL with exactly the signed headers
//!    (and its `content-length`), streamed from disk with progress, then complete without a
//!    proof.
//!
//! A PUT answered `412` means an object already sits at the key but is not active yet (a
//! concurrent uploader's, or this device's own PUT before a restart): the proof is tried once
//! more, and otherwise the upload is reported retryable, since the object becomes active (or
//! is dropped) on its own. Every other error is the API's, classified in `api.rs`.

use std::path::Path;
use std::time::Duration;

use audio_dedup_core::audio::proof_for;
use audio_dedup_core::{AudioFormat, ByteRange, ContentHash, SignedRequest, UploadSession};
use bytes::Bytes;
use reqwest::Method;
use tokio::io::AsyncReadExt;

use crate::audio::{hash_file, Progress, Reporter};
use crate::error::{ApiError, ClientError, ErrorCode};
use crate::updates::Direction;
use crate::Client;

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    pub content_hash: ContentHash,
    pub size: u64,
    /// The server had the content already: no audio bytes were sent.
    pub deduplicated: bool,
    /// Audio bytes sent to the server or the blob store by this call.
    pub bytes_sent: u64,
    /// A parted upload resumed: the bytes the server held already when this call began.
    pub resumed_from: u64,
}

/// Chunks of the streamed PUT body.
const CHUNK: usize = 256 * 1024;
/// The server challenges at most 64 KiB (or 8 × 4 KiB); anything far bigger is not answered
/// from memory: the bytes are sent instead.
const MAX_PROOF_BYTES: u64 = 1024 * 1024;

/// How the server answered a proof of possession.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Accepted,
    /// Not accepted: the bytes must be sent.
    Refused,
    /// Too many wrong answers for this content: no proof is taken for this long.
    LockedOut(Duration),
}

/// Reads the challenged ranges; `None` when a range lies outside the file or the challenge
/// is unreasonably large.
async fn read_ranges(
    path: &Path,
    size: u64,
    ranges: &[ByteRange],
) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
    let mut want = 0u64;
    for r in ranges {
        let end = r.offset.checked_add(r.length);
        if end.is_none_or(|e| e > size) {
            return Ok(None);
        }
        want = want.saturating_add(r.length);
    }
    if want > MAX_PROOF_BYTES {
        return Ok(None);
    }
    let path = path.to_owned();
    let ranges = ranges.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Option<Vec<Vec<u8>>>, ClientError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&path)?;
        let mut out = Vec::with_capacity(ranges.len());
        for r in &ranges {
            let len = usize::try_from(r.length).map_err(|_| {
                ClientError::Api(ApiError::Protocol(
                    "a challenged range too long to read".into(),
                ))
            })?;
            let mut buf = vec![0u8; len];
            f.seek(SeekFrom::Start(r.offset))?;
            match f.read_exact(&mut buf) {
                Ok(()) => out.push(buf),
                // The file got shorter since it was hashed: send it instead (the PUT's
                // checksum refuses it).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(out))
    })
    .await
    .map_err(|e| ClientError::Task(format!("reading the challenged ranges: {e}")))?
}

/// The file's first `size` bytes as a body stream; publishes the bytes handed out so far
/// (one message per chunk, so at most `size / CHUNK + 1` of them).
fn file_body(
    file: tokio::fs::File,
    size: u64,
    sent: tokio::sync::mpsc::UnboundedSender<u64>,
) -> reqwest::Body {
    let stream = futures_util::stream::unfold(
        (file, 0u64, sent),
        move |(mut file, done, sent)| async move {
            if done >= size {
                return None;
            }
            let want = usize::try_from(size - done).map_or(CHUNK, |left| left.min(CHUNK));
            let mut buf = vec![0u8; want];
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was being uploaded",
                    )),
                    (file, size, sent),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    let done = done + n as u64;
                    let _ = sent.send(done);
                    Some((Ok(Bytes::from(buf)), (file, done, sent)))
                }
                Err(e) => Some((Err(e), (file, size, sent))),
            }
        },
    );
    reqwest::Body::wrap_stream(stream)
}

impl Client {
    /// Uploads a local file: hashes it (streamed), claims the content by proof when the
    /// server has it (no audio bytes sent), and otherwise PUTs it to the signed URL with
    /// progress (`Update::Transfer` and `progress`) and completes the session.
    pub async fn upload_audio(
        &self,
        path: &Path,
        format: AudioFormat,
        progress: Option<Progress<'_>>,
    ) -> Result<UploadOutcome, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            tracing::info!(path = %path.display(), "calculating content hash");
            let (hash, size) = hash_file(path).await?;
            tracing::info!(%hash, size, "file hash");
            self.upload_hashed(path, hash, size, format, progress).await
        })
        .await
    }

    /// Uploads a queued file, checking it still hashes to what was queued. A file that
    /// changed (or vanished) since cannot be retried into correctness: `Invalid` (or `Io`),
    /// which fails the queued operation for good.
    pub(crate) async fn upload_queued(
        &self,
        path: &Path,
        expected: ContentHash,
        format: AudioFormat,
    ) -> Result<UploadOutcome, ClientError> {
        tracing::info!(path = %path.display(), "calculating content hash");
        let (hash, size) = hash_file(path).await?;
        tracing::info!(%hash, size, "file hash");
        if hash != expected {
            return Err(ClientError::FileChanged(format!(
                "{} changed since it was queued: it hashes to {hash}, not {expected}",
                path.display()
            )));
        }
        self.upload_hashed(path, hash, size, format, None).await
    }

    async fn upload_hashed(
        &self,
        path: &Path,
        hash: ContentHash,
        size: u64,
        format: AudioFormat,
        progress: Option<Progress<'_>>,
    ) -> Result<UploadOutcome, ClientError> {
        if size == 0 {
            return Err(ClientError::InvalidInput(format!(
                "{} is empty: there is no audio to upload",
                path.display()
            )));
        }
        // A parted upload this device started (and was stopped in) is resumed, not begun
        // again; the content was not on the server then, so no proof is tried first.
        let saved = self
            .store
            .saved_upload(&hash)?
            .filter(|s| crate::parts::resumable(s, size, self.cfg.now_ms()));
        let resuming = saved.is_some();
        let session = match saved {
            Some(s) => s,
            None => self.api.open_session(&hash, size, format, None).await?,
        };
        if session.content_hash != hash {
            return Err(ApiError::Protocol(format!(
                "opened a session for {hash}, the server answered one for {}",
                session.content_hash
            ))
            .into());
        }
        let deduplicated = UploadOutcome {
            content_hash: hash,
            size,
            deduplicated: true,
            bytes_sent: 0,
            resumed_from: 0,
        };
        // Locked out of proving (earlier wrong answers): sending the bytes still works.
        if !resuming && self.claim_by_proof(path, size, &session).await? == Claim::Accepted {
            tracing::info!(%hash, "already on the server (deduplicated)");
            return Ok(deduplicated);
        }
        tracing::info!(%hash, size, "uploading");
        let sent = match (&session.parts, &session.upload) {
            (Some(plan), _) => {
                self.store.save_upload(&session, self.cfg.now_ms())?;
                self.send_parts(path, &session, *plan, progress)
                    .await
                    .map(Some)
            }
            (None, Some(upload)) => self
                .put_file(path, &hash, size, upload, progress)
                .await
                .map(|()| None),
            (None, None) => Err(ApiError::Protocol(
                "the upload session has neither a URL nor parts".into(),
            )
            .into()),
        };
        match sent {
            Ok(_) => {}
            Err(ClientError::Api(ApiError::Rejected { status: 412, .. })) => {
                // The content is stored: only a proof claims it now.
                let (status, code, wait) = match self.claim_by_proof(path, size, &session).await? {
                    Claim::Accepted => {
                        tracing::info!(%hash, "already on the server (deduplicated)");
                        return Ok(deduplicated);
                    }
                    Claim::LockedOut(wait) => (429, ErrorCode::RateLimited, wait),
                    Claim::Refused => (412, ErrorCode::PreconditionFailed, Duration::from_secs(1)),
                };
                return Err(ApiError::Retryable {
                    status,
                    code,
                    retry_after: Some(wait),
                }
                .into());
            }
            Err(e) => return Err(e),
        }
        let parts = sent.ok().flatten();
        let completed = match parts {
            Some(_) => self.complete_parted(&session).await,
            None => self.api.complete(&hash, &session.session_id, None).await,
        };
        let done = match completed {
            Ok(done) => done,
            // Parts put together under another upload's object: only a proof claims it.
            Err(ApiError::Rejected {
                code: ErrorCode::UploadRequired,
                ..
            }) if parts.is_some() => {
                self.store.forget_upload(&hash)?;
                if self.claim_by_proof(path, size, &session).await? == Claim::Accepted {
                    return Ok(UploadOutcome {
                        bytes_sent: parts.map_or(0, |p| p.sent),
                        ..deduplicated
                    });
                }
                return Err(ApiError::Retryable {
                    status: 412,
                    code: ErrorCode::PreconditionFailed,
                    retry_after: Some(Duration::from_secs(1)),
                }
                .into());
            }
            Err(e) => {
                if !e.is_retryable() {
                    self.store.forget_upload(&hash)?;
                }
                return Err(e.into());
            }
        };
        if parts.is_some() {
            self.store.forget_upload(&hash)?;
        }
        if done.deduplicated {
            tracing::info!(%hash, "already on the server (deduplicated)");
        } else {
            tracing::info!(%hash, size, "uploaded");
        }
        Ok(UploadOutcome {
            content_hash: hash,
            size,
            deduplicated: done.deduplicated,
            bytes_sent: parts.map_or(size, |p| p.sent),
            resumed_from: parts.map_or(0, |p| p.resumed_from),
        })
    }

    /// Answers the session's possession challenge from the local file. `Accepted`: the
    /// content exists and is now the caller's too.
    async fn claim_by_proof(
        &self,
        path: &Path,
        size: u64,
        session: &UploadSession,
    ) -> Result<Claim, ClientError> {
        let Some(chunks) = read_ranges(path, size, &session.challenge.ranges).await? else {
            return Ok(Claim::Refused);
        };
        let proof = proof_for(&session.challenge.nonce, chunks.iter().map(Vec::as_slice));
        match self
            .api
            .complete(&session.content_hash, &session.session_id, Some(&proof))
            .await
        {
            Ok(_) => Ok(Claim::Accepted),
            Err(ApiError::Rejected {
                code: ErrorCode::UploadRequired,
                ..
            }) => Ok(Claim::Refused),
            Err(ApiError::Retryable {
                code: ErrorCode::RateLimited,
                retry_after,
                ..
            }) => Ok(Claim::LockedOut(
                retry_after.unwrap_or(Duration::from_secs(60)),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// A request to a signed URL for `size` bytes: its method, exactly its signed headers,
    /// the length unless it is signed, and a transfer's timeout.
    pub(crate) fn signed_send(
        &self,
        upload: &SignedRequest,
        size: u64,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let method = Method::from_bytes(upload.method.as_bytes()).map_err(|_| {
            ApiError::Protocol(format!("unknown upload method {:?}", upload.method))
        })?;
        let mut rb = self
            .api
            .http()
            .request(method, &upload.url)
            .timeout(self.transfer_timeout(size));
        for (name, value) in &upload.headers {
            rb = rb.header(name.as_str(), value.as_str());
        }
        if !upload
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-length"))
        {
            rb = rb.header(reqwest::header::CONTENT_LENGTH, size);
        }
        Ok(rb)
    }

    /// PUTs the file to the signed URL with exactly the signed headers and its length,
    /// streamed, reporting the bytes handed to the connection.
    async fn put_file(
        &self,
        path: &Path,
        hash: &ContentHash,
        size: u64,
        upload: &SignedRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<(), ClientError> {
        let file = tokio::fs::File::open(path).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let rb = self
            .signed_send(upload, size)?
            .body(file_body(file, size, tx));
        let mut reporter = Reporter::new(&self.updates, *hash, Direction::Upload, size, progress);
        reporter.report(0);
        let send = self.api.send_signed(rb);
        tokio::pin!(send);
        let mut watching = true;
        // Ends when the request does (it has a total timeout). Biased: every chunk handed to
        // the connection is reported before the answer is looked at.
        let res = loop {
            tokio::select! {
                biased;
                done = rx.recv(), if watching => match done {
                    // The last bytes count once the store has answered.
                    Some(done) if done < size => reporter.report(done),
                    Some(_) => {}
                    None => watching = false,
                },
                r = &mut send => break r,
            }
        };
        res?;
        reporter.report(size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_client(dir: &Path) -> Client {
        // Port 9 on loopback: nothing listens; no request is expected anyway.
        let cfg = crate::ClientConfig::new("http://127.0.0.1:9", "token", dir);
        match Client::open(cfg) {
            Ok(c) => c,
            Err(e) => panic!("open: {e}"),
        }
    }

    #[tokio::test]
    async fn a_queued_file_that_changed_fails_for_good_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let client = offline_client(dir.path());
        let file = dir.path().join("take.wav");
        std::fs::write(&file, b"first take").unwrap();
        let queued = ContentHash::of(b"first take");
        std::fs::write(&file, b"second take").unwrap();
        let err = client
            .upload_queued(&file, queued, AudioFormat::Wav)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::FileChanged(_)), "{err:?}");
        assert!(err.to_string().contains("changed since it was queued"));
        assert!(client.is_online(), "no request was made");
    }

    #[tokio::test]
    async fn a_queued_file_that_vanished_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let client = offline_client(dir.path());
        let err = client
            .upload_queued(
                &dir.path().join("gone.wav"),
                ContentHash::of(b"x"),
                AudioFormat::Wav,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    }

    #[tokio::test]
    async fn an_empty_file_is_refused_locally() {
        let dir = tempfile::tempdir().unwrap();
        let client = offline_client(dir.path());
        let file = dir.path().join("empty.mp3");
        std::fs::write(&file, b"").unwrap();
        let err = client
            .upload_audio(&file, AudioFormat::Mp3, None)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidInput(_)), "{err:?}");
        assert!(client.is_online(), "no request was made");
    }

    #[tokio::test]
    async fn challenged_ranges_outside_the_file_are_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.mp3");
        std::fs::write(&file, b"0123456789").unwrap();
        let r = |offset, length| ByteRange { offset, length };
        let got = read_ranges(&file, 10, &[r(0, 2), r(8, 2)]).await.unwrap();
        assert_eq!(got, Some(vec![b"01".to_vec(), b"89".to_vec()]));
        assert_eq!(read_ranges(&file, 10, &[r(9, 2)]).await.unwrap(), None);
        assert_eq!(
            read_ranges(&file, 10, &[r(u64::MAX, 2)]).await.unwrap(),
            None
        );
    }
}
