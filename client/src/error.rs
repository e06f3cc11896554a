//! Errors the client reports. Request failures are classified once, here, into what the
//! queue retries and what it does not.

use std::time::Duration;

use crate::auth::TokenUnavailable;

pub use audio_dedup_core::ErrorCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No answer: connection refused, reset, timed out. Retryable; flips the client offline.
    #[error("offline: {0}")]
    Offline(String),
    /// 5xx, 408 or 429: retry later (after `retry_after` when the server said so).
    #[error("temporarily refused ({status} {code})")]
    Retryable {
        status: u16,
        code: ErrorCode,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: retrying the same request cannot succeed.
    #[error("refused ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// A 2xx the client could not read.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// No token the server accepts: the client is signed out until the app or its token
    /// provider hands over a new one. Queued operations wait; nothing is marked failed.
    #[error("signed out: {0}")]
    AuthRequired(TokenUnavailable),
}

impl ApiError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Offline(_) | Self::Retryable { .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Retryable { status, .. } | Self::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Retryable { code, .. } | Self::Rejected { code, .. } => Some(*code),
            Self::AuthRequired(_) => Some(ErrorCode::Unauthorized),
            Self::Offline(_) | Self::Protocol(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cache database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The caller's input is refused before anything is sent: an empty file, a null
    /// snapshot, a bad title, a page of no messages.
    #[error("{0}")]
    InvalidInput(String),
    /// Not possible in the item's current state (discarding an operation that has not failed).
    #[error("{0}")]
    WrongState(String),
    /// A queued file changed or vanished since it was queued: sending it can never succeed.
    #[error("{0}")]
    FileChanged(String),
    /// Data the client itself wrote could not be read back.
    #[error("local data: {0}")]
    Corrupt(String),
    /// Work the client ran on a blocking thread failed (it panicked or was cancelled).
    #[error("background task: {0}")]
    Task(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Downloaded or local bytes do not hash to the expected content.
    #[error("content does not match its hash {0}")]
    HashMismatch(String),
    /// Another client (in this process or another) has this cache folder open.
    #[error("the cache folder {} is in use by another client", .0.display())]
    FolderInUse(std::path::PathBuf),
    /// `clear_all` (logout) ran: this client writes and sends nothing more. Open a new one.
    #[error("the client was cleared (logout); open a new one")]
    Closed,
}

impl ClientError {
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(format!("JSON: {e}"))
    }
}
