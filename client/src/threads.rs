//! Threads: answered from the cache at once; synced from the server in the background when
//! the last sync is older than `thread_sync_interval` (60 s), or when forced. The server's
//! data wins.

use audio_dedup_core::{ThreadId, ThreadView};

use crate::api::ThreadInfo;
use crate::error::ClientError;
use crate::store::sync_state::Scope;
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

    /// Syncs the thread list now: the feed after the stored cursor.
    pub async fn sync_threads(&self) -> Result<usize, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
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

    /// The thread as the server has it now, with its newest cursor.
    pub async fn thread_info(&self, id: &ThreadId) -> Result<ThreadInfo, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            Ok(self.api.get_thread(id).await?)
        })
        .await
    }
}
