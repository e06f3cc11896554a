//! The `audio` table: the index of `audio/` (hash, size, fetch time, recency counter), so
//! start-up never lists the folder. Rows are keyed by the hash's hex; a key that does not
//! parse (a damaged row) is still listed, so it can be dropped.

use rusqlite::{params, Connection, OptionalExtension};

use audio_dedup_core::ContentHash;

use super::{CacheTx, Store};
use crate::error::ClientError;

fn next_tick(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT COALESCE(MAX(last_access), 0) + 1 FROM audio",
        [],
        |r| r.get(0),
    )
}

fn total(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT COALESCE(SUM(size), 0) FROM audio", [], |r| r.get(0))
}

fn keys(c: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

impl CacheTx<'_> {
    /// The recorded size of a cached content.
    pub(crate) fn audio_size(&self, hash: &ContentHash) -> rusqlite::Result<Option<i64>> {
        self.conn()
            .query_row(
                "SELECT size FROM audio WHERE hash = ?1",
                [hash.to_hex()],
                |r| r.get(0),
            )
            .optional()
    }

    /// Makes a cached content the most recently used.
    pub(crate) fn touch_audio(&self, hash: &ContentHash) -> rusqlite::Result<()> {
        let c = self.conn();
        c.execute(
            "UPDATE audio SET last_access = ?2 WHERE hash = ?1",
            params![hash.to_hex(), next_tick(c)?],
        )?;
        Ok(())
    }

    pub(crate) fn forget_audio(&self, hash: &ContentHash) -> rusqlite::Result<()> {
        self.conn()
            .execute("DELETE FROM audio WHERE hash = ?1", [hash.to_hex()])?;
        Ok(())
    }

    /// Records a file now in the cache as the most recently used.
    pub(crate) fn record_audio(
        &self,
        hash: &ContentHash,
        size: i64,
        fetched_ms: i64,
    ) -> rusqlite::Result<()> {
        let c = self.conn();
        c.execute(
            "INSERT INTO audio (hash, size, fetched_ms, last_access) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hash) DO UPDATE SET size = ?2, fetched_ms = ?3, last_access = ?4",
            params![hash.to_hex(), size, fetched_ms, next_tick(c)?],
        )?;
        Ok(())
    }
}

impl Store {
    /// The keys the bounds exclude: entries fetched before `cutoff_ms`, then the least
    /// recently used until the total is at most `max_bytes`. `pinned` keys are never chosen.
    pub(crate) fn audio_victims(
        &self,
        cutoff_ms: i64,
        max_bytes: i64,
        pinned: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ClientError> {
        self.read(|c| {
            let mut victims = Vec::new();
            let mut chosen = std::collections::HashSet::new();
            let mut total = total(c)?;
            let mut stmt = c.prepare(
                "SELECT hash, size FROM audio WHERE fetched_ms < ?1 ORDER BY last_access",
            )?;
            let mut rows = stmt.query([cutoff_ms])?;
            while let Some(r) = rows.next()? {
                let (h, size): (String, i64) = (r.get(0)?, r.get(1)?);
                if !pinned(&h) {
                    total -= size;
                    chosen.insert(h.clone());
                    victims.push(h);
                }
            }
            if total > max_bytes {
                let mut stmt = c.prepare("SELECT hash, size FROM audio ORDER BY last_access")?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    if total <= max_bytes {
                        break;
                    }
                    let (h, size): (String, i64) = (r.get(0)?, r.get(1)?);
                    if !pinned(&h) && !chosen.contains(&h) {
                        total -= size;
                        victims.push(h);
                    }
                }
            }
            Ok(victims)
        })
    }

    /// Drops the rows of `keys`; answers how many went.
    pub(crate) fn forget_audio_keys(&self, keys: &[&String]) -> Result<usize, ClientError> {
        self.write_cache(|tx| {
            let mut n = 0;
            for key in keys {
                n += tx
                    .conn()
                    .execute("DELETE FROM audio WHERE hash = ?1", [key])?;
            }
            Ok(n)
        })
    }

    /// Bytes of cached audio.
    pub(crate) fn audio_bytes(&self) -> Result<u64, ClientError> {
        let n = self.read(total)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every key, most recently used first.
    pub(crate) fn audio_keys_by_recency(&self) -> Result<Vec<String>, ClientError> {
        self.read(|c| keys(c, "SELECT hash FROM audio ORDER BY last_access DESC"))
    }

    /// Every key.
    pub(crate) fn audio_keys(&self) -> Result<Vec<String>, ClientError> {
        self.read(|c| keys(c, "SELECT hash FROM audio"))
    }

    pub(crate) fn is_audio_cached(&self, hash: &ContentHash) -> Result<bool, ClientError> {
        Ok(self
            .read(|c| {
                c.query_row(
                    "SELECT 1 FROM audio WHERE hash = ?1",
                    [hash.to_hex()],
                    |_| Ok(()),
                )
                .optional()
            })?
            .is_some())
    }
}
