//! Threads, messages and the library through the HTTP API of the local server (embedded
//! store): every answer is checked against docs/openapi.yaml by the client.

use audio_dedup_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn thread_body(id: &str, members: &[&str]) -> Body {
    Body::Json(json!({ "id": id, "title": format!("thread {id}"), "members": members }))
}

async fn create_thread(c: &Client, id: &str, members: &[&str]) -> Reply {
    c.call(
        Method::POST,
        "/v1/threads",
        "/v1/threads",
        thread_body(id, members),
    )
    .await
}

async fn post(c: &Client, thread: &str, body: Value) -> Reply {
    c.call(
        Method::POST,
        "/v1/threads/{id}/messages",
        &format!("/v1/threads/{thread}/messages"),
        Body::Json(body),
    )
    .await
}

async fn sync(c: &Client, thread: &str, after: &str) -> Reply {
    c.call(
        Method::GET,
        "/v1/threads/{id}/messages",
        &format!("/v1/threads/{thread}/messages?after={after}"),
        Body::None,
    )
    .await
}

async fn delete_msg(c: &Client, thread: &str, id: &str) -> Reply {
    c.call(
        Method::DELETE,
        "/v1/threads/{id}/messages/{message_id}",
        &format!("/v1/threads/{thread}/messages/{id}"),
        Body::None,
    )
    .await
}

async fn get_thread(c: &Client, id: &str) -> Reply {
    c.call(
        Method::GET,
        "/v1/threads/{id}",
        &format!("/v1/threads/{id}"),
        Body::None,
    )
    .await
}

async fn snapshot(c: &Client, id: &str) -> Reply {
    c.call(
        Method::GET,
        "/v1/messages/{message_id}/snapshot",
        &format!("/v1/messages/{id}/snapshot"),
        Body::None,
    )
    .await
}

async fn put_item(c: &Client, id: &str, hash: &str, title: &str) -> Reply {
    c.call(
        Method::PUT,
        "/v1/library/{item_id}",
        &format!("/v1/library/{id}"),
        Body::Json(json!({ "content_hash": hash, "title": title })),
    )
    .await
}

async fn delete_item(c: &Client, id: &str) -> Reply {
    c.call(
        Method::DELETE,
        "/v1/library/{item_id}",
        &format!("/v1/library/{id}"),
        Body::None,
    )
    .await
}

fn ids(page: &Value) -> Vec<(String, String)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_conversation_with_audio_from_create_to_deletion() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    assert_eq!(
        create_thread(&alice, "t1", &["bob"]).await.status,
        StatusCode::CREATED
    );
    // The same create, members in another order: the same thread.
    assert_eq!(
        create_thread(&alice, "t1", &["bob", "alice"]).await.status,
        StatusCode::OK
    );
    let feed = bob
        .call(Method::GET, "/v1/threads", "/v1/threads", Body::None)
        .await;
    assert_eq!(feed.body["items"][0]["id"], "t1");
    assert_eq!(feed.body["items"][0]["members"], json!(["alice", "bob"]));

    let song = audio(1, 20_000);
    let hash = sha256_hex(&song);
    assert_eq!(
        alice.upload(&song, "format=mp3").await.status,
        StatusCode::CREATED
    );
    let m1 = json!({
        "id": "0190c0de-0001", "snapshot": {"bpm": 120, "tracks": [1, 2]},
        "audio": {"content_hash": hash, "format": "mp3"}
    });
    let r = post(&alice, "t1", m1.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["cursor"], "1");
    // Retried later: the same message, still one reference.
    let again = post(&alice, "t1", m1.clone()).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &r.body));
    assert_eq!(alice.stats().await.body["total_references"], 1);

    let first = sync(&bob, "t1", "0").await;
    assert_eq!(ids(&first.body), [("0190c0de-0001".into(), "live".into())]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let snap = snapshot(&bob, "0190c0de-0001").await;
    assert_eq!(snap.body, json!({"bpm": 120, "tracks": [1, 2]}));
    assert_eq!(
        snap.headers["etag"].to_str().unwrap(),
        format!(
            "\"{}\"",
            first.body["items"][0]["snapshot"]["sha256"]
                .as_str()
                .unwrap()
        )
    );

    // Bob answers without audio; an incremental read returns only his message.
    post(&bob, "t1", json!({"id": "0190c0de-0002", "snapshot": [1]})).await;
    let delta = sync(&alice, "t1", &cursor).await;
    assert_eq!(ids(&delta.body), [("0190c0de-0002".into(), "live".into())]);

    // Only the author deletes; deleting the last message holding the audio deletes it.
    let r = delete_msg(&bob, "t1", "0190c0de-0001").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "message_not_found")
    );
    assert_eq!(
        delete_msg(&alice, "t1", "0190c0de-0001").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete_msg(&alice, "t1", "0190c0de-0001").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(alice.describe(&hash).await.status, StatusCode::NOT_FOUND);
    assert_eq!(alice.stats().await.body["unique_files"], 0);
    assert!(s.dump().objects.is_empty(), "the audio object is gone");
    let tail = sync(&bob, "t1", "2").await;
    assert_eq!(
        ids(&tail.body),
        [("0190c0de-0001".into(), "deleted".into())]
    );
    assert!(tail.body["items"][0].get("audio").is_none());
    assert_eq!(
        snapshot(&bob, "0190c0de-0001").await.status,
        StatusCode::NOT_FOUND
    );
    // A create retried after the delete answers the tombstone; nothing comes back.
    let late = post(&alice, "t1", m1).await;
    assert_eq!(
        (late.status, late.body["state"].as_str()),
        (StatusCode::OK, Some("deleted"))
    );
    assert_eq!(alice.stats().await.body["total_references"], 0);
    let detail = get_thread(&bob, "t1").await;
    assert_eq!(
        (
            detail.body["last_cursor"].as_str(),
            detail.body["message_count"].as_u64()
        ),
        (Some("3"), Some(1))
    );
    let r = sync(&bob, "t1", "4").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "cursor_unknown")
    );
    s.assert_invariants();
    s.assert_settled();
}

#[tokio::test]
async fn a_message_on_audio_that_is_not_active_is_refused_and_writes_nothing() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    create_thread(&alice, "t1", &[]).await;
    let song = audio(2, 9_000);
    let hash = sha256_hex(&song);
    alice
        .upload(&song, "format=mp3&ref_kind=library&ref_id=l1")
        .await;
    alice.remove_ref(&hash, "l1").await; // the last reference: the audio is deleted
    let before = s.dump();
    let r = post(
        &alice,
        "t1",
        json!({"id": "m1", "snapshot": {}, "audio": {"content_hash": hash, "format": "mp3"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "audio_not_found")
    );
    let r = put_item(&alice, "fav", &hash, "Fav").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "audio_not_found")
    );
    assert_eq!(s.dump(), before);
}

#[tokio::test]
async fn the_library_holds_its_audio_until_the_item_goes() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let song = audio(3, 7_000);
    let hash = sha256_hex(&song);
    alice.upload(&song, "format=wav").await;
    let r = put_item(&alice, "fav", &hash, "Favourite").await;
    assert_eq!(
        (r.status, r.body["cursor"].as_str()),
        (StatusCode::CREATED, Some("1"))
    );
    assert_eq!(
        put_item(&alice, "fav", &hash, "Favourite").await.status,
        StatusCode::OK
    );
    put_item(&alice, "fav", &hash, "Renamed").await;
    let page = alice
        .call(
            Method::GET,
            "/v1/library",
            "/v1/library?since=1",
            Body::None,
        )
        .await;
    assert_eq!(page.body["items"][0]["title"], "Renamed");
    assert_eq!(page.body["next_cursor"], "2");
    assert_eq!(alice.stats().await.body["total_references"], 1);
    assert_eq!(
        delete_item(&alice, "fav").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete_item(&alice, "fav").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(alice.stats().await.body["unique_files"], 0);
    let page = alice
        .call(
            Method::GET,
            "/v1/library",
            "/v1/library?since=2",
            Body::None,
        )
        .await;
    assert_eq!(ids(&page.body), [("fav".into(), "deleted".into())]);
    s.assert_invariants();
    s.assert_settled();
}

#[tokio::test]
async fn a_big_snapshot_is_stored_as_an_object_and_served_byte_for_byte() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    create_thread(&alice, "t1", &[]).await;
    // 600 KB: more than a DynamoDB item holds, so it goes to the blob store.
    let text = format!("{{ \"notes\" : \"{}\" }}", "n".repeat(600_000));
    let body = format!("{{\"id\":\"big\",\"snapshot\":{text}}}");
    let r = alice
        .http
        .post(format!("{}/v1/threads/t1/messages", alice.base))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(s
        .dump()
        .objects
        .iter()
        .any(|o| o.key.starts_with("snapshots/big-")));
    let got = alice
        .http
        .get(format!("{}/v1/messages/big/snapshot", alice.base))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(
        got.bytes().await.unwrap(),
        text.as_bytes(),
        "exactly the text sent"
    );
    s.assert_invariants();
    assert_eq!(
        delete_msg(&alice, "t1", "big").await.status,
        StatusCode::NO_CONTENT
    );
    assert!(s.dump().objects.is_empty(), "purged with its message");
    s.assert_settled();
}

#[tokio::test]
async fn foreign_users_get_404_and_change_nothing() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let song = audio(4, 8_000);
    let hash = sha256_hex(&song);
    alice.upload(&song, "format=mp3").await;
    create_thread(&alice, "private", &[]).await;
    create_thread(&alice, "shared", &["bob"]).await;
    let with_audio =
        json!({"id": "a1", "snapshot": {}, "audio": {"content_hash": hash, "format": "mp3"}});
    assert_eq!(
        post(&alice, "private", with_audio).await.status,
        StatusCode::CREATED
    );
    post(&alice, "shared", json!({"id": "a2", "snapshot": {"x": 1}})).await;
    put_item(&alice, "fav", &hash, "Mine").await;
    let before = s.dump();

    let not_found = |r: Reply, what: &str| {
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{what}: {:?}", r.body);
    };
    not_found(
        bob.call(
            Method::GET,
            "/v1/threads/{id}",
            "/v1/threads/private",
            Body::None,
        )
        .await,
        "read a thread he is not in",
    );
    not_found(
        sync(&bob, "private", "0").await,
        "sync a thread he is not in",
    );
    not_found(
        post(&bob, "private", json!({"id": "b1", "snapshot": {}})).await,
        "post in it",
    );
    not_found(delete_msg(&bob, "private", "a1").await, "delete in it");
    not_found(snapshot(&bob, "a1").await, "read its snapshot");
    // A member, but not the author.
    not_found(
        delete_msg(&bob, "shared", "a2").await,
        "delete another's message",
    );
    // Someone else's message id, named in his own thread.
    not_found(
        delete_msg(&bob, "shared", "a1").await,
        "delete via the wrong thread",
    );
    // The library is private.
    not_found(delete_item(&bob, "fav").await, "delete her item");
    let r = put_item(&bob, "fav", &hash, "Stolen").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "audio_not_found")
    );
    let r = post(
        &bob,
        "shared",
        json!({"id": "b2", "snapshot": {}, "audio": {"content_hash": hash, "format": "mp3"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "audio_not_found"),
        "he never held it"
    );
    // Her managed references cannot be named through the references API.
    let r = bob.remove_ref(&hash, "m.a1").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = alice.remove_ref(&hash, "m.a1").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "not even by their owner");
    assert_eq!(s.dump(), before, "nothing changed");

    let feed = bob
        .call(Method::GET, "/v1/threads", "/v1/threads", Body::None)
        .await;
    assert_eq!(ids_of_threads(&feed.body), ["shared"]);
    let lib = bob
        .call(Method::GET, "/v1/library", "/v1/library", Body::None)
        .await;
    assert!(lib.body["items"].as_array().unwrap().is_empty());
}

fn ids_of_threads(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn bad_input_on_every_new_route_is_a_4xx_and_writes_nothing() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    create_thread(&alice, "t1", &[]).await;
    post(&alice, "t1", json!({"id": "m1", "snapshot": {}})).await;
    let before = s.dump();
    let huge = format!(
        "{{\"id\":\"m2\",\"snapshot\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    let cases: Vec<(Method, &str, String, Body, u16, &str)> = vec![
        (
            Method::POST,
            "/v1/threads",
            "/v1/threads".into(),
            Body::Json(json!({"title": "", "members": []})),
            400,
            "invalid_title",
        ),
        (
            Method::POST,
            "/v1/threads",
            "/v1/threads".into(),
            Body::Json(json!({"title": "t", "members": ["../x"]})),
            400,
            "invalid_member",
        ),
        (
            Method::POST,
            "/v1/threads",
            "/v1/threads".into(),
            Body::Json(
                json!({"title": "t", "members": (0..100).map(|i| format!("u{i}")).collect::<Vec<_>>()}),
            ),
            400,
            "too_many_members",
        ),
        (
            Method::POST,
            "/v1/threads",
            "/v1/threads".into(),
            Body::Json(json!({"title": "t", "members": [], "admin": true})),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/threads",
            "/v1/threads".into(),
            Body::Json(json!({"id": "a/b", "title": "t", "members": []})),
            400,
            "invalid_thread_id",
        ),
        (
            Method::GET,
            "/v1/threads",
            "/v1/threads?since=-1".into(),
            Body::None,
            400,
            "invalid_cursor",
        ),
        (
            Method::GET,
            "/v1/threads",
            "/v1/threads?after=1".into(),
            Body::None,
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/threads",
            "/v1/threads?limit=100000".into(),
            Body::None,
            400,
            "invalid_limit",
        ),
        (
            Method::GET,
            "/v1/threads",
            "/v1/threads?limit=0".into(),
            Body::None,
            400,
            "invalid_limit",
        ),
        (
            Method::GET,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages?after=1.5".into(),
            Body::None,
            400,
            "invalid_cursor",
        ),
        (
            Method::GET,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages?since=0".into(),
            Body::None,
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/threads/{id}",
            "/v1/threads/..%2F..%2Fetc".into(),
            Body::None,
            400,
            "invalid_thread_id",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Json(json!({"id": "m2", "snapshot": null})),
            400,
            "invalid_snapshot",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Json(json!({"id": "m2"})),
            400,
            "invalid_json",
        ),
        (
            // Issue #25's attack: 20,000 nested arrays in 40 KB.
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Raw(
                format!(
                    "{{\"id\":\"m2\",\"snapshot\":{}{}}}",
                    "[".repeat(20_000),
                    "]".repeat(20_000)
                )
                .into_bytes(),
            ),
            400,
            "snapshot_too_deep",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Json(json!({"id": "m2", "snapshot": {}, "text": "ring\u{7}"})),
            400,
            "invalid_text",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Json(json!({"id": "m2", "snapshot": {}, "text": "x".repeat(2001)})),
            400,
            "invalid_text",
        ),
        (
            Method::POST,
            "/v1/threads",
            "/v1/threads".into(),
            Body::Json(json!({"title": "evil\u{202e}txt.mp3", "members": []})),
            400,
            "invalid_title",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Json(
                json!({"id": "m2", "snapshot": {}, "audio": {"content_hash": "x", "format": "mp3"}}),
            ),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Json(json!({"id": "m2", "snapshot": {}, "extra": 1})),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Raw(huge.into_bytes()),
            413,
            "snapshot_too_large",
        ),
        (
            Method::POST,
            "/v1/threads/{id}/messages",
            "/v1/threads/t1/messages".into(),
            Body::Json(json!({"id": "m1", "snapshot": {"other": true}})),
            409,
            "message_id_conflict",
        ),
        (
            Method::DELETE,
            "/v1/threads/{id}/messages/{message_id}",
            "/v1/threads/t1/messages/a.b".into(),
            Body::None,
            400,
            "invalid_message_id",
        ),
        (
            Method::GET,
            "/v1/threads/{id}/messages/{message_id}/audio",
            "/v1/threads/a.b/messages/m1/audio".into(),
            Body::None,
            400,
            "invalid_thread_id",
        ),
        (
            Method::PUT,
            "/v1/library/{item_id}",
            "/v1/library/a.b".into(),
            Body::Json(json!({"content_hash": "0".repeat(64), "title": "t"})),
            400,
            "invalid_item_id",
        ),
        (
            Method::GET,
            "/v1/messages/{message_id}/snapshot",
            "/v1/messages/nope/snapshot".into(),
            Body::None,
            404,
            "message_not_found",
        ),
        (
            Method::PUT,
            "/v1/library/{item_id}",
            "/v1/library/x".into(),
            Body::Json(json!({"content_hash": "ABC", "title": "t"})),
            400,
            "invalid_hash",
        ),
        (
            Method::PUT,
            "/v1/library/{item_id}",
            "/v1/library/x".into(),
            Body::Json(json!({"content_hash": "0".repeat(64), "title": "\u{0}"})),
            400,
            "invalid_title",
        ),
        (
            Method::DELETE,
            "/v1/library/{item_id}",
            "/v1/library/never".into(),
            Body::None,
            404,
            "library_item_not_found",
        ),
        (
            Method::GET,
            "/v1/library",
            "/v1/library?since=99".into(),
            Body::None,
            409,
            "cursor_unknown",
        ),
    ];
    for (m, template, path, body, status, code) in cases {
        let r = alice.call(m.clone(), template, &path, body).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (status, code),
            "{m} {path}: {:?}",
            r.body
        );
    }
    assert_eq!(s.dump(), before, "nothing written");
}

async fn message_audio(c: &Client, thread: &str, id: &str) -> Reply {
    c.call(
        Method::GET,
        "/v1/threads/{id}/messages/{message_id}/audio",
        &format!("/v1/threads/{thread}/messages/{id}/audio"),
        Body::None,
    )
    .await
}

async fn save_from(c: &Client, id: &str, message: &str, title: &str) -> Reply {
    c.call(
        Method::PUT,
        "/v1/library/{item_id}",
        &format!("/v1/library/{id}"),
        Body::Json(json!({ "from_message": message, "title": title })),
    )
    .await
}

/// Fetches a signed download URL; answers the bytes after checking their SHA-256.
async fn download_verified(url: &str, hash: &str) -> Vec<u8> {
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.bytes().await.unwrap().to_vec();
    assert_eq!(
        sha256_hex(&bytes),
        hash,
        "downloaded bytes hash to the content"
    );
    bytes
}

#[tokio::test]
async fn a_member_plays_forwards_and_saves_a_track_someone_else_sent() {
    let s = TestServer::start().await;
    let (alice, bob, carol) = (s.client(ALICE), s.client(BOB), s.client(CAROL));
    let song = audio(9, 30_000);
    let hash = sha256_hex(&song);
    alice.upload(&song, "format=ogg").await;
    create_thread(&alice, "duo", &["bob"]).await;
    create_thread(&bob, "side", &[]).await;
    let sent =
        json!({"id": "m-song", "snapshot": {}, "audio": {"content_hash": hash, "format": "ogg"}});
    assert_eq!(post(&alice, "duo", sent).await.status, StatusCode::CREATED);
    post(
        &alice,
        "duo",
        json!({"id": "m-words", "snapshot": {"t": "hi"}}),
    )
    .await;

    // Bob never uploaded it: the audio route stays closed to him, the message route opens.
    assert_eq!(bob.describe(&hash).await.status, StatusCode::NOT_FOUND);
    let before = s.dump();
    let r = message_audio(&bob, "duo", "m-song").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        (
            r.body["content_hash"].as_str(),
            r.body["format"].as_str(),
            r.body["size"].as_u64()
        ),
        (Some(hash.as_str()), Some("ogg"), Some(30_000))
    );
    let url = r.body["url"].as_str().unwrap();
    assert_eq!(download_verified(url, &hash).await, song);
    let part = reqwest::Client::new()
        .get(url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &song[100..200]);
    assert_eq!(
        bob.describe(&hash).await.status,
        StatusCode::NOT_FOUND,
        "playing grants nothing"
    );

    // Carol, in neither thread, and every other miss: the same 404, nothing written.
    let misses = [
        (&carol, "duo", "m-song"),
        (&bob, "side", "m-song"),
        (&bob, "duo", "m-words"),
        (&bob, "duo", "m-nope"),
        (&bob, "nope", "m-song"),
    ];
    for (who, t, m) in misses {
        let r = message_audio(who, t, m).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "message_not_found"),
            "{t}/{m}"
        );
    }
    let r = save_from(&carol, "grab", "m-song", "mine now").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "message_not_found")
    );
    let r = post(
        &carol,
        "side",
        json!({"id": "c1", "snapshot": {}, "audio": {"from_message": "m-song"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "not in that thread either");
    assert_eq!(carol.describe(&hash).await.status, StatusCode::NOT_FOUND);
    assert_eq!(s.dump(), before, "reads and refusals changed nothing");

    // Bob forwards it to his own thread, and saves it to his library.
    let r = post(
        &bob,
        "side",
        json!({"id": "b-fwd", "snapshot": {}, "audio": {"from_message": "m-song"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.body["audio"],
        json!({"content_hash": hash, "format": "ogg"})
    );
    let r = save_from(&bob, "alices-song", "m-song", "Alice's song").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["content_hash"], json!(hash));
    let st = alice.stats().await.body;
    assert_eq!(
        (st["unique_files"].as_i64(), st["total_references"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(st["deduplication_ratio"].as_f64(), Some(3.0));
    assert_eq!(st["bytes_saved"].as_i64(), Some(60_000));

    // Alice deletes her message: it grants nothing more, Bob's copies keep the audio.
    assert_eq!(
        delete_msg(&alice, "duo", "m-song").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        message_audio(&bob, "duo", "m-song").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        save_from(&bob, "again", "m-song", "x").await.status,
        StatusCode::NOT_FOUND
    );
    let d = bob.describe(&hash).await;
    assert_eq!(d.status, StatusCode::OK, "saving made Bob a holder");
    download_verified(d.body["url"].as_str().unwrap(), &hash).await;
    assert!(s.blob_dir(&hash).exists());

    // His last copies go: so does the file, and the stats say so.
    delete_msg(&bob, "side", "b-fwd").await;
    assert_eq!(
        delete_item(&bob, "alices-song").await.status,
        StatusCode::NO_CONTENT
    );
    assert!(
        !s.blob_dir(&hash).exists(),
        "the last reference deleted the file"
    );
    let st = alice.stats().await.body;
    assert_eq!(
        (st["unique_files"].as_i64(), st["total_references"].as_i64()),
        (Some(0), Some(0))
    );
    s.assert_invariants();
}

#[tokio::test]
async fn stats_count_unreferenced_files_apart_and_never_go_negative() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let song = audio(12, 50_000);
    let hash = sha256_hex(&song);
    // Uploaded with no reference: stored, but waiting for deletion.
    alice.upload(&song, "format=mp3").await;
    let st = alice.stats().await.body;
    assert_eq!(st["unique_files"], 0);
    assert_eq!(st["stored_bytes"], 0);
    assert_eq!(st["bytes_saved"], 0);
    assert_eq!(st["deduplication_ratio"], 1.0);
    assert_eq!(
        (
            st["unreferenced_files"].as_i64(),
            st["unreferenced_bytes"].as_i64()
        ),
        (Some(1), Some(50_000))
    );
    // Two references: the duplicate saves one copy.
    alice.add_ref(&hash, "r1", "library").await;
    alice.add_ref(&hash, "r2", "library").await;
    let st = alice.stats().await.body;
    assert_eq!(
        (
            st["unique_files"].as_i64(),
            st["unreferenced_files"].as_i64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(st["bytes_saved"], 50_000);
    assert!(st["deduplication_ratio"].as_f64().unwrap() > 1.0);
    s.assert_invariants();
}

#[tokio::test]
async fn reuse_needs_exactly_one_audio_source() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    create_thread(&alice, "t", &[]).await;
    let h = "0".repeat(64);
    let before = s.dump();
    for body in [
        json!({"title": "x"}),
        json!({"content_hash": h, "from_message": "m1", "title": "x"}),
    ] {
        let r = alice
            .call(
                Method::PUT,
                "/v1/library/{item_id}",
                "/v1/library/i",
                Body::Json(body),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_audio")
        );
    }
    let r = save_from(&alice, "i", "not a valid id!", "x").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_message_id")
    );
    for audio in [
        json!({"content_hash": h, "format": "mp3", "from_message": "m1"}),
        json!({"content_hash": h}),
        json!({"from_message": "m1", "format": "mp3"}),
        json!({}),
    ] {
        let r = post(
            &alice,
            "t",
            json!({"id": "m2", "snapshot": {}, "audio": audio}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{audio}");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("from_message"),
            "{:?}",
            r.body
        );
    }
    assert_eq!(s.dump(), before);
}

/// A member who may not attach the audio cannot make the server store a big snapshot: the
/// audio is checked before the snapshot object is written.
#[tokio::test]
async fn a_big_snapshot_with_audio_the_caller_may_not_attach_stores_nothing() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let song = audio(31, 9_000);
    let hash = sha256_hex(&song);
    alice.upload(&song, "format=mp3").await;
    create_thread(&alice, "t1", &["bob"]).await;
    let before = s.dump();
    let big = format!("{{\"notes\":\"{}\"}}", "n".repeat(600_000));
    for (id, audio) in [
        ("b1", json!({"content_hash": hash, "format": "mp3"})),
        ("b2", json!({"from_message": "no-such-message"})),
    ] {
        let body = format!("{{\"id\":\"{id}\",\"snapshot\":{big},\"audio\":{audio}}}");
        let r = bob
            .http
            .post(format!("{}/v1/threads/t1/messages", bob.base))
            .bearer_auth(BOB)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{id}");
    }
    assert_eq!(s.dump(), before, "no snapshot object was staged");
}

async fn positions(c: &Client, query: &str) -> Reply {
    c.call(
        Method::GET,
        "/v1/positions",
        &format!("/v1/positions{query}"),
        Body::None,
    )
    .await
}

/// `GET /v1/positions`: each log of the caller, and with `changed_since` only the threads
/// that changed since an earlier answer's `as_of` (within the server's margin, which the
/// default 5 minutes makes "every thread touched lately"). Strangers see none of it.
#[tokio::test]
async fn positions_name_the_callers_logs_and_what_changed() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    for t in ["p1", "p2", "p3"] {
        assert_eq!(
            create_thread(&alice, t, &["bob"]).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        create_thread(&alice, "solo", &[]).await.status,
        StatusCode::CREATED
    );
    let first = positions(&bob, "").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(
        first.body["threads"],
        json!({ "p1": "0", "p2": "0", "p3": "0" })
    );
    assert_eq!(first.body["feed"], "3");
    assert_eq!(first.body["complete"], true);
    let as_of = first.body["as_of"].as_str().expect("as_of").to_owned();

    assert_eq!(
        post(&alice, "p2", json!({ "id": "m1", "snapshot": {} }))
            .await
            .status,
        StatusCode::CREATED
    );
    let since = positions(&bob, &format!("?changed_since={as_of}")).await;
    assert_eq!(since.status, StatusCode::OK, "{}", since.body);
    // p2 moved; p1 and p3 are inside the margin (made a moment ago) and listed unchanged.
    assert_eq!(since.body["threads"]["p2"], "1");
    assert_eq!(since.body["threads"]["p1"], "0");
    // Far in the future: nothing changed since then.
    let later = positions(&bob, "?changed_since=99999999999999").await;
    assert_eq!(later.body["threads"], json!({}));

    for bad in ["?changed_since=soon", "?changed_since=-1", "?since=1"] {
        let r = positions(&bob, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    // A stranger's answer names none of their threads.
    let carol = s.client(CAROL);
    let theirs = positions(&carol, "").await;
    assert_eq!(theirs.body["threads"], json!({}));
}

#[tokio::test]
async fn a_message_text_is_stored_synced_checked_on_retry_and_dropped_on_delete() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    create_thread(&alice, "tx", &["bob"]).await;
    let body = json!({"id": "tx1", "snapshot": {"bpm": 90}, "text": "line one\n\tline two"});
    let r = post(&alice, "tx", body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["text"], "line one\n\tline two");
    // The same create again answers the same; other text under the id is another message.
    assert_eq!(post(&alice, "tx", body).await.status, StatusCode::OK);
    let other = json!({"id": "tx1", "snapshot": {"bpm": 90}, "text": "other"});
    assert_eq!(
        post(&alice, "tx", other).await.code(),
        "message_id_conflict"
    );
    let no_text = json!({"id": "tx1", "snapshot": {"bpm": 90}});
    assert_eq!(
        post(&alice, "tx", no_text).await.code(),
        "message_id_conflict"
    );
    // Bob's sync carries it; the snapshot is unchanged.
    let page = sync(&bob, "tx", "0").await;
    assert_eq!(page.body["items"][0]["text"], "line one\n\tline two");
    let detail = get_thread(&bob, "tx").await;
    assert_eq!(detail.body["last_message"]["text"], "line one\n\tline two");
    assert_eq!(detail.body["last_message"]["author"], "alice");
    assert_eq!(snapshot(&bob, "tx1").await.body, json!({"bpm": 90}));
    // A deletion's tombstone drops it.
    assert_eq!(
        delete_msg(&alice, "tx", "tx1").await.status,
        StatusCode::NO_CONTENT
    );
    let page = sync(&bob, "tx", "1").await;
    assert_eq!(page.body["items"][0]["state"], "deleted");
    assert!(
        page.body["items"][0].get("text").is_none(),
        "{:?}",
        page.body
    );
    // The thread's preview of its newest message went with it.
    let detail = get_thread(&bob, "tx").await;
    assert!(
        detail.body.get("last_message").is_none(),
        "{:?}",
        detail.body
    );
    let dump = s.dump();
    assert!(
        !format!("{dump:?}").contains("line one"),
        "the text is gone from the store"
    );
}
