//! What the index stores: one audio record per content, one reference record per
//! (owner, reference id), one possession grant per (content, owner), one record per upload session.

use serde::{Deserialize, Serialize};

use super::{AudioFormat, ContentHash, MessageId, ReferenceId, ReferenceKind, SessionId, UserId};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The lifecycle of one content hash. Records are never deleted: `Gone` keeps the item's
/// version counter so a compare-and-swap can never succeed against a recycled item (ABA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioState {
    /// An upload is in flight; no reference may be attached yet.
    PendingUpload,
    /// The object exists at `blob_version` and its bytes were verified against the hash.
    Active,
    /// No references remain; the exact `blob_version` is being deleted.
    Deleting,
    /// Deleted. The record stays as a version fence.
    Gone,
}

impl AudioState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingUpload => "pending_upload",
            Self::Active => "active",
            Self::Deleting => "deleting",
            Self::Gone => "gone",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioRecord {
    pub hash: ContentHash,
    pub state: AudioState,
    /// Bumped each time the content comes back after `Gone`; grants are per generation.
    pub generation: u64,
    pub format: AudioFormat,
    /// Verified size once active; 0 while pending.
    pub size: u64,
    /// The blob store's version id of the object this record owns.
    pub blob_version: Option<String>,
    /// Live references. Equal to the number of live reference records, by construction.
    pub refs: u64,
    /// While pending: when the upload lease ends. While active with no references: when the
    /// content becomes eligible for deletion.
    pub due_at: Option<Millis>,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceState {
    Live,
    /// Kept so a retried DELETE answers the same and a late PUT cannot resurrect it.
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    pub hash: ContentHash,
    pub owner: UserId,
    pub ref_id: ReferenceId,
    pub kind: ReferenceKind,
    pub state: ReferenceState,
    pub generation: u64,
    pub created_at: Millis,
    pub removed_at: Option<Millis>,
}

/// Proof that `owner` possessed the bytes of `hash` during `generation`: they uploaded them,
/// or answered a possession challenge. Adding a reference requires it (proof of ownership).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub owner: UserId,
    pub generation: u64,
    pub granted_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

/// A proof-of-possession challenge: SHA-256 over the nonce then the listed byte ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Hex of 16 random bytes.
    pub nonce: String,
    pub ranges: Vec<ByteRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Open,
    Completed,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReference {
    pub kind: ReferenceKind,
    pub ref_id: ReferenceId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub hash: ContentHash,
    pub owner: UserId,
    pub size: u64,
    pub format: AudioFormat,
    pub reference: Option<PendingReference>,
    pub challenge: Challenge,
    pub state: SessionState,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// Set when completed: whether the bytes were already stored (so retries answer the same).
    pub deduplicated: Option<bool>,
}

/// Who put an object, as its `uploader` metadata records it: an upload session's presigned
/// PUT, a direct upload through the API, or a message's staged snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uploader {
    Session(SessionId),
    Direct,
    Snapshot(MessageId),
}

impl Uploader {
    /// Metadata as the blob store answers it; anything else is no known uploader.
    pub fn parse(meta: Option<&str>) -> Option<Self> {
        let meta = meta?;
        if meta == "direct" {
            return Some(Self::Direct);
        }
        if let Some(id) = meta.strip_prefix("session:") {
            return id.parse().ok().map(Self::Session);
        }
        meta.strip_prefix("message:")?
            .parse()
            .ok()
            .map(Self::Snapshot)
    }
}

impl std::fmt::Display for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(id) => write!(f, "session:{id}"),
            Self::Direct => f.write_str("direct"),
            Self::Snapshot(id) => write!(f, "message:{id}"),
        }
    }
}

#[cfg(test)]
mod uploader_tests {
    use super::Uploader;

    #[test]
    fn uploaders_round_trip_and_unknown_metadata_is_none() {
        for u in [
            Uploader::Session("s1".parse().unwrap()),
            Uploader::Direct,
            Uploader::Snapshot("m1".parse().unwrap()),
        ] {
            assert_eq!(Uploader::parse(Some(&u.to_string())), Some(u));
        }
        for other in [
            None,
            Some(""),
            Some("session:"),
            Some("someone"),
            Some("session:a/b"),
        ] {
            assert_eq!(Uploader::parse(other), None, "{other:?}");
        }
    }
}
