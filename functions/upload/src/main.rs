//! Lambda `upload`: POST /v1/audio, POST /v1/audio/uploads, POST /v1/audio/{hash}/complete, GET /v1/audio/{hash}.
//! The handler is the shared API router (audio-dedup-api), restricted to these routes.

use std::sync::Arc;

use audio_dedup_api::{lambda, router, ApiConfig, RouteSet, UserBudget};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let dedup = lambda::dedup_from_env().await?;
    // Each user's request budget, in the table (USER_RATE_PER_SECOND, USER_RATE_BURST; no
    // limit when unset or 0).
    let cfg = ApiConfig {
        request_budget: UserBudget::from_env().await?,
        ..ApiConfig::default()
    };
    let auth = Arc::new(lambda::JwtAuthenticator);
    lambda_http::run(router(dedup, auth, cfg, RouteSet::Upload)).await
}
