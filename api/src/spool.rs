//! The one request-body spooler: bodies are hashed while they arrive and written to a file,
//! never held whole in memory (except where the platform already holds them: a Lambda
//! event). Direct uploads use it, and so do the local server's signed blob PUTs.

use std::path::{Path, PathBuf};

use axum::body::Body;
use bytes::{Bytes, BytesMut};

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use audio_dedup_core::ports::BlobBody;
use audio_dedup_core::{ContentHash, ErrorCode, StreamingHasher};

use crate::error::ApiError;

/// Removes its file when dropped (the blob store links the file into place, so the temp name
/// can always go).
pub struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub struct Spooled {
    pub body: BlobBody,
    pub hash: ContentHash,
    pub size: u64,
    _temp: Option<TempPath>,
}

/// Why a body was not spooled.
#[derive(Debug)]
pub enum SpoolError {
    /// More bytes than the limit arrived.
    TooLong,
    /// The connection failed mid-body.
    Unreadable,
    Io(std::io::Error),
}

impl SpoolError {
    /// The answer for a body that was not spooled; `too_long` names the limit's meaning.
    pub fn into_api(self, too_long: impl FnOnce() -> ApiError) -> ApiError {
        match self {
            Self::TooLong => too_long(),
            Self::Unreadable => ApiError::new(
                ErrorCode::UnreadableBody,
                "the request body could not be read",
            ),
            Self::Io(e) => {
                tracing::error!(error = %e, "spooling a request body failed");
                ApiError::internal()
            }
        }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(ErrorCode::BodyTooLarge,
        format!("direct uploads are at most {limit} bytes; open an upload session with POST /v1/audio/uploads"),
    )
}

/// A direct upload's body, at most `limit` bytes (413 `body_too_large` past it).
pub async fn spool(body: Body, limit: u64, dir: Option<&Path>) -> Result<Spooled, ApiError> {
    spool_body(body, limit, dir)
        .await
        .map_err(|e| e.into_api(|| too_large(limit)))
}

/// Spools `body` into a new file in `dir` (in memory without one), hashing it, refusing it
/// once more than `limit` bytes have arrived.
pub async fn spool_body(body: Body, limit: u64, dir: Option<&Path>) -> Result<Spooled, SpoolError> {
    let mut hasher = StreamingHasher::new();
    let mut body = body;
    let (mut file, temp) = match dir {
        Some(d) => {
            let path = d.join(format!("{}.upload", uuid::Uuid::new_v4().simple()));
            let f = tokio::fs::File::create(&path)
                .await
                .map_err(SpoolError::Io)?;
            (Some(f), Some(TempPath(path)))
        }
        None => (None, None),
    };
    let mut mem = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| SpoolError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if hasher.len() + data.len() as u64 > limit {
            return Err(SpoolError::TooLong);
        }
        hasher.update(&data);
        match file.as_mut() {
            Some(f) => f.write_all(&data).await.map_err(SpoolError::Io)?,
            None => mem.extend_from_slice(&data),
        }
    }
    if let Some(mut f) = file {
        f.flush().await.map_err(SpoolError::Io)?;
        f.sync_all().await.map_err(SpoolError::Io)?;
    }
    let (hash, size) = hasher.finish();
    let body = match &temp {
        Some(t) => BlobBody::File(t.0.clone()),
        None => BlobBody::Bytes(Bytes::from(mem)),
    };
    Ok(Spooled {
        body,
        hash,
        size,
        _temp: temp,
    })
}

pub fn check_declared_length(headers: &http::HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}
