//! Route handlers: parse and validate at the edge, call one protocol function, answer.

pub mod audio;
pub mod meta;
pub mod references;

use audio_dedup_core::ContentHash;

use crate::error::ApiError;
use crate::extract::parse;

pub(crate) fn content_hash(raw: &str) -> Result<ContentHash, ApiError> {
    parse(raw, "invalid_hash")
}
