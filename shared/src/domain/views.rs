//! What the protocol answers. The HTTP layer serialises these as they are.

use serde::{Deserialize, Serialize};

use super::{
    AudioFormat, AudioState, ByteRange, ContentHash, Millis, ReferenceId, ReferenceKind, SessionId,
};

/// A request the client must send to move bytes (presigned S3 URL or the local emulation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequest {
    pub url: String,
    pub method: String,
    /// Headers the client must send exactly; they are covered by the signature.
    pub headers: std::collections::BTreeMap<String, String>,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadResult {
    pub content_hash: ContentHash,
    pub format: AudioFormat,
    pub size: u64,
    /// Short-lived download URL.
    pub url: String,
    pub url_expires_at: Millis,
    pub deduplicated: bool,
    pub state: AudioState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengeView {
    pub nonce: String,
    pub ranges: Vec<ByteRange>,
}

/// The answer to opening an upload session. Its shape is the same whether or not the content
/// already exists, so it tells a caller without the bytes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadSession {
    pub session_id: SessionId,
    pub content_hash: ContentHash,
    /// The one signed PUT of the whole file; absent when the session takes parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<SignedRequest>,
    /// How a large upload is cut into parts (`POST /v1/audio/{hash}/parts` signs them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<PartsPlan>,
    pub challenge: ChallengeView,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioView {
    pub content_hash: ContentHash,
    pub format: AudioFormat,
    pub size: u64,
    pub state: AudioState,
    pub url: String,
    pub url_expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceView {
    pub content_hash: ContentHash,
    pub ref_id: ReferenceId,
    pub kind: ReferenceKind,
    pub created_at: Millis,
}

/// `GET /v1/audio/stats`. The deduplication figures are over stored files that at least one
/// reference holds, so `deduplication_ratio >= 1` and `bytes_saved >= 0`; stored files no
/// reference holds (waiting out their grace or upload lease before deletion) are counted
/// apart, in `unreferenced_*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Stored files that at least one reference holds.
    pub unique_files: i64,
    /// Their bytes, each file counted once.
    pub stored_bytes: i64,
    pub total_references: i64,
    /// Bytes the references would take if each held its own copy.
    pub referenced_bytes: i64,
    /// `referenced_bytes / stored_bytes` (1.0 when nothing is stored).
    pub deduplication_ratio: f64,
    /// `referenced_bytes - stored_bytes`.
    pub bytes_saved: i64,
    /// Stored files no reference holds, due for deletion after their grace period.
    #[serde(default)]
    pub unreferenced_files: i64,
    #[serde(default)]
    pub unreferenced_bytes: i64,
    /// Upload claims in flight and files being deleted: an operator's figures, in an admin's
    /// view only. Opening a session on absent content claims it, so a public count would tell
    /// any caller, without the bytes, whether someone stored a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_uploads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting: Option<i64>,
}

impl Stats {
    /// What any caller may see: without the operator's counters.
    pub fn public(self) -> Self {
        Self {
            pending_uploads: None,
            deleting: None,
            ..self
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub deletions_finished: u64,
    pub pending_resolved: u64,
    pub sessions_expired: u64,
    pub unreferenced_deleted: u64,
    pub orphans_deleted: u64,
    pub activated: u64,
    pub snapshots_purged: u64,
    /// Due work items this pass looked at.
    pub work_items: u64,
    /// Due items left when the pass ended (counted up to a bound: at least this many).
    pub due_left: u64,
    /// Age of the oldest due item left, in seconds (0: none left).
    pub oldest_due_age_seconds: u64,
    /// Blob-store objects this pass swept (the sweep resumes where the last pass stopped).
    pub objects_swept: u64,
    /// Whether this pass reached the end of the key space (the next one starts over).
    pub sweep_cycle_completed: bool,
}

/// One part of a parted upload: its number (from 1), length and SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub number: u32,
    pub size: u64,
    pub sha256: ContentHash,
}

/// How a large upload is cut: parts of `part_size` bytes in order, the last one shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsPlan {
    pub size: u64,
    pub part_size: u64,
    pub part_count: u32,
}

impl PartsPlan {
    /// `size` bytes in parts of `part_size` (both non-zero).
    pub fn new(size: u64, part_size: u64) -> Self {
        let part_size = part_size.max(1);
        Self {
            size,
            part_size,
            part_count: u32::try_from(size.div_ceil(part_size)).unwrap_or(u32::MAX),
        }
    }

    /// Where part `number` starts in the file and how long it is; `None` if there is no such
    /// part.
    pub fn span(&self, number: u32) -> Option<(u64, u64)> {
        if number == 0 || number > self.part_count {
            return None;
        }
        let offset = u64::from(number - 1) * self.part_size;
        Some((offset, self.part_size.min(self.size - offset)))
    }
}

/// A signed request that sends one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartUpload {
    pub number: u32,
    pub upload: SignedRequest,
}

/// The parts the blob store holds for an open parted session, in part order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsView {
    pub plan: PartsPlan,
    pub parts: Vec<Part>,
}
