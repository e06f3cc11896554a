//! The Lambda HTTP handlers (the shared router + JWT identity), fed API Gateway HTTP API v2
//! events built from `sam local generate-event apigateway http-api-proxy`
//! (functions/fixtures/apigw-http.json) and parsed by `lambda_http::request::from_str`.

use std::sync::Arc;

use audio_dedup_api::lambda::JwtAuthenticator;
use audio_dedup_api::{router, ApiConfig, RouteSet};
use audio_dedup_core::store::memory::{MemoryBlobs, MemoryIndex};
use audio_dedup_core::{ContentHash, Dedup, DedupConfig};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn fixture() -> Value {
    let path = format!(
        "{}/../functions/fixtures/apigw-http.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An API Gateway v2 event for `method path?query` from `sub` (None: no JWT claims at all).
fn event(
    method: &str,
    path: &str,
    query: &str,
    sub: Option<&str>,
    body: Option<&[u8]>,
) -> lambda_http::Request {
    let mut e = fixture();
    e["rawPath"] = json!(path);
    e["rawQueryString"] = json!(query);
    e["queryStringParameters"] = json!({});
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap();
        e["queryStringParameters"][k] = json!(v);
    }
    e["pathParameters"] = json!({});
    e["cookies"] = json!([]);
    e["headers"] = json!({ "content-type": "application/json" });
    e["requestContext"]["http"]["method"] = json!(method);
    e["requestContext"]["http"]["path"] = json!(path);
    e["routeKey"] = json!(format!("{method} {path}"));
    match sub {
        Some(s) => {
            e["requestContext"]["authorizer"]["jwt"]["claims"] =
                json!({ "sub": s, "iss": "https://issuer.example" })
        }
        None => {
            e["requestContext"]
                .as_object_mut()
                .unwrap()
                .remove("authorizer");
        }
    }
    match body {
        Some(b) => {
            e["body"] = json!(base64::engine::general_purpose::STANDARD.encode(b));
            e["isBase64Encoded"] = json!(true);
        }
        None => {
            e.as_object_mut().unwrap().remove("body");
            e["isBase64Encoded"] = json!(false);
        }
    }
    lambda_http::request::from_str(&e.to_string()).expect("API Gateway v2 event parses")
}

struct Fn {
    app: axum::Router,
}

impl Fn {
    fn new(d: &Arc<Dedup<MemoryBlobs, MemoryIndex>>, set: RouteSet) -> Self {
        Self {
            app: router(
                d.clone(),
                Arc::new(JwtAuthenticator),
                ApiConfig::default(),
                set,
            ),
        }
    }

    async fn call(&self, req: lambda_http::Request) -> (u16, Value) {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            },
        )
    }
}

fn dedup() -> Arc<Dedup<MemoryBlobs, MemoryIndex>> {
    Arc::new(Dedup::new(
        MemoryBlobs::default(),
        MemoryIndex::default(),
        DedupConfig::default(),
    ))
}

#[tokio::test]
async fn the_functions_share_one_protocol_and_identity_comes_from_the_jwt_sub() {
    let d = dedup();
    let (upload, references, stats) = (
        Fn::new(&d, RouteSet::Upload),
        Fn::new(&d, RouteSet::References),
        Fn::new(&d, RouteSet::Stats),
    );
    let song = b"binary audio body, base64 in the event";
    let hash = ContentHash::of(song).to_string();

    let (st, body) = upload
        .call(event(
            "POST",
            "/v1/audio",
            "format=mp3&ref_kind=message&ref_id=m1",
            Some("user-a"),
            Some(song),
        ))
        .await;
    assert_eq!(
        (st, body["deduplicated"].as_bool()),
        (201, Some(false)),
        "{body}"
    );
    let (st, body) = upload
        .call(event(
            "POST",
            "/v1/audio",
            "format=mp3",
            Some("user-b"),
            Some(song),
        ))
        .await;
    assert_eq!((st, body["deduplicated"].as_bool()), (200, Some(true)));

    let path = format!("/v1/audio/{hash}/references/lib1");
    let (st, _) = references
        .call(event(
            "PUT",
            &path,
            "",
            Some("user-b"),
            Some(br#"{"kind":"library"}"#),
        ))
        .await;
    assert_eq!(st, 200);
    // user-b cannot remove user-a's reference; it is simply not theirs.
    let (st, _) = references
        .call(event(
            "DELETE",
            &format!("/v1/audio/{hash}/references/m1"),
            "",
            Some("user-b"),
            None,
        ))
        .await;
    assert_eq!(st, 404);
    let (st, body) = stats
        .call(event("GET", "/v1/audio/stats", "", Some("user-a"), None))
        .await;
    assert_eq!(
        (
            st,
            body["unique_files"].as_i64(),
            body["total_references"].as_i64()
        ),
        (200, Some(1), Some(2))
    );

    // Each function serves only its own routes.
    let (st, _) = stats
        .call(event(
            "POST",
            "/v1/audio",
            "format=mp3",
            Some("user-a"),
            Some(song),
        ))
        .await;
    assert_eq!(st, 404);
    let (st, _) = upload
        .call(event("GET", "/v1/audio/stats", "", Some("user-a"), None))
        .await;
    assert_eq!(
        st, 400,
        "stats is not the upload function's; {{hash}} = \"stats\" is no hash"
    );
}

#[tokio::test]
async fn missing_or_unusable_claims_answer_401_and_change_nothing() {
    let d = dedup();
    let upload = Fn::new(&d, RouteSet::Upload);
    // Any subject maps to a user id (`../../etc` is `_2E_2E_2F_2E_2E_2Fetc`) unless it is
    // empty or its user id would be over 128 characters.
    let long = "/".repeat(43);
    for sub in [None, Some(long.as_str()), Some("")] {
        let (st, body) = upload
            .call(event("POST", "/v1/audio", "format=mp3", sub, Some(b"x")))
            .await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{sub:?}"
        );
    }
    // A header cannot name the caller.
    let mut req = event("GET", "/v1/audio/stats", "", None, None);
    req.headers_mut()
        .insert("x-user-id", "user-a".parse().unwrap());
    req.headers_mut()
        .insert("authorization", "Bearer something".parse().unwrap());
    assert_eq!(Fn::new(&d, RouteSet::Stats).call(req).await.0, 401);
    assert_eq!(d.audio().stats().await.unwrap().unique_files, 0);
}

#[tokio::test]
async fn bad_input_through_api_gateway_is_the_same_4xx_json() {
    let d = dedup();
    let upload = Fn::new(&d, RouteSet::Upload);
    let cases = [
        (
            event("POST", "/v1/audio", "format=exe", Some("u"), Some(b"x")),
            400,
            "unknown_format",
        ),
        (
            event("POST", "/v1/audio/uploads", "", Some("u"), Some(b"{nope")),
            400,
            "invalid_json",
        ),
        (
            event("GET", "/v1/audio/..%2F..%2Fetc", "", Some("u"), None),
            400,
            "invalid_hash",
        ),
        (
            event(
                "POST",
                "/v1/audio",
                "format=mp3",
                Some("u"),
                Some(&vec![0u8; 4 * 1024 * 1024 + 1]),
            ),
            413,
            "body_too_large",
        ),
    ];
    for (req, status, code) in cases {
        let (st, body) = upload.call(req).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    assert_eq!(d.audio().stats().await.unwrap().unique_files, 0);
}

#[tokio::test]
async fn the_threads_function_creates_a_thread_for_the_jwt_sub_and_lists_its_messages() {
    let d = dedup();
    let threads = Fn::new(&d, RouteSet::Threads);
    let (st, thread) = threads
        .call(event(
            "POST",
            "/v1/threads",
            "",
            Some("alice"),
            Some(br#"{"title":"t","members":["bob"]}"#),
        ))
        .await;
    assert_eq!(st, 201, "{thread}");
    assert_eq!(
        (thread["created_by"].as_str(), thread["members"].clone()),
        (Some("alice"), json!(["alice", "bob"])),
        "the caller is the JWT's sub: {thread}"
    );
    let id = thread["id"].as_str().expect("thread id").to_owned();

    let (st, page) = threads
        .call(event(
            "GET",
            &format!("/v1/threads/{id}/messages"),
            "",
            Some("alice"),
            None,
        ))
        .await;
    assert_eq!(
        (st, page),
        (
            200,
            json!({ "items": [], "next_cursor": "0", "has_more": false })
        )
    );

    // No claims: 401, whatever the route.
    for (method, path, body) in [
        (
            "POST",
            "/v1/threads".to_owned(),
            Some(&br#"{"title":"t","members":[]}"#[..]),
        ),
        ("GET", format!("/v1/threads/{id}/messages"), None),
    ] {
        let (st, body) = threads.call(event(method, &path, "", None, body)).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn the_library_function_refuses_unknown_audio_and_serves_only_its_routes() {
    let d = dedup();
    let (threads, library) = (
        Fn::new(&d, RouteSet::Threads),
        Fn::new(&d, RouteSet::Library),
    );
    let unknown = ContentHash::of(b"never uploaded").to_string();
    let (st, body) = library
        .call(event(
            "PUT",
            "/v1/library/x",
            "",
            Some("alice"),
            Some(
                json!({ "content_hash": unknown, "title": "song" })
                    .to_string()
                    .as_bytes(),
            ),
        ))
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("audio_not_found")),
        "{body}"
    );

    // Each function serves only its own routes.
    let (st, _) = threads
        .call(event("GET", "/v1/library", "", Some("alice"), None))
        .await;
    assert_eq!(st, 404);
    let (st, _) = library
        .call(event("GET", "/v1/threads", "", Some("alice"), None))
        .await;
    assert_eq!(st, 404);
    let (st, page) = library
        .call(event("GET", "/v1/library", "", Some("alice"), None))
        .await;
    assert_eq!((st, page["items"].clone()), (200, json!([])));
}

#[tokio::test]
async fn the_threads_function_serves_a_members_download_of_a_message_audio() {
    let d = dedup();
    let (upload, threads, library) = (
        Fn::new(&d, RouteSet::Upload),
        Fn::new(&d, RouteSet::Threads),
        Fn::new(&d, RouteSet::Library),
    );
    let song = b"alice's take, sent to bob";
    let hash = ContentHash::of(song).to_string();
    let (st, _) = upload
        .call(event(
            "POST",
            "/v1/audio",
            "format=wav",
            Some("alice"),
            Some(song),
        ))
        .await;
    assert_eq!(st, 201);
    let (st, _) = threads
        .call(event(
            "POST",
            "/v1/threads",
            "",
            Some("alice"),
            Some(br#"{"id":"duo","title":"t","members":["bob"]}"#),
        ))
        .await;
    assert_eq!(st, 201);
    let msg = json!({"id": "m1", "snapshot": {}, "audio": {"content_hash": hash, "format": "wav"}});
    let (st, _) = threads
        .call(event(
            "POST",
            "/v1/threads/duo/messages",
            "",
            Some("alice"),
            Some(msg.to_string().as_bytes()),
        ))
        .await;
    assert_eq!(st, 201);

    let path = "/v1/threads/duo/messages/m1/audio";
    let (st, body) = threads
        .call(event("GET", path, "", Some("bob"), None))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (body["content_hash"].as_str(), body["format"].as_str()),
        (Some(hash.as_str()), Some("wav"))
    );
    assert!(body["url"].as_str().is_some_and(|u| !u.is_empty()));
    // Not a member, no claims, another function: 404, 401, no such route.
    let (st, body) = threads
        .call(event("GET", path, "", Some("carol"), None))
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("message_not_found"))
    );
    let (st, _) = threads.call(event("GET", path, "", None, None)).await;
    assert_eq!(st, 401);
    let (st, _) = library
        .call(event("GET", path, "", Some("bob"), None))
        .await;
    assert_eq!(st, 404);

    // Bob saves it through the library function, naming the message.
    let (st, item) = library
        .call(event(
            "PUT",
            "/v1/library/from-alice",
            "",
            Some("bob"),
            Some(br#"{"from_message":"m1","title":"Alice's"}"#),
        ))
        .await;
    assert_eq!(
        (st, item["content_hash"].as_str()),
        (201, Some(hash.as_str()))
    );
}

/// Membership and read markers through the threads function as API Gateway invokes it: the
/// caller is the JWT's sub, the other functions do not serve these routes.
#[tokio::test]
async fn the_threads_function_changes_members_and_read_markers_for_the_jwt_sub() {
    let d = dedup();
    let (threads, library) = (
        Fn::new(&d, RouteSet::Threads),
        Fn::new(&d, RouteSet::Library),
    );
    let body = br#"{"id":"club","title":"t","members":["bob"]}"#;
    let (st, _) = threads
        .call(event("POST", "/v1/threads", "", Some("alice"), Some(body)))
        .await;
    assert_eq!(st, 201);
    let add = br#"{"member":"carol"}"#;
    let (st, t) = threads
        .call(event(
            "POST",
            "/v1/threads/club/members",
            "",
            Some("bob"),
            Some(add),
        ))
        .await;
    assert_eq!(
        (st, t["members"].clone()),
        (201, json!(["alice", "bob", "carol"]))
    );
    let (st, _) = threads
        .call(event(
            "PUT",
            "/v1/threads/club/read",
            "",
            Some("carol"),
            Some(br#"{"cursor":"1"}"#),
        ))
        .await;
    assert_eq!(st, 204);
    let (st, _) = threads
        .call(event(
            "POST",
            "/v1/threads/club/leave",
            "",
            Some("carol"),
            None,
        ))
        .await;
    assert_eq!(st, 204);
    let (st, body) = threads
        .call(event("GET", "/v1/threads/club", "", Some("carol"), None))
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("thread_not_found"))
    );
    let (st, _) = threads
        .call(event(
            "DELETE",
            "/v1/threads/club/members/alice",
            "",
            Some("bob"),
            None,
        ))
        .await;
    assert_eq!(st, 403, "only the creator removes others");
    let (st, _) = library
        .call(event(
            "POST",
            "/v1/threads/club/members",
            "",
            Some("bob"),
            Some(add),
        ))
        .await;
    assert_eq!(st, 404, "not a route of the library function");
}
