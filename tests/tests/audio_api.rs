//! The audio API end to end: real HTTP, real SQLite, real files. Every response is checked
//! against docs/openapi.yaml by the client.

use audio_dedup_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_and_the_served_spec_match_the_file() {
    let s = TestServer::start().await;
    let r = s
        .anonymous()
        .call(Method::GET, "/healthz", "/healthz", Body::None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .anonymous()
        .call(Method::GET, "/openapi.json", "/openapi.json", Body::None)
        .await;
    assert_eq!(&r.body, spec::spec());
    assert_eq!(r.body["openapi"], "3.1.0");
}

#[tokio::test]
async fn same_file_twice_is_stored_once_and_goes_with_its_last_reference() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let song = audio(1, 300_000);
    let hash = sha256_hex(&song);

    let r = alice
        .upload(&song, "format=mp3&ref_kind=message&ref_id=m1")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        (
            r.body["deduplicated"].as_bool(),
            r.body["content_hash"].as_str()
        ),
        (Some(false), Some(hash.as_str()))
    );
    let r = bob
        .upload(&song, "format=mp3&ref_kind=library&ref_id=lib1")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["deduplicated"], true);
    assert_eq!(
        std::fs::read_dir(s.blob_dir(&hash)).unwrap().count(),
        1,
        "one file on disk"
    );

    let st = alice.stats().await.body;
    assert_eq!(
        (st["unique_files"].as_i64(), st["total_references"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(st["deduplication_ratio"].as_f64(), Some(2.0));
    assert_eq!(st["bytes_saved"].as_i64(), Some(300_000));

    // References: idempotent add, per-owner remove.
    let a1 = alice.add_ref(&hash, "lib9", "library").await;
    let a2 = alice.add_ref(&hash, "lib9", "library").await;
    assert_eq!((a1.status, &a1.body), (StatusCode::OK, &a2.body));
    assert_eq!(
        alice.add_ref(&hash, "lib9", "message").await.code(),
        "reference_kind_mismatch"
    );
    assert_eq!(
        alice.remove_ref(&hash, "m1").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        alice.remove_ref(&hash, "lib9").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        alice.remove_ref(&hash, "lib9").await.status,
        StatusCode::NO_CONTENT,
        "retry answers the same"
    );
    assert_eq!(
        alice.add_ref(&hash, "lib9", "library").await.code(),
        "reference_removed"
    );
    assert!(s.blob_dir(&hash).exists(), "bob still references it");
    assert_eq!(
        bob.remove_ref(&hash, "lib1").await.status,
        StatusCode::NO_CONTENT
    );
    assert!(
        !s.blob_dir(&hash).exists(),
        "gone from disk with the last reference"
    );
    let st = alice.stats().await.body;
    assert_eq!(
        (
            st["unique_files"].as_i64(),
            st["stored_bytes"].as_i64(),
            st["total_references"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );
    s.assert_invariants();
    s.assert_settled();
}

#[tokio::test]
async fn upload_session_put_complete_download_with_range() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let song = audio(2, 1_000_000);
    let hash = sha256_hex(&song);
    let r = alice
        .open_session(json!({ "sha256": hash, "size": song.len(), "format": "flac", "reference": { "kind": "message", "ref_id": "m1" } }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let session = r.body;
    assert_eq!(
        session["upload"]["headers"]["x-amz-checksum-sha256"],
        sha256_b64(&song)
    );
    // Completing before the PUT: nothing to complete.
    let sid = json!({ "session_id": session["session_id"] });
    assert_eq!(
        alice.complete(&hash, sid.clone()).await.code(),
        "upload_required"
    );
    let (st, _) = alice.put_signed(&session["upload"], song.clone()).await;
    assert_eq!(st, StatusCode::OK);
    // Replaying the same signed PUT never overwrites.
    let (st, body) = alice.put_signed(&session["upload"], song.clone()).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("precondition_failed"))
    );
    let done = alice.complete(&hash, sid.clone()).await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(
        (
            done.body["deduplicated"].as_bool(),
            done.body["state"].as_str()
        ),
        (Some(false), Some("active"))
    );
    let without_url = |mut v: serde_json::Value| {
        v.as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("url"));
        v
    };
    let again = alice.complete(&hash, sid).await.body;
    assert_eq!(
        without_url(again),
        without_url(done.body.clone()),
        "complete is idempotent (the URL is freshly signed)"
    );
    assert_eq!(alice.stats().await.body["total_references"], 1);

    let d = alice.describe(&hash).await;
    assert_eq!(
        (d.body["format"].as_str(), d.body["size"].as_u64()),
        (Some("flac"), Some(1_000_000))
    );
    let url = d.body["url"].as_str().unwrap();
    let full = reqwest::get(url).await.unwrap();
    assert_eq!(full.headers()["content-type"], "audio/flac");
    assert_eq!(full.bytes().await.unwrap().as_ref(), &song[..]);
    let part = reqwest::Client::new()
        .get(url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &song[10..20]);
    // A tampered download URL is refused.
    let tampered = url.replace("X-Expires=", "X-Expires=9");
    assert_eq!(
        reqwest::get(tampered).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    s.assert_invariants();
}

#[tokio::test]
async fn existing_content_is_claimed_by_proof_without_sending_bytes() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let song = audio(3, 200_000);
    let hash = sha256_hex(&song);
    alice
        .upload(&song, "format=ogg&ref_kind=message&ref_id=a1")
        .await;

    let open = |who: &Client| {
        let who = who.clone();
        let hash = hash.clone();
        async move {
            who.open_session(json!({ "sha256": hash, "size": 200_000, "format": "ogg" }))
                .await
                .body
        }
    };
    let sess = open(&bob).await;
    // Without the bytes, bob cannot tell that alice has this content.
    let absent = open(&bob).await;
    let keys_of =
        |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys_of(&sess), keys_of(&absent));
    let wrong = bob
        .complete(
            &hash,
            json!({ "session_id": sess["session_id"], "proof": "0".repeat(64) }),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::CONFLICT, "upload_required")
    );
    assert_eq!(bob.describe(&hash).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        bob.add_ref(&hash, "b1", "library").await.status,
        StatusCode::NOT_FOUND
    );

    let nonce = sess["challenge"]["nonce"].as_str().unwrap();
    let chunks: Vec<&[u8]> = sess["challenge"]["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (o, l) = (
                r["offset"].as_u64().unwrap() as usize,
                r["length"].as_u64().unwrap() as usize,
            );
            &song[o..o + l]
        })
        .collect();
    let proof = audio_dedup_core::audio::proof_for(nonce, chunks);
    let ok = bob
        .complete(
            &hash,
            json!({ "session_id": sess["session_id"], "proof": proof }),
        )
        .await;
    assert_eq!(
        (ok.status, ok.body["deduplicated"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert_eq!(
        bob.add_ref(&hash, "b1", "library").await.status,
        StatusCode::OK
    );
    assert_eq!(alice.stats().await.body["unique_files"], 1);
    s.assert_invariants();
}

#[tokio::test]
async fn signed_puts_check_signature_headers_length_and_digest() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let song = audio(4, 50_000);
    let hash = sha256_hex(&song);
    let sess = alice
        .open_session(json!({ "sha256": hash, "size": 50_000, "format": "wav" }))
        .await
        .body;
    let up = &sess["upload"];
    let before = s.dump();

    let mut tampered = up.clone();
    tampered["url"] = json!(up["url"]
        .as_str()
        .unwrap()
        .replace("X-Size=50000", "X-Size=50001"));
    assert_eq!(
        alice.put_signed(&tampered, audio(4, 50_001)).await.0,
        StatusCode::FORBIDDEN
    );
    let mut other_sum = up.clone();
    other_sum["headers"]["x-amz-checksum-sha256"] = json!(sha256_b64(b"other"));
    assert_eq!(
        alice.put_signed(&other_sum, song.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    let mut corrupt = song.clone();
    corrupt[100] ^= 1;
    let (st, body) = alice.put_signed(up, corrupt).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_digest"))
    );
    assert_eq!(
        alice.put_signed(up, song[..49_999].to_vec()).await.0,
        StatusCode::BAD_REQUEST
    );
    let no_precondition = reqwest::Client::new()
        .put(up["url"].as_str().unwrap())
        .header("x-amz-checksum-sha256", sha256_b64(&song))
        .header("content-type", "audio/wav")
        .body(song.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(no_precondition.status(), StatusCode::FORBIDDEN);
    assert_eq!(s.dump(), before, "nothing stored by refused PUTs");
    assert_eq!(alice.put_signed(up, song).await.0, StatusCode::OK);
}

#[tokio::test]
async fn expired_upload_urls_are_refused() {
    let cfg = audio_dedup_core::DedupConfig {
        session_ttl: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let s = TestServer::start_with(cfg).await;
    let alice = s.client(ALICE);
    let song = audio(5, 1000);
    let sess = alice
        .open_session(json!({ "sha256": sha256_hex(&song), "size": 1000, "format": "mp3" }))
        .await
        .body;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (st, body) = alice.put_signed(&sess["upload"], song).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("url_expired"))
    );
}

#[tokio::test]
async fn checksum_header_mismatch_stores_nothing() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let before = s.dump();
    let r = alice
        .call_with(
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=mp3",
            Body::Raw(b"some audio".to_vec()),
            &[("x-amz-checksum-sha256", &sha256_b64(b"other audio"))],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "checksum_mismatch")
    );
    assert_eq!(s.dump(), before);
    let ok = alice
        .call_with(
            Method::POST,
            "/v1/audio",
            "/v1/audio?format=mp3",
            Body::Raw(b"some audio".to_vec()),
            &[("x-amz-checksum-sha256", &sha256_b64(b"some audio"))],
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

#[tokio::test]
async fn reconcile_is_admin_only_and_cleans_unreferenced_uploads() {
    let cfg = audio_dedup_core::DedupConfig {
        unreferenced_ttl: std::time::Duration::ZERO,
        ..Default::default()
    };
    let s = TestServer::start_with(cfg).await;
    let alice = s.client(ALICE);
    let r = alice.upload(b"nobody refers to me", "format=mp3").await;
    let hash = r.body["content_hash"].as_str().unwrap().to_owned();
    assert!(s.blob_dir(&hash).exists());
    assert_eq!(alice.reconcile().await.status, StatusCode::FORBIDDEN);
    let rep = s.client(ADMIN).reconcile().await;
    assert_eq!(rep.body["unreferenced_deleted"], 1);
    assert!(!s.blob_dir(&hash).exists());
    s.assert_invariants();
    s.assert_settled();
}

#[tokio::test]
async fn graceful_shutdown_returns_cleanly() {
    let s = TestServer::start().await;
    assert_eq!(s.client(ALICE).stats().await.status, StatusCode::OK);
    s.stop().await.expect("clean shutdown");
}
