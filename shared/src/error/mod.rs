//! Typed errors. Each protocol error carries an [`ErrorCode`]; store errors are internal and
//! their text is logged, never sent to callers. HTTP statuses are the api crate's business.

mod code;

pub use code::ErrorCode;

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
    /// The request is refused for a reason the caller can act on, named by its code.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// The caller must send the bytes: the proof was not accepted or nothing was uploaded.
    /// One answer for both, so it never tells whether the content exists.
    #[error("upload the bytes to the session's URL, then complete again")]
    UploadRequired,
    /// Over a per-user limit: nothing was written; the same request may pass after
    /// `retry_after`.
    #[error("{message}")]
    Limited {
        code: ErrorCode,
        message: String,
        retry_after: std::time::Duration,
    },
    /// Compare-and-swap retries exhausted under contention.
    #[error("too much contention on this content; retry")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DedupError {
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }

    pub fn limited(
        code: ErrorCode,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        Self::Limited {
            code,
            message: message.into(),
            retry_after,
        }
    }

    /// How long a caller should wait before the same request may succeed, when known.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Limited { retry_after, .. } => Some(*retry_after),
            Self::Busy | Self::Store(StoreError::Unavailable(_)) => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The same error for another caller (a batch's shared failure): same variant and
    /// code; a store error's source is carried as its text.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Refused { code, message } => Self::refused(*code, message.clone()),
            Self::UploadRequired => Self::UploadRequired,
            Self::Limited {
                code,
                message,
                retry_after,
            } => Self::limited(*code, message.clone(), *retry_after),
            Self::Busy => Self::Busy,
            Self::Store(e) => Self::Store(e.duplicate()),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Refused { code, .. } | Self::Limited { code, .. } => *code,
            Self::UploadRequired => ErrorCode::UploadRequired,
            Self::Busy => ErrorCode::Busy,
            Self::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Store(_) => ErrorCode::Internal,
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

    /// A store failure: logged in full, answered as `internal`/`unavailable`.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Store(_))
    }

    /// The same request may succeed later unchanged: contention or an unavailable store.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Busy | Self::Store(StoreError::Unavailable(_)))
    }
}
