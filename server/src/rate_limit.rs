//! Per-user request rates on the local server: the in-process adapter of the core's
//! `RequestBudget` port, a keyed token bucket (governor) per user. The API router takes from
//! it on every authenticated route (`ApiConfig::request_budget`), as the Lambda functions
//! take from the table's buckets: over it, `429 rate_limited` with `Retry-After`, and nothing
//! done. Keys are authenticated users only (the router checks the caller first), so memory
//! is bounded by the callers who hold a valid token.

use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use audio_dedup_core::ports::{Admission, RequestBudget};
use audio_dedup_core::{Millis, StoreError, UserId};

pub use audio_dedup_core::ports::RequestRate;

pub struct GovernorBudget {
    limiter: RateLimiter<UserId, HashMapStateStore<UserId>, DefaultClock>,
}

impl GovernorBudget {
    pub fn new(rate: RequestRate) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            limiter: RateLimiter::hashmap(quota),
        }
    }
}

impl RequestBudget for GovernorBudget {
    /// Keeps to governor's monotonic clock: `now` is not needed in process.
    async fn take(&self, user: &UserId, _now: Millis) -> Result<Admission, StoreError> {
        Ok(match self.limiter.check_key(user) {
            Ok(()) => Admission::Admitted,
            Err(not_until) => Admission::Limited {
                retry_after: not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_millis(1)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_burst_passes_then_the_user_is_limited_alone() {
        let b = GovernorBudget::new(RequestRate::new(1, 2).unwrap());
        let (alice, bob): (UserId, UserId) = ("alice".parse().unwrap(), "bob".parse().unwrap());
        assert_eq!(b.take(&alice, 0).await.unwrap(), Admission::Admitted);
        assert_eq!(b.take(&alice, 0).await.unwrap(), Admission::Admitted);
        let Admission::Limited { retry_after } = b.take(&alice, 0).await.unwrap() else {
            panic!("the third request in a burst of 2 is limited")
        };
        assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
        assert_eq!(b.take(&bob, 0).await.unwrap(), Admission::Admitted);
    }
}
