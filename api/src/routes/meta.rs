//! Health, the OpenAPI document, stats, the on-demand reconciler, and the JSON answers for
//! unknown routes and wrong methods.

use audio_dedup_core::ErrorCode;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use audio_dedup_core::ports::{BlobStore, TransactionalIndex};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

pub async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

pub async fn openapi() -> Result<Response, ApiError> {
    match crate::openapi_json() {
        Ok(spec) => Ok(Json(spec).into_response()),
        Err(e) => {
            tracing::error!(error = e, "docs/openapi.yaml does not parse");
            Err(ApiError::internal())
        }
    }
}

pub async fn stats<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let stats = s.dedup.audio().stats().await?;
    let stats = if caller.admin { stats } else { stats.public() };
    Ok(Json(stats).into_response())
}

pub async fn reconcile<B: BlobStore, I: TransactionalIndex>(
    State(s): State<Arc<AppState<B, I>>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if !caller.admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only an admin may run the reconciler",
        ));
    }
    Ok(Json(s.dedup.reconcile().await?).into_response())
}

pub async fn no_route() -> ApiError {
    ApiError::not_found()
}

pub async fn wrong_method() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}
