//! Threads: answered from the cache at once; synced from the server in the background when
//! the last sync is older than `thread_sync_interval` (60 s), or when forced. The server's
//! data wins.

use audio_dedup_core::{ThreadId, ThreadView, UserId};

use crate::api::ThreadInfo;
use crate::error::ClientError;
use crate::queue::{Lane, QueuedOp};
use crate::store::sync_state::Scope;
pub use crate::store::threads::{Preview, ThreadListPage, ThreadListPosition, ThreadSummary};
use crate::sync::SYNC_PAGE;
use crate::updates::Update;
use crate::Client;

impl Client {
    /// The cached threads, at once. If the last sync is older than the interval, a sync
    /// starts in the background; its result arrives as `Update::ThreadsChanged`.
    pub fn threads(&self) -> Result<Vec<ThreadView>, ClientError> {
        let cached = self.cached_threads()?;
        if self.threads_stale()? {
            self.spawn_task(|me| async move {
                if let Err(e) = me.sync_threads().await {
                    tracing::debug!(error = %e, "background thread sync failed");
                }
            });
        }
        Ok(cached)
    }

    /// Whether the last thread sync is older than the interval (or never happened).
    pub fn threads_stale(&self) -> Result<bool, ClientError> {
        let last = self.last_sync(&Scope::Threads.key())?;
        let interval = self.cfg.thread_sync_interval.as_millis() as i64;
        Ok(last.is_none_or(|t| self.cfg.now_ms() - t >= interval))
    }

    pub fn cached_threads(&self) -> Result<Vec<ThreadView>, ClientError> {
        self.store.threads()
    }

    /// The thread list from the cache at once: newest activity first, `limit` threads
    /// before `before` (`None`: the newest), each with its last activity, a preview of its
    /// newest message (author, the start of its text, whether it has audio) and the caller's
    /// unread count. Kept by every sync, send and read marker (and so by live pokes, which
    /// sync what moved): one index range scan, no message is read.
    pub fn thread_list(
        &self,
        before: Option<&ThreadListPosition>,
        limit: usize,
    ) -> Result<ThreadListPage, ClientError> {
        if limit == 0 {
            return Err(ClientError::InvalidInput(
                "a page holds at least one thread".into(),
            ));
        }
        self.store.thread_list(before, limit)
    }

    /// Marks the thread read up to `cursor` (`None`: the newest position cached): the
    /// unread count drops at once, and the marker is queued for the server (durably, like a
    /// send; offline it waits), which hands it to the caller's other devices through their
    /// feed. A marker never moves back.
    pub async fn mark_read(
        &self,
        thread: &ThreadId,
        cursor: Option<u64>,
    ) -> Result<(), ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let seq = match cursor {
                Some(c) => i64::try_from(c).unwrap_or(i64::MAX),
                None => {
                    let t = thread.clone();
                    self.blocking(move |c| c.store.newest_position(&t)).await?
                }
            };
            if seq <= 0 {
                return Ok(());
            }
            let now = self.cfg.now_ms();
            let lane = Lane::Thread(thread.clone());
            let (t, l) = (thread.clone(), lane.clone());
            let counts = self
                .blocking(move |c| {
                    c.store.write_durable(|tx| {
                        tx.raise_read_marker(&t, seq)?;
                        let op = QueuedOp::MarkRead {
                            thread_id: t.clone(),
                            cursor: seq.to_string(),
                        };
                        tx.enqueue(&l, &op, None, now)?;
                        Ok(())
                    })?;
                    c.store.queue_counts()
                })
                .await?;
            self.updates.send(Update::ThreadsChanged { count: 1 });
            self.announce_counts(counts);
            self.bg.wake();
            let _ = self.process_lane(&lane).await;
            Ok(())
        })
        .await
    }

    /// Syncs the thread list now: the feed after the stored cursor. The first sync of a
    /// cache also asks who the caller is (`GET /v1/positions`), so their own messages never
    /// count as unread.
    pub async fn sync_threads(&self) -> Result<usize, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            if self.blocking(|c| c.store.me()).await?.is_none() {
                let p = self.api.positions(None).await?;
                let user = p.user.to_string();
                self.blocking(move |c| c.store.set_me(&user)).await?;
            }
            let report = self
                .sync_log(Scope::Threads, |cursor| async move {
                    self.api.list_threads(&cursor, SYNC_PAGE).await
                })
                .await?;
            let changed = report.new;
            if changed > 0 {
                self.updates.send(Update::ThreadsChanged { count: changed });
            }
            Ok(changed)
        })
        .await
    }

    /// Creates a thread on the server (online only) and caches it.
    pub async fn create_thread(
        &self,
        id: Option<&ThreadId>,
        title: &str,
        members: &[String],
    ) -> Result<ThreadView, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let t = self.api.create_thread(id, title, members).await?;
            let cached = t.clone();
            self.blocking(move |c| c.store.write_cache(|tx| Ok(tx.put_thread(&cached)?)))
                .await?;
            Ok(t)
        })
        .await
    }

    /// Adds `member` to the thread (online; any member may). The thread's log records it, so
    /// every member's client learns it at its next sync; the cached thread is updated now.
    pub async fn add_member(
        &self,
        thread: &ThreadId,
        member: &UserId,
    ) -> Result<ThreadView, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let t = self.api.add_member(thread, member).await?;
            let cached = t.clone();
            self.blocking(move |c| c.store.write_cache(|tx| Ok(tx.put_thread(&cached)?)))
                .await?;
            Ok(t)
        })
        .await
    }

    /// Removes `member` from the thread (online; the creator only).
    pub async fn remove_member(
        &self,
        thread: &ThreadId,
        member: &UserId,
    ) -> Result<(), ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            self.api.remove_member(thread, member.as_str()).await?;
            Ok(())
        })
        .await
    }

    /// Leaves the thread (online), then syncs the feed, whose `left` entry makes this cache
    /// forget the thread, its messages and their snapshots (as it does on every device of
    /// the caller at its next feed sync).
    pub async fn leave_thread(&self, thread: &ThreadId) -> Result<(), ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            match self.api.leave_thread(thread).await {
                Ok(()) => {}
                // Already gone (a retried leave): the feed says so too.
                Err(crate::error::ApiError::Rejected {
                    code: crate::error::ErrorCode::ThreadNotFound,
                    ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
            self.sync_threads().await?;
            Ok(())
        })
        .await
    }

    /// The thread as the server has it now, with its newest cursor.
    pub async fn thread_info(&self, id: &ThreadId) -> Result<ThreadInfo, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            Ok(self.api.get_thread(id).await?)
        })
        .await
    }
}
