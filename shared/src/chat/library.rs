//! Each user's library: items that hold a reference to audio, with a change log for sync.
//!
//! A put or delete writes the item, the log entry at the next position of the owner's
//! library log (conditioned on its head), and the reference change, in one transaction.
//! An item takes a fresh reference id per incarnation (`l.<item>.<n>`), because reference
//! ids are single-use: an item deleted and put again, or moved to other audio, must not
//! collide with its old, removed reference.

use super::threads::ahead_cursor;
use super::ChatService;
use crate::domain::{
    AudioSource, ContentHash, EntryState, LibraryItemId, LibraryItemRecord, LibraryItemView,
    LogHead, Page, PendingReference, ReferenceId, ReferenceKind, Seq, Title, UserId,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, Expect, TransactionalIndex};
use crate::protocol::codec::{Txn, Versioned};
use crate::protocol::{keys, Step};

fn item_not_found() -> DedupError {
    DedupError::refused(ErrorCode::LibraryItemNotFound, "no such library item")
}

impl<B: BlobStore, I: TransactionalIndex> ChatService<B, I> {
    /// Creates or replaces the caller's item. Answers the item and whether it was created
    /// (no live item had this id). Putting what is already there changes nothing.
    pub async fn put_library_item(
        &self,
        owner: &UserId,
        id: &LibraryItemId,
        source: &AudioSource,
        title: &Title,
    ) -> Result<(LibraryItemView, bool), DedupError> {
        let title = title.as_str();
        let (view, created, deleting) = self
            .core
            .cas(|| self.put_item_step(owner, id, source, title))
            .await?;
        self.audio.finish_dropped(deleting).await;
        Ok((view, created))
    }

    async fn put_item_step(
        &self,
        owner: &UserId,
        id: &LibraryItemId,
        source: &AudioSource,
        title: &str,
    ) -> Result<Step<(LibraryItemView, bool, Option<ContentHash>)>, DedupError> {
        let (source, _) = self.resolve_source(owner, source).await?;
        let hash = &source.hash;
        let item = self
            .core
            .load::<LibraryItemRecord>(&keys::library_item(owner, id))
            .await?;
        let live = item.as_ref().filter(|i| i.value.state == EntryState::Live);
        if let Some(i) = live {
            if &i.value.content_hash == hash && i.value.title == title {
                return Ok(Step::Done((i.value.view(), false, None)));
            }
        }
        let (head, seq) = self.next_log_position(owner).await?;
        let now = self.core.now();
        let mut txn = self.core.txn();
        let mut deleting = None;
        let mut rec = match &item {
            Some(i) => i.value.clone(),
            None => LibraryItemRecord {
                id: id.clone(),
                owner: owner.clone(),
                state: EntryState::Deleted,
                content_hash: *hash,
                title: String::new(),
                incarnation: 0,
                seq: 0,
                created_at: now,
                updated_at: now,
                deleted_at: None,
            },
        };
        let same_audio = live.is_some_and(|i| &i.value.content_hash == hash);
        if !same_audio {
            if let Some(old) = live {
                let old_ref = ReferenceId::of_library_item(id, old.value.incarnation);
                if self
                    .audio
                    .plan_drop_reference(&mut txn, owner, &old.value.content_hash, &old_ref)
                    .await?
                {
                    deleting = Some(old.value.content_hash);
                }
            }
            rec.incarnation += 1;
            let wanted = PendingReference {
                kind: ReferenceKind::Library,
                ref_id: ReferenceId::of_library_item(id, rec.incarnation),
            };
            self.plan_sourced_reference(&mut txn, owner, &source, &wanted)
                .await?;
        }
        if live.is_none() {
            rec.created_at = now;
        }
        rec.state = EntryState::Live;
        rec.content_hash = *hash;
        rec.title = title.to_owned();
        rec.seq = seq;
        rec.updated_at = now;
        rec.deleted_at = None;
        let view = rec.view();
        txn.put(
            keys::library_item(owner, id),
            &rec,
            crate::protocol::codec::expect_of(item.as_ref()),
        )?;
        append_log(&mut txn, owner, head.as_ref(), seq, &view)?;
        Ok(if self.core.commit(txn).await? {
            Step::Done((view, live.is_none(), deleting))
        } else {
            Step::Lost
        })
    }

    /// Deletes the caller's item and drops its reference. Idempotent.
    pub async fn delete_library_item(
        &self,
        owner: &UserId,
        id: &LibraryItemId,
    ) -> Result<(), DedupError> {
        let deleting = self.core.cas(|| self.delete_item_step(owner, id)).await?;
        self.audio.finish_dropped(deleting).await;
        Ok(())
    }

    async fn delete_item_step(
        &self,
        owner: &UserId,
        id: &LibraryItemId,
    ) -> Result<Step<Option<ContentHash>>, DedupError> {
        let Some(item) = self
            .core
            .load::<LibraryItemRecord>(&keys::library_item(owner, id))
            .await?
        else {
            return Err(item_not_found());
        };
        if item.value.state == EntryState::Deleted {
            return Ok(Step::Done(None));
        }
        let (head, seq) = self.next_log_position(owner).await?;
        let now = self.core.now();
        let mut txn = self.core.txn();
        let old_ref = ReferenceId::of_library_item(id, item.value.incarnation);
        let deleting = self
            .audio
            .plan_drop_reference(&mut txn, owner, &item.value.content_hash, &old_ref)
            .await?
            .then_some(item.value.content_hash);
        let mut rec = item.value.clone();
        rec.state = EntryState::Deleted;
        rec.seq = seq;
        rec.updated_at = now;
        rec.deleted_at = Some(now);
        txn.put(keys::library_item(owner, id), &rec, item.expect())?;
        append_log(&mut txn, owner, head.as_ref(), seq, &rec.view())?;
        Ok(if self.core.commit(txn).await? {
            Step::Done(deleting)
        } else {
            Step::Lost
        })
    }

    /// The caller's library log head as read, and the position the next change takes.
    async fn next_log_position(
        &self,
        owner: &UserId,
    ) -> Result<(Option<Versioned<LogHead>>, Seq), DedupError> {
        let head = self
            .core
            .load::<LogHead>(&keys::library_head(owner))
            .await?;
        let seq = head.as_ref().map_or(0, |h| h.value.last_seq) + 1;
        Ok((head, seq))
    }

    /// Changes to the caller's library after position `since`, oldest first.
    pub async fn list_library(
        &self,
        owner: &UserId,
        since: Seq,
        limit: usize,
    ) -> Result<Page<LibraryItemView>, DedupError> {
        let head = self
            .core
            .load::<LogHead>(&keys::library_head(owner))
            .await?;
        if since > head.map_or(0, |h| h.value.last_seq) {
            return Err(ahead_cursor());
        }
        self.read_log(&keys::library_pk(owner), since, limit).await
    }
}

/// Plans a change's log entry at `seq` and the head that moves to it (conditioned on the
/// head as read, so two changes never take one position).
fn append_log(
    txn: &mut Txn,
    owner: &UserId,
    head: Option<&Versioned<LogHead>>,
    seq: Seq,
    view: &LibraryItemView,
) -> Result<(), DedupError> {
    txn.put(
        keys::library_head(owner),
        &LogHead { last_seq: seq },
        crate::protocol::codec::expect_of(head),
    )?;
    txn.put(keys::library_log(owner, seq), view, Expect::Absent)
}
