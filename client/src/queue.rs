//! The persisted offline queue.
//!
//! - Every operation is a row, written with `synchronous=FULL` in the same transaction as
//!   its optimistic effect (a message shown as `sending`), so nothing is lost if the app is
//!   killed right after.
//! - Operations run in order within a *lane* (a thread's id, `library`, `uploads`); lanes
//!   are independent, so one stuck operation never blocks another thread.
//! - An operation leaves the queue only in the transaction that records the server's
//!   acknowledgement. A kill between the server's commit and that transaction means the
//!   operation is sent again after a restart; every operation is idempotent on the server
//!   (client-chosen message ids, PUT/DELETE by id), so it applies once.
//! - Errors: no answer, 5xx, 408 and 429 are retried (429/503 after `Retry-After` when it
//!   is longer); any other 4xx fails the operation at once with the server's reason.
//! - Retries ("max 3 attempts, backoff 1 s, 2 s, 4 s" in the seed): we read it as three
//!   *retries* after the first attempt, waiting 1 s, 2 s and 4 s (`retry_base * 2^(n-1)`),
//!   each multiplied by a jitter factor drawn from [0.5, 1.5). After the third retry fails
//!   the operation is `failed`. Attempt count and next-due time are persisted.
//! - A failed operation stays visible until the app retries or discards it; operations that
//!   depend on it fail with it.

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use audio_dedup_core::{AudioFormat, ContentHash, MessageId, ThreadId};

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
    PutLibraryItem {
        item_id: String,
        content_hash: ContentHash,
        title: String,
    },
    DeleteLibraryItem {
        item_id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    Pending,
    Failed,
}

/// A row of the queue, as `queue()` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: i64,
    pub lane: String,
    pub op: QueuedOp,
    pub depends_on: Option<i64>,
    pub attempts: u32,
    pub next_due_ms: i64,
    pub state: QueueState,
    pub last_error: Option<String>,
}

/// What one `process_queue` pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueReport {
    pub sent: usize,
    pub failed: usize,
    /// Operations waiting for their next retry time (or offline).
    pub waiting: usize,
}

fn state_str(s: QueueState) -> &'static str {
    match s {
        QueueState::Pending => "pending",
        QueueState::Failed => "failed",
    }
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueEntry> {
    let payload: String = r.get(2)?;
    let op = serde_json::from_str(&payload).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let state: String = r.get(6)?;
    Ok(QueueEntry {
        id: r.get(0)?,
        lane: r.get(1)?,
        op,
        depends_on: r.get(3)?,
        attempts: r.get::<_, i64>(4)? as u32,
        next_due_ms: r.get(5)?,
        state: if state == "failed" {
            QueueState::Failed
        } else {
            QueueState::Pending
        },
        last_error: r.get(7)?,
    })
}

const COLS: &str = "id, lane, payload, depends_on, attempts, next_due_ms, state, last_error";

/// Adds an operation inside the caller's (durable) transaction; returns its id.
pub(crate) fn enqueue(
    tx: &Transaction<'_>,
    lane: &str,
    op: &QueuedOp,
    depends_on: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    let payload = serde_json::to_string(op)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let kind = match op {
        QueuedOp::CreateMessage { .. } => "create_message",
        QueuedOp::DeleteMessage { .. } => "delete_message",
        QueuedOp::UploadAudio { .. } => "upload_audio",
        QueuedOp::PutLibraryItem { .. } => "put_library_item",
        QueuedOp::DeleteLibraryItem { .. } => "delete_library_item",
    };
    tx.execute(
        "INSERT INTO queue (lane, kind, payload, depends_on, attempts, next_due_ms, state, created_ms)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, 'pending', ?5)",
        params![lane, kind, payload, depends_on, now_ms],
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
        self.db
            .read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM queue WHERE state = 'pending'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| n as usize)
    }

    pub fn failed_count(&self) -> Result<usize, ClientError> {
        self.db
            .read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM queue WHERE state = 'failed'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| n as usize)
    }

    pub(crate) fn announce_queue(&self) {
        if let (Ok(pending), Ok(failed)) = (self.pending_count(), self.failed_count()) {
            self.updates.send(Update::Queue { pending, failed });
        }
    }

    /// Drops every queued operation and rolls back its optimistic effect (unsent messages
    /// disappear, pending deletions reappear).
    pub fn clear_queue(&self) -> Result<usize, ClientError> {
        let entries = self.queue()?;
        let mut removed = Vec::new();
        let n = self.db.write(true, |tx| {
            for e in &entries {
                if let Some(r) = rollback(tx, &e.op)? {
                    removed.push(r);
                }
            }
            tx.execute("DELETE FROM queue", [])
        })?;
        for (thread_id, message_id, gone) in removed {
            self.announce_rollback(thread_id, message_id, gone);
        }
        self.announce_queue();
        Ok(n)
    }

    fn announce_rollback(&self, thread_id: ThreadId, message_id: MessageId, gone: bool) {
        if gone {
            self.updates.send(Update::MessageRemoved {
                thread_id,
                message_id,
            });
        } else {
            self.updates.send(Update::Message {
                thread_id,
                message_id,
                state: SendState::Sent,
                error: None,
            });
        }
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
        let touched: Vec<QueuedOp> = entries
            .iter()
            .filter(|e| ids.contains(&e.id))
            .map(|e| e.op.clone())
            .collect();
        self.db.write(true, |tx| {
            for id in &ids {
                tx.execute(
                    "UPDATE queue SET state = 'pending', attempts = 0, next_due_ms = ?2, last_error = NULL
                     WHERE id = ?1 AND state = 'failed'",
                    params![id, now],
                )?;
            }
            for op in &touched {
                if let Some((t, m)) = message_of(op) {
                    tx.execute(
                        "UPDATE messages SET send_state = 'sending', error = NULL WHERE thread_id = ?1 AND id = ?2",
                        params![t.as_str(), m.as_str()],
                    )?;
                }
            }
            Ok(())
        })?;
        for op in &touched {
            if let Some((t, m)) = message_of(op) {
                self.updates.send(Update::Message {
                    thread_id: t.clone(),
                    message_id: m.clone(),
                    state: SendState::Sending,
                    error: None,
                });
            }
        }
        self.announce_queue();
        Ok(())
    }

    /// Removes a failed operation and rolls back its effect: a message that never got sent
    /// disappears; a deletion that failed is undone.
    pub fn discard_failed(&self, op_id: i64) -> Result<(), ClientError> {
        let Some(e) = self.queue()?.into_iter().find(|e| e.id == op_id) else {
            return Err(ClientError::NotFound(format!("queued operation {op_id}")));
        };
        if e.state != QueueState::Failed {
            return Err(ClientError::Invalid(format!(
                "operation {op_id} has not failed; only failed operations are discarded"
            )));
        }
        let mut removed = None;
        self.db.write(true, |tx| {
            removed = rollback(tx, &e.op)?;
            tx.execute("DELETE FROM queue WHERE id = ?1", [op_id])?;
            Ok(())
        })?;
        if let Some((t, m, gone)) = removed {
            self.announce_rollback(t, m, gone);
        }
        self.announce_queue();
        Ok(())
    }

    /// Sends what is due, lane by lane, in order within each lane. Stops a lane at an
    /// operation that must wait (offline, retry time not reached); other lanes go on.
    pub async fn process_queue(&self) -> Result<QueueReport, ClientError> {
        self.process(None).await
    }

    /// `process_queue` for one lane only.
    pub(crate) async fn process_lane(&self, lane: &str) -> Result<QueueReport, ClientError> {
        self.process(Some(lane)).await
    }

    async fn process(&self, only: Option<&str>) -> Result<QueueReport, ClientError> {
        let _turn = self.queue_lock.lock().await;
        let mut report = QueueReport::default();
        let lanes: Vec<String> = self.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT DISTINCT lane FROM queue WHERE state = 'pending' ORDER BY lane")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })?;
        for lane in lanes
            .iter()
            .filter(|l| only.is_none_or(|o| o == l.as_str()))
        {
            self.run_lane(lane, &mut report).await?;
        }
        self.announce_queue();
        Ok(report)
    }

    async fn run_lane(&self, lane: &str, report: &mut QueueReport) -> Result<(), ClientError> {
        // Bounded: each turn removes, fails or parks one operation.
        for _ in 0..10_000 {
            let head = self.db.read(|c| {
                c.query_row(
                    &format!("SELECT {COLS} FROM queue WHERE lane = ?1 AND state = 'pending' ORDER BY id LIMIT 1"),
                    [lane],
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
            if e.next_due_ms > self.cfg.now_ms() {
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
                    let attempts = e.attempts + 1;
                    if attempts > self.cfg.max_retries {
                        self.fail(&e, &format!("gave up after {attempts} attempts: {err}"))?;
                        report.failed += 1;
                        continue;
                    }
                    let mut delay = self.retry_delay(attempts);
                    if let ApiError::Retryable {
                        retry_after: Some(after),
                        ..
                    } = &err
                    {
                        delay = delay.max(*after);
                    }
                    let due = self.cfg.now_ms() + delay.as_millis() as i64;
                    let msg = err.to_string();
                    self.db.write(true, |tx| {
                        tx.execute(
                            "UPDATE queue SET attempts = ?2, next_due_ms = ?3, last_error = ?4 WHERE id = ?1",
                            params![e.id, attempts, due, msg],
                        )
                    })?;
                    report.waiting += 1;
                    return Ok(());
                }
                Ran::Err(err) => {
                    self.fail(&e, &err.to_string())?;
                    report.failed += 1;
                }
            }
        }
        Ok(())
    }

    /// Marks an operation failed (and its message), with the reason.
    fn fail(&self, e: &QueueEntry, reason: &str) -> Result<(), ClientError> {
        self.db.write(true, |tx| {
            tx.execute(
                "UPDATE queue SET state = ?2, last_error = ?3, attempts = attempts + 1 WHERE id = ?1",
                params![e.id, state_str(QueueState::Failed), reason],
            )?;
            if let Some((t, m)) = message_of(&e.op) {
                tx.execute(
                    "UPDATE messages SET send_state = 'failed', error = ?3 WHERE thread_id = ?1 AND id = ?2",
                    params![t.as_str(), m.as_str(), reason],
                )?;
            }
            Ok(())
        })?;
        if let Some((t, m)) = message_of(&e.op) {
            self.updates.send(Update::Message {
                thread_id: t.clone(),
                message_id: m.clone(),
                state: SendState::Failed,
                error: Some(reason.to_owned()),
            });
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
                title,
            } => self
                .api
                .put_library_item(item_id, content_hash, title)
                .await
                .map_err(ClientError::from)
                .map(|_| nothing_to_record()),
            QueuedOp::DeleteLibraryItem { item_id } => {
                match self.api.delete_library_item(item_id).await {
                    // Already gone: the delete's goal holds.
                    Ok(()) | Err(ApiError::Rejected { status: 404, .. }) => Ok(nothing_to_record()),
                    Err(err) => Err(err.into()),
                }
            }
        };
        match out {
            Ok(record) => Ran::Acked(record),
            Err(e) => Ran::Err(e),
        }
    }
}

/// The message an operation is about, if any.
fn message_of(op: &QueuedOp) -> Option<(&ThreadId, &MessageId)> {
    match op {
        QueuedOp::CreateMessage {
            thread_id,
            message_id,
        }
        | QueuedOp::DeleteMessage {
            thread_id,
            message_id,
        } => Some((thread_id, message_id)),
        _ => None,
    }
}

/// Undoes an operation's optimistic effect. Returns the message touched and whether it is
/// gone (an unsent create) or restored (a pending delete).
fn rollback(
    tx: &Transaction<'_>,
    op: &QueuedOp,
) -> rusqlite::Result<Option<(ThreadId, MessageId, bool)>> {
    match op {
        QueuedOp::CreateMessage {
            thread_id,
            message_id,
        } => {
            tx.execute(
                "DELETE FROM messages WHERE thread_id = ?1 AND id = ?2 AND seq IS NULL",
                params![thread_id.as_str(), message_id.as_str()],
            )?;
            Ok(Some((thread_id.clone(), message_id.clone(), true)))
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
            Ok(Some((thread_id.clone(), message_id.clone(), false)))
        }
        _ => Ok(None),
    }
}
