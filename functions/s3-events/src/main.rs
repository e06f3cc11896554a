//! Lambda `s3-events`: S3 notifications to the protocol (handler in lib.rs).

use aws_lambda_events::s3::S3Event;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let dedup = audio_dedup_core::store::aws::dedup_from_env().await?;
    let handler = |e: LambdaEvent<S3Event>| {
        let dedup = dedup.clone();
        async move {
            s3_events::handle(&dedup, e.payload)
                .await
                .map_err(lambda_runtime::Error::from)
        }
    };
    lambda_runtime::run(service_fn(handler)).await
}
