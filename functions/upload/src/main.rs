//! Lambda `upload`: POST /v1/audio, POST /v1/audio/uploads, POST /v1/audio/{hash}/complete, GET /v1/audio/{hash}.
//! The handler is the shared API router (audio-dedup-api), restricted to these routes.

use audio_dedup_api::{lambda, RouteSet};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let dedup = lambda::dedup_from_env().await?;
    lambda_http::run(lambda::app(dedup, RouteSet::Upload)).await
}
