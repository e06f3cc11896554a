//! `/v1/audio`: direct upload, upload sessions, completion, metadata.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use audio_dedup_core::audio::{CompleteRequest, DirectUpload, PartsRequest, SessionRequest};
use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{
    AudioFormat, ContentHash, ErrorCode, Part, PendingReference, Proof, SessionId,
};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{field, json_u64, non_null, JsonBody, PathIds, StrictQuery};
use crate::spool::{check_declared_length, spool};
use crate::{AppState, MAX_DIRECT_UPLOAD};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    format: Option<String>,
    ref_kind: Option<String>,
    ref_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceBody {
    kind: String,
    ref_id: String,
}

fn reference(kind: Option<&str>, id: Option<&str>) -> Result<Option<PendingReference>, ApiError> {
    match (kind, id) {
        (None, None) => Ok(None),
        (Some(k), Some(i)) => Ok(Some(PendingReference {
            kind: field(k)?,
            ref_id: field(i)?,
        })),
        _ => Err(ApiError::new(
            ErrorCode::IncompleteReference,
            "a reference needs both a kind and an id",
        )),
    }
}

fn format_of(raw: Option<&str>) -> Result<AudioFormat, ApiError> {
    let raw = raw.ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingFormat,
            "the format query parameter is required",
        )
    })?;
    field(raw)
}

/// `x-amz-checksum-sha256`: canonical base64 of the 32-byte digest, with its one `=` of
/// padding or without it (43 characters).
fn checksum(v: &http::HeaderValue) -> Result<ContentHash, ApiError> {
    let text = v.to_str().ok().map(str::trim);
    let padded = match text {
        Some(t) if t.len() == 43 => Some(format!("{t}=")),
        other => other.map(str::to_owned),
    };
    padded
        .and_then(|t| ContentHash::from_base64(&t).ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidChecksum,
                "x-amz-checksum-sha256 must be the base64 of a SHA-256 digest",
            )
        })
}

pub async fn upload_direct<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    StrictQuery(q): StrictQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(q.format.as_deref())?;
    let reference = reference(q.ref_kind.as_deref(), q.ref_id.as_deref())?;
    let claimed = match headers.get("x-amz-checksum-sha256") {
        None => None,
        Some(v) => Some(checksum(v)?),
    };
    check_declared_length(&headers, MAX_DIRECT_UPLOAD)?;
    let spooled = spool(body, MAX_DIRECT_UPLOAD, s.cfg.spool_dir.as_deref()).await?;
    if spooled.size == 0 {
        return Err(ApiError::new(
            ErrorCode::EmptyBody,
            "the audio body is empty",
        ));
    }
    if claimed.is_some_and(|c| c != spooled.hash) {
        return Err(ApiError::new(
            ErrorCode::ChecksumMismatch,
            "the body does not match x-amz-checksum-sha256",
        ));
    }
    let result = s
        .dedup
        .audio()
        .upload_direct(DirectUpload {
            owner: caller.user,
            format,
            hash: spooled.hash,
            size: spooled.size,
            body: spooled.body.clone(),
            reference,
        })
        .await?;
    let status = if result.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(result)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    sha256: String,
    #[serde(deserialize_with = "json_u64")]
    size: u64,
    format: String,
    #[serde(default, deserialize_with = "non_null")]
    reference: Option<ReferenceBody>,
}

pub async fn open_session<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    JsonBody(b): JsonBody<SessionBody>,
) -> Result<Response, ApiError> {
    let req = SessionRequest {
        owner: caller.user,
        hash: field(&b.sha256)?,
        size: b.size,
        format: format_of(Some(&b.format))?,
        reference: reference(
            b.reference.as_ref().map(|r| r.kind.as_str()),
            b.reference.as_ref().map(|r| r.ref_id.as_str()),
        )?,
    };
    let session = s.dedup.audio().open_session(req).await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    session_id: String,
    #[serde(default, deserialize_with = "non_null")]
    proof: Option<String>,
}

pub async fn complete<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(hash): PathIds<ContentHash>,
    JsonBody(b): JsonBody<CompleteBody>,
) -> Result<Response, ApiError> {
    let session_id: SessionId = field(&b.session_id)?;
    let proof = b.proof.as_deref().map(Proof::new).transpose()?;
    let result = s
        .dedup
        .audio()
        .complete(CompleteRequest {
            owner: caller.user,
            hash,
            session_id,
            proof,
        })
        .await?;
    Ok(Json(result).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartBody {
    #[serde(deserialize_with = "json_u64")]
    number: u64,
    #[serde(deserialize_with = "json_u64")]
    size: u64,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignPartsBody {
    session_id: String,
    parts: Vec<PartBody>,
}

/// `POST /v1/audio/{hash}/parts`: signed PUTs for parts of a parted session.
pub async fn sign_parts<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(hash): PathIds<ContentHash>,
    JsonBody(b): JsonBody<SignPartsBody>,
) -> Result<Response, ApiError> {
    let session_id: SessionId = field(&b.session_id)?;
    let parts = b
        .parts
        .iter()
        .map(|p| {
            let number = u32::try_from(p.number).map_err(|_| {
                ApiError::new(ErrorCode::InvalidPart, "a part number is at most 10000")
            })?;
            Ok(Part {
                number,
                size: p.size,
                sha256: field(&p.sha256)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let signed = s
        .dedup
        .audio()
        .sign_parts(PartsRequest {
            owner: caller.user,
            hash,
            session_id,
            parts,
        })
        .await?;
    Ok(Json(serde_json::json!({ "parts": signed })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartsQuery {
    session_id: Option<String>,
}

/// `GET /v1/audio/{hash}/parts?session_id=`: the parts the store holds (to resume).
pub async fn list_parts<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(hash): PathIds<ContentHash>,
    StrictQuery(q): StrictQuery<PartsQuery>,
) -> Result<Response, ApiError> {
    let raw = q.session_id.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidSessionId,
            "the session_id query parameter is required",
        )
    })?;
    let session_id: SessionId = field(&raw)?;
    let view = s
        .dedup
        .audio()
        .uploaded_parts(&caller.user, &hash, &session_id)
        .await?;
    Ok(Json(view).into_response())
}

pub async fn describe<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(hash): PathIds<ContentHash>,
) -> Result<Response, ApiError> {
    Ok(Json(s.dedup.audio().describe(&caller.user, &hash).await?).into_response())
}
