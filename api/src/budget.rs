//! Per-user request budgets, enforced inside the router on every authenticated route, so the
//! local server and every Lambda function refuse alike: over the budget, `429 rate_limited`
//! with `Retry-After`, before the request is read or anything is done. The budget itself is
//! a port (`ports::RequestBudget`): in process on the local server, in the table on AWS.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use audio_dedup_core::ports::{Admission, Clock, RequestBudget, SystemClock};
use audio_dedup_core::{DedupError, ErrorCode, Millis, StoreError, UserId};

use crate::auth::Caller;
use crate::error::ApiError;

type Taking<'a> = Pin<Box<dyn Future<Output = Result<Admission, StoreError>> + Send + 'a>>;

/// `RequestBudget` as an object, so `ApiConfig` holds any adapter.
trait AnyBudget: Send + Sync + 'static {
    fn take<'a>(&'a self, user: &'a UserId, now: Millis) -> Taking<'a>;
}

impl<R: RequestBudget> AnyBudget for R {
    fn take<'a>(&'a self, user: &'a UserId, now: Millis) -> Taking<'a> {
        Box::pin(RequestBudget::take(self, user, now))
    }
}

/// The budget the router enforces, over any adapter of the port.
#[derive(Clone)]
pub struct UserBudget {
    budget: Arc<dyn AnyBudget>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for UserBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserBudget")
    }
}

impl UserBudget {
    pub fn new<R: RequestBudget>(budget: R) -> Self {
        Self {
            budget: Arc::new(budget),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same budget, taken at `clock`'s time (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

pub(crate) async fn limit_per_user(
    State(b): State<UserBudget>,
    req: Request,
    next: Next,
) -> Response {
    // The identity layer runs first and puts the caller here; without one the handler
    // answers 401 itself.
    let Some(user) = req.extensions().get::<Caller>().map(|c| c.user.clone()) else {
        return next.run(req).await;
    };
    match b.budget.take(&user, b.clock.now_ms()).await {
        Ok(Admission::Admitted) => next.run(req).await,
        Ok(Admission::Limited { retry_after }) => ApiError::from(DedupError::limited(
            ErrorCode::RateLimited,
            "too many requests from this user; slow down",
            retry_after,
        ))
        .into_response(),
        Err(e) => {
            tracing::warn!(%user, error = %e, "request budget unreadable; request refused");
            ApiError::from(DedupError::Store(e)).into_response()
        }
    }
}

#[cfg(feature = "lambda")]
impl UserBudget {
    /// The Lambda functions' budget, kept in the table: `USER_RATE_PER_SECOND` and
    /// `USER_RATE_BURST`; `None` (no per-user limit) when either is unset or 0.
    pub async fn from_env() -> Result<Option<Self>, audio_dedup_core::store::aws::EnvError> {
        Ok(audio_dedup_core::store::aws::request_budget_from_env()
            .await?
            .map(Self::new))
    }
}
