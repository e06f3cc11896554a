//! The authorizer against a JWKS served on loopback, with keys generated here: valid,
//! expired, wrong-audience, wrong-issuer, tampered, foreign-key, unknown-key, `none` and
//! HMAC tokens; the JWKS cached across calls and fetched again only as allowed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audio_dedup_core::identity::testing::{attack_table, Expected, TestIssuer};
use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use aws_lambda_events::iam::IamPolicyEffect;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use live_authorizer::{authorize, AuthError, Rejected, Verifier};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "audio-dedup";
/// What the verifier is given: the template passes its `JwtAudience` list joined by commas.
const AUDIENCES: &str = "web-client, audio-dedup";

struct Key {
    kid: String,
    signing: EncodingKey,
    jwk: Jwk,
}

fn new_key(kid: &str) -> Key {
    let signing = loop {
        let bytes: [u8; 32] = rand::random();
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&bytes) {
            break k;
        }
    };
    let der = signing.to_pkcs8_der().expect("pkcs8");
    let signing = EncodingKey::from_ec_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    Key {
        kid: kid.into(),
        signing,
        jwk,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "iat": now()})
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    encode(&header, claims, &key.signing).expect("sign")
}

/// A JWKS endpoint on loopback whose keys a test can change; counts its fetches.
struct Jwks {
    url: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(keys: Vec<Jwk>) -> Jwks {
    let keys = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (k, f) = (keys.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let (k, f) = (k.clone(), f.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let set = JwkSet {
                    keys: k.lock().expect("keys").clone(),
                };
                axum::Json(set)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Jwks {
        url: format!("http://{addr}/.well-known/jwks.json"),
        keys,
        fetches,
    }
}

fn request(authorization: Option<&str>) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let path = format!(
        "{}/../fixtures/ws-authorizer.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut req: ApiGatewayCustomAuthorizerRequestTypeRequest =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("event");
    req.headers.remove("authorization");
    if let Some(value) = authorization {
        req.headers
            .insert("authorization", value.parse().expect("header"));
    }
    req
}

async fn verdict(v: &Verifier, token: &str) -> Result<String, AuthError> {
    v.verify(token).await.map(|u| u.to_string())
}

fn rejected(r: Result<String, AuthError>) -> Rejected {
    match r {
        Err(AuthError::Rejected(why)) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_token_is_allowed_as_its_subject_on_the_connect_route() {
    let key = new_key("k1");
    let jwks = serve_jwks(vec![key.jwk.clone()]).await;
    let v = Verifier::new(ISSUER, AUDIENCES, &jwks.url);
    let token = sign(&key, &claims("bob"));
    let r = authorize(&v, &request(Some(&format!("Bearer {token}"))))
        .await
        .expect("answer");
    assert_eq!(r.principal_id.as_deref(), Some("bob"));
    assert_eq!(r.context, json!({"user": "bob"}));
    let st = &r.policy_document.statement[0];
    assert_eq!(st.effect, IamPolicyEffect::Allow);
    assert_eq!(st.action, vec!["execute-api:Invoke".to_string()]);
    assert_eq!(
        st.resource,
        vec!["arn:aws:execute-api:us-east-1:123456789012:abc123def4/live/$connect".to_string()]
    );
    // The scheme is case-insensitive, as in RFC 9110.
    let r = authorize(&v, &request(Some(&format!("bearer {token}"))))
        .await
        .expect("answer");
    assert_eq!(
        r.policy_document.statement[0].effect,
        IamPolicyEffect::Allow
    );
}

#[tokio::test]
async fn bad_tokens_are_denied_each_for_its_reason() {
    let key = new_key("k1");
    let jwks = serve_jwks(vec![key.jwk.clone()]).await;
    let v = Verifier::new(ISSUER, AUDIENCES, &jwks.url);

    let mut expired = claims("bob");
    expired["exp"] = json!(now() - 3600);
    assert_eq!(
        rejected(verdict(&v, &sign(&key, &expired)).await),
        Rejected::Expired
    );

    let mut aud = claims("bob");
    aud["aud"] = json!("another-app");
    assert_eq!(
        rejected(verdict(&v, &sign(&key, &aud)).await),
        Rejected::Audience
    );

    let mut iss = claims("bob");
    iss["iss"] = json!("https://evil.example");
    assert_eq!(
        rejected(verdict(&v, &sign(&key, &iss)).await),
        Rejected::Issuer
    );

    // Tampered: bob's signature over a payload that now says alice.
    let token = sign(&key, &claims("bob"));
    let parts: Vec<&str> = token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = b64.encode(serde_json::to_vec(&claims("alice")).expect("json"));
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    assert_eq!(rejected(verdict(&v, &tampered).await), Rejected::Signature);

    // Signed by a key that is not the issuer's, under the issuer's kid.
    let impostor = new_key("k1");
    assert_eq!(
        rejected(verdict(&v, &sign(&impostor, &claims("bob"))).await),
        Rejected::Signature
    );

    // `none`, and HMAC keyed with anything: never accepted for an EC key.
    let header = b64.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let body = b64.encode(serde_json::to_vec(&claims("bob")).expect("json"));
    assert_eq!(
        rejected(verdict(&v, &format!("{header}.{body}.")).await),
        Rejected::Malformed
    );
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let secret = EncodingKey::from_secret(b"public").expect("key");
    let hmac = encode(&hs, &claims("bob"), &secret).expect("sign");
    assert_eq!(rejected(verdict(&v, &hmac).await), Rejected::Algorithm);

    // A subject whose user id would be over the limit (any other subject maps to one).
    assert_eq!(
        rejected(verdict(&v, &sign(&key, &claims(&"b".repeat(129)))).await),
        Rejected::Subject
    );
    assert_eq!(
        rejected(verdict(&v, "not.a.jwt").await),
        Rejected::Malformed
    );

    // Each is a Deny on the wire, as is no token or another scheme.
    for auth in [
        Some(format!("Bearer {}", sign(&key, &expired))),
        Some(format!("Bearer {tampered}")),
        Some(format!("Basic {}", sign(&key, &claims("bob")))),
        Some("Bearer ".to_string()),
        None,
    ] {
        let r = authorize(&v, &request(auth.as_deref()))
            .await
            .expect("answer");
        assert_eq!(
            r.policy_document.statement[0].effect,
            IamPolicyEffect::Deny,
            "{auth:?}"
        );
        assert_eq!(r.principal_id.as_deref(), Some("anonymous"));
    }
}

#[tokio::test]
async fn the_jwks_is_fetched_once_and_unknown_keys_cannot_make_it_fetch_again_and_again() {
    let key = new_key("k1");
    let jwks = serve_jwks(vec![key.jwk.clone()]).await;
    let v = Verifier::new(ISSUER, AUDIENCES, &jwks.url);
    for _ in 0..10 {
        assert_eq!(
            verdict(&v, &sign(&key, &claims("bob"))).await.expect("ok"),
            "bob"
        );
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    let stranger = new_key("k-unknown");
    for _ in 0..10 {
        assert_eq!(
            rejected(verdict(&v, &sign(&stranger, &claims("bob"))).await),
            Rejected::UnknownKey
        );
    }
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        1,
        "unknown kids within a minute of a fetch do not fetch"
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_first_seen() {
    let old = new_key("k1");
    let jwks = serve_jwks(vec![old.jwk.clone()]).await;
    let v = Verifier::new(ISSUER, AUDIENCES, &jwks.url).with_min_refetch(Duration::ZERO);
    assert!(verdict(&v, &sign(&old, &claims("bob"))).await.is_ok());
    let new = new_key("k2");
    jwks.keys.lock().expect("keys").push(new.jwk.clone());
    assert_eq!(
        verdict(&v, &sign(&new, &claims("alice")))
            .await
            .expect("ok"),
        "alice"
    );
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
}

/// No JWKS at all is the authorizer's failure (API Gateway answers 500 and the client
/// retries), not a Deny that would read as "your token is bad".
#[tokio::test]
async fn an_unreachable_issuer_fails_the_authorizer_instead_of_denying() {
    let key = new_key("k1");
    let v = Verifier::new(
        ISSUER,
        AUDIENCES,
        "http://127.0.0.1:9/.well-known/jwks.json",
    );
    let token = sign(&key, &claims("bob"));
    let r = authorize(&v, &request(Some(&format!("Bearer {token}")))).await;
    assert!(matches!(r, Err(AuthError::JwksUnavailable(_))), "{r:?}");
}

/// The shared attack table (`audio_dedup_core::identity::testing`): each accepted token is
/// an Allow for its mapped user id, each refused one a Deny for `anonymous`.
#[tokio::test]
async fn the_shared_attack_table_gets_allow_or_deny() {
    let issuer = TestIssuer::new();
    let jwks = serve_jwks(issuer.jwks().keys).await;
    let v = Verifier::new(issuer.issuer(), issuer.audience(), &jwks.url);
    for case in attack_table(&issuer) {
        let r = authorize(&v, &request(Some(&format!("Bearer {}", case.token))))
            .await
            .expect("answer");
        let effect = &r.policy_document.statement[0].effect;
        match &case.expected {
            Expected::Accepted(user) => {
                assert_eq!(*effect, IamPolicyEffect::Allow, "{}", case.name);
                assert_eq!(
                    r.principal_id.as_deref(),
                    Some(user.as_str()),
                    "{}",
                    case.name
                );
            }
            Expected::Refused(_) => {
                assert_eq!(*effect, IamPolicyEffect::Deny, "{}", case.name);
                assert_eq!(
                    r.principal_id.as_deref(),
                    Some("anonymous"),
                    "{}",
                    case.name
                );
            }
        }
    }
}
