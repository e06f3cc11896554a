//! The caller's library: cached in the `library` table, synced incrementally by the server's
//! cursor (`GET /v1/library?since=`), and changed optimistically through the queue's
//! `library` lane (in order; a new local file is uploaded first, in the same lane).

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension, Transaction};

use audio_dedup_core::{
    AudioFormat, AudioRender, ContentHash, EntryState, LibraryItemId, LibraryItemView, MessageId,
};

use crate::api::LibrarySource;
use crate::audio::{AudioHandle, Progress};
use crate::error::{ApiError, ClientError};
use crate::messages::{hash_file, SyncReport, SYNC_PAGE};
use crate::queue::{enqueue, Lane, QueuedOp, RecordAck};
use crate::updates::{send_state_str, SendState, Update};
use crate::Client;

const SCOPE: &str = "library";

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

/// A library item as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryItem {
    pub id: LibraryItemId,
    pub title: Option<String>,
    /// `None` only while an unsent save from a message whose audio is not cached here.
    pub content_hash: Option<ContentHash>,
    /// Known when the audio came from a local file, an upload or a cached message.
    pub format: Option<AudioFormat>,
    /// The server's position of the item's latest change; `None` while only local.
    pub cursor: Option<u64>,
    pub updated_at: i64,
    pub send_state: SendState,
    /// Saved from this message (while unsent).
    pub from_message: Option<MessageId>,
    /// Why it failed, when `send_state` is `Failed`.
    pub error: Option<String>,
}

const ITEM_COLS: &str =
    "id, seq, send_state, title, audio_hash, audio_format, updated_at, source_message, error";

fn item_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<LibraryItem>> {
    let id: String = r.get(0)?;
    let Ok(id) = id.parse() else { return Ok(None) };
    let seq: Option<i64> = r.get(1)?;
    let st: String = r.get(2)?;
    Ok(Some(LibraryItem {
        id,
        cursor: seq.and_then(|s| u64::try_from(s).ok()),
        send_state: crate::messages::send_state(&st),
        title: r.get(3)?,
        content_hash: r.get::<_, Option<String>>(4)?.and_then(|h| h.parse().ok()),
        format: r.get::<_, Option<String>>(5)?.and_then(|f| f.parse().ok()),
        updated_at: r.get(6)?,
        from_message: r.get::<_, Option<String>>(7)?.and_then(|m| m.parse().ok()),
        error: r.get(8)?,
    }))
}

/// Whether an operation on `item` queued after `op_id` is still waiting: then an
/// acknowledgement must not overwrite that later optimistic state.
fn later_op(tx: &Transaction<'_>, op_id: i64, item: &LibraryItemId) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM queue WHERE lane = 'library' AND id > ?1
                        AND kind IN ('put_library_item', 'delete_library_item')
                        AND json_extract(payload, '$.item_id') = ?2)",
        params![op_id, item.as_str()],
        |r| r.get(0),
    )
}

/// Undoes an unsent put or delete: an item the server never had goes (`true`); otherwise it
/// shows as it was, and the next sync reads the whole library again to restore its fields.
pub(crate) fn rollback(tx: &Transaction<'_>, item: &LibraryItemId) -> rusqlite::Result<bool> {
    let gone = tx.execute(
        "DELETE FROM library WHERE id = ?1 AND seq IS NULL",
        [item.as_str()],
    )? > 0;
    if !gone {
        tx.execute(
            "UPDATE library SET state = 'live', send_state = 'sent', error = NULL WHERE id = ?1",
            [item.as_str()],
        )?;
        tx.execute("DELETE FROM sync_state WHERE scope = ?1", [SCOPE])?;
    }
    Ok(gone)
}

/// Merges one change from the server. A row with a local change not yet acknowledged keeps
/// it. Returns (changed, deleted) counts.
fn merge(tx: &Transaction<'_>, v: &LibraryItemView) -> rusqlite::Result<(usize, usize)> {
    let seq: Option<i64> = v.cursor.parse().ok();
    if v.state == EntryState::Deleted {
        let n = tx.execute(
            "DELETE FROM library WHERE id = ?1 AND send_state = 'sent'",
            [v.id.as_str()],
        )?;
        return Ok((0, n));
    }
    let n = tx.execute(
        "INSERT INTO library (id, seq, send_state, state, title, audio_hash, audio_format,
                              source_message, updated_at, local_order, error)
         VALUES (?1, ?2, 'sent', 'live', ?3, ?4, NULL, NULL, ?5, COALESCE(?2, 0), NULL)
         ON CONFLICT (id) DO UPDATE SET
            seq = ?2, title = ?3, updated_at = ?5,
            audio_format = CASE WHEN library.audio_hash IS ?4 THEN library.audio_format END,
            audio_hash = ?4
         WHERE library.send_state = 'sent'",
        params![
            v.id.as_str(),
            seq,
            v.title,
            v.content_hash.map(|h| h.to_hex()),
            v.updated_at
        ],
    )?;
    Ok((n, 0))
}

impl Client {
    /// The library's live items from the cache (synced ones by position, then unsent ones in
    /// the order they were written). Never touches the network.
    pub fn library(&self) -> Result<Vec<LibraryItem>, ClientError> {
        self.db.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ITEM_COLS} FROM library WHERE state = 'live'
                 ORDER BY seq IS NULL, seq, local_order"
            ))?;
            let rows = stmt.query_map([], item_row)?;
            let mut out = Vec::new();
            for r in rows {
                if let Some(i) = r? {
                    out.push(i);
                }
            }
            Ok(out)
        })
    }

    /// One live item from the cache.
    pub fn library_item(&self, id: &LibraryItemId) -> Result<Option<LibraryItem>, ClientError> {
        let row = self.db.read(|c| {
            c.query_row(
                &format!("SELECT {ITEM_COLS} FROM library WHERE id = ?1 AND state = 'live'"),
                [id.as_str()],
                item_row,
            )
            .optional()
        })?;
        Ok(row.flatten())
    }

    /// Fetches only the library's changes after the stored cursor and merges them by id;
    /// each page commits with its cursor. `new` counts items added or changed.
    pub async fn sync_library(&self) -> Result<SyncReport, ClientError> {
        let report = self
            .sync_log(
                SCOPE,
                |cursor| async move { self.api.list_library(&cursor, SYNC_PAGE).await },
                |tx, items| {
                    let mut counts = (0, 0);
                    for v in items {
                        let (c, d) = merge(tx, v)?;
                        counts.0 += c;
                        counts.1 += d;
                    }
                    Ok(counts)
                },
            )
            .await?;
        if report.new + report.deleted > 0 {
            self.updates.send(Update::LibrarySynced {
                changed: report.new,
                deleted: report.deleted,
            });
        }
        Ok(report)
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
        if audio_dedup_core::Title::new(title).is_err() {
            return Err(ClientError::Invalid(
                "a title is 1 to 200 characters, not blank, no control characters".into(),
            ));
        }
        let (render, upload, from_message) = match audio {
            LibraryAudio::Uploaded(r) => (Some(r), None, None),
            LibraryAudio::File { path, format } => {
                let hash = hash_file(&path).await?;
                let r = AudioRender {
                    content_hash: hash,
                    format,
                };
                (Some(r), Some((path, r)), None)
            }
            LibraryAudio::FromMessage(m) => (self.cached_render(&m)?, None, Some(m)),
        };
        let now = self.cfg.now_ms();
        let lane = Lane::Library;
        let op = QueuedOp::PutLibraryItem {
            item_id: id.clone(),
            content_hash: match from_message {
                Some(_) => None,
                None => render.map(|r| r.content_hash),
            },
            from_message: from_message.clone(),
            title: title.to_owned(),
        };
        self.db.write(true, |tx| {
            tx.execute(
                "INSERT INTO library (id, seq, send_state, state, title, audio_hash, audio_format,
                                      source_message, updated_at, local_order, error)
                 VALUES (?1, NULL, 'sending', 'live', ?2, ?3, ?4, ?5, ?6,
                         (SELECT COALESCE(MAX(local_order), 0) + 1 FROM library), NULL)
                 ON CONFLICT (id) DO UPDATE SET
                    send_state = 'sending', state = 'live', title = ?2, audio_hash = ?3,
                    audio_format = ?4, source_message = ?5, updated_at = ?6, error = NULL",
                params![
                    id.as_str(),
                    title,
                    render.map(|r| r.content_hash.to_hex()),
                    render.map(|r| r.format.as_str()),
                    from_message.as_ref().map(|m| m.as_str()),
                    now
                ],
            )?;
            let dep = match &upload {
                Some((path, r)) => Some(enqueue(
                    tx,
                    &lane,
                    &QueuedOp::UploadAudio {
                        path: path.display().to_string(),
                        content_hash: r.content_hash,
                        format: r.format,
                    },
                    None,
                    now,
                )?),
                None => None,
            };
            enqueue(tx, &lane, &op, dep, now)
        })?;
        self.updates.send(Update::LibraryItem {
            item_id: id.clone(),
            state: SendState::Sending,
            error: None,
        });
        self.announce_queue();
        self.bg.wake();
        let _ = self.process_lane(&lane).await;
        self.any_library_item(id)?
            .ok_or_else(|| ClientError::NotFound(format!("library item {id}")))
    }

    /// Deletes a library item optimistically: it leaves the list at once and the deletion is
    /// queued in the `library` lane (after any put of it still queued).
    pub async fn delete_library_item(&self, id: &LibraryItemId) -> Result<(), ClientError> {
        let now = self.cfg.now_ms();
        let lane = Lane::Library;
        let found = self.db.write(true, |tx| {
            let n = tx.execute(
                "UPDATE library SET state = 'deleted', send_state = 'sending', error = NULL
                 WHERE id = ?1 AND state = 'live'",
                [id.as_str()],
            )?;
            if n == 0 {
                return Ok(false);
            }
            enqueue(
                tx,
                &lane,
                &QueuedOp::DeleteLibraryItem {
                    item_id: id.clone(),
                },
                None,
                now,
            )?;
            Ok(true)
        })?;
        if !found {
            return Err(ClientError::NotFound(format!("library item {id}")));
        }
        self.updates.send(Update::LibraryItemRemoved {
            item_id: id.clone(),
        });
        self.announce_queue();
        self.bg.wake();
        let _ = self.process_lane(&lane).await;
        Ok(())
    }

    /// A playable file for a library item's audio: the cache, or a download
    /// (`GET /v1/audio/{hash}`: a library item makes the caller a holder), verified by hash.
    pub async fn library_audio(
        &self,
        id: &LibraryItemId,
        progress: Option<Progress<'_>>,
    ) -> Result<AudioHandle, ClientError> {
        let item = self
            .library_item(id)?
            .ok_or_else(|| ClientError::NotFound(format!("library item {id}")))?;
        let hash = item.content_hash.ok_or_else(|| {
            ClientError::NotFound(format!(
                "library item {id} has no known audio yet (sync the library)"
            ))
        })?;
        self.audio_by_hash(hash, progress).await
    }

    /// An item whatever its state (what `put_library_item` answers).
    fn any_library_item(&self, id: &LibraryItemId) -> Result<Option<LibraryItem>, ClientError> {
        let row = self.db.read(|c| {
            c.query_row(
                &format!("SELECT {ITEM_COLS} FROM library WHERE id = ?1"),
                [id.as_str()],
                item_row,
            )
            .optional()
        })?;
        Ok(row.flatten())
    }

    /// Sends a queued put. PUT by id is idempotent: a resend after a lost answer applies once.
    pub(crate) async fn send_library_put(
        &self,
        op_id: i64,
        id: &LibraryItemId,
        hash: Option<ContentHash>,
        from_message: Option<&MessageId>,
        title: &str,
    ) -> Result<RecordAck, ClientError> {
        let source = match (from_message, &hash) {
            (Some(m), _) => LibrarySource::Message(m),
            (None, Some(h)) => LibrarySource::Hash(h),
            (None, None) => {
                return Err(ClientError::Invalid(format!(
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
        let id = id.clone();
        Ok(Box::new(move |tx| {
            let seq: Option<i64> = v.cursor.parse().ok();
            if later_op(tx, op_id, &id)? {
                tx.execute(
                    "UPDATE library SET seq = ?2 WHERE id = ?1",
                    params![id.as_str(), seq],
                )?;
                return Ok(());
            }
            tx.execute(
                "UPDATE library SET seq = ?2, title = ?3, updated_at = ?5, send_state = ?6,
                        audio_format = CASE WHEN audio_hash IS ?4 THEN audio_format END,
                        audio_hash = ?4, source_message = NULL, error = NULL
                 WHERE id = ?1",
                params![
                    id.as_str(),
                    seq,
                    v.title,
                    v.content_hash.map(|h| h.to_hex()),
                    v.updated_at,
                    send_state_str(SendState::Sent)
                ],
            )?;
            Ok(())
        }))
    }

    /// Sends a queued delete. An item the server does not have is gone already: done.
    pub(crate) async fn send_library_delete(
        &self,
        op_id: i64,
        id: &LibraryItemId,
    ) -> Result<RecordAck, ClientError> {
        match self.api.delete_library_item(id).await {
            Ok(()) | Err(ApiError::Rejected { status: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let id = id.clone();
        Ok(Box::new(move |tx| {
            if !later_op(tx, op_id, &id)? {
                tx.execute("DELETE FROM library WHERE id = ?1", [id.as_str()])?;
            }
            Ok(())
        }))
    }
}
