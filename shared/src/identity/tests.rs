//! The verifier against the shared attack table, on both paths (async fetching, sync
//! cached), and its key handling: rotation, rate-limited refetches, an issuer that is down.

use std::sync::Arc;
use std::time::Duration;

use super::testing::{attack_table, Expected, TestIssuer};
use super::{AuthError, JwksError, JwksSource, Rejected, Verifier};

fn verdict(r: Result<String, Rejected>) -> Expected {
    match r {
        Ok(user) => Expected::Accepted(user),
        Err(why) => Expected::Refused(why),
    }
}

/// An issuer with its JWKS written to a file in a temporary folder.
fn file_issuer() -> (TestIssuer, tempfile::TempDir, std::path::PathBuf) {
    let issuer = TestIssuer::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    issuer.write_jwks(&path).unwrap();
    (issuer, dir, path)
}

#[tokio::test]
async fn every_attack_table_case_gets_its_verdict_on_both_paths() {
    let (issuer, _dir, path) = file_issuer();
    let cfg = issuer.verifier_config(JwksSource::File(path));
    let fetching = Verifier::new(cfg.clone());
    let cached = Verifier::load(cfg).await.unwrap();
    for case in attack_table(&issuer) {
        let got = match fetching.verify(&case.token).await {
            Ok(v) => Ok(v.user.to_string()),
            Err(AuthError::Rejected(why)) => Err(why),
            Err(e) => panic!("{}: {e}", case.name),
        };
        assert_eq!(verdict(got), case.expected, "verify: {}", case.name);
        let got = cached
            .verify_cached(&case.token)
            .map(|v| v.user.to_string());
        assert_eq!(verdict(got), case.expected, "verify_cached: {}", case.name);
    }
}

#[tokio::test]
async fn the_subject_is_kept_as_the_issuer_wrote_it() {
    let (issuer, _dir, path) = file_issuer();
    let v = Verifier::load(issuer.verifier_config(JwksSource::File(path)))
        .await
        .unwrap();
    let got = v
        .verify_cached(&issuer.token("auth0|123", Duration::from_secs(60)))
        .unwrap();
    assert_eq!(got.subject, "auth0|123");
    assert_eq!(got.user.as_str(), "auth0_7C123");
}

#[tokio::test]
async fn a_rotated_key_is_read_again_when_first_seen() {
    let (mut issuer, _dir, path) = file_issuer();
    let v = Verifier::new(issuer.verifier_config(JwksSource::File(path.clone())));
    let ttl = Duration::from_secs(60);
    assert!(v.verify(&issuer.token("alice", ttl)).await.is_ok());
    let old = issuer.token("alice", ttl);
    issuer.rotate();
    issuer.write_jwks(&path).unwrap();
    let user = v.verify(&issuer.token("bob", ttl)).await.unwrap().user;
    assert_eq!(user.as_str(), "bob");
    // Tokens signed before the rotation still verify while their key is published.
    assert!(v.verify(&old).await.is_ok());
}

#[tokio::test]
async fn an_unknown_kid_on_the_sync_path_refetches_in_the_background_rate_limited() {
    let (mut issuer, _dir, path) = file_issuer();
    let mut cfg = issuer.verifier_config(JwksSource::File(path.clone()));
    cfg.min_refetch = Duration::from_secs(1);
    let v: Arc<Verifier> = Verifier::load(cfg).await.unwrap();
    let ttl = Duration::from_secs(60);

    // Within `min_refetch` of the load, an unknown kid reads nothing.
    issuer.rotate();
    issuer.write_jwks(&path).unwrap();
    let early = issuer.token("alice", ttl);
    assert_eq!(v.verify_cached(&early), Err(Rejected::UnknownKey));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(v.verify_cached(&early), Err(Rejected::UnknownKey));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    issuer.rotate();
    issuer.write_jwks(&path).unwrap();
    let token = issuer.token("alice", ttl);
    // Refused now (the request does not wait), accepted once the background read lands.
    assert_eq!(v.verify_cached(&token), Err(Rejected::UnknownKey));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while v.verify_cached(&token).is_err() {
        assert!(tokio::time::Instant::now() < deadline, "new key never read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Within `min_refetch` of that read, another unknown kid reads nothing.
    issuer.rotate();
    issuer.write_jwks(&path).unwrap();
    let token = issuer.token("alice", ttl);
    for _ in 0..20 {
        assert_eq!(v.verify_cached(&token), Err(Rejected::UnknownKey));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_issuer_briefly_down_keeps_the_cached_keys() {
    let (issuer, _dir, path) = file_issuer();
    let v = Verifier::load(issuer.verifier_config(JwksSource::File(path.clone())))
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(v.refresh().await, Err(JwksError::Read { .. })));
    let token = issuer.token("alice", Duration::from_secs(60));
    assert!(v.verify_cached(&token).is_ok());
    assert!(v.verify(&token).await.is_ok());
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_an_unreachable_one_fails_loading() {
    let issuer = TestIssuer::new();
    let jwks = issuer.jwks_json();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { jwks }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = JwksSource::parse(&format!("http://{addr}/jwks.json"));
    assert!(matches!(url, JwksSource::Url(_)));
    let v = Verifier::load(issuer.verifier_config(url)).await.unwrap();
    let token = issuer.token("alice", Duration::from_secs(60));
    assert_eq!(v.verify_cached(&token).unwrap().user.as_str(), "alice");

    let down = JwksSource::parse("http://127.0.0.1:9/jwks.json");
    assert!(matches!(
        Verifier::load(issuer.verifier_config(down)).await,
        Err(JwksError::Fetch(_))
    ));
    let v = Verifier::new(issuer.verifier_config(JwksSource::parse("http://127.0.0.1:9/x")));
    assert!(matches!(
        v.verify(&token).await,
        Err(AuthError::JwksUnavailable(_))
    ));
}

#[test]
fn a_dev_issuer_key_round_trips_through_its_pem() {
    let issuer = TestIssuer::new();
    let pem = issuer.private_key_pem().unwrap();
    let again = TestIssuer::from_private_key_pem(&pem, "i", "a").unwrap();
    assert_eq!(again.kid(), issuer.kid());
    assert_eq!(again.jwks(), issuer.jwks());
}
