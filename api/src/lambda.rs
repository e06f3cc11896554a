//! The Lambda side of the API: identity from the API Gateway JWT authorizer, and the stores
//! built from the function's environment. Each function's main is these two calls plus
//! `lambda_http::run`.

use std::sync::Arc;
use std::time::Duration;

use audio_dedup_core::store::aws::{clients_from_env, DynamoIndex, S3Blobs};
use audio_dedup_core::{Dedup, DedupConfig};
use lambda_http::request::RequestContext;

use crate::{router, ApiConfig, Authenticator, Caller, RouteSet};

pub type AwsDedup = Dedup<S3Blobs, DynamoIndex>;

/// The caller is the JWT authorizer's `sub` claim, and nothing else. No claim: 401.
#[derive(Debug, Default, Clone, Copy)]
pub struct JwtAuthenticator;

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, parts: &http::request::Parts) -> Option<Caller> {
        let RequestContext::ApiGatewayV2(ctx) = parts.extensions.get::<RequestContext>()? else {
            return None;
        };
        let sub = ctx.authorizer.as_ref()?.jwt.as_ref()?.claims.get("sub")?;
        Some(Caller {
            user: sub.parse().ok()?,
            admin: false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {0} is not a number of seconds")]
    NotSeconds(&'static str),
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

/// `TABLE_NAME`, `BUCKET_NAME`, `KEY_PREFIX` (default `audio-dedup/`), `DELETION_GRACE_SECONDS`
/// (default 0), `S3_FORCE_PATH_STYLE` (moto), plus the SDK's own (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`, credentials).
pub async fn dedup_from_env() -> Result<Arc<AwsDedup>, EnvError> {
    let table = var("TABLE_NAME")?;
    let bucket = var("BUCKET_NAME")?;
    let prefix = std::env::var("KEY_PREFIX").unwrap_or_else(|_| "audio-dedup/".into());
    let path_style = std::env::var("S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let cfg = DedupConfig {
        key_prefix: prefix.clone(),
        deletion_grace: seconds("DELETION_GRACE_SECONDS", 0)?,
        ..DedupConfig::default()
    };
    let (ddb, s3) = clients_from_env(path_style).await;
    // The sweep lists everything under the prefix: audio and snapshot objects.
    let blobs = S3Blobs::new(s3, bucket, prefix);
    Ok(Arc::new(Dedup::new(
        blobs,
        DynamoIndex::new(ddb, table),
        cfg,
    )))
}

/// The router a Lambda function serves: one share of the API, JWT identity, bodies in memory
/// (API Gateway has already buffered them).
pub fn app(dedup: Arc<AwsDedup>, set: RouteSet) -> axum::Router {
    router(dedup, Arc::new(JwtAuthenticator), ApiConfig::default(), set)
}
