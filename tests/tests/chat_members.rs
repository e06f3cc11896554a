//! Thread membership through the HTTP API of the local server (issue #25): any member adds,
//! the creator removes, anyone leaves; each change is in the thread's log and the changed
//! member's feed; a member who is gone gets a stranger's 404 everywhere and writes nothing.
//! Every answer is checked against docs/openapi.yaml by the client.

use audio_dedup_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn create_thread(c: &Client, id: &str, members: &[String]) -> Reply {
    let body = json!({ "id": id, "title": format!("thread {id}"), "members": members });
    c.call(Method::POST, "/v1/threads", "/v1/threads", Body::Json(body))
        .await
}

async fn add(c: &Client, thread: &str, member: &str) -> Reply {
    c.call(
        Method::POST,
        "/v1/threads/{id}/members",
        &format!("/v1/threads/{thread}/members"),
        Body::Json(json!({ "member": member })),
    )
    .await
}

async fn remove(c: &Client, thread: &str, member: &str) -> Reply {
    c.call(
        Method::DELETE,
        "/v1/threads/{id}/members/{member}",
        &format!("/v1/threads/{thread}/members/{member}"),
        Body::None,
    )
    .await
}

async fn get(c: &Client, template: &str, path: &str) -> Reply {
    c.call(Method::GET, template, path, Body::None).await
}

async fn feed(c: &Client) -> Vec<Value> {
    let r = get(c, "/v1/threads", "/v1/threads").await;
    assert_eq!(r.status, StatusCode::OK);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

/// What a caller outside the thread gets on every route that names it or its messages:
/// `(status, code)` per route, in a fixed order.
async fn every_route(c: &Client, own: &str, thread: &str, msg: &str) -> Vec<(u16, String)> {
    let calls: Vec<(Method, &str, String, Body)> = vec![
        (
            Method::GET,
            "/v1/threads/{id}",
            format!("/v1/threads/{thread}"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/threads/{id}/messages",
            format!("/v1/threads/{thread}/messages?after=0"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            format!("/v1/threads/{thread}/messages"),
            Body::Json(json!({"id": "intruder-1", "snapshot": {}})),
        ),
        (
            Method::DELETE,
            "/v1/threads/{id}/messages/{message_id}",
            format!("/v1/threads/{thread}/messages/{msg}"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/threads/{id}/messages/{message_id}/audio",
            format!("/v1/threads/{thread}/messages/{msg}/audio"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/messages/{message_id}/snapshot",
            format!("/v1/messages/{msg}/snapshot"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/threads/{id}/members",
            format!("/v1/threads/{thread}/members"),
            Body::Json(json!({"member": "mallory"})),
        ),
        (
            Method::DELETE,
            "/v1/threads/{id}/members/{member}",
            format!("/v1/threads/{thread}/members/alice"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/threads/{id}/leave",
            format!("/v1/threads/{thread}/leave"),
            Body::None,
        ),
        (
            Method::PUT,
            "/v1/library/{item_id}",
            "/v1/library/stolen".into(),
            Body::Json(json!({"from_message": msg, "title": "stolen"})),
        ),
    ];
    let mut out = Vec::new();
    for (m, template, path, body) in calls {
        let r = c.call(m, template, &path, body).await;
        out.push((r.status.as_u16(), r.code().to_owned()));
    }
    // Forwarding into a thread of their own.
    let fwd = json!({"id": "intruder-2", "snapshot": {}, "audio": {"from_message": msg}});
    let r = c
        .call(
            Method::POST,
            "/v1/threads/{id}/messages",
            &format!("/v1/threads/{own}/messages"),
            Body::Json(fwd),
        )
        .await;
    out.push((r.status.as_u16(), r.code().to_owned()));
    out
}

#[tokio::test]
async fn members_come_and_go_and_a_departed_member_is_a_stranger() {
    let s = TestServer::start().await;
    let (alice, bob, carol, root) = (
        s.client(ALICE),
        s.client(BOB),
        s.client(CAROL),
        s.client(ADMIN),
    );
    let song = audio(3, 20_000);
    let hash = sha256_hex(&song);
    alice.upload(&song, "format=mp3").await;
    create_thread(&alice, "band", &["bob".into()]).await;
    for (c, own) in [(&bob, "bobs"), (&root, "roots")] {
        assert_eq!(create_thread(c, own, &[]).await.status, StatusCode::CREATED);
    }
    let track = json!({"id": "m1", "snapshot": {"bpm": 100}, "text": "first take",
                       "audio": {"content_hash": hash, "format": "mp3"}});
    let r = alice
        .call(
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/band/messages",
            Body::Json(track),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // Any member adds (bob adds carol); again is 200 and writes nothing.
    let r = add(&bob, "band", "carol").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["members"], json!(["alice", "bob", "carol"]));
    let before = s.dump();
    assert_eq!(add(&alice, "band", "carol").await.status, StatusCode::OK);
    assert_eq!(s.dump(), before, "adding a member again writes nothing");

    // Carol sees the thread in her list, the whole history, and plays its audio.
    let f = feed(&carol).await;
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["id"], "band");
    let page = get(
        &carol,
        "/v1/threads/{id}/messages",
        "/v1/threads/band/messages?after=0",
    )
    .await;
    let items = page.body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2, "{:?}", page.body);
    assert_eq!(items[0]["text"], "first take");
    assert_eq!(
        (
            &items[1]["event"],
            &items[1]["member"],
            &items[1]["by"],
            &items[1]["cursor"]
        ),
        (
            &json!("member_added"),
            &json!("carol"),
            &json!("bob"),
            &json!("2")
        )
    );
    let heard = get(
        &carol,
        "/v1/threads/{id}/messages/{message_id}/audio",
        "/v1/threads/band/messages/m1/audio",
    )
    .await;
    assert_eq!(heard.status, StatusCode::OK, "{:?}", heard.body);
    assert_eq!(heard.body["content_hash"], hash.as_str());

    // Only the creator removes others.
    let r = remove(&bob, "band", "carol").await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "forbidden"));

    // Bob leaves: his feed says so, the members' log records it.
    assert_eq!(
        remove(&bob, "band", "bob").await.status,
        StatusCode::NO_CONTENT
    );
    let f = feed(&bob).await;
    let last = f.iter().rev().find(|t| t["id"] == "band").cloned();
    assert_eq!(last.map(|t| t["left"].clone()), Some(json!(true)));
    let page = get(
        &alice,
        "/v1/threads/{id}/messages",
        "/v1/threads/band/messages?after=2",
    )
    .await;
    assert_eq!(page.body["items"][0]["event"], "member_left");
    assert_eq!(page.body["items"][0]["member"], "bob");

    // Bob, now, and root, never a member: the same answers on every route, nothing written.
    let before = s.dump();
    let as_bob = every_route(&bob, "bobs", "band", "m1").await;
    let as_root = every_route(&root, "roots", "band", "m1").await;
    assert_eq!(
        s.dump(),
        before,
        "a departed member and a stranger write nothing"
    );
    assert_eq!(as_bob, as_root, "a departed member is a stranger");
    assert!(
        as_bob.iter().all(|(st, _)| *st == 404),
        "every route answers 404: {as_bob:?}"
    );
    // Leaving again is the stranger's 404 too.
    assert_eq!(remove(&bob, "band", "bob").await.code(), "thread_not_found");

    // Leaving through `POST …/leave` (a client that does not know its user id): carol
    // leaves and is added back.
    let r = carol
        .call(
            Method::POST,
            "/v1/threads/{id}/leave",
            "/v1/threads/band/leave",
            Body::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        add(&alice, "band", "carol").await.status,
        StatusCode::CREATED
    );
    // The creator removes carol: she is a stranger from then on.
    assert_eq!(
        remove(&alice, "band", "carol").await.status,
        StatusCode::NO_CONTENT
    );
    let r = get(
        &carol,
        "/v1/threads/{id}/messages/{message_id}/audio",
        "/v1/threads/band/messages/m1/audio",
    )
    .await;
    assert_eq!(r.code(), "message_not_found", "as for a stranger");
    let r = get(&carol, "/v1/threads/{id}", "/v1/threads/band").await;
    assert_eq!(r.code(), "thread_not_found");
    // Removing a non-member writes nothing.
    let before = s.dump();
    assert_eq!(
        remove(&alice, "band", "carol").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.dump(), before);
    let detail = get(&alice, "/v1/threads/{id}", "/v1/threads/band").await;
    assert_eq!(detail.body["members"], json!(["alice"]));
    assert_eq!(
        detail.body["last_message"],
        json!({"message_id": "m1", "author": "alice", "cursor": "1",
               "at": detail.body["last_message"]["at"], "text": "first take", "has_audio": true})
    );
    assert_eq!(detail.body["last_cursor"], "6");
    s.assert_invariants();
}

#[tokio::test]
async fn the_member_limit_holds_on_every_add() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let others: Vec<String> = (1..100).map(|i| format!("u{i:02}")).collect();
    let r = create_thread(&alice, "full", &others).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let before = s.dump();
    let r = add(&alice, "full", "carol").await;
    assert_eq!((r.status.as_u16(), r.code()), (400, "too_many_members"));
    assert_eq!(s.dump(), before, "nothing written");
    // One leaves: there is room for one again.
    assert_eq!(
        remove(&alice, "full", "u01").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        add(&alice, "full", "carol").await.status,
        StatusCode::CREATED
    );
    let r = add(&alice, "full", "bob").await;
    assert_eq!(r.code(), "too_many_members");
}

#[tokio::test]
async fn a_read_marker_moves_forward_and_reaches_the_readers_feed() {
    let s = TestServer::start().await;
    let (alice, bob, root) = (s.client(ALICE), s.client(BOB), s.client(ADMIN));
    create_thread(&alice, "rd", &["bob".into()]).await;
    for i in 0..3 {
        let body = json!({"id": format!("rd{i}"), "snapshot": {}, "text": format!("n{i}")});
        alice
            .call(
                Method::POST,
                "/v1/threads/{id}/messages",
                "/v1/threads/rd/messages",
                Body::Json(body),
            )
            .await;
    }
    let read = |c: &Client, cursor: &str| {
        let c = c.clone();
        let body = json!({ "cursor": cursor });
        async move {
            c.call(
                Method::PUT,
                "/v1/threads/{id}/read",
                "/v1/threads/rd/read",
                Body::Json(body),
            )
            .await
        }
    };
    assert_eq!(read(&bob, "2").await.status, StatusCode::NO_CONTENT);
    let f = feed(&bob).await;
    assert_eq!(f.last().map(|t| t["read_cursor"].clone()), Some(json!("2")));
    // Backwards or the same: nothing written.
    let before = s.dump();
    assert_eq!(read(&bob, "1").await.status, StatusCode::NO_CONTENT);
    assert_eq!(read(&bob, "2").await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.dump(), before);
    // Past the log's end: 409; a stranger: 404; both write nothing.
    assert_eq!(read(&bob, "4").await.code(), "cursor_unknown");
    assert_eq!(read(&root, "1").await.code(), "thread_not_found");
    assert_eq!(read(&bob, "x").await.code(), "invalid_cursor");
    assert_eq!(s.dump(), before);
    // Positions name the caller.
    let p = get(&bob, "/v1/positions", "/v1/positions").await;
    assert_eq!(p.body["user"], "bob");
}
