//! Lambda `reconciler`: one reconciler pass per scheduled event (handler in lib.rs).

use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let dedup = audio_dedup_core::store::aws::dedup_from_env().await?;
    let handler = |e: LambdaEvent<serde_json::Value>| {
        let dedup = dedup.clone();
        async move {
            reconciler::handle(&dedup, e.payload)
                .await
                .map_err(lambda_runtime::Error::from)
        }
    };
    lambda_runtime::run(service_fn(handler)).await
}
