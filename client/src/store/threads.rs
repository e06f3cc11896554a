//! The `threads` table: the server's view of each thread, listed in insertion order.

use rusqlite::{params, OptionalExtension};

use audio_dedup_core::{MembershipChange, MembershipEvent, ThreadId, ThreadView};

use super::sync_state::LogItem;
use super::{json_text, CacheTx, Store};
use crate::error::ClientError;

impl Store {
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
        self.conn().execute(
            "INSERT INTO threads (id, json) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET json = ?2",
            params![t.id.as_str(), json_text(t)?],
        )?;
        Ok(())
    }
}

impl CacheTx<'_> {
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
            if t.left {
                tx.forget_thread(&t.id)?;
                left += 1;
            } else {
                tx.put_thread(t)?;
                joined += 1;
            }
        }
        Ok((joined, left))
    }
}
