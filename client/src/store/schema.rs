//! The cache's layout: the tables, the migrations from older layouts, and opening a file
//! (rebuilding an unreadable one, carrying over its queue).

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use crate::error::ClientError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY,
    json TEXT NOT NULL,
    -- The thread list, kept as columns so it is read without parsing JSON or counting
    -- messages (`threads::refresh_summary` keeps them after every change of the thread's
    -- messages): when the thread was created, its last activity (the newest live message,
    -- or the creation), the newest position cached, the newest live message (its id, author,
    -- the start of its text, whether it has audio), the caller's read marker and how many
    -- live messages of others are after it.
    created_at INTEGER,
    last_at INTEGER,
    last_seq INTEGER,
    preview_id TEXT,
    preview_author TEXT,
    preview_text TEXT,
    preview_audio INTEGER,
    read_seq INTEGER NOT NULL DEFAULT 0,
    unread INTEGER NOT NULL DEFAULT 0,
    -- What the list shows of the thread itself, as columns (members comma-separated).
    title TEXT,
    members TEXT,
    created_by TEXT,
    -- The newest position of the thread's log merged here (membership entries too).
    log_seq INTEGER,
    -- The server's summary from the last feed entry (the log's position then, the caller's
    -- unread count, the preview as JSON): what the list shows while the cache has not
    -- synced the log that far.
    srv_seq INTEGER,
    srv_unread INTEGER,
    srv_preview TEXT
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
    -- The message's plain text, if any (shown in lists without parsing `json`).
    text TEXT,
    -- The message as the server answers it (or as created locally).
    json TEXT NOT NULL,
    -- While unsent: what to send ({snapshot, audio}); NULL once the server has it.
    draft TEXT,
    error TEXT,
    PRIMARY KEY (thread_id, id)
);
CREATE INDEX IF NOT EXISTS messages_by_position ON messages (thread_id, seq);
CREATE INDEX IF NOT EXISTS messages_by_local_order ON messages (thread_id, local_order);
-- Unsent messages in local order: a page of the thread's tail reads only these, not the thread.
CREATE INDEX IF NOT EXISTS messages_unsent ON messages (thread_id, local_order) WHERE seq IS NULL;
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
-- Parted uploads in progress: the open session (JSON), so a restart resumes it.
CREATE TABLE IF NOT EXISTS uploads (
    hash TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
"#;

/// Layout changes, applied in order by `open_checked` to an older file (`SCHEMA` has already
/// created the tables and indexes that are new): `(from version, SQL)`.
const MIGRATIONS: [(&str, &str); 5] = [
    (
        "1",
        // Why an operation waits: an explicit Retry-After is kept apart from the backoff, so
        // `process_queue` can skip the backoff and still honour the server. Lanes get a prefix,
        // so a thread named `library` is not the library's lane.
        "ALTER TABLE queue ADD COLUMN retry_after_ms INTEGER;
         ALTER TABLE queue ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0;
         UPDATE queue SET lane = 'thread:' || lane;",
    ),
    (
        "2",
        // Paged reads of a thread's tail (`SCHEMA` creates it; named here as what changed).
        "CREATE INDEX IF NOT EXISTS messages_unsent ON messages (thread_id, local_order) WHERE seq IS NULL;",
    ),
    // Version 3 to 4: columns only (`ADDED_COLUMNS`).
    ("3", ""),
    // Version 4 to 5: the thread list's columns (`ADDED_COLUMNS`), filled from the cache.
    ("4", ""),
    // Version 5 to 6: the server's summary beside the thread's own (`ADDED_COLUMNS`).
    ("5", ""),
];

/// Columns added to existing tables since version 3, as `(table, column, declaration)`.
/// `SCHEMA` declares them for a new file; a migrated file gets each one it lacks, after
/// `MIGRATIONS` (so a file of any older version, however it was made, ends with all of them).
const ADDED_COLUMNS: [(&str, &str, &str); 17] = [
    ("messages", "text", "TEXT"),
    ("threads", "created_at", "INTEGER"),
    ("threads", "last_at", "INTEGER"),
    ("threads", "last_seq", "INTEGER"),
    ("threads", "preview_id", "TEXT"),
    ("threads", "preview_author", "TEXT"),
    ("threads", "preview_text", "TEXT"),
    ("threads", "preview_audio", "INTEGER"),
    ("threads", "read_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("threads", "unread", "INTEGER NOT NULL DEFAULT 0"),
    ("threads", "title", "TEXT"),
    ("threads", "members", "TEXT"),
    ("threads", "created_by", "TEXT"),
    ("threads", "log_seq", "INTEGER"),
    ("threads", "srv_seq", "INTEGER"),
    ("threads", "srv_unread", "INTEGER"),
    ("threads", "srv_preview", "TEXT"),
];

/// What needs `ADDED_COLUMNS` in place: run on every open, after the migrations.
const AFTER_COLUMNS: &str = "
CREATE INDEX IF NOT EXISTS threads_by_activity ON threads (last_at, id);";

/// Adds each of `ADDED_COLUMNS` that its table lacks.
fn add_missing_columns(c: &Connection) -> rusqlite::Result<()> {
    for (table, column, decl) in ADDED_COLUMNS {
        let has: i64 = c.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if has == 0 {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl};"))?;
        }
    }
    Ok(())
}

/// Bumped when the layout changes; an older file is migrated (`MIGRATIONS`), an unknown one
/// rebuilt from the server (the queue is carried over).
const SCHEMA_VERSION: &str = "6";

/// What opening found.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// Set when the file was unreadable and moved aside.
    pub moved_to: Option<PathBuf>,
    /// Queued operations carried over from the unreadable file.
    pub salvaged: usize,
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.pragma_update(None, "journal_mode", "WAL")?;
    // Checkpoints run beside the writes, from the client's checkpoint task (store/mod.rs).
    c.pragma_update(None, "wal_autocheckpoint", 0)?;
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
            add_missing_columns(&tx)?;
            super::threads::fill_list_columns(&tx)?;
            super::threads::refresh_all_summaries(&tx)?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema'",
                [SCHEMA_VERSION],
            )?;
            tx.commit()?;
        }
    }
    c.execute_batch(AFTER_COLUMNS)?;
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

/// Opens (or creates) the cache. An unreadable file is moved aside to
/// `cache.sqlite.corrupt-<ms>` and a fresh one is built; the queue rows that can still be
/// read are carried over, so queued operations are never dropped silently.
pub(super) fn open(dir: &Path, now_ms: i64) -> Result<(Connection, PathBuf, Opened), ClientError> {
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
                    let sql = format!("INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})");
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
    Ok((conn, path, opened))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(c: &Connection) -> String {
        c.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .expect("schema version")
    }

    fn has_index(c: &Connection, name: &str) -> bool {
        c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .expect("sqlite_master")
            == 1
    }

    /// A file of the previous layout (version 2: no `messages_unsent`) opens in place, keeps
    /// its rows, and gets the index.
    #[test]
    fn a_version_2_cache_gets_the_paging_index_in_place() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cache.sqlite");
        {
            let c = open_checked(&path).expect("create");
            c.execute_batch(
                "DROP INDEX messages_unsent;
                 INSERT INTO messages (thread_id, id, seq, local_order, send_state, state, json,
                                       author, created_at)
                    VALUES ('t', 'm', NULL, 1, 'sending', 'live', '{}', 'me', 1);
                 UPDATE meta SET value = '2' WHERE key = 'schema';",
            )
            .expect("back to version 2");
            assert!(!has_index(&c, "messages_unsent"));
        }
        let (c, _, opened) = open(dir.path(), 1).expect("open");
        assert!(opened.moved_to.is_none(), "migrated, not rebuilt");
        assert_eq!(version(&c), SCHEMA_VERSION);
        assert!(has_index(&c, "messages_unsent"));
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1, "the unsent message is still there");
    }

    /// A version-4 file (threads without the list's columns) gets them in place, filled
    /// from each thread's JSON and its cached messages.
    #[test]
    fn a_version_4_cache_gets_the_thread_list_in_place() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cache.sqlite");
        {
            let c = open_checked(&path).expect("create");
            // Version 4's threads table, as it was.
            let mut sql = String::from(
                "DROP TABLE threads; CREATE TABLE threads (id TEXT PRIMARY KEY, json TEXT NOT NULL);",
            );
            sql.push_str(
                r#"INSERT INTO threads (id, json) VALUES ('t', '{"id":"t","title":"Jam","members":["bob","alice"],"created_by":"bob","created_at":5}');
                 INSERT INTO messages (thread_id, id, seq, local_order, send_state, state, json,
                                       author, created_at, text)
                    VALUES ('t', 'm', 3, 3, 'sent', 'live', '{}', 'bob', 9, 'hi');
                 UPDATE meta SET value = '4' WHERE key = 'schema';"#,
            );
            c.execute_batch(&sql).expect("back to version 4");
        }
        let (c, _, opened) = open(dir.path(), 1).expect("open");
        assert!(opened.moved_to.is_none(), "migrated, not rebuilt");
        assert_eq!(version(&c), SCHEMA_VERSION);
        let row: (String, String, i64, i64, String, i64) = c
            .query_row(
                "SELECT title, members, last_at, last_seq, preview_text, unread FROM threads",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .expect("the thread, with its list");
        assert_eq!(
            row,
            ("Jam".into(), "bob,alice".into(), 9, 3, "hi".into(), 1)
        );
    }

    /// A version-3 file (no `messages.text`) gets the column in place and keeps its rows.
    #[test]
    fn a_version_3_cache_gets_the_text_column_in_place() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cache.sqlite");
        {
            let c = open_checked(&path).expect("create");
            c.execute_batch(
                "ALTER TABLE messages DROP COLUMN text;
                 INSERT INTO messages (thread_id, id, seq, local_order, send_state, state, json,
                                       author, created_at)
                    VALUES ('t', 'm', 1, 1, 'sent', 'live', '{}', 'bob', 1);
                 UPDATE meta SET value = '3' WHERE key = 'schema';",
            )
            .expect("back to version 3");
        }
        let (c, _, opened) = open(dir.path(), 1).expect("open");
        assert!(opened.moved_to.is_none(), "migrated, not rebuilt");
        assert_eq!(version(&c), SCHEMA_VERSION);
        let text: Option<String> = c
            .query_row("SELECT text FROM messages WHERE id = 'm'", [], |r| r.get(0))
            .expect("the row, with the new column");
        assert_eq!(text, None);
    }
}
