//! Every error code a caller can see, once. The wire form is the snake_case name
//! (`{"error":{"code":"thread_not_found",…}}`); the HTTP status of each is mapped in the api
//! crate (`api/src/error.rs`), so adding a code is a variant here plus its status there.

use serde::{Deserialize, Serialize};
use strum::{EnumIter, IntoStaticStr};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, IntoStaticStr, EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    // The request itself: path, query, body.
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
    // Ids and names in a request.
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
    // Content rules.
    InvalidTitle,
    TooManyMembers,
    InvalidSnapshot,
    SnapshotTooLarge,
    /// A snapshot nested deeper than 64 arrays or objects.
    SnapshotTooDeep,
    /// A message's text: too long, or with control characters.
    InvalidText,
    InvalidAudio,
    InvalidSize,
    InvalidProof,
    InvalidChecksum,
    ChecksumMismatch,
    InvalidPart,
    // Things that do not exist for this caller.
    AudioNotFound,
    ThreadNotFound,
    MessageNotFound,
    LibraryItemNotFound,
    SessionNotFound,
    ReferenceNotFound,
    // The state of what exists.
    AudioNotActive,
    UploadRequired,
    ReferenceKindMismatch,
    ReferenceRemoved,
    ThreadIdConflict,
    MessageIdConflict,
    SessionExpired,
    PartsMissing,
    CursorUnknown,
    // Signed blob URLs of the local server (S3's own answers on AWS).
    UrlExpired,
    SignatureInvalid,
    SignedHeaderMissing,
    LengthRequired,
    SizeMismatch,
    BadDigest,
    PreconditionFailed,
    ObjectNotFound,
    // The service.
    QuotaExceeded,
    RateLimited,
    Busy,
    Unavailable,
    Internal,
    /// A code this build does not know (a newer server's); only ever parsed, never sent.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name, as serde writes it (the test below holds the two together).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn as_str_is_the_wire_name() {
        use strum::IntoEnumIterator;
        for c in ErrorCode::iter().filter(|c| *c != ErrorCode::Unknown) {
            let wire = serde_json::to_value(c).unwrap();
            assert_eq!(wire, serde_json::Value::String(c.as_str().into()));
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), c);
        }
        let newer: ErrorCode = serde_json::from_str("\"quota_exceeded_someday\"").unwrap();
        assert_eq!(newer, ErrorCode::Unknown);
    }
}
