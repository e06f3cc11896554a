//! The blob store port: a versioned, content-addressed object store (S3 with versioning, or
//! its emulations). Every delete names one exact version.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::domain::{ContentHash, Millis, Part, SignedRequest};
use crate::error::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub version: String,
    pub size: u64,
    /// SHA-256 as verified by the store at write time, where it reports one.
    pub sha256: Option<ContentHash>,
    /// Who wrote it: `session:<id>` for an upload session's PUT, `direct` for a direct upload.
    pub uploader: Option<String>,
    pub last_modified: Millis,
}

#[derive(Debug, Clone)]
pub enum BlobBody {
    /// A spooled file (the local server streams request bodies to disk).
    File(PathBuf),
    Bytes(Bytes),
}

#[derive(Debug, Clone)]
pub struct PutRequest {
    pub key: String,
    pub body: BlobBody,
    pub sha256: ContentHash,
    pub size: u64,
    pub content_type: &'static str,
    pub uploader: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Created {
        version: String,
    },
    /// An object already exists under the key; nothing was written (HTTP 412 on S3).
    AlreadyExists,
}

#[derive(Debug, Clone)]
pub struct PresignPut {
    pub key: String,
    pub sha256: ContentHash,
    pub size: u64,
    pub content_type: &'static str,
    pub uploader: String,
    pub expires_in: Duration,
}

/// A multipart upload in progress: the key it assembles under and the store's id for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartRef {
    pub key: String,
    pub upload_id: String,
}

#[derive(Debug, Clone)]
pub struct StartParts {
    pub key: String,
    pub content_type: &'static str,
    pub uploader: String,
    /// Every part but the last is this long (a store may lay parts out by it).
    pub part_size: u64,
}

/// A PUT of one part the client sends itself. Signed: the part's checksum and length.
#[derive(Debug, Clone)]
pub struct PresignPart {
    pub upload: MultipartRef,
    pub part: Part,
    pub uploader: String,
    pub expires_in: Duration,
}

/// An object-created or object-removed notification. Delivery may duplicate, reorder, delay
/// or drop them; the protocol tolerates all four.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobEvent {
    Created {
        key: String,
        version: String,
        sequencer: String,
    },
    Removed {
        key: String,
        version: String,
        sequencer: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct ObjectPage {
    pub objects: Vec<ObjectMeta>,
    pub next: Option<String>,
}

pub trait BlobStore: Send + Sync + 'static {
    /// Stores the body unless an object exists under the key. The body's hash is verified.
    fn put_if_absent(
        &self,
        req: PutRequest,
    ) -> impl Future<Output = Result<PutOutcome, StoreError>> + Send;

    /// The current object under the key, if any.
    fn head(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectMeta>, StoreError>> + Send;

    /// Deletes exactly this version. Deleting a version that is already gone succeeds.
    fn delete_version(
        &self,
        key: &str,
        version: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Bytes `offset..offset+length` of one exact version; `None` if that version is gone.
    fn read_range(
        &self,
        key: &str,
        version: &str,
        offset: u64,
        length: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Streams one version through SHA-256, for stores that report no checksum.
    fn stream_sha256(
        &self,
        key: &str,
        version: &str,
    ) -> impl Future<Output = Result<Option<ContentHash>, StoreError>> + Send;

    /// A PUT the client sends itself. Signed: checksum, length, uploader and no-overwrite.
    fn presign_put(
        &self,
        req: &PresignPut,
    ) -> impl Future<Output = Result<SignedRequest, StoreError>> + Send;

    /// A short-lived GET of one exact version.
    fn presign_get(
        &self,
        key: &str,
        version: &str,
        content_type: &'static str,
        expires_in: Duration,
    ) -> impl Future<Output = Result<SignedRequest, StoreError>> + Send;

    /// Starts a multipart upload under `req.key`; the store's id for it. Parts must each carry
    /// a SHA-256, which the store checks as they arrive.
    fn start_parts(
        &self,
        req: &StartParts,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// A signed PUT of one part: refused by the store unless its bytes match `part.sha256`
    /// and `part.size`.
    fn presign_part(
        &self,
        req: &PresignPart,
    ) -> impl Future<Output = Result<SignedRequest, StoreError>> + Send;

    /// The parts the store holds, by number; `None` when no such upload is in progress
    /// (finished or aborted). Costs what the upload's parts do.
    fn list_parts(
        &self,
        upload: &MultipartRef,
    ) -> impl Future<Output = Result<Option<Vec<Part>>, StoreError>> + Send;

    /// Assembles `parts` (all of them, in order) into an object under the upload's key: that
    /// object, or `None` when no such upload is in progress. `sha256` is set only where the
    /// store computed the whole object's digest while assembling it.
    fn finish_parts(
        &self,
        upload: &MultipartRef,
        parts: &[Part],
    ) -> impl Future<Output = Result<Option<ObjectMeta>, StoreError>> + Send;

    /// Drops an upload in progress and its parts. Aborting one that is gone succeeds.
    fn abort_parts(
        &self,
        upload: &MultipartRef,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Copies one exact version to `to_key` as `uploader`, unless an object exists there
    /// (if-none-match).
    fn copy_if_absent(
        &self,
        from: &ObjectMeta,
        to_key: &str,
        content_type: &'static str,
        uploader: &str,
    ) -> impl Future<Output = Result<PutOutcome, StoreError>> + Send;

    /// Current objects in the store's key order (total and stable; `after` is a key from an
    /// earlier page), one page at a time, at a cost that follows the page (the reconciler's
    /// sweep). A listing may leave `sha256` and `uploader` out; `head` has them.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<ObjectPage, StoreError>> + Send;
}
