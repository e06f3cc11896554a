//! Lambda `live-connections`: the WebSocket API's `$connect`, `$disconnect` and `ping` (handler in
//! lib.rs).

use audio_dedup_core::ports::{Clock, SystemClock};
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let registry = audio_dedup_core::store::aws::connections_from_env().await?;
    let handler = |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
        let registry = registry.clone();
        async move {
            let now = u64::try_from(SystemClock.now_ms() / 1000).unwrap_or(0);
            Ok::<_, lambda_runtime::Error>(
                live_connections::handle(&registry, now, e.payload).await,
            )
        }
    };
    lambda_runtime::run(service_fn(handler)).await
}
