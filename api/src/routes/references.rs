//! `/v1/audio/{hash}/references/{ref_id}`: the caller's own references only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;

use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{ErrorCode, ReferenceId, ReferenceKind};

use super::content_hash;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{parse, JsonBody, RawPath};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    kind: String,
}

pub async fn add<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    RawPath((hash, ref_id)): RawPath<(String, String)>,
    JsonBody(b): JsonBody<AddBody>,
) -> Result<Response, ApiError> {
    let hash = content_hash(&hash)?;
    let ref_id: ReferenceId = parse(&ref_id, ErrorCode::InvalidRefId)?;
    let kind: ReferenceKind = parse(&b.kind, ErrorCode::InvalidRefKind)?;
    let view = s
        .dedup
        .audio()
        .add_reference(&caller.user, &hash, &ref_id, kind)
        .await?;
    Ok(Json(view).into_response())
}

pub async fn remove<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    RawPath((hash, ref_id)): RawPath<(String, String)>,
) -> Result<Response, ApiError> {
    let hash = content_hash(&hash)?;
    let ref_id: ReferenceId = parse(&ref_id, ErrorCode::InvalidRefId)?;
    s.dedup
        .audio()
        .remove_reference(&caller.user, &hash, &ref_id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
