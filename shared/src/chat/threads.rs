//! Threads and each user's thread feed.
//!
//! Creating a thread writes, in one transaction, the thread and one feed entry per member
//! at the next position of that member's feed (whose head the transaction conditions on).
//! So a member's feed positions commit in order and `GET /v1/threads?since=` never skips a
//! thread that committed late (docs/protocol.md, "Cursors").

use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;

use super::ChatService;
use crate::domain::{
    FeedEntry, LogHead, Members, Page, ReadMarker, Seq, ThreadDetail, ThreadId, ThreadRecord,
    ThreadView, Title, UserId,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, IndexName, Query, TransactionalIndex};
use crate::protocol::codec::{expect_of, Versioned};
use crate::protocol::{keys, Step};

/// Most entries one page of a log answers.
pub const MAX_PAGE: usize = 500;
pub const DEFAULT_PAGE: usize = 100;
/// Thread records (and read markers) a feed page reads at once.
const READS_AT_ONCE: usize = 16;

#[derive(Debug, Clone)]
pub struct NewThread {
    /// The client's id for the thread (its idempotency key), or `None` for a fresh one.
    pub id: Option<ThreadId>,
    pub title: Title,
    pub members: Members,
}

/// Members whose feeds one transaction can take along with the thread record (two writes
/// each, one for the record).
const ANNOUNCED_PER_TRANSACTION: usize = (crate::ports::MAX_TRANSACTION_OPS - 1) / 2;

pub(crate) fn thread_not_found() -> DedupError {
    DedupError::refused(ErrorCode::ThreadNotFound, "no such thread for this caller")
}

/// A cursor as the API takes it: the decimal position of the last change seen.
pub fn parse_cursor(raw: Option<&str>) -> Result<Seq, DedupError> {
    match raw {
        None => Ok(0),
        // Past u64: no log is that long, so it is a position of none (409, not 400).
        Some(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(s.parse().unwrap_or(Seq::MAX))
        }
        Some(_) => Err(bad_cursor()),
    }
}

fn bad_cursor() -> DedupError {
    DedupError::refused(
        ErrorCode::InvalidCursor,
        "a cursor is the decimal next_cursor of an earlier page",
    )
}

/// 409: the client's cursor is not a position of this log (another thread's, or invented),
/// so it conflicts with the log's state; the client syncs again from the start (as sync APIs
/// answer an expired sync token).
pub(crate) fn ahead_cursor() -> DedupError {
    DedupError::refused(
        ErrorCode::CursorUnknown,
        "the cursor is not a position of this log; sync again without one",
    )
}

impl<B: BlobStore, I: TransactionalIndex> ChatService<B, I> {
    /// Creates a thread whose members are `members` plus the caller. Retrying with the same
    /// id and the same title and members answers the same thread (`false`: not created now).
    pub async fn create_thread(
        &self,
        caller: &UserId,
        req: NewThread,
    ) -> Result<(ThreadView, bool), DedupError> {
        // The caller first, then the others sorted: a retry listing them in another order
        // is the same thread.
        let members = req.members.with_caller(caller);
        let id = match req.id {
            Some(id) => id,
            None => {
                let mut b = [0u8; 16];
                self.core.entropy.fill(&mut b);
                ThreadId::from_random(b)
            }
        };
        let wanted = ThreadRecord {
            id,
            title: req.title.into(),
            members,
            created_by: caller.clone(),
            created_at: 0,
            last_seq: 0,
            live_messages: 0,
            updated_at: 0,
            unannounced: Vec::new(),
            last_message: None,
            messages_created: 0,
            authored: Default::default(),
            recent_deletions: Vec::new(),
        };
        self.core.cas(|| self.create_thread_step(&wanted)).await
    }

    async fn create_thread_step(
        &self,
        wanted: &ThreadRecord,
    ) -> Result<Step<(ThreadView, bool)>, DedupError> {
        if let Some(t) = self
            .core
            .load::<ThreadRecord>(&keys::thread(&wanted.id))
            .await?
        {
            let same = t.value.created_by == wanted.created_by
                && t.value.title == wanted.title
                && t.value.members == wanted.members;
            if same {
                // A retry finishes what the first attempt left unannounced.
                self.announce(&t.value).await?;
                return Ok(Step::Done((t.value.view(), false)));
            }
            return Err(DedupError::refused(
                ErrorCode::ThreadIdConflict,
                "a different thread exists with this id",
            ));
        }
        let now = self.core.now();
        let (first, later) = wanted
            .members
            .split_at(wanted.members.len().min(ANNOUNCED_PER_TRANSACTION));
        let rec = ThreadRecord {
            created_at: now,
            updated_at: now,
            unannounced: later.to_vec(),
            ..wanted.clone()
        };
        let view = rec.view();
        let mut txn = self.core.txn();
        txn.put(keys::thread(&rec.id), &rec, crate::ports::Expect::Absent)?;
        self.plan_feed_entries(&mut txn, first, &view).await?;
        if !self.core.commit(txn).await? {
            return Ok(Step::Lost);
        }
        self.announce(&rec).await?;
        Ok(Step::Done((view, true)))
    }

    /// Puts the thread in the feed of each of `members` (a head and an entry each).
    async fn plan_feed_entries(
        &self,
        txn: &mut crate::protocol::codec::Txn,
        members: &[UserId],
        view: &ThreadView,
    ) -> Result<(), DedupError> {
        for m in members {
            let head = self.core.load::<LogHead>(&keys::feed_head(m)).await?;
            let seq = head.as_ref().map_or(0, |h| h.value.last_seq) + 1;
            txn.put(
                keys::feed_head(m),
                &LogHead { last_seq: seq },
                expect_of(head.as_ref()),
            )?;
            let entry = FeedEntry {
                seq,
                thread: view.clone(),
            };
            txn.put(
                keys::feed_entry(m, seq),
                &entry,
                crate::ports::Expect::Absent,
            )?;
        }
        Ok(())
    }

    /// Puts the thread in the feeds of the members its creation could not fit in one
    /// transaction, a transaction's worth at a time, each taking them off the thread's
    /// `unannounced` list under its version: each member's entry is written exactly once,
    /// whoever finishes (the creating request, or its retry). `thread` is the record as the
    /// caller last saw it: when it leaves no one unannounced, nothing is read or written.
    async fn announce(&self, thread: &ThreadRecord) -> Result<(), DedupError> {
        if thread.unannounced.is_empty() {
            return Ok(());
        }
        let id = &thread.id;
        // Each step announces at least one member, so this ends; the bound is for the reader.
        for _ in 0..=crate::domain::MAX_THREAD_MEMBERS {
            if !self.core.cas(|| self.announce_step(id)).await? {
                break;
            }
        }
        Ok(())
    }

    /// One transaction of [`Self::announce`]; `true` if members remain unannounced.
    async fn announce_step(&self, id: &ThreadId) -> Result<Step<bool>, DedupError> {
        let Some(t) = self.core.load::<ThreadRecord>(&keys::thread(id)).await? else {
            return Ok(Step::Done(false));
        };
        if t.value.unannounced.is_empty() {
            return Ok(Step::Done(false));
        }
        let n = t.value.unannounced.len().min(ANNOUNCED_PER_TRANSACTION);
        let mut rec = t.value.clone();
        let chunk: Vec<UserId> = rec.unannounced.drain(..n).collect();
        let view = rec.view();
        let mut txn = self.core.txn();
        txn.put(keys::thread(id), &rec, t.expect())?;
        self.plan_feed_entries(&mut txn, &chunk, &view).await?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(!rec.unannounced.is_empty())
        } else {
            Step::Lost
        })
    }

    /// The caller's feed: threads they became a member of after position `since`.
    pub async fn list_threads(
        &self,
        caller: &UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Page<ThreadView>, DedupError> {
        let head = self.core.load::<LogHead>(&keys::feed_head(caller)).await?;
        if since > head.map_or(0, |h| h.value.last_seq) {
            return Err(ahead_cursor());
        }
        let page: Page<FeedEntry> = self.read_log(&keys::feed_pk(caller), since, limit).await?;
        let items = futures_util::stream::iter(page.items)
            .map(|e| self.as_listed(caller, e.thread))
            .buffered(READS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
            has_more: page.has_more,
        })
    }

    /// A feed entry as the feed answers it: a thread the caller is still a member of carries
    /// its last position, newest message and the caller's unread count as they are now (two
    /// reads: the record and the caller's marker); a departure, or a thread the caller has
    /// left since, is answered as stored.
    async fn as_listed(
        &self,
        caller: &UserId,
        entry: ThreadView,
    ) -> Result<ThreadView, DedupError> {
        if entry.left {
            return Ok(entry);
        }
        let Some(t) = self
            .core
            .load::<ThreadRecord>(&keys::thread(&entry.id))
            .await?
        else {
            return Ok(entry);
        };
        if !t.value.is_member(caller) {
            return Ok(entry);
        }
        let marker = self.read_marker_of(caller, &entry.id).await?;
        let now = t.value.member_view(caller, marker.as_ref());
        Ok(ThreadView {
            last_cursor: now.last_cursor,
            last_message: now.last_message,
            unread: now.unread,
            ..entry
        })
    }

    /// The caller's read marker of the thread, if they ever marked it.
    pub(crate) async fn read_marker_of(
        &self,
        caller: &UserId,
        thread: &ThreadId,
    ) -> Result<Option<ReadMarker>, DedupError> {
        Ok(self
            .core
            .load::<ReadMarker>(&keys::read_marker(caller, thread))
            .await?
            .map(|m| m.value))
    }

    pub async fn get_thread(
        &self,
        caller: &UserId,
        id: &ThreadId,
    ) -> Result<ThreadDetail, DedupError> {
        let t = self.member_thread(caller, id).await?;
        let marker = self.read_marker_of(caller, id).await?;
        Ok(ThreadDetail {
            thread: t.value.view(),
            last_cursor: t.value.last_seq.to_string(),
            message_count: t.value.live_messages,
            unread: t.value.unread_for(caller, marker.as_ref()),
            last_message: t.value.last_message,
        })
    }

    /// Who may read the thread's log (live updates tell them it moved). Empty for no thread.
    pub async fn thread_members(&self, id: &ThreadId) -> Result<Vec<UserId>, DedupError> {
        Ok(self
            .core
            .load::<ThreadRecord>(&keys::thread(id))
            .await?
            .map(|t| t.value.members)
            .unwrap_or_default())
    }

    /// The thread, if the caller is a member; otherwise the same 404 as for no thread.
    pub(crate) async fn member_thread(
        &self,
        caller: &UserId,
        id: &ThreadId,
    ) -> Result<Versioned<ThreadRecord>, DedupError> {
        match self.core.load::<ThreadRecord>(&keys::thread(id)).await? {
            Some(t) if t.value.is_member(caller) => Ok(t),
            _ => Err(thread_not_found()),
        }
    }

    /// Entries of the log in partition `pk` after position `after`, oldest first. Reads are
    /// strongly consistent, and positions commit in order, so nothing below the last
    /// position returned can appear later.
    pub(crate) async fn read_log<T: DeserializeOwned>(
        &self,
        pk: &str,
        after: Seq,
        limit: usize,
    ) -> Result<Page<T>, DedupError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let q = Query {
            index: IndexName::Primary,
            pk: pk.to_owned(),
            sk_prefix: "LOG#".into(),
            after: Some(keys::log_sk(after)),
            upto: None,
            limit: limit + 1,
        };
        let items = self.core.index.query(&q).await?;
        let has_more = items.len() > limit;
        let mut out = Vec::with_capacity(limit.min(items.len()));
        let mut next = after;
        for item in items.into_iter().take(limit) {
            next = keys::seq_of_log_sk(&item.key.sk).ok_or_else(|| {
                crate::error::StoreError::Corrupt {
                    key: item.key.to_string(),
                    reason: "not a log entry key".into(),
                }
            })?;
            out.push(crate::protocol::codec::decode::<T>(&item)?.value);
        }
        Ok(Page {
            items: out,
            next_cursor: next.to_string(),
            has_more,
        })
    }
}
