//! The client against the Lambda functions, through a test gateway that does what API
//! Gateway does (support/gateway.rs): routes from template.yaml, the JWT checked by the
//! project's verifier, payload 2.0 events handed to the functions' own handlers
//! (`lambda::function_from_env`, as the bootstraps build them) over DynamoDB + S3 on moto's
//! server, audio going straight to S3 through presigned URLs. Every client signs in with
//! short-lived JWTs from a token provider. `scripts/test` starts moto and sets
//! `AUDIO_DEDUP_MOTO_ENDPOINT`; without it these tests are skipped (and fail when
//! `AUDIO_DEDUP_REQUIRE_MOTO=1`, as in CI).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
// Only this test binary goes through the gateway: the others do not compile it.
#[path = "support/gateway.rs"]
mod gateway;

use audio_dedup_client::{Attachment, Client, ClientConfig, SendState, TokenFuture, TokenProvider};
use audio_dedup_core::identity::testing::{attack_table, Expected, TestIssuer};
use audio_dedup_core::store::aws::clients_from_env;
use audio_dedup_core::{AudioFormat, AudioRender, ContentHash, ThreadId};
use gateway::{route_for, template_functions, Gateway, Limits};
use http::Method;
use serde_json::json;

/// How long the provider's tokens live: short, as an OIDC issuer's.
const TOKEN_TTL: Duration = Duration::from_secs(120);

fn endpoint() -> Option<String> {
    match std::env::var("AUDIO_DEDUP_MOTO_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("AUDIO_DEDUP_REQUIRE_MOTO").as_deref() != Ok("1"),
                "AUDIO_DEDUP_MOTO_ENDPOINT is not set but moto is required"
            );
            eprintln!("skipping: AUDIO_DEDUP_MOTO_ENDPOINT not set (scripts/test starts moto)");
            None
        }
    }
}

async fn gateway() -> Option<Gateway> {
    Some(Gateway::start(&endpoint()?).await)
}

/// A signed-in app's OIDC session: a fresh short-lived JWT from the gateway's issuer
/// whenever the client asks; `first` (if set) is handed out once before them.
struct SignedIn {
    issuer: Arc<TestIssuer>,
    sub: String,
    first: Mutex<Option<String>>,
    refreshes: AtomicUsize,
}

impl TokenProvider for SignedIn {
    fn token(&self, refresh: bool) -> TokenFuture<'_> {
        Box::pin(async move {
            if refresh {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
            }
            let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
            Ok(first.unwrap_or_else(|| self.issuer.token(&self.sub, TOKEN_TTL)))
        })
    }
}

fn signed_in(gw: &Gateway, sub: &str, first: Option<String>) -> Arc<SignedIn> {
    Arc::new(SignedIn {
        issuer: gw.issuer.clone(),
        sub: sub.to_owned(),
        first: Mutex::new(first),
        refreshes: AtomicUsize::new(0),
    })
}

fn client_with(
    gw: &Gateway,
    provider: Arc<SignedIn>,
    dir: &std::path::Path,
    edit: impl FnOnce(&mut ClientConfig),
) -> Client {
    let mut cfg = ClientConfig::new(&gw.url, "", dir).with_token_provider(provider);
    cfg.request_timeout = Duration::from_secs(20);
    edit(&mut cfg);
    Client::open(cfg).expect("open")
}

fn client(gw: &Gateway, user: &str, dir: &std::path::Path) -> Client {
    client_with(gw, signed_in(gw, user, None), dir, |_| {})
}

/// Whether the bucket holds no object under the content's key.
async fn gone_from(bucket: &str, h: &ContentHash) -> bool {
    let (_, s3) = clients_from_env(true).await;
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("prod/audio/{}", h.to_hex()))
        .send()
        .await
        .expect("list the bucket");
    listed.contents().is_empty()
}

/// One HTTP call through the gateway: status, headers and JSON body.
async fn call(
    gw: &Gateway,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, http::HeaderMap, serde_json::Value) {
    let mut rb = reqwest::Client::new().request(method, format!("{}{path}", gw.url));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (
        status,
        headers,
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The template's routes, and API Gateway's choice among them, without AWS.
#[test]
fn the_gateway_routes_as_the_template_says() {
    let functions = template_functions();
    let mut names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["library", "references", "stats", "threads", "upload"]
    );
    for f in &functions {
        gateway::route_set(&f.name);
        assert_eq!(f.timeout, Duration::from_secs(29), "{}", f.name);
    }
    let routes: Vec<_> = functions.into_iter().flat_map(|f| f.routes).collect();
    let to = |m: Method, p: &str| route_for(&routes, &m, p).map(|(r, _)| r.function.as_str());
    // A literal segment beats a parameter: stats is not `GET /v1/audio/{hash}`.
    assert_eq!(to(Method::GET, "/v1/audio/stats"), Some("stats"));
    assert_eq!(
        to(Method::GET, &format!("/v1/audio/{}", "a".repeat(64))),
        Some("upload")
    );
    assert_eq!(to(Method::POST, "/v1/audio/uploads"), Some("upload"));
    assert_eq!(to(Method::GET, "/v1/threads/t1/messages"), Some("threads"));
    assert_eq!(to(Method::PUT, "/v1/library/fav"), Some("library"));
    assert_eq!(
        to(Method::PUT, "/v1/audio/h/references/r"),
        Some("references")
    );
    // Not deployed: the local server's admin route, and unknown methods.
    assert_eq!(to(Method::POST, "/v1/admin/reconcile"), None);
    assert_eq!(to(Method::PATCH, "/v1/library/fav"), None);
    let (_, params) = route_for(&routes, &Method::DELETE, "/v1/threads/t1/messages/m2").unwrap();
    assert_eq!(params["id"], "t1");
    assert_eq!(params["message_id"], "m2");
}

/// "Two people, two devices" through the gateway and the Lambda handlers: the same story
/// as on the local server (threads, whole-PUT uploads, playback, the queue, the library).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_two_devices_through_api_gateway() {
    let Some(gw) = gateway().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let alice = client(&gw, "alice", &dir.path().join("alice"));
    let bob = client(&gw, "bob", &dir.path().join("bob"));
    let carol = client(&gw, "carol", &dir.path().join("carol"));
    let bucket = gw.bucket.clone();
    support::story::two_devices(&alice, &bob, &carol, dir.path(), async |h| {
        gone_from(&bucket, h).await
    })
    .await;
    let calls = gw.calls();
    let routes: std::collections::BTreeSet<_> = calls.iter().map(|c| &c.route_key).collect();
    eprintln!(
        "{} requests through the gateway, routes {routes:?}",
        calls.len()
    );
    // Every request the client made is a route of the template.
    let unrouted: Vec<_> = calls.iter().filter(|c| c.function.is_none()).collect();
    assert!(
        unrouted.is_empty(),
        "not routes of template.yaml: {unrouted:?}"
    );
    for f in ["upload", "stats", "threads", "library"] {
        assert!(
            calls.iter().any(|c| c.function.as_deref() == Some(f)),
            "{f} never invoked"
        );
    }
    for key in ["POST /v1/audio/uploads", "POST /v1/audio/{hash}/complete"] {
        assert!(calls.iter().any(|c| c.route_key == key), "no {key}");
    }
}

/// Content above the part size goes up in parts through the gateway (S3 multipart on
/// moto, completed by the upload function); the other device claims it without sending
/// it, and plays it. Then the network goes: sends and a library change queue up, and one
/// `process_queue` delivers them in order once the gateway is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parted_upload_and_offline_queue_through_api_gateway() {
    let Some(mut gw) = gateway().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let alice = client_with(
        &gw,
        signed_in(&gw, "alice", None),
        &dir.path().join("alice"),
        |c| c.background_sender = false,
    );
    let bob = client(&gw, "bob", &dir.path().join("bob"));

    let size = 9 * 1024 * 1024 + 12_345;
    let song = support::story::recording(7, size);
    let path = dir.path().join("long-take.wav");
    std::fs::write(&path, &song).unwrap();
    let first = alice
        .upload_audio(&path, AudioFormat::Wav, None)
        .await
        .expect("parted upload");
    assert!(!first.deduplicated);
    assert_eq!(first.bytes_sent, u64::from(size));
    assert_eq!(first.content_hash, ContentHash::of(&song));
    let calls = gw.calls();
    for key in [
        "POST /v1/audio/uploads",
        "POST /v1/audio/{hash}/parts",
        "POST /v1/audio/{hash}/complete",
    ] {
        assert!(
            calls.iter().any(|c| c.route_key == key && c.status < 300),
            "no {key}: {calls:?}"
        );
    }
    let again = bob
        .upload_audio(&path, AudioFormat::Wav, None)
        .await
        .expect("bob claims it");
    assert!(again.deduplicated, "bob proves possession; no bytes");
    assert_eq!(again.bytes_sent, 0);

    // The direct upload at its limit: 4 MiB, base64 in the event, under Lambda's 6 MB.
    let direct = support::story::recording(8, 4 * 1024 * 1024);
    let token = gw.token("alice", TOKEN_TTL);
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/audio?format=wav&ref_kind=library&ref_id=direct-1",
            gw.url
        ))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(direct.clone())
        .send()
        .await
        .expect("direct upload");
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    assert!(status == 200 || status == 201, "{status} {v}");
    assert_eq!(v["size"], direct.len() as u64);
    assert_eq!(v["content_hash"], ContentHash::of(&direct).to_string());

    let thread: ThreadId = "long".parse().unwrap();
    alice
        .create_thread(Some(&thread), "Long", &["bob".to_owned()])
        .await
        .unwrap();
    let render = AudioRender {
        content_hash: first.content_hash,
        format: AudioFormat::Wav,
    };
    let sent = alice
        .send_message(
            &thread,
            &json!({"take": 1}),
            Some(Attachment::Uploaded(render)),
        )
        .await
        .unwrap();
    assert_eq!(sent.send_state, SendState::Sent, "{:?}", sent.error);
    assert_eq!(bob.sync_messages(&thread).await.unwrap().new, 1);
    bob.clear_audio().unwrap();
    let h = bob.message_audio(&thread, &sent.id, None).await.unwrap();
    assert_eq!(std::fs::read(h.path()).unwrap(), song);
    drop(h);

    // Offline: nothing listens; three sends and a library item wait in the queue.
    gw.stop().await;
    let mut queued = Vec::new();
    for i in 0..3 {
        let m = alice
            .send_message(&thread, &json!({ "n": i }), None)
            .await
            .unwrap();
        assert_eq!(m.send_state, SendState::Sending);
        queued.push(m.id);
    }
    let fav = "fav-long".parse().unwrap();
    let item = alice
        .put_library_item(
            &fav,
            audio_dedup_client::LibraryAudio::FromMessage(sent.id.clone()),
            "Long take",
        )
        .await
        .unwrap();
    assert_eq!(item.send_state, SendState::Sending);
    assert_eq!(alice.pending_count().unwrap(), 4);
    gw.restart().await;
    let r = alice.process_queue().await.unwrap();
    assert_eq!((r.sent, r.failed, r.waiting), (4, 0, 0), "{r:?}");
    assert_eq!(alice.pending_count().unwrap(), 0);
    assert_eq!(bob.sync_messages(&thread).await.unwrap().new, 3);
    let ids: Vec<_> = bob
        .messages(&thread)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .filter(|id| queued.contains(id))
        .collect();
    assert_eq!(ids, queued, "in order, once each");
    alice.sync_library().await.unwrap();
    assert_eq!(alice.library().unwrap().len(), 1);
}

/// What API Gateway refuses before any function runs, and what the functions refuse: no
/// token, every token of the shared attack table, a stranger's request (404, as if absent),
/// a route the template does not deploy, and the gateway's limits. The client reads API
/// Gateway's answers: a refused token asks the provider once, then signs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_gateway_refuses_strangers_and_attackers() {
    let Some(gw) = gateway().await else { return };
    let alice = gw.token("alice", TOKEN_TTL);
    let carol = gw.token("carol", TOKEN_TTL);

    // No token: API Gateway's own 401, no function invoked.
    let (s, h, v) = call(&gw, None, Method::GET, "/v1/library", None).await;
    assert_eq!((s, v), (401, json!({"message": "Unauthorized"})));
    assert!(h.contains_key("www-authenticate"));
    assert_eq!(gw.calls().last().map(|c| c.status), Some(401));

    // The shared table: forged, expired, wrong issuer or audience, alg none, … all 401.
    for case in attack_table(&gw.issuer) {
        let (s, _, v) = call(&gw, Some(&case.token), Method::GET, "/v1/library", None).await;
        match case.expected {
            Expected::Accepted(_) => assert_eq!(s, 200, "{}: {v}", case.name),
            Expected::Refused(_) => {
                assert_eq!(
                    (s, v),
                    (401, json!({"message": "Unauthorized"})),
                    "{}",
                    case.name
                )
            }
        }
    }
    // Another issuer's key, under its own kid: not this API's token.
    let stranger = TestIssuer::new().token("alice", TOKEN_TTL);
    let (s, _, _) = call(&gw, Some(&stranger), Method::GET, "/v1/library", None).await;
    assert_eq!(s, 401);

    // A non-member's request answers as an absent thread does.
    let (s, _, v) = call(
        &gw,
        Some(&alice),
        Method::POST,
        "/v1/threads",
        Some(
            json!({"id": "secret", "title": "S", "members": ["bob"]})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    for path in ["/v1/threads/secret", "/v1/threads/secret/messages"] {
        let absent = path.replace("secret", "nothing-here");
        let (s1, _, v1) = call(&gw, Some(&carol), Method::GET, path, None).await;
        let (s2, _, v2) = call(&gw, Some(&carol), Method::GET, &absent, None).await;
        assert_eq!(s1, 404, "{v1}");
        assert_eq!(
            (s1, &v1["error"]["code"]),
            (s2, &v2["error"]["code"]),
            "{path}"
        );
    }
    let (s, _, v) = call(
        &gw,
        Some(&carol),
        Method::POST,
        "/v1/threads/secret/messages",
        Some(json!({"id": "m1", "snapshot": {}}).to_string().into_bytes()),
    )
    .await;
    assert_eq!(s, 404, "{v}");

    // The local server's admin route is not deployed: API Gateway's 404, no function.
    let (s, _, v) = call(&gw, Some(&alice), Method::POST, "/v1/admin/reconcile", None).await;
    assert_eq!((s, v), (404, json!({"message": "Not Found"})));
    assert_eq!(gw.calls().last().and_then(|c| c.function.clone()), None);

    // Limits, scaled down: a body over the payload limit, an event over Lambda's, a
    // function past its Timeout, no answer within the integration timeout.
    gw.set_limits(Limits {
        payload: 64 * 1024,
        ..Limits::default()
    });
    let (s, _, _) = call(
        &gw,
        Some(&alice),
        Method::PUT,
        "/v1/library/big",
        Some(vec![b' '; 64 * 1024 + 1]),
    )
    .await;
    assert_eq!(s, 413);
    gw.set_limits(Limits {
        invoke_payload: 2048,
        ..Limits::default()
    });
    let (s, _, v) = call(
        &gw,
        Some(&alice),
        Method::PUT,
        "/v1/library/big",
        Some(vec![b' '; 4096]),
    )
    .await;
    assert_eq!((s, v), (500, json!({"message": "Internal Server Error"})));
    gw.set_limits(Limits {
        function_timeout: Some(Duration::ZERO),
        ..Limits::default()
    });
    let (s, _, _) = call(&gw, Some(&alice), Method::GET, "/v1/library", None).await;
    assert_eq!(s, 500);
    gw.set_limits(Limits {
        integration_timeout: Duration::ZERO,
        ..Limits::default()
    });
    let (s, _, v) = call(&gw, Some(&alice), Method::GET, "/v1/library", None).await;
    assert_eq!((s, v), (503, json!({"message": "Service Unavailable"})));
    gw.set_limits(Limits::default());

    // The client: an expired token is refused by API Gateway, the provider is asked once
    // for a fresh one, and the call goes through.
    let dir = tempfile::tempdir().unwrap();
    let expired = {
        let mut c = gw.issuer.claims("alice", TOKEN_TTL);
        c["exp"] = json!(audio_dedup_core::identity::testing::now() - 60);
        gw.issuer.sign(&c)
    };
    let provider = signed_in(&gw, "alice", Some(expired));
    let c = client_with(&gw, provider.clone(), &dir.path().join("a"), |_| {});
    c.api().stats().await.expect("stats with a refreshed token");
    assert_eq!(provider.refreshes.load(Ordering::SeqCst), 1);
    assert!(!c.is_signed_out());
}

/// Every HTTP function takes from the caller's budget in the table, `stats` too (a read of
/// the figures Queries each stats shard's partition): over it, 429 with Retry-After and the
/// function does no work; another user's budget is their own. The calls go at once, so the
/// refill (1 a second) cannot hide the limit however slow moto is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_takes_from_the_callers_budget_through_api_gateway() {
    const CALLS: usize = 8;
    let Some(endpoint) = endpoint() else { return };
    let gw = Gateway::start_with_budget(&endpoint, 1, 2).await;
    let alice = gw.token("alice", TOKEN_TTL);
    let bob = gw.token("bob", TOKEN_TTL);
    for path in ["/v1/audio/stats", "/v1/library"] {
        // A fresh user for each path: a burst of 2, then refused until the bucket refills.
        let token = gw.token(&format!("user-{}", path.len()), TOKEN_TTL);
        let answers = futures_util::future::join_all(
            (0..CALLS).map(|_| call(&gw, Some(&token), Method::GET, path, None)),
        )
        .await;
        let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
        let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
        assert!(ok >= 2, "{path}: the burst is served: {answers:?}");
        assert_eq!(ok + refused.len(), CALLS, "{path}: {answers:?}");
        assert!(
            !refused.is_empty(),
            "{path}: {CALLS} calls at once, all served"
        );
        for (_, h, v) in refused {
            assert_eq!(v["error"]["code"], "rate_limited", "{path}");
            assert!(h.contains_key("retry-after"), "{path}");
        }
    }
    // Alice's and Bob's budgets are untouched by the users above.
    for token in [&alice, &bob] {
        let (s, _, v) = call(&gw, Some(token), Method::GET, "/v1/audio/stats", None).await;
        assert_eq!(s, 200, "{v}");
    }
}
