//! The `library` table: the caller's library items, synced ones by the server's position,
//! unsent ones after them in the order written.

use rusqlite::{params, Connection, OptionalExtension};

use audio_dedup_core::{
    AudioFormat, AudioRender, ContentHash, EntryState, LibraryItemId, LibraryItemView, MessageId,
};

use super::sync_state::{self, LogItem, Scope};
use super::{row_state_at, send_state_at, send_state_str, CacheTx, DurableTx, Store};
use crate::error::ClientError;
use crate::failure::FailureReason;
use crate::updates::SendState;

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
    pub error: Option<FailureReason>,
}

/// What a put writes locally before it is sent.
pub(crate) struct LocalPut<'a> {
    pub id: &'a LibraryItemId,
    pub title: &'a str,
    pub render: Option<AudioRender>,
    pub from_message: Option<&'a MessageId>,
    pub now_ms: i64,
}

const ITEM_COLS: &str =
    "id, seq, send_state, title, audio_hash, audio_format, updated_at, source_message, error, state";

/// An item row (`ITEM_COLS`); `None` for a row whose id no longer parses. Send state and
/// state are parsed strictly.
fn item_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<LibraryItem>> {
    let send_state = send_state_at(r, 2)?;
    row_state_at(r, 9)?;
    let Ok(id) = r.get_ref(0)?.as_str()?.parse() else {
        return Ok(None);
    };
    let seq: Option<i64> = r.get(1)?;
    Ok(Some(LibraryItem {
        id,
        cursor: seq.and_then(|s| u64::try_from(s).ok()),
        send_state,
        title: r.get(3)?,
        content_hash: r.get::<_, Option<String>>(4)?.and_then(|h| h.parse().ok()),
        format: r.get::<_, Option<String>>(5)?.and_then(|f| f.parse().ok()),
        updated_at: r.get(6)?,
        from_message: r.get::<_, Option<String>>(7)?.and_then(|m| m.parse().ok()),
        error: r.get(8)?,
    }))
}

impl Store {
    /// The live items: synced ones by position, then unsent ones in the order written.
    pub(crate) fn library(&self) -> Result<Vec<LibraryItem>, ClientError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ITEM_COLS} FROM library WHERE state <> 'deleted'
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

    /// One item: only if live, or whatever its state.
    pub(crate) fn library_item(
        &self,
        id: &LibraryItemId,
        live_only: bool,
    ) -> Result<Option<LibraryItem>, ClientError> {
        let filter = if live_only { "AND state = 'live'" } else { "" };
        let row = self.read(|c| {
            c.query_row(
                &format!("SELECT {ITEM_COLS} FROM library WHERE id = ?1 {filter}"),
                [id.as_str()],
                item_row,
            )
            .optional()
        })?;
        Ok(row.flatten())
    }
}

impl LogItem for LibraryItemView {
    /// A row with a local change not yet acknowledged keeps it.
    fn merge_page(tx: &CacheTx<'_>, items: &[Self]) -> rusqlite::Result<(usize, usize)> {
        let mut counts = (0, 0);
        for v in items {
            let seq: Option<i64> = v.cursor.parse().ok();
            if v.state == EntryState::Deleted {
                counts.1 += tx.conn().execute(
                    "DELETE FROM library WHERE id = ?1 AND send_state = 'sent'",
                    [v.id.as_str()],
                )?;
                continue;
            }
            counts.0 += tx.conn().execute(
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
        }
        Ok(counts)
    }
}

impl DurableTx<'_> {
    /// Writes an item put on this device (`sending`; new ones after every item in local order).
    pub(crate) fn put_local_library_item(&self, p: &LocalPut<'_>) -> rusqlite::Result<()> {
        self.conn().execute(
            "INSERT INTO library (id, seq, send_state, state, title, audio_hash, audio_format,
                                  source_message, updated_at, local_order, error)
             VALUES (?1, NULL, 'sending', 'live', ?2, ?3, ?4, ?5, ?6,
                     (SELECT COALESCE(MAX(local_order), 0) + 1 FROM library), NULL)
             ON CONFLICT (id) DO UPDATE SET
                send_state = 'sending', state = 'live', title = ?2, audio_hash = ?3,
                audio_format = ?4, source_message = ?5, updated_at = ?6, error = NULL",
            params![
                p.id.as_str(),
                p.title,
                p.render.map(|r| r.content_hash.to_hex()),
                p.render.map(|r| r.format.as_str()),
                p.from_message.map(|m| m.as_str()),
                p.now_ms
            ],
        )?;
        Ok(())
    }

    /// Marks a live item deleted on this device (`sending`); `false` when there is none.
    pub(crate) fn mark_library_item_deleted(&self, id: &LibraryItemId) -> rusqlite::Result<bool> {
        let n = self.conn().execute(
            "UPDATE library SET state = 'deleted', send_state = 'sending', error = NULL
             WHERE id = ?1 AND state = 'live'",
            [id.as_str()],
        )?;
        Ok(n > 0)
    }
}

/// Records an item's send state (and why it failed).
pub(super) fn set_send_state(
    c: &Connection,
    id: &LibraryItemId,
    state: SendState,
    error: Option<&FailureReason>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE library SET send_state = ?2, error = ?3 WHERE id = ?1",
        params![id.as_str(), send_state_str(state), error],
    )?;
    Ok(())
}

/// Records the server's answer to a put. `superseded`: a later operation on the item is still
/// queued, so only the position is recorded (that operation's optimistic state stands).
pub(super) fn record_put(
    c: &Connection,
    id: &LibraryItemId,
    v: &LibraryItemView,
    superseded: bool,
) -> rusqlite::Result<()> {
    let seq: Option<i64> = v.cursor.parse().ok();
    if superseded {
        c.execute(
            "UPDATE library SET seq = ?2 WHERE id = ?1",
            params![id.as_str(), seq],
        )?;
        return Ok(());
    }
    c.execute(
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
}

/// Removes an item whose deletion the server acknowledged.
pub(super) fn remove(c: &Connection, id: &LibraryItemId) -> rusqlite::Result<()> {
    c.execute("DELETE FROM library WHERE id = ?1", [id.as_str()])?;
    Ok(())
}

/// Undoes an unsent put or delete: an item the server never had goes (`true`); otherwise it
/// shows as it was, and the next sync reads the whole library again to restore its fields.
pub(super) fn roll_back(c: &Connection, id: &LibraryItemId) -> rusqlite::Result<bool> {
    let gone = c.execute(
        "DELETE FROM library WHERE id = ?1 AND seq IS NULL",
        [id.as_str()],
    )? > 0;
    if !gone {
        c.execute(
            "UPDATE library SET state = 'live', send_state = 'sent', error = NULL WHERE id = ?1",
            [id.as_str()],
        )?;
        sync_state::forget(c, &Scope::Library)?;
    }
    Ok(gone)
}
