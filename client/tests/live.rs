//! Live updates end to end: bob's client keeps the event stream open and learns of alice's
//! messages by itself, across a server restart, with nothing lost or doubled. Loopback only;
//! every wait is bounded.

mod support;

use std::time::Duration;

use audio_dedup_client::{Client, ClientConfig, Update};
use audio_dedup_core::ThreadId;
use reqwest::Method;
use serde_json::json;
use support::*;

fn bob(url: &str, dir: &std::path::Path) -> Client {
    let mut c = ClientConfig::new(url, BOB, dir);
    c.request_timeout = Duration::from_secs(5);
    Client::open(c).expect("open bob")
}

async fn post(s: &Server, thread: &str, id: &str) {
    let (st, v) = s
        .call(
            ALICE,
            Method::POST,
            &format!("/v1/threads/{thread}/messages"),
            Some(json!({ "id": id, "snapshot": { "n": id } })),
        )
        .await;
    assert_eq!(st, 201, "{v}");
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
    post(&server, "jam", "m1").await;
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
    post(&server, "jam", "m2").await;
    until_cached(&client, &thread, &["m1", "m2"]).await;
    post(&server, "jam", "m3").await;
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
    post(&server, "away", "before").await;
    let client = bob(&server.url(), &dir.path().join("bob"));
    assert!(client.cached_threads().expect("cache").is_empty());
    let _live = client.go_live();
    until_cached(&client, &"away".parse().unwrap(), &["before"]).await;
}
