//! Per-user request budgets: how many requests one user may make, as a rate and a burst (a
//! token bucket). The API asks the port once per authenticated request, before doing
//! anything; the local server keeps the buckets in process, the Lambda functions in the
//! table (one bucket item per user, updated with conditional writes).
//!
//! The arithmetic is GCRA, the token bucket written as one number per user: the
//! theoretical arrival time `tat`. Each admitted request moves it `interval` (1 / rate)
//! later, starting from now if it lies in the past; a request is admitted while `tat` is at
//! most `tolerance` ((burst - 1) * interval) ahead of now. A full bucket is `tat <= now`.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::domain::{Millis, UserId};
use crate::error::StoreError;

/// Requests per second one user may make, and the burst above that rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RequestRate {
    /// `None` (no limit) when either is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        Some(Self {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }

    /// The bucket's arithmetic, in microseconds.
    pub fn gcra(&self) -> Gcra {
        let interval = (1_000_000 / u64::from(self.per_second.get())).max(1);
        Gcra {
            interval,
            tolerance: interval * u64::from(self.burst.get() - 1),
        }
    }
}

/// What one request's take answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the budget: the request goes on (and is counted).
    Admitted,
    /// Over it: the request must not be served; the same one is admitted after
    /// `retry_after` if nothing else is taken meanwhile.
    Limited { retry_after: Duration },
}

pub trait RequestBudget: Send + Sync + 'static {
    /// Takes one request from `user`'s budget at `now` (wall clock, milliseconds). An
    /// adapter with a monotonic clock of its own (the in-process one) may keep to it.
    fn take(
        &self,
        user: &UserId,
        now: Millis,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;
}

/// GCRA over microsecond timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one request uses up (1 / rate).
    pub interval: u64,
    /// How far ahead of now `tat` may be and still admit: (burst - 1) * interval.
    pub tolerance: u64,
}

/// What a bucket's state means for a request at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraStep {
    /// Admit and store `tat`; the bucket was idle (its old `tat` lies in the past), so the
    /// new one starts from now.
    FromNow { tat: i64 },
    /// Admit and store `tat`: the old one plus one interval.
    Queue { tat: i64 },
    /// Refuse; a request is admitted again after `retry_after`.
    Refuse { retry_after: Duration },
}

impl Gcra {
    /// The step for a bucket whose stored `tat` is `stored` (`None`: no bucket yet).
    pub fn step(&self, stored: Option<i64>, now: i64) -> GcraStep {
        let interval = i64::try_from(self.interval).unwrap_or(i64::MAX);
        let tolerance = i64::try_from(self.tolerance).unwrap_or(i64::MAX);
        match stored {
            None => GcraStep::FromNow {
                tat: now.saturating_add(interval),
            },
            Some(tat) if tat < now => GcraStep::FromNow {
                tat: now.saturating_add(interval),
            },
            Some(tat) if tat - now <= tolerance => GcraStep::Queue {
                tat: tat.saturating_add(interval),
            },
            Some(tat) => GcraStep::Refuse {
                retry_after: Duration::from_micros(
                    u64::try_from(tat - now - tolerance).unwrap_or(0),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Gcra {
        RequestRate::new(per_second, burst).unwrap().gcra()
    }

    /// Runs requests at the given times (µs) through one bucket; answers which were admitted.
    fn run(g: Gcra, times: &[i64]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| match g.step(tat, now) {
                GcraStep::FromNow { tat: t } | GcraStep::Queue { tat: t } => {
                    tat = Some(t);
                    true
                }
                GcraStep::Refuse { .. } => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate() {
        // 2/s, burst 3: three at once, the fourth refused; one more every 500 ms.
        let g = rate(2, 3);
        assert_eq!(
            run(g, &[0, 0, 0, 0, 499_999, 500_000, 600_000, 1_000_000]),
            [true, true, true, false, false, true, false, true]
        );
    }

    #[test]
    fn refusal_says_when_the_next_request_passes() {
        let g = rate(1, 1);
        let GcraStep::FromNow { tat } = g.step(None, 10) else {
            panic!()
        };
        assert_eq!(tat, 1_000_010);
        let GcraStep::Refuse { retry_after } = g.step(Some(tat), 250_010) else {
            panic!()
        };
        assert_eq!(retry_after, Duration::from_micros(750_000));
        assert!(matches!(
            g.step(Some(tat), 250_010 + 750_000),
            GcraStep::Queue { .. }
        ));
    }

    #[test]
    fn an_idle_bucket_refills_to_the_burst_and_no_more() {
        let g = rate(10, 5);
        // Long idle: the burst (5) passes at once, not more.
        let later = 3_600_000_000;
        assert_eq!(
            run(g, &[0, later, later, later, later, later, later]),
            [true, true, true, true, true, true, false]
        );
    }

    #[test]
    fn zero_turns_the_limit_off() {
        assert!(RequestRate::new(0, 10).is_none());
        assert!(RequestRate::new(10, 0).is_none());
    }
}
