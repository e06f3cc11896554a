//! Snapshots: cache-first, downloaded on a miss, kept in an exact LRU of `snapshot_capacity`
//! (30) entries. Recency is a counter in SQLite, bumped on every read and insert, so the
//! order survives restarts and two reads in the same millisecond still order.

use audio_dedup_core::{ContentHash, MessageId};
use bytes::Bytes;
use rusqlite::{params, OptionalExtension, Transaction};

use crate::error::ClientError;
use crate::Client;

fn next_tick(tx: &rusqlite::Connection) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT COALESCE(MAX(last_access), 0) + 1 FROM snapshots",
        [],
        |r| r.get(0),
    )
}

/// Stores a snapshot as the most recent entry (no eviction: the caller's transaction may be
/// the queue's; `Client::evict_snapshots` runs after it).
pub(crate) fn remember(
    tx: &Transaction<'_>,
    id: &MessageId,
    json: &[u8],
    _now_ms: i64,
) -> rusqlite::Result<()> {
    let tick = next_tick(tx)?;
    tx.execute(
        "INSERT INTO snapshots (message_id, json, last_access) VALUES (?1, ?2, ?3)
         ON CONFLICT (message_id) DO UPDATE SET json = ?2, last_access = ?3",
        params![id.as_str(), json, tick],
    )?;
    Ok(())
}

impl Client {
    /// The message's snapshot (its JSON text): from the cache, or downloaded, checked against
    /// the SHA-256 the message carries when known, and cached. Every call makes it the most
    /// recently used; the least recently used beyond the capacity are evicted.
    pub async fn snapshot(&self, id: &MessageId) -> Result<Bytes, ClientError> {
        let cached = self.db.write(false, |tx| {
            let hit: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT json FROM snapshots WHERE message_id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if hit.is_some() {
                let tick = next_tick(tx)?;
                tx.execute(
                    "UPDATE snapshots SET last_access = ?2 WHERE message_id = ?1",
                    params![id.as_str(), tick],
                )?;
            }
            Ok(hit)
        })?;
        if let Some(json) = cached {
            return Ok(Bytes::from(json));
        }
        let body = self.api.snapshot(id).await?;
        if let Some(expected) = self.snapshot_sha(id)? {
            if ContentHash::of(&body) != expected {
                return Err(ClientError::HashMismatch(expected.to_string()));
            }
        }
        let now = self.cfg.now_ms();
        self.db.write(false, |tx| remember(tx, id, &body, now))?;
        self.evict_snapshots()?;
        Ok(body)
    }

    /// The snapshot's SHA-256 as the cached message states it (message ids are global, so
    /// the lookup is by id alone, through its index).
    fn snapshot_sha(&self, id: &MessageId) -> Result<Option<ContentHash>, ClientError> {
        let sha: Option<Option<Vec<u8>>> = self.db.read(|c| {
            c.query_row(
                "SELECT snapshot_sha FROM messages WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(crate::messages::hash_col(sha.flatten()))
    }

    /// Keeps the `snapshot_capacity` most recently used snapshots, exactly.
    pub(crate) fn evict_snapshots(&self) -> Result<usize, ClientError> {
        let cap = self.cfg.snapshot_capacity as i64;
        self.db.write(false, |tx| {
            tx.execute(
                "DELETE FROM snapshots WHERE message_id NOT IN
                   (SELECT message_id FROM snapshots ORDER BY last_access DESC LIMIT ?1)",
                [cap],
            )
        })
    }

    /// Message ids of the cached snapshots, most recently used first.
    pub fn cached_snapshots(&self) -> Result<Vec<String>, ClientError> {
        self.db.read(|c| {
            let mut stmt =
                c.prepare("SELECT message_id FROM snapshots ORDER BY last_access DESC")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })
    }
}
