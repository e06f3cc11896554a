//! `/v1/threads`: create, the caller's feed, one thread. Members only.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use audio_dedup_core::chat::NewThread;
use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{valid_title, ErrorCode, ThreadId, UserId, MAX_THREAD_MEMBERS};

use super::{created_or_ok, CursorParam, ListQuery};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{non_null, parse, JsonBody, RawPath, StrictQuery};
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
    let id =
        b.id.as_deref()
            .map(|i| parse::<ThreadId>(i, ErrorCode::InvalidThreadId))
            .transpose()?;
    if !valid_title(&b.title) {
        return Err(ApiError::new(
            ErrorCode::InvalidTitle,
            "a title is 1 to 200 characters, not blank, without control characters",
        ));
    }
    if b.members.len() > MAX_THREAD_MEMBERS - 1 {
        return Err(ApiError::new(
            ErrorCode::TooManyMembers,
            format!(
                "members lists at most {} users besides the caller (who is always a member)",
                MAX_THREAD_MEMBERS - 1
            ),
        ));
    }
    let members = b
        .members
        .iter()
        .map(|m| parse::<UserId>(m, ErrorCode::InvalidMember))
        .collect::<Result<Vec<_>, _>>()?;
    let (view, created) = s
        .dedup
        .chat()
        .create_thread(
            &caller.user,
            NewThread {
                id,
                title: b.title,
                members,
            },
        )
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
    RawPath(id): RawPath<String>,
) -> Result<Response, ApiError> {
    let id: ThreadId = parse(&id, ErrorCode::InvalidThreadId)?;
    let t = s.dedup.chat().get_thread(&caller.user, &id).await?;
    Ok(Json(t).into_response())
}
