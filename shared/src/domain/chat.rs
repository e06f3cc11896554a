//! Threads, messages and library items: what the index stores and what the API answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{AudioFormat, ContentHash, LibraryItemId, MessageId, Millis, ThreadId, UserId};

/// A position in one change log: a thread's messages, a user's thread feed, a user's
/// library. Allocated by the transaction that makes the change, from a counter that the
/// same transaction conditions on, so positions commit in order: once `n` is visible, every
/// position below `n` is too (docs/protocol.md, "Cursors").
pub type Seq = u64;

/// Most members a thread may have. Creating one writes two items per member (feed head and
/// feed entry): up to 49 members in the creating transaction, the rest in further ones
/// (`ThreadRecord::unannounced`).
pub const MAX_THREAD_MEMBERS: usize = 100;
pub const MAX_TITLE_LEN: usize = 200;
/// Largest snapshot a message carries (bytes of its JSON text).
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of arrays and objects in a snapshot: deeper JSON breaks the recursive
/// parsers most apps use (Python's `json` at about 1,000 levels, many at far fewer).
pub const MAX_SNAPSHOT_DEPTH: usize = 64;
/// Longest message text, in characters (Unicode scalar values, as JSON Schema's
/// `maxLength` counts them): at most 8,000 bytes of UTF-8.
pub const MAX_TEXT_CHARS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    pub id: ThreadId,
    pub title: String,
    pub members: Vec<UserId>,
    pub created_by: UserId,
    pub created_at: Millis,
    /// The last position allocated in this thread's message log.
    pub last_seq: Seq,
    pub live_messages: u64,
    pub updated_at: Millis,
    /// Members whose thread lists do not name the thread yet: those a creation could not fit
    /// in its transaction, announced in further ones by the creating request or its retry.
    /// Membership itself (reading, posting, pokes) never waits for this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unannounced: Vec<UserId>,
    /// The newest live message (its preview), kept by the transactions that create and
    /// delete messages, which write this record anyway: no write more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessagePreview>,
    /// Messages ever created here (deleted ones too), and per author: with a reader's
    /// marker (which keeps both as they stood at its position) they give the reader's
    /// unread count without reading a message ([`Self::unread_for`]).
    #[serde(default)]
    pub messages_created: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authored: BTreeMap<UserId, u64>,
    /// The newest message deletions (at most [`RECENT_DELETIONS`]): those of messages past a
    /// reader's marker lower their unread count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_deletions: Vec<DeletedMessage>,
}

/// Deletions a thread record remembers for unread counts: a reader further behind than this
/// many deletions may see a deleted message counted until they mark the thread read.
pub const RECENT_DELETIONS: usize = 32;

/// A deleted message, as unread counts need it: where it was created, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedMessage {
    pub created_seq: Seq,
    pub author: UserId,
}

/// Most characters of a message's text a preview carries.
pub const PREVIEW_TEXT_CHARS: usize = 100;

/// The newest live message of a thread, as a thread list shows it: its last activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePreview {
    pub message_id: MessageId,
    pub author: UserId,
    /// Its position in the thread's log.
    pub cursor: String,
    pub at: Millis,
    /// The start of its text (at most `PREVIEW_TEXT_CHARS` characters), if it has text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub has_audio: bool,
}

/// The first `PREVIEW_TEXT_CHARS` characters of a message's text, as its preview shows it.
fn preview_text(text: Option<&str>) -> Option<String> {
    text.map(|t| t.chars().take(PREVIEW_TEXT_CHARS).collect())
}

impl MessagePreview {
    pub fn of(m: &MessageRecord) -> Self {
        Self {
            message_id: m.id.clone(),
            author: m.author.clone(),
            cursor: m.created_seq.to_string(),
            at: m.created_at,
            text: preview_text(m.text.as_deref()),
            has_audio: m.audio.is_some(),
        }
    }

    /// The preview of a message from its creation's log entry.
    pub fn of_view(m: &MessageView) -> Self {
        Self {
            message_id: m.id.clone(),
            author: m.author.clone(),
            cursor: m.cursor.clone(),
            at: m.created_at,
            text: preview_text(m.text.as_deref()),
            has_audio: m.audio.is_some(),
        }
    }
}

impl ThreadRecord {
    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.contains(user)
    }

    pub fn view(&self) -> ThreadView {
        ThreadView {
            id: self.id.clone(),
            title: self.title.clone(),
            members: self.members.clone(),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            left: false,
            read_cursor: None,
            last_cursor: None,
            last_message: None,
            unread: None,
        }
    }

    /// The thread as a member's list shows it now: its view with its last position, newest
    /// message and the member's unread count.
    pub fn member_view(&self, member: &UserId, marker: Option<&ReadMarker>) -> ThreadView {
        ThreadView {
            last_cursor: Some(self.last_seq.to_string()),
            last_message: self.last_message.clone().map(Box::new),
            unread: Some(self.unread_for(member, marker)),
            ..self.view()
        }
    }

    /// Live messages of others after the member's marker, from counters alone (O(1)): those
    /// created after it, less the member's own, less the deletions of others' messages
    /// created after it. Exact while the deletions past the marker are among the record's
    /// [`RECENT_DELETIONS`]; beyond, an older deletion counts until the member reads on.
    pub fn unread_for(&self, member: &UserId, marker: Option<&ReadMarker>) -> u64 {
        let m = marker.copied().unwrap_or_default();
        let created = self.messages_created.saturating_sub(m.created_upto);
        let own = self
            .authored
            .get(member)
            .copied()
            .unwrap_or(0)
            .saturating_sub(m.own_upto);
        let deleted = self
            .recent_deletions
            .iter()
            .filter(|d| d.created_seq > m.read_seq && &d.author != member)
            .count() as u64;
        created.saturating_sub(own).saturating_sub(deleted)
    }
}

/// How far a user has read a thread (`FEED#<user> / READ#<thread>`): only ever moves forward.
/// It keeps the thread's counters as they stood at `read_seq`, so the unread count is a
/// subtraction ([`ThreadRecord::unread_for`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarker {
    pub read_seq: Seq,
    /// Messages created in the thread at or before `read_seq` (deleted ones too).
    #[serde(default)]
    pub created_upto: u64,
    /// The reader's own messages among them.
    #[serde(default)]
    pub own_upto: u64,
}

/// The head of a per-user log (thread feed or library): its last allocated position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHead {
    pub last_seq: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadView {
    pub id: ThreadId,
    pub title: String,
    pub members: Vec<UserId>,
    pub created_by: UserId,
    pub created_at: Millis,
    /// In a feed entry only: the reader is no longer a member (they left, or the creator
    /// removed them); the client forgets the thread, its messages and their snapshots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
    /// In a feed entry only: the reader marked the thread read up to this position (of its
    /// log) on one of their devices; the others take it from the feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_cursor: Option<String>,
    /// In the feed's answer (not what it stores): the thread as it stands at the read, for a
    /// thread the reader is a member of: its log's position now, its newest live message
    /// and the reader's unread count, so a client draws its list before syncing each log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cursor: Option<String>,
    /// Boxed: a view is moved often (lists of a thousand), and it is absent from most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Box<MessagePreview>>,
    /// In the feed's answer and `GET /v1/threads/{id}`: live messages of others after the
    /// reader's read marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

/// One entry of a user's thread feed: they became a member of this thread, or (`left`)
/// stopped being one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub seq: Seq,
    pub thread: ThreadView,
}

/// `GET /v1/threads/{id}`: the thread and where its message log stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadDetail {
    #[serde(flatten)]
    pub thread: ThreadView,
    /// The cursor of the newest message change: a client whose cursor equals it is current.
    pub last_cursor: String,
    pub message_count: u64,
    /// The newest live message (the thread's last activity), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessagePreview>,
    /// Live messages of others after the caller's read marker.
    pub unread: u64,
}

/// What a membership entry of a thread's log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipChange {
    /// A member added `member`.
    MemberAdded,
    /// The creator removed `member`.
    MemberRemoved,
    /// `member` left.
    MemberLeft,
}

/// A change of a thread's members, at its position in the thread's log (beside the
/// messages), so every member's client learns it by the ordinary sync and a live poke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipEvent {
    pub thread_id: ThreadId,
    /// This change's position in the thread's log.
    pub cursor: String,
    pub event: MembershipChange,
    pub member: UserId,
    /// Who made the change (the member themselves when they left).
    pub by: UserId,
    pub at: Millis,
}

/// One entry of a thread's log as `GET /v1/threads/{id}/messages` answers it: a message
/// change, or a membership change (which has `event` and no `id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ThreadLogEntry {
    Membership(MembershipEvent),
    Message(MessageView),
}

impl ThreadLogEntry {
    pub fn cursor(&self) -> &str {
        match self {
            Self::Membership(e) => &e.cursor,
            Self::Message(m) => &m.cursor,
        }
    }

    pub fn message(&self) -> Option<&MessageView> {
        match self {
            Self::Message(m) => Some(m),
            Self::Membership(_) => None,
        }
    }
}

/// The audio a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioRender {
    pub content_hash: ContentHash,
    pub format: AudioFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    Live,
    /// Kept as a tombstone: a retried create or delete answers the same, and a sync reader
    /// learns of the deletion.
    Deleted,
}

/// Where a message's snapshot is kept. Externally tagged: an internally tagged enum
/// buffers its content, and a `RawValue` cannot be read back from a buffer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStore {
    /// In the message's index item (small snapshots).
    Inline { json: Box<RawValue> },
    /// In the blob store: one exact version (snapshots too big for a DynamoDB item).
    Blob { key: String, version: String },
    /// The message was deleted and the snapshot with it.
    Purged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: MessageId,
    pub thread_id: ThreadId,
    pub author: UserId,
    pub state: EntryState,
    /// Position of the creation in the thread's log.
    pub created_seq: Seq,
    /// Position of the latest change (the creation, or the deletion).
    pub seq: Seq,
    pub created_at: Millis,
    pub deleted_at: Option<Millis>,
    pub audio: Option<AudioRender>,
    pub snapshot_size: u64,
    pub snapshot_sha256: ContentHash,
    pub snapshot: SnapshotStore,
    /// SHA-256 of what the create asked for: a retry must ask for the same.
    pub fingerprint: ContentHash,
    /// The plain-text body (`MessageText`), inline; dropped when the message is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl MessageRecord {
    pub fn view(&self) -> MessageView {
        let live = self.state == EntryState::Live;
        MessageView {
            id: self.id.clone(),
            thread_id: self.thread_id.clone(),
            author: self.author.clone(),
            cursor: self.seq.to_string(),
            created_at: self.created_at,
            state: self.state,
            deleted_at: self.deleted_at,
            audio: if live { self.audio } else { None },
            snapshot: live.then_some(SnapshotInfo {
                size: self.snapshot_size,
                sha256: self.snapshot_sha256,
            }),
            text: if live { self.text.clone() } else { None },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub size: u64,
    pub sha256: ContentHash,
}

/// A message as sync and create answer it; a deleted one is a tombstone (no audio, no
/// snapshot). Snapshots are fetched on their own (`GET /v1/messages/{id}/snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: MessageId,
    pub thread_id: ThreadId,
    pub author: UserId,
    /// This change's position in the thread's log.
    pub cursor: String,
    pub created_at: Millis,
    pub state: EntryState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioRender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
    /// The message's plain text, if it has one (live messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryItemRecord {
    pub id: LibraryItemId,
    pub owner: UserId,
    pub state: EntryState,
    pub content_hash: ContentHash,
    pub title: String,
    /// Bumped each time the item takes a new reference (a new content, or put again after
    /// a delete): reference ids are single-use.
    pub incarnation: u64,
    pub seq: Seq,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub deleted_at: Option<Millis>,
}

impl LibraryItemRecord {
    pub fn view(&self) -> LibraryItemView {
        let live = self.state == EntryState::Live;
        LibraryItemView {
            id: self.id.clone(),
            cursor: self.seq.to_string(),
            state: self.state,
            content_hash: live.then_some(self.content_hash),
            title: live.then(|| self.title.clone()),
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryItemView {
    pub id: LibraryItemId,
    pub cursor: String,
    pub state: EntryState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<ContentHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Millis>,
}

/// One page of a change log, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after`/`since` next time: the position of the last item, or the cursor
    /// given when the page is empty.
    pub next_cursor: String,
    pub has_more: bool,
}

/// The audio a new message carries, as the author names it: audio they hold, or the audio
/// of a live message they can see (forwarding it; see [`AudioSource::Message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AudioChoiceWire", into = "AudioChoiceWire")]
pub enum MessageAudio {
    Render(AudioRender),
    FromMessage(MessageId),
}

impl MessageAudio {
    pub fn source(&self) -> AudioSource {
        match self {
            Self::Render(r) => AudioSource::Held(r.content_hash),
            Self::FromMessage(m) => AudioSource::Message(m.clone()),
        }
    }
}

/// Where the right to reference audio comes from. Possession is proven by upload or by
/// challenge (`Held`: the caller is a holder), or by membership of a thread where the audio
/// was posted (`Message`: a live message with audio, in a thread the caller belongs to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    Held(ContentHash),
    Message(MessageId),
}

impl AudioSource {
    /// Exactly one of the two, as a library put names them.
    pub fn one_of(
        content_hash: Option<ContentHash>,
        from_message: Option<MessageId>,
    ) -> Result<Self, &'static str> {
        match (content_hash, from_message) {
            (Some(h), None) => Ok(Self::Held(h)),
            (None, Some(m)) => Ok(Self::Message(m)),
            _ => Err("name the audio by exactly one of `content_hash` and `from_message`"),
        }
    }
}

/// Both choices on the wire: `{content_hash[, format]}` or `{from_message}`, never both.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudioChoiceWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_hash: Option<ContentHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<super::AudioFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from_message: Option<MessageId>,
}

const MESSAGE_AUDIO_SHAPE: &str =
    "audio is either {\"content_hash\", \"format\"} or {\"from_message\"}";

impl TryFrom<AudioChoiceWire> for MessageAudio {
    type Error = &'static str;

    fn try_from(w: AudioChoiceWire) -> Result<Self, Self::Error> {
        match (w.content_hash, w.format, w.from_message) {
            (Some(content_hash), Some(format), None) => Ok(Self::Render(AudioRender {
                content_hash,
                format,
            })),
            (None, None, Some(m)) => Ok(Self::FromMessage(m)),
            _ => Err(MESSAGE_AUDIO_SHAPE),
        }
    }
}

impl From<MessageAudio> for AudioChoiceWire {
    fn from(a: MessageAudio) -> Self {
        match a {
            MessageAudio::Render(r) => Self {
                content_hash: Some(r.content_hash),
                format: Some(r.format),
                from_message: None,
            },
            MessageAudio::FromMessage(m) => Self {
                content_hash: None,
                format: None,
                from_message: Some(m),
            },
        }
    }
}
