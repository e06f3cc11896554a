//! The `threads` table: the server's view of each thread, listed in insertion order.

use rusqlite::params;

use audio_dedup_core::ThreadView;

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

impl LogItem for ThreadView {
    fn merge_page(tx: &CacheTx<'_>, items: &[Self]) -> rusqlite::Result<(usize, usize)> {
        for t in items {
            tx.put_thread(t)?;
        }
        Ok((items.len(), 0))
    }
}
