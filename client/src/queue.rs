//! The persisted offline queue.
//!
//! - Every operation is a row, written with `synchronous=FULL` in the same transaction as
//!   its optimistic effect (a message shown as `sending`), so nothing is lost if the app is
//!   killed right after.
//! - Operations run in order within a *lane* ([`Lane`]: a thread, or the library); lanes
//!   are independent, so one stuck operation never blocks another thread. An upload runs in
//!   the lane of the operation that uses it, right before it.
//! - An operation leaves the queue only in the transaction that records the server's
//!   acknowledgement. A kill between the server's commit and that transaction means the
//!   operation is sent again after a restart; every operation is idempotent on the server
//!   (client-chosen message ids, PUT/DELETE by id), so it applies once.
//! - Errors: no answer, 5xx, 408 and 429 are retried (429/503 after `Retry-After` when it
//!   is longer); any other 4xx fails the operation at once with the server's reason.
//! - Retries ("max 3 attempts, backoff 1 s, 2 s, 4 s" in the seed): we read it as three
//!   *retries* after the first attempt, waiting 1 s, 2 s and 4 s (`retry_base * 2^(n-1)`,
//!   at most `max_retry_delay`), each multiplied by a jitter factor drawn from [0.5, 1.5).
//!   After the third answered retry fails (5xx, 408, 429) the operation is `failed`.
//!   Attempts that get no answer at all (offline, or the server down) back off the same way
//!   but never use up the budget: an offline-first queue waits for the network rather than
//!   giving up on it. Attempt counts and the next-due time are persisted.
//! - A failed operation stays visible until the app retries or discards it; operations that
//!   depend on it fail with it.
//! - Two ways to run it: [`Client::process_due`] (what the background sender runs) honours
//!   the backoff and Retry-After; [`Client::process_queue`] (what the app calls when
//!   connectivity returns) sends every pending operation now, skipping the backoff, but
//!   still honours an explicit Retry-After, which is persisted apart (`retry_after_ms`).

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use audio_dedup_core::{AudioFormat, ContentHash, LibraryItemId, MessageId, ThreadId};

use crate::error::{ApiError, ClientError};
use crate::updates::{SendState, Update};
use crate::Client;

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
}

impl QueuedOp {
    /// The kind column: also what a strict reader checks the payload against.
    fn kind(&self) -> &'static str {
        match self {
            Self::CreateMessage { .. } => "create_message",
            Self::DeleteMessage { .. } => "delete_message",
            Self::UploadAudio { .. } => "upload_audio",
            Self::PutLibraryItem { .. } => "put_library_item",
            Self::DeleteLibraryItem { .. } => "delete_library_item",
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
    pub last_error: Option<String>,
}

/// Which operations a pass sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Those due: backoff and Retry-After both honoured (the background sender).
    Due,
    /// Every pending one now, skipping the backoff; Retry-After still honoured.
    Now,
}

/// What one `process_queue` pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueReport {
    pub sent: usize,
    pub failed: usize,
    /// Operations waiting for their next retry time (or offline).
    pub waiting: usize,
}

fn conversion(i: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
}

/// A row, parsed strictly: an unknown lane, state or payload is an error, not a guess.
fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueEntry> {
    let lane: String = r.get(1)?;
    let payload: String = r.get(2)?;
    let op = serde_json::from_str(&payload).map_err(|e| conversion(2, e))?;
    let state: String = r.get(6)?;
    Ok(QueueEntry {
        id: r.get(0)?,
        lane: lane.parse().map_err(|e| conversion(1, e))?,
        op,
        depends_on: r.get(3)?,
        attempts: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
        next_due_ms: r.get(5)?,
        state: state.parse().map_err(|e| conversion(6, e))?,
        last_error: r.get(7)?,
        retry_after_ms: r.get(8)?,
        unanswered: u32::try_from(r.get::<_, i64>(9)?).unwrap_or(u32::MAX),
    })
}

const COLS: &str =
    "id, lane, payload, depends_on, attempts, next_due_ms, state, last_error, retry_after_ms, unanswered";

/// Adds an operation inside the caller's (durable) transaction; returns its id.
pub(crate) fn enqueue(
    tx: &Transaction<'_>,
    lane: &Lane,
    op: &QueuedOp,
    depends_on: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    let payload = serde_json::to_string(op)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.execute(
        "INSERT INTO queue (lane, kind, payload, depends_on, attempts, next_due_ms, state, created_ms)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, 'pending', ?5)",
        params![lane.to_string(), op.kind(), payload, depends_on, now_ms],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Records a server's acknowledgement, inside the transaction that dequeues the operation.
pub(crate) type RecordAck = Box<dyn FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send>;

fn nothing_to_record() -> RecordAck {
    Box::new(|_| Ok(()))
}

/// The outcome of running one operation against the server.
pub(crate) enum Ran {
    Acked(RecordAck),
    Err(ClientError),
}

/// What an operation changes optimistically: a message, a library item, or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    Message(ThreadId, MessageId),
    LibraryItem(LibraryItemId),
}

fn subject_of(op: &QueuedOp) -> Option<Subject> {
    match op {
        QueuedOp::CreateMessage {
            thread_id,
            message_id,
        }
        | QueuedOp::DeleteMessage {
            thread_id,
            message_id,
        } => Some(Subject::Message(thread_id.clone(), message_id.clone())),
        QueuedOp::PutLibraryItem { item_id, .. } | QueuedOp::DeleteLibraryItem { item_id } => {
            Some(Subject::LibraryItem(item_id.clone()))
        }
        QueuedOp::UploadAudio { .. } => None,
    }
}

/// Records a subject's send state (and why it failed) in its row.
fn set_send_state(
    tx: &Transaction<'_>,
    subject: &Subject,
    state: SendState,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    let st = crate::updates::send_state_str(state);
    match subject {
        Subject::Message(t, m) => tx.execute(
            "UPDATE messages SET send_state = ?3, error = ?4 WHERE thread_id = ?1 AND id = ?2",
            params![t.as_str(), m.as_str(), st, error],
        )?,
        Subject::LibraryItem(i) => tx.execute(
            "UPDATE library SET send_state = ?2, error = ?3 WHERE id = ?1",
            params![i.as_str(), st, error],
        )?,
    };
    Ok(())
}

/// An optimistic effect undone: the subject is gone (never sent) or back as the server has
/// it.
struct Rolled {
    subject: Subject,
    gone: bool,
}

impl Client {
    /// The delay before retry `n` (1-based): `retry_base * 2^(n-1)`, times a jitter factor
    /// in [0.5, 1.5) unless jitter is off.
    pub(crate) fn retry_delay(&self, n: u32) -> Duration {
        let base = self
            .cfg
            .retry_base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20));
        if self.cfg.retry_jitter {
            base.mul_f64(0.5 + rand::random::<f64>())
        } else {
            base
        }
    }

    /// Every operation, in queue order.
    pub fn queue(&self) -> Result<Vec<QueueEntry>, ClientError> {
        self.db.read(|c| {
            let mut stmt = c.prepare(&format!("SELECT {COLS} FROM queue ORDER BY id"))?;
            let rows = stmt.query_map([], entry)?;
            rows.collect()
        })
    }

    /// Operations waiting to be sent (not counting failed ones).
    pub fn pending_count(&self) -> Result<usize, ClientError> {
        self.count_state(QueueState::Pending)
    }

    pub fn failed_count(&self) -> Result<usize, ClientError> {
        self.count_state(QueueState::Failed)
    }

    fn count_state(&self, state: QueueState) -> Result<usize, ClientError> {
        self.db
            .read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM queue WHERE state = ?1",
                    [state.as_str()],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| usize::try_from(n).unwrap_or(0))
    }

    /// The earliest time the head of a lane is due (`None`: nothing pending). What the
    /// background sender sleeps until.
    pub(crate) fn next_due(&self) -> Result<Option<i64>, ClientError> {
        self.db.read(|c| {
            c.query_row(
                "SELECT MIN(q.next_due_ms) FROM queue q
                 WHERE q.state = 'pending'
                   AND q.id = (SELECT MIN(h.id) FROM queue h WHERE h.lane = q.lane AND h.state = 'pending')",
                [],
                |r| r.get(0),
            )
        })
    }

    pub(crate) fn announce_queue(&self) {
        if let (Ok(pending), Ok(failed)) = (self.pending_count(), self.failed_count()) {
            self.updates.send(Update::Queue { pending, failed });
        }
    }

    /// Announces a subject's new send state.
    pub(crate) fn announce(&self, subject: &Subject, state: SendState, error: Option<String>) {
        self.updates.send(match subject.clone() {
            Subject::Message(thread_id, message_id) => Update::Message {
                thread_id,
                message_id,
                state,
                error,
            },
            Subject::LibraryItem(item_id) => Update::LibraryItem {
                item_id,
                state,
                error,
            },
        });
    }

    fn announce_rollback(&self, r: Rolled) {
        match (r.subject, r.gone) {
            (Subject::Message(thread_id, message_id), true) => {
                self.updates.send(Update::MessageRemoved {
                    thread_id,
                    message_id,
                })
            }
            (Subject::LibraryItem(item_id), true) => {
                self.updates.send(Update::LibraryItemRemoved { item_id })
            }
            (subject, false) => self.announce(&subject, SendState::Sent, None),
        }
    }

    /// Drops every queued operation and rolls back its optimistic effect (unsent messages
    /// and library items disappear, pending deletions reappear).
    pub fn clear_queue(&self) -> Result<usize, ClientError> {
        let entries = self.queue()?;
        let mut rolled = Vec::new();
        let n = self.db.write(true, |tx| {
            for e in &entries {
                if let Some(r) = rollback(tx, &e.op)? {
                    rolled.push(r);
                }
            }
            tx.execute("DELETE FROM queue", [])
        })?;
        for r in rolled {
            self.announce_rollback(r);
        }
        self.announce_queue();
        Ok(n)
    }

    /// Puts a failed operation (and those that failed because of it) back in the queue, due
    /// now, with a fresh retry budget.
    pub fn retry_failed(&self, op_id: i64) -> Result<(), ClientError> {
        let now = self.cfg.now_ms();
        let entries = self.queue()?;
        let mut ids = vec![op_id];
        // Dependents failed with it; they go back too.
        for e in &entries {
            if e.depends_on == Some(op_id) && e.state == QueueState::Failed {
                ids.push(e.id);
            }
        }
        let touched: Vec<Subject> = entries
            .iter()
            .filter(|e| ids.contains(&e.id))
            .filter_map(|e| subject_of(&e.op))
            .collect();
        self.db.write(true, |tx| {
            for id in &ids {
                tx.execute(
                    "UPDATE queue SET state = 'pending', attempts = 0, unanswered = 0, next_due_ms = ?2,
                            retry_after_ms = NULL, last_error = NULL
                     WHERE id = ?1 AND state = 'failed'",
                    params![id, now],
                )?;
            }
            for s in &touched {
                set_send_state(tx, s, SendState::Sending, None)?;
            }
            Ok(())
        })?;
        for s in &touched {
            self.announce(s, SendState::Sending, None);
        }
        self.announce_queue();
        self.bg.wake();
        Ok(())
    }

    /// Removes a failed operation and rolls back its effect: a message or library item that
    /// never got sent disappears; a deletion that failed is undone.
    pub fn discard_failed(&self, op_id: i64) -> Result<(), ClientError> {
        let Some(e) = self.queue()?.into_iter().find(|e| e.id == op_id) else {
            return Err(ClientError::NotFound(format!("queued operation {op_id}")));
        };
        if e.state != QueueState::Failed {
            return Err(ClientError::Invalid(format!(
                "operation {op_id} has not failed; only failed operations are discarded"
            )));
        }
        let mut rolled = None;
        self.db.write(true, |tx| {
            rolled = rollback(tx, &e.op)?;
            tx.execute("DELETE FROM queue WHERE id = ?1", [op_id])?;
            Ok(())
        })?;
        if let Some(r) = rolled {
            self.announce_rollback(r);
        }
        self.announce_queue();
        Ok(())
    }

    /// What the app calls when connectivity returns: sends every pending operation now,
    /// lane by lane, in order within each lane, skipping the backoff of operations that
    /// failed for want of an answer (or a 5xx/408). An explicit Retry-After (429/503) is still
    /// honoured: that operation, and its lane behind it, wait until then.
    pub async fn process_queue(&self) -> Result<QueueReport, ClientError> {
        self.process(None, Pass::Now).await
    }

    /// Sends what is due, honouring the backoff and Retry-After: what the background sender
    /// runs. Stops a lane at an operation that must wait; other lanes go on.
    pub async fn process_due(&self) -> Result<QueueReport, ClientError> {
        self.process(None, Pass::Due).await
    }

    /// `process_due` for one lane only (right after an enqueue).
    pub(crate) async fn process_lane(&self, lane: &Lane) -> Result<QueueReport, ClientError> {
        self.process(Some(lane), Pass::Due).await
    }

    async fn process(&self, only: Option<&Lane>, pass: Pass) -> Result<QueueReport, ClientError> {
        let _turn = self.queue_lock.lock().await;
        let mut report = QueueReport::default();
        let lanes: Vec<String> = self.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT DISTINCT lane FROM queue WHERE state = 'pending' ORDER BY lane")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })?;
        for lane in lanes {
            let lane: Lane = match lane.parse() {
                Ok(l) => l,
                Err(e) => {
                    // Left alone, visible in `queue()`'s error; other lanes go on.
                    tracing::warn!(error = %e, "skipping a lane this version cannot read");
                    continue;
                }
            };
            if only.is_none_or(|o| *o == lane) {
                self.run_lane(&lane, pass, &mut report).await?;
            }
        }
        self.announce_queue();
        Ok(report)
    }

    async fn run_lane(
        &self,
        lane: &Lane,
        pass: Pass,
        report: &mut QueueReport,
    ) -> Result<(), ClientError> {
        let key = lane.to_string();
        // Bounded: each turn removes, fails or parks one operation.
        for _ in 0..10_000 {
            // Logout: nothing more leaves the device.
            if self.db.is_closed() {
                return Ok(());
            }
            let head = self.db.read(|c| {
                c.query_row(
                    &format!("SELECT {COLS} FROM queue WHERE lane = ?1 AND state = 'pending' ORDER BY id LIMIT 1"),
                    [&key],
                    entry,
                )
                .optional()
            })?;
            let Some(e) = head else { return Ok(()) };
            if let Some(dep) = e.depends_on {
                let dep_state: Option<String> = self.db.read(|c| {
                    c.query_row("SELECT state FROM queue WHERE id = ?1", [dep], |r| r.get(0))
                        .optional()
                })?;
                match dep_state.as_deref() {
                    Some("failed") => {
                        self.fail(&e, "an operation it depends on failed")?;
                        report.failed += 1;
                        continue;
                    }
                    // Runs in another lane and has not succeeded yet.
                    Some(_) => {
                        report.waiting += 1;
                        return Ok(());
                    }
                    None => {}
                }
            }
            let now = self.cfg.now_ms();
            let due = match pass {
                Pass::Due => e.next_due_ms <= now,
                Pass::Now => e.retry_after_ms.is_none_or(|t| t <= now),
            };
            if !due {
                report.waiting += 1;
                return Ok(());
            }
            match self.run_op(&e).await {
                Ran::Acked(record) => {
                    let id = e.id;
                    self.db.write(true, move |tx| {
                        record(tx)?;
                        tx.execute("DELETE FROM queue WHERE id = ?1", [id])?;
                        Ok(())
                    })?;
                    report.sent += 1;
                }
                Ran::Err(ClientError::Api(err)) if err.is_retryable() => {
                    // No answer at all: the device is offline (or the server is down). That
                    // is what the queue is for, so it waits without using up the budget;
                    // answered refusals (5xx, 408, 429) use it up.
                    let offline = matches!(err, ApiError::Offline(_));
                    let attempts = e.attempts + 1;
                    let unanswered = e.unanswered + u32::from(offline);
                    let answered = attempts - unanswered;
                    if !offline && answered > self.cfg.max_retries {
                        self.fail(
                            &e,
                            &format!("gave up after {answered} answered attempts: {err}"),
                        )?;
                        report.failed += 1;
                        continue;
                    }
                    let mut delay = self.retry_delay(attempts).min(self.cfg.max_retry_delay);
                    let mut retry_after = None;
                    if let ApiError::Retryable {
                        retry_after: Some(after),
                        ..
                    } = &err
                    {
                        delay = delay.max(*after);
                        retry_after = Some(now_plus(self.cfg.now_ms(), *after));
                    }
                    let due = now_plus(self.cfg.now_ms(), delay);
                    let msg = err.to_string();
                    self.db.write(true, |tx| {
                        tx.execute(
                            "UPDATE queue SET attempts = ?2, next_due_ms = ?3, last_error = ?4, retry_after_ms = ?5,
                                unanswered = ?6
                             WHERE id = ?1",
                            params![e.id, attempts, due, msg, retry_after, unanswered],
                        )
                    })?;
                    report.waiting += 1;
                    return Ok(());
                }
                // Logout while it was on the wire: leave it, the wipe removes it.
                Ran::Err(ClientError::Closed) => return Ok(()),
                Ran::Err(err) => {
                    self.fail(&e, &err.to_string())?;
                    report.failed += 1;
                }
            }
        }
        Ok(())
    }

    /// Marks an operation failed (and its message or library item), with the reason.
    fn fail(&self, e: &QueueEntry, reason: &str) -> Result<(), ClientError> {
        let subject = subject_of(&e.op);
        self.db.write(true, |tx| {
            tx.execute(
                "UPDATE queue SET state = ?2, last_error = ?3, attempts = attempts + 1 WHERE id = ?1",
                params![e.id, QueueState::Failed.as_str(), reason],
            )?;
            if let Some(s) = &subject {
                set_send_state(tx, s, SendState::Failed, Some(reason))?;
            }
            Ok(())
        })?;
        if let Some(s) = &subject {
            self.announce(s, SendState::Failed, Some(reason.to_owned()));
        }
        Ok(())
    }

    async fn run_op(&self, e: &QueueEntry) -> Ran {
        let out = match &e.op {
            QueuedOp::CreateMessage {
                thread_id,
                message_id,
            } => self.send_create(thread_id, message_id).await,
            QueuedOp::DeleteMessage {
                thread_id,
                message_id,
            } => self.send_delete(thread_id, message_id).await,
            QueuedOp::UploadAudio {
                path,
                content_hash,
                format,
            } => self
                .upload_queued(std::path::Path::new(path), *content_hash, *format)
                .await
                .map(|_| nothing_to_record()),
            QueuedOp::PutLibraryItem {
                item_id,
                content_hash,
                from_message,
                title,
            } => {
                self.send_library_put(e.id, item_id, *content_hash, from_message.as_ref(), title)
                    .await
            }
            QueuedOp::DeleteLibraryItem { item_id } => {
                self.send_library_delete(e.id, item_id).await
            }
        };
        match out {
            Ok(record) => Ran::Acked(record),
            Err(e) => Ran::Err(e),
        }
    }
}

fn now_plus(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Undoes an operation's optimistic effect.
fn rollback(tx: &Transaction<'_>, op: &QueuedOp) -> rusqlite::Result<Option<Rolled>> {
    let subject = subject_of(op);
    let gone = match op {
        QueuedOp::CreateMessage {
            thread_id,
            message_id,
        } => {
            tx.execute(
                "DELETE FROM messages WHERE thread_id = ?1 AND id = ?2 AND seq IS NULL",
                params![thread_id.as_str(), message_id.as_str()],
            )?;
            true
        }
        QueuedOp::DeleteMessage {
            thread_id,
            message_id,
        } => {
            tx.execute(
                "UPDATE messages SET state = 'live', send_state = 'sent', error = NULL
                 WHERE thread_id = ?1 AND id = ?2",
                params![thread_id.as_str(), message_id.as_str()],
            )?;
            false
        }
        QueuedOp::PutLibraryItem { item_id, .. } | QueuedOp::DeleteLibraryItem { item_id } => {
            crate::library::rollback(tx, item_id)?
        }
        QueuedOp::UploadAudio { .. } => return Ok(None),
    };
    Ok(subject.map(|subject| Rolled { subject, gone }))
}
