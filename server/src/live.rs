//! `GET /v1/live`: live updates over a WebSocket, the protocol API Gateway's WebSocket API
//! serves on AWS (`template.yaml`, `LiveApi`), so one client transport works against both.
//!
//! - **Auth**: `Authorization: Bearer <token>` on the upgrade request; without a valid one
//!   the answer is 401 and nothing is upgraded (on AWS the authorizer denies with 403).
//! - **Server to client**: one text frame per poke, the JSON of [`Poke`]
//!   (`{"kind":"thread","id":…,"cursor":…}`, `feed`, `library`), each time a log the caller
//!   may read moves. Pokes come from the embedded index's commit feed through [`poke_for`],
//!   as they come from DynamoDB Streams on AWS. Only commits after the connection opened
//!   are sent; a client catches up from its cursors on (re)connect.
//! - **Client to server**: messages are routed by their `action` field
//!   (`$request.body.action`). `{"action":"ping"}` is answered `{"kind":"pong"}`: the
//!   keepalive. Anything else gets `{"message":"Forbidden"}`, API Gateway's answer to a
//!   message no route takes.
//! - **Limits kept as API Gateway keeps them**, so a client that works here works there: a
//!   connection with no client message for `idle_timeout` (10 min) is closed (WebSocket
//!   protocol pings do not count: API Gateway reportedly ignores them), any connection is
//!   closed at `max_lifetime` (2 h), messages are at most 128 KiB and frames 32 KiB.
//!
//! Bounded: each connection has a queue of `queue` pokes; one that falls that far behind is
//! a slow consumer and is closed, never buffered without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use audio_dedup_api::{ApiError, Authenticator};
use audio_dedup_core::live::{audience_of, poke_for, Audience, Poke};
use audio_dedup_core::ports::Key;
use audio_dedup_core::UserId;

use crate::LocalDedup;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// A connection that sends no message for this long is closed (API Gateway: 10 min).
    pub idle_timeout: Duration,
    /// Any connection is closed at this age (API Gateway: 2 h).
    pub max_lifetime: Duration,
    /// Pokes one connection may have waiting before it is dropped as a slow consumer.
    pub queue: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10 * 60),
            max_lifetime: Duration::from_secs(2 * 60 * 60),
            queue: 256,
        }
    }
}

/// API Gateway's WebSocket limits: 128 KiB per message, 32 KiB per frame.
const MAX_MESSAGE: usize = 128 * 1024;
const MAX_FRAME: usize = 32 * 1024;

/// The keepalive's answer, as the `ping` route answers it on AWS.
pub const PONG: &str = r#"{"kind":"pong"}"#;
/// API Gateway's answer to a message that no route takes.
pub const NO_ROUTE: &str = r#"{"message":"Forbidden"}"#;

/// A client message, routed by `action` as `$request.body.action` routes it on AWS.
#[derive(Deserialize)]
struct ClientMessage {
    action: Option<String>,
}

type Listeners = HashMap<UserId, Vec<(u64, mpsc::Sender<Poke>)>>;

pub struct LiveHub {
    /// Weak: the hub's task must not keep the stores (and so the commit feed it reads) alive
    /// after the server that owns them is gone; the feed closing ends the task.
    dedup: Weak<LocalDedup>,
    auth: Arc<dyn Authenticator>,
    cfg: LiveConfig,
    listeners: Mutex<Listeners>,
    next_id: AtomicU64,
}

impl LiveHub {
    /// The hub, fed by `commits` (the index's commit feed) from a task of its own.
    pub fn start(
        dedup: Arc<LocalDedup>,
        auth: Arc<dyn Authenticator>,
        cfg: LiveConfig,
        commits: broadcast::Receiver<Key>,
    ) -> Arc<Self> {
        let hub = Arc::new(Self {
            dedup: Arc::downgrade(&dedup),
            auth,
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

    /// Closes every connection (at shutdown: clients reconnect and catch up).
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

/// The live routes, over `hub`.
pub fn routes(hub: Arc<LiveHub>) -> axum::Router {
    axum::Router::new()
        .route("/v1/live", axum::routing::get(live))
        .with_state(hub)
}

/// The upgrade: authenticated first, so a caller without a valid token gets 401 and no
/// WebSocket.
pub async fn live(State(hub): State<Arc<LiveHub>>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let Some(caller) = hub.auth.authenticate(&parts) else {
        return ApiError::unauthorized().into_response();
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| serve(hub, caller.user, socket))
}

/// Why the server closes a connection (its close frame's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Idle,
    Lifetime,
    Dropped,
}

impl Closing {
    fn frame(self) -> CloseFrame {
        let reason = match self {
            Self::Idle => "idle timeout",
            Self::Lifetime => "connection lifetime reached",
            Self::Dropped => "dropped: slow consumer or server shutdown",
        };
        // 1001 "going away": the client reconnects and catches up.
        CloseFrame {
            code: 1001,
            reason: reason.into(),
        }
    }
}

/// One connection: pokes out, keepalives answered, closed when idle, too old, or too slow.
async fn serve(hub: Arc<LiveHub>, user: UserId, mut socket: WebSocket) {
    let mut pokes = hub.register(user);
    let end_of_life = tokio::time::Instant::now() + hub.cfg.max_lifetime;
    let mut idle_until = tokio::time::Instant::now() + hub.cfg.idle_timeout;
    let closing = loop {
        tokio::select! {
            poke = pokes.recv() => {
                let Some(poke) = poke else { break Some(Closing::Dropped) };
                let Ok(text) = serde_json::to_string(&poke) else { continue };
                if socket.send(Message::text(text)).await.is_err() {
                    break None;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    idle_until = tokio::time::Instant::now() + hub.cfg.idle_timeout;
                    if socket.send(Message::text(answer(text.as_str()))).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    idle_until = tokio::time::Instant::now() + hub.cfg.idle_timeout;
                    if socket.send(Message::text(NO_ROUTE)).await.is_err() {
                        break None;
                    }
                }
                // Protocol pings are answered by the WebSocket layer and keep nothing alive.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
            },
            () = tokio::time::sleep_until(idle_until) => break Some(Closing::Idle),
            () = tokio::time::sleep_until(end_of_life) => break Some(Closing::Lifetime),
        }
    };
    if let Some(why) = closing {
        tracing::debug!(reason = ?why, "live connection closed by the server");
        // The peer may be gone already; nothing more to do either way.
        let _ = socket.send(Message::Close(Some(why.frame()))).await;
    }
}

/// The answer to a client message: the `ping` route's pong, or the no-route refusal.
fn answer(text: &str) -> &'static str {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage {
            action: Some(action),
        }) if action == "ping" => PONG,
        _ => NO_ROUTE,
    }
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
            queue: 2,
            ..LiveConfig::default()
        };
        let hub = LiveHub::start(dedup, Arc::new(crate::TokenTable::default()), cfg, commits);
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

    /// The upgrade request's head and the answer's status line, over a raw loopback socket
    /// (the server crate has no WebSocket client; the frames are simple enough to write).
    mod raw {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        pub const WAIT: Duration = Duration::from_secs(5);

        /// Sends the upgrade and answers the response's status code.
        pub async fn upgrade(url: &str, token: Option<&str>) -> (TcpStream, u16) {
            let addr = url.trim_start_matches("http://");
            let mut s = TcpStream::connect(addr).await.unwrap();
            let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
            let head = format!(
                "GET /v1/live HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
                 sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                tokio::time::timeout(WAIT, s.read_exact(&mut b))
                    .await
                    .unwrap()
                    .unwrap();
                got.push(b[0]);
            }
            let text = String::from_utf8_lossy(&got);
            let status = text.split(' ').nth(1).unwrap().parse().unwrap();
            (s, status)
        }

        /// A masked text frame, as a client must send it.
        pub async fn send_text(s: &mut TcpStream, text: &str) {
            let bytes = text.as_bytes();
            assert!(bytes.len() < 126);
            let mask = [7u8, 1, 9, 3];
            let mut frame = vec![0x81, 0x80 | bytes.len() as u8];
            frame.extend(mask);
            frame.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            s.write_all(&frame).await.unwrap();
        }

        /// The next frame within `limit`: its opcode (1 text, 8 close) and payload.
        pub async fn frame(s: &mut TcpStream, limit: Duration) -> Option<(u8, Vec<u8>)> {
            tokio::time::timeout(limit, async {
                let mut h = [0u8; 2];
                s.read_exact(&mut h).await.ok()?;
                let mut len = usize::from(h[1] & 0x7f);
                if len == 126 {
                    let mut l = [0u8; 2];
                    s.read_exact(&mut l).await.ok()?;
                    len = usize::from(u16::from_be_bytes(l));
                }
                let mut payload = vec![0u8; len];
                s.read_exact(&mut payload).await.ok()?;
                Some((h[0] & 0x0f, payload))
            })
            .await
            .ok()
            .flatten()
        }
    }

    async fn server(
        configure: impl FnOnce(&mut crate::ServerConfig),
    ) -> crate::in_process::TempServer {
        let mut tokens = crate::TokenTable::default();
        tokens
            .insert("token-of-bob-0123456789", "bob", false)
            .unwrap();
        crate::in_process::TempServer::start(tokens, configure)
            .await
            .unwrap()
    }

    /// No token, or an unknown one: 401 before any upgrade (as AWS's authorizer refuses
    /// before `$connect`).
    #[tokio::test]
    async fn an_upgrade_without_a_valid_token_is_refused_with_401() {
        let srv = server(|_| {}).await;
        assert_eq!(raw::upgrade(&srv.url(), None).await.1, 401);
        assert_eq!(raw::upgrade(&srv.url(), Some("nope")).await.1, 401);
        assert_eq!(
            raw::upgrade(&srv.url(), Some("token-of-bob-0123456789"))
                .await
                .1,
            101
        );
        srv.stop().await.unwrap();
    }

    /// `{"action":"ping"}` is answered with a pong text frame; an action no route takes gets
    /// API Gateway's refusal, and the connection stays open.
    #[tokio::test]
    async fn ping_is_answered_with_pong_and_other_actions_are_refused() {
        let srv = server(|_| {}).await;
        let (mut s, status) = raw::upgrade(&srv.url(), Some("token-of-bob-0123456789")).await;
        assert_eq!(status, 101);
        raw::send_text(&mut s, r#"{"action":"ping"}"#).await;
        assert_eq!(
            raw::frame(&mut s, raw::WAIT).await,
            Some((1, PONG.as_bytes().to_vec()))
        );
        raw::send_text(&mut s, r#"{"action":"sendmessage","x":1}"#).await;
        assert_eq!(
            raw::frame(&mut s, raw::WAIT).await,
            Some((1, NO_ROUTE.as_bytes().to_vec()))
        );
        raw::send_text(&mut s, "not json").await;
        assert_eq!(
            raw::frame(&mut s, raw::WAIT).await,
            Some((1, NO_ROUTE.as_bytes().to_vec()))
        );
        raw::send_text(&mut s, r#"{"action":"ping"}"#).await;
        assert_eq!(
            raw::frame(&mut s, raw::WAIT).await,
            Some((1, PONG.as_bytes().to_vec()))
        );
        srv.stop().await.unwrap();
    }

    /// Keepalives within the idle timeout keep a connection open past it; without them it
    /// is closed (1001) once the timeout passes, as API Gateway closes it.
    #[tokio::test]
    async fn keepalives_keep_a_connection_open_and_silence_closes_it() {
        let idle = Duration::from_millis(300);
        let srv = server(|c| c.live.idle_timeout = idle).await;
        let (mut s, _) = raw::upgrade(&srv.url(), Some("token-of-bob-0123456789")).await;
        for _ in 0..6 {
            tokio::time::sleep(idle / 3).await;
            raw::send_text(&mut s, r#"{"action":"ping"}"#).await;
            assert_eq!(raw::frame(&mut s, raw::WAIT).await.map(|f| f.0), Some(1));
        }
        let started = tokio::time::Instant::now();
        let (opcode, payload) = raw::frame(&mut s, raw::WAIT).await.unwrap();
        assert_eq!(opcode, 8, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
        assert!(
            started.elapsed() >= idle / 2,
            "closed only after the idle timeout"
        );
        srv.stop().await.unwrap();
    }
}
