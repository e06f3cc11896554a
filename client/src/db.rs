//! The cache database: one SQLite file in WAL mode for metadata, messages, threads, sync
//! state, LRU bookkeeping and the queue. One file, so an operation can leave the queue in
//! the same transaction that records the server's acknowledgement.
//!
//! Durability per transaction: writes that touch the queue commit with
//! `synchronous=FULL` (an acknowledged enqueue survives power loss); cache-only writes with
//! `NORMAL` (in WAL mode: consistent, and made durable by the next FULL commit or checkpoint).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Transaction};

use crate::error::ClientError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    thread_id TEXT NOT NULL,
    id TEXT NOT NULL,
    -- The server's log position of the message's latest change; NULL while only local.
    seq INTEGER,
    -- Order of local creation, so unsent messages sort after the synced ones, in order.
    local_order INTEGER NOT NULL,
    -- sending | sent | failed
    send_state TEXT NOT NULL,
    -- live | deleted
    state TEXT NOT NULL,
    -- What lists show, as columns: reading 10,000 messages must not parse 10,000 JSON texts.
    author TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    audio_hash BLOB,
    audio_format TEXT,
    snapshot_size INTEGER,
    snapshot_sha BLOB,
    -- The message as the server answers it (or as created locally).
    json TEXT NOT NULL,
    -- While unsent: what to send ({snapshot, audio}); NULL once the server has it.
    draft TEXT,
    error TEXT,
    PRIMARY KEY (thread_id, id)
);
CREATE INDEX IF NOT EXISTS messages_by_position ON messages (thread_id, seq);
CREATE INDEX IF NOT EXISTS messages_by_local_order ON messages (thread_id, local_order);
-- Message ids are global: a snapshot is fetched by message id alone.
CREATE INDEX IF NOT EXISTS messages_by_id ON messages (id);
CREATE TABLE IF NOT EXISTS sync_state (
    scope TEXT PRIMARY KEY,
    cursor TEXT,
    last_sync_ms INTEGER
);
CREATE TABLE IF NOT EXISTS snapshots (
    message_id TEXT PRIMARY KEY,
    json BLOB NOT NULL,
    last_access INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_access ON snapshots (last_access);
CREATE TABLE IF NOT EXISTS audio (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    fetched_ms INTEGER NOT NULL,
    last_access INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audio_by_access ON audio (last_access);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Operations run in order within a lane (a thread, `library`, `uploads`); lanes are
    -- independent, so one stuck operation never blocks another thread.
    lane TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- Another operation that must succeed first (upload, then the message that uses it).
    depends_on INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_due_ms INTEGER NOT NULL,
    -- pending | failed
    state TEXT NOT NULL,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    -- Set when the server asked for a pause (Retry-After): no attempt before it, not even
    -- from `process_queue`, which skips the backoff (`next_due_ms`) but not this.
    retry_after_ms INTEGER,
    -- How many of `attempts` got no answer at all (offline). They back off like the others
    -- but never use up the retry budget: being offline is not a reason to give up.
    unanswered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_by_lane ON queue (lane, id);
CREATE TABLE IF NOT EXISTS library (
    id TEXT PRIMARY KEY,
    -- The server's log position of the item's latest change; NULL while only local.
    seq INTEGER,
    -- sending | sent | failed
    send_state TEXT NOT NULL,
    -- live | deleted
    state TEXT NOT NULL,
    title TEXT,
    audio_hash TEXT,
    -- Known when the audio came from a local file or a message; the server does not say.
    audio_format TEXT,
    -- Set while the item names another person's message (saved from it) and is unsent.
    source_message TEXT,
    updated_at INTEGER NOT NULL,
    -- Order of local writes, so lists are stable: synced items by position, unsent after.
    local_order INTEGER NOT NULL,
    error TEXT
);
"#;

/// Layout changes since version 1, applied in order by `open_checked` to an older file
/// (`SCHEMA` has already created the tables that are new).
const MIGRATIONS: [(&str, &str); 1] = [(
    "1",
    // Why an operation waits: an explicit Retry-After is kept apart from the backoff, so
    // `process_queue` can skip the backoff and still honour the server. Lanes get a prefix,
    // so a thread named `library` is not the library's lane.
    "ALTER TABLE queue ADD COLUMN retry_after_ms INTEGER;
     ALTER TABLE queue ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0;
     UPDATE queue SET lane = 'thread:' || lane;",
)];

/// Bumped when the layout changes; an older file is migrated (`MIGRATIONS`), an unknown one
/// rebuilt from the server (the queue is carried over).
const SCHEMA_VERSION: &str = "2";

#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Set by `clear_all`: every later write is refused, so nothing of the previous user
    /// is written back after the wipe (a pass or download that was in flight).
    closed: Arc<AtomicBool>,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Set when the file was unreadable and moved aside.
    pub moved_to: Option<PathBuf>,
    /// Queued operations carried over from the unreadable file.
    pub salvaged: usize,
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn open_checked(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    configure(&c)?;
    c.execute_batch(SCHEMA)?;
    let version: Option<String> = c
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .ok();
    match version.as_deref() {
        None => {
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            let Some(at) = MIGRATIONS.iter().position(|(from, _)| *from == v) else {
                return Err(rusqlite::Error::InvalidQuery);
            };
            let tx = c.unchecked_transaction()?;
            for (_, sql) in &MIGRATIONS[at..] {
                tx.execute_batch(sql)?;
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema'",
                [SCHEMA_VERSION],
            )?;
            tx.commit()?;
        }
    }
    // No integrity scan here (it reads every page, so cold opens would grow with the cache):
    // a foreign or torn header fails the statements above; damage deeper in the file shows
    // up as errors on the reads that meet it, which `Client::open` callers see as errors,
    // never as a crash.
    Ok(c)
}

/// What is carried over from an unreadable cache file: the queue (with its ids, which
/// `depends_on` names), and the messages not yet acknowledged (unsent creates, pending
/// deletions), without which a queued create would have nothing to send. Library items need
/// nothing: their queued operations carry everything they send.
///
/// (table, columns written, what is read for them, tail). Only columns every layout has are
/// read, so a file of an older layout yields its rows too; its lanes get their prefix.
const SALVAGED: [(&str, &str, &str, &str); 2] = [
    (
        "messages",
        MESSAGE_COLS,
        MESSAGE_COLS,
        "WHERE send_state != 'sent'",
    ),
    (
        "queue",
        "id, lane, kind, payload, depends_on, attempts, next_due_ms, state, last_error, created_ms",
        "id, CASE WHEN lane = 'library' OR instr(lane, ':') > 0 THEN lane ELSE 'thread:' || lane END,
         kind, payload, depends_on, attempts, next_due_ms, state, last_error, created_ms",
        "ORDER BY id",
    ),
];

const MESSAGE_COLS: &str = "thread_id, id, seq, local_order, send_state, state, json, draft, error, author, created_at, audio_hash, audio_format, snapshot_size, snapshot_sha";

/// The rows an unreadable file still yields for `SELECT {select} FROM {table} {tail}`,
/// read-only.
fn salvage(path: &Path, table: &str, select: &str, tail: &str) -> Vec<Vec<Value>> {
    let Ok(c) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Vec::new();
    };
    let Ok(mut stmt) = c.prepare(&format!("SELECT {select} FROM {table} {tail}")) else {
        return Vec::new();
    };
    let n = stmt.column_count();
    let rows = stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect());
    match rows {
        Ok(rows) => rows.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

impl Db {
    /// Opens (or creates) the cache. An unreadable file is moved aside to
    /// `cache.sqlite.corrupt-<ms>` and a fresh one is built; the queue rows that can still be
    /// read are carried over, so queued operations are never dropped silently.
    pub fn open(dir: &Path, now_ms: i64) -> Result<(Self, Opened), ClientError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("cache.sqlite");
        let mut opened = Opened::default();
        let conn = match open_checked(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cache unreadable; rebuilding");
                let aside = dir.join(format!("cache.sqlite.corrupt-{now_ms}"));
                std::fs::rename(&path, &aside)?;
                for ext in ["-wal", "-shm"] {
                    let side = dir.join(format!("cache.sqlite{ext}"));
                    if side.exists() {
                        let _ = std::fs::rename(
                            &side,
                            dir.join(format!("cache.sqlite.corrupt-{now_ms}{ext}")),
                        );
                    }
                }
                let c = open_checked(&path).map_err(ClientError::Db)?;
                {
                    let tx = c.unchecked_transaction().map_err(ClientError::Db)?;
                    for (table, cols, select, tail) in SALVAGED {
                        let rows = salvage(&aside, table, select, tail);
                        let marks = vec!["?"; cols.split(',').count()].join(", ");
                        let sql =
                            format!("INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})");
                        for r in &rows {
                            tx.execute(&sql, rusqlite::params_from_iter(r))
                                .map_err(ClientError::Db)?;
                        }
                        if table == "queue" {
                            opened.salvaged = rows.len();
                        }
                    }
                    tx.commit().map_err(ClientError::Db)?;
                }
                opened.moved_to = Some(aside);
                c
            }
        };
        Ok((
            Self {
                conn: Arc::new(Mutex::new(conn)),
                path,
                closed: Arc::default(),
            },
            opened,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses every later write but `wipe`'s.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Runs `f` in one transaction. `durable`: commit with `synchronous=FULL` (anything that
    /// touches the queue); otherwise `NORMAL`. Refused once closed.
    pub fn write<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, ClientError> {
        let mut c = self.lock();
        // Checked under the connection's lock: `wipe` takes it too, so no write lands after it.
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        Self::commit(&mut c, durable, f)
    }

    /// A durable write that runs even when closed: the logout wipe.
    pub fn wipe<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, ClientError> {
        let mut c = self.lock();
        Self::commit(&mut c, true, f)
    }

    fn commit<T>(
        c: &mut Connection,
        durable: bool,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, ClientError> {
        c.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        let tx = c.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs a read.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ClientError> {
        let c = self.lock();
        Ok(f(&c)?)
    }
}
