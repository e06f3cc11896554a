//! The store: the cache database, and the only module that speaks SQL.
//!
//! One SQLite file in WAL mode holds metadata, messages, threads, sync state, LRU bookkeeping
//! and the queue. One file, so an operation can leave the queue in the same transaction that
//! records the server's acknowledgement.
//!
//! Durability per transaction: writes that touch the queue commit with `synchronous=FULL`
//! (an acknowledged enqueue survives power loss); cache-only writes with `NORMAL` (in WAL
//! mode: consistent, and made durable by the next FULL commit or checkpoint). The two write
//! handles say which: [`CacheTx`] (`NORMAL`) and [`DurableTx`] (`FULL`); only a
//! `DurableTx` can change the queue.
//!
//! Every call here blocks on SQLite: async code runs it through `Client::blocking`.
//!
//! One file per table or concern: `schema` (layout, migrations, opening and recovery),
//! `messages`, `threads`, `snapshots`, `audio`, `library`, `queue` (with the acknowledgements
//! and rollbacks that span the queue and a message or library item), `sync_state`, and
//! `maintenance` (counts, the logout wipe).

pub(crate) mod audio;
pub(crate) mod library;
pub(crate) mod maintenance;
pub(crate) mod messages;
pub(crate) mod queue;
mod schema;
mod snapshots;
pub(crate) mod sync_state;
pub(crate) mod threads;
pub(crate) mod uploads;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::error::ClientError;
use crate::updates::SendState;

pub(crate) use schema::Opened;

/// Opening and closing a cache connection take turns, process-wide. SQLite 3.51.1 (what
/// rusqlite 0.38 bundles) can deadlock when one thread closes the last connection to a WAL
/// file while another opens it (a lock-order inversion in its unix VFS, fixed in 3.51.2): a
/// background sender dropping the last clone of a client while the app opens the next one.
static OPEN_CLOSE: Mutex<()> = Mutex::new(());

fn open_close_turn() -> MutexGuard<'static, ()> {
    OPEN_CLOSE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection, closed in its turn (`OPEN_CLOSE`). `None` only while being dropped.
struct Conn(Option<Connection>);

impl Drop for Conn {
    fn drop(&mut self) {
        let _turn = open_close_turn();
        drop(self.0.take());
    }
}

#[derive(Clone)]
pub(crate) struct Store {
    conn: Arc<Mutex<Conn>>,
    path: PathBuf,
    /// Set by `clear_all`: every later write is refused, so nothing of the previous user
    /// is written back after the wipe (a pass or download that was in flight).
    closed: Arc<AtomicBool>,
    /// Write transactions since the last checkpoint request.
    commits: Arc<AtomicU64>,
    /// Notified every `COMMITS_PER_CHECKPOINT` writes: the client's checkpoint task copies
    /// the WAL into the database from a connection of its own.
    checkpoint_due: Arc<tokio::sync::Notify>,
}

/// Writes between two WAL checkpoints: a cached message is about 5 pages, so about SQLite's
/// default of 1,000 pages. SQLite's own checkpoint is off (`wal_autocheckpoint = 0`): it ran
/// inside the write that crossed the limit, a copy and an fsync that stalled whichever sync
/// or send happened to cross it.
const COMMITS_PER_CHECKPOINT: u64 = 200;

/// A write transaction committed with `synchronous=NORMAL`: cache-only writes.
pub(crate) struct CacheTx<'a>(&'a Connection);

/// A write transaction committed with `synchronous=FULL`: anything that touches the queue
/// (and the audio index). It can do all a `CacheTx` does.
pub(crate) struct DurableTx<'a>(CacheTx<'a>);

impl<'a> CacheTx<'a> {
    fn conn(&self) -> &'a Connection {
        self.0
    }
}

impl<'a> Deref for DurableTx<'a> {
    type Target = CacheTx<'a>;

    fn deref(&self) -> &CacheTx<'a> {
        &self.0
    }
}

impl Store {
    /// Opens (or creates) the cache. An unreadable file is moved aside to
    /// `cache.sqlite.corrupt-<ms>` and a fresh one is built; the queue rows that can still be
    /// read are carried over, so queued operations are never dropped silently.
    pub(crate) fn open(dir: &Path, now_ms: i64) -> Result<(Self, Opened), ClientError> {
        let (conn, path, opened) = {
            let _turn = open_close_turn();
            schema::open(dir, now_ms)?
        };
        Ok((
            Self {
                conn: Arc::new(Mutex::new(Conn(Some(conn)))),
                path,
                closed: Arc::default(),
                commits: Arc::default(),
                checkpoint_due: Arc::default(),
            },
            opened,
        ))
    }

    /// Runs `f` on the connection, under its lock.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(c.0.as_mut().ok_or(ClientError::Closed)?)
    }

    /// Refuses every later write but `wipe`'s.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Runs `f` in one transaction committed with `synchronous=NORMAL`. Refused once closed.
    pub(crate) fn write_cache<T>(
        &self,
        f: impl FnOnce(&CacheTx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.write(false, |c| f(&CacheTx(c)))
    }

    /// Runs `f` in one transaction committed with `synchronous=FULL`. Refused once closed.
    pub(crate) fn write_durable<T>(
        &self,
        f: impl FnOnce(&DurableTx<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.write(true, |c| f(&DurableTx(CacheTx(c))))
    }

    fn write<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.with_conn(|c| {
            // Checked under the connection's lock: `wipe` takes it too, so no write lands
            // after it.
            if self.is_closed() {
                return Err(ClientError::Closed);
            }
            let out = Self::commit(c, durable, f)?;
            if self.commits.fetch_add(1, Ordering::Relaxed) + 1 >= COMMITS_PER_CHECKPOINT {
                self.commits.store(0, Ordering::Relaxed);
                self.checkpoint_due.notify_one();
            }
            Ok(out)
        })
    }

    /// Notified when a checkpoint is due (the client's checkpoint task waits on it).
    pub(crate) fn checkpoint_due(&self) -> Arc<tokio::sync::Notify> {
        self.checkpoint_due.clone()
    }

    /// Copies the WAL into the database (`PASSIVE`: it takes no lock writers wait for), from
    /// a connection of its own, so the copy and its fsync happen beside the client's writes,
    /// not inside one of them. Blocking.
    pub(crate) fn checkpoint(&self) -> Result<(), ClientError> {
        use rusqlite::OpenFlags;
        let c = {
            let _turn = open_close_turn();
            Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?
        };
        let c = Conn(Some(c));
        if let Some(conn) = c.0.as_ref() {
            conn.busy_timeout(std::time::Duration::from_secs(1))?;
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    /// A durable write that runs even when closed: the logout wipe.
    fn wipe<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ClientError> {
        self.with_conn(|c| Self::commit(c, true, |c| Ok(f(c)?)))
    }

    fn commit<T>(
        c: &mut Connection,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        c.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        let tx = c.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs a read.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ClientError> {
        self.with_conn(|c| Ok(f(c)?))
    }
}

/// A stored value this version does not know (a row's `send_state` or `state`).
#[derive(Debug, thiserror::Error)]
#[error("unknown {column} in the cache: {value:?}")]
struct UnknownValue {
    column: &'static str,
    value: String,
}

/// A column's value that does not parse, as the error a row read answers.
fn conversion(i: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
}

/// Whether a message or library item is shown (`live`) or deleted (a tombstone, or a local
/// deletion not yet acknowledged). Stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowState {
    Live,
    Deleted,
}

impl RowState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Deleted => "deleted",
        }
    }
}

/// How a send state is stored.
fn send_state_str(s: SendState) -> &'static str {
    match s {
        SendState::Sending => "sending",
        SendState::Sent => "sent",
        SendState::Failed => "failed",
    }
}

/// Column `i` parsed from its text, strictly: a value that does not parse is an error.
fn parsed<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    r.get_ref(i)?
        .as_str()?
        .parse()
        .map_err(|e| conversion(i, e))
}

/// Column `i` as a send state, strictly: an unknown value is an error.
fn send_state_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<SendState> {
    match r.get_ref(i)?.as_str()? {
        "sending" => Ok(SendState::Sending),
        "sent" => Ok(SendState::Sent),
        "failed" => Ok(SendState::Failed),
        other => Err(unknown(i, "send_state", other)),
    }
}

/// Column `i` as a row state, strictly.
fn row_state_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<RowState> {
    match r.get_ref(i)?.as_str()? {
        "live" => Ok(RowState::Live),
        "deleted" => Ok(RowState::Deleted),
        other => Err(unknown(i, "state", other)),
    }
}

fn unknown(i: usize, column: &'static str, value: &str) -> rusqlite::Error {
    conversion(
        i,
        UnknownValue {
            column,
            value: value.to_owned(),
        },
    )
}

/// A count as `usize` (SQLite answers `i64`).
fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

/// What a JSON text column stores for a value that serialises (every domain type does).
fn json_text<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's own checkpoint is off; every `COMMITS_PER_CHECKPOINT` writes the store asks
    /// for one, and `checkpoint` (from its own connection) keeps the WAL bounded: 1,000
    /// writes of ~16 KiB would make a 16 MB WAL without it.
    #[test]
    fn checkpoints_are_asked_for_and_keep_the_wal_bounded() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(dir.path(), 1).expect("open");
        let due = store.checkpoint_due();
        let value = "x".repeat(16 * 1024);
        let (mut asked, mut largest) = (0, 0);
        for i in 0..1000 {
            store
                .write_cache(|tx| {
                    tx.conn().execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('scratch', ?1)",
                        [format!("{i}{value}")],
                    )?;
                    Ok(())
                })
                .expect("write");
            if due.notified().now_or_never().is_some() {
                asked += 1;
                store.checkpoint().expect("checkpoint");
            }
            let wal = std::fs::metadata(dir.path().join("cache.sqlite-wal")).map_or(0, |m| m.len());
            largest = largest.max(wal);
        }
        assert_eq!(asked, 1000 / COMMITS_PER_CHECKPOINT as usize);
        assert!(largest < 8 << 20, "the WAL reached {largest} bytes");
    }

    /// Two threads open and drop stores on one file over and over. With SQLite 3.51.1 an
    /// open racing the close of the last connection can deadlock (seen in the benchmark's
    /// cold opens; rare, so this is a guard, not a reproduction); the turns prevent it.
    #[test]
    fn opens_and_closes_on_one_file_from_two_threads_never_deadlock() {
        let dir = tempfile::tempdir().expect("dir");
        drop(Store::open(dir.path(), 1).expect("create"));
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let (path, done) = (dir.path().to_owned(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..500 {
                    let (store, _) = Store::open(&path, 1).expect("open");
                    store.queue_counts().expect("read");
                }
                let _ = done.send(());
            });
        }
        for _ in 0..2 {
            finished
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("a thread is stuck opening or closing the cache");
        }
    }
}
