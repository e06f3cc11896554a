//! Live updates on the local server (`GET /v1/live`, a WebSocket as API Gateway's WebSocket
//! API serves it): a member is poked when a thread it is in moves, a user when their feed or
//! library moves, a non-member never; the keepalive is answered; no token, no upgrade.

use std::time::Duration;

use audio_dedup_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One open live connection, spoken frame by frame over a loopback socket (text frames are
/// all this channel uses).
struct Events {
    socket: TcpStream,
}

impl Events {
    async fn open(base: &str, token: &str) -> Self {
        let addr = base.trim_start_matches("http://");
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "GET /v1/live HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             authorization: Bearer {token}\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).await.expect("send");
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tokio::time::timeout(WAIT, socket.read_exact(&mut b))
                .await
                .expect("an answer")
                .expect("read");
            got.push(b[0]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        Self { socket }
    }

    /// Sends a text frame (masked, as a client must).
    async fn send(&mut self, text: &str) {
        let bytes = text.as_bytes();
        assert!(bytes.len() < 126);
        let mask = [3u8, 1, 4, 1];
        let mut frame = vec![0x81, 0x80 | bytes.len() as u8];
        frame.extend(mask);
        frame.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).await.expect("send");
    }

    /// The next text frame as JSON, if one comes within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<Value> {
        let socket = &mut self.socket;
        tokio::time::timeout(limit, async {
            let mut h = [0u8; 2];
            socket.read_exact(&mut h).await.ok()?;
            let mut len = usize::from(h[1] & 0x7f);
            if len == 126 {
                let mut l = [0u8; 2];
                socket.read_exact(&mut l).await.ok()?;
                len = usize::from(u16::from_be_bytes(l));
            }
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).await.ok()?;
            (h[0] & 0x0f == 1).then(|| serde_json::from_slice(&payload).expect("json"))
        })
        .await
        .ok()
        .flatten()
    }

    /// The next poke within `limit`.
    async fn poke(&mut self, limit: Duration) -> Option<Value> {
        self.next(limit).await
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
async fn the_live_channel_needs_a_token() {
    let s = TestServer::start().await;
    let res = reqwest::get(format!("{}/v1/live", s.base))
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// The keepalive (`{"action":"ping"}`, as the client sends it) is answered with a pong, on
/// the same connection that carries pokes.
#[tokio::test]
async fn the_keepalive_is_answered() {
    let s = TestServer::start().await;
    let mut events = Events::open(&s.base, ALICE).await;
    events.send(r#"{"action":"ping"}"#).await;
    assert_eq!(events.next(WAIT).await, Some(json!({ "kind": "pong" })));
}
