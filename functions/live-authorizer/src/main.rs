//! Lambda `live-authorizer`: the WebSocket API's `$connect` authorizer (handler in lib.rs).

use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // Built once: the JWKS it fetches is cached across invocations.
    let verifier = live_authorizer::Verifier::from_env()?;
    let verifier = &verifier;
    let handler = |e: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| async move {
        live_authorizer::authorize(verifier, &e.payload)
            .await
            .map_err(lambda_runtime::Error::from)
    };
    lambda_runtime::run(service_fn(handler)).await
}
