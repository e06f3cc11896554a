//! Authentication, object-level authorisation, and bad input: every refusal is a 4xx JSON
//! error and leaves the stores exactly as they were.

use audio_dedup_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const H: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn no_or_wrong_token_is_401_on_every_v1_route() {
    let s = TestServer::start().await;
    let mut wrong = s.client("not-a-known-token-at-all");
    for c in [s.anonymous(), std::mem::replace(&mut wrong, s.anonymous())] {
        let routes: Vec<(Method, &str, String, Body)> = vec![
            (
                Method::POST,
                "/v1/audio",
                "/v1/audio?format=mp3".into(),
                Body::Raw(b"x".to_vec()),
            ),
            (
                Method::POST,
                "/v1/audio/uploads",
                "/v1/audio/uploads".into(),
                Body::Json(json!({})),
            ),
            (
                Method::POST,
                "/v1/audio/{hash}/complete",
                format!("/v1/audio/{H}/complete"),
                Body::Json(json!({})),
            ),
            (
                Method::GET,
                "/v1/audio/{hash}",
                format!("/v1/audio/{H}"),
                Body::None,
            ),
            (
                Method::GET,
                "/v1/audio/stats",
                "/v1/audio/stats".into(),
                Body::None,
            ),
            (
                Method::PUT,
                "/v1/audio/{hash}/references/{ref_id}",
                format!("/v1/audio/{H}/references/r"),
                Body::Json(json!({"kind":"message"})),
            ),
            (
                Method::DELETE,
                "/v1/audio/{hash}/references/{ref_id}",
                format!("/v1/audio/{H}/references/r"),
                Body::None,
            ),
            (
                Method::POST,
                "/v1/admin/reconcile",
                "/v1/admin/reconcile".into(),
                Body::None,
            ),
            (
                Method::POST,
                "/v1/threads",
                "/v1/threads".into(),
                Body::Json(json!({"title": "t", "members": []})),
            ),
            (Method::GET, "/v1/threads", "/v1/threads".into(), Body::None),
            (
                Method::GET,
                "/v1/threads/{id}",
                "/v1/threads/t".into(),
                Body::None,
            ),
            (
                Method::GET,
                "/v1/threads/{id}/messages",
                "/v1/threads/t/messages".into(),
                Body::None,
            ),
            (
                Method::POST,
                "/v1/threads/{id}/messages",
                "/v1/threads/t/messages".into(),
                Body::Json(json!({"id": "m", "snapshot": {}})),
            ),
            (
                Method::DELETE,
                "/v1/threads/{id}/messages/{message_id}",
                "/v1/threads/t/messages/m".into(),
                Body::None,
            ),
            (
                Method::GET,
                "/v1/threads/{id}/messages/{message_id}/audio",
                "/v1/threads/t/messages/m/audio".into(),
                Body::None,
            ),
            (
                Method::GET,
                "/v1/messages/{message_id}/snapshot",
                "/v1/messages/m/snapshot".into(),
                Body::None,
            ),
            (Method::GET, "/v1/library", "/v1/library".into(), Body::None),
            (
                Method::PUT,
                "/v1/library/{item_id}",
                "/v1/library/i".into(),
                Body::Json(json!({"content_hash": H, "title": "t"})),
            ),
            (
                Method::DELETE,
                "/v1/library/{item_id}",
                "/v1/library/i".into(),
                Body::None,
            ),
        ];
        for (m, t, p, b) in routes {
            let r = c.call(m.clone(), t, &p, b).await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{m} {p}"
            );
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
    }
}

#[tokio::test]
async fn a_foreign_user_cannot_touch_anothers_references_or_audio() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let song = audio(9, 10_000);
    let hash = sha256_hex(&song);
    alice
        .upload(&song, "format=mp3&ref_kind=message&ref_id=m1")
        .await;
    let sess = alice
        .open_session(json!({ "sha256": hash, "size": 10_000, "format": "mp3" }))
        .await
        .body;
    let before = s.dump();
    assert_eq!(
        bob.remove_ref(&hash, "m1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bob.add_ref(&hash, "m1", "message").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(bob.describe(&hash).await.status, StatusCode::NOT_FOUND);
    let r = bob
        .complete(&hash, json!({ "session_id": sess["session_id"] }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "session_not_found")
    );
    assert_eq!(s.dump(), before, "a foreign user changed nothing");
    assert_eq!(alice.describe(&hash).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_a_4xx_json_error_and_stores_nothing() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    // Something to aim at, so "nothing changed" is a real comparison.
    let song = audio(7, 5000);
    let hash = sha256_hex(&song);
    alice
        .upload(&song, "format=mp3&ref_kind=message&ref_id=keep")
        .await;
    let before = s.dump();

    let big = vec![1u8; 4 * 1024 * 1024 + 1];
    let cases: Vec<(Method, &str, String, Body, u16, &str)> = vec![
        (
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=exe".into(),
            Body::Raw(b"x".to_vec()),
            400,
            "unknown_format",
        ),
        (
            Method::POST,
            "/v1/audio",
            "/v1/audio".into(),
            Body::Raw(b"x".to_vec()),
            400,
            "missing_format",
        ),
        (
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=mp3".into(),
            Body::Raw(vec![]),
            400,
            "empty_body",
        ),
        (
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=mp3".into(),
            Body::Raw(big),
            413,
            "body_too_large",
        ),
        (
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=mp3&colour=red".into(),
            Body::Raw(b"x".to_vec()),
            400,
            "invalid_query",
        ),
        (
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=mp3&ref_kind=message".into(),
            Body::Raw(b"x".to_vec()),
            400,
            "incomplete_reference",
        ),
        (
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=mp3&ref_kind=message&ref_id=..%2F..%2Fetc".into(),
            Body::Raw(b"x".to_vec()),
            400,
            "invalid_ref_id",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Raw(b"{not json".to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Json(json!({"sha256": hash, "size": 5, "format": "mp3", "extra": 1})),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Json(json!({"sha256": "abc", "size": 5, "format": "mp3"})),
            400,
            "invalid_hash",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Json(json!({"sha256": hash.to_uppercase(), "size": 5, "format": "mp3"})),
            400,
            "invalid_hash",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Json(json!({"sha256": hash, "size": -5, "format": "mp3"})),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Json(json!({"sha256": hash, "size": 0, "format": "mp3"})),
            400,
            "invalid_size",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Json(json!({"sha256": hash, "size": 6_000_000_000u64, "format": "mp3"})),
            400,
            "invalid_size",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::Json(json!({"sha256": hash, "size": 5, "format": "aiff"})),
            400,
            "unknown_format",
        ),
        (
            Method::POST,
            "/v1/audio/uploads",
            "/v1/audio/uploads".into(),
            Body::None,
            400,
            "empty_body",
        ),
        (
            Method::POST,
            "/v1/audio/{hash}/complete",
            format!("/v1/audio/{hash}/complete"),
            Body::Json(json!({"session_id": "../x"})),
            400,
            "invalid_session_id",
        ),
        (
            Method::POST,
            "/v1/audio/{hash}/complete",
            format!("/v1/audio/{hash}/complete"),
            Body::Json(json!({"session_id": "abc", "proof": "zz"})),
            400,
            "invalid_proof",
        ),
        (
            Method::POST,
            "/v1/audio/{hash}/complete",
            format!("/v1/audio/{hash}/complete"),
            Body::Json(json!({"session_id": "abc"})),
            404,
            "session_not_found",
        ),
        (
            Method::POST,
            "/v1/audio/{hash}/complete",
            "/v1/audio/..%2F..%2Fetc%2Fpasswd/complete".into(),
            Body::Json(json!({"session_id": "abc"})),
            400,
            "invalid_hash",
        ),
        (
            Method::GET,
            "/v1/audio/{hash}",
            "/v1/audio/not-a-hash".into(),
            Body::None,
            400,
            "invalid_hash",
        ),
        (
            Method::GET,
            "/v1/audio/{hash}",
            "/v1/audio/..%2F..%2Fsigning.key".into(),
            Body::None,
            400,
            "invalid_hash",
        ),
        (
            Method::PUT,
            "/v1/audio/{hash}/references/{ref_id}",
            format!("/v1/audio/{hash}/references/..%2Fx"),
            Body::Json(json!({"kind":"message"})),
            400,
            "invalid_ref_id",
        ),
        (
            Method::PUT,
            "/v1/audio/{hash}/references/{ref_id}",
            format!("/v1/audio/{hash}/references/r1"),
            Body::Json(json!({"kind":"playlist"})),
            400,
            "invalid_ref_kind",
        ),
        (
            Method::PUT,
            "/v1/audio/{hash}/references/{ref_id}",
            format!("/v1/audio/{hash}/references/r1"),
            Body::Json(json!({"kind":"message", "owner": "bob"})),
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            "/v1/audio/{hash}/references/{ref_id}",
            format!("/v1/audio/{hash}/references/r1"),
            Body::Raw(b"[".to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            "/v1/audio/{hash}/references/{ref_id}",
            format!("/v1/audio/{H}/references/r1"),
            Body::Json(json!({"kind":"message"})),
            404,
            "audio_not_found",
        ),
        (
            Method::DELETE,
            "/v1/audio/{hash}/references/{ref_id}",
            format!("/v1/audio/{hash}/references/never"),
            Body::None,
            404,
            "reference_not_found",
        ),
        (
            Method::DELETE,
            "/v1/audio/{hash}/references/{ref_id}",
            "/v1/audio/abc/references/keep".into(),
            Body::None,
            400,
            "invalid_hash",
        ),
    ];
    for (m, t, p, b, status, code) in cases {
        let r = alice.call(m.clone(), t, &p, b).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (status, code),
            "{m} {p}: {}",
            r.body
        );
    }
    // Wrong methods and unknown routes answer JSON too.
    for (m, p) in [
        (Method::DELETE, "/v1/audio/stats"),
        (Method::PATCH, "/v1/audio"),
        (Method::GET, "/v1/audio/uploads"),
    ] {
        let r = alice
            .http
            .request(m.clone(), format!("{}{p}", alice.base))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed");
    }
    let r = alice
        .http
        .get(format!("{}/v1/nothing/here", alice.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The blob routes refuse traversal and unsigned access.
    for p in [
        "/blob/..%2F..%2Findex.sqlite",
        "/blob/audio/..%2F..%2Fsigning.key",
        &format!("/blob/audio/{hash}"),
    ] {
        let r = alice
            .http
            .get(format!("{}{p}", alice.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{p}");
    }
    assert_eq!(s.dump(), before, "bad input changed the stores");
    s.assert_invariants();
}

/// A caller without the bytes learns nothing from the stats: opening sessions on content
/// nobody stored and on content someone did leaves what they see unchanged. The operator's
/// counters, which do move, are in an admin's view only.
#[tokio::test]
async fn stats_tell_a_caller_without_the_bytes_nothing_about_existence() {
    let s = TestServer::start().await;
    let (alice, mallory, admin) = (s.client(ALICE), s.client(BOB), s.client(ADMIN));
    let stored = audio(7, 50_000);
    assert_eq!(
        alice.upload(&stored, "format=mp3").await.status,
        StatusCode::CREATED
    );
    let seen = mallory.stats().await.body;
    assert!(
        seen.get("pending_uploads").is_none() && seen.get("deleting").is_none(),
        "{seen}"
    );
    let pending = |v: &serde_json::Value| v["pending_uploads"].as_i64().expect("an admin sees it");
    let before = pending(&admin.stats().await.body);

    let absent = sha256_hex(&audio(8, 50_000));
    for hash in [absent, sha256_hex(&stored)] {
        let r = mallory
            .open_session(json!({ "sha256": hash, "size": 50_000, "format": "mp3" }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(
            mallory.stats().await.body,
            seen,
            "after a session on {hash}"
        );
    }
    // The claim on the absent content is real, and only the operator sees it.
    assert_eq!(pending(&admin.stats().await.body), before + 1);
}
