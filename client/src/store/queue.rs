//! The `queue` table: the persisted offline queue, its row types, and the writes that span
//! the queue and the row an operation changes (enqueue with its effect, acknowledge and
//! dequeue, fail, roll back), each in one durable transaction.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use audio_dedup_core::{
    AudioFormat, AudioRender, ContentHash, LibraryItemId, LibraryItemView, MessageId, MessageView,
    ThreadId,
};

use super::{conversion, count, json_text, library, messages, parsed, DurableTx, Store};
use crate::error::ClientError;
use crate::failure::FailureReason;
use crate::updates::SendState;

/// One queued operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum QueuedOp {
    /// Send the local message (its snapshot and audio are in the message row).
    CreateMessage {
        thread_id: ThreadId,
        message_id: MessageId,
    },
    DeleteMessage {
        thread_id: ThreadId,
        message_id: MessageId,
    },
    /// Upload a local file (hashed when queued) before the message that uses it.
    UploadAudio {
        path: String,
        content_hash: ContentHash,
        format: AudioFormat,
    },
    /// Put a library item: by hash (`content_hash`, held by the caller) or saved from a
    /// message (`from_message`). Rows of an older version have only `content_hash`.
    PutLibraryItem {
        item_id: LibraryItemId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_hash: Option<ContentHash>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_message: Option<MessageId>,
        title: String,
    },
    DeleteLibraryItem {
        item_id: LibraryItemId,
    },
    /// Tell the server (and so the caller's other devices) the thread is read up to
    /// `cursor`, a position of its log.
    MarkRead {
        thread_id: ThreadId,
        cursor: String,
    },
}

impl QueuedOp {
    /// The kind column: also what a strict reader checks the payload against.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::CreateMessage { .. } => "create_message",
            Self::DeleteMessage { .. } => "delete_message",
            Self::UploadAudio { .. } => "upload_audio",
            Self::PutLibraryItem { .. } => "put_library_item",
            Self::DeleteLibraryItem { .. } => "delete_library_item",
            Self::MarkRead { .. } => "mark_read",
        }
    }
}

/// Where an operation runs: in order within its lane; lanes are independent. An upload runs
/// in the lane of the operation that needs it, just before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    /// A thread's messages (stored as `thread:<id>`).
    Thread(ThreadId),
    /// The caller's library (stored as `library`).
    Library,
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Thread(t) => write!(f, "thread:{t}"),
            Self::Library => f.write_str("library"),
        }
    }
}

/// A stored lane, state or payload this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown queue {what}: {value:?}")]
pub struct QueueParseError {
    pub what: &'static str,
    pub value: String,
}

impl std::str::FromStr for Lane {
    type Err = QueueParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || QueueParseError {
            what: "lane",
            value: s.to_owned(),
        };
        match s.split_once(':') {
            None if s == "library" => Ok(Self::Library),
            Some(("thread", t)) => t.parse().map(Self::Thread).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    Pending,
    Failed,
}

impl QueueState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for QueueState {
    type Err = QueueParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "failed" => Ok(Self::Failed),
            _ => Err(QueueParseError {
                what: "state",
                value: s.to_owned(),
            }),
        }
    }
}

/// A row of the queue, as `queue()` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: i64,
    pub lane: Lane,
    pub op: QueuedOp,
    pub depends_on: Option<i64>,
    pub attempts: u32,
    /// When the backoff allows the next attempt.
    pub next_due_ms: i64,
    /// When the server's Retry-After allows it (`None`: it did not ask for a pause). Even
    /// `process_queue` waits for this one.
    pub retry_after_ms: Option<i64>,
    /// How many of `attempts` got no answer (offline): they never count against the budget.
    pub unanswered: u32,
    pub state: QueueState,
    pub last_error: Option<FailureReason>,
}

/// What an operation changes optimistically: a message or a library item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    Message(ThreadId, MessageId),
    LibraryItem(LibraryItemId),
}

impl QueuedOp {
    /// What the operation changes (`None`: an upload changes nothing shown).
    pub(crate) fn subject(&self) -> Option<Subject> {
        match self {
            Self::CreateMessage {
                thread_id,
                message_id,
            }
            | Self::DeleteMessage {
                thread_id,
                message_id,
            } => Some(Subject::Message(thread_id.clone(), message_id.clone())),
            Self::PutLibraryItem { item_id, .. } | Self::DeleteLibraryItem { item_id } => {
                Some(Subject::LibraryItem(item_id.clone()))
            }
            Self::UploadAudio { .. } | Self::MarkRead { .. } => None,
        }
    }
}

/// An optimistic effect undone: the subject is gone (never sent) or back as the server has
/// it.
pub(crate) struct Rolled {
    pub subject: Subject,
    pub gone: bool,
}

/// A server's acknowledgement of an operation: what is recorded in the transaction that
/// takes the operation out of the queue.
pub(crate) enum Ack {
    /// Nothing but leaving the queue (an upload, or a create recorded as sent already).
    Dequeue,
    MessageCreated {
        thread: ThreadId,
        id: MessageId,
        view: Box<MessageView>,
    },
    MessageDeleted {
        thread: ThreadId,
        id: MessageId,
    },
    LibraryPut {
        id: LibraryItemId,
        view: Box<LibraryItemView>,
    },
    LibraryDeleted {
        id: LibraryItemId,
    },
}

/// A failed attempt that will be retried.
pub(crate) struct Attempt {
    pub op_id: i64,
    pub attempts: u32,
    pub unanswered: u32,
    pub next_due_ms: i64,
    /// The server's Retry-After, as a time.
    pub retry_after_ms: Option<i64>,
    pub error: FailureReason,
}

/// How many operations wait and how many failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueCounts {
    pub pending: usize,
    pub failed: usize,
}

const COLS: &str = "id, lane, payload, depends_on, attempts, next_due_ms, state, last_error,
     retry_after_ms, unanswered, kind";

/// A row (`COLS`), parsed strictly: an unknown lane, state, payload or a payload that is not
/// of the row's kind is an error, not a guess.
fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueEntry> {
    let op: QueuedOp =
        serde_json::from_str(r.get_ref(2)?.as_str()?).map_err(|e| conversion(2, e))?;
    let kind = r.get_ref(10)?.as_str()?;
    if kind != op.kind() {
        return Err(conversion(
            10,
            QueueParseError {
                what: "kind",
                value: kind.to_owned(),
            },
        ));
    }
    Ok(QueueEntry {
        id: r.get(0)?,
        lane: parsed(r, 1)?,
        op,
        depends_on: r.get(3)?,
        attempts: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
        next_due_ms: r.get(5)?,
        state: parsed(r, 6)?,
        last_error: r.get(7)?,
        retry_after_ms: r.get(8)?,
        unanswered: u32::try_from(r.get::<_, i64>(9)?).unwrap_or(u32::MAX),
    })
}

/// The rows `WHERE {filter}` (with `params`), in queue order.
fn entries(
    c: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<QueueEntry>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLS} FROM queue WHERE {filter} ORDER BY id"
    ))?;
    let rows = stmt.query_map(params, entry)?;
    rows.collect()
}

/// An operation's state (`None`: it is gone).
fn op_state(c: &Connection, id: i64) -> rusqlite::Result<Option<QueueState>> {
    c.query_row("SELECT state FROM queue WHERE id = ?1", [id], |r| {
        parsed(r, 0)
    })
    .optional()
}

/// Whether an operation on `item` queued after `op_id` is still there: then an
/// acknowledgement must not overwrite that later optimistic state.
fn later_item_op(c: &Connection, op_id: i64, item: &LibraryItemId) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM queue WHERE lane = 'library' AND id > ?1
                        AND kind IN ('put_library_item', 'delete_library_item')
                        AND json_extract(payload, '$.item_id') = ?2)",
        params![op_id, item.as_str()],
        |r| r.get(0),
    )
}

impl Store {
    /// Every operation, in queue order.
    pub(crate) fn queue(&self) -> Result<Vec<QueueEntry>, ClientError> {
        self.read(|c| entries(c, "1", []))
    }

    pub(crate) fn queue_entry(&self, id: i64) -> Result<Option<QueueEntry>, ClientError> {
        Ok(self.read(|c| entries(c, "id = ?1", [id]))?.pop())
    }

    pub(crate) fn count_state(&self, state: QueueState) -> Result<usize, ClientError> {
        let n = self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM queue WHERE state = ?1",
                [state.as_str()],
                |r| r.get::<_, i64>(0),
            )
        })?;
        Ok(count(n))
    }

    /// Pending and failed operations, in one read; an unknown state is an error.
    pub(crate) fn queue_counts(&self) -> Result<QueueCounts, ClientError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT state, COUNT(*) FROM queue GROUP BY state")?;
            let mut rows = stmt.query([])?;
            let mut counts = QueueCounts::default();
            while let Some(r) = rows.next()? {
                let n = count(r.get(1)?);
                match parsed(r, 0)? {
                    QueueState::Pending => counts.pending = n,
                    QueueState::Failed => counts.failed = n,
                }
            }
            Ok(counts)
        })
    }

    /// The earliest time the head of a lane is due (`None`: nothing pending).
    pub(crate) fn next_due(&self) -> Result<Option<i64>, ClientError> {
        self.read(|c| {
            c.query_row(
                "SELECT MIN(q.next_due_ms) FROM queue q
                 WHERE q.state = 'pending'
                   AND q.id = (SELECT MIN(h.id) FROM queue h WHERE h.lane = q.lane AND h.state = 'pending')",
                [],
                |r| r.get(0),
            )
        })
    }

    /// The lanes with pending operations, in name order; a lane this version cannot read is
    /// an error in its place.
    pub(crate) fn pending_lanes(&self) -> Result<Vec<Result<Lane, QueueParseError>>, ClientError> {
        let lanes: Vec<String> = self.read(|c| {
            let mut stmt =
                c.prepare("SELECT DISTINCT lane FROM queue WHERE state = 'pending' ORDER BY lane")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })?;
        Ok(lanes.iter().map(|l| l.parse()).collect())
    }

    /// A lane's first pending operation, and the state of the operation it depends on
    /// (`None`: none, or gone).
    pub(crate) fn lane_head(
        &self,
        lane: &Lane,
    ) -> Result<Option<(QueueEntry, Option<QueueState>)>, ClientError> {
        let key = lane.to_string();
        self.read(|c| {
            let head = c
                .query_row(
                    &format!(
                        "SELECT {COLS} FROM queue WHERE lane = ?1 AND state = 'pending' ORDER BY id LIMIT 1"
                    ),
                    [key],
                    entry,
                )
                .optional()?;
            let Some(head) = head else { return Ok(None) };
            let dep = match head.depends_on {
                Some(d) => op_state(c, d)?,
                None => None,
            };
            Ok(Some((head, dep)))
        })
    }

    /// Records an acknowledgement and takes the operation out of the queue, in one durable
    /// transaction.
    pub(crate) fn acknowledge(&self, op_id: i64, ack: &Ack) -> Result<(), ClientError> {
        self.write_durable(|tx| {
            let c = tx.conn();
            match ack {
                Ack::Dequeue => {}
                Ack::MessageCreated { thread, id, view } => {
                    messages::record_created(c, thread, id, view)?
                }
                Ack::MessageDeleted { thread, id } => {
                    messages::set_send_state(c, thread, id, SendState::Sent, None)?
                }
                Ack::LibraryPut { id, view } => {
                    library::record_put(c, id, view, later_item_op(c, op_id, id)?)?
                }
                Ack::LibraryDeleted { id } => {
                    if !later_item_op(c, op_id, id)? {
                        library::remove(c, id)?;
                    }
                }
            }
            c.execute("DELETE FROM queue WHERE id = ?1", [op_id])?;
            Ok(())
        })
    }

    /// Records a failed attempt that will be retried.
    pub(crate) fn record_attempt(&self, a: &Attempt) -> Result<(), ClientError> {
        self.write_durable(|tx| {
            tx.conn().execute(
                "UPDATE queue SET attempts = ?2, next_due_ms = ?3, last_error = ?4, retry_after_ms = ?5,
                    unanswered = ?6
                 WHERE id = ?1",
                params![a.op_id, a.attempts, a.next_due_ms, a.error, a.retry_after_ms, a.unanswered],
            )?;
            Ok(())
        })
    }
}

impl DurableTx<'_> {
    /// Adds an operation; returns its id.
    pub(crate) fn enqueue(
        &self,
        lane: &Lane,
        op: &QueuedOp,
        depends_on: Option<i64>,
        now_ms: i64,
    ) -> rusqlite::Result<i64> {
        let c = self.conn();
        c.execute(
            "INSERT INTO queue (lane, kind, payload, depends_on, attempts, next_due_ms, state, created_ms)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, 'pending', ?5)",
            params![lane.to_string(), op.kind(), json_text(op)?, depends_on, now_ms],
        )?;
        Ok(c.last_insert_rowid())
    }

    /// Adds an operation after an upload of the local file it needs (`upload`), which runs
    /// first in the same lane; returns the operation's id.
    pub(crate) fn enqueue_after_upload(
        &self,
        lane: &Lane,
        upload: Option<(&Path, AudioRender)>,
        op: &QueuedOp,
        now_ms: i64,
    ) -> rusqlite::Result<i64> {
        let dep = match upload {
            Some((path, r)) => {
                let upload = QueuedOp::UploadAudio {
                    path: path.display().to_string(),
                    content_hash: r.content_hash,
                    format: r.format,
                };
                Some(self.enqueue(lane, &upload, None, now_ms)?)
            }
            None => None,
        };
        self.enqueue(lane, op, dep, now_ms)
    }

    /// Every operation, in queue order.
    pub(crate) fn queue_entries(&self) -> rusqlite::Result<Vec<QueueEntry>> {
        entries(self.conn(), "1", [])
    }

    /// The queued create of a message, pending or failed.
    pub(crate) fn queued_create(
        &self,
        thread: &ThreadId,
        message: &MessageId,
    ) -> rusqlite::Result<Option<QueueEntry>> {
        let lane = Lane::Thread(thread.clone()).to_string();
        let lane = entries(self.conn(), "lane = ?1", [lane])?;
        Ok(lane.into_iter().find(|e| {
            matches!(&e.op, QueuedOp::CreateMessage { thread_id, message_id }
                if thread_id == thread && message_id == message)
        }))
    }

    /// Removes an operation, and the one it depends on unless another operation needs it too
    /// (an upload only a cancelled create needed).
    pub(crate) fn cancel_op(&self, e: &QueueEntry) -> rusqlite::Result<()> {
        let c = self.conn();
        c.execute("DELETE FROM queue WHERE id = ?1", [e.id])?;
        if let Some(d) = e.depends_on {
            c.execute(
                "DELETE FROM queue WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE depends_on = ?1)",
                [d],
            )?;
        }
        Ok(())
    }

    pub(crate) fn delete_op(&self, id: i64) -> rusqlite::Result<()> {
        self.conn()
            .execute("DELETE FROM queue WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Removes every operation; answers how many there were.
    pub(crate) fn delete_all_ops(&self) -> rusqlite::Result<usize> {
        self.conn().execute("DELETE FROM queue", [])
    }

    /// Marks an operation failed, with the reason.
    pub(crate) fn mark_op_failed(&self, id: i64, reason: &FailureReason) -> rusqlite::Result<()> {
        self.conn().execute(
            "UPDATE queue SET state = ?2, last_error = ?3, attempts = attempts + 1 WHERE id = ?1",
            params![id, QueueState::Failed.as_str(), reason],
        )?;
        Ok(())
    }

    /// Puts a failed operation back: pending, due at `now_ms`, with a fresh retry budget.
    pub(crate) fn requeue_failed(&self, id: i64, now_ms: i64) -> rusqlite::Result<()> {
        self.conn().execute(
            "UPDATE queue SET state = 'pending', attempts = 0, unanswered = 0, next_due_ms = ?2,
                    retry_after_ms = NULL, last_error = NULL
             WHERE id = ?1 AND state = 'failed'",
            params![id, now_ms],
        )?;
        Ok(())
    }

    /// Records a subject's send state (and why it failed) in its row.
    pub(crate) fn set_send_state(
        &self,
        subject: &Subject,
        state: SendState,
        error: Option<&FailureReason>,
    ) -> rusqlite::Result<()> {
        match subject {
            Subject::Message(t, m) => messages::set_send_state(self.conn(), t, m, state, error),
            Subject::LibraryItem(i) => library::set_send_state(self.conn(), i, state, error),
        }
    }

    /// Undoes an operation's optimistic effect.
    pub(crate) fn roll_back(&self, op: &QueuedOp) -> rusqlite::Result<Option<Rolled>> {
        let c = self.conn();
        let gone = match op {
            QueuedOp::CreateMessage {
                thread_id,
                message_id,
            } => {
                messages::remove_unsent(c, thread_id, message_id)?;
                super::threads::refresh_summary(c, thread_id.as_str())?;
                true
            }
            QueuedOp::DeleteMessage {
                thread_id,
                message_id,
            } => {
                messages::restore(c, thread_id, message_id)?;
                super::threads::refresh_summary(c, thread_id.as_str())?;
                false
            }
            QueuedOp::PutLibraryItem { item_id, .. } | QueuedOp::DeleteLibraryItem { item_id } => {
                library::roll_back(c, item_id)?
            }
            QueuedOp::UploadAudio { .. } | QueuedOp::MarkRead { .. } => return Ok(None),
        };
        Ok(op.subject().map(|subject| Rolled { subject, gone }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_op() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(dir.path(), 1).expect("open");
        let op = QueuedOp::DeleteMessage {
            thread_id: "t".parse().expect("thread"),
            message_id: "m".parse().expect("message"),
        };
        let lane = Lane::Thread("t".parse().expect("thread"));
        let id = store
            .write_durable(|tx| Ok(tx.enqueue(&lane, &op, None, 1)?))
            .expect("enqueue");
        (dir, store, id)
    }

    /// Lanes, states and kinds parse strictly wherever the queue is read: an unknown value
    /// is an error, never a default.
    #[test]
    fn an_unknown_lane_state_or_kind_is_an_error() {
        for bad in [
            "UPDATE queue SET lane = 'elsewhere'",
            "UPDATE queue SET state = 'paused'",
            "UPDATE queue SET kind = 'create_message'",
        ] {
            let (_dir, store, id) = store_with_op();
            store
                .write_cache(|tx| Ok(tx.conn().execute(bad, [])?))
                .expect("damage");
            assert!(matches!(store.queue(), Err(ClientError::Db(_))), "{bad}");
            assert!(store.queue_entry(id).is_err(), "{bad}");
        }
        let (_dir, store, _) = store_with_op();
        store
            .write_cache(|tx| Ok(tx.conn().execute("UPDATE queue SET state = 'paused'", [])?))
            .expect("damage");
        assert!(store.queue_counts().is_err());
    }

    /// A dependency in a state this version does not know stops its dependent with an error,
    /// rather than counting as pending or failed.
    #[test]
    fn an_unknown_dependency_state_is_an_error() {
        let (_dir, store, first) = store_with_op();
        let lane = Lane::Library;
        let op = QueuedOp::DeleteLibraryItem {
            item_id: "i".parse().expect("item"),
        };
        store
            .write_durable(|tx| Ok(tx.enqueue(&lane, &op, Some(first), 1)?))
            .expect("enqueue");
        assert!(matches!(
            store.lane_head(&lane),
            Ok(Some((_, Some(QueueState::Pending))))
        ));
        store
            .write_cache(|tx| {
                Ok(tx
                    .conn()
                    .execute("UPDATE queue SET state = 'paused' WHERE id = ?1", [first])?)
            })
            .expect("damage");
        assert!(store.lane_head(&lane).is_err());
    }
}
