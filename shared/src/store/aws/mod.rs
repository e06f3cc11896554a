//! The AWS adapters: DynamoDB for the index, S3 (versioned, private) for blobs.

mod dynamo;
mod env;
mod live;
mod request_budget;
mod s3;

pub use dynamo::{ConflictRetry, DynamoIndex, WORK_INDEX};
pub use env::{
    connections_from_env, dedup_from_env, live_from_env, request_budget_from_env, AwsDedup,
    AwsLive, EnvError,
};
pub use live::{DynamoConnections, ManagementApi, EXPIRES_AT};
pub use request_budget::{bucket_key, DynamoRequestBudget};
pub use s3::S3Blobs;

/// The SDK's configuration from the environment (region, credentials, `AWS_ENDPOINT_URL` for
/// moto), with an HTTPS client on ring.
pub async fn sdk_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .load()
        .await
}

/// DynamoDB and S3 clients from the environment.
pub async fn clients_from_env(
    force_path_style: bool,
) -> (aws_sdk_dynamodb::Client, aws_sdk_s3::Client) {
    clients(&sdk_config().await, force_path_style)
}

/// DynamoDB and S3 clients over one SDK configuration.
pub fn clients(
    cfg: &aws_config::SdkConfig,
    force_path_style: bool,
) -> (aws_sdk_dynamodb::Client, aws_sdk_s3::Client) {
    let s3_cfg = aws_sdk_s3::config::Builder::from(cfg)
        .force_path_style(force_path_style)
        // aws-sdk-rust#1253: default checksums broke presigned URLs; compute only when required.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    (
        aws_sdk_dynamodb::Client::new(cfg),
        aws_sdk_s3::Client::from_conf(s3_cfg),
    )
}
