//! Lambda `library`: GET /v1/library, PUT and DELETE /v1/library/{item_id}.
//! The handler is the shared API router (audio-dedup-api) restricted to these routes, as
//! `lambda::function_from_env` builds it from the environment (the test gateway builds it
//! the same way).

use audio_dedup_api::{lambda, RouteSet};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    lambda_http::run(lambda::function_from_env(RouteSet::Library).await?).await
}
