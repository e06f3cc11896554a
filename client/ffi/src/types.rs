//! What crosses the boundary by value: records and enums built from the client's types.

use std::path::PathBuf;

use audio_dedup_client as client;
use audio_dedup_client::{Direction, SendState};
use audio_dedup_core::{AudioFormat, AudioRender, ContentHash, MessageId, ThreadView};

use crate::error::{ClientError, FailureReason, SignOutReason};

#[uniffi::remote(Enum)]
pub enum AudioFormat {
    Mp3,
    Wav,
    M4a,
    Ogg,
    Opus,
    Flac,
}

#[uniffi::remote(Enum)]
pub enum SendState {
    Sending,
    Sent,
    Failed,
}

#[uniffi::remote(Enum)]
pub enum Direction {
    Upload,
    Download,
}

/// Parses an id the app passes in; a bad one is the app's input error.
pub(crate) fn parse<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, ClientError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| ClientError::invalid(format!("{what} {text:?}: {e}")))
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatThread {
    pub id: String,
    pub title: String,
    pub members: Vec<String>,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl From<ThreadView> for ChatThread {
    fn from(t: ThreadView) -> Self {
        Self {
            id: t.id.to_string(),
            title: t.title,
            members: t.members.iter().map(ToString::to_string).collect(),
            created_by: t.created_by.to_string(),
            created_at_ms: t.created_at,
        }
    }
}

/// One entry of the thread list (`thread_list`): newest activity first.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ThreadListEntry {
    pub thread: ChatThread,
    /// The newest live message's time, or the thread's creation (ms).
    pub last_activity_at_ms: i64,
    /// The newest position of the thread's log this cache holds.
    pub last_cursor: u64,
    /// The newest live message: its author (`None`: this device's, unsent), the start of its
    /// text, whether it has audio.
    pub preview_author: Option<String>,
    pub preview_text: Option<String>,
    pub preview_has_audio: bool,
    /// Live messages of others after the read marker.
    pub unread: u64,
}

/// A page of the thread list (`thread_list_page`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ThreadListPage {
    pub threads: Vec<ThreadListEntry>,
    /// Pass as `before` for the next page; `None` when this page reaches the end.
    pub older: Option<String>,
}

/// A page of a thread's messages (`messages_page`), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MessagePage {
    pub messages: Vec<ChatMessage>,
    /// Pass as `before` for the next older page; `None` at the thread's first message.
    pub older: Option<String>,
}

impl From<client::ThreadSummary> for ThreadListEntry {
    fn from(s: client::ThreadSummary) -> Self {
        let (author, text, audio) = match s.preview {
            Some(p) => (p.author, p.text, p.has_audio),
            None => (None, None, false),
        };
        Self {
            thread: s.thread.into(),
            last_activity_at_ms: s.last_activity_at,
            last_cursor: s.last_cursor,
            preview_author: author,
            preview_text: text,
            preview_has_audio: audio,
            unread: s.unread,
        }
    }
}

/// A message as this device has it (sent, or still on its way).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatMessage {
    pub id: String,
    pub thread_id: String,
    /// `None` until the server answered (then the author is the caller).
    pub author: Option<String>,
    pub created_at_ms: i64,
    pub send_state: SendState,
    /// The audio's SHA-256 (hex) and format, when it has audio.
    pub audio_hash: Option<String>,
    pub audio_format: Option<AudioFormat>,
    /// The snapshot's size and SHA-256 (fetch it with `snapshot`).
    pub snapshot_size: Option<u64>,
    pub snapshot_sha256: Option<String>,
    /// Why it failed, when `send_state` is `FAILED`.
    pub error: Option<FailureReason>,
    /// The message's plain text, if it has one.
    pub text: Option<String>,
}

impl From<client::LocalMessage> for ChatMessage {
    fn from(m: client::LocalMessage) -> Self {
        Self {
            id: m.id.to_string(),
            thread_id: m.thread_id.to_string(),
            author: m.author,
            created_at_ms: m.created_at,
            send_state: m.send_state,
            audio_hash: m.audio.as_ref().map(|a| a.content_hash.to_string()),
            audio_format: m.audio.as_ref().map(|a| a.format),
            snapshot_size: m.snapshot.as_ref().map(|s| s.size),
            snapshot_sha256: m.snapshot.as_ref().map(|s| s.sha256.to_string()),
            error: m.error.map(Into::into),
            text: m.text,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LibraryItem {
    pub id: String,
    pub title: Option<String>,
    pub audio_hash: Option<String>,
    pub audio_format: Option<AudioFormat>,
    pub updated_at_ms: i64,
    pub send_state: SendState,
    pub error: Option<FailureReason>,
}

impl From<client::LibraryItem> for LibraryItem {
    fn from(i: client::LibraryItem) -> Self {
        Self {
            id: i.id.to_string(),
            title: i.title,
            audio_hash: i.content_hash.map(|h| h.to_string()),
            audio_format: i.format,
            updated_at_ms: i.updated_at,
            send_state: i.send_state,
            error: i.error.map(Into::into),
        }
    }
}

/// Audio for a new message or library item.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum OutgoingAudio {
    /// A local file: hashed now, uploaded by the queue first (no audio byte is sent when the
    /// server already has the content).
    File { path: String, format: AudioFormat },
    /// Content already uploaded (`upload_audio`).
    Uploaded {
        content_hash: String,
        format: AudioFormat,
    },
    /// The audio of a message the caller can see (no upload).
    FromMessage { message_id: String },
}

impl OutgoingAudio {
    pub(crate) fn into_attachment(self) -> Result<client::Attachment, ClientError> {
        Ok(match self {
            Self::File { path, format } => client::Attachment::File {
                path: PathBuf::from(path),
                format,
            },
            Self::Uploaded {
                content_hash,
                format,
            } => client::Attachment::Uploaded(AudioRender {
                content_hash: parse::<ContentHash>("content hash", &content_hash)?,
                format,
            }),
            Self::FromMessage { message_id } => {
                client::Attachment::FromMessage(parse::<MessageId>("message id", &message_id)?)
            }
        })
    }

    pub(crate) fn into_library_audio(self) -> Result<client::LibraryAudio, ClientError> {
        Ok(match self.into_attachment()? {
            client::Attachment::File { path, format } => {
                client::LibraryAudio::File { path, format }
            }
            client::Attachment::Uploaded(render) => client::LibraryAudio::Uploaded(render),
            client::Attachment::FromMessage(id) => client::LibraryAudio::FromMessage(id),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UploadResult {
    pub content_hash: String,
    pub size: u64,
    /// The server had the content already: no audio byte was sent.
    pub deduplicated: bool,
    /// Audio bytes this call sent.
    pub bytes_sent: u64,
    /// A large upload resumed after a kill or lost network: bytes the server already held.
    pub resumed_from: u64,
}

impl From<client::UploadOutcome> for UploadResult {
    fn from(o: client::UploadOutcome) -> Self {
        Self {
            content_hash: o.content_hash.to_string(),
            size: o.size,
            deduplicated: o.deduplicated,
            bytes_sent: o.bytes_sent,
            resumed_from: o.resumed_from,
        }
    }
}

/// What one sync brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SyncResult {
    pub changed: u64,
    pub deleted: u64,
    pub requests: u64,
}

impl From<client::SyncReport> for SyncResult {
    fn from(r: client::SyncReport) -> Self {
        Self {
            changed: count(r.new),
            deleted: count(r.deleted),
            requests: count(r.requests),
        }
    }
}

/// What one pass over the queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct QueueReport {
    pub sent: u64,
    pub failed: u64,
    /// Waiting for their retry time, or for the network.
    pub waiting: u64,
}

impl From<client::QueueReport> for QueueReport {
    fn from(r: client::QueueReport) -> Self {
        Self {
            sent: count(r.sent),
            failed: count(r.failed),
            waiting: count(r.waiting),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CacheStats {
    pub threads: u64,
    pub messages: u64,
    pub unsent_messages: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub audio_files: u64,
    pub audio_bytes: u64,
    pub pending_operations: u64,
    pub failed_operations: u64,
    pub database_bytes: u64,
}

impl From<client::CacheStats> for CacheStats {
    fn from(s: client::CacheStats) -> Self {
        Self {
            threads: s.threads,
            messages: s.messages,
            unsent_messages: s.unsent_messages,
            snapshots: s.snapshots,
            snapshot_bytes: s.snapshot_bytes,
            audio_files: s.audio_files,
            audio_bytes: s.audio_bytes,
            pending_operations: s.pending_operations,
            failed_operations: s.failed_operations,
            database_bytes: s.database_bytes,
        }
    }
}

/// Where a playable file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AudioSource {
    /// The just-recorded local file.
    Recorded,
    /// The cache: no request was made.
    Cache,
    /// Downloaded now, verified and cached.
    Download,
}

impl From<client::AudioSource> for AudioSource {
    fn from(s: client::AudioSource) -> Self {
        match s {
            client::AudioSource::Recorded => Self::Recorded,
            client::AudioSource::Cache => Self::Cache,
            client::AudioSource::Download => Self::Download,
        }
    }
}

/// The client as it stands: what a listener gets first, and again after it missed updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct ClientState {
    /// Whether the last request got an answer.
    pub online: bool,
    pub signed_out: bool,
    pub paused: bool,
    pub pending_operations: u64,
    pub failed_operations: u64,
}

impl ClientState {
    pub(crate) fn of(c: &client::Client) -> Result<Self, ClientError> {
        Ok(Self {
            online: c.is_online(),
            signed_out: c.is_signed_out(),
            paused: c.is_paused(),
            pending_operations: count(c.pending_count()?),
            failed_operations: count(c.failed_count()?),
        })
    }
}

/// What a [`crate::UpdateListener`] hears: `State` first, then changes as they happen.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ClientUpdate {
    /// The whole state: first, and after `Lagged`.
    State {
        state: ClientState,
    },
    /// The listener fell behind and `missed` updates were dropped: re-read what is shown.
    Lagged {
        missed: u64,
    },
    /// A message on this device changed state (sent optimistically, acknowledged, failed).
    MessageChanged {
        thread_id: String,
        message_id: String,
        state: SendState,
        error: Option<FailureReason>,
    },
    /// A local message was rolled back (discarded, or cancelled before it was sent).
    MessageRemoved {
        thread_id: String,
        message_id: String,
    },
    /// A sync brought messages: re-read `messages(thread_id)`.
    MessagesSynced {
        thread_id: String,
        added: u64,
        deleted: u64,
    },
    ThreadsChanged {
        count: u64,
    },
    LibraryItemChanged {
        item_id: String,
        state: SendState,
        error: Option<FailureReason>,
    },
    LibraryItemRemoved {
        item_id: String,
    },
    LibrarySynced {
        changed: u64,
        deleted: u64,
    },
    /// The offline queue's size changed.
    Queue {
        pending: u64,
        failed: u64,
    },
    /// Bytes moved for one transfer.
    Transfer {
        content_hash: String,
        direction: Direction,
        done: u64,
        total: u64,
    },
    /// No token the server accepts: queue and live channel wait for a new one.
    AuthRequired {
        reason: SignOutReason,
    },
    /// A new token works; everything resumed.
    AuthRestored,
    Connectivity {
        online: bool,
    },
    /// The cache was unreadable: rebuilt, `salvaged` queued operations kept.
    CacheRecovered {
        salvaged: u64,
        moved_to: String,
    },
}

impl From<client::Update> for ClientUpdate {
    fn from(u: client::Update) -> Self {
        use client::Update as U;
        match u {
            U::Message {
                thread_id,
                message_id,
                state,
                error,
            } => Self::MessageChanged {
                thread_id: thread_id.to_string(),
                message_id: message_id.to_string(),
                state,
                error: error.map(Into::into),
            },
            U::MessageRemoved {
                thread_id,
                message_id,
            } => Self::MessageRemoved {
                thread_id: thread_id.to_string(),
                message_id: message_id.to_string(),
            },
            U::MessagesSynced {
                thread_id,
                new,
                deleted,
            } => Self::MessagesSynced {
                thread_id: thread_id.to_string(),
                added: count(new),
                deleted: count(deleted),
            },
            U::ThreadsChanged { count: n } => Self::ThreadsChanged { count: count(n) },
            U::LibraryItem {
                item_id,
                state,
                error,
            } => Self::LibraryItemChanged {
                item_id: item_id.to_string(),
                state,
                error: error.map(Into::into),
            },
            U::LibraryItemRemoved { item_id } => Self::LibraryItemRemoved {
                item_id: item_id.to_string(),
            },
            U::LibrarySynced { changed, deleted } => Self::LibrarySynced {
                changed: count(changed),
                deleted: count(deleted),
            },
            U::Queue { pending, failed } => Self::Queue {
                pending: count(pending),
                failed: count(failed),
            },
            U::Transfer {
                hash,
                direction,
                done,
                total,
            } => Self::Transfer {
                content_hash: hash.to_string(),
                direction,
                done,
                total,
            },
            U::AuthRequired { reason } => Self::AuthRequired {
                reason: reason.into(),
            },
            U::AuthRestored => Self::AuthRestored,
            U::Connectivity { online } => Self::Connectivity { online },
            U::CacheRecovered { salvaged, moved_to } => Self::CacheRecovered {
                salvaged: count(salvaged),
                moved_to,
            },
        }
    }
}
