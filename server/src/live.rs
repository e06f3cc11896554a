//! `GET /v1/events`: live updates as Server-Sent Events. A client that keeps this open is
//! poked (`event: poke`, data `{"kind":"thread","id":…,"cursor":…}`, `feed` or `library`)
//! each time a log it may read moves, and then syncs that log as usual. Pokes come from the
//! embedded index's commit feed through [`poke_for`], as they come from DynamoDB Streams on
//! AWS. Only commits after the connection opened are sent; a client re-syncs on (re)connect.
//!
//! SSE rather than a WebSocket: the channel only ever goes server to client, it is plain
//! HTTP (the same bearer token, proxies pass it), reconnecting is the client's ordinary
//! retry, and axum serves it without another crate. (API Gateway has no long-lived HTTP
//! streams, so AWS gets a WebSocket API for the same pokes.)
//!
//! Bounded: each connection has a queue of `queue` pokes; one that falls that far behind is
//! a slow consumer and is dropped (its stream ends), never buffered without bound. Idle
//! connections get a heartbeat comment every `heartbeat`, which keeps proxies from closing
//! them and lets a client notice a dead one.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use audio_dedup_api::{ApiError, Authenticator};
use audio_dedup_core::live::{audience_of, poke_for, Audience, Poke};
use audio_dedup_core::ports::Key;
use audio_dedup_core::UserId;

use crate::{LocalDedup, TokenTable};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Time between heartbeats on an idle connection.
    pub heartbeat: Duration,
    /// Pokes one connection may have waiting before it is dropped as a slow consumer.
    pub queue: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            queue: 256,
        }
    }
}

type Listeners = HashMap<UserId, Vec<(u64, mpsc::Sender<Poke>)>>;

pub struct LiveHub {
    /// Weak: the hub's task must not keep the stores (and so the commit feed it reads) alive
    /// after the server that owns them is gone; the feed closing ends the task.
    dedup: Weak<LocalDedup>,
    tokens: Arc<TokenTable>,
    cfg: LiveConfig,
    listeners: Mutex<Listeners>,
    next_id: AtomicU64,
}

impl LiveHub {
    /// The hub, fed by `commits` (the index's commit feed) from a task of its own.
    pub fn start(
        dedup: Arc<LocalDedup>,
        tokens: Arc<TokenTable>,
        cfg: LiveConfig,
        commits: broadcast::Receiver<Key>,
    ) -> Arc<Self> {
        let hub = Arc::new(Self {
            dedup: Arc::downgrade(&dedup),
            tokens,
            cfg,
            listeners: Mutex::default(),
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(hub.clone().pump(commits));
        hub
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn pump(self: Arc<Self>, mut commits: broadcast::Receiver<Key>) {
        loop {
            match commits.recv().await {
                Ok(key) => {
                    if let Some((audience, poke)) = poke_for(&key) {
                        if let Err(e) = self.deliver(audience, poke).await {
                            tracing::warn!(%key, error = %e, "poke not delivered");
                        }
                    }
                }
                // Pokes skipped are harmless: the next one, or a re-sync, catches up.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "live updates fell behind the commit feed");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }

    async fn deliver(
        &self,
        audience: Audience,
        poke: Poke,
    ) -> Result<(), audio_dedup_core::DedupError> {
        let users = match &audience {
            Audience::User(user) => vec![user.clone()],
            // A thread's members are read from its record, if the stores are still there.
            Audience::ThreadMembers(_) => match self.dedup.upgrade() {
                Some(dedup) => audience_of(dedup.chat(), &audience).await?,
                None => return Ok(()),
            },
        };
        let mut listeners = self.listeners();
        for user in users {
            let Some(conns) = listeners.get_mut(&user) else {
                continue;
            };
            conns.retain(|(id, tx)| match tx.try_send(poke.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(%user, connection = id, "slow live-update consumer dropped");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if conns.is_empty() {
                listeners.remove(&user);
            }
        }
        Ok(())
    }

    fn register(&self, user: UserId) -> mpsc::Receiver<Poke> {
        let (tx, rx) = mpsc::channel(self.cfg.queue.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut listeners = self.listeners();
        let conns = listeners.entry(user).or_default();
        conns.retain(|(_, tx)| !tx.is_closed());
        conns.push((id, tx));
        rx
    }

    /// Ends every event stream (at shutdown: clients reconnect and re-sync).
    pub fn close_all(&self) {
        self.listeners().clear();
    }

    /// Connections open now, for tests and logs.
    pub fn open_connections(&self) -> usize {
        self.listeners()
            .values()
            .map(|c| c.iter().filter(|(_, tx)| !tx.is_closed()).count())
            .sum()
    }
}

pub async fn events(State(hub): State<Arc<LiveHub>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let Some(caller) = hub.tokens.authenticate(&parts) else {
        return ApiError::unauthorized().into_response();
    };
    let pokes = ReceiverStream::new(hub.register(caller.user)).map(|poke| {
        let event = Event::default().event("poke");
        Ok::<_, Infallible>(match event.json_data(&poke) {
            Ok(e) => e,
            // A poke always serialises; an empty comment keeps the stream well-formed.
            Err(_) => Event::default().comment(""),
        })
    });
    Sse::new(pokes)
        .keep_alive(
            KeepAlive::new()
                .interval(hub.cfg.heartbeat)
                .text("heartbeat"),
        )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use audio_dedup_core::ports::SystemClock;
    use audio_dedup_core::store::embedded::{FsBlobStore, SqliteIndex, Synchronous, UrlSigner};
    use audio_dedup_core::{Dedup, DedupConfig};

    /// A listener that stops reading is dropped once `queue` pokes wait for it: what it was
    /// sent before stays readable, then its stream ends. Others are not affected.
    #[tokio::test]
    async fn a_slow_consumer_is_dropped_at_its_queue_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = FsBlobStore::open(
            &dir.path().join("blobs"),
            UrlSigner::new("http://127.0.0.1:9", [1; 32]),
            None,
            Arc::new(SystemClock),
        )
        .expect("blobs");
        let index = SqliteIndex::open(&dir.path().join("index.sqlite"), Synchronous::Normal)
            .expect("index");
        let dedup = Arc::new(Dedup::new(blobs, index, DedupConfig::default()));
        let (_feed, commits) = broadcast::channel(8);
        let cfg = LiveConfig {
            heartbeat: Duration::from_secs(60),
            queue: 2,
        };
        let hub = LiveHub::start(dedup, Arc::new(TokenTable::default()), cfg, commits);
        let (bob, carol): (UserId, UserId) = ("bob".parse().unwrap(), "carol".parse().unwrap());
        let mut slow = hub.register(bob.clone());
        let mut reading = hub.register(carol.clone());
        let poke = |n: u32| Poke::Library {
            cursor: n.to_string(),
        };
        for n in 1..=3 {
            hub.deliver(Audience::User(bob.clone()), poke(n))
                .await
                .unwrap();
            hub.deliver(Audience::User(carol.clone()), poke(n))
                .await
                .unwrap();
            assert_eq!(reading.recv().await, Some(poke(n)));
        }
        assert_eq!(
            hub.open_connections(),
            1,
            "the slow one is gone, the other stays"
        );
        assert_eq!(slow.recv().await, Some(poke(1)));
        assert_eq!(slow.recv().await, Some(poke(2)));
        assert_eq!(slow.recv().await, None, "its stream ends");
    }
}
