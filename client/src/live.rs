//! Live updates: while the app wants them ([`Client::go_live`]), one connection to the
//! server's event stream. A poke names a log that moved (a thread's messages, the thread
//! list, the library); the client runs that log's ordinary incremental sync, which emits the
//! usual typed updates. Pokes for a log already waiting to be synced are coalesced. On every
//! (re)connect every log is synced, so pokes missed while disconnected cost nothing; pokes
//! that arrive twice or out of order only cause a sync that finds nothing new. When the
//! channel is down the app's own sync calls work as before.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;

use audio_dedup_core::ThreadId;

use crate::Client;

/// No bytes for this long (heartbeats come every 15 s) means the connection is dead.
const SILENCE: Duration = Duration::from_secs(45);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the server pokes about (its wire form; `cursor` is not needed to pick the sync).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Scope {
    Thread { id: ThreadId },
    Feed,
    Library,
}

/// Keeps the live channel open; dropping it (or [`LiveHandle::stop`]) closes it.
pub struct LiveHandle {
    task: tokio::task::JoinHandle<()>,
}

impl LiveHandle {
    pub fn stop(self) {}
}

impl Drop for LiveHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Logs waiting to be synced, and a wake-up for the syncing task.
#[derive(Default)]
struct Pending {
    scopes: Mutex<BTreeSet<Scope>>,
    wake: Notify,
}

impl Pending {
    fn add(&self, scope: Scope) {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope);
        self.wake.notify_one();
    }

    fn take(&self) -> BTreeSet<Scope> {
        std::mem::take(&mut *self.scopes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Client {
    /// Opens the live channel and keeps it open (reconnecting with backoff and jitter) until
    /// the handle is dropped. Must be called inside a tokio runtime.
    pub fn go_live(&self) -> LiveHandle {
        let pending = Arc::new(Pending::default());
        let syncer = tokio::spawn(sync_loop(self.clone(), pending.clone()));
        let client = self.clone();
        let task = tokio::spawn(async move {
            connect_loop(client, pending).await;
            syncer.abort();
        });
        LiveHandle { task }
    }
}

/// Runs the syncs the pokes asked for, one log at a time; pokes that arrive meanwhile for a
/// log already waiting cost nothing more.
async fn sync_loop(client: Client, pending: Arc<Pending>) {
    loop {
        pending.wake.notified().await;
        for scope in pending.take() {
            let result = match &scope {
                Scope::Thread { id } => client.sync_messages(id).await.map(|_| ()),
                Scope::Feed => sync_feed(&client, &pending).await,
                Scope::Library => client.sync_library().await.map(|_| ()),
            };
            if let Err(e) = result {
                // The next poke or reconnect syncs it again.
                tracing::debug!(?scope, error = %e, "live sync failed");
            }
        }
    }
}

/// Syncs the thread list; threads it brings that the cache did not know (joined while this
/// client was away) get their messages synced too, since no poke will name what they hold.
async fn sync_feed(client: &Client, pending: &Pending) -> Result<(), crate::ClientError> {
    let known = |c: &Client| -> BTreeSet<ThreadId> {
        c.cached_threads()
            .map(|ts| ts.into_iter().map(|t| t.id).collect())
            .unwrap_or_default()
    };
    let before = known(client);
    client.sync_threads().await?;
    for id in known(client).difference(&before) {
        pending.add(Scope::Thread { id: id.clone() });
    }
    Ok(())
}

/// Every log this client knows of: the thread list, the library, each cached thread.
fn everything(client: &Client) -> Vec<Scope> {
    let mut scopes = vec![Scope::Feed, Scope::Library];
    if let Ok(threads) = client.cached_threads() {
        scopes.extend(threads.into_iter().map(|t| Scope::Thread { id: t.id }));
    }
    scopes
}

async fn connect_loop(client: Client, pending: Arc<Pending>) {
    let mut retry = FIRST_RETRY;
    loop {
        if let Ok(mut res) = client.api().open_events().await {
            retry = FIRST_RETRY;
            for scope in everything(&client) {
                pending.add(scope);
            }
            read_pokes(&mut res, &pending).await;
        }
        let jitter = 0.5 + rand::random::<f64>();
        tokio::time::sleep(retry.mul_f64(jitter)).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Reads `event: poke` blocks until the stream ends or falls silent.
async fn read_pokes(res: &mut reqwest::Response, pending: &Pending) {
    let mut buf = String::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, res.chunk()).await {
            Ok(Ok(Some(bytes))) => bytes,
            _ => return,
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if !block.lines().any(|l| l.trim() == "event: poke") {
                continue; // a heartbeat, or an event this build does not know
            }
            let data = block.lines().find_map(|l| l.strip_prefix("data:"));
            match data.map(|d| serde_json::from_str::<Scope>(d.trim())) {
                Some(Ok(scope)) => pending.add(scope),
                _ => tracing::debug!(%block, "unreadable poke ignored"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pokes twice for one thread, out of order, between heartbeats and an unknown event:
    /// one sync of that thread is waiting, and nothing else.
    #[tokio::test]
    async fn repeated_and_reordered_pokes_coalesce_into_one_sync() {
        let body = concat!(
            "event: poke\ndata: {\"kind\":\"thread\",\"id\":\"t1\",\"cursor\":\"5\"}\n\n",
            ":heartbeat\n\n",
            "event: poke\ndata: {\"kind\":\"thread\",\"id\":\"t1\",\"cursor\":\"3\"}\n\n",
            "event: something-newer\ndata: {}\n\n",
            "event: poke\ndata: {\"kind\":\"thread\",\"id\":\"t1\",\"cursor\":\"5\"}\n\n",
            "event: poke\ndata: not json\n\n",
        );
        let mut res = reqwest::Response::from(http::Response::new(body));
        let pending = Pending::default();
        read_pokes(&mut res, &pending).await;
        let want: BTreeSet<Scope> = [Scope::Thread {
            id: "t1".parse().unwrap(),
        }]
        .into();
        assert_eq!(pending.take(), want);
        assert!(pending.take().is_empty());
    }
}
