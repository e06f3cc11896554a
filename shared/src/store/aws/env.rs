//! The services over DynamoDB and S3, built from a Lambda function's environment.

use std::sync::Arc;
use std::time::Duration;

use super::{
    clients, sdk_config, DynamoConnections, DynamoIndex, DynamoRequestBudget, ManagementApi,
    S3Blobs,
};
use crate::ports::RequestRate;
use crate::protocol::{Limits, ReconcileBudget};
use crate::{Dedup, DedupConfig};

pub type AwsDedup = Dedup<S3Blobs, DynamoIndex>;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {0} is not a number of seconds")]
    NotSeconds(&'static str),
    #[error("environment variable {0} is not a number")]
    NotNumber(&'static str),
}

fn var(name: &'static str) -> Result<String, EnvError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(EnvError::Missing(name))
}

fn seconds(name: &'static str, default: u64) -> Result<Duration, EnvError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| EnvError::NotSeconds(name)),
        _ => Ok(Duration::from_secs(default)),
    }
}

/// `MAX_OPEN_SESSIONS`, `MAX_UPLOAD_BYTES_PER_DAY`, `PROOF_FAILURES` and
/// `PROOF_LOCKOUT_SECONDS`, each defaulting to [`Limits::default`].
fn limits_from_env() -> Result<Limits, EnvError> {
    let d = Limits::default();
    Ok(Limits {
        open_sessions: number("MAX_OPEN_SESSIONS", d.open_sessions)?,
        upload_bytes_per_day: number("MAX_UPLOAD_BYTES_PER_DAY", d.upload_bytes_per_day)?,
        proof_failures: number("PROOF_FAILURES", d.proof_failures)?,
        proof_lockout: seconds("PROOF_LOCKOUT_SECONDS", d.proof_lockout.as_secs())?,
    })
}

/// `RECONCILE_WORK_ITEMS`, `RECONCILE_SWEEP_PAGES` and `RECONCILE_BUDGET_SECONDS`, each
/// defaulting to [`ReconcileBudget::default`].
fn reconcile_budget_from_env() -> Result<ReconcileBudget, EnvError> {
    let d = ReconcileBudget::default();
    Ok(ReconcileBudget {
        work_items: number("RECONCILE_WORK_ITEMS", d.work_items)?,
        sweep_pages: number("RECONCILE_SWEEP_PAGES", d.sweep_pages)?,
        time: seconds("RECONCILE_BUDGET_SECONDS", d.time.as_secs())?,
        ..d
    })
}

fn number<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, EnvError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.trim().parse().map_err(|_| EnvError::NotNumber(name)),
        _ => Ok(default),
    }
}

/// `TABLE_NAME`, `BUCKET_NAME`, `KEY_PREFIX` (default `audio-dedup/`), `DELETION_GRACE_SECONDS`
/// (default 0), `S3_FORCE_PATH_STYLE` (moto), plus the SDK's own (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`, credentials).
pub async fn dedup_from_env() -> Result<Arc<AwsDedup>, EnvError> {
    dedup_with(&sdk_config().await)
}

/// [`dedup_from_env`] over an SDK configuration already loaded.
fn dedup_with(sdk: &aws_config::SdkConfig) -> Result<Arc<AwsDedup>, EnvError> {
    let table = var("TABLE_NAME")?;
    let bucket = var("BUCKET_NAME")?;
    let prefix = std::env::var("KEY_PREFIX").unwrap_or_else(|_| "audio-dedup/".into());
    let path_style = std::env::var("S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let cfg = DedupConfig {
        key_prefix: prefix.clone(),
        deletion_grace: seconds("DELETION_GRACE_SECONDS", 0)?,
        limits: limits_from_env()?,
        reconcile: reconcile_budget_from_env()?,
        ..DedupConfig::default()
    };
    let (ddb, s3) = clients(sdk, path_style);
    // The sweep lists everything under the prefix: audio and snapshot objects.
    let blobs =
        S3Blobs::new(s3, bucket, prefix).with_signing_credentials(sdk.credentials_provider());
    Ok(Arc::new(Dedup::new(
        blobs,
        DynamoIndex::new(ddb, table),
        cfg,
    )))
}

/// `USER_RATE_PER_SECOND` and `USER_RATE_BURST`: each user's request budget, kept in the
/// table `TABLE_NAME`. `None` (no per-user limit) when either is unset or 0.
pub async fn request_budget_from_env() -> Result<Option<DynamoRequestBudget>, EnvError> {
    let Some(rate) = RequestRate::new(
        number("USER_RATE_PER_SECOND", 0)?,
        number("USER_RATE_BURST", 0)?,
    ) else {
        return Ok(None);
    };
    let table = var("TABLE_NAME")?;
    Ok(Some(DynamoRequestBudget::new(
        aws_sdk_dynamodb::Client::new(&sdk_config().await),
        table,
        rate,
    )))
}

/// The stores the live-update stream function works with.
pub struct AwsLive {
    pub dedup: Arc<AwsDedup>,
    pub connections: DynamoConnections,
    pub poster: ManagementApi,
}

/// `TABLE_NAME`: the table holding each user's open connections.
pub async fn connections_from_env() -> Result<DynamoConnections, EnvError> {
    let table = var("TABLE_NAME")?;
    Ok(DynamoConnections::new(
        aws_sdk_dynamodb::Client::new(&sdk_config().await),
        table,
    ))
}

/// What [`dedup_from_env`] reads, plus `LIVE_ENDPOINT`: the WebSocket API's management
/// endpoint, `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`.
pub async fn live_from_env() -> Result<AwsLive, EnvError> {
    let endpoint = var("LIVE_ENDPOINT")?;
    let cfg = sdk_config().await;
    let dedup = dedup_with(&cfg)?;
    let management = aws_sdk_apigatewaymanagement::config::Builder::from(&cfg)
        .endpoint_url(endpoint)
        .build();
    Ok(AwsLive {
        dedup,
        connections: DynamoConnections::new(
            aws_sdk_dynamodb::Client::new(&cfg),
            var("TABLE_NAME")?,
        ),
        poster: ManagementApi::new(aws_sdk_apigatewaymanagement::Client::from_conf(management)),
    })
}
