//! The one error shape every route answers with: `{"error":{"code","message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use audio_dedup_core::{DedupError, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
}

/// Each code's one HTTP status. Exhaustive: a new code does not compile until it has one.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::NotFound
        | C::AudioNotFound
        | C::ThreadNotFound
        | C::MessageNotFound
        | C::LibraryItemNotFound
        | C::SessionNotFound
        | C::ReferenceNotFound
        | C::ObjectNotFound => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::Forbidden | C::UrlExpired | C::SignatureInvalid | C::SignedHeaderMissing => {
            StatusCode::FORBIDDEN
        }
        C::BodyTooLarge | C::SnapshotTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::LengthRequired => StatusCode::LENGTH_REQUIRED,
        C::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        C::AudioNotActive
        | C::UploadRequired
        | C::ReferenceKindMismatch
        | C::ReferenceRemoved
        | C::ThreadIdConflict
        | C::MessageIdConflict
        | C::CursorUnknown
        | C::InvalidPart
        | C::PartsMissing => StatusCode::CONFLICT,
        C::SessionExpired => StatusCode::GONE,
        C::QuotaExceeded | C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        C::Busy | C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::Internal | C::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        C::InvalidPath
        | C::InvalidQuery
        | C::InvalidJson
        | C::EmptyBody
        | C::UnreadableBody
        | C::InvalidLimit
        | C::InvalidCursor
        | C::InvalidHash
        | C::InvalidThreadId
        | C::InvalidMessageId
        | C::InvalidItemId
        | C::InvalidRefId
        | C::InvalidRefKind
        | C::InvalidSessionId
        | C::InvalidMember
        | C::IncompleteReference
        | C::MissingFormat
        | C::UnknownFormat
        | C::InvalidTitle
        | C::TooManyMembers
        | C::InvalidSnapshot
        | C::SnapshotTooDeep
        | C::InvalidText
        | C::InvalidAudio
        | C::InvalidSize
        | C::InvalidProof
        | C::InvalidChecksum
        | C::ChecksumMismatch
        | C::SizeMismatch
        | C::BadDigest => StatusCode::BAD_REQUEST,
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such route")
    }

    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "a valid bearer token is required")
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl From<DedupError> for ApiError {
    fn from(e: DedupError) -> Self {
        if e.is_internal() {
            // Full detail to the logs only.
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "request failed");
        }
        let mut api = Self::new(e.code(), e.public_message());
        // Whole seconds, never 0: a client that honours it must wait.
        api.retry_after = e
            .retry_after()
            .map(|d| d.as_secs_f64().ceil().max(1.0) as u64);
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}
