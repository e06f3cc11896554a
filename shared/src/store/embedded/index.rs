//! `TransactionalIndex` over SQLite. Reads use a small pool of read connections; writes go
//! to one writer thread that commits queued transactions together (group commit): each
//! transaction runs in its own savepoint, so one failing condition rolls back only itself,
//! and the whole group costs one fsync.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::ports::{Expect, IndexName, Item, Key, Query, TransactionalIndex, TxnError, WriteOp};

/// SQLite `synchronous` for the index. `Full` makes every acknowledged write survive power
/// loss, which the protocol needs (a blob is deleted only after `Deleting` is durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL, sk TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL,
    work_pk TEXT, work_sk TEXT,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_work ON items(work_pk, work_sk) WHERE work_pk IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    pk TEXT NOT NULL, sk TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (pk, sk, name)
) WITHOUT ROWID;
";

const MAX_GROUP: usize = 256;
const READERS: usize = 4;

type Reply = oneshot::Sender<Result<(), TxnError>>;

#[derive(Clone)]
pub struct SqliteIndex {
    writer: mpsc::Sender<(Vec<WriteOp>, Reply)>,
    readers: Arc<Vec<Mutex<Connection>>>,
    /// One permit per reader connection: a read waits here (async) rather than parking a
    /// blocking thread on a busy connection, so load cannot pile up threads.
    read_permits: Arc<tokio::sync::Semaphore>,
    /// The keys each committed transaction wrote, in commit order: the local stand-in for
    /// DynamoDB Streams (live updates read it). Lossy: a lagging subscriber skips ahead.
    commits: tokio::sync::broadcast::Sender<Key>,
}

/// Committed keys a subscriber may lag behind by before it skips ahead.
const COMMIT_FEED: usize = 4096;

/// Retries of a read that met `SQLITE_BUSY` (1, 2, 4 … 32 ms apart: 63 ms in all).
const READ_BUSY_RETRIES: usize = 6;

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

fn open(path: &Path, sync: Synchronous) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(db_err)?;
    let sync = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY;"
    ))
    .map_err(db_err)?;
    Ok(conn)
}

impl SqliteIndex {
    pub fn open(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        let writer_conn = open(path, sync)?;
        writer_conn.execute_batch(SCHEMA).map_err(db_err)?;
        let readers = (0..READERS)
            .map(|_| open(path, sync).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel::<(Vec<WriteOp>, Reply)>();
        let (commits, _) = tokio::sync::broadcast::channel(COMMIT_FEED);
        let feed = commits.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, feed))
            .map_err(StoreError::Io)?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(readers),
            read_permits: Arc::new(tokio::sync::Semaphore::new(READERS)),
            commits,
        })
    }

    /// The keys of every transaction committed from now on.
    pub fn subscribe_commits(&self) -> tokio::sync::broadcast::Receiver<Key> {
        self.commits.subscribe()
    }

    /// Runs `f` on a free reader connection. A reader can meet `SQLITE_BUSY` at once, without
    /// the busy timeout, while the writer checkpoints the WAL: that is retried a few times,
    /// then answered as `Unavailable` (503 with Retry-After), never as an internal error.
    async fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("index closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Holding a permit, some reader is free; the fallback covers one still being released.
            let guard = readers
                .iter()
                .find_map(|m| m.try_lock().ok())
                .unwrap_or_else(|| readers[0].lock().unwrap_or_else(|p| p.into_inner()));
            let (mut retries, mut pause) = (0, std::time::Duration::from_millis(1));
            loop {
                match f(&guard) {
                    Err(e) if is_busy(&e) && retries < READ_BUSY_RETRIES => {
                        std::thread::sleep(pause);
                        (retries, pause) = (retries + 1, pause * 2);
                    }
                    Err(e) if is_busy(&e) => {
                        tracing::warn!(error = %e, "index reader still busy after retries");
                        return Err(StoreError::Unavailable("the index is busy".into()));
                    }
                    other => return other.map_err(db_err),
                }
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")))?
    }
}

fn row_item(r: &rusqlite::Row<'_>) -> Result<Item, rusqlite::Error> {
    let pair = |a: Option<String>, b: Option<String>| a.zip(b).map(|(pk, sk)| Key { pk, sk });
    Ok(Item {
        key: Key {
            pk: r.get(0)?,
            sk: r.get(1)?,
        },
        version: r.get::<_, i64>(2)? as u64,
        body: r.get(3)?,
        work_key: pair(r.get(4)?, r.get(5)?),
    })
}

const COLS: &str = "pk, sk, version, body, work_pk, work_sk";

fn get_item(conn: &Connection, key: &Key) -> Result<Option<Item>, rusqlite::Error> {
    conn.prepare_cached(&format!(
        "SELECT {COLS} FROM items WHERE pk = ?1 AND sk = ?2"
    ))?
    .query_row(params![key.pk, key.sk], row_item)
    .optional()
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<(Vec<WriteOp>, Reply)>,
    commits: tokio::sync::broadcast::Sender<Key>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let results = apply_group(&mut conn, group.iter().map(|(ops, _)| ops));
        match results {
            Ok(results) => {
                for ((ops, reply), r) in group.into_iter().zip(results) {
                    // Nobody listening is the common case: `send` then just returns an error.
                    if r.is_ok() && commits.receiver_count() > 0 {
                        for op in &ops {
                            if let WriteOp::Put { item, .. } = op {
                                let _ = commits.send(item.key.clone());
                            }
                        }
                    }
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite group commit failed");
                for (_, reply) in group {
                    let _ = reply.send(Err(TxnError::Store(StoreError::Unavailable(
                        "index commit failed".into(),
                    ))));
                }
            }
        }
    }
}

/// Applies each transaction in its own savepoint inside one SQLite transaction.
fn apply_group<'a>(
    conn: &mut Connection,
    txns: impl Iterator<Item = &'a Vec<WriteOp>>,
) -> Result<Vec<Result<(), TxnError>>, rusqlite::Error> {
    // IMMEDIATE: the write lock is taken up front, where the busy timeout applies. A deferred
    // transaction reads first and then upgrades, and an upgrade that meets another writer
    // fails at once with SQLITE_BUSY, whatever the timeout.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::new();
    for ops in txns {
        let sp = tx.unchecked_transaction_savepoint()?;
        let r = apply_one(&sp, ops);
        match r {
            Ok(()) => sp.commit()?,
            Err(_) => sp.rollback_and_drop()?,
        }
        results.push(r);
    }
    tx.commit()?;
    Ok(results)
}

trait SavepointExt {
    fn unchecked_transaction_savepoint(&self) -> Result<Sp<'_>, rusqlite::Error>;
}

/// A savepoint on a shared transaction reference (rusqlite's needs `&mut`).
struct Sp<'c> {
    conn: &'c Connection,
    done: bool,
}

impl SavepointExt for rusqlite::Transaction<'_> {
    fn unchecked_transaction_savepoint(&self) -> Result<Sp<'_>, rusqlite::Error> {
        self.execute_batch("SAVEPOINT op")?;
        Ok(Sp {
            conn: self,
            done: false,
        })
    }
}

impl Sp<'_> {
    fn commit(mut self) -> Result<(), rusqlite::Error> {
        self.done = true;
        self.conn.execute_batch("RELEASE op")
    }

    fn rollback_and_drop(mut self) -> Result<(), rusqlite::Error> {
        self.done = true;
        self.conn.execute_batch("ROLLBACK TO op; RELEASE op")
    }
}

impl Drop for Sp<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK TO op; RELEASE op");
        }
    }
}

impl std::ops::Deref for Sp<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

fn current_version(conn: &Connection, key: &Key) -> Result<Option<u64>, rusqlite::Error> {
    conn.prepare_cached("SELECT version FROM items WHERE pk = ?1 AND sk = ?2")?
        .query_row(params![key.pk, key.sk], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v as u64))
}

fn holds(current: Option<u64>, expect: Expect) -> bool {
    match expect {
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current == Some(v),
        Expect::Any => true,
    }
}

fn apply_one(conn: &Connection, ops: &[WriteOp]) -> Result<(), TxnError> {
    let sql = |e: rusqlite::Error| TxnError::Store(db_err(e));
    for (i, op) in ops.iter().enumerate() {
        let (key, expect) = match op {
            WriteOp::Put { item, expect } => (&item.key, *expect),
            WriteOp::Check { key, expect } => (key, *expect),
            WriteOp::Bump { .. } => continue,
        };
        if !holds(current_version(conn, key).map_err(sql)?, expect) {
            return Err(TxnError::Rejected { op_index: i });
        }
    }
    for op in ops {
        match op {
            WriteOp::Put { item, expect } => {
                let version = match expect {
                    Expect::Any => current_version(conn, &item.key)
                        .map_err(sql)?
                        .map_or(1, |v| v + 1),
                    _ => item.version,
                };
                let (wpk, wsk) = item
                    .work_key
                    .as_ref()
                    .map(|k| (k.pk.as_str(), k.sk.as_str()))
                    .unzip();
                conn.prepare_cached(
                    "INSERT INTO items (pk, sk, version, body, work_pk, work_sk)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(pk, sk) DO UPDATE SET version = excluded.version, body = excluded.body,
                       work_pk = excluded.work_pk, work_sk = excluded.work_sk",
                )
                .and_then(|mut s| {
                    s.execute(params![item.key.pk, item.key.sk, version as i64, item.body, wpk, wsk])
                })
                .map_err(sql)?;
            }
            WriteOp::Check { .. } => {}
            WriteOp::Bump { key, deltas } => {
                for (name, d) in deltas {
                    conn.prepare_cached(
                        "INSERT INTO counters (pk, sk, name, value) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(pk, sk, name) DO UPDATE SET value = value + excluded.value",
                    )
                    .and_then(|mut s| s.execute(params![key.pk, key.sk, name, d]))
                    .map_err(sql)?;
                }
            }
        }
    }
    Ok(())
}

impl SqliteIndex {
    /// Every item and the summed counters of partition `counters_pk` and of every partition
    /// `counters_pk#…` (the stats shards'; tests and tooling).
    pub async fn dump(
        &self,
        counters_pk: &str,
    ) -> Result<(Vec<Item>, BTreeMap<String, i64>), StoreError> {
        let items = self
            .read(|c| {
                let mut stmt = c.prepare(&format!("SELECT {COLS} FROM items ORDER BY pk, sk"))?;
                let rows = stmt.query_map([], row_item)?;
                rows.collect()
            })
            .await?;
        let pk = counters_pk.to_owned();
        let counters = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT name, SUM(value) FROM counters
                     WHERE pk = ?1 OR substr(pk, 1, length(?1) + 1) = ?1 || '#' GROUP BY name",
                )?;
                let rows = stmt.query_map(params![pk], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?;
                rows.collect()
            })
            .await?;
        Ok((items, counters))
    }
}

impl TransactionalIndex for SqliteIndex {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        // A point read by primary key takes microseconds once its pages are cached: run it
        // on this thread when a reader is free. The hop to the blocking pool (two context
        // switches and a futex wake per read) cost more than the read under load.
        if let Some(conn) = self.readers.iter().find_map(|m| m.try_lock().ok()) {
            return get_item(&conn, key).map_err(db_err);
        }
        let key = key.clone();
        self.read(move |c| get_item(c, &key)).await
    }

    async fn query(&self, q: &Query) -> Result<Vec<Item>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            let (p, s) = match q.index {
                IndexName::Primary => ("pk", "sk"),
                IndexName::Work => ("work_pk", "work_sk"),
            };
            // Bounds as ranges on the index (not functions of the column), so SQLite seeks to
            // the cursor instead of scanning the partition from its start.
            let mut sql = format!("SELECT {COLS} FROM items WHERE {p} = ?1");
            let mut args: Vec<String> = vec![q.pk.clone()];
            let mut bound = |sql: &mut String, op: &str, v: String| {
                args.push(v);
                sql.push_str(&format!(" AND {s} {op} ?{}", args.len()));
            };
            // One lower bound only: given two, SQLite seeks with one and filters with the
            // other, which can mean a scan from the start of the prefix.
            match &q.after {
                Some(after) if *after >= q.sk_prefix => bound(&mut sql, ">", after.clone()),
                _ if !q.sk_prefix.is_empty() => bound(&mut sql, ">=", q.sk_prefix.clone()),
                _ => {}
            }
            if !q.sk_prefix.is_empty() {
                // Keys are ASCII; U+10FFFF sorts after every one of them (bytewise).
                bound(&mut sql, "<", format!("{}\u{10FFFF}", q.sk_prefix));
            }
            if let Some(upto) = &q.upto {
                bound(&mut sql, "<=", upto.clone());
            }
            sql.push_str(&format!(
                " ORDER BY {s} LIMIT {}",
                q.limit.min(i64::MAX as usize)
            ));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), row_item)?;
            rows.collect()
        })
        .await
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), TxnError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((ops, tx))
            .map_err(|_| TxnError::Store(StoreError::Unavailable("index writer stopped".into())))?;
        rx.await
            .map_err(|_| TxnError::Store(StoreError::Unavailable("index writer stopped".into())))?
    }

    async fn counters(&self, pk: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        let pk = pk.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, SUM(value) FROM counters WHERE pk = ?1 GROUP BY name",
            )?;
            let rows = stmt.query_map(params![pk], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod stress_tests {
    use super::*;
    use crate::ports::{Expect, Item, Key, TransactionalIndex, WriteOp};

    /// Readers on every connection while the writer commits and another connection forces
    /// WAL checkpoints (what makes a reader meet `SQLITE_BUSY` at once): no read fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reads_never_fail_while_the_writer_commits_and_the_wal_is_checkpointed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("index.sqlite");
        let index = SqliteIndex::open(&path, Synchronous::Normal).expect("open");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let conn = Connection::open(&path).expect("open");
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && rounds < 100_000 {
                    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                    rounds += 1;
                }
            })
        };
        let mut readers = tokio::task::JoinSet::new();
        for r in 0..8 {
            let index = index.clone();
            readers.spawn(async move {
                for i in 0..400u32 {
                    let key = Key::new(format!("P{}", (i + r) % 20), "S");
                    index
                        .get(&key)
                        .await
                        .map_err(|e| format!("read {i}: {e}"))?;
                }
                Ok::<(), String>(())
            });
        }
        for i in 0..400u32 {
            let op = WriteOp::Put {
                item: Item {
                    key: Key::new(format!("P{}", i % 20), format!("S{i}")),
                    version: 1,
                    body: "{}".into(),
                    work_key: None,
                },
                expect: Expect::Any,
            };
            index.transact(vec![op]).await.expect("write");
        }
        let mut failures = Vec::new();
        while let Some(r) = readers.join_next().await {
            if let Err(e) = r.expect("reader task") {
                failures.push(e);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        checkpointer.join().expect("checkpointer");
        assert!(failures.is_empty(), "{failures:?}");
    }
}
