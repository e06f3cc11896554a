//! What the index stores: one audio record per content, one reference record per
//! (owner, reference id), one possession grant per (content, owner), one record per upload session.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    AudioFormat, ContentHash, MessageId, PartsPlan, ReferenceId, ReferenceKind, SessionId, UserId,
};

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
    /// The state, with what only that state has (stored flat: `state`, `blob_version`,
    /// `due_at`, as before it was an enum).
    #[serde(flatten)]
    pub phase: AudioPhase,
    /// Bumped each time the content comes back after `Gone`; grants are per generation.
    pub generation: u64,
    pub format: AudioFormat,
    /// Verified size once active; 0 while pending.
    pub size: u64,
    /// Live references. Equal to the number of live reference records, by construction.
    pub refs: u64,
    pub updated_at: Millis,
}

/// An audio record's state and what it carries: a version id exists exactly while there is
/// an object to own, and a due time exactly while something is waiting for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AudioPhase {
    /// An upload is in flight; its claim (the lease) ends at `due_at`.
    PendingUpload { due_at: Millis },
    /// The verified object is `blob_version`. With no references it may be deleted from
    /// `due_at` (its grace or unreferenced lifetime); `None` while references hold it.
    Active {
        blob_version: String,
        #[serde(default)]
        due_at: Option<Millis>,
    },
    /// No references remain; exactly `blob_version` is being deleted.
    Deleting { blob_version: String },
    /// Deleted. The record stays as a version fence.
    Gone,
}

impl AudioPhase {
    pub fn state(&self) -> AudioState {
        match self {
            Self::PendingUpload { .. } => AudioState::PendingUpload,
            Self::Active { .. } => AudioState::Active,
            Self::Deleting { .. } => AudioState::Deleting,
            Self::Gone => AudioState::Gone,
        }
    }
}

impl AudioRecord {
    pub fn state(&self) -> AudioState {
        self.phase.state()
    }

    /// The object version the record owns (active or being deleted).
    pub fn blob_version(&self) -> Option<&str> {
        match &self.phase {
            AudioPhase::Active { blob_version, .. } | AudioPhase::Deleting { blob_version } => {
                Some(blob_version)
            }
            AudioPhase::PendingUpload { .. } | AudioPhase::Gone => None,
        }
    }

    /// When the reconciler must look at it: a pending claim's lease end, or when active audio
    /// no reference holds may be deleted.
    pub fn due_at(&self) -> Option<Millis> {
        match &self.phase {
            AudioPhase::PendingUpload { due_at } => Some(*due_at),
            AudioPhase::Active { due_at, .. } => *due_at,
            AudioPhase::Deleting { .. } | AudioPhase::Gone => None,
        }
    }
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

/// Where the reconciler's blob sweep resumes: each pass covers the next pages of the key
/// space, so a pass costs the same however many objects are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepCursor {
    /// The last key swept; `None`: the next pass starts a new cycle.
    pub after: Option<String>,
    /// When the current cycle began.
    pub cycle_started_at: Millis,
}

/// One user's standing challenge on one content. Every session that user opens on that
/// content gets this challenge until it is answered or expires, so a challenge cannot be
/// re-rolled until it falls inside the bytes someone holds. Failed answers are counted here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProverRecord {
    pub owner: UserId,
    pub hash: ContentHash,
    pub challenge: Challenge,
    /// When the last session carrying the challenge expires; a new one is drawn after.
    pub expires_at: Millis,
    /// Failed answers since the last lockout.
    pub failures: u32,
    /// While set and in the future, this user may not prove this content.
    pub locked_until: Option<Millis>,
    /// The last session this user opened on this content: a retried open (its answer was
    /// lost) for the same size, format and reference answers it again while it is open,
    /// instead of opening another (a quota slot and the day's bytes each time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_session: Option<SessionId>,
}

/// What one user holds open and has declared for upload today, kept exact in the same
/// transactions that open and close sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserQuota {
    /// Sessions in state `Open`.
    pub open_sessions: u32,
    /// Bytes declared by sessions opened and sent by direct uploads, today.
    #[serde(flatten)]
    pub uploaded: DailyBytes,
}

const DAY_MS: Millis = 24 * 60 * 60 * 1000;

/// Bytes counted against a daily budget, starting again at each UTC midnight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyBytes {
    /// The UTC day (days since the epoch) `bytes` counts.
    pub day: i64,
    pub bytes: u64,
}

impl DailyBytes {
    /// The UTC day `now` falls on.
    pub fn day_of(now: Millis) -> i64 {
        now.div_euclid(DAY_MS)
    }

    /// Adds `size` if today's total stays within `limit`; otherwise changes nothing and says
    /// how long until the budget starts again.
    pub fn charge(&mut self, size: u64, limit: u64, now: Millis) -> Result<(), Duration> {
        let today = Self::day_of(now);
        let used = if self.day == today { self.bytes } else { 0 };
        match used.checked_add(size) {
            Some(total) if total <= limit => {
                *self = Self {
                    day: today,
                    bytes: total,
                };
                Ok(())
            }
            _ => Err(Duration::from_millis(
                ((today + 1) * DAY_MS - now).max(1) as u64
            )),
        }
    }
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
    /// Large content goes up in parts: the blob store's multipart upload for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<PartedUpload>,
    /// How far completing has read the assembled object through SHA-256 (a check longer
    /// than one request goes on in the next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifying: Option<VerifyProgress>,
}

/// A whole-object SHA-256 part way through one staged version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProgress {
    pub version: String,
    pub offset: u64,
    /// The hash's internal state, hex.
    pub state: String,
}

/// A session's multipart upload: assembled under a staging key, published under the content
/// hash only once the whole object's SHA-256 is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartedUpload {
    pub upload_id: String,
    pub plan: PartsPlan,
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
mod audio_record_tests {
    use super::*;

    /// Records written before the state was an enum (every field present, nulls included)
    /// read as the same states, and a written record keeps the flat field names.
    #[test]
    fn stored_records_keep_their_flat_shape() {
        let h = "ab".repeat(32);
        let old = |state: &str, version: &str, due: &str| {
            format!(
                r#"{{"hash":"{h}","state":"{state}","generation":1,"format":"mp3","size":3,"blob_version":{version},"refs":0,"due_at":{due},"updated_at":5}}"#
            )
        };
        let read = |j: String| serde_json::from_str::<AudioRecord>(&j).unwrap().phase;
        assert_eq!(
            read(old("pending_upload", "null", "9")),
            AudioPhase::PendingUpload { due_at: 9 }
        );
        assert_eq!(
            read(old("active", "\"v1\"", "null")),
            AudioPhase::Active {
                blob_version: "v1".into(),
                due_at: None
            }
        );
        assert_eq!(
            read(old("deleting", "\"v1\"", "null")),
            AudioPhase::Deleting {
                blob_version: "v1".into()
            }
        );
        assert_eq!(read(old("gone", "null", "null")), AudioPhase::Gone);
        // An active record must name its version.
        assert!(serde_json::from_str::<AudioRecord>(&old("active", "null", "null")).is_err());
        let written = serde_json::to_value(AudioRecord {
            hash: h.parse().unwrap(),
            phase: AudioPhase::Active {
                blob_version: "v2".into(),
                due_at: Some(7),
            },
            generation: 1,
            format: AudioFormat::Mp3,
            size: 3,
            refs: 0,
            updated_at: 5,
        })
        .unwrap();
        assert_eq!(written["state"], "active");
        assert_eq!(written["blob_version"], "v2");
        assert_eq!(written["due_at"], 7);
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

#[cfg(test)]
mod daily_bytes_tests {
    use super::*;

    #[test]
    fn a_daily_budget_refuses_past_its_limit_and_starts_again_at_midnight() {
        let day = 24 * 60 * 60 * 1000;
        let noon = 20_000 * day + day / 2;
        let mut b = DailyBytes::default();
        assert_eq!(b.charge(600, 1000, noon), Ok(()));
        assert_eq!(b.charge(400, 1000, noon), Ok(()));
        assert_eq!(
            b.charge(1, 1000, noon),
            Err(Duration::from_millis((day / 2) as u64)),
            "refused until midnight"
        );
        assert_eq!(b.bytes, 1000, "a refusal changes nothing");
        assert_eq!(
            b.charge(u64::MAX, 1000, noon + day),
            Err(Duration::from_millis((day / 2) as u64))
        );
        assert_eq!(b.charge(1000, 1000, noon + day), Ok(()));
        assert_eq!((b.day, b.bytes), (20_001, 1000));
    }
}
