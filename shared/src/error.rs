//! Typed errors. Each protocol error knows its HTTP status and a stable code; store errors
//! are internal (500) and their text is logged, never sent to callers.

use std::error::Error as StdError;

/// A storage adapter failure. Adapters translate their SDK errors into these variants.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Throttled, timed out or unreachable: the same call may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store backend error: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl StdError + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }

    /// The same error, for a second caller: same variant, the source kept as text.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            Self::Io(e) => Self::Io(std::io::Error::new(e.kind(), e.to_string())),
            Self::Corrupt { key, reason } => Self::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
            Self::Backend(e) => Self::Backend(e.to_string().into()),
        }
    }
}

/// Every failure the protocol reports.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The caller must send the bytes: the proof was not accepted or nothing was uploaded.
    /// One answer for both, so it never tells whether the content exists.
    #[error("upload the bytes to the session's URL, then complete again")]
    UploadRequired,
    #[error("{message}")]
    Expired { code: &'static str, message: String },
    /// Compare-and-swap retries exhausted under contention.
    #[error("too much contention on this content; retry")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DedupError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// The same error for another caller (a batch's shared failure): same variant, status
    /// and code; a store error's source is carried as its text.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::BadRequest { code, message } => Self::bad_request(code, message.clone()),
            Self::NotFound { code, message } => Self::not_found(code, message.clone()),
            Self::Conflict { code, message } => Self::conflict(code, message.clone()),
            Self::UploadRequired => Self::UploadRequired,
            Self::Expired { code, message } => Self::Expired {
                code,
                message: message.clone(),
            },
            Self::Busy => Self::Busy,
            Self::Store(e) => Self::Store(e.duplicate()),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } => 400,
            Self::NotFound { .. } => 404,
            Self::Conflict { .. } | Self::UploadRequired => 409,
            Self::Expired { .. } => 410,
            Self::Busy => 503,
            Self::Store(StoreError::Unavailable(_)) => 503,
            Self::Store(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::NotFound { code, .. }
            | Self::Conflict { code, .. }
            | Self::Expired { code, .. } => code,
            Self::UploadRequired => "upload_required",
            Self::Busy => "busy",
            Self::Store(StoreError::Unavailable(_)) => "unavailable",
            Self::Store(_) => "internal",
        }
    }

    /// What a caller may see. Internal details stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(StoreError::Unavailable(_)) => {
                "storage is temporarily unavailable; retry".into()
            }
            Self::Store(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}
