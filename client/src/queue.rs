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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use crate::error::{ApiError, ClientError, ErrorCode};
use crate::failure::FailureReason;
use crate::store::queue::{Ack, Attempt, QueueCounts, Rolled, Subject};
use crate::updates::{SendState, Update};
use crate::Client;

pub use crate::store::queue::{Lane, QueueEntry, QueueParseError, QueueState, QueuedOp};

/// Lanes that may run at once in one pass: a large upload in one thread does not hold back
/// a message in another, and a long queue does not open a connection per thread.
const LANES_AT_ONCE: usize = 4;

/// One pass per lane at a time; `all` (logout) waits for every lane's pass to end.
#[derive(Clone, Default)]
pub(crate) struct LaneLocks {
    all: Arc<tokio::sync::RwLock<()>>,
    lanes: Arc<Mutex<HashMap<Lane, Arc<tokio::sync::Mutex<()>>>>>,
}

impl LaneLocks {
    pub(crate) async fn lane(
        &self,
        lane: &Lane,
    ) -> (
        tokio::sync::RwLockReadGuard<'_, ()>,
        tokio::sync::OwnedMutexGuard<()>,
    ) {
        let all = self.all.read().await;
        let one = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(lane.clone())
            .or_default()
            .clone();
        (all, one.lock_owned().await)
    }

    pub(crate) async fn all(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.all.write().await
    }
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

impl QueueReport {
    fn add(&mut self, other: QueueReport) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.waiting += other.waiting;
    }
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
        self.store.queue()
    }

    /// Operations waiting to be sent (not counting failed ones).
    pub fn pending_count(&self) -> Result<usize, ClientError> {
        self.store.count_state(QueueState::Pending)
    }

    pub fn failed_count(&self) -> Result<usize, ClientError> {
        self.store.count_state(QueueState::Failed)
    }

    /// Announces the queue's counts, read now (blocking: for sync callers).
    pub(crate) fn announce_queue(&self) {
        if let Ok(counts) = self.store.queue_counts() {
            self.announce_counts(counts);
        }
    }

    /// `announce_queue` for async callers: the read runs off the executor.
    pub(crate) async fn announce_queue_async(&self) {
        if let Ok(counts) = self.blocking(|c| c.store.queue_counts()).await {
            self.announce_counts(counts);
        }
    }

    pub(crate) fn announce_counts(&self, c: QueueCounts) {
        self.updates.send(Update::Queue {
            pending: c.pending,
            failed: c.failed,
        });
    }

    /// Announces a subject's new send state.
    pub(crate) fn announce(
        &self,
        subject: &Subject,
        state: SendState,
        error: Option<FailureReason>,
    ) {
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
        let (n, rolled) = self.store.write_durable(|tx| {
            let mut rolled = Vec::new();
            for e in tx.queue_entries()? {
                if let Some(r) = tx.roll_back(&e.op)? {
                    rolled.push(r);
                }
            }
            Ok((tx.delete_all_ops()?, rolled))
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
        let touched = self.store.write_durable(|tx| {
            let entries = tx.queue_entries()?;
            // Dependents failed with it; they go back too.
            let back: Vec<&QueueEntry> = entries
                .iter()
                .filter(|e| {
                    e.id == op_id || (e.depends_on == Some(op_id) && e.state == QueueState::Failed)
                })
                .collect();
            let mut touched = Vec::new();
            for e in back {
                tx.requeue_failed(e.id, now)?;
                touched.extend(e.op.subject());
            }
            for s in &touched {
                tx.set_send_state(s, SendState::Sending, None)?;
            }
            Ok(touched)
        })?;
        for s in &touched {
            self.announce(s, SendState::Sending, None);
        }
        self.announce_queue();
        self.bg.wake();
        Ok(())
    }

    /// Retries a failed message together with what it depends on (the upload of its audio,
    /// when that is what failed): the app's "retry" on a message, without knowing the queue.
    /// `NotFound` when no failed operation of the message is queued.
    pub fn retry_message(
        &self,
        thread: &audio_dedup_core::ThreadId,
        message: &audio_dedup_core::MessageId,
    ) -> Result<(), ClientError> {
        let want = Subject::Message(thread.clone(), message.clone());
        let entries = self.store.queue()?;
        let failed = |id: i64| {
            entries
                .iter()
                .any(|e| e.id == id && e.state == QueueState::Failed)
        };
        let mut roots: Vec<i64> = entries
            .iter()
            .filter(|e| e.state == QueueState::Failed && e.op.subject().as_ref() == Some(&want))
            // What it waits on failed first: retrying that brings this one back with it.
            .map(|e| e.depends_on.filter(|d| failed(*d)).unwrap_or(e.id))
            .collect();
        roots.dedup();
        if roots.is_empty() {
            return Err(ClientError::NotFound(format!(
                "a failed operation of message {message}"
            )));
        }
        for id in roots {
            self.retry_failed(id)?;
        }
        Ok(())
    }

    /// Removes a failed operation and rolls back its effect: a message or library item that
    /// never got sent disappears; a deletion that failed is undone.
    pub fn discard_failed(&self, op_id: i64) -> Result<(), ClientError> {
        let Some(e) = self.store.queue_entry(op_id)? else {
            return Err(ClientError::NotFound(format!("queued operation {op_id}")));
        };
        if e.state != QueueState::Failed {
            return Err(ClientError::WrongState(format!(
                "operation {op_id} has not failed; only failed operations are discarded"
            )));
        }
        let rolled = self.store.write_durable(|tx| {
            let rolled = tx.roll_back(&e.op)?;
            tx.delete_op(op_id)?;
            Ok(rolled)
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
        crate::runtime::in_runtime(self.rt.handle(), async move {
            self.process(None, Pass::Now).await
        })
        .await
    }

    /// Sends what is due, honouring the backoff and Retry-After: what the background sender
    /// runs. Stops a lane at an operation that must wait; other lanes go on.
    pub async fn process_due(&self) -> Result<QueueReport, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            self.process(None, Pass::Due).await
        })
        .await
    }

    /// `process_due` for one lane only (right after an enqueue).
    pub(crate) async fn process_lane(&self, lane: &Lane) -> Result<QueueReport, ClientError> {
        self.process(Some(lane), Pass::Due).await
    }

    async fn process(&self, only: Option<&Lane>, pass: Pass) -> Result<QueueReport, ClientError> {
        // One lane: its head is read directly (no pending operation: nothing to do).
        let listed = match only {
            Some(lane) => vec![Ok(lane.clone())],
            None => self.blocking(|c| c.store.pending_lanes()).await?,
        };
        let mut lanes = Vec::with_capacity(listed.len());
        for lane in listed {
            match lane {
                Ok(lane) => lanes.push(lane),
                // Left alone, visible in `queue()`'s error; other lanes go on.
                Err(e) => tracing::warn!(error = %e, "skipping a lane this version cannot read"),
            }
        }
        let mut report = QueueReport::default();
        // Signed out: one lane asks whether a token works now; the others wait for it.
        if self.auth.is_signed_out() && !lanes.is_empty() {
            let first = lanes.remove(0);
            report.add(self.run_lane(&first, pass).await?);
            if self.auth.is_signed_out() {
                self.announce_queue_async().await;
                return Ok(report);
            }
        }
        // Each run owns its lane and a handle on the client (a future borrowing them trips
        // the compiler's higher-ranked lifetime check inside the spawned sender).
        let mut runs = futures_util::stream::iter(lanes)
            .map(|lane| {
                let me = self.for_task();
                async move { me.run_lane(&lane, pass).await }
            })
            .buffer_unordered(LANES_AT_ONCE);
        let mut first_error = None;
        while let Some(r) = runs.next().await {
            match r {
                Ok(r) => report.add(r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        drop(runs);
        self.announce_queue_async().await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Runs one lane's operations in order until it is empty or must wait.
    async fn run_lane(&self, lane: &Lane, pass: Pass) -> Result<QueueReport, ClientError> {
        let _turn = self.lanes.lane(lane).await;
        let mut report = QueueReport::default();
        let report = &mut report;
        // Bounded: each turn removes, fails or parks one operation.
        for _ in 0..10_000 {
            // Logout: nothing more leaves the device. Paused: the app went to the background;
            // the operation on the wire finished, the next waits for `resume`.
            if self.store.is_closed() || self.ctl.is_paused() {
                return Ok(report.clone());
            }
            let l = lane.clone();
            let head = self.blocking(move |c| c.store.lane_head(&l)).await?;
            let Some((e, dep_state)) = head else {
                return Ok(report.clone());
            };
            match dep_state {
                Some(QueueState::Failed) => {
                    self.fail(&e, FailureReason::DependencyFailed).await?;
                    report.failed += 1;
                    continue;
                }
                // Runs in another lane and has not succeeded yet.
                Some(QueueState::Pending) => {
                    report.waiting += 1;
                    return Ok(report.clone());
                }
                None => {}
            }
            let now = self.cfg.now_ms();
            let due = match pass {
                Pass::Due => e.next_due_ms <= now,
                Pass::Now => e.retry_after_ms.is_none_or(|t| t <= now),
            };
            if !due {
                report.waiting += 1;
                return Ok(report.clone());
            }
            match self.run_op(&e).await {
                Ok(ack) => {
                    let id = e.id;
                    let op = e.op.clone();
                    self.blocking(move |c| {
                        c.store.acknowledge(id, &ack)?;
                        // A staged recording, uploaded: it becomes cached audio.
                        if let QueuedOp::UploadAudio {
                            path, content_hash, ..
                        } = &op
                        {
                            let size =
                                std::fs::metadata(c.queued_path(path)).map_or(0, |m| m.len());
                            c.settle_staged(path, content_hash, size);
                        }
                        Ok(())
                    })
                    .await?;
                    report.sent += 1;
                }
                Err(ClientError::Api(err)) if err.is_retryable() => {
                    // No answer at all: the device is offline (or the server is down). That
                    // is what the queue is for, so it waits without using up the budget;
                    // answered refusals (5xx, 408, 429) use it up.
                    let offline = matches!(err, ApiError::Offline(_));
                    let attempts = e.attempts + 1;
                    let unanswered = e.unanswered + u32::from(offline);
                    let answered = attempts - unanswered;
                    if !offline && answered > self.cfg.max_retries {
                        let (status, code) = (
                            err.status().unwrap_or(0),
                            err.code().unwrap_or(ErrorCode::Unknown),
                        );
                        self.fail(
                            &e,
                            FailureReason::GaveUp {
                                attempts: answered,
                                status,
                                code,
                            },
                        )
                        .await?;
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
                    let attempt = Attempt {
                        op_id: e.id,
                        attempts,
                        unanswered,
                        next_due_ms: now_plus(self.cfg.now_ms(), delay),
                        retry_after_ms: retry_after,
                        error: FailureReason::of(&ClientError::Api(err.clone())),
                    };
                    self.blocking(move |c| c.store.record_attempt(&attempt))
                        .await?;
                    report.waiting += 1;
                    return Ok(report.clone());
                }
                // Logout while it was on the wire: leave it, the wipe removes it.
                Err(ClientError::Closed) => return Ok(report.clone()),
                // No token the server accepts: it waits, untouched (no attempt used, nothing
                // failed), until a new token comes; the app has `Update::AuthRequired`.
                Err(ClientError::Api(ApiError::AuthRequired(_))) => {
                    report.waiting += 1;
                    return Ok(report.clone());
                }
                Err(err) => {
                    self.fail(&e, FailureReason::of(&err)).await?;
                    report.failed += 1;
                }
            }
        }
        Ok(report.clone())
    }

    /// Marks an operation failed (and its message or library item), with the reason.
    async fn fail(&self, e: &QueueEntry, reason: FailureReason) -> Result<(), ClientError> {
        let subject = e.op.subject();
        let (id, why, s) = (e.id, reason.clone(), subject.clone());
        self.blocking(move |c| {
            c.store.write_durable(|tx| {
                tx.mark_op_failed(id, &why)?;
                if let Some(s) = &s {
                    tx.set_send_state(s, SendState::Failed, Some(&why))?;
                }
                Ok(())
            })
        })
        .await?;
        if let Some(s) = &subject {
            self.announce(s, SendState::Failed, Some(reason));
        }
        Ok(())
    }

    /// Sends one operation; answers what to record with its dequeue.
    async fn run_op(&self, e: &QueueEntry) -> Result<Ack, ClientError> {
        match &e.op {
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
                .upload_queued(&self.queued_path(path), *content_hash, *format)
                .await
                .map(|_| Ack::Dequeue),
            QueuedOp::PutLibraryItem {
                item_id,
                content_hash,
                from_message,
                title,
            } => {
                self.send_library_put(item_id, *content_hash, from_message.as_ref(), title)
                    .await
            }
            QueuedOp::DeleteLibraryItem { item_id } => self.send_library_delete(item_id).await,
            QueuedOp::MarkRead { thread_id, cursor } => {
                match self.api.mark_read(thread_id, cursor).await {
                    Ok(()) => Ok(Ack::Dequeue),
                    // The thread is gone for the caller (left meanwhile), or the marker names
                    // a position the server does not know: nothing left to tell.
                    Err(crate::error::ApiError::Rejected {
                        code:
                            crate::error::ErrorCode::ThreadNotFound
                            | crate::error::ErrorCode::CursorUnknown,
                        ..
                    }) => Ok(Ack::Dequeue),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

fn now_plus(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
