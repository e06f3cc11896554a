//! The WebSocket API's REQUEST authorizer. WebSocket APIs take no JWT authorizer, so this
//! checks what the HTTP API's JWT authorizer checks: the bearer token's signature against
//! the issuer's JWKS, its `iss`, `aud` and `exp`, and the caller from `sub`. An accepted
//! caller gets an Allow policy whose `principalId` every route of the connection sees; any
//! other token gets a Deny (403), and API Gateway closes the handshake.

use std::time::{Duration, Instant};

use audio_dedup_core::UserId;
use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use tokio::sync::RwLock;

/// How long a fetched JWKS is used before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(3600);
/// A token naming a key the cached JWKS lacks (the issuer rotated) fetches it again, at
/// most this often: unknown `kid`s cannot make the authorizer hammer the issuer.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(60);

/// Why a token is not accepted. Logged, never told to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no bearer token")]
    NoToken,
    #[error("not a JWT")]
    Malformed,
    #[error("signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("algorithm not allowed for its key")]
    Algorithm,
    #[error("signature does not verify")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("wrong audience")]
    Audience,
    #[error("wrong issuer")]
    Issuer,
    #[error("subject is not a user id")]
    Subject,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// No JWKS could be fetched: the authorizer fails (500) rather than deny everyone.
    #[error("JWKS unavailable: {0}")]
    JwksUnavailable(String),
}

#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is required")]
pub struct MissingEnv(&'static str);

/// The issuer's keys and when they were last fetched (or a refetch last failed).
struct Cached {
    keys: JwkSet,
    fetched: Instant,
}

/// Verifies tokens of one issuer for one audience.
pub struct Verifier {
    issuer: String,
    audiences: Vec<String>,
    jwks_url: String,
    http: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    min_refetch: Duration,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl Verifier {
    /// Tokens of `issuer` for any of `audiences` (comma-separated, as the template's
    /// `JwtAudience` list), with keys from `jwks_url`.
    pub fn new(issuer: impl Into<String>, audiences: &str, jwks_url: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: audiences
                .split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
            jwks_url: jwks_url.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            cache: RwLock::default(),
            min_refetch: JWKS_MIN_REFETCH,
        }
    }

    /// Another interval between fetches for unknown keys (tests rotate keys at once).
    pub fn with_min_refetch(mut self, interval: Duration) -> Self {
        self.min_refetch = interval;
        self
    }

    /// `JWT_ISSUER`, `JWT_AUDIENCE` (comma-separated), and `JWKS_URL` (default: the issuer's
    /// `/.well-known/jwks.json`, where Cognito and most OIDC issuers publish it).
    pub fn from_env() -> Result<Self, MissingEnv> {
        let var = |name: &'static str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or(MissingEnv(name))
        };
        let issuer = var("JWT_ISSUER")?;
        let jwks = var("JWKS_URL")
            .unwrap_or_else(|_| format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')));
        Ok(Self::new(issuer, &var("JWT_AUDIENCE")?, jwks))
    }

    /// The caller a token names, if it is valid now.
    pub async fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let header = decode_header(token).map_err(|_| Rejected::Malformed)?;
        let jwk = self.key(header.kid.as_deref()).await?;
        let alg = allowed_algorithm(&jwk).ok_or(Rejected::Algorithm)?;
        if header.alg != alg {
            return Err(Rejected::Algorithm.into());
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| Rejected::UnknownKey)?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => Rejected::Expired,
            ErrorKind::InvalidAudience => Rejected::Audience,
            ErrorKind::InvalidIssuer => Rejected::Issuer,
            ErrorKind::InvalidSignature => Rejected::Signature,
            ErrorKind::InvalidAlgorithm => Rejected::Algorithm,
            other => Rejected::Invalid(format!("{other:?}")),
        })?;
        Ok(data.claims.sub.parse().map_err(|_| Rejected::Subject)?)
    }

    /// The issuer's key named `kid` (or its only key, for a token without one), from the
    /// cache, or from a fetch when the cache is old or lacks it.
    async fn key(&self, kid: Option<&str>) -> Result<Jwk, AuthError> {
        if let Some(c) = self.cache.read().await.as_ref() {
            let age = c.fetched.elapsed();
            match find(&c.keys, kid) {
                Some(jwk) if age < JWKS_TTL => return Ok(jwk),
                None if age < self.min_refetch => return Err(Rejected::UnknownKey.into()),
                _ => {}
            }
        }
        let mut cache = self.cache.write().await;
        // Another caller may have fetched while this one waited for the lock.
        if cache
            .as_ref()
            .is_none_or(|c| c.fetched.elapsed() >= self.min_refetch)
        {
            match (self.fetch().await, cache.as_mut()) {
                (Ok(keys), _) => {
                    *cache = Some(Cached {
                        keys,
                        fetched: Instant::now(),
                    })
                }
                // An issuer briefly down must not lock everyone out: keep the old keys.
                (Err(e), Some(c)) => {
                    tracing::warn!(error = %e, "JWKS refetch failed; using the cached keys");
                    c.fetched = Instant::now();
                }
                (Err(e), None) => return Err(AuthError::JwksUnavailable(e)),
            }
        }
        cache
            .as_ref()
            .and_then(|c| find(&c.keys, kid))
            .ok_or_else(|| Rejected::UnknownKey.into())
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let resp = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("JWKS answered {}", resp.status()));
        }
        resp.json::<JwkSet>().await.map_err(|e| e.to_string())
    }
}

fn find(set: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => set.find(kid).cloned(),
        None if set.keys.len() == 1 => set.keys.first().cloned(),
        None => None,
    }
}

/// The one algorithm a key may verify: RS256 for RSA keys, ES256 for P-256 keys, what
/// Cognito and most OIDC issuers sign with. A key naming another algorithm is not used;
/// `none` and HMAC are never accepted.
fn allowed_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    let named = jwk.common.key_algorithm.map(|a| a.to_string());
    match named {
        Some(n) if n != format!("{alg:?}") => None,
        _ => Some(alg),
    }
}

/// The bearer token of a `$connect` request (`Authorization: Bearer <jwt>`).
pub fn bearer(req: &ApiGatewayCustomAuthorizerRequestTypeRequest) -> Option<&str> {
    let value = req.headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn policy(
    principal: &str,
    effect: IamPolicyEffect,
    resource: &str,
) -> ApiGatewayCustomAuthorizerResponse {
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".into()];
    statement.effect = effect;
    statement.resource = vec![resource.into()];
    let mut document = ApiGatewayCustomAuthorizerPolicy::default();
    document.version = Some("2012-10-17".into());
    document.statement = vec![statement];
    let mut r = ApiGatewayCustomAuthorizerResponse::default();
    r.principal_id = Some(principal.into());
    r.policy_document = document;
    r.context = serde_json::json!({ "user": principal });
    r
}

/// Allow for a valid token (the caller as `principalId`), Deny for any other. Fails only
/// when no JWKS can be had, so an outage at the issuer is a 500, not a wave of 403s.
pub async fn authorize(
    verifier: &Verifier,
    req: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Result<ApiGatewayCustomAuthorizerResponse, AuthError> {
    let resource = req.method_arn.as_deref().unwrap_or("*");
    let verdict = match bearer(req) {
        Some(token) => verifier.verify(token).await,
        None => Err(Rejected::NoToken.into()),
    };
    match verdict {
        Ok(user) => Ok(policy(user.as_str(), IamPolicyEffect::Allow, resource)),
        Err(AuthError::Rejected(why)) => {
            tracing::info!(reason = %why, "live connection refused");
            Ok(policy("anonymous", IamPolicyEffect::Deny, resource))
        }
        Err(e) => Err(e),
    }
}
