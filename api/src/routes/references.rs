//! `/v1/audio/{hash}/references/{ref_id}`: the caller's own references only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;

use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{ContentHash, ReferenceId, ReferenceKind};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{field, JsonBody, PathIds};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    kind: String,
}

pub async fn add<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds((hash, ref_id)): PathIds<(ContentHash, ReferenceId)>,
    JsonBody(b): JsonBody<AddBody>,
) -> Result<Response, ApiError> {
    let kind: ReferenceKind = field(&b.kind)?;
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
    PathIds((hash, ref_id)): PathIds<(ContentHash, ReferenceId)>,
) -> Result<Response, ApiError> {
    s.dedup
        .audio()
        .remove_reference(&caller.user, &hash, &ref_id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
