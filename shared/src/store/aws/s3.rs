//! `BlobStore` over a versioned, private S3 bucket. Puts are `If-None-Match: *` with the
//! SHA-256 checksum, so S3 itself refuses a second writer (412) and a corrupted body
//! (BadDigest). Deletes and reads name one exact `VersionId`. Presigned PUTs sign the
//! checksum, length, content type, uploader metadata and the no-overwrite condition.

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::domain::{ContentHash, Part, SignedRequest, StreamingHasher};
use crate::error::StoreError;
use crate::ports::{
    BlobBody, BlobStore, MultipartRef, ObjectMeta, ObjectPage, PresignPart, PresignPut, PutOutcome,
    PutRequest, StartParts,
};

const UPLOADER_META: &str = "uploader";
/// S3 SigV4 allows 7 days; uploads are never signed for longer than this.
const MAX_PRESIGN: Duration = Duration::from_secs(60 * 60);
/// Download URLs live at most 15 minutes.
const MAX_PRESIGN_GET: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
    /// Only keys under this prefix are listed by the orphan sweep.
    list_prefix: String,
    /// What signs presigned URLs, asked for its expiry (see `lifetime`).
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
}

fn status_of<E, R: HttpStatus>(e: &SdkError<E, R>) -> Option<u16> {
    match e {
        SdkError::ServiceError(se) => Some(se.raw().status_code()),
        _ => None,
    }
}

trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn backend<E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static>(
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    let status = status_of(&e);
    let text = DisplayErrorContext(&e).to_string();
    match (status, &e) {
        (Some(500..=599), _) | (_, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)) => {
            StoreError::Unavailable(text)
        }
        _ => StoreError::Backend(text.into()),
    }
}

/// A URL signed with temporary credentials (a Lambda role's) dies with them, whatever its
/// stated lifetime: sign for at most until they expire, less this margin.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(30);

/// The lifetime to sign for: `wanted`, cut to end `CREDENTIALS_MARGIN` before the signing
/// credentials expire (at least one second, so the answer is still a URL).
fn lifetime_within(
    wanted: Duration,
    now: std::time::SystemTime,
    credentials_expire: Option<std::time::SystemTime>,
) -> Duration {
    let Some(at) = credentials_expire else {
        return wanted;
    };
    let left = at
        .duration_since(now)
        .unwrap_or_default()
        .saturating_sub(CREDENTIALS_MARGIN);
    wanted.min(left).max(Duration::from_secs(1))
}

fn presign_config(ttl: Duration) -> Result<PresigningConfig, StoreError> {
    PresigningConfig::expires_in(ttl.min(MAX_PRESIGN)).map_err(StoreError::backend)
}

fn signed(
    p: aws_sdk_s3::presigning::PresignedRequest,
    ttl: Duration,
    now_ms: i64,
) -> SignedRequest {
    SignedRequest {
        url: p.uri().to_owned(),
        method: p.method().to_owned(),
        headers: p
            .headers()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect(),
        expires_at: now_ms + ttl.min(MAX_PRESIGN).as_millis() as i64,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unversioned(key: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: "S3 answered without a version id; is bucket versioning on?".into(),
    }
}

impl S3Blobs {
    /// How long a URL signed now may live: `wanted`, or less when the client's credentials
    /// expire sooner (both logged then). Credentials that cannot be had are the signing
    /// call's error to report, not this one's.
    async fn lifetime(&self, wanted: Duration) -> Duration {
        use aws_sdk_s3::config::ProvideCredentials;
        let Some(provider) = &self.credentials else {
            return wanted;
        };
        let Ok(creds) = provider.provide_credentials().await else {
            return wanted;
        };
        let ttl = lifetime_within(wanted, std::time::SystemTime::now(), creds.expiry());
        if ttl < wanted {
            tracing::info!(
                wanted_secs = wanted.as_secs(),
                signed_secs = ttl.as_secs(),
                "URL lifetime cut to the signing credentials' expiry"
            );
        }
        ttl
    }

    pub fn new(client: Client, bucket: impl Into<String>, list_prefix: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            list_prefix: list_prefix.into(),
            credentials: None,
        }
    }

    /// The credentials the client signs with (the SDK configuration's), so presigned URLs
    /// are never stated to live longer than they can (temporary role credentials).
    pub fn with_signing_credentials(
        mut self,
        credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
    ) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket with versioning on (tests against moto; production: the template).
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(backend)?;
        self.client
            .put_bucket_versioning()
            .bucket(&self.bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn meta_from_head(
        key: &str,
        out: &aws_sdk_s3::operation::head_object::HeadObjectOutput,
    ) -> Result<ObjectMeta, StoreError> {
        let version = out.version_id().ok_or_else(|| unversioned(key))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            version: version.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            // A multipart object's is a checksum of part checksums (`…-N`): not the content's.
            sha256: out
                .checksum_sha256()
                .filter(|_| {
                    out.checksum_type() != Some(&aws_sdk_s3::types::ChecksumType::Composite)
                })
                .and_then(|c| ContentHash::from_base64(c).ok()),
            uploader: out.metadata().and_then(|m| m.get(UPLOADER_META)).cloned(),
            last_modified: out
                .last_modified()
                .map_or(0, |t| t.to_millis().unwrap_or(0)),
        })
    }

    /// GET of one exact version (optionally a byte range); `None` if that version is gone.
    async fn get_version(
        &self,
        key: &str,
        version: &str,
        range: Option<String>,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StoreError> {
        let res = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version)
            .set_range(range)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(out)),
            // 404: no such key or version; 400: a version id S3 does not know; 416: a range
            // past the end of the object.
            Err(e) if matches!(status_of(&e), Some(404 | 416 | 400)) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }
}

/// A part as ListParts reports it, with the ETag CompleteMultipartUpload needs.
struct ListedPart {
    part: Part,
    etag: String,
}

/// ListParts pages S3 gives (1,000 parts each) before an upload counts as too large.
const MAX_PART_PAGES: usize = 10;

fn no_such_upload<E: ProvideErrorMetadata, R: HttpStatus>(e: &SdkError<E, R>) -> bool {
    status_of(e) == Some(404) || e.code() == Some("NoSuchUpload")
}

impl S3Blobs {
    /// Every part of an upload in progress, by number; `None` if it is gone.
    async fn listed_parts(
        &self,
        upload: &MultipartRef,
    ) -> Result<Option<Vec<ListedPart>>, StoreError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PART_PAGES {
            let res = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(&upload.key)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await;
            let page = match res {
                Ok(p) => p,
                Err(e) if no_such_upload(&e) => return Ok(None),
                Err(e) => return Err(backend(e)),
            };
            for p in page.parts() {
                let corrupt = |reason: &str| StoreError::Corrupt {
                    key: upload.key.clone(),
                    reason: reason.to_owned(),
                };
                let sha256 = p
                    .checksum_sha256()
                    .and_then(|c| ContentHash::from_base64(c).ok())
                    .ok_or_else(|| corrupt("a part without its SHA-256"))?;
                out.push(ListedPart {
                    part: Part {
                        number: p
                            .part_number()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| corrupt("a part without a number"))?,
                        size: p.size().unwrap_or(0).max(0) as u64,
                        sha256,
                    },
                    etag: p.e_tag().unwrap_or_default().to_owned(),
                });
            }
            match page.next_part_number_marker() {
                Some(next) if page.is_truncated() == Some(true) => marker = Some(next.to_owned()),
                _ => return Ok(Some(out)),
            }
        }
        Err(StoreError::Corrupt {
            key: upload.key.clone(),
            reason: "more parts than an upload may have".into(),
        })
    }
}

impl BlobStore for S3Blobs {
    async fn put_if_absent(&self, req: PutRequest) -> Result<PutOutcome, StoreError> {
        let body = match &req.body {
            BlobBody::File(p) => ByteStream::from_path(p)
                .await
                .map_err(StoreError::backend)?,
            BlobBody::Bytes(b) => ByteStream::from(b.clone()),
        };
        let res = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&req.key)
            .body(body)
            .content_length(req.size as i64)
            .content_type(req.content_type)
            .checksum_sha256(req.sha256.to_base64())
            .if_none_match("*")
            .metadata(UPLOADER_META, &req.uploader)
            .send()
            .await;
        match res {
            Ok(out) => match out.version_id() {
                Some(version) => Ok(PutOutcome::Created {
                    version: version.to_owned(),
                }),
                // A record must own one exact version; an unversioned bucket cannot give one.
                None => Err(unversioned(&req.key)),
            },
            // 412: an object exists. 409: a concurrent conditional write; treat as exists and
            // let the caller `head` (and retry if the other write did not land).
            Err(e) if matches!(status_of(&e), Some(412 | 409)) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(backend(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let res = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(Self::meta_from_head(key, &out)?)),
            Err(e)
                if e.as_service_error().is_some_and(|se| se.is_not_found())
                    || status_of(&e) == Some(404) =>
            {
                Ok(None)
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete_version(&self, key: &str, version: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Already gone (or never was): deleting is idempotent.
            Err(e) if matches!(status_of(&e), Some(404)) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn read_range(
        &self,
        key: &str,
        version: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        if length == 0 {
            return Ok(Some(Bytes::new()));
        }
        let range = format!("bytes={}-{}", offset, offset + length - 1);
        let Some(out) = self.get_version(key, version, Some(range)).await? else {
            return Ok(None);
        };
        let body = out.body.collect().await.map_err(StoreError::backend)?;
        Ok(Some(body.into_bytes()))
    }

    async fn stream_sha256(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<ContentHash>, StoreError> {
        let Some(mut out) = self.get_version(key, version, None).await? else {
            return Ok(None);
        };
        let mut hasher = StreamingHasher::new();
        while let Some(chunk) = out.body.try_next().await.map_err(StoreError::backend)? {
            hasher.update(&chunk);
        }
        Ok(Some(hasher.finish().0))
    }

    async fn presign_put(&self, req: &PresignPut) -> Result<SignedRequest, StoreError> {
        let ttl = self.lifetime(req.expires_in).await;
        // aws-sdk-rust#1103: set only `checksum_sha256`, not `checksum_algorithm`, or the
        // value is dropped from the signed headers.
        let p = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&req.key)
            .content_length(req.size as i64)
            .content_type(req.content_type)
            .checksum_sha256(req.sha256.to_base64())
            .if_none_match("*")
            .metadata(UPLOADER_META, &req.uploader)
            .presigned(presign_config(ttl)?)
            .await
            .map_err(backend)?;
        Ok(signed(p, ttl, now_ms()))
    }

    async fn start_parts(&self, req: &StartParts) -> Result<String, StoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&req.key)
            .content_type(req.content_type)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .metadata(UPLOADER_META, &req.uploader)
            .send()
            .await
            .map_err(backend)?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Corrupt {
                key: req.key.clone(),
                reason: "CreateMultipartUpload answered no upload id".into(),
            })
    }

    async fn presign_part(&self, req: &PresignPart) -> Result<SignedRequest, StoreError> {
        let ttl = self.lifetime(req.expires_in).await;
        // As for whole PUTs (aws-sdk-rust#1103): the checksum value only, so it is signed.
        let p = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&req.upload.key)
            .upload_id(&req.upload.upload_id)
            .part_number(i32::try_from(req.part.number).map_err(StoreError::backend)?)
            .content_length(req.part.size as i64)
            .checksum_sha256(req.part.sha256.to_base64())
            .presigned(presign_config(ttl)?)
            .await
            .map_err(backend)?;
        Ok(signed(p, ttl, now_ms()))
    }

    async fn list_parts(&self, upload: &MultipartRef) -> Result<Option<Vec<Part>>, StoreError> {
        Ok(self
            .listed_parts(upload)
            .await?
            .map(|parts| parts.into_iter().map(|l| l.part).collect()))
    }

    /// CompleteMultipartUpload needs each part's ETag: the parts are listed again for them,
    /// and must be exactly the ones asked for.
    async fn finish_parts(
        &self,
        upload: &MultipartRef,
        parts: &[Part],
    ) -> Result<Option<ObjectMeta>, StoreError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let Some(listed) = self.listed_parts(upload).await? else {
            return Ok(None);
        };
        let mut completed = Vec::with_capacity(parts.len());
        for want in parts {
            let Some(l) = listed.iter().find(|l| l.part == *want) else {
                return Err(StoreError::Corrupt {
                    key: upload.key.clone(),
                    reason: format!("part {} is not as listed", want.number),
                });
            };
            completed.push(
                CompletedPart::builder()
                    .part_number(i32::try_from(want.number).map_err(StoreError::backend)?)
                    .e_tag(&l.etag)
                    .checksum_sha256(want.sha256.to_base64())
                    .build(),
            );
        }
        let res = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            Err(e) if no_such_upload(&e) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let version = out.version_id().ok_or_else(|| unversioned(&upload.key))?;
        Ok(Some(ObjectMeta {
            key: upload.key.clone(),
            version: version.to_owned(),
            size: parts.iter().map(|p| p.size).sum(),
            // A multipart object's SHA-256 is a checksum of part checksums.
            sha256: None,
            uploader: None,
            last_modified: now_ms(),
        }))
    }

    async fn abort_parts(&self, upload: &MultipartRef) -> Result<(), StoreError> {
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if no_such_upload(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// CopyObject of one version with if-none-match; the copy gets a whole-object SHA-256
    /// (a copy is written in one part), which HEAD then reports.
    async fn copy_if_absent(
        &self,
        from: &ObjectMeta,
        to_key: &str,
        content_type: &'static str,
        uploader: &str,
    ) -> Result<PutOutcome, StoreError> {
        let res = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to_key)
            .copy_source(format!(
                "{}/{}?versionId={}",
                self.bucket, from.key, from.version
            ))
            .if_none_match("*")
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .metadata(UPLOADER_META, uploader)
            .content_type(content_type)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .send()
            .await;
        match res {
            Ok(out) => match out.version_id() {
                Some(version) => Ok(PutOutcome::Created {
                    version: version.to_owned(),
                }),
                None => Err(unversioned(to_key)),
            },
            Err(e) if matches!(status_of(&e), Some(412 | 409)) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(backend(e)),
        }
    }

    async fn presign_get(
        &self,
        key: &str,
        version: &str,
        content_type: &'static str,
        ttl: Duration,
    ) -> Result<SignedRequest, StoreError> {
        let ttl = self.lifetime(ttl.min(MAX_PRESIGN_GET)).await;
        let p = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .version_id(version)
            .response_content_type(content_type)
            .presigned(presign_config(ttl)?)
            .await
            .map_err(backend)?;
        Ok(signed(p, ttl, now_ms()))
    }

    /// ListObjectVersions, not ListObjectsV2 + a HEAD each: the listing carries each
    /// current version's id, size and time, which is all the sweep needs for objects the index
    /// accounts for. (It has no uploader or checksum; the sweep HEADs the rare others.)
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<ObjectPage, StoreError> {
        let out = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&self.list_prefix)
            .set_key_marker(after.map(str::to_owned))
            .max_keys(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(backend)?;
        // Versions come newest first per key; delete markers are listed apart, so a key
        // whose newest entry is a delete marker has no version here marked latest.
        let objects: Vec<ObjectMeta> = out
            .versions()
            .iter()
            .filter(|v| v.is_latest().unwrap_or(false))
            .filter_map(|v| {
                Some(ObjectMeta {
                    key: v.key()?.to_owned(),
                    version: v.version_id()?.to_owned(),
                    size: v.size().unwrap_or(0).max(0) as u64,
                    sha256: None,
                    uploader: None,
                    last_modified: v
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                })
            })
            .collect();
        // The last key this page listed (the rest of its versions, if cut, are older ones).
        let last_key = out
            .versions()
            .iter()
            .filter_map(|v| v.key())
            .chain(out.delete_markers().iter().filter_map(|d| d.key()))
            .max()
            .map(str::to_owned);
        let next = if out.is_truncated().unwrap_or(false) {
            last_key
        } else {
            None
        };
        Ok(ObjectPage { objects, next })
    }
}

#[cfg(test)]
mod lifetime_tests {
    use super::*;
    use std::time::SystemTime;

    /// A URL never outlives the credentials that signed it (less the margin); long-lived or
    /// static credentials leave the lifetime alone; expired ones still give a 1-second URL.
    #[test]
    fn a_url_lives_no_longer_than_its_signing_credentials() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(lifetime_within(hour, now, None), hour);
        assert_eq!(lifetime_within(hour, now, Some(now + 3 * hour)), hour);
        assert_eq!(
            lifetime_within(hour, now, Some(now + Duration::from_secs(600))),
            Duration::from_secs(570)
        );
        assert_eq!(
            lifetime_within(hour, now, Some(now - hour)),
            Duration::from_secs(1)
        );
    }
}
