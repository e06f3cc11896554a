//! JWT mode over real HTTP: the shared attack table (`audio_dedup_core::identity::testing`)
//! against a server trusting a test issuer, the token table beside it, rotation, the rate
//! limit keyed by JWT callers, and start-up without the issuer's keys.

use std::time::Duration;

use audio_dedup_core::identity::testing::{attack_table, Expected, TestIssuer};
use audio_dedup_core::identity::JwksSource;
use audio_dedup_server::in_process::{test_config, InProcess, TempServer};
use audio_dedup_server::rate_limit::RequestRate;
use audio_dedup_server::TokenTable;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get_threads(url: &str, token: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{url}/v1/threads"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create_thread(url: &str, token: &str, id: &str) -> u16 {
    client()
        .post(format!("{url}/v1/threads"))
        .bearer_auth(token)
        .json(&json!({"id": id, "title": "t", "members": []}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_shared_attack_table_over_http_and_refused_tokens_change_nothing() {
    let issuer = TestIssuer::new();
    let server = TempServer::start_jwt(&issuer, TokenTable::default(), |_| {})
        .await
        .unwrap();
    let url = server.url();
    for (i, case) in attack_table(&issuer).into_iter().enumerate() {
        let (status, _) = get_threads(&url, &case.token).await;
        let created = create_thread(&url, &case.token, &format!("t{i}")).await;
        match case.expected {
            Expected::Accepted(_) => {
                assert_eq!(status, 200, "{}", case.name);
                assert_eq!(created, 201, "{}", case.name);
            }
            Expected::Refused(_) => {
                assert_eq!(status, 401, "{}", case.name);
                assert_eq!(created, 401, "{}", case.name);
            }
        }
    }
    // Every refused token named bob: bob, now signed in for real, has no thread.
    let (status, body) = get_threads(&url, &issuer.token("bob", Duration::from_secs(60))).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"], json!([]), "{body}");
    // The accepted ones each made theirs, as their mapped user.
    let (_, body) = get_threads(&url, &issuer.token("auth0|123", Duration::from_secs(60))).await;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_and_jwts_both_work_and_a_rotated_key_is_picked_up() {
    let mut issuer = TestIssuer::new();
    let mut tokens = TokenTable::default();
    tokens
        .insert("carol-token-0123456789", "carol", false)
        .unwrap();
    let server = TempServer::start_jwt(&issuer, tokens, |_| {})
        .await
        .unwrap();
    let url = server.url();
    assert_eq!(get_threads(&url, "carol-token-0123456789").await.0, 200);
    let ttl = Duration::from_secs(60);
    assert_eq!(get_threads(&url, &issuer.token("alice", ttl)).await.0, 200);

    // The issuer rotates: the first request with the new kid is refused and starts a read
    // of the JWKS; a retry (bounded) is accepted.
    issuer.rotate();
    issuer.write_jwks(&server.jwks_path()).unwrap();
    let token = issuer.token("alice", ttl);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match get_threads(&url, &token).await.0 {
            200 => break,
            401 => {}
            other => panic!("answered {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key was never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_short_token_stops_working_when_it_expires() {
    let issuer = TestIssuer::new();
    let server = TempServer::start_jwt(&issuer, TokenTable::default(), |_| {})
        .await
        .unwrap();
    let token = issuer.token("alice", Duration::from_secs(1));
    assert_eq!(get_threads(&server.url(), &token).await.0, 200);
    // `exp` has one-second resolution and the test server allows no leeway.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get_threads(&server.url(), &token).await.0, 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_rate_limit_counts_jwt_callers() {
    let issuer = TestIssuer::new();
    let rate = RequestRate {
        per_second: std::num::NonZeroU32::MIN,
        burst: std::num::NonZeroU32::new(2).unwrap(),
    };
    let server = TempServer::start_jwt(&issuer, TokenTable::default(), |cfg| {
        cfg.request_rate = Some(rate)
    })
    .await
    .unwrap();
    let token = issuer.token("alice", Duration::from_secs(60));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get_threads(&server.url(), &token).await.0);
    }
    assert_eq!(statuses[..2], [200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    // Another user has a bucket of their own.
    let bob = issuer.token("bob", Duration::from_secs(60));
    assert_eq!(get_threads(&server.url(), &bob).await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn jwt_mode_does_not_start_without_the_issuer_keys() {
    let issuer = TestIssuer::new();
    let dir = tempfile::tempdir().unwrap();
    for jwks in [
        JwksSource::parse("http://127.0.0.1:9/jwks.json"),
        JwksSource::File(dir.path().join("missing.json")),
    ] {
        let mut cfg = test_config(&dir.path().join("data"), TokenTable::default());
        cfg.jwt = Some(issuer.verifier_config(jwks.clone()));
        let started = InProcess::start(cfg, "127.0.0.1:0".parse().unwrap()).await;
        assert!(started.is_err(), "{jwks} started");
    }
}
