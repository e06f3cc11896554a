//! The Lambda side of the API: identity from the API Gateway JWT authorizer, and each HTTP
//! function's router over the stores built from its environment (`store::aws::dedup_from_env`).
//! Each HTTP function's main is [`function_from_env`] plus `lambda_http::run`; the client's
//! test gateway (client/tests/support/gateway.rs) calls the same function.

use std::sync::Arc;

pub use audio_dedup_core::store::aws::{dedup_from_env, AwsDedup, EnvError};
use audio_dedup_core::UserId;
use lambda_http::request::RequestContext;

use crate::{router, ApiConfig, Authenticator, Caller, RouteSet, UserBudget};

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

/// What the HTTP function serving `set` runs, built from its environment: the stores
/// (`TABLE_NAME`, `BUCKET_NAME`, `KEY_PREFIX`, limits: [`dedup_from_env`]), each user's
/// request budget in the table (`USER_RATE_PER_SECOND`, `USER_RATE_BURST`; none when unset
/// or 0) and JWT identity. Every set takes from the budget, `stats` too: one read of the
/// figures is a Query of each stats shard's partition, the costliest read a caller can ask for.
pub async fn function_from_env(set: RouteSet) -> Result<axum::Router, EnvError> {
    let dedup = dedup_from_env().await?;
    let request_budget = UserBudget::from_env().await?;
    let cfg = ApiConfig {
        request_budget,
        ..ApiConfig::default()
    };
    Ok(router(dedup, Arc::new(JwtAuthenticator), cfg, set))
}
