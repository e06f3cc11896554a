//! Monitoring and maintenance: what the cache holds ([`Client::cache_stats`]) and the logout
//! wipe ([`Client::clear_all`]).

use std::path::Path;

use crate::error::ClientError;
use crate::updates::Update;
use crate::Client;

pub use crate::store::maintenance::CacheStats;

/// Deletes everything inside `dir` (files and folders); a missing `dir` is fine.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let res = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Client {
    /// Counts and sizes of everything cached, read from the database (the audio folder is
    /// not scanned: the `audio` table is its index).
    pub fn cache_stats(&self) -> Result<CacheStats, ClientError> {
        self.store.stats()
    }

    /// For logout: removes every cache and the whole queue, so the next user of the device
    /// never sees the previous user's data nor sends their operations.
    ///
    /// First it closes this client: the background sender stops, every later write is
    /// refused ([`ClientError::Closed`]) and no queued operation is sent any more; it waits
    /// for a queue pass in flight to finish the operation it is sending. Then, in one durable
    /// transaction, it deletes every row of `threads`, `messages`, `library`, `sync_state`,
    /// `snapshots`, `audio` and `queue`; empties the audio folder (a missing folder is fine)
    /// and recreates it, deletes the copies of an unreadable cache that opening moved aside
    /// (they hold the previous user's data and queue), and compacts the database so deleted
    /// rows do not linger in free pages. Announces `Update::Queue { pending: 0, failed: 0 }`.
    ///
    /// An operation already on the wire when this runs may still reach the server (it was
    /// sent with this client's token); nothing is sent or written afterwards. Reads still
    /// work; the next user opens a new `Client`.
    pub async fn clear_all(&self) -> Result<(), ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            self.store.close();
            self.bg.stop();
            // A pass in flight checks the flag before each operation: it ends after this one.
            let _turn = self.lanes.all().await;
            self.blocking(|c| c.store.wipe_all()).await?;
            self.updates.send(Update::Queue {
                pending: 0,
                failed: 0,
            });
            self.blocking(|c| {
                empty_dir(&c.audio.dir)?;
                std::fs::create_dir_all(&c.audio.dir)?;
                empty_dir(&c.cfg.data_dir.join(crate::outbox::OUTBOX))?;
                if let Ok(entries) = std::fs::read_dir(&c.cfg.data_dir) {
                    for e in entries.flatten() {
                        if e.file_name()
                            .to_string_lossy()
                            .starts_with("cache.sqlite.corrupt-")
                        {
                            std::fs::remove_file(e.path())?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
            // Nothing of this client touches the folder any more: the next user's may open it.
            if let Some(f) = &self.folder {
                f.release();
            }
            drop(_turn);
            // Best effort: the rows are gone already; this only returns their pages to the
            // file system and drops the old contents from the WAL.
            if let Err(e) = self.blocking(|c| c.store.compact()).await {
                tracing::warn!(error = %e, "compacting the cache after clear_all failed");
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use audio_dedup_core::ThreadId;
    use audio_dedup_server::TokenTable;

    use crate::{Client, ClientConfig, Update};

    const TOKEN: &str = "maint-alice-token-000001";

    /// A loopback port nothing listens on (bound, then released).
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        format!("http://{addr}")
    }

    fn config(base: &str, dir: &std::path::Path) -> ClientConfig {
        let mut cfg = ClientConfig::new(base, TOKEN, dir);
        cfg.retry_jitter = false;
        cfg.request_timeout = Duration::from_secs(5);
        cfg.background_sender = false;
        cfg
    }

    async fn server() -> (String, tempfile::TempDir, tokio::sync::oneshot::Sender<()>) {
        let dir = tempfile::tempdir().expect("dir");
        let mut tokens = TokenTable::default();
        tokens.insert(TOKEN, "alice", false).expect("token");
        let cfg = audio_dedup_server::in_process::test_config(dir.path(), tokens);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(audio_dedup_server::run(listener, cfg, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (base, dir, tx)
    }

    #[tokio::test]
    async fn clear_all_empties_every_cache_and_the_queue_is_never_sent() {
        let (base, _srv_dir, _stop) = server().await;
        let dir = tempfile::tempdir().expect("dir");
        let thread: ThreadId = "jam".parse().expect("thread id");

        // Online: the thread exists on the server and in the cache.
        let online = Client::open(config(&base, dir.path())).expect("open");
        online
            .create_thread(Some(&thread), "Jam", &[])
            .await
            .expect("create thread");
        online.sync_threads().await.expect("sync threads");
        drop(online);

        // Offline: two messages queued, a cached audio file, a leftover corrupt copy.
        let offline = Client::open(config(&closed_port(), dir.path())).expect("open");
        for bpm in [100, 120] {
            let m = offline
                .send_message(&thread, &serde_json::json!({ "bpm": bpm }), None)
                .await
                .expect("send offline");
            assert_eq!(m.send_state, crate::SendState::Sending);
        }
        let hash = audio_dedup_core::ContentHash::of(b"tune");
        std::fs::write(offline.audio.dir.join(hash.to_string()), b"tune").expect("audio file");
        std::fs::create_dir_all(offline.audio.dir.join("partial")).expect("subdir");
        std::fs::write(offline.audio.dir.join("partial/x.tmp"), b"xx").expect("temp file");
        offline
            .store
            .write_cache(|tx| Ok(tx.record_audio(&hash, 4, 1)?))
            .expect("audio row");
        let corrupt = dir.path().join("cache.sqlite.corrupt-1");
        std::fs::write(&corrupt, b"old").expect("corrupt copy");

        let s = offline.cache_stats().expect("stats");
        assert_eq!(s.threads, 1);
        assert_eq!(s.messages, 2);
        assert_eq!(s.unsent_messages, 2);
        assert_eq!(s.snapshots, 2);
        assert!(s.snapshot_bytes > 0);
        assert_eq!((s.audio_files, s.audio_bytes), (1, 4));
        assert_eq!((s.pending_operations, s.failed_operations), (2, 0));
        assert_eq!(
            s.last_syncs
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["threads"]
        );
        assert!(s.database_bytes > 0);

        let mut updates = offline.subscribe();
        offline.clear_all().await.expect("clear_all");
        assert_eq!(
            updates.try_recv().expect("an update"),
            Update::Queue {
                pending: 0,
                failed: 0
            }
        );
        let s = offline.cache_stats().expect("stats");
        assert_eq!(
            s,
            crate::CacheStats {
                database_bytes: s.database_bytes,
                ..Default::default()
            }
        );
        assert!(offline.queue().expect("queue").is_empty());
        assert!(offline.messages(&thread).expect("messages").is_empty());
        assert!(offline.cached_threads().expect("threads").is_empty());
        assert!(offline.audio.dir.is_dir());
        assert_eq!(
            std::fs::read_dir(&offline.audio.dir)
                .expect("audio dir")
                .count(),
            0
        );
        assert!(!corrupt.exists());

        // A missing audio folder is fine, and is recreated.
        std::fs::remove_dir_all(&offline.audio.dir).expect("remove audio dir");
        offline
            .clear_all()
            .await
            .expect("clear_all without an audio folder");
        assert!(offline.audio.dir.is_dir());
        drop(offline);

        // The next session, online: nothing of the previous one is sent.
        let next = Client::open(config(&base, dir.path())).expect("reopen");
        assert_eq!(next.pending_count().expect("pending"), 0);
        let report = next.process_queue().await.expect("process");
        assert_eq!(report, crate::QueueReport::default());
        let page = next
            .api()
            .list_messages(&thread, "0", 100)
            .await
            .expect("list");
        assert!(page.items.is_empty(), "queued messages reached the server");
        next.sync_messages(&thread).await.expect("sync");
        assert!(next.messages(&thread).expect("messages").is_empty());
    }
}
