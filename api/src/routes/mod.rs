//! Route handlers: parse and validate at the edge, call one protocol function, answer.

pub mod audio;
pub mod library;
pub mod messages;
pub mod meta;
pub mod references;
pub mod threads;

use audio_dedup_core::protocol::{parse_cursor, DEFAULT_PAGE, MAX_PAGE};
use audio_dedup_core::{ContentHash, Seq};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::parse;

pub(crate) fn content_hash(raw: &str) -> Result<ContentHash, ApiError> {
    parse(raw, "invalid_hash")
}

/// `?since=` / `?after=` and `?limit=` of the change-log reads. Each route takes one of the
/// two cursor names (as the API documents) and refuses the other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    since: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

pub(crate) fn cursor(raw: Option<&str>) -> Result<Seq, ApiError> {
    Ok(parse_cursor(raw)?)
}

pub(crate) fn page_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_PAGE);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) && !raw.starts_with('+') => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit is an integer from 1 to {MAX_PAGE}"),
        )),
    }
}
