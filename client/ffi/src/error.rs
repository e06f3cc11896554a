//! Errors and failure reasons as enums the app branches on (never text to parse).

use audio_dedup_client as client;
use audio_dedup_core::ErrorCode;

/// The server's error codes, as the wire names them (`thread_not_found` is
/// `ErrorCode.THREAD_NOT_FOUND` in Kotlin). Mirrors `audio_dedup_core::ErrorCode`; a code
/// added there fails this crate's build until it is added here.
#[uniffi::remote(Enum)]
pub enum ErrorCode {
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    InvalidPath,
    InvalidQuery,
    InvalidJson,
    EmptyBody,
    UnreadableBody,
    BodyTooLarge,
    InvalidLimit,
    InvalidCursor,
    InvalidHash,
    InvalidThreadId,
    InvalidMessageId,
    InvalidItemId,
    InvalidRefId,
    InvalidRefKind,
    InvalidSessionId,
    InvalidMember,
    IncompleteReference,
    MissingFormat,
    UnknownFormat,
    InvalidTitle,
    TooManyMembers,
    InvalidSnapshot,
    SnapshotTooLarge,
    SnapshotTooDeep,
    InvalidText,
    InvalidAudio,
    InvalidSize,
    InvalidProof,
    InvalidChecksum,
    ChecksumMismatch,
    InvalidPart,
    AudioNotFound,
    ThreadNotFound,
    MessageNotFound,
    LibraryItemNotFound,
    SessionNotFound,
    ReferenceNotFound,
    AudioNotActive,
    UploadRequired,
    ReferenceKindMismatch,
    ReferenceRemoved,
    ThreadIdConflict,
    MessageIdConflict,
    SessionExpired,
    PartsMissing,
    CursorUnknown,
    UrlExpired,
    SignatureInvalid,
    SignedHeaderMissing,
    LengthRequired,
    SizeMismatch,
    BadDigest,
    PreconditionFailed,
    ObjectNotFound,
    QuotaExceeded,
    RateLimited,
    Busy,
    Unavailable,
    Internal,
    Unknown,
}

/// Why a call failed. Text fields are for logs; branch on the variant and its codes.
/// (`details`, not `message`: Kotlin exceptions already have a `message`.)
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ClientError {
    /// No answer: offline, or the server down. Retry later; queued work retries by itself.
    #[error("offline: {details}")]
    Offline { details: String },
    /// The server answered "later" (5xx, 408, 429).
    #[error("temporarily refused ({status} {code})")]
    Unavailable {
        status: u16,
        code: ErrorCode,
        /// How long the server asked to wait, when it said.
        retry_after_ms: Option<u64>,
    },
    /// The server refused it for good (4xx); `code` says why.
    #[error("refused ({status} {code}): {details}")]
    Rejected {
        status: u16,
        code: ErrorCode,
        details: String,
    },
    /// A 2xx the client could not read.
    #[error("unexpected answer: {details}")]
    Protocol { details: String },
    /// No token the server accepts: hand over a new one (`set_token`) or let the provider.
    #[error("signed out: {reason:?}")]
    SignedOut { reason: SignOutReason },
    /// An input refused before anything was sent: an id, an empty file, a bad snapshot.
    #[error("invalid input: {details}")]
    InvalidInput { details: String },
    /// Not possible in the item's current state.
    #[error("wrong state: {details}")]
    WrongState { details: String },
    /// A queued file changed or vanished since it was queued.
    #[error("file changed: {details}")]
    FileChanged { details: String },
    #[error("not found: {details}")]
    NotFound { details: String },
    /// Bytes that do not hash to the content they should be.
    #[error("content does not match its hash {content_hash}")]
    HashMismatch { content_hash: String },
    /// Another client (in this process or another) has this folder open.
    #[error("the cache folder {path} is in use by another client")]
    FolderInUse { path: String },
    /// `shutdown()` or `clear_all()` ran: open a new client.
    #[error("the client is closed")]
    Closed,
    /// The transfer was cancelled (`cancel()` on its handle).
    #[error("cancelled")]
    Cancelled,
    /// The cache database on this device.
    #[error("cache database: {details}")]
    Database { details: String },
    #[error("i/o: {details}")]
    Io { details: String },
    /// Data the client wrote could not be read back.
    #[error("local data: {details}")]
    Corrupt { details: String },
    /// The client's own machinery (a task that failed, the runtime).
    #[error("internal: {details}")]
    Internal { details: String },
}

impl From<client::ApiError> for ClientError {
    fn from(e: client::ApiError) -> Self {
        use client::ApiError as A;
        match e {
            A::Offline(details) => Self::Offline { details },
            A::Retryable {
                status,
                code,
                retry_after,
            } => Self::Unavailable {
                status,
                code,
                retry_after_ms: retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            A::Rejected {
                status,
                code,
                message,
            } => Self::Rejected {
                status,
                code,
                details: message,
            },
            A::Protocol(details) => Self::Protocol { details },
            A::AuthRequired(reason) => Self::SignedOut {
                reason: reason.into(),
            },
        }
    }
}

impl From<client::ClientError> for ClientError {
    fn from(e: client::ClientError) -> Self {
        use client::ClientError as C;
        match e {
            C::Api(e) => e.into(),
            C::Db(e) => Self::Database {
                details: e.to_string(),
            },
            C::Io(e) => Self::Io {
                details: e.to_string(),
            },
            C::InvalidInput(details) => Self::InvalidInput { details },
            C::WrongState(details) => Self::WrongState { details },
            C::FileChanged(details) => Self::FileChanged { details },
            C::Corrupt(details) => Self::Corrupt { details },
            C::Task(details) => Self::Internal { details },
            C::NotFound(details) => Self::NotFound { details },
            C::HashMismatch(content_hash) => Self::HashMismatch { content_hash },
            C::FolderInUse(path) => Self::FolderInUse {
                path: path.display().to_string(),
            },
            C::Closed => Self::Closed,
        }
    }
}

impl ClientError {
    pub(crate) fn invalid(what: impl std::fmt::Display) -> Self {
        Self::InvalidInput {
            details: what.to_string(),
        }
    }
}

/// Why the client has no token the server accepts.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum SignOutReason {
    /// The user must sign in again.
    SignInRequired,
    /// The provider could not get a token now; the client asks again later.
    Temporarily { details: String },
    /// The server refused a freshly issued token too.
    Refused,
}

impl From<client::TokenUnavailable> for SignOutReason {
    fn from(r: client::TokenUnavailable) -> Self {
        match r {
            client::TokenUnavailable::SignInRequired => Self::SignInRequired,
            client::TokenUnavailable::Temporarily(details) => Self::Temporarily { details },
            client::TokenUnavailable::Refused => Self::Refused,
        }
    }
}

/// What a [`crate::TokenProvider`] the app implements answers when it has no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum TokenError {
    /// The user must sign in again: the queue pauses (nothing fails) until a new token.
    #[error("the user must sign in again")]
    SignInRequired,
    /// No token now (no network to the issuer); the client asks again later.
    #[error("no token now: {details}")]
    Temporarily { details: String },
}

/// An exception the provider threw that is not a `TokenError`: treated as "not now".
impl From<uniffi::UnexpectedUniFFICallbackError> for TokenError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Temporarily { details: e.reason }
    }
}

/// Why a queued operation (a message, a library item) did not go through.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum FailureReason {
    /// No answer; retried without using up the budget.
    NoAnswer,
    /// The server answered "later"; retried.
    Unavailable { status: u16, code: ErrorCode },
    /// Refused for good; `code` says why (`body_too_large`, `quota_exceeded`, …).
    Refused {
        status: u16,
        code: ErrorCode,
        details: String,
    },
    /// "Later" through every retry.
    GaveUp {
        attempts: u32,
        status: u16,
        code: ErrorCode,
    },
    /// An operation it depends on (its audio's upload) failed.
    DependencyFailed,
    /// The queued file changed or vanished since it was queued.
    FileChanged,
    /// Something on this device.
    Local { details: String },
}

impl From<client::FailureReason> for FailureReason {
    fn from(r: client::FailureReason) -> Self {
        use client::FailureReason as F;
        match r {
            F::NoAnswer => Self::NoAnswer,
            F::Unavailable { status, code } => Self::Unavailable { status, code },
            F::Refused {
                status,
                code,
                message,
            } => Self::Refused {
                status,
                code,
                details: message,
            },
            F::GaveUp {
                attempts,
                status,
                code,
            } => Self::GaveUp {
                attempts,
                status,
                code,
            },
            F::DependencyFailed => Self::DependencyFailed,
            F::FileChanged => Self::FileChanged,
            F::Local { message } => Self::Local { details: message },
        }
    }
}
