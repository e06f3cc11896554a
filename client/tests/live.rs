//! Live updates end to end over the WebSocket channel (`GET /v1/live`, as API Gateway serves
//! it): bob's client learns of alice's messages by itself, across a server restart, with
//! nothing lost or doubled; keepalives hold an idle connection open; a rotation loses no
//! poke; a reconnect syncs only the threads that moved; dropping the handle ends every task.
//! Loopback only; every wait is bounded.

mod support;

use std::time::Duration;

use audio_dedup_client::{Client, ClientConfig, Update};
use audio_dedup_core::ThreadId;
use reqwest::Method;
use serde_json::json;
use support::live_server::LiveServer;
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn bob(url: &str, dir: &std::path::Path) -> Client {
    let mut c = ClientConfig::new(url, BOB, dir);
    c.request_timeout = Duration::from_secs(5);
    Client::open(c).expect("open bob")
}

/// Waits for bob's cache to hold exactly `want` in `thread`, watching his update stream.
async fn until_cached(client: &Client, thread: &ThreadId, want: &[&str]) {
    let mut updates = client.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let have: Vec<String> = client
            .messages(thread)
            .expect("cache")
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        if have == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's cache has {have:?}, want {want:?}"
        );
        let _ = tokio::time::timeout_at(deadline, updates.recv()).await;
    }
}

#[tokio::test]
async fn a_message_reaches_the_other_member_without_any_call_from_the_app() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server =
        Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    let (st, v) = server
        .call(
            ALICE,
            Method::POST,
            "/v1/threads",
            Some(json!({ "id": "jam", "title": "jam", "members": ["bob"] })),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let thread: ThreadId = "jam".parse().unwrap();
    let client = bob(&server.url(), &dir.path().join("bob"));
    let mut updates = client.subscribe();
    let live = client.go_live();

    // The thread list is synced on connect; the message arrives by a poke.
    post_as_alice(&server.url(), "jam", "m1").await;
    until_cached(&client, &thread, &["m1"]).await;
    let mut saw_sync = false;
    while let Ok(u) = updates.try_recv() {
        saw_sync |=
            matches!(u, Update::MessagesSynced { ref thread_id, .. } if *thread_id == thread);
    }
    assert!(saw_sync, "the app saw the usual typed update");

    // The server goes away and comes back: the client reconnects and re-syncs, so a message
    // posted meanwhile arrives once, and nothing is doubled.
    server.restart().await;
    post_as_alice(&server.url(), "jam", "m2").await;
    until_cached(&client, &thread, &["m1", "m2"]).await;
    post_as_alice(&server.url(), "jam", "m3").await;
    until_cached(&client, &thread, &["m1", "m2", "m3"]).await;
    drop(live);
}

/// Bob was added to a thread, and a message posted in it, while his client was away: going
/// live syncs the thread list, and the thread it did not know is synced too, with no poke.
#[tokio::test]
async fn a_thread_joined_while_away_is_synced_on_connect() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    let (st, v) = server
        .call(
            ALICE,
            Method::POST,
            "/v1/threads",
            Some(json!({ "id": "away", "title": "away", "members": ["bob"] })),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    post_as_alice(&server.url(), "away", "before").await;
    let client = bob(&server.url(), &dir.path().join("bob"));
    assert!(client.cached_threads().expect("cache").is_empty());
    let _live = client.go_live();
    until_cached(&client, &"away".parse().unwrap(), &["before"]).await;
}

/// Bob's client on `s`, with `configure` applied (live settings), no background sender.
fn bob_on(
    s: &LiveServer,
    dir: &std::path::Path,
    configure: impl FnOnce(&mut ClientConfig),
) -> Client {
    let mut c = ClientConfig::new(s.url(), BOB, dir);
    c.request_timeout = Duration::from_secs(5);
    c.background_sender = false;
    configure(&mut c);
    Client::open(c).expect("open bob")
}

/// Alice creates `n` threads with bob, `t0`..: answers their ids.
async fn threads_with_bob(s: &LiveServer, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("t{i}");
        let (st, v) = s
            .call(
                ALICE,
                Method::POST,
                "/v1/threads",
                Some(json!({ "id": id, "title": id, "members": ["bob"] })),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        ids.push(id);
    }
    ids
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cached(client: &Client, thread: &str) -> Vec<String> {
    client
        .messages(&thread.parse().expect("id"))
        .expect("cache")
        .into_iter()
        .map(|m| m.id.to_string())
        .collect()
}

/// The server closes a connection that sends nothing for its idle timeout (600 ms here, as
/// API Gateway does after 10 min). Keepalives every 200 ms hold one connection open for 3 s:
/// one upgrade, one connection, and a poke still arrives on it.
#[tokio::test]
async fn an_idle_connection_is_kept_open_by_keepalives() {
    let s = LiveServer::start(|c| c.live.idle_timeout = Duration::from_millis(600)).await;
    threads_with_bob(&s, 1).await;
    let dir = tempfile::tempdir().expect("dir");
    let client = bob_on(&s, dir.path(), |c| {
        c.live_keepalive = Duration::from_millis(200)
    });
    let _live = client.go_live();
    s.until_open(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.hub.open_connections(), 1);
    assert_eq!(s.requests_to("GET /v1/live"), 1, "{:?}", s.requests());
    post_as_alice(&s.url(), "t0", "late").await;
    until("the poke after 3 idle seconds", || {
        cached(&client, "t0") == ["late"]
    })
    .await;
    assert_eq!(s.requests_to("GET /v1/live"), 1);
}

/// Without keepalives (a period longer than the server's idle timeout) the server closes the
/// connection and the client has to reconnect: the control for the test above.
#[tokio::test]
async fn without_keepalives_the_server_closes_an_idle_connection() {
    let s = LiveServer::start(|c| c.live.idle_timeout = Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("dir");
    let client = bob_on(&s, dir.path(), |c| {
        c.live_keepalive = Duration::from_secs(60)
    });
    let _live = client.go_live();
    until("a reconnect after the idle close", || {
        s.requests_to("GET /v1/live") >= 2
    })
    .await;
}

/// Rotations every 300 ms while alice posts one message into each of 12 threads, 100 ms
/// apart: each thread's message arrives by its own poke (no catch-up runs on a rotation),
/// so a poke lost between two connections would leave a thread empty.
#[tokio::test]
async fn a_rotation_loses_no_poke() {
    let s = LiveServer::start(|_| {}).await;
    let threads = threads_with_bob(&s, 12).await;
    let dir = tempfile::tempdir().expect("dir");
    let client = bob_on(&s, dir.path(), |c| {
        c.live_rotate_after = Duration::from_millis(300)
    });
    let _live = client.go_live();
    until("the catch-up synced the threads", || {
        client.cached_threads().map(|t| t.len()).unwrap_or(0) == 12
    })
    .await;
    let positions_before = s.requests_to("GET /v1/positions");
    for t in &threads {
        post_as_alice(&s.url(), t, &format!("m-{t}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in &threads {
        let want = [format!("m-{t}")];
        until("every thread's message", || cached(&client, t) == want).await;
    }
    assert!(
        s.requests_to("GET /v1/live") >= 4,
        "rotations happened: {:?}",
        s.requests()
    );
    assert_eq!(
        s.requests_to("GET /v1/positions"),
        positions_before,
        "a rotation needs no catch-up"
    );
    until("the old connections are closed", || {
        s.hub.open_connections() == 1
    })
    .await;
}

/// Bob caches 20 threads, pauses (the channel closes), alice posts into 3 of them, bob
/// resumes: the reconnect asks `GET /v1/positions` once and syncs exactly the 3 threads
/// that moved, not the thread list, not the library, not the other 17.
#[tokio::test]
async fn the_catch_up_after_a_disconnect_syncs_only_what_moved() {
    // No margin: the threads were all made a moment ago, as if long before.
    let s = LiveServer::start(|c| c.dedup.positions_margin = Duration::ZERO).await;
    let threads = threads_with_bob(&s, 20).await;
    let dir = tempfile::tempdir().expect("dir");
    let client = bob_on(&s, dir.path(), |_| {});
    let _live = client.go_live();
    until("the first catch-up synced every thread", || {
        s.requests_to("GET /v1/threads/") == 20
    })
    .await;
    s.until_open(1, WAIT).await;

    let before = client.api().positions(None).await.expect("positions");
    assert_eq!(before.threads.len(), 20);
    client.pause();
    s.until_open(0, WAIT).await;
    for t in &threads[5..8] {
        post_as_alice(&s.url(), t, &format!("away-{t}")).await;
    }
    // Asked with an earlier `as_of`, the answer lists the moved threads only.
    let since = client
        .api()
        .positions(Some(&before.as_of))
        .await
        .expect("positions");
    let listed: Vec<String> = since.threads.keys().map(|t| t.to_string()).collect();
    assert_eq!(listed, threads[5..8].to_vec());
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.clear();
    client.resume();
    for t in &threads[5..8] {
        let want = [format!("away-{t}")];
        until("the moved threads", || cached(&client, t) == want).await;
    }
    // Give stray syncs a moment to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = s.requests();
    let syncs: Vec<&String> = log
        .iter()
        .filter(|l| !l.starts_with("GET /v1/live"))
        .collect();
    assert_eq!(s.requests_to("GET /v1/positions"), 1, "{log:?}");
    assert_eq!(
        s.requests_to("GET /v1/positions?changed_since="),
        1,
        "the second catch-up asks only for what changed: {log:?}"
    );
    assert_eq!(s.requests_to("GET /v1/threads/"), 3, "{log:?}");
    assert_eq!(syncs.len(), 4, "positions + 3 syncs, nothing else: {log:?}");
    for t in &threads[5..8] {
        assert_eq!(
            s.requests_to(&format!("GET /v1/threads/{t}/messages")),
            1,
            "{log:?}"
        );
    }
}

/// `reconnect_now` replaces the connection at once (no backoff).
#[tokio::test]
async fn reconnect_now_reconnects_at_once() {
    let s = LiveServer::start(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let client = bob_on(&s, dir.path(), |_| {});
    let _live = client.go_live();
    s.until_open(1, WAIT).await;
    client.reconnect_now();
    tokio::time::timeout(Duration::from_secs(2), async {
        while s.requests_to("GET /v1/live") < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("reconnected within 2 s");
    s.until_open(1, WAIT).await;
}

/// A refused upgrade (a token the server does not know) asks the provider for a fresh token
/// once, then waits: no upgrade storm. A new token opens the channel.
#[tokio::test]
async fn a_refused_token_waits_for_a_new_one() {
    let s = LiveServer::start(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = ClientConfig::new(s.url(), "not-a-token-of-anyone-000", dir.path());
    cfg.background_sender = false;
    cfg.request_timeout = Duration::from_secs(5);
    let client = Client::open(cfg).expect("open");
    let _live = client.go_live();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tries = s.requests_to("GET /v1/live");
    assert!((1..=2).contains(&tries), "{:?}", s.requests());
    assert_eq!(s.hub.open_connections(), 0);
    client.set_token(BOB);
    s.until_open(1, WAIT).await;
}

/// Dropping the handle ends every task go_live started (the connection and the syncs): the
/// server sees the socket close, and once the app drops its client too, no clone is left
/// anywhere (a leaked task would hold one, and with it the cache folder's lock), so the
/// folder opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_ends_every_task() {
    let s = LiveServer::start(|_| {}).await;
    threads_with_bob(&s, 3).await;
    let dir = tempfile::tempdir().expect("dir");
    let client = bob_on(&s, dir.path(), |_| {});
    let live = client.go_live();
    s.until_open(1, WAIT).await;
    until("the catch-up ran", || {
        client.cached_threads().map(|t| t.len()).unwrap_or(0) == 3
    })
    .await;
    post_as_alice(&s.url(), "t1", "m").await;
    until("a poke was synced", || cached(&client, "t1") == ["m"]).await;
    drop(live);
    s.until_open(0, WAIT).await;
    drop(client);
    let mut reopened = None;
    until("no clone of the client is left", || {
        reopened = Client::open(ClientConfig::new(s.url(), BOB, dir.path())).ok();
        reopened.is_some()
    })
    .await;
}
