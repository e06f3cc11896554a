//! The `snapshots` table: snapshot JSON by message id, with a recency counter (`last_access`,
//! indexed) for an exact LRU that survives restarts.

use rusqlite::{params, Connection, OptionalExtension};

use audio_dedup_core::MessageId;

use super::{CacheTx, Store};
use crate::error::ClientError;

/// The next recency tick: two reads in the same millisecond still order.
fn next_tick(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT COALESCE(MAX(last_access), 0) + 1 FROM snapshots",
        [],
        |r| r.get(0),
    )
}

impl Store {
    /// A cached snapshot, made the most recently used.
    pub(crate) fn cached_snapshot(&self, id: &MessageId) -> Result<Option<Vec<u8>>, ClientError> {
        self.write_cache(|tx| {
            let c = tx.conn();
            let hit: Option<Vec<u8>> = c
                .query_row(
                    "SELECT json FROM snapshots WHERE message_id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if hit.is_some() {
                c.execute(
                    "UPDATE snapshots SET last_access = ?2 WHERE message_id = ?1",
                    params![id.as_str(), next_tick(c)?],
                )?;
            }
            Ok(hit)
        })
    }

    /// Keeps the `capacity` most recently used snapshots, exactly.
    pub(crate) fn evict_snapshots(&self, capacity: usize) -> Result<usize, ClientError> {
        let cap = i64::try_from(capacity).unwrap_or(i64::MAX);
        self.write_cache(|tx| {
            Ok(tx.conn().execute(
                "DELETE FROM snapshots WHERE message_id NOT IN
                   (SELECT message_id FROM snapshots ORDER BY last_access DESC LIMIT ?1)",
                [cap],
            )?)
        })
    }

    /// Message ids of the cached snapshots, most recently used first.
    pub(crate) fn cached_snapshots(&self) -> Result<Vec<String>, ClientError> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT message_id FROM snapshots ORDER BY last_access DESC")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })
    }
}

impl CacheTx<'_> {
    /// Stores a snapshot as the most recent entry. No eviction: the transaction may be the
    /// queue's; `Store::evict_snapshots` runs after it.
    pub(crate) fn remember_snapshot(&self, id: &MessageId, json: &[u8]) -> rusqlite::Result<()> {
        let c = self.conn();
        c.execute(
            "INSERT INTO snapshots (message_id, json, last_access) VALUES (?1, ?2, ?3)
             ON CONFLICT (message_id) DO UPDATE SET json = ?2, last_access = ?3",
            params![id.as_str(), json, next_tick(c)?],
        )?;
        Ok(())
    }
}
