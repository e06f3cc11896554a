//! The Lambda side of the API: identity from the API Gateway JWT authorizer, and the router
//! over the stores built from the function's environment (`store::aws::dedup_from_env`).
//! Each HTTP function's main is these two calls plus `lambda_http::run`.

use std::sync::Arc;

pub use audio_dedup_core::store::aws::{dedup_from_env, AwsDedup, EnvError};
use audio_dedup_core::UserId;
use lambda_http::request::RequestContext;

use crate::{router, ApiConfig, Authenticator, Caller, RouteSet};

/// The caller is the JWT authorizer's `sub` claim, and nothing else, mapped to a user id by
/// `UserId::from_subject` (the rule every path shares: `auth0|123` is `auth0_7C123`). No
/// claim, or one too long for a user id: 401.
#[derive(Debug, Default, Clone, Copy)]
pub struct JwtAuthenticator;

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, parts: &http::request::Parts) -> Option<Caller> {
        let RequestContext::ApiGatewayV2(ctx) = parts.extensions.get::<RequestContext>()? else {
            return None;
        };
        let sub = ctx.authorizer.as_ref()?.jwt.as_ref()?.claims.get("sub")?;
        Some(Caller {
            user: UserId::from_subject(sub).ok()?,
            admin: false,
        })
    }
}

/// The router a Lambda function serves: one share of the API, JWT identity, bodies in memory
/// (API Gateway has already buffered them).
pub fn app(dedup: Arc<AwsDedup>, set: RouteSet) -> axum::Router {
    router(dedup, Arc::new(JwtAuthenticator), ApiConfig::default(), set)
}
