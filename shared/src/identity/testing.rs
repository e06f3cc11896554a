//! Test tooling (feature `jwt-testing`): [`TestIssuer`], an ES256 issuer that mints tokens
//! and publishes its JWKS, and [`attack_table`], the one list of good and bad tokens every
//! JWT-checking path is tested against (the verifier, the WebSocket authorizer, the local
//! server).
//!
//! ```no_run
//! # use std::time::Duration;
//! use audio_dedup_core::identity::testing::TestIssuer;
//! let issuer = TestIssuer::new();
//! std::fs::write("jwks.json", issuer.jwks_json()).unwrap();
//! let token = issuer.token("alice", Duration::from_secs(5)); // an ID token for alice
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};

use super::{JwksSource, Rejected, VerifierConfig};

#[derive(Debug, thiserror::Error)]
pub enum TestIssuerError {
    #[error("not a PKCS#8 P-256 private key")]
    Key,
    #[error("cannot sign: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One ES256 key: its private half, its JWK and its `kid` (the JWK's SHA-256 thumbprint).
struct TestKey {
    signing: p256::ecdsa::SigningKey,
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
}

impl TestKey {
    fn generate() -> Self {
        loop {
            // A random 32-byte string is a valid P-256 scalar but for a 2^-32 chance.
            let bytes: [u8; 32] = rand::random();
            if let Ok(signing) = p256::ecdsa::SigningKey::from_slice(&bytes) {
                if let Ok(key) = Self::from_signing(signing) {
                    return key;
                }
            }
        }
    }

    fn from_signing(signing: p256::ecdsa::SigningKey) -> Result<Self, TestIssuerError> {
        let der = signing.to_pkcs8_der().map_err(|_| TestIssuerError::Key)?;
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        let mut jwk =
            Jwk::from_encoding_key(&encoding, Algorithm::ES256).map_err(TestIssuerError::Sign)?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(TestIssuerError::Sign)?;
        jwk.common.key_id = Some(kid.clone());
        Ok(Self {
            signing,
            encoding,
            jwk,
            kid,
        })
    }
}

/// An issuer for tests and local development: ES256 keys, a JWKS, tokens on demand.
///
/// Point a verifier (or the local server's `--jwks`) at [`jwks_json`](Self::jwks_json)
/// written to a file, with issuer [`issuer`](Self::issuer) and audience
/// [`audience`](Self::audience); then [`token`](Self::token) mints tokens it accepts.
pub struct TestIssuer {
    issuer: String,
    audience: String,
    /// Published keys, oldest first; the last one signs.
    keys: Vec<TestKey>,
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// The `iss` of [`TestIssuer::new`]'s tokens.
    pub const ISSUER: &'static str = "https://issuer.audio-dedup.test";
    /// The `aud` (and access tokens' `client_id`) of [`TestIssuer::new`]'s tokens.
    pub const AUDIENCE: &'static str = "audio-dedup-test";

    /// A fresh key, issuer [`Self::ISSUER`], audience [`Self::AUDIENCE`].
    pub fn new() -> Self {
        Self::with_names(Self::ISSUER, Self::AUDIENCE)
    }

    /// A fresh key for another issuer and audience.
    pub fn with_names(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            keys: vec![TestKey::generate()],
        }
    }

    /// The issuer whose key is `pem` (PKCS#8, as [`private_key_pem`](Self::private_key_pem)
    /// writes it).
    pub fn from_private_key_pem(
        pem: &str,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, TestIssuerError> {
        let signing =
            p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(|_| TestIssuerError::Key)?;
        Ok(Self {
            issuer: issuer.into(),
            audience: audience.into(),
            keys: vec![TestKey::from_signing(signing)?],
        })
    }

    /// The signing key, PKCS#8 PEM: what `dev-issuer init` keeps.
    pub fn private_key_pem(&self) -> Result<String, TestIssuerError> {
        self.current()
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|_| TestIssuerError::Key)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The `kid` new tokens carry.
    pub fn kid(&self) -> &str {
        &self.current().kid
    }

    /// Every published key.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.jwk.clone()).collect(),
        }
    }

    /// [`jwks`](Self::jwks) as JSON, as an issuer serves it.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string_pretty(&self.jwks()).unwrap_or_default()
    }

    /// Writes the JWKS to `path`, replacing it atomically (a reader never sees half a file).
    pub fn write_jwks(&self, path: &Path) -> Result<(), TestIssuerError> {
        let write = |p: &Path, r: std::io::Result<()>| {
            r.map_err(|source| TestIssuerError::Write {
                path: p.to_owned(),
                source,
            })
        };
        let tmp = path.with_extension("json.tmp");
        write(&tmp, std::fs::write(&tmp, self.jwks_json()))?;
        write(path, std::fs::rename(&tmp, path))
    }

    /// What a verifier of this issuer's tokens is configured with (no clock leeway, and
    /// unknown keys fetched again at once, as tests rotate keys at once).
    pub fn verifier_config(&self, jwks: JwksSource) -> VerifierConfig {
        let mut cfg = VerifierConfig::new(&self.issuer, [&self.audience], jwks);
        cfg.leeway = Duration::ZERO;
        cfg.min_refetch = Duration::ZERO;
        cfg
    }

    /// A new key signs from now on, under a new `kid`; the old keys stay published (as
    /// issuers do while their tokens live). Returns the new `kid`.
    pub fn rotate(&mut self) -> &str {
        self.keys.push(TestKey::generate());
        self.kid()
    }

    /// Unpublishes every key but the current one.
    pub fn retire_old_keys(&mut self) {
        let keep = self.keys.len().saturating_sub(1);
        self.keys.drain(..keep);
    }

    /// An ID token's claims: `iss`, `aud`, `sub`, `iat`, `exp` = now + `ttl`.
    pub fn claims(&self, sub: &str, ttl: Duration) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + ttl.as_secs(),
            "token_use": "id",
        })
    }

    /// A Cognito access token's claims: `client_id` and no `aud`.
    pub fn access_claims(&self, sub: &str, ttl: Duration) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "client_id": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + ttl.as_secs(),
            "token_use": "access",
            "scope": "openid",
        })
    }

    /// An ID token for `sub`, valid for `ttl`. Panics only if signing fails, which an
    /// ES256 key over JSON claims does not.
    pub fn token(&self, sub: &str, ttl: Duration) -> String {
        self.sign(&self.claims(sub, ttl))
    }

    /// A Cognito-style access token for `sub` (`client_id`, no `aud`), valid for `ttl`.
    pub fn access_token(&self, sub: &str, ttl: Duration) -> String {
        self.sign(&self.access_claims(sub, ttl))
    }

    /// `claims` signed with the current key, header `{"alg": "ES256", "kid": …}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&self.header(), claims)
    }

    /// `claims` under any header, signed with the current key. Panics if signing fails (a
    /// header naming a non-EC algorithm does): use [`try_sign_with_header`](Self::try_sign_with_header).
    #[allow(clippy::expect_used)]
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        self.try_sign_with_header(header, claims)
            .expect("a test token signs")
    }

    pub fn try_sign_with_header(
        &self,
        header: &Header,
        claims: &Value,
    ) -> Result<String, TestIssuerError> {
        encode(header, claims, &self.current().encoding).map_err(TestIssuerError::Sign)
    }

    /// The header [`sign`](Self::sign) uses: ES256 and the current `kid`.
    pub fn header(&self) -> Header {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid().to_owned());
        h
    }

    /// The current public key, SPKI PEM: what an HMAC-confusion attack uses as its secret.
    pub fn public_key_pem(&self) -> String {
        self.current()
            .signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    fn current(&self) -> &TestKey {
        // `keys` is never empty: built with one, `retire_old_keys` keeps the last.
        &self.keys[self.keys.len() - 1]
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a verifier configured by [`TestIssuer::verifier_config`] must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Accepted, as this user id.
    Accepted(String),
    Refused(Rejected),
}

/// One token and its verdict.
#[derive(Debug, Clone)]
pub struct AttackCase {
    pub name: &'static str,
    pub token: String,
    pub expected: Expected,
}

/// The shared table: tokens every JWT-checking path must accept or refuse, minted by
/// `issuer` (whose JWKS the path under test trusts). Refused tokens name user `bob`,
/// who is never accepted here, so a test can check that they changed nothing of bob's.
pub fn attack_table(issuer: &TestIssuer) -> Vec<AttackCase> {
    let ttl = Duration::from_secs(600);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = issuer.claims("bob", ttl);
        edit(&mut c);
        issuer.sign(&c)
    };
    let refused = |name, token, why| AttackCase {
        name,
        token,
        expected: Expected::Refused(why),
    };
    let accepted = |name, token, user: &str| AttackCase {
        name,
        token,
        expected: Expected::Accepted(user.to_owned()),
    };

    let valid_bob = issuer.token("bob", ttl);
    let parts: Vec<&str> = valid_bob.split('.').collect();
    let (head, sig) = (parts.first().copied(), parts.get(2).copied());
    let forged_body = b64.encode(issuer.claims("alice", ttl).to_string());
    let tampered = format!(
        "{}.{forged_body}.{}",
        head.unwrap_or_default(),
        sig.unwrap_or_default()
    );
    let none_header =
        b64.encode(json!({"alg": "none", "typ": "JWT", "kid": issuer.kid()}).to_string());
    let none_body = b64.encode(issuer.claims("bob", ttl).to_string());
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(issuer.kid().to_owned());
    let hmac = EncodingKey::from_secret(issuer.public_key_pem().as_bytes())
        .ok()
        .and_then(|key| encode(&hs, &issuer.claims("bob", ttl), &key).ok())
        .unwrap_or_default();
    // Another key: once under the issuer's kid (a forgery), once under its own (unknown).
    let stranger = TestIssuer::with_names(issuer.issuer(), issuer.audience());
    let mut impostor_header = stranger.header();
    impostor_header.kid = Some(issuer.kid().to_owned());
    let impostor = stranger.sign_with_header(&impostor_header, &issuer.claims("bob", ttl));
    let unknown_kid = stranger.sign(&issuer.claims("bob", ttl));

    vec![
        accepted("ID token with aud", issuer.token("alice", ttl), "alice"),
        accepted(
            "Cognito access token: client_id, no aud",
            issuer.access_token("0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d", ttl),
            "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
        ),
        accepted(
            "Auth0-style subject",
            issuer.token("auth0|123", ttl),
            "auth0_7C123",
        ),
        accepted(
            "Apple-style subject",
            issuer.token("000123.abc.0456", ttl),
            "000123_2Eabc_2E0456",
        ),
        refused(
            "expired",
            with(&|c| c["exp"] = json!(now() - 3600)),
            Rejected::Expired,
        ),
        refused(
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 3600)),
            Rejected::NotYetValid,
        ),
        refused(
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
            Rejected::Issuer,
        ),
        refused(
            "wrong audience",
            with(&|c| c["aud"] = json!("another-app")),
            Rejected::Audience,
        ),
        refused(
            "access token for another client",
            {
                let mut c = issuer.access_claims("bob", ttl);
                c["client_id"] = json!("another-app");
                issuer.sign(&c)
            },
            Rejected::Audience,
        ),
        refused(
            "neither aud nor client_id",
            with(&|c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("aud");
                }
            }),
            Rejected::Audience,
        ),
        refused(
            "alg none",
            format!("{none_header}.{none_body}."),
            Rejected::Malformed,
        ),
        refused("HS256 keyed with the public key", hmac, Rejected::Algorithm),
        refused(
            "tampered payload, original signature",
            tampered,
            Rejected::Signature,
        ),
        refused(
            "another key under the issuer's kid",
            impostor,
            Rejected::Signature,
        ),
        refused("unknown kid", unknown_kid, Rejected::UnknownKey),
        refused(
            "missing sub",
            with(&|c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("sub");
                }
            }),
            Rejected::MissingSubject,
        ),
        refused(
            "subject over the user id limit",
            issuer.token(&"b".repeat(129), ttl),
            Rejected::Subject,
        ),
        refused(
            "missing exp",
            with(&|c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("exp");
                }
            }),
            Rejected::MissingClaim,
        ),
        refused("not a JWT", "not.a.jwt".to_owned(), Rejected::Malformed),
    ]
}
