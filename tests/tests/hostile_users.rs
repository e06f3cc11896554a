//! Hostile users through the HTTP surface: a session flood, and a partial holder who tries
//! to re-roll challenges and keeps guessing. The store-level versions run over SQLite and
//! moto in `shared/tests/contract/limits.rs`.

use std::time::Duration;

use audio_dedup_core::protocol::Limits;
use audio_dedup_core::DedupConfig;
use audio_dedup_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {:?}", r.headers))
}

#[tokio::test]
async fn a_session_flood_is_refused_with_429_and_others_are_served() {
    let limits = Limits {
        open_sessions: 5,
        ..Limits::default()
    };
    let s = TestServer::start_with(DedupConfig {
        limits,
        ..DedupConfig::default()
    })
    .await;
    let (mallory, bob) = (s.client(ALICE), s.client(BOB));
    let open = |who: &Client, i: u32| {
        let who = who.clone();
        async move {
            let hash = sha256_hex(format!("random {i}").as_bytes());
            who.open_session(json!({ "sha256": hash, "size": 1000, "format": "mp3" }))
                .await
        }
    };
    for i in 0..5 {
        assert_eq!(open(&mallory, i).await.status, StatusCode::CREATED);
    }
    let before = s.dump();
    let refused = open(&mallory, 5).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    assert!(retry_after(&refused) >= 1);
    assert_eq!(
        s.dump().items,
        before.items,
        "a refused open writes nothing"
    );
    assert_eq!(open(&bob, 5).await.status, StatusCode::CREATED);
    s.assert_invariants();
}

fn proof_of(song: &[u8], sess: &Value) -> String {
    let chunks = sess["challenge"]["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            let (o, l) = (
                r["offset"].as_u64().expect("offset") as usize,
                r["length"].as_u64().expect("length") as usize,
            );
            &song[o..o + l]
        });
    audio_dedup_core::audio::proof_for(sess["challenge"]["nonce"].as_str().expect("nonce"), chunks)
}

#[tokio::test]
async fn a_partial_holder_cannot_reroll_the_challenge_and_is_locked_out() {
    let lockout = Duration::from_secs(3);
    let s = TestServer::start_with(DedupConfig {
        limits: Limits {
            proof_lockout: lockout,
            ..Limits::default()
        },
        ..DedupConfig::default()
    })
    .await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let size = 2 * 1024 * 1024;
    let song = audio(7, size);
    let hash = sha256_hex(&song);
    assert_eq!(
        alice.upload(&song, "format=flac").await.status,
        StatusCode::CREATED
    );
    let mut partial = song.clone();
    partial[size * 3 / 4..].fill(0);

    let open = || bob.open_session(json!({ "sha256": hash, "size": size, "format": "flac" }));
    let first = open().await.body;
    for attempt in 0..3 {
        let again = open().await.body;
        assert_ne!(again["session_id"], first["session_id"]);
        assert_eq!(
            again["challenge"], first["challenge"],
            "attempt {attempt}: a new session, the same challenge"
        );
        let wrong = bob
            .complete(
                &hash,
                json!({ "session_id": again["session_id"], "proof": proof_of(&partial, &again) }),
            )
            .await;
        assert_eq!(
            (wrong.status, wrong.code()),
            (StatusCode::CONFLICT, "upload_required")
        );
    }
    let locked = bob
        .complete(
            &hash,
            json!({ "session_id": first["session_id"], "proof": proof_of(&song, &first) }),
        )
        .await;
    assert_eq!(
        (locked.status, locked.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "locked out: even the right answer waits"
    );
    assert!((1..=lockout.as_secs()).contains(&retry_after(&locked)));
    assert_eq!(bob.describe(&hash).await.status, StatusCode::NOT_FOUND);

    tokio::time::sleep(lockout + Duration::from_millis(300)).await;
    let ok = bob
        .complete(
            &hash,
            json!({ "session_id": first["session_id"], "proof": proof_of(&song, &first) }),
        )
        .await;
    assert_eq!(
        (ok.status, ok.body["deduplicated"].as_bool()),
        (StatusCode::OK, Some(true)),
        "after the lockout, the whole file answers: {:?}",
        ok.body
    );
    assert_eq!(bob.describe(&hash).await.status, StatusCode::OK);
    s.assert_invariants();
}
