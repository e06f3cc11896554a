//! The WebSocket API's REQUEST authorizer. WebSocket APIs take no JWT authorizer, so this
//! checks what the HTTP API's JWT authorizer checks: the bearer token's signature against
//! the issuer's JWKS, its `iss`, audience and `exp`, and the caller from `sub` (through
//! `UserId::from_subject`, as the HTTP functions map it). The checks are the core's
//! (`audio_dedup_core::identity`), shared with the local server. An accepted
//! caller gets an Allow policy whose `principalId` every route of the connection sees; any
//! other token gets a Deny (403), and API Gateway closes the handshake.

use std::time::Duration;

use audio_dedup_core::identity::{self, JwksSource, VerifierConfig};
pub use audio_dedup_core::identity::{AuthError, JwksError, Rejected, JWKS_MIN_REFETCH, JWKS_TTL};
use audio_dedup_core::UserId;
use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};

#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is required")]
pub struct MissingEnv(&'static str);

/// The core's verifier (`audio_dedup_core::identity`), built from the function's settings.
pub struct Verifier(identity::Verifier);

impl Verifier {
    /// Tokens of `issuer` for any of `audiences` (comma-separated, as the template's
    /// `JwtAudience` list), with keys from `jwks` (a URL, or a file path).
    pub fn new(issuer: impl Into<String>, audiences: &str, jwks: &str) -> Self {
        Self::with_config(VerifierConfig::new(
            issuer,
            audiences
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty()),
            JwksSource::parse(jwks),
        ))
    }

    pub fn with_config(cfg: VerifierConfig) -> Self {
        Self(identity::Verifier::new(cfg))
    }

    /// Another interval between fetches for unknown keys (tests rotate keys at once).
    pub fn with_min_refetch(self, interval: Duration) -> Self {
        let mut cfg = self.0.config().clone();
        cfg.min_refetch = interval;
        Self::with_config(cfg)
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
        Ok(Self::new(issuer, &var("JWT_AUDIENCE")?, &jwks))
    }

    /// The caller a token names, if it is valid now.
    pub async fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.0.verify(token).await.map(|v| v.user)
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
