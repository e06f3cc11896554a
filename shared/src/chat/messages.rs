//! Messages: created and deleted in one transaction with the audio reference they hold,
//! ordered in their thread's log.
//!
//! Races closed:
//! - A create racing the deletion of its audio: both write the audio record under its
//!   version. If the deletion wins, the create re-reads, sees `Deleting`, and answers 409
//!   having written nothing; if the create wins, the audio has a reference again and the
//!   removal re-reads and keeps it.
//! - Two creates in one thread: both condition on the thread's version, from which each
//!   takes its log position, so positions commit in order (see `threads.rs`).
//! - A retried create: the message item is written `Absent`; the retry finds it and answers
//!   it, whatever happened in between (including a delete: it answers the tombstone).

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::message_audio::message_not_found;
use super::threads::ahead_cursor;
use super::ChatService;
use crate::domain::{
    ContentHash, DeletedMessage, EntryState, MessageAudio, MessageId, MessagePreview,
    MessageRecord, MessageText, MessageView, Millis, Page, PendingReference, ReferenceId,
    ReferenceKind, Seq, Snapshot, SnapshotStore, ThreadId, ThreadLogEntry, Uploader, UserId,
    RECENT_DELETIONS,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{
    BlobBody, BlobStore, Expect, IndexName, PutOutcome, PutRequest, Query, TransactionalIndex,
};
use crate::protocol::{keys, ms, Step};

/// Snapshots longer than this (bytes of JSON) are stored as objects even when the message
/// item could hold them (`DedupConfig::snapshot_inline_max`, the item size limit, still caps
/// it). Cost, at AWS list prices (docs/cost.md): inside the item, a snapshot is written in
/// the message's transaction at 2 write units per KB (about $1.25 per million KB) and read
/// whole by every recipient's fetch (a strongly consistent read unit per 4 KB); as an object
/// it is one PUT ($5 per million) and one GET per fetch ($0.40 per million). The two meet
/// near 4 KB, so a typical text snapshot stays inline (no extra request) and a large one no
/// longer costs hundreds of write units (a 350 KB one cost 700).
const SNAPSHOT_INLINE_COST_MAX: usize = 4 * 1024;

/// Log entries one query of the preview's fallback reads, and most it reads in all.
const FALLBACK_WINDOW: Seq = 100;
const FALLBACK_SCAN: Seq = 1_000;

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub snapshot: Snapshot,
    pub audio: Option<MessageAudio>,
    /// An optional plain-text body, stored inline with the message.
    pub text: Option<MessageText>,
}

/// A snapshot as `GET /v1/messages/{id}/snapshot` answers it.
#[derive(Debug, Clone)]
pub struct SnapshotBody {
    pub json: Bytes,
    pub sha256: ContentHash,
}

/// A snapshot put in the blob store ahead of the transaction that records it.
#[derive(Debug, Clone)]
struct Staged {
    key: String,
    version: String,
    /// When the object was written; the sweep may delete unrecorded ones after the grace.
    written_at: Millis,
}

fn fingerprint(
    thread: &ThreadId,
    snapshot_sha256: &ContentHash,
    audio: Option<&MessageAudio>,
    text: Option<&MessageText>,
) -> ContentHash {
    let mut h = Sha256::new();
    h.update(thread.as_str().as_bytes());
    h.update([0]);
    h.update(snapshot_sha256.as_bytes());
    match audio {
        Some(MessageAudio::Render(a)) => {
            h.update([1]);
            h.update(a.content_hash.as_bytes());
            h.update(a.format.as_str().as_bytes());
        }
        Some(MessageAudio::FromMessage(m)) => {
            h.update([2]);
            h.update(m.as_str().as_bytes());
        }
        None => {}
    }
    // Only a message with text hashes it, so messages stored before texts existed keep
    // their fingerprints (a retry of one still matches).
    if let Some(t) = text {
        h.update([3]);
        h.update((t.as_str().len() as u64).to_be_bytes());
        h.update(t.as_str().as_bytes());
    }
    ContentHash::from_bytes(h.finalize().into())
}

impl<B: BlobStore, I: TransactionalIndex> ChatService<B, I> {
    /// Creates a message (`true`), or answers the one an earlier try with this id created
    /// (`false`). If it carries audio, the author's reference is added in the same write;
    /// audio that is not active fails the create with 409 and nothing is written.
    pub async fn create_message(
        &self,
        author: &UserId,
        thread: &ThreadId,
        req: NewMessage,
    ) -> Result<(MessageView, bool), DedupError> {
        let text = req.snapshot.text().as_bytes();
        let sha = ContentHash::of(text);
        let print = fingerprint(thread, &sha, req.audio.as_ref(), req.text.as_ref());
        // Checked before anything is stored: a foreign caller or a retry stores nothing.
        self.member_thread(author, thread).await?;
        if let Some(m) = self
            .core
            .load::<MessageRecord>(&keys::message(&req.id))
            .await?
        {
            return replay(author, thread, &m.value, &print).map(|v| (v, false));
        }
        let inline_max = self
            .core
            .cfg
            .snapshot_inline_max
            .min(SNAPSHOT_INLINE_COST_MAX);
        let staged = if text.len() > inline_max {
            // Staging writes an object, so the audio is checked first: a caller who may not
            // attach it cannot fill the store with orphans (the transaction checks again).
            if let Some(choice) = &req.audio {
                self.check_attachable(author, &choice.source()).await?;
            }
            Some(self.stage_snapshot(&req.id, &sha, text).await?)
        } else {
            None
        };
        self.core
            .cas(|| self.create_step(author, thread, &req, sha, print, staged.as_ref()))
            .await
    }

    async fn create_step(
        &self,
        author: &UserId,
        thread: &ThreadId,
        req: &NewMessage,
        sha: ContentHash,
        print: ContentHash,
        staged: Option<&Staged>,
    ) -> Result<Step<(MessageView, bool)>, DedupError> {
        let t = self.member_thread(author, thread).await?;
        if let Some(m) = self
            .core
            .load::<MessageRecord>(&keys::message(&req.id))
            .await?
        {
            return replay(author, thread, &m.value, &print).map(|v| Step::Done((v, false)));
        }
        let mut txn = self.core.txn();
        let mut audio = None;
        if let Some(choice) = &req.audio {
            let (source, via) = self.resolve_source(author, &choice.source()).await?;
            let wanted = PendingReference {
                kind: ReferenceKind::Message,
                ref_id: ReferenceId::of_message(&req.id),
            };
            self.plan_sourced_reference(&mut txn, author, &source, &wanted)
                .await?;
            audio = match (choice, via) {
                (MessageAudio::Render(r), _) => Some(*r),
                (MessageAudio::FromMessage(_), render) => render,
            };
        }
        let now = self.core.now();
        let snapshot = match staged {
            Some(s) => {
                // The sweep may delete an object no message records once it is older than
                // the grace; it first writes a fence, which this transaction checks. An old
                // or fenced object is not used: the client retries, and stages it anew.
                let fence = keys::snapshot_fence(&req.id, &s.version);
                let old = now - s.written_at > ms(self.core.cfg.snapshot_grace) / 2;
                if old || self.core.index.get(&fence).await?.is_some() {
                    return Err(DedupError::Busy);
                }
                txn.check(fence, Expect::Absent);
                SnapshotStore::Blob {
                    key: s.key.clone(),
                    version: s.version.clone(),
                }
            }
            None => SnapshotStore::Inline {
                json: req.snapshot.to_raw(),
            },
        };
        let seq = t.value.last_seq + 1;
        let msg = MessageRecord {
            id: req.id.clone(),
            thread_id: thread.clone(),
            author: author.clone(),
            state: EntryState::Live,
            created_seq: seq,
            seq,
            created_at: now,
            deleted_at: None,
            audio,
            snapshot_size: req.snapshot.text().len() as u64,
            snapshot_sha256: sha,
            snapshot,
            fingerprint: print,
            text: req.text.as_ref().map(|t| t.as_str().to_owned()),
        };
        let mut th = t.value.clone();
        th.last_seq = seq;
        th.live_messages += 1;
        th.updated_at = now;
        th.last_message = Some(MessagePreview::of(&msg));
        th.messages_created += 1;
        *th.authored.entry(author.clone()).or_default() += 1;
        let view = msg.view();
        txn.put(keys::thread(thread), &th, t.expect())?;
        txn.put(keys::message(&msg.id), &msg, Expect::Absent)?;
        txn.put(keys::thread_log(thread, seq), &view, Expect::Absent)?;
        Ok(if self.core.commit(txn).await? {
            Step::Done((view, true))
        } else {
            Step::Lost
        })
    }

    /// Puts a big snapshot in the blob store under a key of its own (message and content).
    async fn stage_snapshot(
        &self,
        id: &MessageId,
        sha: &ContentHash,
        text: &[u8],
    ) -> Result<Staged, DedupError> {
        let key = keys::snapshot_blob_key(&self.core.cfg.key_prefix, id, sha);
        let now = self.core.now();
        let req = PutRequest {
            key: key.clone(),
            body: BlobBody::Bytes(Bytes::copy_from_slice(text)),
            sha256: *sha,
            size: text.len() as u64,
            content_type: "application/json",
            uploader: Uploader::Snapshot(id.clone()).to_string(),
        };
        match self.core.blobs.put_if_absent(req).await? {
            PutOutcome::Created { version } => Ok(Staged {
                key,
                version,
                written_at: now,
            }),
            // An earlier try of this same message and content put it; use that one.
            PutOutcome::AlreadyExists => match self.core.blobs.head(&key).await? {
                Some(meta) => Ok(Staged {
                    key,
                    version: meta.version,
                    written_at: meta.last_modified,
                }),
                None => Err(DedupError::Busy),
            },
        }
    }

    /// Deletes the author's message. Idempotent: deleting a deleted message answers the
    /// same. The audio reference goes in the same write; the last one deletes the audio.
    pub async fn delete_message(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<(), DedupError> {
        let (audio_deleting, purge) = self
            .core
            .cas(|| self.delete_step(caller, thread, id))
            .await?;
        self.audio.finish_dropped(audio_deleting).await;
        if purge {
            if let Err(e) = self.purge_snapshot(id).await {
                tracing::warn!(message = %id, error = %e, "snapshot purge left for the reconciler");
            }
        }
        Ok(())
    }

    async fn delete_step(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<Step<(Option<ContentHash>, bool)>, DedupError> {
        let Some(m) = self.core.load::<MessageRecord>(&keys::message(id)).await? else {
            return Err(message_not_found());
        };
        if &m.value.thread_id != thread || &m.value.author != caller {
            return Err(message_not_found());
        }
        if m.value.state == EntryState::Deleted {
            return Ok(Step::Done((None, false)));
        }
        let t = self.member_thread(caller, thread).await?;
        let mut txn = self.core.txn();
        let mut deleting = None;
        if let Some(render) = &m.value.audio {
            let ref_id = ReferenceId::of_message(id);
            if self
                .audio
                .plan_drop_reference(&mut txn, caller, &render.content_hash, &ref_id)
                .await?
            {
                deleting = Some(render.content_hash);
            }
        }
        let now = self.core.now();
        let seq = t.value.last_seq + 1;
        let mut th = t.value.clone();
        th.last_seq = seq;
        th.live_messages = th.live_messages.saturating_sub(1);
        th.updated_at = now;
        if th
            .last_message
            .as_ref()
            .is_some_and(|p| &p.message_id == id)
        {
            // The preview falls back to the newest message still live.
            th.last_message = self
                .newest_live_before(thread, t.value.last_seq, id)
                .await?;
        }
        th.recent_deletions.push(DeletedMessage {
            created_seq: m.value.created_seq,
            author: m.value.author.clone(),
        });
        let excess = th.recent_deletions.len().saturating_sub(RECENT_DELETIONS);
        th.recent_deletions.drain(..excess);
        let mut gone = m.value.clone();
        gone.state = EntryState::Deleted;
        gone.seq = seq;
        gone.deleted_at = Some(now);
        gone.text = None;
        let purge = matches!(gone.snapshot, SnapshotStore::Blob { .. });
        if purge {
            // The reconciler finishes the purge if this request dies before it does.
            txn.put_due(keys::message(id), &gone, m.expect(), now)?;
        } else {
            gone.snapshot = SnapshotStore::Purged;
            txn.put(keys::message(id), &gone, m.expect())?;
        }
        txn.put(keys::thread(thread), &th, t.expect())?;
        txn.put(keys::thread_log(thread, seq), &gone.view(), Expect::Absent)?;
        if m.value.text.is_some() {
            // The creation's log entry carried the text: it goes with the message, so a
            // reader syncing from the start never sees a deleted message's words.
            let at = keys::thread_log(thread, m.value.created_seq);
            if let Some(entry) = self.core.load::<MessageView>(&at).await? {
                let mut redacted = entry.value.clone();
                redacted.text = None;
                txn.put(at, &redacted, entry.expect())?;
            }
        }
        Ok(if self.core.commit(txn).await? {
            Step::Done((deleting, purge))
        } else {
            Step::Lost
        })
    }

    /// The preview of the thread's newest live message other than `deleting`, read from the
    /// log backwards from `head` in windows (a creation is live unless a later deletion entry
    /// names it). Called only when the newest message is deleted, and bounded: past
    /// `FALLBACK_SCAN` entries without a live message the thread shows none until its next.
    async fn newest_live_before(
        &self,
        thread: &ThreadId,
        head: Seq,
        deleting: &MessageId,
    ) -> Result<Option<MessagePreview>, DedupError> {
        let mut gone = std::collections::HashSet::from([deleting.clone()]);
        let mut hi = head;
        while hi > 0 && head - hi < FALLBACK_SCAN {
            let lo = hi.saturating_sub(FALLBACK_WINDOW);
            let q = Query {
                index: IndexName::Primary,
                pk: keys::thread_log_pk(thread),
                sk_prefix: "LOG#".into(),
                after: Some(keys::log_sk(lo)),
                upto: Some(keys::log_sk(hi)),
                limit: FALLBACK_WINDOW as usize,
            };
            let items = self.core.index.query(&q).await?;
            for item in items.iter().rev() {
                let entry = crate::protocol::codec::decode::<ThreadLogEntry>(item)?.value;
                let Some(m) = entry.message() else { continue };
                match m.state {
                    EntryState::Deleted => {
                        gone.insert(m.id.clone());
                    }
                    EntryState::Live if !gone.contains(&m.id) => {
                        return Ok(Some(MessagePreview::of_view(m)));
                    }
                    EntryState::Live => {}
                }
            }
            hi = lo;
        }
        Ok(None)
    }

    /// Changes to the thread after position `after`, oldest first: message creations,
    /// deletions as tombstones, and membership changes.
    pub async fn list_messages(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        after: Seq,
        limit: usize,
    ) -> Result<Page<ThreadLogEntry>, DedupError> {
        let t = self.member_thread(caller, thread).await?;
        if after > t.value.last_seq {
            return Err(ahead_cursor());
        }
        self.read_log(&keys::thread_log_pk(thread), after, limit)
            .await
    }

    /// A live message's snapshot, for members of its thread.
    pub async fn snapshot(
        &self,
        caller: &UserId,
        id: &MessageId,
    ) -> Result<SnapshotBody, DedupError> {
        let m = self.live_message(caller, id).await?;
        let json = match &m.value.snapshot {
            SnapshotStore::Inline { json } => Bytes::copy_from_slice(json.get().as_bytes()),
            SnapshotStore::Blob { key, version } => self
                .core
                .blobs
                .read_range(key, version, 0, m.value.snapshot_size)
                .await?
                .ok_or_else(|| crate::error::StoreError::Corrupt {
                    key: key.clone(),
                    reason: "a live message's snapshot object is missing".into(),
                })?,
            SnapshotStore::Purged => return Err(message_not_found()),
        };
        Ok(SnapshotBody {
            json,
            sha256: m.value.snapshot_sha256,
        })
    }
}

fn replay(
    author: &UserId,
    thread: &ThreadId,
    m: &MessageRecord,
    print: &ContentHash,
) -> Result<MessageView, DedupError> {
    if &m.author == author && &m.thread_id == thread && &m.fingerprint == print {
        Ok(m.view())
    } else {
        Err(DedupError::refused(
            ErrorCode::MessageIdConflict,
            "a different message exists with this id",
        ))
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::chat::NewThread;
    use crate::domain::{Members, Title};
    use crate::store::memory::{MemoryBlobs, MemoryIndex};
    use crate::{Dedup, DedupConfig};

    fn message(id: &str, text_len: usize) -> NewMessage {
        let json = format!(r#"{{"text":"{}"}}"#, "a".repeat(text_len));
        let raw = serde_json::value::RawValue::from_string(json).unwrap();
        NewMessage {
            id: id.parse().unwrap(),
            snapshot: Snapshot::new(raw).unwrap(),
            audio: None,
            text: None,
        }
    }

    /// Under the cost limit a snapshot stays in the message item (no request more); over
    /// it, it is an object and the item holds a pointer, though the item could hold it.
    #[tokio::test]
    async fn snapshots_over_the_cost_limit_are_objects_even_when_an_item_could_hold_them() {
        let blobs = MemoryBlobs::default();
        let index = MemoryIndex::default();
        let cfg = DedupConfig::default();
        assert!(cfg.snapshot_inline_max > 10 * SNAPSHOT_INLINE_COST_MAX);
        let d = Dedup::new(blobs.clone(), index.clone(), cfg);
        let alice: UserId = "alice".parse().unwrap();
        let (t, _) = d
            .chat()
            .create_thread(
                &alice,
                NewThread {
                    id: Some("t1".parse().unwrap()),
                    title: Title::new("t1").unwrap(),
                    members: Members::new(vec!["bob".parse().unwrap()]).unwrap(),
                },
            )
            .await
            .unwrap();
        let small = message("small", SNAPSHOT_INLINE_COST_MAX - 100);
        let big = message("big", SNAPSHOT_INLINE_COST_MAX + 100);
        for m in [small, big] {
            d.chat().create_message(&alice, &t.id, m).await.unwrap();
        }
        let objects = blobs.objects();
        assert_eq!(objects.len(), 1, "one snapshot object");
        assert!(objects[0].0.key.contains("snapshots/big-"));
        let body = |id: &str| {
            index
                .dump()
                .into_iter()
                .find(|i| i.key == keys::message(&id.parse().unwrap()))
                .unwrap()
                .body
        };
        assert!(body("small").len() > SNAPSHOT_INLINE_COST_MAX - 100);
        assert!(body("big").len() < 2_000, "a pointer, not the snapshot");
        let bob: UserId = "bob".parse().unwrap();
        let read = d.chat().snapshot(&bob, &"big".parse().unwrap()).await;
        assert_eq!(
            read.unwrap().json.len(),
            SNAPSHOT_INLINE_COST_MAX + 100 + 11
        );
    }
}
