//! The AWS adapters: DynamoDB for the index, S3 (versioned, private) for blobs.

mod dynamo;
mod env;
mod s3;

pub use dynamo::{DynamoIndex, WORK_INDEX};
pub use env::{dedup_from_env, AwsDedup, EnvError};
pub use s3::S3Blobs;

/// Clients from the environment (region, credentials, `AWS_ENDPOINT_URL` for moto).
pub async fn clients_from_env(
    force_path_style: bool,
) -> (aws_sdk_dynamodb::Client, aws_sdk_s3::Client) {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let cfg = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .load()
        .await;
    let s3_cfg = aws_sdk_s3::config::Builder::from(&cfg)
        .force_path_style(force_path_style)
        // aws-sdk-rust#1253: default checksums broke presigned URLs; compute only when required.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    (
        aws_sdk_dynamodb::Client::new(&cfg),
        aws_sdk_s3::Client::from_conf(s3_cfg),
    )
}
