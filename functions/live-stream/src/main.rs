//! Lambda `live-stream`: DynamoDB Streams to pokes (handler in lib.rs).

use aws_lambda_events::dynamodb::Event;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let live = audio_dedup_core::store::aws::live_from_env().await?;
    let live = &live;
    let handler = |e: LambdaEvent<Event>| async move {
        live_stream::handle(
            live.dedup.chat(),
            &live.connections,
            &live.poster,
            &e.payload,
        )
        .await
        .map_err(lambda_runtime::Error::from)
    };
    lambda_runtime::run(service_fn(handler)).await
}
