//! Messages: read from the cache at once, synced incrementally by the server's cursor, and
//! created or deleted optimistically through the queue.

use std::path::Path;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use audio_dedup_core::{
    AudioFormat, AudioRender, ContentHash, EntryState, MessageId, MessageView, SnapshotInfo,
    ThreadId,
};

use crate::api::AudioChoice;
use crate::error::{ApiError, ClientError};
use crate::queue::{enqueue, Lane, QueuedOp, RecordAck};
use crate::updates::{SendState, Update};
use crate::Client;

/// Page size of sync reads (messages, the thread feed, the library).
pub(crate) const SYNC_PAGE: usize = 500;
/// Most pages one sync reads (500,000 changes); the next sync continues from the cursor.
const MAX_SYNC_PAGES: usize = 1_000;

/// A message as this device knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalMessage {
    pub id: MessageId,
    pub thread_id: ThreadId,
    /// `None` until the server has answered (the author is the caller).
    pub author: Option<String>,
    /// The server's position of the message's latest change; `None` while only local.
    pub cursor: Option<u64>,
    pub created_at: i64,
    pub send_state: SendState,
    pub audio: Option<AudioRender>,
    /// Size and SHA-256 of the snapshot (fetch it with `Client::snapshot`).
    pub snapshot: Option<SnapshotInfo>,
    /// Why it failed, when `send_state` is `Failed`.
    pub error: Option<String>,
}

/// Audio to attach to a new message.
#[derive(Debug, Clone)]
pub enum Attachment {
    /// Already on the server (uploaded earlier).
    Uploaded(AudioRender),
    /// A local file: hashed now, uploaded by the queue before the message is sent.
    File {
        path: std::path::PathBuf,
        format: AudioFormat,
    },
    /// Forward the audio of another message the caller can see (no upload; the server
    /// checks membership). The local row shows the source's audio when it is cached.
    FromMessage(MessageId),
}

/// What an unsent message will send.
#[derive(Serialize, Deserialize)]
struct Draft {
    snapshot: Box<RawValue>,
    audio: Option<AudioRender>,
    /// Forwarded from this message (then `audio` is only what the row shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from_message: Option<MessageId>,
}

/// What one sync brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub new: usize,
    pub deleted: usize,
    /// Requests made (pages read).
    pub requests: usize,
}

pub(crate) fn send_state(s: &str) -> SendState {
    match s {
        "sent" => SendState::Sent,
        "failed" => SendState::Failed,
        _ => SendState::Sending,
    }
}

fn scope(thread: &ThreadId) -> String {
    format!("messages:{thread}")
}

impl Client {
    /// The thread's live messages from the cache, oldest first (unsent ones last, in the
    /// order they were written). Never touches the network.
    pub fn messages(&self, thread: &ThreadId) -> Result<Vec<LocalMessage>, ClientError> {
        self.db.read(|c| {
            // Two index-ordered reads (synced by position, then unsent by local order)
            // rather than one sort over the whole thread.
            let mut out = Vec::new();
            for sql in [SYNCED, UNSENT] {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map([thread.as_str()], |r| local_row(r, thread))?;
                for row in rows {
                    if let Some(m) = row? {
                        out.push(m);
                    }
                }
            }
            Ok(out)
        })
    }

    /// The cached messages at once; a sync runs in the background and its changes arrive
    /// on the update stream (`MessagesSynced`, then read `messages` again).
    pub fn load_messages(&self, thread: &ThreadId) -> Result<Vec<LocalMessage>, ClientError> {
        let cached = self.messages(thread)?;
        let me = self.clone();
        let t = thread.clone();
        tokio::spawn(async move {
            if let Err(e) = me.sync_messages(&t).await {
                tracing::debug!(thread = %t, error = %e, "background message sync failed");
            }
        });
        Ok(cached)
    }

    /// Fetches only the changes after the stored cursor (new messages and deletions) and
    /// merges them by id. Each page and the cursor commit together, so a crash mid-sync
    /// never skips or repeats a change. A cursor the server no longer recognises
    /// (`409 cursor_unknown`) restarts the sync from the beginning.
    pub async fn sync_messages(&self, thread: &ThreadId) -> Result<SyncReport, ClientError> {
        let report = self
            .sync_log(
                &scope(thread),
                |cursor| async move { self.api.list_messages(thread, &cursor, SYNC_PAGE).await },
                |tx, items| {
                    let mut counts = (0, 0);
                    for m in items {
                        if merge(tx, m)? {
                            counts.0 += 1;
                        } else {
                            counts.1 += 1;
                        }
                    }
                    Ok(counts)
                },
            )
            .await?;
        if report.new + report.deleted > 0 {
            self.updates.send(Update::MessagesSynced {
                thread_id: thread.clone(),
                new: report.new,
                deleted: report.deleted,
            });
        }
        Ok(report)
    }

    /// Merges messages received outside a sync (a push, another device's answer) into the
    /// cache by id, as a sync would, without moving the sync cursor (the next sync may bring
    /// them again; merging is idempotent). Returns how many are live.
    pub fn merge_messages(&self, views: &[MessageView]) -> Result<usize, ClientError> {
        self.db.write(false, |tx| {
            let mut live = 0;
            for m in views {
                if merge(tx, m)? {
                    live += 1;
                }
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
        if snapshot.is_null() {
            return Err(ClientError::Invalid(
                "a snapshot is a JSON value other than null".into(),
            ));
        }
        let snapshot = RawValue::from_string(serde_json::to_string(snapshot)?)?;
        let id: MessageId = uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .map_err(|e| ClientError::Invalid(format!("{e}")))?;
        let mut from_message = None;
        let (render, upload) = match audio {
            None => (None, None),
            Some(Attachment::Uploaded(r)) => (Some(r), None),
            Some(Attachment::File { path, format }) => {
                let hash = hash_file(&path).await?;
                let render = AudioRender {
                    content_hash: hash,
                    format,
                };
                (Some(render), Some((path, hash, format)))
            }
            Some(Attachment::FromMessage(source)) => {
                let render = self.cached_render(&source)?;
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
                .map_err(|e| ClientError::Invalid(format!("{e}")))?,
            cursor: String::new(),
            created_at: now,
            state: EntryState::Live,
            deleted_at: None,
            audio: render,
            snapshot: Some(SnapshotInfo {
                size: snapshot.get().len() as u64,
                sha256: ContentHash::of(snapshot.get().as_bytes()),
            }),
        };
        let draft = Draft {
            snapshot: snapshot.clone(),
            audio: render,
            from_message,
        };
        let lane = Lane::Thread(thread.clone());
        self.db.write(true, |tx| {
            let order: i64 = tx.query_row(
                "SELECT COALESCE(MAX(local_order), 0) + 1 FROM messages WHERE thread_id = ?1",
                [thread.as_str()],
                |r| r.get(0),
            )?;
            let k = cols(&view);
            tx.execute(
                "INSERT INTO messages (thread_id, id, seq, local_order, send_state, state, json, draft,
                                       author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha)
                 VALUES (?1, ?2, NULL, ?3, 'sending', 'live', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    thread.as_str(),
                    id.as_str(),
                    order,
                    serde_json::to_string(&view).unwrap_or_default(),
                    serde_json::to_string(&draft).unwrap_or_default(),
                    k.author,
                    k.created_at,
                    k.audio_hash,
                    k.audio_format,
                    k.snapshot_size,
                    k.snapshot_sha
                ],
            )?;
            // The snapshot is known locally: keep it, so showing it needs no download.
            crate::snapshots::remember(tx, &id, snapshot.get().as_bytes(), now)?;
            let dep = match &upload {
                Some((path, hash, format)) => Some(enqueue(
                    tx,
                    &lane,
                    &QueuedOp::UploadAudio {
                        path: path.display().to_string(),
                        content_hash: *hash,
                        format: *format,
                    },
                    None,
                    now,
                )?),
                None => None,
            };
            enqueue(
                tx,
                &lane,
                &QueuedOp::CreateMessage {
                    thread_id: thread.clone(),
                    message_id: id.clone(),
                },
                dep,
                now,
            )?;
            Ok(())
        })?;
        // Outside the durable transaction: the LRU bound, then the send.
        self.evict_snapshots()?;
        self.updates.send(Update::Message {
            thread_id: thread.clone(),
            message_id: id.clone(),
            state: SendState::Sending,
            error: None,
        });
        self.announce_queue();
        self.bg.wake();
        let _ = self.process_lane(&lane).await;
        self.local_message(thread, &id)?
            .ok_or_else(|| ClientError::NotFound(format!("message {id}")))
    }

    /// Deletes a message optimistically. A message whose create never left the device is
    /// cancelled with it: both disappear, no request is made.
    pub async fn delete_message(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<(), ClientError> {
        let now = self.cfg.now_ms();
        let lane = Lane::Thread(thread.clone());
        let _turn = self.queue_lock.lock().await;
        let create = QueuedOp::CreateMessage {
            thread_id: thread.clone(),
            message_id: id.clone(),
        };
        let payload = serde_json::to_string(&create)?;
        let cancelled = self.db.write(true, |tx| {
            let exists: Option<Option<i64>> = tx
                .query_row(
                    "SELECT seq FROM messages WHERE thread_id = ?1 AND id = ?2 AND state = 'live'",
                    params![thread.as_str(), id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(seq) = exists else {
                return Ok(None);
            };
            let queued: Option<i64> = tx
                .query_row(
                    "SELECT id FROM queue WHERE payload = ?1",
                    [&payload],
                    |r| r.get(0),
                )
                .optional()?;
            if let (None, Some(op)) = (seq, queued) {
                // Never sent: cancel the create (and an upload only it needed).
                let dep: Option<i64> = tx.query_row("SELECT depends_on FROM queue WHERE id = ?1", [op], |r| r.get(0))?;
                tx.execute("DELETE FROM queue WHERE id = ?1", [op])?;
                if let Some(d) = dep {
                    tx.execute(
                        "DELETE FROM queue WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE depends_on = ?1)",
                        [d],
                    )?;
                }
                tx.execute(
                    "DELETE FROM messages WHERE thread_id = ?1 AND id = ?2",
                    params![thread.as_str(), id.as_str()],
                )?;
                return Ok(Some(true));
            }
            tx.execute(
                "UPDATE messages SET state = 'deleted', send_state = 'sending', error = NULL
                 WHERE thread_id = ?1 AND id = ?2",
                params![thread.as_str(), id.as_str()],
            )?;
            enqueue(
                tx,
                &lane,
                &QueuedOp::DeleteMessage {
                    thread_id: thread.clone(),
                    message_id: id.clone(),
                },
                None,
                now,
            )?;
            Ok(Some(false))
        })?;
        drop(_turn);
        match cancelled {
            None => return Err(ClientError::NotFound(format!("message {id}"))),
            Some(true) => {
                self.updates.send(Update::MessageRemoved {
                    thread_id: thread.clone(),
                    message_id: id.clone(),
                });
                self.announce_queue();
                return Ok(());
            }
            Some(false) => {}
        }
        self.updates.send(Update::MessageRemoved {
            thread_id: thread.clone(),
            message_id: id.clone(),
        });
        self.announce_queue();
        self.bg.wake();
        let _ = self.process_lane(&lane).await;
        Ok(())
    }

    /// The thread of a cached message (message ids are global).
    pub fn message_thread(&self, message: &MessageId) -> Result<Option<ThreadId>, ClientError> {
        let t: Option<String> = self.db.read(|c| {
            c.query_row(
                "SELECT thread_id FROM messages WHERE id = ?1 LIMIT 1",
                [message.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(t.and_then(|t| t.parse().ok()))
    }

    /// The audio a cached message carries (any thread), if known.
    pub(crate) fn cached_render(
        &self,
        message: &MessageId,
    ) -> Result<Option<AudioRender>, ClientError> {
        let row: Option<(Option<Vec<u8>>, Option<String>)> = self.db.read(|c| {
            c.query_row(
                "SELECT audio_hash, audio_format FROM messages WHERE id = ?1 AND audio_hash IS NOT NULL LIMIT 1",
                [message.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        Ok(row.and_then(|(h, f)| {
            Some(AudioRender {
                content_hash: hash_col(h)?,
                format: f?.parse().ok()?,
            })
        }))
    }

    /// One message from the cache, whatever its state.
    pub fn local_message(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<Option<LocalMessage>, ClientError> {
        let m = self.db.read(|c| {
            c.query_row(
                &format!("SELECT {LIST_COLS} FROM messages WHERE thread_id = ?1 AND id = ?2"),
                params![thread.as_str(), id.as_str()],
                |r| local_row(r, thread),
            )
            .optional()
        })?;
        Ok(m.flatten())
    }

    /// Sends a queued create. The server answers the same message for a retry (the id is
    /// the idempotency key), so a lost response costs nothing but the retry.
    pub(crate) async fn send_create(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<RecordAck, ClientError> {
        let row: Option<Option<String>> = self.db.read(|c| {
            c.query_row(
                "SELECT draft FROM messages WHERE thread_id = ?1 AND id = ?2",
                params![thread.as_str(), id.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        let Some(draft) = row else {
            // Fails the operation visibly rather than dropping it.
            return Err(ClientError::NotFound(format!(
                "message {id} is queued but its content is no longer in the cache"
            )));
        };
        let Some(draft) = draft else {
            // Already recorded as sent (a previous pass acknowledged it): nothing to send.
            return Ok(Box::new(|_: &Transaction<'_>| Ok(())));
        };
        let d: Draft = serde_json::from_str(&draft)?;
        let audio = match (d.from_message, d.audio) {
            (Some(m), _) => Some(AudioChoice::FromMessage(m)),
            (None, Some(r)) => Some(AudioChoice::Render(r)),
            (None, None) => None,
        };
        let v = self
            .api
            .create_message(thread, id, &d.snapshot, audio.as_ref())
            .await?;
        let (t, m) = (thread.clone(), id.clone());
        let k = cols(&v);
        self.updates.send(Update::Message {
            thread_id: t.clone(),
            message_id: m.clone(),
            state: SendState::Sent,
            error: None,
        });
        Ok(Box::new(move |tx| {
            let seq: Option<i64> = v.cursor.parse().ok();
            tx.execute(
                "UPDATE messages SET seq = ?3, send_state = 'sent', json = ?4, draft = NULL, error = NULL,
                        state = CASE WHEN state = 'deleted' OR ?5 = 'deleted' THEN 'deleted' ELSE 'live' END,
                        author = ?6, created_at = ?7,
                        audio_hash = COALESCE(?8, audio_hash), audio_format = COALESCE(?9, audio_format)
                 WHERE thread_id = ?1 AND id = ?2",
                params![
                    t.as_str(),
                    m.as_str(),
                    seq,
                    serde_json::to_string(&v).unwrap_or_default(),
                    if v.state == EntryState::Deleted { "deleted" } else { "live" },
                    v.author.as_str(),
                    v.created_at,
                    k.audio_hash,
                    k.audio_format
                ],
            )?;
            Ok(())
        }))
    }

    pub(crate) async fn send_delete(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<RecordAck, ClientError> {
        match self.api.delete_message(thread, id).await {
            Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
        let (t, m) = (thread.clone(), id.clone());
        Ok(Box::new(move |tx| {
            tx.execute(
                "UPDATE messages SET send_state = 'sent', error = NULL WHERE thread_id = ?1 AND id = ?2",
                params![t.as_str(), m.as_str()],
            )?;
            Ok(())
        }))
    }

    /// Reads a change log from the cursor stored for `scope`, page by page. Each page is
    /// merged by `apply` (answering how many items it changed and deleted) in the transaction
    /// that stores the page's cursor, so a crash mid-sync never skips or repeats a change. A
    /// cursor the server no longer recognises (`409 cursor_unknown`) restarts from the start.
    pub(crate) async fn sync_log<T, Fut>(
        &self,
        scope: &str,
        fetch: impl Fn(String) -> Fut,
        apply: impl Fn(&Transaction<'_>, &[T]) -> rusqlite::Result<(usize, usize)>,
    ) -> Result<SyncReport, ClientError>
    where
        Fut: std::future::Future<Output = Result<audio_dedup_core::Page<T>, ApiError>>,
    {
        let mut report = SyncReport::default();
        let mut cursor = self.cursor(scope)?.unwrap_or_else(|| "0".into());
        for _ in 0..MAX_SYNC_PAGES {
            report.requests += 1;
            let page = match fetch(cursor.clone()).await {
                Ok(p) => p,
                Err(ApiError::Rejected { code, .. })
                    if code == "cursor_unknown" && cursor != "0" =>
                {
                    cursor = "0".into();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let now = self.cfg.now_ms();
            let (changed, deleted) = self.db.write(false, |tx| {
                let counts = apply(tx, &page.items)?;
                set_cursor(tx, scope, &page.next_cursor, now)?;
                Ok(counts)
            })?;
            report.new += changed;
            report.deleted += deleted;
            cursor = page.next_cursor;
            if !page.has_more {
                break;
            }
        }
        Ok(report)
    }

    pub(crate) fn cursor(&self, scope: &str) -> Result<Option<String>, ClientError> {
        self.db.read(|c| {
            c.query_row(
                "SELECT cursor FROM sync_state WHERE scope = ?1",
                [scope],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }

    /// When `scope` was last synced (ms since the epoch).
    pub fn last_sync(&self, scope: &str) -> Result<Option<i64>, ClientError> {
        self.db.read(|c| {
            c.query_row(
                "SELECT last_sync_ms FROM sync_state WHERE scope = ?1",
                [scope],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }
}

/// Records the cursor and time of a sync, in the transaction that applied its page.
pub(crate) fn set_cursor(
    tx: &Transaction<'_>,
    scope: &str,
    cursor: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO sync_state (scope, cursor, last_sync_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (scope) DO UPDATE SET cursor = ?2, last_sync_ms = ?3",
        params![scope, cursor, now_ms],
    )?;
    Ok(())
}

/// Merges one change from the server by id; `true` for a live message, `false` for a
/// tombstone. A local deletion not yet sent stays deleted; a local unsent create with the
/// same id is the same message (the server has it now).
fn merge(tx: &Transaction<'_>, m: &MessageView) -> rusqlite::Result<bool> {
    let seq: Option<i64> = m.cursor.parse().ok();
    let json = serde_json::to_string(m).unwrap_or_default();
    let live = m.state == EntryState::Live;
    let order: i64 = seq.unwrap_or(0);
    let k = cols(m);
    // A deletion this device has queued stays deleted (and still sending) until acknowledged.
    tx.execute(
        "INSERT INTO messages (thread_id, id, seq, local_order, send_state, state, json, draft,
                               author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha)
         VALUES (?1, ?2, ?3, ?4, 'sent', ?5, ?6, NULL, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (thread_id, id) DO UPDATE SET
            seq = ?3,
            json = ?6,
            author = ?7, created_at = ?8,
            audio_hash = COALESCE(?9, messages.audio_hash),
            audio_format = COALESCE(?10, messages.audio_format),
            snapshot_size = COALESCE(?11, messages.snapshot_size),
            snapshot_sha = COALESCE(?12, messages.snapshot_sha),
            state = CASE WHEN messages.state = 'deleted' THEN 'deleted' ELSE ?5 END,
            send_state = CASE WHEN messages.send_state = 'sending' AND messages.state = 'deleted' AND ?5 = 'live'
                              THEN 'sending' ELSE 'sent' END,
            draft = NULL",
        params![
            m.thread_id.as_str(),
            m.id.as_str(),
            seq,
            order,
            if live { "live" } else { "deleted" },
            json,
            k.author,
            k.created_at,
            k.audio_hash,
            k.audio_format,
            k.snapshot_size,
            k.snapshot_sha
        ],
    )?;
    Ok(live)
}

/// Streams a file through SHA-256 (never the whole file in memory).
pub(crate) async fn hash_file(path: &Path) -> Result<ContentHash, ClientError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> Result<ContentHash, ClientError> {
        let f = std::fs::File::open(&path)?;
        Ok(audio_dedup_core::hash_reader(f)?.0)
    })
    .await
    .map_err(|e| ClientError::Invalid(format!("hashing task: {e}")))?
}

const LIST_COLS: &str =
    "id, seq, send_state, error, author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha";

const SYNCED: &str = "SELECT id, seq, send_state, error, author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha
     FROM messages WHERE thread_id = ?1 AND seq IS NOT NULL AND state = 'live' ORDER BY seq";

const UNSENT: &str = "SELECT id, seq, send_state, error, author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha
     FROM messages WHERE thread_id = ?1 AND seq IS NULL AND state = 'live' ORDER BY local_order";

pub(crate) fn hash_col(v: Option<Vec<u8>>) -> Option<ContentHash> {
    let b: [u8; 32] = v?.try_into().ok()?;
    Some(ContentHash::from_bytes(b))
}

/// A message row as `LocalMessage` (`None` for a row whose id no longer parses).
fn local_row(r: &rusqlite::Row<'_>, thread: &ThreadId) -> rusqlite::Result<Option<LocalMessage>> {
    let id: String = r.get(0)?;
    let Ok(id) = id.parse() else { return Ok(None) };
    let seq: Option<i64> = r.get(1)?;
    let st: String = r.get(2)?;
    let audio = match (hash_col(r.get(6)?), r.get::<_, Option<String>>(7)?) {
        (Some(content_hash), Some(f)) => f.parse().ok().map(|format| AudioRender {
            content_hash,
            format,
        }),
        _ => None,
    };
    let snapshot = match (r.get::<_, Option<i64>>(8)?, hash_col(r.get(9)?)) {
        (Some(size), Some(sha256)) => Some(SnapshotInfo {
            size: size as u64,
            sha256,
        }),
        _ => None,
    };
    Ok(Some(LocalMessage {
        id,
        thread_id: thread.clone(),
        author: seq.and_then(|_| r.get::<_, String>(4).ok()),
        cursor: seq.map(|s| s as u64),
        created_at: r.get(5)?,
        send_state: send_state(&st),
        audio,
        snapshot,
        error: r.get(3)?,
    }))
}

/// The listed fields of a view, as the columns store them.
struct Cols {
    author: String,
    created_at: i64,
    audio_hash: Option<Vec<u8>>,
    audio_format: Option<&'static str>,
    snapshot_size: Option<i64>,
    snapshot_sha: Option<Vec<u8>>,
}

fn cols(v: &MessageView) -> Cols {
    Cols {
        author: v.author.to_string(),
        created_at: v.created_at,
        audio_hash: v.audio.map(|a| a.content_hash.as_bytes().to_vec()),
        audio_format: v.audio.map(|a| a.format.as_str()),
        snapshot_size: v.snapshot.map(|s| s.size as i64),
        snapshot_sha: v.snapshot.map(|s| s.sha256.as_bytes().to_vec()),
    }
}
