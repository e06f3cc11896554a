//! The `sync_state` table: per change log (a scope), the server's cursor and when it was last
//! read. A page of changes is merged in the transaction that stores its cursor.

use rusqlite::types::FromSql;
use rusqlite::{params, Connection, OptionalExtension};

use audio_dedup_core::ThreadId;

use super::{CacheTx, Store};
use crate::error::ClientError;

/// A change log the client follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The caller's thread feed (`threads`).
    Threads,
    /// A thread's messages (`messages:<thread>`).
    Messages(ThreadId),
    /// The caller's library (`library`).
    Library,
}

impl Scope {
    /// The scope's key in `sync_state` (what `Client::last_sync` takes).
    pub(crate) fn key(&self) -> String {
        match self {
            Self::Threads => "threads".to_owned(),
            Self::Messages(t) => format!("messages:{t}"),
            Self::Library => "library".to_owned(),
        }
    }
}

/// What a change log brings, merged by id into its table.
pub(crate) trait LogItem: Sized + Send + 'static {
    /// Merges a page; answers how many items it changed and how many it deleted.
    fn merge_page(tx: &CacheTx<'_>, items: &[Self]) -> rusqlite::Result<(usize, usize)>;
}

impl Store {
    /// The cursor stored for `scope` (`None`: never synced, or reset).
    pub(crate) fn cursor(&self, scope: &Scope) -> Result<Option<String>, ClientError> {
        self.scope_column(&scope.key(), "cursor")
    }

    /// When `scope` (a key) was last synced (ms since the epoch).
    pub(crate) fn last_sync(&self, scope: &str) -> Result<Option<i64>, ClientError> {
        self.scope_column(scope, "last_sync_ms")
    }

    fn scope_column<T: FromSql>(
        &self,
        key: &str,
        column: &'static str,
    ) -> Result<Option<T>, ClientError> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {column} FROM sync_state WHERE scope = ?1"),
                [key],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }

    /// Merges a page of `scope`'s log and stores its cursor and time, in one transaction, so
    /// a crash mid-sync never skips or repeats a change. Answers (changed, deleted).
    pub(crate) fn apply_page<T: LogItem>(
        &self,
        scope: &Scope,
        items: &[T],
        next_cursor: &str,
        now_ms: i64,
    ) -> Result<(usize, usize), ClientError> {
        let key = scope.key();
        self.write_cache(|tx| {
            let counts = T::merge_page(tx, items)?;
            tx.conn().execute(
                "INSERT INTO sync_state (scope, cursor, last_sync_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope) DO UPDATE SET cursor = ?2, last_sync_ms = ?3",
                params![key, next_cursor, now_ms],
            )?;
            Ok(counts)
        })
    }
}

/// Forgets a scope's cursor: its next sync reads the whole log again.
pub(super) fn forget(c: &Connection, scope: &Scope) -> rusqlite::Result<()> {
    c.execute("DELETE FROM sync_state WHERE scope = ?1", [scope.key()])?;
    Ok(())
}
