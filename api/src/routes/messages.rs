//! `/v1/threads/{id}/messages` and `/v1/messages/{id}/snapshot`: members only; only the
//! author deletes.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use audio_dedup_core::chat::NewMessage;
use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{
    MessageAudio, MessageId, MessageText, Snapshot, ThreadId, MAX_SNAPSHOT_BYTES,
};

use super::{created_or_ok, CursorParam, ListQuery};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{field, non_null, JsonBody, PathIds, StrictQuery};
use crate::AppState;

/// Largest `POST /v1/threads/{id}/messages` body: a full snapshot and the rest (a full text
/// written as `\\u` escapes is at most 24,000 bytes).
pub const MAX_MESSAGE_BODY: usize = MAX_SNAPSHOT_BYTES + 32 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    id: String,
    snapshot: Box<RawValue>,
    #[serde(default, deserialize_with = "non_null")]
    audio: Option<MessageAudio>,
    #[serde(default, deserialize_with = "non_null")]
    text: Option<String>,
}

pub async fn create<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(thread): PathIds<ThreadId>,
    JsonBody(b): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let id: MessageId = field(&b.id)?;
    let req = NewMessage {
        id,
        snapshot: Snapshot::new(b.snapshot)?,
        audio: b.audio,
        text: b.text.map(MessageText::new).transpose()?,
    };
    let (view, created) = s
        .dedup
        .chat()
        .create_message(&caller.user, &thread, req)
        .await?;
    Ok(created_or_ok(created, view))
}

pub async fn list<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(thread): PathIds<ThreadId>,
    StrictQuery(q): StrictQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let (cursor, limit) = q.page(CursorParam::After, "message sync")?;
    let page = s
        .dedup
        .chat()
        .list_messages(&caller.user, &thread, cursor, limit)
        .await?;
    Ok(Json(page).into_response())
}

pub async fn delete<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds((thread, id)): PathIds<(ThreadId, MessageId)>,
) -> Result<Response, ApiError> {
    s.dedup
        .chat()
        .delete_message(&caller.user, &thread, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The audio of a live message, for any member of its thread (the message is the grant).
pub async fn audio<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds((thread, id)): PathIds<(ThreadId, MessageId)>,
) -> Result<Response, ApiError> {
    let view = s
        .dedup
        .chat()
        .message_audio(&caller.user, &thread, &id)
        .await?;
    Ok(Json(view).into_response())
}

pub async fn snapshot<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(id): PathIds<MessageId>,
) -> Result<Response, ApiError> {
    let body = s.dedup.chat().snapshot(&caller.user, &id).await?;
    let mut res = (StatusCode::OK, body.json).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The snapshot's SHA-256: the same value as `snapshot.sha256` in the message.
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", body.sha256)) {
        h.insert(header::ETAG, tag);
    }
    // A snapshot never changes, but a deleted message's must stop being served soon.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=60"),
    );
    Ok(res)
}
