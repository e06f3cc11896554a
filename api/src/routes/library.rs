//! `/v1/library`: the caller's own library only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;

use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{AudioSource, ErrorCode, LibraryItemId, MessageId, Title};

use super::{created_or_ok, CursorParam, ListQuery};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{field, non_null, JsonBody, PathIds, StrictQuery};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    #[serde(default, deserialize_with = "non_null")]
    content_hash: Option<String>,
    /// Save the audio of a message the caller can see, instead of audio they hold.
    #[serde(default, deserialize_with = "non_null")]
    from_message: Option<String>,
    title: String,
}

pub async fn put<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(id): PathIds<LibraryItemId>,
    JsonBody(b): JsonBody<PutBody>,
) -> Result<Response, ApiError> {
    let hash = b.content_hash.as_deref().map(field).transpose()?;
    let from: Option<MessageId> = b.from_message.as_deref().map(field).transpose()?;
    let source = AudioSource::one_of(hash, from)
        .map_err(|reason| ApiError::new(ErrorCode::InvalidAudio, reason))?;
    let title = Title::new(b.title)?;
    let (view, created) = s
        .dedup
        .chat()
        .put_library_item(&caller.user, &id, &source, &title)
        .await?;
    Ok(created_or_ok(created, view))
}

pub async fn delete<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(id): PathIds<LibraryItemId>,
) -> Result<Response, ApiError> {
    s.dedup
        .chat()
        .delete_library_item(&caller.user, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    StrictQuery(q): StrictQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let (cursor, limit) = q.page(CursorParam::Since, "the library")?;
    let page = s
        .dedup
        .chat()
        .list_library(&caller.user, cursor, limit)
        .await?;
    Ok(Json(page).into_response())
}
