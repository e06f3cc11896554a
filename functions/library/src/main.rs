//! Lambda `library`: GET /v1/library, PUT and DELETE /v1/library/{item_id}.
//! The handler is the shared API router (audio-dedup-api), restricted to these routes.

use audio_dedup_api::{lambda, RouteSet};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let dedup = lambda::dedup_from_env().await?;
    lambda_http::run(lambda::app(dedup, RouteSet::Library)).await
}
