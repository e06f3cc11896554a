//! The caller's library: cached in the `library` table, synced incrementally by the server's
//! cursor (`GET /v1/library?since=`), and changed optimistically through the queue's
//! `library` lane (in order; a new local file is uploaded first, in the same lane).

use std::path::PathBuf;

use audio_dedup_core::{AudioFormat, AudioRender, ContentHash, LibraryItemId, MessageId};

use crate::api::LibrarySource;
use crate::audio::{AudioHandle, Progress};
use crate::error::{ApiError, ClientError};
use crate::queue::{Lane, QueuedOp};
use crate::store::library::LocalPut;
use crate::store::queue::Ack;
use crate::store::sync_state::Scope;
use crate::sync::{SyncReport, SYNC_PAGE};
use crate::updates::{SendState, Update};
use crate::Client;

pub use crate::store::library::LibraryItem;

/// The audio of a library item being put.
#[derive(Debug, Clone)]
pub enum LibraryAudio {
    /// Audio the caller already holds on the server (uploaded earlier).
    Uploaded(AudioRender),
    /// A local file: hashed now, uploaded by the queue before the item is put.
    File { path: PathBuf, format: AudioFormat },
    /// Save another person's track from a message the caller can see: no upload, the server
    /// makes the caller a holder.
    FromMessage(MessageId),
}

impl Client {
    /// The library's live items from the cache (synced ones by position, then unsent ones in
    /// the order they were written). Never touches the network.
    pub fn library(&self) -> Result<Vec<LibraryItem>, ClientError> {
        self.store.library()
    }

    /// One live item from the cache.
    pub fn library_item(&self, id: &LibraryItemId) -> Result<Option<LibraryItem>, ClientError> {
        self.store.library_item(id, true)
    }

    /// Fetches only the library's changes after the stored cursor and merges them by id;
    /// each page commits with its cursor. `new` counts items added or changed.
    pub async fn sync_library(&self) -> Result<SyncReport, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let report = self
                .sync_log(Scope::Library, |cursor| async move {
                    self.api.list_library(&cursor, SYNC_PAGE).await
                })
                .await?;
            if report.new + report.deleted > 0 {
                self.updates.send(Update::LibrarySynced {
                    changed: report.new,
                    deleted: report.deleted,
                });
            }
            Ok(report)
        })
        .await
    }

    /// Puts a library item (new, or a new title or audio for an existing one). Shown at once
    /// as `sending` and queued durably in the `library` lane; a local file is hashed now and
    /// uploaded first. Then the lane runs; offline, the item simply stays queued.
    pub async fn put_library_item(
        &self,
        id: &LibraryItemId,
        audio: LibraryAudio,
        title: &str,
    ) -> Result<LibraryItem, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            if audio_dedup_core::Title::new(title).is_err() {
                return Err(ClientError::InvalidInput(
                    "a title is 1 to 200 characters, not blank, no control characters".into(),
                ));
            }
            let (render, upload, from_message) = match audio {
                LibraryAudio::Uploaded(r) => (Some(r), None, None),
                LibraryAudio::File { path, format } => {
                    // The queue sends the client's own copy, not the app's file.
                    let staged = self.stage(&path).await?;
                    let r = AudioRender {
                        content_hash: staged.hash,
                        format,
                    };
                    (Some(r), Some((staged.relative, r)), None)
                }
                LibraryAudio::FromMessage(m) => {
                    let source = m.clone();
                    let render = self
                        .blocking(move |c| c.store.message_render(&source))
                        .await?;
                    (render, None, Some(m))
                }
            };
            let now = self.cfg.now_ms();
            let op = QueuedOp::PutLibraryItem {
                item_id: id.clone(),
                content_hash: match from_message {
                    Some(_) => None,
                    None => render.map(|r| r.content_hash),
                },
                from_message: from_message.clone(),
                title: title.to_owned(),
            };
            let (item, title) = (id.clone(), title.to_owned());
            self.blocking(move |c| {
                c.store.write_durable(|tx| {
                    tx.put_local_library_item(&LocalPut {
                        id: &item,
                        title: &title,
                        render,
                        from_message: from_message.as_ref(),
                        now_ms: now,
                    })?;
                    let upload = upload.as_ref().map(|(p, r)| (p.as_path(), *r));
                    Ok(tx.enqueue_after_upload(&Lane::Library, upload, &op, now)?)
                })
            })
            .await?;
            self.updates.send(Update::LibraryItem {
                item_id: id.clone(),
                state: SendState::Sending,
                error: None,
            });
            self.announce_queue_async().await;
            self.bg.wake();
            let _ = self.process_lane(&Lane::Library).await;
            let item = id.clone();
            self.blocking(move |c| c.store.library_item(&item, false))
                .await?
                .ok_or_else(|| ClientError::NotFound(format!("library item {id}")))
        })
        .await
    }

    /// Deletes a library item optimistically: it leaves the list at once and the deletion is
    /// queued in the `library` lane (after any put of it still queued).
    pub async fn delete_library_item(&self, id: &LibraryItemId) -> Result<(), ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let now = self.cfg.now_ms();
            let item = id.clone();
            let found = self
                .blocking(move |c| {
                    c.store.write_durable(|tx| {
                        if !tx.mark_library_item_deleted(&item)? {
                            return Ok(false);
                        }
                        let delete = QueuedOp::DeleteLibraryItem { item_id: item };
                        tx.enqueue(&Lane::Library, &delete, None, now)?;
                        Ok(true)
                    })
                })
                .await?;
            if !found {
                return Err(ClientError::NotFound(format!("library item {id}")));
            }
            self.updates.send(Update::LibraryItemRemoved {
                item_id: id.clone(),
            });
            self.announce_queue_async().await;
            self.bg.wake();
            let _ = self.process_lane(&Lane::Library).await;
            Ok(())
        })
        .await
    }

    /// A playable file for a library item's audio: the cache, or a download
    /// (`GET /v1/audio/{hash}`: a library item makes the caller a holder), verified by hash.
    pub async fn library_audio(
        &self,
        id: &LibraryItemId,
        progress: Option<Progress<'_>>,
    ) -> Result<AudioHandle, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let item = id.clone();
            let item = self
                .blocking(move |c| c.store.library_item(&item, true))
                .await?
                .ok_or_else(|| ClientError::NotFound(format!("library item {id}")))?;
            let hash = item.content_hash.ok_or_else(|| {
                ClientError::NotFound(format!(
                    "library item {id} has no known audio yet (sync the library)"
                ))
            })?;
            self.audio_by_hash(hash, progress).await
        })
        .await
    }

    /// Sends a queued put. PUT by id is idempotent: a resend after a lost answer applies once.
    pub(crate) async fn send_library_put(
        &self,
        id: &LibraryItemId,
        hash: Option<ContentHash>,
        from_message: Option<&MessageId>,
        title: &str,
    ) -> Result<Ack, ClientError> {
        let source = match (from_message, &hash) {
            (Some(m), _) => LibrarySource::Message(m),
            (None, Some(h)) => LibrarySource::Hash(h),
            (None, None) => {
                return Err(ClientError::Corrupt(format!(
                    "library item {id} is queued without audio"
                )))
            }
        };
        let v = self.api.put_library_item(id, source, title).await?;
        self.updates.send(Update::LibraryItem {
            item_id: id.clone(),
            state: SendState::Sent,
            error: None,
        });
        Ok(Ack::LibraryPut {
            id: id.clone(),
            view: Box::new(v),
        })
    }

    /// Sends a queued delete. An item the server does not have is gone already: done.
    pub(crate) async fn send_library_delete(&self, id: &LibraryItemId) -> Result<Ack, ClientError> {
        match self.api.delete_library_item(id).await {
            Ok(()) | Err(ApiError::Rejected { status: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Ack::LibraryDeleted { id: id.clone() })
    }
}
