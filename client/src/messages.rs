//! Messages: read from the cache at once (whole, or a page at a time), synced incrementally
//! by the server's cursor, and created or deleted optimistically through the queue.

use serde_json::value::RawValue;

use audio_dedup_core::{
    AudioFormat, AudioRender, ContentHash, EntryState, MessageId, MessageView, SnapshotInfo,
    ThreadId,
};

use crate::api::AudioChoice;
use crate::error::ClientError;
use crate::queue::{Lane, QueuedOp};
use crate::store::messages::Draft;
use crate::store::queue::Ack;
use crate::store::sync_state::Scope;
use crate::sync::{SyncReport, SYNC_PAGE};
use crate::updates::{SendState, Update};
use crate::Client;

pub use crate::store::messages::{LocalMessage, MessagePage, MessagePosition};

/// Audio to attach to a new message.
#[derive(Debug, Clone)]
pub enum Attachment {
    /// Already on the server (uploaded earlier).
    Uploaded(AudioRender),
    /// A local file: copied into the cache folder now (hashing as it copies), and that copy
    /// uploaded by the queue before the message is sent. The app may delete or reuse the file.
    File {
        path: std::path::PathBuf,
        format: AudioFormat,
    },
    /// Forward the audio of another message the caller can see (no upload; the server
    /// checks membership). The local row shows the source's audio when it is cached.
    FromMessage(MessageId),
}

/// Whether a delete found the message, and whether it cancelled an unsent create.
enum Deleted {
    Missing,
    /// Never sent: the create (and an upload only it needed) left the queue with it.
    Cancelled,
    Queued,
}

impl Client {
    /// The thread's live messages from the cache, oldest first (unsent ones last, in the
    /// order they were written). Never touches the network.
    pub fn messages(&self, thread: &ThreadId) -> Result<Vec<LocalMessage>, ClientError> {
        self.store.messages(thread)
    }

    /// A page of the thread's live messages from the cache: the newest `limit` before
    /// `before` (`None`: the newest of all), oldest first, in the order of
    /// [`Client::messages`]. Never touches the network.
    ///
    /// The order: synced messages by the server's position, then unsent ones in the order
    /// they were written. A position is a message's place in that order; `page.older` (the
    /// place of the page's oldest message) read as `before` continues with the messages
    /// before it, and is `None` once a page reaches the thread's first message. Pages are
    /// read through indexes, `limit + 1` rows at a time (plus deleted rows among them), so a
    /// page costs the same in a thread of 100 or 100,000 messages.
    ///
    /// Between two reads, a message that arrives (a sync, a send) takes its own place: the
    /// next older page shows it only if that place is before the position. A message that
    /// the server acknowledges moves from the unsent tail to its server position, which is
    /// before every unsent place, so a page read from an unsent position can show it again:
    /// keep pages keyed by message id.
    pub fn messages_page(
        &self,
        thread: &ThreadId,
        before: Option<MessagePosition>,
        limit: usize,
    ) -> Result<MessagePage, ClientError> {
        if limit == 0 {
            return Err(ClientError::InvalidInput(
                "a page holds at least one message".into(),
            ));
        }
        self.store.message_page(thread, before, limit)
    }

    /// Fetches only the changes after the stored cursor (new messages and deletions) and
    /// merges them by id. Each page and the cursor commit together, so a crash mid-sync
    /// never skips or repeats a change. A cursor the server no longer recognises
    /// (`409 cursor_unknown`) restarts the sync from the beginning.
    pub async fn sync_messages(&self, thread: &ThreadId) -> Result<SyncReport, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let report = self
                .sync_log(Scope::Messages(thread.clone()), |cursor| async move {
                    self.api.list_messages(thread, &cursor, SYNC_PAGE).await
                })
                .await?;
            if report.new + report.deleted > 0 {
                self.updates.send(Update::MessagesSynced {
                    thread_id: thread.clone(),
                    new: report.new,
                    deleted: report.deleted,
                });
            }
            Ok(report)
        })
        .await
    }

    /// Merges messages received outside a sync (a push, another device's answer) into the
    /// cache by id, as a sync would, without moving the sync cursor (the next sync may bring
    /// them again; merging is idempotent). Returns how many are live.
    pub fn merge_messages(&self, views: &[MessageView]) -> Result<usize, ClientError> {
        self.store.write_cache(|tx| {
            let mut live = 0;
            for m in views {
                if tx.merge_message(m)? {
                    live += 1;
                }
            }
            let mut threads: Vec<&ThreadId> = views.iter().map(|m| &m.thread_id).collect();
            threads.dedup();
            for t in threads {
                tx.refresh_summary(t)?;
            }
            Ok(live)
        })
    }

    /// Writes a message now (it shows as `sending` at once) and queues it. With a local
    /// file, the file is hashed here and an upload runs before the message, in the same
    /// lane. Then the thread's queue is processed; offline, the message simply stays queued.
    pub async fn send_message(
        &self,
        thread: &ThreadId,
        snapshot: &serde_json::Value,
        audio: Option<Attachment>,
    ) -> Result<LocalMessage, ClientError> {
        self.send_message_with_text(thread, snapshot, None, audio)
            .await
    }

    /// [`Client::send_message`] with a plain-text body (checked here by the server's own
    /// rule, `MessageText`: 1 to 2,000 characters, no control characters but line feed and
    /// tab), shown by lists at once and sent with the message.
    pub async fn send_message_with_text(
        &self,
        thread: &ThreadId,
        snapshot: &serde_json::Value,
        text: Option<&str>,
        audio: Option<Attachment>,
    ) -> Result<LocalMessage, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            if snapshot.is_null() {
                return Err(ClientError::InvalidInput(
                    "a snapshot is a JSON value other than null".into(),
                ));
            }
            let text = text
                .map(|t| {
                    audio_dedup_core::MessageText::new(t)
                        .map(String::from)
                        .map_err(|e| ClientError::InvalidInput(e.to_string()))
                })
                .transpose()?;
            let snapshot_text = serde_json::to_string(snapshot)?;
            if let Err(e) =
                audio_dedup_core::Snapshot::new(RawValue::from_string(snapshot_text.clone())?)
            {
                return Err(ClientError::InvalidInput(e.to_string()));
            }
            let snapshot = RawValue::from_string(snapshot_text)?;
            let id: MessageId = uuid::Uuid::now_v7()
                .to_string()
                .parse()
                .map_err(|e| ClientError::Corrupt(format!("{e}")))?;
            let mut from_message = None;
            let (render, upload) = match audio {
                None => (None, None),
                Some(Attachment::Uploaded(r)) => (Some(r), None),
                Some(Attachment::File { path, format }) => {
                    // The queue sends the client's own copy, not the app's file.
                    let staged = self.stage(&path).await?;
                    let render = AudioRender {
                        content_hash: staged.hash,
                        format,
                    };
                    (Some(render), Some((staged.relative, render)))
                }
                Some(Attachment::FromMessage(source)) => {
                    let m = source.clone();
                    let render = self.blocking(move |c| c.store.message_render(&m)).await?;
                    from_message = Some(source);
                    (render, None)
                }
            };
            let now = self.cfg.now_ms();
            let view = MessageView {
                id: id.clone(),
                thread_id: thread.clone(),
                author: "me"
                    .parse()
                    .map_err(|e| ClientError::Corrupt(format!("{e}")))?,
                cursor: String::new(),
                created_at: now,
                state: EntryState::Live,
                deleted_at: None,
                audio: render,
                snapshot: Some(SnapshotInfo {
                    size: snapshot.get().len() as u64,
                    sha256: ContentHash::of(snapshot.get().as_bytes()),
                }),
                text: text.clone(),
            };
            let draft = Draft {
                snapshot,
                audio: render,
                from_message,
                text,
            };
            let lane = Lane::Thread(thread.clone());
            let queued_lane = lane.clone();
            let capacity = self.cfg.snapshot_capacity;
            let counts = self
                .blocking(move |c| {
                    c.store.write_durable(|tx| {
                        tx.insert_unsent_message(&view, &draft)?;
                        // The snapshot is known locally: keep it, so showing it needs no download.
                        tx.remember_snapshot(&view.id, draft.snapshot.get().as_bytes())?;
                        let create = QueuedOp::CreateMessage {
                            thread_id: view.thread_id.clone(),
                            message_id: view.id.clone(),
                        };
                        let upload = upload.as_ref().map(|(p, r)| (p.as_path(), *r));
                        tx.enqueue_after_upload(&queued_lane, upload, &create, now)?;
                        Ok(())
                    })?;
                    // Outside the durable transaction: the LRU bound.
                    c.store.evict_snapshots(capacity)?;
                    c.store.queue_counts()
                })
                .await?;
            self.updates.send(Update::Message {
                thread_id: thread.clone(),
                message_id: id.clone(),
                state: SendState::Sending,
                error: None,
            });
            self.announce_counts(counts);
            self.bg.wake();
            let _ = self.process_lane(&lane).await;
            let (t, m) = (thread.clone(), id.clone());
            self.blocking(move |c| c.store.local_message(&t, &m))
                .await?
                .ok_or_else(|| ClientError::NotFound(format!("message {id}")))
        })
        .await
    }

    /// Deletes a message optimistically. A message whose create never left the device is
    /// cancelled with it: both disappear, no request is made.
    pub async fn delete_message(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<(), ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let now = self.cfg.now_ms();
            let lane = Lane::Thread(thread.clone());
            let _turn = self.lanes.lane(&lane).await;
            let (t, m, l) = (thread.clone(), id.clone(), lane.clone());
            let deleted = self
                .blocking(move |c| {
                    c.store.write_durable(|tx| {
                        let Some(seq) = tx.live_message_seq(&t, &m)? else {
                            return Ok(Deleted::Missing);
                        };
                        if seq.is_none() {
                            if let Some(create) = tx.queued_create(&t, &m)? {
                                tx.cancel_op(&create)?;
                                tx.remove_message(&t, &m)?;
                                return Ok(Deleted::Cancelled);
                            }
                        }
                        tx.mark_message_deleted(&t, &m)?;
                        let delete = QueuedOp::DeleteMessage {
                            thread_id: t.clone(),
                            message_id: m.clone(),
                        };
                        tx.enqueue(&l, &delete, None, now)?;
                        Ok(Deleted::Queued)
                    })
                })
                .await?;
            drop(_turn);
            if let Deleted::Missing = deleted {
                return Err(ClientError::NotFound(format!("message {id}")));
            }
            self.updates.send(Update::MessageRemoved {
                thread_id: thread.clone(),
                message_id: id.clone(),
            });
            self.announce_queue_async().await;
            if let Deleted::Queued = deleted {
                self.bg.wake();
                let _ = self.process_lane(&lane).await;
            }
            Ok(())
        })
        .await
    }

    /// The thread of a cached message (message ids are global).
    pub fn message_thread(&self, message: &MessageId) -> Result<Option<ThreadId>, ClientError> {
        self.store.message_thread(message)
    }

    /// One message from the cache, whatever its state.
    pub fn local_message(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<Option<LocalMessage>, ClientError> {
        self.store.local_message(thread, id)
    }

    /// Sends a queued create. The server answers the same message for a retry (the id is
    /// the idempotency key), so a lost response costs nothing but the retry.
    pub(crate) async fn send_create(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<Ack, ClientError> {
        let (t, m) = (thread.clone(), id.clone());
        let draft = self
            .blocking(move |c| c.store.message_draft(&t, &m))
            .await?;
        let Some(draft) = draft else {
            // Fails the operation visibly rather than dropping it.
            return Err(ClientError::NotFound(format!(
                "message {id} is queued but its content is no longer in the cache"
            )));
        };
        let Some(d) = draft else {
            // Already recorded as sent (a previous pass acknowledged it): nothing to send.
            return Ok(Ack::Dequeue);
        };
        let audio = match (d.from_message, d.audio) {
            (Some(m), _) => Some(AudioChoice::FromMessage(m)),
            (None, Some(r)) => Some(AudioChoice::Render(r)),
            (None, None) => None,
        };
        let v = self
            .api
            .create_message_with_text(thread, id, &d.snapshot, d.text.as_deref(), audio.as_ref())
            .await?;
        self.updates.send(Update::Message {
            thread_id: thread.clone(),
            message_id: id.clone(),
            state: SendState::Sent,
            error: None,
        });
        Ok(Ack::MessageCreated {
            thread: thread.clone(),
            id: id.clone(),
            view: Box::new(v),
        })
    }

    pub(crate) async fn send_delete(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<Ack, ClientError> {
        self.api.delete_message(thread, id).await?;
        Ok(Ack::MessageDeleted {
            thread: thread.clone(),
            id: id.clone(),
        })
    }
}
