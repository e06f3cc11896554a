//! Route handlers: parse and validate at the edge, call one protocol function, answer.

pub mod audio;
pub mod library;
pub mod messages;
pub mod meta;
pub mod references;
pub mod threads;

use audio_dedup_core::chat::{parse_cursor, DEFAULT_PAGE, MAX_PAGE};
use audio_dedup_core::{ErrorCode, Seq};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use crate::error::ApiError;
/// `?since=` / `?after=` and `?limit=` of the change-log reads. Each route takes one of the
/// two cursor names (as the API documents) and refuses the other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    since: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// Which name a log's cursor goes by on its route.
#[derive(Clone, Copy)]
pub(crate) enum CursorParam {
    Since,
    After,
}

impl ListQuery {
    /// The cursor (under the route's name; the other is refused) and the page size.
    pub(crate) fn page(&self, name: CursorParam, log: &str) -> Result<(Seq, usize), ApiError> {
        let (wanted, other, value) = match name {
            CursorParam::Since => ("since", &self.after, &self.since),
            CursorParam::After => ("after", &self.since, &self.after),
        };
        if other.is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("{log} takes `{wanted}` as its cursor"),
            ));
        }
        Ok((
            parse_cursor(value.as_deref())?,
            page_limit(self.limit.as_deref())?,
        ))
    }
}

/// 201 with the body when the request created it, 200 when it was already there.
pub(crate) fn created_or_ok<T: serde::Serialize>(created: bool, body: T) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

pub(crate) fn page_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_PAGE);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) && !raw.starts_with('+') => Ok(n),
        _ => Err(ApiError::new(
            ErrorCode::InvalidLimit,
            format!("limit is an integer from 1 to {MAX_PAGE}"),
        )),
    }
}
