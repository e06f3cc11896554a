//! What Schemathesis (`scripts/schemathesis`) found, pinned down: each test is a request the
//! fuzzer sent, with the answer the server gives now. Every reply is checked against
//! docs/openapi.yaml by the client, as everywhere else.

use audio_dedup_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn spec_schema(pointer: &str) -> &'static Value {
    spec::spec()
        .pointer(pointer)
        .unwrap_or_else(|| panic!("docs/openapi.yaml has no {pointer}"))
}

/// JSON Schema's `integer` includes numbers written with a zero fraction (`70363.0`, `1e3`):
/// the spec's `size` allows them, so the server takes them. Found as "schema-valid request
/// rejected": `"size": 70363.0` answered 400 `invalid_json`.
#[tokio::test]
async fn session_size_accepts_every_json_spelling_of_an_integer() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    for (i, size) in ["70363.0", "1e3", "2E1", "5.0e2"].into_iter().enumerate() {
        let hash = sha256_hex(&audio(i as u8, 10));
        let body = format!(r#"{{"sha256":"{hash}","size":{size},"format":"wav"}}"#);
        let r = alice
            .http
            .post(format!("{}/v1/audio/uploads", s.base))
            .bearer_auth(ALICE)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        spec::check("POST", "/v1/audio/uploads", status.as_u16(), &v);
        assert_eq!(status, StatusCode::CREATED, "size {size}: {v}");
    }
    // Still refused: fractions, negatives, strings, and numbers past u64.
    for size in ["1.5", "-1", "-0.5", "\"10\"", "1e30", "null"] {
        let body = format!(
            r#"{{"sha256":"{}","size":{size},"format":"wav"}}"#,
            sha256_hex(b"x")
        );
        let r = alice
            .http
            .post(format!("{}/v1/audio/uploads", s.base))
            .bearer_auth(ALICE)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        spec::check("POST", "/v1/audio/uploads", status.as_u16(), &v);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_json")),
            "size {size}"
        );
    }
}

/// Optional JSON fields are not nullable in the spec. Found as "schema-violating request
/// accepted": `"reference": null` opened a session (201). An explicit `null` is now refused,
/// like any other wrong type, and nothing is stored.
#[tokio::test]
async fn explicit_null_for_an_optional_field_is_refused() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let hash = sha256_hex(&audio(3, 100));
    let before = s.dump();
    let r = alice
        .open_session(json!({ "sha256": hash, "size": 100, "format": "mp3", "reference": null }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    assert_eq!(s.dump(), before, "a refused session stores nothing");

    let sess = alice
        .open_session(json!({ "sha256": hash, "size": 100, "format": "mp3" }))
        .await;
    assert_eq!(sess.status, StatusCode::CREATED);
    let r = alice
        .complete(
            &hash,
            json!({ "session_id": sess.body["session_id"], "proof": null }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    // Leaving the field out is still fine.
    let r = alice
        .complete(&hash, json!({ "session_id": sess.body["session_id"] }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "upload_required")
    );
}

/// `x-amz-checksum-sha256` was documented as any string, so an empty or short value was
/// "schema-valid" and refused. The spec now states the form (canonical base64 of 32 bytes,
/// the `=` optional) and the server takes exactly that: padded, unpadded, nothing else.
#[tokio::test]
async fn checksum_header_is_canonical_base64_with_or_without_padding() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let pattern = spec_schema("/paths/~1v1~1audio/post/parameters/2/schema/pattern")
        .as_str()
        .expect("pattern");
    assert_eq!(pattern, "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=?$");

    let upload = |bytes: Vec<u8>, checksum: String| {
        let alice = alice.clone();
        async move {
            alice
                .call_with(
                    Method::POST,
                    "/v1/audio",
                    "/v1/audio?format=ogg",
                    Body::Raw(bytes),
                    &[("x-amz-checksum-sha256", checksum.as_str())],
                )
                .await
        }
    };

    let padded_song = audio(11, 3000);
    let padded = sha256_b64(&padded_song);
    assert_eq!(padded.len(), 44);
    assert_eq!(
        upload(padded_song, padded).await.status,
        StatusCode::CREATED
    );

    let bare_song = audio(12, 3000);
    let bare = sha256_b64(&bare_song).trim_end_matches('=').to_owned();
    assert_eq!(bare.len(), 43);
    assert_eq!(upload(bare_song, bare).await.status, StatusCode::CREATED);

    let before = s.dump();
    let song = audio(13, 3000);
    let good = sha256_b64(&song);
    // The same digest with non-zero unused bits in the last character: not canonical.
    let mut chars: Vec<char> = good.chars().collect();
    // (The canonical last character is one of AEIMQUYcgkosw048; the next one up is not.)
    chars[42] = char::from_u32(chars[42] as u32 + 1).unwrap_or('B');
    let non_canonical: String = chars.into_iter().collect();
    for bad in [
        String::new(),
        "0".into(),
        "0".repeat(42),
        non_canonical,
        format!("{good}="),
        good.replace('=', "%3D"),
    ] {
        let r = upload(song.clone(), bad.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_checksum"),
            "{bad:?}"
        );
    }
    // Well-formed but not this body's digest (43 zeros: 32 zero bytes, unpadded).
    for other in [sha256_b64(b"something else"), "0".repeat(43)] {
        let r = upload(song.clone(), other).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "checksum_mismatch")
        );
    }
    assert_eq!(s.dump(), before, "refused uploads store nothing");
}

/// Two spec corrections the fuzzer forced, where the server was right: an empty direct
/// upload is refused (`minLength: 1`), and `ref_kind`/`ref_id` come together (one object
/// parameter, `style: form`, `explode: true`, so the wire format is unchanged).
#[tokio::test]
async fn spec_states_the_body_and_reference_rules_the_server_enforces() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let body =
        spec_schema("/paths/~1v1~1audio/post/requestBody/content/application~1octet-stream/schema");
    assert_eq!(body["minLength"], 1);
    let reference = spec_schema("/paths/~1v1~1audio/post/parameters/1");
    assert_eq!(reference["name"], "reference");
    assert_eq!(reference["style"], "form");
    assert_eq!(reference["explode"], true);
    assert_eq!(
        reference["schema"]["required"],
        json!(["ref_kind", "ref_id"])
    );

    let before = s.dump();
    let r = alice.upload(b"", "format=mp3").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "empty_body")
    );
    for q in ["format=mp3&ref_kind=message", "format=mp3&ref_id=m1"] {
        let r = alice.upload(b"abc", q).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "incomplete_reference"),
            "{q}"
        );
    }
    assert_eq!(s.dump(), before);
    // Both together: the exploded object, exactly as before.
    let r = alice
        .upload(b"abc", "format=mp3&ref_kind=message&ref_id=m1")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = alice.add_ref(&sha256_hex(b"abc"), "m1", "message").await;
    assert_eq!(r.status, StatusCode::OK, "the upload attached m1");
}

/// Opening a session whose reference can never be attached answers 409 at once. Found as
/// "undocumented status code": the spec listed no 409 for `POST /v1/audio/uploads`.
#[tokio::test]
async fn a_session_with_an_unusable_reference_is_a_documented_409() {
    let s = TestServer::start().await;
    let alice = s.client(ALICE);
    let song = audio(21, 3_000);
    let hash = sha256_hex(&song);
    alice
        .upload(&song, "format=ogg&ref_kind=library&ref_id=0")
        .await;
    let open = |kind: &'static str, ref_id: &'static str| {
        let alice = alice.clone();
        let hash = hash.clone();
        async move {
            alice
                .open_session(json!({
                    "sha256": hash, "size": 3_000, "format": "ogg",
                    "reference": {"kind": kind, "ref_id": ref_id}
                }))
                .await
        }
    };
    let r = open("message", "0").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "reference_kind_mismatch")
    );
    alice.remove_ref(&hash, "0").await;
    alice.upload(&song, "format=ogg").await;
    let r = open("library", "0").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "reference_removed")
    );
}
