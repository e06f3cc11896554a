//! The seed's five manual tests, automated, plus the failure cases around them: lost
//! responses, restarts mid-backoff, exact retry timing, LRU bounds, corrupted caches, logout.
//! Everything runs against the local server in-process on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use audio_dedup_client::{Client, ClientConfig, QueueState, SendState, Update};
use audio_dedup_core::ports::{Clock, ManualClock, SystemClock};
use audio_dedup_core::ThreadId;
use reqwest::Method;
use serde_json::json;
use support::*;

fn config(url: &str, token: &str, dir: &std::path::Path, clock: &Arc<ManualClock>) -> ClientConfig {
    let mut c = ClientConfig::new(url, token, dir);
    c.clock = clock.clone();
    c.request_timeout = Duration::from_millis(800);
    c.retry_jitter = false;
    // Exact schedules on a manual clock: the app's calls only (the background sender has
    // its own tests in `background.rs`).
    c.background_sender = false;
    c
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemClock.now_ms()))
}

fn tid(s: &str) -> ThreadId {
    s.parse().unwrap()
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

/// Seed test 1: threads load from the cache with the server down; they sync after 60 s, or at
/// once when forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_load_offline_and_sync_after_the_interval_or_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, BOB, "t1", &["alice"]).await;
    let clk = clock();
    let c = Client::open(config(&s.url(), ALICE, &dir.path().join("client"), &clk)).unwrap();
    assert!(c.cached_threads().unwrap().is_empty());
    assert_eq!(c.sync_threads().await.unwrap(), 1);

    s.stop().await;
    let t0 = std::time::Instant::now();
    let cached = c.threads().unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "from the cache at once"
    );
    assert_eq!(
        cached.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["t1"]
    );
    assert!(!c.threads_stale().unwrap(), "synced just now");

    s.restart().await;
    make_thread(&s, BOB, "t2", &["alice"]).await;
    clk.advance(Duration::from_secs(30));
    assert!(!c.threads_stale().unwrap(), "30 s: no background sync yet");
    assert_eq!(c.threads().unwrap().len(), 1);
    clk.advance(Duration::from_secs(31));
    assert!(c.threads_stale().unwrap(), "61 s: stale");
    let mut updates = c.subscribe();
    let answered = c.threads().unwrap();
    assert_eq!(
        answered.len(),
        1,
        "the cached list answers at once; the sync runs behind it"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Update::ThreadsChanged { count }) = updates.recv().await {
                return count;
            }
        }
    })
    .await
    .expect("background sync within 5 s");
    assert_eq!(got, 1);
    assert_eq!(c.cached_threads().unwrap().len(), 2);
    // Forced: at once, whatever the interval.
    make_thread(&s, BOB, "t3", &["alice"]).await;
    assert_eq!(c.sync_threads().await.unwrap(), 1);
    assert_eq!(c.cached_threads().unwrap().len(), 3);
}

/// Seed test 2: another client adds a message; a refresh fetches only that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_fetches_only_what_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, BOB, "t1", &["alice"]).await;
    for i in 0..20 {
        s.call(
            BOB,
            Method::POST,
            "/v1/threads/t1/messages",
            Some(json!({"id": format!("b{i}"), "snapshot": {"i": i}})),
        )
        .await;
    }
    let (proxy, paddr) = Proxy::start(s.url(), Duration::ZERO).await;
    let clk = clock();
    let c = Client::open(config(
        &format!("http://{paddr}"),
        ALICE,
        &dir.path().join("client"),
        &clk,
    ))
    .unwrap();
    let first = c.sync_messages(&tid("t1")).await.unwrap();
    assert_eq!((first.new, first.deleted), (20, 0));
    assert_eq!(c.messages(&tid("t1")).unwrap().len(), 20);

    s.call(
        BOB,
        Method::POST,
        "/v1/threads/t1/messages",
        Some(json!({"id": "b-new", "snapshot": {"late": true}})),
    )
    .await;
    proxy.clear();
    let r = c.sync_messages(&tid("t1")).await.unwrap();
    assert_eq!((r.new, r.deleted, r.requests), (1, 0, 1));
    assert_eq!(
        proxy.requests(),
        ["GET /v1/threads/t1/messages?after=20&limit=500"],
        "one request, from the stored cursor"
    );
    let msgs = c.messages(&tid("t1")).unwrap();
    assert_eq!(msgs.len(), 21);
    assert_eq!(msgs.last().unwrap().id.as_str(), "b-new");
    // A deletion arrives as a tombstone and the message leaves the cache's list.
    s.call(BOB, Method::DELETE, "/v1/threads/t1/messages/b3", None)
        .await;
    let r = c.sync_messages(&tid("t1")).await.unwrap();
    assert_eq!((r.new, r.deleted), (0, 1));
    assert!(c
        .messages(&tid("t1"))
        .unwrap()
        .iter()
        .all(|m| m.id.as_str() != "b3"));
    // Nothing new: one request, nothing merged.
    proxy.clear();
    let r = c.sync_messages(&tid("t1")).await.unwrap();
    assert_eq!((r.new, r.deleted, r.requests), (0, 0, 1));
}

/// Seed test 3: sending offline shows the message at once; when the server is back the queue
/// delivers it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_send_offline_then_delivered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let clk = clock();
    let c = Client::open(config(&s.url(), ALICE, &dir.path().join("client"), &clk)).unwrap();
    s.stop().await;
    let mut updates = c.subscribe();
    let m = c
        .send_message(&tid("t1"), &json!({"bpm": 99}), None)
        .await
        .unwrap();
    assert_eq!(m.send_state, SendState::Sending);
    assert!(
        !c.is_online(),
        "the failed request flipped the client offline"
    );
    assert_eq!(c.messages(&tid("t1")).unwrap().len(), 1, "shown at once");
    assert_eq!(c.pending_count().unwrap(), 1);
    let mut saw_sending = false;
    while let Ok(u) = updates.try_recv() {
        if matches!(
            u,
            Update::Message {
                state: SendState::Sending,
                ..
            }
        ) {
            saw_sending = true;
        }
    }
    assert!(saw_sending);

    s.restart().await;
    clk.advance(Duration::from_secs(2));
    let r = c.process_queue().await.unwrap();
    assert_eq!(r.sent, 1);
    assert!(c.is_online());
    assert_eq!(c.pending_count().unwrap(), 0);
    let local = c.messages(&tid("t1")).unwrap();
    assert_eq!(local[0].send_state, SendState::Sent);
    assert_eq!(local[0].cursor, Some(1));
    let server = s.messages(ALICE, "t1").await;
    assert_eq!(server.len(), 1);
    assert_eq!(server[0]["id"], m.id.as_str());
    // Processing again sends nothing.
    assert_eq!(c.process_queue().await.unwrap().sent, 0);
    assert_eq!(s.messages(ALICE, "t1").await.len(), 1);
}

/// Seed test 5: three messages queued offline are delivered in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_offline_messages_are_delivered_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    make_thread(&s, ALICE, "t2", &[]).await;
    let clk = clock();
    let c = Client::open(config(&s.url(), ALICE, &dir.path().join("client"), &clk)).unwrap();
    s.stop().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            c.send_message(&tid("t1"), &json!({"n": i}), None)
                .await
                .unwrap()
                .id,
        );
    }
    c.send_message(&tid("t2"), &json!({"other": true}), None)
        .await
        .unwrap();
    assert_eq!(c.pending_count().unwrap(), 4);
    s.restart().await;
    clk.advance(Duration::from_secs(2));
    let r = c.process_queue().await.unwrap();
    assert_eq!(r.sent, 4);
    let server: Vec<String> = s
        .messages(ALICE, "t1")
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        server,
        ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "in order, once each"
    );
    assert_eq!(s.messages(ALICE, "t2").await.len(), 1);
}

/// The server commits but its answer is lost (the client times out and retries): still one
/// message on the server, and one reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_response_creates_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let (proxy, paddr) = Proxy::start(s.url(), Duration::from_secs(3)).await;
    let clk = clock();
    let c = Client::open(config(
        &format!("http://{paddr}"),
        ALICE,
        &dir.path().join("client"),
        &clk,
    ))
    .unwrap();
    proxy.lose_next(1, "POST /v1/threads/t1/messages");
    let m = c
        .send_message(&tid("t1"), &json!({"x": 1}), None)
        .await
        .unwrap();
    assert_eq!(m.send_state, SendState::Sending, "the answer never came");
    assert_eq!(
        s.messages(ALICE, "t1").await.len(),
        1,
        "but the server committed"
    );
    clk.advance(Duration::from_secs(2));
    let r = c.process_queue().await.unwrap();
    assert_eq!(r.sent, 1);
    let server = s.messages(ALICE, "t1").await;
    assert_eq!(
        server.len(),
        1,
        "the retry was answered with the same message"
    );
    assert_eq!(
        c.messages(&tid("t1")).unwrap()[0].send_state,
        SendState::Sent
    );
    let posts = proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(posts, 2);
}

/// Retries follow the documented schedule exactly (jitter off) while the server answers
/// and refuses (503): 1 s, 2 s, 4 s, then failed. The attempt count and due time survive a
/// restart mid-backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_schedule_is_exact_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let (proxy, paddr) = Proxy::start(s.url(), Duration::ZERO).await;
    let url = format!("http://{paddr}");
    proxy.refuse_next(4, 503, None);
    let clk = clock();
    let cdir = dir.path().join("client");
    let c = Client::open(config(&url, ALICE, &cdir, &clk)).unwrap();
    let t0 = clk.now_ms();
    c.send_message(&tid("t1"), &json!({}), None).await.unwrap(); // attempt 1 refused
    let q = c.queue().unwrap();
    assert_eq!((q[0].attempts, q[0].next_due_ms - t0), (1, 1_000));
    // Not due yet: nothing is tried.
    clk.advance(Duration::from_millis(999));
    c.process_due().await.unwrap();
    assert_eq!(c.queue().unwrap()[0].attempts, 1);
    clk.advance(Duration::from_millis(1));
    c.process_due().await.unwrap(); // attempt 2
    let q = c.queue().unwrap();
    assert_eq!((q[0].attempts, q[0].next_due_ms - clk.now_ms()), (2, 2_000));
    drop(c);
    // A restart mid-backoff: the same attempt count and due time.
    let c = Client::open(config(&url, ALICE, &cdir, &clk)).unwrap();
    let q = c.queue().unwrap();
    assert_eq!((q[0].attempts, q[0].next_due_ms - clk.now_ms()), (2, 2_000));
    clk.advance(Duration::from_secs(2));
    c.process_due().await.unwrap(); // attempt 3
    assert_eq!(c.queue().unwrap()[0].next_due_ms - clk.now_ms(), 4_000);
    clk.advance(Duration::from_secs(4));
    c.process_due().await.unwrap(); // attempt 4: out of retries
    let q = c.queue().unwrap();
    assert_eq!(q[0].state, QueueState::Failed);
    assert!(
        matches!(
            q[0].last_error,
            Some(audio_dedup_client::FailureReason::GaveUp { attempts: 4, .. })
        ),
        "{q:?}"
    );
    assert_eq!(
        c.messages(&tid("t1")).unwrap()[0].send_state,
        SendState::Failed
    );
    assert_eq!(c.pending_count().unwrap(), 0);
    assert_eq!(proxy.requests().len(), 4, "one request per attempt");
    // Retry it once the server accepts again: sent.
    c.retry_failed(q[0].id).unwrap();
    assert_eq!(c.process_queue().await.unwrap().sent, 1);
    assert_eq!(s.messages(ALICE, "t1").await.len(), 1);
}

/// Offline is what the queue is for: attempts that get no answer back off (doubling, up to
/// `max_retry_delay`) but never fail the operation, however long the outage. One
/// `process_queue` when the server is back delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_schedule_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let url = s.url();
    s.stop().await;
    let clk = clock();
    let c = Client::open(config(&url, ALICE, &dir.path().join("client"), &clk)).unwrap();
    c.send_message(&tid("t1"), &json!({"n": 1}), None)
        .await
        .unwrap();
    let mut waits = Vec::new();
    for _ in 0..9 {
        let q = c.queue().unwrap();
        let wait = q[0].next_due_ms - clk.now_ms();
        waits.push(wait / 1_000);
        clk.advance(Duration::from_millis(wait as u64));
        c.process_due().await.unwrap();
    }
    assert_eq!(
        waits,
        [1, 2, 4, 8, 16, 32, 60, 60, 60],
        "doubling, capped at 60 s"
    );
    let q = c.queue().unwrap();
    assert_eq!(
        (q[0].state, q[0].attempts, q[0].unanswered),
        (QueueState::Pending, 10, 10)
    );
    assert_eq!(
        c.messages(&tid("t1")).unwrap()[0].send_state,
        SendState::Sending,
        "still sending after 4 minutes offline"
    );
    s.restart().await;
    let r = c.process_queue().await.unwrap();
    assert_eq!((r.sent, r.failed), (1, 0));
    assert_eq!(s.messages(ALICE, "t1").await.len(), 1);
}

/// With jitter, each delay is the documented one times a factor in [0.5, 1.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jittered_delays_stay_within_half_and_one_and_a_half_times() {
    let dir = tempfile::tempdir().unwrap();
    let clk = clock();
    let mut cfg = config(&format!("http://{}", free_addr()), ALICE, dir.path(), &clk);
    cfg.retry_jitter = true;
    let c = Client::open(cfg).unwrap();
    // One thread each: a lane stops at its first waiting operation.
    for round in 0..20 {
        c.send_message(&tid(&format!("t{round}")), &json!({"r": round}), None)
            .await
            .unwrap();
    }
    for e in c.queue().unwrap() {
        let d = e.next_due_ms - clk.now_ms();
        assert!((500..1_500).contains(&d), "delay {d} ms");
    }
}

/// A permanent refusal (4xx) fails the message with the server's reason; discarding rolls it
/// back; other threads' operations are not blocked by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_fails_without_blocking_other_threads_and_can_be_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "mine", &[]).await;
    make_thread(&s, BOB, "not-mine", &[]).await;
    let clk = clock();
    let c = Client::open(config(&s.url(), ALICE, &dir.path().join("client"), &clk)).unwrap();
    let bad = c
        .send_message(&tid("not-mine"), &json!({}), None)
        .await
        .unwrap();
    assert_eq!(bad.send_state, SendState::Failed);
    assert_eq!(
        bad.error.as_ref().and_then(|e| e.code()),
        Some(audio_dedup_core::ErrorCode::ThreadNotFound),
        "{:?}",
        bad.error
    );
    let good = c
        .send_message(&tid("mine"), &json!({}), None)
        .await
        .unwrap();
    assert_eq!(good.send_state, SendState::Sent);
    let failed = c.queue().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].state, QueueState::Failed);
    c.discard_failed(failed[0].id).unwrap();
    assert!(
        c.messages(&tid("not-mine")).unwrap().is_empty(),
        "rolled back"
    );
    assert!(c.queue().unwrap().is_empty());
}

/// Creating then deleting a message that never left the device cancels both, no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_delete_unsent_cancels_both_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let (proxy, paddr) = Proxy::start(s.url(), Duration::ZERO).await;
    let clk = clock();
    // Through a dead address first, so the create stays queued.
    let cdir = dir.path().join("client");
    let c = Client::open(config(
        &format!("http://{}", free_addr()),
        ALICE,
        &cdir,
        &clk,
    ))
    .unwrap();
    let m = c.send_message(&tid("t1"), &json!({}), None).await.unwrap();
    drop(c);
    let c = Client::open(config(&format!("http://{paddr}"), ALICE, &cdir, &clk)).unwrap();
    proxy.clear();
    c.delete_message(&tid("t1"), &m.id).await.unwrap();
    assert!(
        proxy.requests().is_empty(),
        "no network call: {:?}",
        proxy.requests()
    );
    assert!(c.messages(&tid("t1")).unwrap().is_empty());
    assert_eq!(c.pending_count().unwrap(), 0);
    clk.advance(Duration::from_secs(10));
    c.process_queue().await.unwrap();
    assert!(s.messages(ALICE, "t1").await.is_empty());

    // A sent message: the delete goes to the server (optimistically hidden at once).
    let sent = c
        .send_message(&tid("t1"), &json!({"keep": false}), None)
        .await
        .unwrap();
    assert_eq!(sent.send_state, SendState::Sent);
    c.delete_message(&tid("t1"), &sent.id).await.unwrap();
    assert!(c.messages(&tid("t1")).unwrap().is_empty());
    let server = s.messages(ALICE, "t1").await;
    assert_eq!(server.last().unwrap()["state"], "deleted");
}

/// The snapshot LRU holds exactly its capacity, evicting the least recently used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_lru_holds_exactly_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, BOB, "t1", &["alice"]).await;
    for i in 0..35 {
        s.call(
            BOB,
            Method::POST,
            "/v1/threads/t1/messages",
            Some(json!({"id": format!("m{i}"), "snapshot": {"i": i}})),
        )
        .await;
    }
    let clk = clock();
    let c = Client::open(config(&s.url(), ALICE, &dir.path().join("client"), &clk)).unwrap();
    c.sync_messages(&tid("t1")).await.unwrap();
    for i in 0..31 {
        let body = c.snapshot(&format!("m{i}").parse().unwrap()).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            json!({"i": i})
        );
    }
    let cached = c.cached_snapshots().unwrap();
    assert_eq!(cached.len(), 30, "exactly the default 30");
    assert!(
        !cached.contains(&"m0".to_owned()),
        "the least recently used went"
    );
    // Touch m1 (now the oldest), add another: m2 goes, m1 stays.
    c.snapshot(&"m1".parse().unwrap()).await.unwrap();
    c.snapshot(&"m31".parse().unwrap()).await.unwrap();
    let cached = c.cached_snapshots().unwrap();
    assert_eq!(cached.len(), 30);
    assert!(cached.contains(&"m1".to_owned()) && !cached.contains(&"m2".to_owned()));
    assert_eq!(cached[0], "m31");
}

/// An unreadable cache file is moved aside and rebuilt from the server; a readable but
/// unusable one gives up its queued operations to the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cache_is_moved_aside_and_rebuilt_keeping_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let clk = clock();
    let cdir = dir.path().join("client");
    // 1. Garbage: rebuilt, and a sync fills it again.
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(cdir.join("cache.sqlite"), vec![0x5a; 64 * 1024]).unwrap();
    let c = Client::open(config(&s.url(), ALICE, &cdir, &clk)).unwrap();
    let (aside, _) = c.recovered().expect("recovered");
    assert!(aside.exists());
    assert_eq!(c.sync_threads().await.unwrap(), 1);
    drop(c);
    // 2. Queued operations in a file this version cannot use: carried over, then delivered.
    s.stop().await;
    let c = Client::open(config(&s.url(), ALICE, &cdir, &clk)).unwrap();
    c.send_message(&tid("t1"), &json!({"q": 1}), None)
        .await
        .unwrap();
    drop(c);
    let conn = rusqlite::Connection::open(cdir.join("cache.sqlite")).unwrap();
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema'", [])
        .unwrap();
    drop(conn);
    let c = Client::open(config(&s.url(), ALICE, &cdir, &clk)).unwrap();
    assert_eq!(
        c.recovered().map(|r| r.1),
        Some(1),
        "one queued operation carried over"
    );
    assert_eq!(c.pending_count().unwrap(), 1);
    s.restart().await;
    clk.advance(Duration::from_secs(5));
    c.process_queue().await.unwrap();
    assert_eq!(c.queue().unwrap().len(), 0, "sent, not failed");
    assert_eq!(
        s.messages(ALICE, "t1").await.len(),
        1,
        "delivered from the carried-over queue"
    );
}

/// Logout: `clear_all` removes every cache and the queue; nothing of the previous user is
/// sent afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_all_on_logout_drops_the_previous_users_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let clk = clock();
    let c = Client::open(config(&s.url(), ALICE, &dir.path().join("client"), &clk)).unwrap();
    c.sync_threads().await.unwrap();
    s.stop().await;
    c.send_message(&tid("t1"), &json!({"secret": true}), None)
        .await
        .unwrap();
    c.clear_all().await.unwrap();
    assert_eq!(c.pending_count().unwrap(), 0);
    assert!(c.cached_threads().unwrap().is_empty());
    s.restart().await;
    clk.advance(Duration::from_secs(5));
    assert_eq!(c.process_queue().await.unwrap().sent, 0);
    assert!(s.messages(ALICE, "t1").await.is_empty());
}

/// 429 and 503 are retried, no sooner than `Retry-After`; 408 too; a 4xx is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_only_408_429_5xx_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    make_thread(&s, ALICE, "t1", &[]).await;
    let (proxy, paddr) = Proxy::start(s.url(), Duration::ZERO).await;
    let clk = clock();
    let c = Client::open(config(
        &format!("http://{paddr}"),
        ALICE,
        &dir.path().join("client"),
        &clk,
    ))
    .unwrap();
    proxy.refuse_next(1, 429, Some(7));
    let m = c.send_message(&tid("t1"), &json!({}), None).await.unwrap();
    assert_eq!(
        m.send_state,
        SendState::Sending,
        "{:?} {:?}",
        proxy.requests(),
        c.queue()
    );
    let q = c.queue().unwrap();
    assert_eq!(
        (q[0].attempts, q[0].next_due_ms - clk.now_ms()),
        (1, 7_000),
        "Retry-After (7 s) over the 1 s backoff"
    );
    assert!(c.is_online(), "an answer, even a 429, means online");
    clk.advance(Duration::from_secs(7));
    proxy.refuse_next(1, 408, None);
    c.process_due().await.unwrap();
    let q = c.queue().unwrap();
    assert_eq!(
        (q[0].attempts, q[0].next_due_ms - clk.now_ms()),
        (2, 2_000),
        "408: retried on the schedule"
    );
    clk.advance(Duration::from_secs(2));
    proxy.refuse_next(1, 503, Some(1));
    c.process_due().await.unwrap();
    assert_eq!(
        c.queue().unwrap()[0].next_due_ms - clk.now_ms(),
        4_000,
        "the longer of backoff and Retry-After"
    );
    clk.advance(Duration::from_secs(4));
    assert_eq!(c.process_due().await.unwrap().sent, 1);
    // A 4xx other than 408/429 fails at once, no retry.
    proxy.refuse_next(1, 422, None);
    let bad = c
        .send_message(&tid("t1"), &json!({"n": 2}), None)
        .await
        .unwrap();
    assert_eq!(bad.send_state, SendState::Failed);
    assert_eq!(c.queue().unwrap()[0].state, QueueState::Failed);
}

/// A recording attached offline is the client's own: the app deletes its file and records a
/// new take at the same path, and the queue still sends the first take when the server is
/// back (from the copy in the cache folder), which then plays from the cache with no
/// request. A copy no queued upload needs is gone at the next open.
#[tokio::test]
async fn a_queued_recording_survives_the_app_deleting_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), free_addr()).await;
    make_thread(&s, ALICE, "rec", &[]).await;
    s.stop().await;
    let clk = clock();
    let cache = dir.path().join("c");
    let c = Client::open(config(&s.url(), ALICE, &cache, &clk)).unwrap();
    let take = dir.path().join("take.wav");
    let first: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&take, &first).unwrap();
    let attach = audio_dedup_client::Attachment::File {
        path: take.clone(),
        format: audio_dedup_core::AudioFormat::Wav,
    };
    let m = c
        .send_message(&tid("rec"), &json!({"take": 1}), Some(attach))
        .await
        .unwrap();
    assert_eq!(m.send_state, SendState::Sending);
    let hash = m.audio.expect("audio").content_hash;
    assert_eq!(hash, audio_dedup_core::ContentHash::of(&first));
    // The app deletes the take, then records another at the same path.
    std::fs::remove_file(&take).unwrap();
    std::fs::write(&take, b"a different take").unwrap();

    s.restart().await;
    let r = c.process_queue().await.unwrap();
    assert_eq!((r.sent, r.failed), (2, 0), "the upload, then the message");
    let sent = c.messages(&tid("rec")).unwrap();
    assert_eq!(sent[0].send_state, SendState::Sent, "{sent:?}");
    assert!(
        s.blob_path(&hash.to_string()).exists(),
        "the first take is on the server"
    );
    // The copy became cached audio: playable with no request, the outbox empty.
    let render = audio_dedup_core::AudioRender {
        content_hash: hash,
        format: audio_dedup_core::AudioFormat::Wav,
    };
    let h = c.playable_path(&render, None, None).await.unwrap();
    assert!(h.is_from_cache());
    assert_eq!(std::fs::read(h.path()).unwrap(), first);
    assert_eq!(std::fs::read_dir(cache.join("outbox")).unwrap().count(), 0);

    // A stray copy (staged, never queued: a kill in between) is removed at the next open.
    drop(h);
    drop(c);
    std::fs::write(cache.join("outbox").join("stray"), b"x").unwrap();
    let _c = Client::open(config(&s.url(), ALICE, &cache, &clk)).unwrap();
    assert_eq!(std::fs::read_dir(cache.join("outbox")).unwrap().count(), 0);
}

/// A message whose upload failed is retried by the message: `retry_message` puts the upload
/// back with it, and both go through once the cause is gone.
#[tokio::test]
async fn retry_message_retries_the_upload_it_depends_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), free_addr()).await;
    make_thread(&s, ALICE, "again", &[]).await;
    s.stop().await;
    let clk = clock();
    let cache = dir.path().join("c");
    let c = Client::open(config(&s.url(), ALICE, &cache, &clk)).unwrap();
    let take = dir.path().join("take.mp3");
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&take, &bytes).unwrap();
    let attach = audio_dedup_client::Attachment::File {
        path: take,
        format: audio_dedup_core::AudioFormat::Mp3,
    };
    let m = c
        .send_message(&tid("again"), &json!({}), Some(attach))
        .await
        .unwrap();
    let hash = m.audio.expect("audio").content_hash;
    // The client's own copy goes bad while offline (a disk error, say).
    let copy = cache.join("outbox").join(hash.to_hex());
    std::fs::write(&copy, b"not the take").unwrap();
    s.restart().await;
    let r = c.process_queue().await.unwrap();
    assert_eq!(r.failed, 2, "the upload, and the message that needs it");
    let failed = &c.messages(&tid("again")).unwrap()[0];
    assert_eq!(failed.send_state, SendState::Failed);
    assert_eq!(
        failed.error,
        Some(audio_dedup_client::FailureReason::DependencyFailed)
    );
    let q = c.queue().unwrap();
    assert_eq!(
        q[0].last_error,
        Some(audio_dedup_client::FailureReason::FileChanged)
    );

    // Fixed, and retried by the message alone.
    std::fs::write(&copy, &bytes).unwrap();
    c.retry_message(&tid("again"), &m.id).unwrap();
    assert_eq!(
        c.messages(&tid("again")).unwrap()[0].send_state,
        SendState::Sending
    );
    let r = c.process_queue().await.unwrap();
    assert_eq!((r.sent, r.failed), (2, 0));
    assert_eq!(
        c.messages(&tid("again")).unwrap()[0].send_state,
        SendState::Sent
    );
    assert!(s.blob_path(&hash.to_string()).exists());
    // Nothing failed is left to retry.
    assert!(c.retry_message(&tid("again"), &m.id).is_err());
}
