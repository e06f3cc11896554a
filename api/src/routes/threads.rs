//! `/v1/threads`: create, the caller's feed, one thread. Members only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;

use audio_dedup_core::chat::NewThread;
use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{Members, ThreadId, Title, UserId};

use super::{created_or_ok, CursorParam, ListQuery};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{field, non_null, JsonBody, PathIds, StrictQuery};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default, deserialize_with = "non_null")]
    id: Option<String>,
    title: String,
    members: Vec<String>,
}

pub async fn create<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    JsonBody(b): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let id = b.id.as_deref().map(field::<ThreadId>).transpose()?;
    let title = Title::new(b.title)?;
    let members = Members::parse(&b.members)?;
    let (view, created) = s
        .dedup
        .chat()
        .create_thread(&caller.user, NewThread { id, title, members })
        .await?;
    Ok(created_or_ok(created, view))
}

pub async fn list<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    StrictQuery(q): StrictQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let (cursor, limit) = q.page(CursorParam::Since, "the thread feed")?;
    let page = s
        .dedup
        .chat()
        .list_threads(&caller.user, cursor, limit)
        .await?;
    Ok(Json(page).into_response())
}

pub async fn get_one<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(id): PathIds<ThreadId>,
) -> Result<Response, ApiError> {
    let t = s.dedup.chat().get_thread(&caller.user, &id).await?;
    Ok(Json(t).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberBody {
    member: String,
}

/// `POST /v1/threads/{id}/members`: any member adds someone (`201`; `200` if they are one).
pub async fn add_member<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(id): PathIds<ThreadId>,
    JsonBody(b): JsonBody<AddMemberBody>,
) -> Result<Response, ApiError> {
    let member: UserId = field(&b.member)?;
    let (view, added) = s
        .dedup
        .chat()
        .add_member(&caller.user, &id, &member)
        .await?;
    Ok(created_or_ok(added, view))
}

/// `DELETE /v1/threads/{id}/members/{member}`: the creator removes a member; anyone removes
/// themselves (leaves). `204` whether or not they were a member.
pub async fn remove_member<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds((id, member)): PathIds<(ThreadId, UserId)>,
) -> Result<Response, ApiError> {
    s.dedup
        .chat()
        .remove_member(&caller.user, &id, &member)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/threads/{id}/leave`: the caller leaves (a client need not know its user id).
/// A caller who is not a member gets 404, so a retried leave answers 404.
pub async fn leave<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(id): PathIds<ThreadId>,
) -> Result<Response, ApiError> {
    s.dedup
        .chat()
        .remove_member(&caller.user, &id, &caller.user)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    cursor: String,
}

/// `PUT /v1/threads/{id}/read`: the caller has read the thread up to `cursor` (a position
/// of its log); their other devices learn it from their feed. `204` (also when the marker
/// was already there or further on).
pub async fn mark_read<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    PathIds(id): PathIds<ThreadId>,
    JsonBody(b): JsonBody<ReadBody>,
) -> Result<Response, ApiError> {
    let cursor = audio_dedup_core::chat::parse_cursor(Some(&b.cursor))?;
    s.dedup.chat().mark_read(&caller.user, &id, cursor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsQuery {
    /// An earlier answer's `as_of`: list only threads changed since.
    changed_since: Option<String>,
}

/// `GET /v1/positions`: the position of each log the caller follows (the feed, the library,
/// each of their threads, or those changed since an earlier answer), so a client that was
/// away syncs only those that moved.
pub async fn positions<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
    StrictQuery(q): StrictQuery<PositionsQuery>,
) -> Result<Response, ApiError> {
    let since = match q.changed_since.as_deref() {
        None => None,
        Some(raw) => Some(
            i64::try_from(audio_dedup_core::chat::parse_cursor(Some(raw))?).unwrap_or(i64::MAX),
        ),
    };
    let p = s.dedup.chat().positions(&caller.user, since).await?;
    Ok(Json(p).into_response())
}
