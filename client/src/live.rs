//! Live updates: while the app wants them ([`Client::go_live`]), one WebSocket to the live
//! channel: the local server's `GET /v1/live`, or API Gateway's WebSocket API on AWS (the
//! same protocol; [`crate::ClientConfig::live_url`]).
//!
//! - A poke (a text frame, `{"kind":"thread","id":…}`, `feed`, `library`) names a log that
//!   moved; the client runs that log's ordinary incremental sync, which emits the usual typed
//!   updates. Pokes for a log already waiting to be synced are coalesced; repeated or
//!   reordered pokes only cause a sync that finds nothing new.
//! - Keepalive: `{"action":"ping"}` every `live_keepalive` (API Gateway closes a connection
//!   idle for 10 minutes and does not count protocol pings), answered `{"kind":"pong"}`. A
//!   connection that sends nothing (no pong, no poke) for two periods is dead: reconnect.
//! - Rotation: at `live_rotate_after` (API Gateway closes any connection at 2 hours) a fresh
//!   connection is opened first and the old one closed and drained after, so no poke falls
//!   between them.
//! - Catch-up: on every (re)connect one `GET /v1/positions`, compared with the cursors the
//!   cache stored; only logs whose position moved are synced. From the second catch-up on it
//!   passes the last answer's `as_of`, so the answer lists only threads changed since (a
//!   sync that failed in between makes the next catch-up list them all again).
//! - The app steers it: closed while paused, reopened on resume; `reconnect_now` reconnects
//!   at once. A refused upgrade (401/403) asks the token provider for a fresh token once,
//!   then waits for a new one.
//!
//! Everything runs in one task on the client's runtime, so dropping the [`LiveHandle`] ends
//! all of it.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header::AUTHORIZATION, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use audio_dedup_core::chat::Positions;
use audio_dedup_core::ThreadId;

use crate::error::{ApiError, ClientError};
use crate::store::sync_state::Scope as LogScope;
use crate::Client;

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a rotation that failed waits before trying again.
const ROTATE_RETRY: Duration = Duration::from_secs(5);
/// Longest wait for a closing connection to hand over what it still holds.
const DRAIN: Duration = Duration::from_secs(5);

/// The keepalive, routed by API Gateway to the `ping` route (`$request.body.action`).
pub(crate) const PING: &str = r#"{"action":"ping"}"#;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server sends. Frames this build does not know are ignored (they still show the
/// connection is alive).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Frame {
    Thread {
        id: ThreadId,
    },
    Feed,
    Library,
    Pong,
    #[serde(other)]
    Unknown,
}

/// A log waiting to be synced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Thread { id: ThreadId },
    Feed,
    Library,
}

/// Keeps the live channel open; dropping it (or [`LiveHandle::stop`]) closes it and ends
/// every task it started.
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

/// Logs waiting to be synced, and a wake-up for the syncing loop.
#[derive(Default)]
struct Pending {
    scopes: Mutex<BTreeSet<Scope>>,
    wake: Notify,
    /// The last catch-up's `as_of`: the next one asks only for threads changed since.
    as_of: Mutex<Option<String>>,
    /// A sync failed since the last catch-up: its log may be behind although it did not
    /// change since, so the next catch-up lists every thread.
    sync_failed: std::sync::atomic::AtomicBool,
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

/// Why opening a connection failed.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("no token: {0}")]
    NoToken(ApiError),
    #[error("the upgrade was refused with {0}")]
    Refused(u16),
    #[error("the token is not a valid header value")]
    BadToken,
    #[error("no answer within the request timeout")]
    TimedOut,
    #[error("connection failed: {0}")]
    Failed(Box<tungstenite::Error>),
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Closed by the server, or the network failed.
    Lost,
    /// Nothing heard for two keepalive periods.
    Dead,
    /// The app paused the client.
    Paused,
    /// The app asked for a reconnect now.
    Reconnect,
}

/// What the app steers, watched by the connection loop.
struct Watches {
    paused: watch::Receiver<bool>,
    reconnects: watch::Receiver<u64>,
    auth: watch::Receiver<u64>,
}

impl Client {
    /// Opens the live channel and keeps it open (reconnecting with backoff and jitter) until
    /// the handle is dropped. Runs on the client's runtime, so it may be called from any
    /// thread.
    pub fn go_live(&self) -> LiveHandle {
        let client = self.for_task();
        let stopped = self.bg.stopped();
        let task = self.runtime().spawn(async move {
            let pending = Arc::new(Pending::default());
            let both = async {
                tokio::join!(
                    sync_loop(&client, &pending),
                    connect_loop(&client, &pending)
                )
            };
            // Also ends when the app's last client goes.
            tokio::select! {
                _ = both => {}
                () = stopped => {}
            }
        });
        LiveHandle { task }
    }
}

/// Runs the syncs the pokes asked for, one log at a time; pokes that arrive meanwhile for a
/// log already waiting cost nothing more.
async fn sync_loop(client: &Client, pending: &Pending) {
    loop {
        pending.wake.notified().await;
        for scope in pending.take() {
            let result = match &scope {
                Scope::Thread { id } => client.sync_messages(id).await.map(|_| ()),
                Scope::Feed => sync_feed(client, pending).await,
                Scope::Library => client.sync_library().await.map(|_| ()),
            };
            if let Err(e) = result {
                // The next poke or reconnect syncs it again.
                tracing::debug!(?scope, error = %e, "live sync failed");
                pending
                    .sync_failed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

/// Syncs the thread list; threads it brings that the cache did not know (joined while this
/// client was away) get their messages synced too, since no poke will name what they hold.
async fn sync_feed(client: &Client, pending: &Pending) -> Result<(), ClientError> {
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

/// The logs whose position differs from the cursor the cache stored. Reads the cache only.
fn moved_logs(client: &Client, positions: &Positions) -> Result<Vec<Scope>, ClientError> {
    let stored = |scope: &LogScope| -> Result<String, ClientError> {
        Ok(client.store.cursor(scope)?.unwrap_or_else(|| "0".into()))
    };
    let mut moved = Vec::new();
    if stored(&LogScope::Threads)? != positions.feed {
        moved.push(Scope::Feed);
    }
    if stored(&LogScope::Library)? != positions.library {
        moved.push(Scope::Library);
    }
    for (id, position) in &positions.threads {
        if stored(&LogScope::Messages(id.clone()))? != *position {
            moved.push(Scope::Thread { id: id.clone() });
        }
    }
    if !positions.complete {
        // Threads past the answer's bound: no position known, so sync each cached one.
        for t in client.cached_threads()? {
            if !positions.threads.contains_key(&t.id) {
                moved.push(Scope::Thread { id: t.id });
            }
        }
    }
    Ok(moved)
}

/// After a (re)connect: syncs what moved while the channel was down. One request; if it
/// fails (a server without `/v1/positions`, or no answer), every log is synced instead.
async fn catch_up(client: &Client, pending: &Pending) {
    let since = match pending
        .sync_failed
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        true => None,
        false => pending
            .as_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    let moved = match client.api().positions(since.as_deref()).await {
        Ok(positions) => {
            let as_of = positions.as_of.clone();
            let moved = client.blocking(move |c| moved_logs(c, &positions)).await;
            if moved.is_ok() {
                *pending.as_of.lock().unwrap_or_else(|p| p.into_inner()) = Some(as_of);
            }
            moved
        }
        Err(e) => Err(e.into()),
    };
    let scopes = moved.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "positions unknown: syncing every log");
        everything(client)
    });
    for scope in scopes {
        pending.add(scope);
    }
}

/// Waits until `rx` holds `want` (forever if its sender is gone: nothing will change).
async fn until(rx: &mut watch::Receiver<bool>, want: bool) {
    if rx.wait_for(|v| *v == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits for the next change of `rx` (forever if its sender is gone).
async fn next_change(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn connect_loop(client: &Client, pending: &Pending) {
    let mut w = Watches {
        paused: client.ctl.paused(),
        reconnects: client.ctl.reconnects(),
        auth: client.auth_changes(),
    };
    let mut retry = FIRST_RETRY;
    // Whether a refused token was already handed back since the last new token.
    let mut asked_fresh = false;
    loop {
        until(&mut w.paused, false).await;
        w.reconnects.borrow_and_update();
        w.auth.borrow_and_update();
        match open_with_token(client).await {
            Ok(socket) => {
                retry = FIRST_RETRY;
                asked_fresh = false;
                catch_up(client, pending).await;
                match run(client, socket, pending, &mut w).await {
                    // Reopen at once (the loop's head waits out a pause).
                    Ended::Paused | Ended::Reconnect => continue,
                    Ended::Lost | Ended::Dead => {}
                }
            }
            Err((OpenError::Refused(status), Some(token))) => {
                if !asked_fresh {
                    asked_fresh = true;
                    if client.api().token_refused(&token).await.is_ok() {
                        continue;
                    }
                }
                tracing::info!(status, "live channel refused: waiting for a new token");
                tokio::select! {
                    () = next_change(&mut w.auth) => {}
                    () = next_change(&mut w.reconnects) => {}
                }
                asked_fresh = false;
                continue;
            }
            Err((OpenError::NoToken(ApiError::AuthRequired(_)), _)) => {
                tokio::select! {
                    () = next_change(&mut w.auth) => {}
                    () = next_change(&mut w.reconnects) => {}
                }
                continue;
            }
            Err((e, _)) => tracing::debug!(error = %e, "live channel not opened"),
        }
        // Backoff with jitter, cut short by a reconnect request or a pause.
        let wait = retry.mul_f64(0.5 + rand::random::<f64>());
        tokio::select! {
            () = tokio::time::sleep(wait) => retry = (retry * 2).min(MAX_RETRY),
            () = next_change(&mut w.reconnects) => retry = FIRST_RETRY,
            () = until(&mut w.paused, true) => {}
        }
    }
}

/// Opens a connection with the current token; on failure also answers the token tried.
async fn open_with_token(client: &Client) -> Result<Socket, (OpenError, Option<String>)> {
    let token = client
        .api()
        .bearer_token()
        .await
        .map_err(|e| (OpenError::NoToken(e), None))?;
    open(client, &token).await.map_err(|e| (e, Some(token)))
}

/// The upgrade, with the bearer token in `Authorization` (as API Gateway's authorizer and
/// the local server read it).
async fn open(client: &Client, token: &str) -> Result<Socket, OpenError> {
    let cfg = client.config();
    let mut req = cfg
        .live_url()
        .into_client_request()
        .map_err(|e| OpenError::Failed(Box::new(e)))?;
    let value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| OpenError::BadToken)?;
    req.headers_mut().insert(AUTHORIZATION, value);
    match tokio::time::timeout(cfg.request_timeout, tokio_tungstenite::connect_async(req)).await {
        Err(_) => Err(OpenError::TimedOut),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(res))) if matches!(res.status().as_u16(), 401 | 403) => {
            Err(OpenError::Refused(res.status().as_u16()))
        }
        Ok(Err(e)) => Err(OpenError::Failed(Box::new(e))),
    }
}

/// A fresh connection for a rotation; a refused token is handed back once.
async fn open_fresh(client: Client) -> Result<Socket, OpenError> {
    match open_with_token(&client).await {
        Ok(s) => Ok(s),
        Err((OpenError::Refused(_), Some(token))) => {
            let token = client
                .api()
                .token_refused(&token)
                .await
                .map_err(OpenError::NoToken)?;
            open(&client, &token).await
        }
        Err((e, _)) => Err(e),
    }
}

type Opening = Pin<Box<dyn Future<Output = Result<Socket, OpenError>> + Send>>;

/// Awaits the rotation under way, or never when there is none.
async fn rotation(opening: &mut Option<Opening>) -> Result<Socket, OpenError> {
    match opening {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Reads pokes from an open connection, sends keepalives and rotates it, until it ends.
async fn run(client: &Client, mut socket: Socket, pending: &Pending, w: &mut Watches) -> Ended {
    let cfg = client.config();
    let keepalive = cfg.live_keepalive.max(Duration::from_millis(10));
    let now = Instant::now();
    let mut heard = now;
    let mut next_ping = now + keepalive;
    let mut rotate_at = now + cfg.live_rotate_after;
    let mut opening: Option<Opening> = None;
    loop {
        tokio::select! {
            msg = socket.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ended::Lost,
                Some(Ok(m)) => {
                    heard = Instant::now();
                    if let Message::Text(text) = m {
                        read_frame(text.as_str(), pending);
                    }
                }
            },
            () = sleep_until(next_ping) => {
                next_ping = Instant::now() + keepalive;
                if socket.send(Message::text(PING)).await.is_err() {
                    return Ended::Lost;
                }
            }
            () = sleep_until(heard + keepalive * 2) => {
                tracing::debug!("live channel silent for two keepalive periods: reconnecting");
                close(&mut socket, pending).await;
                return Ended::Dead;
            }
            () = sleep_until(rotate_at), if opening.is_none() => {
                opening = Some(Box::pin(open_fresh(client.clone())));
            }
            opened = rotation(&mut opening) => {
                opening = None;
                match opened {
                    Ok(fresh) => {
                        // The fresh one is open (and registered) first: pokes from now on
                        // reach it; the old one hands over what it still holds.
                        let mut old = std::mem::replace(&mut socket, fresh);
                        close(&mut old, pending).await;
                        let now = Instant::now();
                        heard = now;
                        next_ping = now + keepalive;
                        rotate_at = now + cfg.live_rotate_after;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "rotation failed: trying again");
                        rotate_at = Instant::now() + ROTATE_RETRY;
                    }
                }
            }
            () = until(&mut w.paused, true) => {
                close(&mut socket, pending).await;
                return Ended::Paused;
            }
            () = next_change(&mut w.reconnects) => {
                close(&mut socket, pending).await;
                return Ended::Reconnect;
            }
        }
    }
}

/// Closes `socket` and reads what it still delivers until the server's close answers
/// (bounded), so pokes already on their way are not lost.
async fn close(socket: &mut Socket, pending: &Pending) {
    let drained = tokio::time::timeout(DRAIN, async {
        if socket.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.next().await {
            if let Message::Text(text) = msg {
                read_frame(text.as_str(), pending);
            }
        }
    });
    // Past the bound the connection is just dropped; a catch-up covers it.
    let _ = drained.await;
}

/// Queues the sync a frame asks for; anything else is ignored.
fn read_frame(text: &str, pending: &Pending) {
    match serde_json::from_str::<Frame>(text) {
        Ok(Frame::Thread { id }) => pending.add(Scope::Thread { id }),
        Ok(Frame::Feed) => pending.add(Scope::Feed),
        Ok(Frame::Library) => pending.add(Scope::Library),
        Ok(Frame::Pong | Frame::Unknown) => {}
        Err(_) => tracing::debug!(frame = text, "unreadable live frame ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pokes twice for one thread, out of order, between pongs, an unknown kind, API
    /// Gateway's no-route answer and junk: one sync of that thread is waiting, and nothing
    /// else.
    #[test]
    fn repeated_and_reordered_pokes_coalesce_into_one_sync() {
        let pending = Pending::default();
        for frame in [
            r#"{"kind":"thread","id":"t1","cursor":"5"}"#,
            r#"{"kind":"pong"}"#,
            r#"{"kind":"thread","id":"t1","cursor":"3"}"#,
            r#"{"kind":"something-newer","x":1}"#,
            r#"{"message":"Forbidden","connectionId":"abc=","requestId":"r"}"#,
            r#"{"kind":"thread","id":"t1","cursor":"5"}"#,
            "not json",
        ] {
            read_frame(frame, &pending);
        }
        let want: BTreeSet<Scope> = [Scope::Thread {
            id: "t1".parse().unwrap(),
        }]
        .into();
        assert_eq!(pending.take(), want);
        assert!(pending.take().is_empty());
    }

    #[test]
    fn the_keepalive_is_routed_by_action() {
        let v: serde_json::Value = serde_json::from_str(PING).unwrap();
        assert_eq!(v["action"], "ping");
    }
}
