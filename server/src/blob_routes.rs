//! `/blob/{key}`: the local stand-in for S3 presigned URLs. PUT stores a body only if its
//! signature, expiry, signed headers, length and SHA-256 all check out, and never overwrites.
//! GET serves one exact version, with Range support, until the URL expires.
//!
//! Before a body is read, each user (the owner of the signing session) is charged its size:
//! at most `put_bytes_per_day` bytes a day through signed PUTs, failed ones included, so a
//! URL cannot be replayed to make the server read without end. (A 412 for an existing object
//! comes only after the body has been read and verified: answering it earlier would tell a
//! caller without the bytes that the content exists.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use audio_dedup_api::spool::spool_body;
use audio_dedup_api::ApiError;
use audio_dedup_core::ports::{BlobStore, MultipartRef, PutOutcome, PutRequest};
use audio_dedup_core::store::embedded::{FsBlobStore, PartReceipt, SignError};

use crate::LocalDedup;
use audio_dedup_core::{protocol::keys, DailyBytes, DedupError, ErrorCode, Part, Uploader, UserId};

pub struct BlobState {
    pub blobs: FsBlobStore,
    pub key_prefix: String,
    pub dedup: Arc<LocalDedup>,
    /// Bytes each user may send through signed PUTs per UTC day.
    pub put_bytes_per_day: u64,
    /// Bytes received per user today.
    pub put_bytes: Mutex<HashMap<UserId, DailyBytes>>,
}

impl BlobState {
    /// Reserves `size` bytes of `owner`'s day, or refuses with 429.
    fn reserve(&self, owner: &UserId, size: u64, now: i64) -> Result<(), ApiError> {
        let mut used = self.put_bytes.lock().unwrap_or_else(|p| p.into_inner());
        // Yesterday's counts are dropped, so the map holds only today's senders.
        let today = DailyBytes::day_of(now);
        used.retain(|_, b| b.day == today);
        let limit = self.put_bytes_per_day;
        used.entry(owner.clone())
            .or_default()
            .charge(size, limit, now)
            .map_err(|wait| {
                ApiError::from(DedupError::limited(
                    ErrorCode::QuotaExceeded,
                    format!("at most {limit} bytes a day may be sent through signed uploads"),
                    wait,
                ))
            })
    }
}

fn sign_error(e: SignError) -> ApiError {
    match e {
        SignError::Expired => ApiError::new(ErrorCode::UrlExpired, e.to_string()),
        SignError::BadSignature => ApiError::new(ErrorCode::SignatureInvalid, e.to_string()),
        SignError::HeaderMismatch(_) => {
            ApiError::new(ErrorCode::SignedHeaderMissing, e.to_string())
        }
    }
}

fn owned_key(state: &BlobState, key: &str) -> Result<(), ApiError> {
    if keys::hash_from_blob_key(&state.key_prefix, key).is_none() {
        return Err(ApiError::new(
            ErrorCode::SignatureInvalid,
            "not a signed object URL",
        ));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "blob route failed");
    ApiError::internal()
}

pub async fn put_object(
    State(state): State<Arc<BlobState>>,
    Path(key): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if query.contains_key("X-Part") {
        return put_part(state, key, query, headers, body).await;
    }
    owned_key(&state, &key)?;
    let header = |name: &str| header_of(&headers, name);
    let now = state.blobs.clock().now_ms();
    let grant = state
        .blobs
        .signer()
        .verify_put(&key, &query, header, now)
        .map_err(sign_error)?;
    if header("if-none-match").as_deref() != Some("*") {
        return Err(ApiError::new(
            ErrorCode::SignedHeaderMissing,
            "if-none-match: * is required",
        ));
    }
    declared_length(&headers, grant.size)?;
    let owner = match (
        keys::hash_from_blob_key(&state.key_prefix, &key),
        Uploader::parse(Some(&grant.uploader)),
    ) {
        (Some(hash), Some(Uploader::Session(id))) => state
            .dedup
            .audio()
            .session_owner(&hash, &id)
            .await
            .map_err(internal)?,
        _ => None,
    };
    // Only sessions sign PUTs; a grant naming no live session has nobody to charge.
    let Some(owner) = owner else {
        return Err(ApiError::new(
            ErrorCode::SignatureInvalid,
            "this URL names no upload session",
        ));
    };
    state.reserve(&owner, grant.size, now)?;
    // Spooled in the store's own folder, so the put links the file into place.
    let spooled = spool_body(body, grant.size, Some(&state.blobs.spool_dir()))
        .await
        .map_err(|e| {
            e.into_api(|| ApiError::new(ErrorCode::SizeMismatch, "the body is longer than signed"))
        })?;
    let (hash, size) = (spooled.hash, spooled.size);
    if size != grant.size {
        return Err(ApiError::new(
            ErrorCode::SizeMismatch,
            "the body is shorter than signed",
        ));
    }
    if hash != grant.sha256 {
        return Err(ApiError::new(
            ErrorCode::BadDigest,
            "the body does not match x-amz-checksum-sha256",
        ));
    }
    let content_type = audio_dedup_core::AudioFormat::ALL
        .into_iter()
        .map(|f| f.content_type())
        .find(|ct| *ct == grant.content_type)
        .unwrap_or("application/octet-stream");
    let put = PutRequest {
        key,
        body: spooled.body.clone(),
        sha256: hash,
        size,
        content_type,
        uploader: grant.uploader,
    };
    match state.blobs.put_if_absent(put).await.map_err(internal)? {
        PutOutcome::Created { version } => {
            let mut res = StatusCode::OK.into_response();
            if let Ok(v) = HeaderValue::from_str(&version) {
                res.headers_mut().insert("x-amz-version-id", v);
            }
            Ok(res)
        }
        PutOutcome::AlreadyExists => Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "an object already exists at this key",
        )),
    }
}

/// A request header as text, if it is readable.
fn header_of(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The declared `content-length`, which must be what the URL was signed for.
fn declared_length(headers: &HeaderMap, signed: u64) -> Result<(), ApiError> {
    let declared = header_of(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    match declared {
        None => Err(ApiError::new(
            ErrorCode::LengthRequired,
            "content-length is required",
        )),
        Some(n) if n != signed => Err(ApiError::new(
            ErrorCode::SizeMismatch,
            format!("the URL is signed for {signed} bytes"),
        )),
        Some(_) => Ok(()),
    }
}

/// A signed part PUT (S3's UploadPart): stored if the signature, expiry, length and the
/// part's SHA-256 check out, charged to the session's owner like a whole PUT.
async fn put_part(
    state: Arc<BlobState>,
    key: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some((hash, session)) = keys::session_from_staging_key(&state.key_prefix, &key) else {
        return Err(ApiError::new(
            ErrorCode::SignatureInvalid,
            "not a signed part URL",
        ));
    };
    let header = |name: &str| header_of(&headers, name);
    let now = state.blobs.clock().now_ms();
    let grant = state
        .blobs
        .signer()
        .verify_part(&key, &query, header, now)
        .map_err(sign_error)?;
    declared_length(&headers, grant.size)?;
    let Some(owner) = state
        .dedup
        .audio()
        .session_owner(&hash, &session)
        .await
        .map_err(internal)?
    else {
        return Err(ApiError::new(
            ErrorCode::SignatureInvalid,
            "this URL names no upload session",
        ));
    };
    state.reserve(&owner, grant.size, now)?;
    let upload = MultipartRef {
        key,
        upload_id: grant.upload_id,
    };
    let part = Part {
        number: grant.number,
        size: grant.size,
        sha256: grant.sha256,
    };
    // Written straight into the upload's data file while hashed; kept only if it matches.
    let receipt = state
        .blobs
        .receive_part(&upload, part, body.into_data_stream())
        .await
        .map_err(internal)?;
    match receipt {
        PartReceipt::Stored => {}
        PartReceipt::NoSuchUpload => {
            return Err(ApiError::new(
                ErrorCode::ObjectNotFound,
                "no such upload in progress (completed or aborted)",
            ))
        }
        PartReceipt::InProgress => {
            let mut e = ApiError::new(
                ErrorCode::Busy,
                "this part is being written by another request; retry",
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        PartReceipt::WrongLength | PartReceipt::Incomplete => {
            return Err(ApiError::new(
                ErrorCode::SizeMismatch,
                format!("the part must be exactly {} bytes", grant.size),
            ))
        }
        PartReceipt::WrongDigest => {
            return Err(ApiError::new(
                ErrorCode::BadDigest,
                "the part does not match x-amz-checksum-sha256",
            ))
        }
    }
    let mut res = StatusCode::OK.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", part.sha256)) {
        res.headers_mut().insert("etag", v);
    }
    Ok(res)
}

pub async fn get_object(
    State(state): State<Arc<BlobState>>,
    Path(key): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    owned_key(&state, &key)?;
    let now = state.blobs.clock().now_ms();
    let grant = state
        .blobs
        .signer()
        .verify_get(&key, &query, now)
        .map_err(sign_error)?;
    let Some(path) = state
        .blobs
        .version_path(&key, &grant.version)
        .await
        .map_err(internal)?
    else {
        return Err(ApiError::new(
            ErrorCode::ObjectNotFound,
            "the object version no longer exists",
        ));
    };
    let mut res = ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(internal)?
        .into_response();
    if let Ok(ct) = HeaderValue::from_str(&grant.content_type) {
        res.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    }
    res.headers_mut().insert(
        "x-amz-version-id",
        HeaderValue::from_str(&grant.version).map_err(internal)?,
    );
    Ok(res)
}
