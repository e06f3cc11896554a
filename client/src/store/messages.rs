//! The `messages` table: cached and local messages, read in the thread's order and in pages.
//!
//! A thread's order: synced messages by the server's position (`seq`), then unsent ones
//! (`seq` NULL) by `local_order`. Each part is read in index order, never sorted.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use audio_dedup_core::{
    AudioRender, ContentHash, EntryState, MessageId, MessageView, SnapshotInfo, ThreadId,
    ThreadLogEntry,
};

use super::sync_state::LogItem;
use super::{
    json_text, row_state_at, send_state_at, send_state_str, CacheTx, DurableTx, RowState, Store,
};
use crate::error::ClientError;
use crate::failure::FailureReason;
use crate::updates::SendState;

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
    /// The message's plain text, if it has one.
    pub text: Option<String>,
    /// Why it failed, when `send_state` is `Failed`.
    pub error: Option<FailureReason>,
}

/// Where a message stands in its thread's order, as a page read takes it back (`before`).
///
/// Synced messages come first, by the server's position; unsent ones after them, by the order
/// they were written on this device. A message keeps its place until the server acknowledges
/// it; then it moves from the unsent tail to its server position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessagePosition(Place);

/// A position as text, for an app that keeps it (or passes it through bindings): `s<seq>`
/// for a synced place, `u<order>` for an unsent one. Opaque: pass back what a page gave.
impl std::fmt::Display for MessagePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Place::Synced(s) => write!(f, "s{s}"),
            Place::Unsent(o) => write!(f, "u{o}"),
        }
    }
}

impl std::str::FromStr for MessagePosition {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const BAD: &str = "not a message position a page gave";
        let number = |t: &str| t.parse::<i64>().map_err(|_| BAD);
        match s.split_at_checked(1) {
            Some(("s", n)) => Ok(Self(Place::Synced(number(n)?))),
            Some(("u", n)) => Ok(Self(Place::Unsent(number(n)?))),
            _ => Err(BAD),
        }
    }
}

/// Declared in the thread's order: every synced place sorts before every unsent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Place {
    Synced(i64),
    Unsent(i64),
}

/// One page of a thread, from `Client::messages_page`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePage {
    /// At most `limit` live messages, oldest first (the order of `Client::messages`): the
    /// newest ones before the position asked for.
    pub messages: Vec<LocalMessage>,
    /// Pass as `before` for the next older page: the place of this page's oldest message.
    /// `None` when this page reaches the thread's first message.
    pub older: Option<MessagePosition>,
}

/// What an unsent message will send.
#[derive(Serialize, Deserialize)]
pub(crate) struct Draft {
    pub snapshot: Box<RawValue>,
    pub audio: Option<AudioRender>,
    /// Forwarded from this message (then `audio` is only what the row shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_message: Option<MessageId>,
    /// The message's text, sent with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The listed columns, in the order `local_row` reads them, as `SELECT … FROM messages`.
macro_rules! select_listed {
    () => {
        "SELECT id, seq, send_state, error, author, created_at, audio_hash, audio_format,
                snapshot_size, snapshot_sha, state, local_order, text FROM messages "
    };
}

/// Live synced messages of a thread before a position, newest first: a backward range scan
/// of `messages_by_position`.
const SYNCED_BEFORE: &str = concat!(
    select_listed!(),
    "WHERE thread_id = ?1 AND seq < ?2 AND state <> 'deleted' ORDER BY seq DESC LIMIT ?3"
);

/// Live unsent messages of a thread before a local order, newest first: a backward range scan
/// of `messages_unsent`, which holds unsent rows only.
const UNSENT_BEFORE: &str = concat!(
    select_listed!(),
    "WHERE thread_id = ?1 AND seq IS NULL AND local_order < ?2 AND state <> 'deleted'
     ORDER BY local_order DESC LIMIT ?3"
);

const SYNCED: &str = concat!(
    select_listed!(),
    "WHERE thread_id = ?1 AND seq IS NOT NULL AND state <> 'deleted' ORDER BY seq"
);

const UNSENT: &str = concat!(
    select_listed!(),
    "WHERE thread_id = ?1 AND seq IS NULL AND state <> 'deleted' ORDER BY local_order"
);

const ONE: &str = concat!(select_listed!(), "WHERE thread_id = ?1 AND id = ?2");

pub(super) fn hash_col(v: Option<Vec<u8>>) -> Option<ContentHash> {
    let b: [u8; 32] = v?.try_into().ok()?;
    Some(ContentHash::from_bytes(b))
}

/// A message row (`select_listed!`): its place, and the message (`None` for a row whose id no
/// longer parses). Send state and state are parsed strictly.
fn local_row(
    r: &rusqlite::Row<'_>,
    thread: &ThreadId,
) -> rusqlite::Result<(Place, Option<LocalMessage>)> {
    let seq: Option<i64> = r.get(1)?;
    let place = match seq {
        Some(s) => Place::Synced(s),
        None => Place::Unsent(r.get(11)?),
    };
    let send_state = send_state_at(r, 2)?;
    row_state_at(r, 10)?;
    let Ok(id) = r.get_ref(0)?.as_str()?.parse() else {
        return Ok((place, None));
    };
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
    Ok((
        place,
        Some(LocalMessage {
            id,
            thread_id: thread.clone(),
            author: seq.and_then(|_| r.get::<_, String>(4).ok()),
            cursor: seq.map(|s| s as u64),
            created_at: r.get(5)?,
            send_state,
            audio,
            snapshot,
            text: r.get(12)?,
            error: r.get(3)?,
        }),
    ))
}

/// Appends the rows of `sql` (thread, bound, limit) to `out`, in the order read.
fn read_into(
    c: &Connection,
    sql: &str,
    thread: &ThreadId,
    bound: Option<(i64, i64)>,
    out: &mut Vec<(Place, Option<LocalMessage>)>,
) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = match bound {
        Some((before, limit)) => stmt.query(params![thread.as_str(), before, limit])?,
        None => stmt.query([thread.as_str()])?,
    };
    while let Some(r) = rows.next()? {
        out.push(local_row(r, thread)?);
    }
    Ok(())
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

fn view_state(v: &MessageView) -> RowState {
    match v.state {
        EntryState::Live => RowState::Live,
        EntryState::Deleted => RowState::Deleted,
    }
}

impl Store {
    /// The thread's live messages, oldest first (unsent ones last, in the order written).
    pub(crate) fn messages(&self, thread: &ThreadId) -> Result<Vec<LocalMessage>, ClientError> {
        let rows = self.read(|c| {
            // Two index-ordered reads rather than one sort over the whole thread.
            let mut out = Vec::new();
            read_into(c, SYNCED, thread, None, &mut out)?;
            read_into(c, UNSENT, thread, None, &mut out)?;
            Ok(out)
        })?;
        Ok(rows.into_iter().filter_map(|(_, m)| m).collect())
    }

    /// The newest `limit` live messages before `before` (`None`: the thread's end), oldest
    /// first. Reads at most `limit + 1` rows of each part (the extra one says whether older
    /// ones exist), plus the deleted ones between them.
    pub(crate) fn message_page(
        &self,
        thread: &ThreadId,
        before: Option<MessagePosition>,
        limit: usize,
    ) -> Result<MessagePage, ClientError> {
        let want = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let mut rows = self.read(|c| {
            let mut rows = Vec::new();
            let synced_before = match before.map(|p| p.0) {
                Some(Place::Synced(seq)) => seq,
                unsent => {
                    let order = match unsent {
                        Some(Place::Unsent(o)) => o,
                        _ => i64::MAX,
                    };
                    read_into(c, UNSENT_BEFORE, thread, Some((order, want)), &mut rows)?;
                    i64::MAX
                }
            };
            let left = want - rows.len() as i64;
            if left > 0 {
                read_into(
                    c,
                    SYNCED_BEFORE,
                    thread,
                    Some((synced_before, left)),
                    &mut rows,
                )?;
            }
            Ok(rows)
        })?;
        let older = if rows.len() as i64 == want {
            rows.pop();
            rows.last().map(|(place, _)| MessagePosition(*place))
        } else {
            None
        };
        let mut messages: Vec<LocalMessage> = rows.into_iter().filter_map(|(_, m)| m).collect();
        messages.reverse();
        Ok(MessagePage { messages, older })
    }

    /// One message, whatever its state.
    pub(crate) fn local_message(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<Option<LocalMessage>, ClientError> {
        let m = self.read(|c| {
            c.query_row(ONE, params![thread.as_str(), id.as_str()], |r| {
                local_row(r, thread)
            })
            .optional()
        })?;
        Ok(m.and_then(|(_, m)| m))
    }

    /// The thread of a cached message (message ids are global).
    pub(crate) fn message_thread(&self, id: &MessageId) -> Result<Option<ThreadId>, ClientError> {
        let t: Option<String> = self.read(|c| {
            c.query_row(
                "SELECT thread_id FROM messages WHERE id = ?1 LIMIT 1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(t.and_then(|t| t.parse().ok()))
    }

    /// The audio a cached message carries (any thread), if known.
    pub(crate) fn message_render(
        &self,
        id: &MessageId,
    ) -> Result<Option<AudioRender>, ClientError> {
        let row: Option<(Option<Vec<u8>>, Option<String>)> = self.read(|c| {
            c.query_row(
                "SELECT audio_hash, audio_format FROM messages WHERE id = ?1 AND audio_hash IS NOT NULL LIMIT 1",
                [id.as_str()],
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

    /// The snapshot's SHA-256 as the cached message states it (by id alone, through its
    /// index).
    pub(crate) fn snapshot_sha(&self, id: &MessageId) -> Result<Option<ContentHash>, ClientError> {
        let sha: Option<Option<Vec<u8>>> = self.read(|c| {
            c.query_row(
                "SELECT snapshot_sha FROM messages WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(hash_col(sha.flatten()))
    }

    /// What a queued create sends: `None` when the message is gone, `Some(None)` when it is
    /// recorded as sent already.
    pub(crate) fn message_draft(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<Option<Option<Draft>>, ClientError> {
        let row: Option<Option<String>> = self.read(|c| {
            c.query_row(
                "SELECT draft FROM messages WHERE thread_id = ?1 AND id = ?2",
                params![thread.as_str(), id.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(match row {
            None => None,
            Some(None) => Some(None),
            Some(Some(d)) => Some(Some(serde_json::from_str(&d)?)),
        })
    }

    /// Up to `n` cached synced live messages that carry `hash` (any member may read their
    /// audio).
    pub(crate) fn audio_carriers(
        &self,
        hash: &ContentHash,
        n: usize,
    ) -> Result<Vec<(ThreadId, MessageId)>, ClientError> {
        let key = hash.as_bytes().to_vec();
        let rows: Vec<(String, String)> = self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT thread_id, id FROM messages
                 WHERE audio_hash = ?1 AND state = 'live' AND seq IS NOT NULL LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![key, n as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(t, m)| Some((t.parse().ok()?, m.parse().ok()?)))
            .collect())
    }
}

/// Inserts a message row: `(thread_id, id, seq, local_order, send_state, state, json, draft,
/// author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha)` as `?1`…`?14`.
macro_rules! insert_row {
    () => {
        "INSERT INTO messages (thread_id, id, seq, local_order, send_state, state, json, draft,
                               author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha,
                               text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    };
}

/// A change from the server, merged by id. A deletion this device has queued stays deleted
/// (and still sending) until acknowledged.
const MERGE: &str = concat!(
    insert_row!(),
    " ON CONFLICT (thread_id, id) DO UPDATE SET
        seq = ?3,
        json = ?7,
        author = ?9, created_at = ?10,
        audio_hash = COALESCE(?11, messages.audio_hash),
        audio_format = COALESCE(?12, messages.audio_format),
        snapshot_size = COALESCE(?13, messages.snapshot_size),
        snapshot_sha = COALESCE(?14, messages.snapshot_sha),
        text = ?15,
        state = CASE WHEN messages.state = 'deleted' THEN 'deleted' ELSE ?6 END,
        send_state = CASE WHEN messages.send_state = 'sending' AND messages.state = 'deleted' AND ?6 = 'live'
                          THEN 'sending' ELSE 'sent' END,
        draft = NULL"
);

/// A message row's own columns; the others come from its view.
struct Row<'a> {
    seq: Option<i64>,
    local_order: i64,
    send_state: SendState,
    state: RowState,
    draft: Option<&'a str>,
}

/// Runs `sql` (`insert_row!` and a tail) for a view and its own columns.
fn insert(c: &Connection, sql: &str, v: &MessageView, row: &Row<'_>) -> rusqlite::Result<()> {
    let k = cols(v);
    c.prepare_cached(sql)?.execute(params![
        v.thread_id.as_str(),
        v.id.as_str(),
        row.seq,
        row.local_order,
        send_state_str(row.send_state),
        row.state.as_str(),
        json_text(v)?,
        row.draft,
        k.author,
        k.created_at,
        k.audio_hash,
        k.audio_format,
        k.snapshot_size,
        k.snapshot_sha,
        v.text.as_deref()
    ])?;
    Ok(())
}

impl CacheTx<'_> {
    /// Merges one change from the server by id; `true` for a live message, `false` for a
    /// tombstone. A local deletion not yet sent stays deleted; a local unsent create with the
    /// same id is the same message (the server has it now).
    pub(crate) fn merge_message(&self, m: &MessageView) -> rusqlite::Result<bool> {
        let seq: Option<i64> = m.cursor.parse().ok();
        let state = view_state(m);
        let row = Row {
            seq,
            local_order: seq.unwrap_or(0),
            send_state: SendState::Sent,
            state,
            draft: None,
        };
        insert(self.conn(), MERGE, m, &row)?;
        Ok(state == RowState::Live)
    }
}

impl LogItem for MessageView {
    fn merge_page(tx: &CacheTx<'_>, items: &[Self]) -> rusqlite::Result<(usize, usize)> {
        let mut counts = (0, 0);
        for m in items {
            if tx.merge_message(m)? {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        Ok(counts)
    }
}

impl LogItem for ThreadLogEntry {
    /// A page of a thread's log: messages merged by id, membership changes applied to the
    /// cached thread's members (counted as neither).
    fn merge_page(tx: &CacheTx<'_>, items: &[Self]) -> rusqlite::Result<(usize, usize)> {
        let mut counts = (0, 0);
        for e in items {
            match e {
                ThreadLogEntry::Message(m) => {
                    if tx.merge_message(m)? {
                        counts.0 += 1;
                    } else {
                        counts.1 += 1;
                    }
                }
                ThreadLogEntry::Membership(ev) => tx.apply_membership(ev)?,
            }
        }
        let mut threads: Vec<&str> = items
            .iter()
            .map(|e| match e {
                ThreadLogEntry::Message(m) => m.thread_id.as_str(),
                ThreadLogEntry::Membership(ev) => ev.thread_id.as_str(),
            })
            .collect();
        threads.dedup();
        for t in threads {
            let top = items
                .iter()
                .filter(|e| match e {
                    ThreadLogEntry::Message(m) => m.thread_id.as_str() == t,
                    ThreadLogEntry::Membership(ev) => ev.thread_id.as_str() == t,
                })
                .filter_map(|e| e.cursor().parse::<i64>().ok())
                .max();
            if let Some(seq) = top {
                super::threads::note_log_seq(tx.conn(), t, seq)?;
            }
            super::threads::refresh_summary(tx.conn(), t)?;
        }
        Ok(counts)
    }
}

impl DurableTx<'_> {
    /// Writes a message created on this device (`sending`, after every message of the thread
    /// in local order), with what it will send.
    pub(crate) fn insert_unsent_message(
        &self,
        view: &MessageView,
        draft: &Draft,
    ) -> rusqlite::Result<()> {
        let c = self.conn();
        let order: i64 = c.query_row(
            "SELECT COALESCE(MAX(local_order), 0) + 1 FROM messages WHERE thread_id = ?1",
            [view.thread_id.as_str()],
            |r| r.get(0),
        )?;
        let draft = json_text(draft)?;
        let row = Row {
            seq: None,
            local_order: order,
            send_state: SendState::Sending,
            state: RowState::Live,
            draft: Some(&draft),
        };
        insert(c, insert_row!(), view, &row)?;
        super::threads::refresh_summary(c, view.thread_id.as_str())
    }

    /// A live message's server position: `None` when there is no live message of that id,
    /// `Some(None)` while it is only local.
    pub(crate) fn live_message_seq(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> rusqlite::Result<Option<Option<i64>>> {
        self.conn()
            .query_row(
                "SELECT seq FROM messages WHERE thread_id = ?1 AND id = ?2 AND state = 'live'",
                params![thread.as_str(), id.as_str()],
                |r| r.get(0),
            )
            .optional()
    }

    /// Removes a message row (a create cancelled before it was sent).
    pub(crate) fn remove_message(&self, thread: &ThreadId, id: &MessageId) -> rusqlite::Result<()> {
        self.conn().execute(
            "DELETE FROM messages WHERE thread_id = ?1 AND id = ?2",
            params![thread.as_str(), id.as_str()],
        )?;
        super::threads::refresh_summary(self.conn(), thread.as_str())
    }

    /// Marks a message deleted on this device, its deletion `sending`.
    pub(crate) fn mark_message_deleted(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> rusqlite::Result<()> {
        self.conn().execute(
            "UPDATE messages SET state = 'deleted', send_state = 'sending', error = NULL
             WHERE thread_id = ?1 AND id = ?2",
            params![thread.as_str(), id.as_str()],
        )?;
        super::threads::refresh_summary(self.conn(), thread.as_str())
    }
}

/// Records the server's answer to a create: its position and view; the draft goes. A local
/// deletion made meanwhile stays.
pub(super) fn record_created(
    c: &Connection,
    thread: &ThreadId,
    id: &MessageId,
    v: &MessageView,
) -> rusqlite::Result<()> {
    let seq: Option<i64> = v.cursor.parse().ok();
    let k = cols(v);
    c.execute(
        "UPDATE messages SET seq = ?3, send_state = 'sent', json = ?4, draft = NULL, error = NULL,
                state = CASE WHEN state = 'deleted' OR ?5 = 'deleted' THEN 'deleted' ELSE 'live' END,
                author = ?6, created_at = ?7,
                audio_hash = COALESCE(?8, audio_hash), audio_format = COALESCE(?9, audio_format)
         WHERE thread_id = ?1 AND id = ?2",
        params![
            thread.as_str(),
            id.as_str(),
            seq,
            json_text(v)?,
            view_state(v).as_str(),
            v.author.as_str(),
            v.created_at,
            k.audio_hash,
            k.audio_format
        ],
    )?;
    // The server's answer names the caller: learn who they are once (their own messages
    // never count as unread).
    if super::threads::me(c)?.is_none() {
        c.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('me', ?1)",
            [v.author.as_str()],
        )?;
        super::threads::refresh_all_summaries(c)?;
    }
    super::threads::refresh_summary(c, thread.as_str())
}

/// Records a message's send state (and why it failed).
pub(super) fn set_send_state(
    c: &Connection,
    thread: &ThreadId,
    id: &MessageId,
    state: SendState,
    error: Option<&FailureReason>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE messages SET send_state = ?3, error = ?4 WHERE thread_id = ?1 AND id = ?2",
        params![thread.as_str(), id.as_str(), send_state_str(state), error],
    )?;
    Ok(())
}

/// Undoes an unsent create: the message goes if the server never had it.
pub(super) fn remove_unsent(
    c: &Connection,
    thread: &ThreadId,
    id: &MessageId,
) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM messages WHERE thread_id = ?1 AND id = ?2 AND seq IS NULL",
        params![thread.as_str(), id.as_str()],
    )?;
    Ok(())
}

/// Undoes an unsent deletion: the message is live again, as the server has it.
pub(super) fn restore(c: &Connection, thread: &ThreadId, id: &MessageId) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE messages SET state = 'live', send_state = 'sent', error = NULL
         WHERE thread_id = ?1 AND id = ?2",
        params![thread.as_str(), id.as_str()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> ThreadId {
        s.parse().expect("thread id")
    }

    fn view(thread: &str, id: &str, seq: Option<i64>) -> MessageView {
        MessageView {
            id: id.parse().expect("message id"),
            thread_id: tid(thread),
            author: "bob".parse().expect("author"),
            cursor: seq.map(|s| s.to_string()).unwrap_or_default(),
            created_at: 1,
            state: EntryState::Live,
            deleted_at: None,
            audio: None,
            snapshot: None,
            text: None,
        }
    }

    /// A thread `t` of `synced` messages (`s0`, `s1`, … at positions 10, 20, …), every
    /// `deleted_every`th one a tombstone, then `unsent` local ones (`u0`, `u1`, …).
    fn filled(synced: i64, deleted_every: i64, unsent: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(dir.path(), 1).expect("open");
        store
            .write_cache(|tx| {
                for i in 0..synced {
                    let mut v = view("t", &format!("s{i}"), Some(10 * (i + 1)));
                    if deleted_every > 0 && i % deleted_every == 0 {
                        v.state = EntryState::Deleted;
                    }
                    tx.merge_message(&v)?;
                }
                // Another thread, interleaved in position: never on `t`'s pages.
                tx.merge_message(&view("other", "o1", Some(15)))?;
                Ok(())
            })
            .expect("synced");
        store
            .write_durable(|tx| {
                for i in 0..unsent {
                    let draft = Draft {
                        snapshot: RawValue::from_string("{}".into()).expect("raw"),
                        audio: None,
                        from_message: None,
                        text: None,
                    };
                    tx.insert_unsent_message(&view("t", &format!("u{i}"), None), &draft)?;
                }
                Ok(())
            })
            .expect("unsent");
        (dir, store)
    }

    fn ids(ms: &[LocalMessage]) -> Vec<String> {
        ms.iter().map(|m| m.id.to_string()).collect()
    }

    /// Pages from the end to the start, oldest first each.
    fn all_pages(store: &Store, limit: usize) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut before = None;
        for _ in 0..1000 {
            let page = store.message_page(&tid("t"), before, limit).expect("page");
            pages.push(ids(&page.messages));
            match page.older {
                Some(p) => before = Some(p),
                None => return pages,
            }
        }
        panic!("paging did not reach the start");
    }

    #[test]
    fn pages_cover_the_thread_in_the_order_of_messages() {
        for (synced, deleted_every, unsent) in [(0, 0, 0), (0, 0, 3), (7, 0, 0), (23, 4, 5)] {
            let (_dir, store) = filled(synced, deleted_every, unsent);
            let whole = ids(&store.messages(&tid("t")).expect("messages"));
            for limit in [1, 2, 3, 5, 100] {
                let pages = all_pages(&store, limit);
                let mut joined: Vec<String> = Vec::new();
                for p in pages.iter().rev() {
                    assert!(p.len() <= limit);
                    joined.extend(p.iter().cloned());
                }
                assert_eq!(
                    joined, whole,
                    "{synced} synced, {unsent} unsent, limit {limit}"
                );
                // Every page but the oldest is full.
                for p in &pages[..pages.len() - 1] {
                    assert_eq!(p.len(), limit);
                }
            }
        }
    }

    #[test]
    fn an_empty_thread_is_one_empty_page() {
        let (_dir, store) = filled(0, 0, 0);
        let page = store.message_page(&tid("t"), None, 10).expect("page");
        assert_eq!(
            page,
            MessagePage {
                messages: Vec::new(),
                older: None
            }
        );
    }

    /// What EXPLAIN QUERY PLAN says of `sql`.
    fn plan(store: &Store, sql: &str) -> Vec<String> {
        store
            .read(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt.query_map(params!["t", i64::MAX, 51], |r| r.get::<_, String>(3))?;
                rows.collect()
            })
            .expect("plan")
    }

    /// A page's cost follows the page: each part is a range of an index, read backwards up
    /// to the limit, with no sort (a temp B-tree) over the thread.
    #[test]
    fn page_reads_walk_an_index_and_sort_nothing() {
        let (_dir, store) = filled(2_000, 0, 3);
        for (sql, index) in [
            (
                SYNCED_BEFORE,
                "messages_by_position (thread_id=? AND seq<?)",
            ),
            (
                UNSENT_BEFORE,
                "messages_unsent (thread_id=? AND local_order<?)",
            ),
        ] {
            let plan = plan(&store, sql);
            assert!(
                plan.iter()
                    .any(|d| d.contains(&format!("USING INDEX {index}"))),
                "{plan:?}"
            );
            assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:?}");
        }
    }

    /// A stored value this version does not know is an error, not a guess.
    #[test]
    fn an_unknown_send_state_or_state_is_an_error() {
        for bad in [
            "UPDATE messages SET send_state = 'queued' WHERE id = 's1'",
            "UPDATE messages SET state = 'hidden' WHERE id = 's1'",
        ] {
            let (_dir, store) = filled(3, 0, 1);
            store
                .write_cache(|tx| Ok(tx.conn().execute(bad, [])?))
                .expect("damage");
            assert!(
                matches!(store.messages(&tid("t")), Err(ClientError::Db(_))),
                "{bad}"
            );
            assert!(store.message_page(&tid("t"), None, 10).is_err(), "{bad}");
            let one = store.local_message(&tid("t"), &"s1".parse().expect("id"));
            assert!(one.is_err(), "{bad}");
        }
    }
}
