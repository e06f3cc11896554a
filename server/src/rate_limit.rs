//! Per-user request rates on the local server: a token bucket per user, checked before a
//! request reaches the API. Over it: `429 rate_limited` with `Retry-After`, and nothing done.
//! Keys are authenticated users only (a request the server's authenticator refuses goes on
//! to be refused with 401), so memory is bounded by the callers who hold a valid token. On AWS, API Gateway's route
//! throttling (template parameters) plays this part.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use audio_dedup_api::{ApiError, Authenticator};
use audio_dedup_core::{ErrorCode, UserId};

/// Requests per second one user may make, and the burst above that rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

pub struct UserRateLimit {
    auth: Arc<dyn Authenticator>,
    limiter: RateLimiter<UserId, HashMapStateStore<UserId>, DefaultClock>,
}

impl UserRateLimit {
    /// `auth` is the server's own authenticator (the one the router asks).
    pub fn new(auth: Arc<dyn Authenticator>, rate: RequestRate) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            auth,
            limiter: RateLimiter::hashmap(quota),
        }
    }
}

pub async fn limit_per_user(
    State(limit): State<Arc<UserRateLimit>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(caller) = limit.auth.authenticate(&parts) {
        if let Err(not_until) = limit.limiter.check_key(&caller.user) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut e = ApiError::new(
                ErrorCode::RateLimited,
                "too many requests from this user; slow down",
            );
            e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
            return e.into_response();
        }
    }
    next.run(Request::from_parts(parts, body)).await
}
