//! Across tables: what the cache holds, the logout wipe, and compaction.

use std::path::Path;

use super::Store;
use crate::error::ClientError;

/// What the cache holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub threads: u64,
    /// Live messages (tombstones and pending deletions not counted).
    pub messages: u64,
    /// Live messages not yet acknowledged by the server (`sending` or `failed`).
    pub unsent_messages: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    /// Audio files the `audio` table knows of, and their bytes.
    pub audio_files: u64,
    pub audio_bytes: u64,
    pub pending_operations: u64,
    pub failed_operations: u64,
    /// Last sync time (ms since the epoch) per scope (`threads`, `messages:<thread>`, ...),
    /// sorted by scope.
    pub last_syncs: Vec<(String, i64)>,
    /// Size of the cache database on disk (`cache.sqlite` and its WAL).
    pub database_bytes: u64,
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl Store {
    /// Counts and sizes of everything cached.
    pub(crate) fn stats(&self) -> Result<CacheStats, ClientError> {
        let mut s = self.read(|c| {
            let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
            let (snapshots, snapshot_bytes) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(json)), 0) FROM snapshots",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?;
            let (audio_files, audio_bytes) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM audio",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?;
            let mut stmt = c.prepare(
                "SELECT scope, last_sync_ms FROM sync_state
                 WHERE last_sync_ms IS NOT NULL ORDER BY scope",
            )?;
            let last_syncs = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(CacheStats {
                threads: count("SELECT COUNT(*) FROM threads")? as u64,
                messages: count("SELECT COUNT(*) FROM messages WHERE state = 'live'")? as u64,
                unsent_messages: count(
                    "SELECT COUNT(*) FROM messages WHERE state = 'live' AND send_state <> 'sent'",
                )? as u64,
                snapshots: snapshots as u64,
                snapshot_bytes: snapshot_bytes as u64,
                audio_files: audio_files as u64,
                audio_bytes: audio_bytes as u64,
                pending_operations: count("SELECT COUNT(*) FROM queue WHERE state = 'pending'")?
                    as u64,
                failed_operations: count("SELECT COUNT(*) FROM queue WHERE state = 'failed'")?
                    as u64,
                last_syncs,
                database_bytes: 0,
            })
        })?;
        let wal = self.path.with_file_name("cache.sqlite-wal");
        s.database_bytes = file_len(&self.path) + file_len(&wal);
        Ok(s)
    }

    /// The logout wipe: every row of every table but `meta`, in one durable transaction,
    /// even once closed.
    pub(crate) fn wipe_all(&self) -> Result<(), ClientError> {
        self.wipe(|c| {
            c.execute_batch(
                "DELETE FROM threads;
                 DELETE FROM messages;
                 DELETE FROM library;
                 DELETE FROM sync_state;
                 DELETE FROM snapshots;
                 DELETE FROM audio;
                 DELETE FROM queue;
                 DELETE FROM uploads;",
            )
        })
    }

    /// Returns free pages to the file system and empties the WAL, so deleted rows do not
    /// linger on disk.
    pub(crate) fn compact(&self) -> Result<(), ClientError> {
        self.read(|c| {
            c.execute_batch("VACUUM;")?;
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        })
    }
}
