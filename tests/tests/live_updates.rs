//! Live updates on the local server (`GET /v1/events`, Server-Sent Events): a member is poked
//! when a thread it is in moves, a user when their feed or library moves, a non-member never;
//! idle connections get heartbeats; a slow consumer is dropped.

use std::time::Duration;

use audio_dedup_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// One open event stream, read as text.
struct Events {
    res: reqwest::Response,
    buf: String,
}

enum Got {
    Poke(Value),
    Heartbeat,
}

impl Events {
    async fn open(base: &str, token: &str) -> Self {
        let res = reqwest::Client::new()
            .get(format!("{base}/v1/events"))
            .bearer_auth(token)
            .send()
            .await
            .expect("connect");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Self {
            res,
            buf: String::new(),
        }
    }

    /// The next event or heartbeat, if one comes within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<Got> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if block.starts_with(":heartbeat") || block.starts_with(": heartbeat") {
                    return Some(Got::Heartbeat);
                }
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(str::trim);
                if block.lines().any(|l| l.trim() == "event: poke") {
                    let poke = serde_json::from_str(data.expect("a poke has data")).expect("json");
                    return Some(Got::Poke(poke));
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk())
                .await
                .ok()?;
            match chunk.expect("stream") {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// The next poke within `limit`, skipping heartbeats.
    async fn poke(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Got::Poke(p) => return Some(p),
                Got::Heartbeat => continue,
            }
        }
    }
}

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn members_are_poked_and_a_stranger_is_not() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let mut bob_events = Events::open(&s.base, BOB).await;
    let mut carol_events = Events::open(&s.base, CAROL).await;

    // A thread with bob: his feed moves.
    let made = alice
        .call(
            Method::POST,
            "/v1/threads",
            "/v1/threads",
            Body::Json(json!({ "title": "mix", "members": ["bob"] })),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED);
    let thread = made.body["id"].as_str().expect("id").to_owned();
    let feed = bob_events.poke(WAIT).await.expect("bob's feed poke");
    assert_eq!(feed["kind"], "feed");

    // A message: both members are poked with its position; carol hears nothing.
    let mut alice_events = Events::open(&s.base, ALICE).await;
    let posted = alice
        .call(
            Method::POST,
            "/v1/threads/{id}/messages",
            &format!("/v1/threads/{thread}/messages"),
            Body::Json(json!({ "id": "m1", "snapshot": { "bpm": 120 } })),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED);
    let want = json!({ "kind": "thread", "id": thread, "cursor": posted.body["cursor"] });
    assert_eq!(bob_events.poke(WAIT).await, Some(want.clone()));
    assert_eq!(alice_events.poke(WAIT).await, Some(want));
    assert_eq!(
        carol_events.poke(QUIET).await,
        None,
        "a stranger is not poked"
    );

    // A poke carries no content: kind, thread and position only.
    // Bob syncs from what he had and finds the message.
    let synced = bob
        .call(
            Method::GET,
            "/v1/threads/{id}/messages",
            &format!("/v1/threads/{thread}/messages?after=0"),
            Body::None,
        )
        .await;
    assert_eq!(synced.body["items"][0]["id"], posted.body["id"]);
}

#[tokio::test]
async fn a_library_change_pokes_its_owner_only() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let song = audio(3, 5_000);
    let up = alice.upload(&song, "format=mp3").await;
    assert_eq!(up.status, StatusCode::CREATED);
    let mut alice_events = Events::open(&s.base, ALICE).await;
    let mut bob_events = Events::open(&s.base, BOB).await;
    let put = alice
        .call(
            Method::PUT,
            "/v1/library/{item_id}",
            "/v1/library/song-1",
            Body::Json(json!({ "content_hash": sha256_hex(&song), "title": "Song" })),
        )
        .await;
    assert!(put.status.is_success(), "{:?}", put.body);
    let poke = alice_events.poke(WAIT).await.expect("alice's library poke");
    assert_eq!(poke["kind"], "library");
    assert_eq!(bob_events.poke(QUIET).await, None);
}

#[tokio::test]
async fn the_event_stream_needs_a_token() {
    let s = TestServer::start().await;
    let res = reqwest::get(format!("{}/v1/events", s.base))
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn idle_connections_get_heartbeats() {
    use audio_dedup_server::in_process::TempServer;
    use audio_dedup_server::TokenTable;

    let mut tokens = TokenTable::default();
    tokens.insert(ALICE, "alice", false).expect("token");
    let server = TempServer::start(tokens, |cfg| {
        cfg.live.heartbeat = Duration::from_millis(200);
    })
    .await
    .expect("start");
    let mut events = Events::open(&server.url(), ALICE).await;
    for _ in 0..2 {
        assert!(matches!(
            events.next(Duration::from_secs(3)).await,
            Some(Got::Heartbeat)
        ));
    }
}
