//! Per-user request budgets in the table: one item per user (`RATE#<user>` / `BUCKET`)
//! holding GCRA's `tat` in microseconds (see `ports::request_budget`), changed only by
//! conditional `UpdateItem`s, so concurrent Lambdas share each user's bucket exactly.
//!
//! `tat` only ever grows, and DynamoDB has no `max` in an update expression, so a request
//! tries the bucket's two ways forward in turn, each a conditional write that also answers
//! the item it found (`ALL_OLD`) when its condition fails:
//! 1. idle (the common case: a user under the rate): `SET tat = now + interval` if
//!    `tat < now` or there is no bucket. One write.
//! 2. within a burst: `SET tat = tat + interval` if `tat <= now + tolerance`. Tried only when
//!    the first found `tat` inside the tolerance: two writes.
//!
//! Refused when the found `tat` is past the tolerance: nothing more is written. Each write
//! is one write request unit (the item is far under 1 KB), failed conditions included; the
//! cost per million requests is in docs/deploy.md. Items carry `expires_at` (the table's TTL)
//! an hour after their bucket is full again, so idle users' buckets go away by themselves.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use super::dynamo::{backend, key_map};
use super::EXPIRES_AT;
use crate::domain::{Millis, UserId};
use crate::error::StoreError;
use crate::ports::{Admission, Gcra, GcraStep, Key, RequestBudget, RequestRate};

/// Conditional writes one take may try: idle, burst, and a second round when another
/// request of the same user moved the bucket in between.
const MAX_WRITES: usize = 4;

/// How long after a bucket is full again its item is kept (DynamoDB's TTL deletes it).
const KEEP_SECONDS: i64 = 3600;

#[derive(Clone)]
pub struct DynamoRequestBudget {
    client: Client,
    table: String,
    gcra: Gcra,
}

/// The item holding `user`'s bucket.
pub fn bucket_key(user: &UserId) -> Key {
    Key::new(format!("RATE#{}", user.as_str()), "BUCKET")
}

/// How one conditional write ended.
enum Write {
    Done,
    /// The condition did not hold; the `tat` found (`None`: no bucket).
    Found(Option<i64>),
}

impl DynamoRequestBudget {
    pub fn new(client: Client, table: impl Into<String>, rate: RequestRate) -> Self {
        Self {
            client,
            table: table.into(),
            gcra: rate.gcra(),
        }
    }

    async fn write(
        &self,
        key: &Key,
        update: &str,
        condition: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<Write, StoreError> {
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_map(key)))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#t", "tat")
            .expression_attribute_names("#e", EXPIRES_AT)
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Write::Done),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let tat = c
                        .item()
                        .and_then(|m| m.get("tat"))
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok());
                    Ok(Write::Found(tat))
                }
                _ => Err(backend(e)),
            },
        }
    }
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl RequestBudget for DynamoRequestBudget {
    async fn take(&self, user: &UserId, now: Millis) -> Result<Admission, StoreError> {
        let key = bucket_key(user);
        let now = now.saturating_mul(1000);
        let interval = i64::try_from(self.gcra.interval).unwrap_or(i64::MAX);
        let tolerance = i64::try_from(self.gcra.tolerance).unwrap_or(i64::MAX);
        // The latest `tat` this take can leave, plus the time to keep the item after it.
        let expires = now
            .saturating_add(tolerance)
            .saturating_add(interval)
            .div_euclid(1_000_000)
            .saturating_add(KEEP_SECONDS + 1);
        // What the bucket was last seen as; `None` before any write (try idle first).
        let mut seen: Option<Option<i64>> = None;
        for _ in 0..MAX_WRITES {
            let step = match seen {
                None => self.gcra.step(None, now),
                Some(tat) => self.gcra.step(tat, now),
            };
            let outcome = match step {
                GcraStep::Refuse { retry_after } => {
                    return Ok(Admission::Limited { retry_after });
                }
                GcraStep::FromNow { tat } => {
                    self.write(
                        &key,
                        "SET #t = :tat, #e = :exp",
                        "attribute_not_exists(#t) OR #t < :now",
                        HashMap::from([
                            (":tat".into(), n(tat)),
                            (":now".into(), n(now)),
                            (":exp".into(), n(expires)),
                        ]),
                    )
                    .await?
                }
                GcraStep::Queue { .. } => {
                    self.write(
                        &key,
                        "SET #t = #t + :interval, #e = :exp",
                        "#t <= :limit",
                        HashMap::from([
                            (":interval".into(), n(interval)),
                            (":limit".into(), n(now.saturating_add(tolerance))),
                            (":exp".into(), n(expires)),
                        ]),
                    )
                    .await?
                }
            };
            match outcome {
                Write::Done => return Ok(Admission::Admitted),
                Write::Found(tat) => seen = Some(tat),
            }
        }
        // The same user's other requests kept moving the bucket under this one: they are
        // many at once, so this one waits an interval.
        Ok(Admission::Limited {
            retry_after: std::time::Duration::from_micros(self.gcra.interval),
        })
    }
}
