//! The queue drains by itself: the background sender, `process_queue` when connectivity
//! returns (skipping the backoff, honouring Retry-After), library changes made offline, and
//! the sender stopping when the last client goes or on logout. Loopback only; every wait is
//! bounded and no sleep is longer than 1 s.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audio_dedup_client::{
    Client, ClientConfig, ClientError, LibraryAudio, QueueState, SendState, Update,
};
use audio_dedup_core::ports::{Clock, ManualClock, SystemClock};
use audio_dedup_core::{AudioFormat, ThreadId};
use reqwest::Method;
use serde_json::json;
use support::*;

fn tid(s: &str) -> ThreadId {
    s.parse().unwrap()
}

fn manual_config(url: &str, dir: &std::path::Path, clock: &Arc<ManualClock>) -> ClientConfig {
    let mut c = ClientConfig::new(url, ALICE, dir);
    c.clock = clock.clone();
    c.request_timeout = Duration::from_millis(800);
    c.retry_jitter = false;
    c.background_sender = false;
    c
}

/// Real time, a small backoff, the background sender on.
fn live_config(url: &str, dir: &std::path::Path) -> ClientConfig {
    let mut c = ClientConfig::new(url, ALICE, dir);
    c.request_timeout = Duration::from_millis(800);
    c.retry_jitter = false;
    c.retry_base = Duration::from_millis(50);
    c.max_retries = 1_000;
    c
}

async fn make_thread(s: &Server, token: &str, id: &str, members: &[&str]) {
    let (st, v) = s
        .call(
            token,
            Method::POST,
            "/v1/threads",
            Some(json!({"id": id, "title": id, "members": members})),
        )
        .await;
    assert!(st == 201 || st == 200, "{v}");
}

fn ids(server: &[serde_json::Value]) -> Vec<String> {
    server
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f().await
}

/// The seed's test 5 as a person does it: three sends with the server down, the server back,
/// one `process_queue()` (no clock moved, so every backoff is still running): all three
/// arrive, in order, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_queue_delivers_three_offline_sends_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let clk = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let c = Client::open(manual_config(&s.url(), &dir.path().join("c"), &clk)).unwrap();
    s.stop().await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let m = c
            .send_message(&tid("t1"), &json!({ "n": i }), None)
            .await
            .unwrap();
        assert_eq!(m.send_state, SendState::Sending);
        sent.push(m.id.to_string());
    }
    assert_eq!(c.pending_count().unwrap(), 3);
    s.restart().await;
    // The backoff has not run out: a due-only pass sends nothing.
    assert_eq!(c.process_due().await.unwrap().sent, 0);
    let r = c.process_queue().await.unwrap();
    assert_eq!((r.sent, r.failed, r.waiting), (3, 0, 0));
    assert_eq!(
        ids(&s.messages(ALICE, "t1").await),
        sent,
        "in order, once each"
    );
    assert!(c
        .messages(&tid("t1"))
        .unwrap()
        .iter()
        .all(|m| m.send_state == SendState::Sent));
    assert_eq!(c.process_queue().await.unwrap().sent, 0);
    assert_eq!(s.messages(ALICE, "t1").await.len(), 3, "nothing sent twice");
}

/// `process_queue` skips the backoff of a 5xx, but an explicit Retry-After holds the
/// operation (and its lane) until then, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_queue_skips_the_backoff_but_honours_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = TempServer::start().await;
    make_thread(&s.inner, ALICE, "t1", &[]).await;
    let (proxy, paddr) = Proxy::start(s.base.clone(), Duration::ZERO).await;
    let clk = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let url = format!("http://{paddr}");
    let cdir = dir.path().join("c");
    let c = Client::open(manual_config(&url, &cdir, &clk)).unwrap();

    proxy.refuse_next(1, 503, None);
    c.send_message(&tid("t1"), &json!({"a": 1}), None)
        .await
        .unwrap();
    let q = c.queue().unwrap();
    assert_eq!((q[0].attempts, q[0].retry_after_ms), (1, None));
    assert_eq!(c.process_queue().await.unwrap().sent, 1, "backoff skipped");

    proxy.refuse_next(1, 429, Some(5));
    c.send_message(&tid("t1"), &json!({"a": 2}), None)
        .await
        .unwrap();
    let q = c.queue().unwrap();
    assert_eq!(q[0].retry_after_ms, Some(clk.now_ms() + 5_000));
    drop(c);
    let c = Client::open(manual_config(&url, &cdir, &clk)).unwrap();
    proxy.clear();
    let r = c.process_queue().await.unwrap();
    assert_eq!((r.sent, r.waiting), (0, 1));
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
    clk.advance(Duration::from_secs(5));
    assert_eq!(c.process_queue().await.unwrap().sent, 1);
    assert_eq!(s.inner.messages(ALICE, "t1").await.len(), 2);
}

/// With the background sender on and no call from the app, three sends made offline arrive
/// on their own once the server is back, within the backoff schedule, in order, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sender_delivers_offline_sends_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let c = Client::open(live_config(&s.url(), &dir.path().join("c"))).unwrap();
    assert!(c.background_sender_running());
    s.stop().await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let m = c
            .send_message(&tid("t1"), &json!({ "n": i }), None)
            .await
            .unwrap();
        sent.push(m.id.to_string());
    }
    s.restart().await;
    // The head's next attempt is at most its current backoff away.
    let head = c.queue().unwrap().into_iter().next();
    let wait_ms = head.map_or(0, |e| (e.next_due_ms - SystemClock.now_ms()).max(0));
    let limit = Duration::from_millis(u64::try_from(wait_ms).unwrap() + 1_000);
    let t0 = Instant::now();
    let delivered = eventually(limit.max(Duration::from_secs(2)), async || {
        c.pending_count().unwrap() == 0
    })
    .await;
    assert!(delivered, "not delivered in {limit:?}: {:?}", c.queue());
    assert!(t0.elapsed() <= limit.max(Duration::from_secs(2)));
    assert_eq!(
        ids(&s.messages(ALICE, "t1").await),
        sent,
        "in order, once each"
    );
}

/// Back online is a wake-up with a pass like `process_queue`: sends that waited out a long
/// backoff while offline go as soon as any request gets an answer again, not when the
/// backoff ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_sends_at_once_when_the_client_is_back_online() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let mut cfg = live_config(&s.url(), &dir.path().join("c"));
    // Far longer than the test may take: only the reconnection can explain a delivery.
    cfg.retry_base = Duration::from_secs(600);
    cfg.max_retry_delay = Duration::from_secs(600);
    let c = Client::open(cfg).unwrap();
    s.stop().await;
    for i in 0..3 {
        c.send_message(&tid("t1"), &json!({ "n": i }), None)
            .await
            .unwrap();
    }
    assert!(!c.is_online());
    let head = c.queue().unwrap().into_iter().next().unwrap();
    assert!(
        head.next_due_ms - SystemClock.now_ms() > 500_000,
        "{head:?}"
    );
    s.restart().await;
    // Any answer will do: the app refreshes its thread list.
    c.sync_threads().await.unwrap();
    let delivered = eventually(Duration::from_secs(5), async || {
        c.pending_count().unwrap() == 0
    })
    .await;
    assert!(delivered, "{:?}", c.queue());
    assert_eq!(s.messages(ALICE, "t1").await.len(), 3);
}

/// A library add made offline (a local file: uploaded, then put) arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_add_made_offline_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    let clk = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let c = Client::open(manual_config(&s.url(), &dir.path().join("c"), &clk)).unwrap();
    let file = dir.path().join("riff.mp3");
    let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    s.stop().await;
    let mut updates = c.subscribe();
    let id = "riff-1".parse().unwrap();
    let item = c
        .put_library_item(
            &id,
            LibraryAudio::File {
                path: file.clone(),
                format: AudioFormat::Mp3,
            },
            "Riff",
        )
        .await
        .unwrap();
    assert_eq!(item.send_state, SendState::Sending);
    assert_eq!(
        item.content_hash,
        Some(audio_dedup_core::ContentHash::of(&bytes))
    );
    assert_eq!(c.library().unwrap().len(), 1, "shown at once");
    assert!(matches!(
        updates.try_recv(),
        Ok(Update::LibraryItem {
            state: SendState::Sending,
            ..
        })
    ));
    let q = c.queue().unwrap();
    assert_eq!(q.len(), 2, "upload, then the put that depends on it");
    assert_eq!(q[1].depends_on, Some(q[0].id));

    s.restart().await;
    let r = c.process_queue().await.unwrap();
    assert_eq!((r.sent, r.failed), (2, 0));
    assert_eq!(c.process_queue().await.unwrap().sent, 0);
    let (st, lib) = s
        .call(ALICE, Method::GET, "/v1/library?since=0", None)
        .await;
    assert_eq!(st, 200, "{lib}");
    let items = lib["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "once: {lib}");
    assert_eq!(items[0]["title"], "Riff");
    let mine = c.library().unwrap();
    assert_eq!(mine[0].send_state, SendState::Sent);
    assert!(mine[0].cursor.is_some());
    // Syncing brings nothing new, and removing it offline then processing deletes it.
    c.sync_library().await.unwrap();
    assert_eq!(c.library().unwrap().len(), 1);
    s.stop().await;
    c.delete_library_item(&id).await.unwrap();
    assert!(c.library().unwrap().is_empty());
    s.restart().await;
    assert_eq!(c.process_queue().await.unwrap().sent, 1);
    let (_, lib) = s
        .call(ALICE, Method::GET, "/v1/library?since=0", None)
        .await;
    // The change log ends with its tombstone.
    let last = lib["items"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        (&last["id"], &last["state"]),
        (&json!("riff-1"), &json!("deleted"))
    );
}

/// Requests the proxy saw.
fn seen(p: &Proxy) -> usize {
    p.requests().len()
}

/// The background sender retries on its own; once the last client is dropped it sends
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_client_stops_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let s = TempServer::start().await;
    make_thread(&s.inner, ALICE, "t1", &[]).await;
    let (proxy, paddr) = Proxy::start(s.base.clone(), Duration::ZERO).await;
    proxy.refuse_next(100_000, 503, None);
    let c = Client::open(live_config(&format!("http://{paddr}"), dir.path())).unwrap();
    let clone = c.clone();
    c.send_message(&tid("t1"), &json!({}), None).await.unwrap();
    // Retries at 50, 100, 200 ms... with no call from the app.
    assert!(
        eventually(Duration::from_secs(2), async || seen(&proxy) >= 3).await,
        "the sender retried: {:?}",
        proxy.requests()
    );
    drop(c);
    let before = seen(&proxy);
    assert!(
        eventually(Duration::from_secs(2), async || seen(&proxy) > before).await,
        "a clone keeps it running"
    );
    drop(clone);
    // A request already on the wire may land; then nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = seen(&proxy);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(seen(&proxy), after, "{:?}", proxy.requests());
    assert!(s.inner.messages(ALICE, "t1").await.is_empty());
}

/// Logout: `clear_all` stops the sender; nothing of the previous user is sent or written
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_all_stops_the_sender_and_nothing_is_sent_or_written_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = TempServer::start().await;
    make_thread(&s.inner, ALICE, "t1", &[]).await;
    let (proxy, paddr) = Proxy::start(s.base.clone(), Duration::ZERO).await;
    proxy.refuse_next(100_000, 503, None);
    let c = Client::open(live_config(&format!("http://{paddr}"), dir.path())).unwrap();
    for i in 0..3 {
        c.send_message(&tid("t1"), &json!({ "i": i }), None)
            .await
            .unwrap();
    }
    assert!(eventually(Duration::from_secs(2), async || seen(&proxy) >= 3).await);
    c.clear_all().await.unwrap();
    assert!(!c.background_sender_running());
    // The server answers again: a running sender would deliver everything now.
    proxy.refuse_next(0, 503, None);
    let after = seen(&proxy);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(seen(&proxy), after, "{:?}", proxy.requests());
    assert!(s.inner.messages(ALICE, "t1").await.is_empty());
    assert_eq!(c.pending_count().unwrap(), 0);
    // Writes are refused: nothing lands in the wiped cache.
    let err = c
        .send_message(&tid("t1"), &json!({"late": true}), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert!(c.messages(&tid("t1")).unwrap().is_empty());
    assert!(c.queue().unwrap().is_empty());
    // The next user opens a new client on the same folder: nothing of the previous one.
    let next = Client::open(live_config(&format!("http://{paddr}"), dir.path())).unwrap();
    assert_eq!(next.pending_count().unwrap(), 0);
    assert_eq!(next.process_queue().await.unwrap().sent, 0);
    assert!(s.inner.messages(ALICE, "t1").await.is_empty());
}

/// Opened outside any tokio runtime (an app's UI thread), the client runs its sender on a
/// runtime of its own; sync calls that start background work do not panic; dropping it
/// there frees the folder for the next client at once.
#[test]
fn open_outside_a_runtime_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let c = Client::open(live_config("http://127.0.0.1:9", dir.path())).unwrap();
    assert!(c.background_sender_running());
    // Stale thread list: starts a background sync (which fails: nothing listens on :9).
    assert!(c.threads().unwrap().is_empty());
    drop(c);
    let again = Client::open(live_config("http://127.0.0.1:9", dir.path())).unwrap();
    assert!(again.background_sender_running());
}

/// A cache written by the previous layout (version 1) is migrated in place: its queue keeps
/// its rows, lanes get their prefix, and the new column is there.
#[test]
fn a_version_1_cache_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Client::open(live_config("http://127.0.0.1:9", dir.path())).unwrap();
        drop(c);
    }
    let db = dir.path().join("cache.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    // Back to version 1: no retry_after_ms, bare thread lanes, one queued create.
    conn.execute_batch(
        "DROP TABLE queue;
         CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL,
            kind TEXT NOT NULL, payload TEXT NOT NULL, depends_on INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0, next_due_ms INTEGER NOT NULL,
            state TEXT NOT NULL, last_error TEXT, created_ms INTEGER NOT NULL);
         INSERT INTO queue (lane, kind, payload, attempts, next_due_ms, state, created_ms)
            VALUES ('t1', 'put_library_item',
                    '{\"op\":\"put_library_item\",\"item_id\":\"old\",\"content_hash\":\"00000000000000000000000000000000000000000000000000000000000000aa\",\"title\":\"Old\"}',
                    0, 1, 'pending', 1);
         DROP TABLE library;
         UPDATE meta SET value = '1' WHERE key = 'schema';",
    )
    .unwrap();
    drop(conn);
    let c = Client::open(live_config("http://127.0.0.1:9", dir.path())).unwrap();
    assert!(c.recovered().is_none(), "migrated, not rebuilt");
    let q = c.queue().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].lane.to_string(), "thread:t1");
    assert_eq!(q[0].retry_after_ms, None);
    assert_eq!(q[0].state, QueueState::Pending);
    assert!(matches!(
        &q[0].op,
        audio_dedup_client::QueuedOp::PutLibraryItem {
            content_hash: Some(_),
            from_message: None,
            ..
        }
    ));
    assert!(c.library().unwrap().is_empty());
}

/// "Two people, two devices" against the local server, with a third user who is in none of
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_two_devices_on_the_local_server() {
    let s = TempServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let open = |token: &str, name: &str| {
        let mut cfg = ClientConfig::new(&s.base, token, dir.path().join(name));
        cfg.request_timeout = Duration::from_secs(10);
        Client::open(cfg).unwrap()
    };
    let (alice, bob, carol) = (open(ALICE, "alice"), open(BOB, "bob"), open(CAROL, "carol"));
    let server = &s.inner;
    support::story::two_devices(&alice, &bob, &carol, dir.path(), async |h| {
        !server.blob_path(&h.to_hex()).exists()
    })
    .await;
}
