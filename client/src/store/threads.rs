//! The `threads` table: the server's view of each thread, listed in insertion order.

use rusqlite::{params, Connection, OptionalExtension};

use audio_dedup_core::{MembershipChange, MembershipEvent, MessagePreview, ThreadId, ThreadView};

use super::sync_state::LogItem;
use super::{json_text, CacheTx, Store};
use crate::error::ClientError;

/// Characters of a message's text a thread list shows.
pub const PREVIEW_CHARS: usize = 100;

/// The newest live message of a thread, as its list entry shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub message_id: String,
    /// `None` for a message of this device not yet sent.
    pub author: Option<String>,
    /// The start of its text (at most `PREVIEW_CHARS` characters), if it has text.
    pub text: Option<String>,
    pub has_audio: bool,
}

/// One entry of the thread list (`Client::thread_list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSummary {
    pub thread: ThreadView,
    /// When the thread last had activity: its newest live message, or its creation (ms).
    pub last_activity_at: i64,
    /// The newest position of the thread's log this cache holds (0: none).
    pub last_cursor: u64,
    pub preview: Option<Preview>,
    /// Live messages of others after the read marker.
    pub unread: u64,
    /// The caller's read marker (a position of the thread's log).
    pub read_cursor: u64,
}

/// Where a thread stands in the list's order (newest activity first), as a page read takes
/// it back (`before`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ThreadListPosition {
    last_at: i64,
    id: String,
}

/// A position as text (`<last activity ms>:<thread id>`), for an app that keeps it or
/// passes it through bindings. Opaque: pass back what a page gave.
impl std::fmt::Display for ThreadListPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.last_at, self.id)
    }
}

impl std::str::FromStr for ThreadListPosition {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const BAD: &str = "not a thread list position a page gave";
        let (at, id) = s.split_once(':').ok_or(BAD)?;
        let last_at = at.parse().map_err(|_| BAD)?;
        let id: ThreadId = id.parse().map_err(|_| BAD)?;
        Ok(Self {
            last_at,
            id: id.to_string(),
        })
    }
}

/// One page of the thread list: newest activity first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadListPage {
    pub threads: Vec<ThreadSummary>,
    /// Pass as `before` for the next page; `None` when this page reaches the end.
    pub older: Option<ThreadListPosition>,
}

/// The list reads columns only: parsing 1,000 JSON texts would be most of its time.
const LIST_COLUMNS: &str = "SELECT title, COALESCE(last_at, created_at, 0), COALESCE(last_seq, 0),
        preview_id, preview_author, preview_text, preview_audio, unread, read_seq, id,
        members, created_by, created_at FROM threads ";

/// A thread from its list columns (`None` if one no longer parses, or predates them).
fn thread_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ThreadView>> {
    // Borrowed from the row where the value is parsed anyway: no copy per column.
    let text = |i: usize| -> rusqlite::Result<Option<&str>> { Ok(r.get_ref(i)?.as_str_or_null()?) };
    let (Some(title), Some(members), Some(by)) = (text(0)?, text(10)?, text(11)?) else {
        return Ok(None);
    };
    let (Ok(id), Ok(created_by)) = (r.get_ref(9)?.as_str()?.parse(), by.parse()) else {
        return Ok(None);
    };
    let members: Result<Vec<_>, _> = members
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::parse)
        .collect();
    let Ok(members) = members else {
        return Ok(None);
    };
    Ok(Some(ThreadView {
        id,
        title: title.to_owned(),
        members,
        created_by,
        created_at: r.get::<_, Option<i64>>(12)?.unwrap_or(0),
        left: false,
        read_cursor: None,
        last_cursor: None,
        last_message: None,
        unread: None,
    }))
}

/// The caller's user id, once learned (`meta.me`).
pub(crate) fn me(c: &Connection) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT value FROM meta WHERE key = 'me'", [], |r| r.get(0))
        .optional()
}

/// Keeps a thread's list columns true to its cached messages: its newest live message
/// (an unsent one first: it is the newest), its newest position, and the live messages of
/// others after the read marker. Reads through the messages' indexes only (`unread` walks
/// the positions after the marker).
pub(crate) fn refresh_summary(c: &Connection, thread: &str) -> rusqlite::Result<()> {
    let me = me(c)?;
    let newest = |sql: &str| {
        c.prepare_cached(sql)?
            .query_row([thread], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .optional()
    };
    let latest = newest(
        "SELECT id, NULL, text, audio_hash IS NOT NULL, created_at, 0 FROM messages
         WHERE thread_id = ?1 AND seq IS NULL AND state = 'live' ORDER BY local_order DESC LIMIT 1",
    )?;
    let unsent = latest.is_some();
    let latest = match latest {
        Some(m) => Some(m),
        None => newest(
            "SELECT id, author, text, audio_hash IS NOT NULL, created_at, seq FROM messages
             WHERE thread_id = ?1 AND seq IS NOT NULL AND state = 'live' ORDER BY seq DESC LIMIT 1",
        )?,
    };
    let local_seq = latest.as_ref().map_or(0, |m| m.5);
    let mut latest = latest.map(|(id, author, text, audio, at, _)| (id, author, text, audio, at));
    // While the cache has not synced the thread's log as far as the server's last summary
    // (a thread just joined, or whose pokes this device has not followed yet), the server
    // knows better: its unread count, and its preview when newer than the cache's.
    let server = c
        .prepare_cached(
            "SELECT srv_unread, srv_preview FROM threads
             WHERE id = ?1 AND srv_seq > COALESCE(log_seq, 0) AND srv_seq > read_seq",
        )?
        .query_row([thread], |r| {
            Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .optional()?;
    let mut unread = None;
    if let Some((srv_unread, srv_preview)) = server {
        unread = srv_unread;
        let srv = srv_preview.and_then(|j| serde_json::from_str::<MessagePreview>(&j).ok());
        if let Some(p) = srv {
            let newer = p.cursor.parse::<i64>().is_ok_and(|s| s > local_seq);
            // Deleted on this device (its tombstone not synced yet): not a preview.
            let deleted_here = c
                .prepare_cached("SELECT 1 FROM messages WHERE id = ?1 AND state = 'deleted'")?
                .exists([p.message_id.as_str()])?;
            if newer && !unsent && !deleted_here {
                latest = Some((
                    p.message_id.to_string(),
                    Some(p.author.to_string()),
                    p.text,
                    p.has_audio,
                    p.at,
                ));
            }
        }
    }
    let (id, author, text, audio, at) = match latest {
        Some((id, author, text, audio, at)) => (Some(id), author, text, Some(audio), Some(at)),
        None => (None, None, None, None, None),
    };
    let text = text.map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>());
    c.prepare_cached(
        "UPDATE threads SET
            preview_id = ?2, preview_author = ?3, preview_text = ?4, preview_audio = ?5,
            last_at = MAX(COALESCE(created_at, 0), COALESCE(?6, 0)),
            last_seq = (SELECT MAX(seq) FROM messages WHERE thread_id = ?1),
            unread = COALESCE(?8, (SELECT COUNT(*) FROM messages WHERE thread_id = ?1
                      AND seq > threads.read_seq AND state = 'live'
                      AND (?7 IS NULL OR author <> ?7)))
         WHERE id = ?1",
    )?
    .execute(params![thread, id, author, text, audio, at, me, unread])?;
    Ok(())
}

/// Keeps the server's summary of a thread from a feed entry (its log's position, the
/// caller's unread count, its newest message), for [`refresh_summary`] to show while the
/// cache is behind it.
pub(crate) fn put_server_summary(c: &Connection, t: &ThreadView) -> rusqlite::Result<()> {
    let Some(seq) = t.last_cursor.as_deref().and_then(|s| s.parse::<i64>().ok()) else {
        return Ok(());
    };
    let preview = match &t.last_message {
        Some(p) => Some(json_text(p)?),
        None => None,
    };
    let unread = t.unread.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    c.prepare_cached(
        "UPDATE threads SET srv_seq = ?2, srv_unread = ?3, srv_preview = ?4 WHERE id = ?1",
    )?
    .execute(params![t.id.as_str(), seq, unread, preview])?;
    refresh_summary(c, t.id.as_str())
}

/// Notes how far the cache has merged a thread's log (membership entries too).
pub(crate) fn note_log_seq(c: &Connection, thread: &str, seq: i64) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE threads SET log_seq = MAX(COALESCE(log_seq, 0), ?2) WHERE id = ?1")?
        .execute(params![thread, seq])?;
    Ok(())
}

/// Fills a migrated file's thread columns from each row's JSON (once, on migration).
pub(crate) fn fill_list_columns(c: &Connection) -> rusqlite::Result<()> {
    let rows: Vec<(String, String)> = {
        let mut stmt = c.prepare("SELECT id, json FROM threads WHERE title IS NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, json) in rows {
        let Ok(t) = serde_json::from_str::<ThreadView>(&json) else {
            continue;
        };
        let members: Vec<&str> = t.members.iter().map(|m| m.as_str()).collect();
        c.execute(
            "UPDATE threads SET title = ?2, members = ?3, created_by = ?4, created_at = ?5,
                last_at = COALESCE(last_at, ?5) WHERE id = ?1",
            params![
                id,
                t.title,
                members.join(","),
                t.created_by.as_str(),
                t.created_at
            ],
        )?;
    }
    Ok(())
}

/// Refreshes every thread's list columns (a migrated file, or the caller's id just learned).
pub(crate) fn refresh_all_summaries(c: &Connection) -> rusqlite::Result<()> {
    let ids: Vec<String> = {
        let mut stmt = c.prepare("SELECT id FROM threads")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for id in ids {
        refresh_summary(c, &id)?;
    }
    Ok(())
}

/// Moves the read marker forward (never back) and recounts the unread messages.
pub(crate) fn raise_read_marker(c: &Connection, thread: &str, seq: i64) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE threads SET read_seq = MAX(read_seq, ?2) WHERE id = ?1",
        params![thread, seq],
    )?;
    refresh_summary(c, thread)
}

impl Store {
    /// The thread list from the cache: newest activity first, `limit` threads before
    /// `before` (`None`: from the newest). One backward range scan of `threads_by_activity`.
    pub(crate) fn thread_list(
        &self,
        before: Option<&ThreadListPosition>,
        limit: usize,
    ) -> Result<ThreadListPage, ClientError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            // Sized once: growing a vector of summaries copies them all at each doubling.
            let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(4096));
            let mut last = None;
            let (sql_after, sql_first) = (
                format!(
                    "{LIST_COLUMNS} WHERE (last_at, id) < (?1, ?2) ORDER BY last_at DESC, id DESC LIMIT ?3"
                ),
                format!("{LIST_COLUMNS} ORDER BY last_at DESC, id DESC LIMIT ?1"),
            );
            let mut stmt;
            let mut rows = match before {
                Some(b) => {
                    stmt = c.prepare_cached(&sql_after)?;
                    stmt.query(params![b.last_at, b.id, limit + 1])?
                }
                None => {
                    stmt = c.prepare_cached(&sql_first)?;
                    stmt.query(params![limit + 1])?
                }
            };
            let mut more = false;
            while let Some(r) = rows.next()? {
                if out.len() as i64 == limit {
                    more = true;
                    break;
                }
                let last_at: i64 = r.get(1)?;
                let Some(thread) = thread_of(r)? else {
                    // Skipped, but the next page starts after it.
                    last = Some(ThreadListPosition {
                        last_at,
                        id: r.get(9)?,
                    });
                    continue;
                };
                last = None;
                let preview = match r.get::<_, Option<String>>(3)? {
                    Some(message_id) => Some(Preview {
                        message_id,
                        author: r.get(4)?,
                        text: r.get(5)?,
                        has_audio: r.get::<_, Option<bool>>(6)?.unwrap_or(false),
                    }),
                    None => None,
                };
                out.push(ThreadSummary {
                    thread,
                    last_activity_at: last_at,
                    last_cursor: r.get::<_, i64>(2)?.max(0) as u64,
                    preview,
                    unread: r.get::<_, i64>(7)?.max(0) as u64,
                    read_cursor: r.get::<_, i64>(8)?.max(0) as u64,
                });
            }
            // The page's last row: taken once, not copied for every row.
            let last = last.or_else(|| {
                out.last().map(|s| ThreadListPosition {
                    last_at: s.last_activity_at,
                    id: s.thread.id.to_string(),
                })
            });
            Ok(ThreadListPage {
                threads: out,
                older: if more { last } else { None },
            })
        })
    }

    /// The newest synced position of a thread's messages in the cache (0: none).
    pub(crate) fn newest_position(&self, thread: &ThreadId) -> Result<i64, ClientError> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE thread_id = ?1",
                [thread.as_str()],
                |r| r.get(0),
            )
        })
    }

    /// The caller's user id, if known.
    pub(crate) fn me(&self) -> Result<Option<String>, ClientError> {
        self.read(me)
    }

    /// Records the caller's user id (learned from the server) and recounts every thread's
    /// unread messages without the caller's own.
    pub(crate) fn set_me(&self, user: &str) -> Result<(), ClientError> {
        self.write_cache(|tx| {
            let c = tx.conn();
            if me(c)?.as_deref() == Some(user) {
                return Ok(());
            }
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('me', ?1)",
                [user],
            )?;
            refresh_all_summaries(c)?;
            Ok(())
        })
    }

    /// The cached threads, in the order first cached (a row that no longer parses is skipped).
    pub(crate) fn threads(&self) -> Result<Vec<ThreadView>, ClientError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT json FROM threads ORDER BY rowid")?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                if let Ok(t) = serde_json::from_str(r.get_ref(0)?.as_str()?) {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }
}

impl CacheTx<'_> {
    /// Caches a thread as the server has it (its place in the list stays).
    pub(crate) fn put_thread(&self, t: &ThreadView) -> rusqlite::Result<()> {
        // Only what the thread is: a feed entry's `left`/`read_cursor` are not kept.
        let plain = ThreadView {
            left: false,
            read_cursor: None,
            last_cursor: None,
            last_message: None,
            unread: None,
            ..t.clone()
        };
        // User ids never hold a comma (`[A-Za-z0-9_-]`): the members fit one column.
        let members: Vec<&str> = t.members.iter().map(|m| m.as_str()).collect();
        self.conn().execute(
            "INSERT INTO threads (id, json, created_at, last_at, title, members, created_by)
                VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET json = ?2, created_at = ?3,
                last_at = MAX(COALESCE(last_at, 0), ?3), title = ?4, members = ?5, created_by = ?6",
            params![
                t.id.as_str(),
                json_text(&plain)?,
                t.created_at,
                t.title,
                members.join(","),
                t.created_by.as_str()
            ],
        )?;
        Ok(())
    }
}

impl CacheTx<'_> {
    /// [`refresh_summary`] within this transaction.
    pub(crate) fn refresh_summary(&self, thread: &ThreadId) -> rusqlite::Result<()> {
        refresh_summary(self.conn(), thread.as_str())
    }

    /// Moves the thread's read marker forward (within this transaction).
    pub(crate) fn raise_read_marker(&self, thread: &ThreadId, seq: i64) -> rusqlite::Result<()> {
        raise_read_marker(self.conn(), thread.as_str(), seq)
    }

    /// Forgets a thread the caller is no longer a member of: its row, its messages, their
    /// cached snapshots and its sync cursor. (Its audio stays in the audio cache, which is
    /// keyed by content and shared with other threads; the LRU evicts it.)
    pub(crate) fn forget_thread(&self, id: &ThreadId) -> rusqlite::Result<()> {
        let c = self.conn();
        c.execute(
            "DELETE FROM snapshots WHERE message_id IN
                (SELECT id FROM messages WHERE thread_id = ?1)",
            [id.as_str()],
        )?;
        c.execute("DELETE FROM messages WHERE thread_id = ?1", [id.as_str()])?;
        c.execute("DELETE FROM threads WHERE id = ?1", [id.as_str()])?;
        super::sync_state::forget(c, &super::sync_state::Scope::Messages(id.clone()))
    }

    /// Applies a membership change from the thread's log to the cached thread's members.
    pub(crate) fn apply_membership(&self, e: &MembershipEvent) -> rusqlite::Result<()> {
        let c = self.conn();
        let json: Option<String> = c
            .query_row(
                "SELECT json FROM threads WHERE id = ?1",
                [e.thread_id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(mut t) = json.and_then(|j| serde_json::from_str::<ThreadView>(&j).ok()) else {
            return Ok(());
        };
        match e.event {
            MembershipChange::MemberAdded => {
                if !t.members.contains(&e.member) {
                    t.members.push(e.member.clone());
                }
            }
            MembershipChange::MemberRemoved | MembershipChange::MemberLeft => {
                t.members.retain(|m| m != &e.member);
            }
        }
        self.put_thread(&t)
    }
}

impl LogItem for ThreadView {
    /// A feed page: joined threads are cached; one marked `left` is forgotten with its
    /// messages and snapshots (counted as deleted).
    fn merge_page(tx: &CacheTx<'_>, items: &[Self]) -> rusqlite::Result<(usize, usize)> {
        let (mut joined, mut left) = (0, 0);
        for t in items {
            if let Some(cursor) = &t.read_cursor {
                // Another device of the caller read it: only the marker moves (a thread
                // not cached, or forgotten since, is not brought back by it).
                if let Ok(seq) = cursor.parse::<i64>() {
                    raise_read_marker(tx.conn(), t.id.as_str(), seq)?;
                }
                put_server_summary(tx.conn(), t)?;
                joined += 1;
            } else if t.left {
                tx.forget_thread(&t.id)?;
                left += 1;
            } else {
                tx.put_thread(t)?;
                put_server_summary(tx.conn(), t)?;
                joined += 1;
            }
        }
        Ok((joined, left))
    }
}
