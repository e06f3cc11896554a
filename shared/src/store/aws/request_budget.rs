//! Per-user request budgets in the table: one item per user (`RATE#<user>` / `BUCKET`)
//! holding GCRA's `tat` in microseconds (see `ports::request_budget`), changed only by
//! conditional `UpdateItem`s, so concurrent Lambdas share each user's bucket exactly.
//!
//! `tat` only ever grows, and DynamoDB has no `max` in an update expression, so the bucket has
//! two ways forward, each a conditional write that answers the item it found (`ALL_OLD`)
//! when its condition fails:
//! - idle (a user under the rate): `SET tat = now + interval` if `tat < now` or there is no
//!   bucket;
//! - within a burst: `SET tat = tat + interval` if `now <= tat <= now + tolerance`.
//!
//! A take tries the one the process's last sight of the bucket (a per-user hint) points to,
//! idle when there is none, then the other if the found `tat` says so; a found `tat` past the
//! tolerance refuses with nothing more written. Since `tat` never decreases, a hint already
//! past the tolerance refuses exactly with no write at all: a flood from one user into a warm
//! function costs no writes after its first refusal. Each write is one write request unit
//! (the item is far under 1 KB), failed conditions included; the cost per million requests is
//! in docs/deploy.md. Items carry `expires_at` (the table's TTL) an hour after their bucket is
//! full again, so idle users' buckets go away by themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use super::dynamo::{backend, key_map};
use super::EXPIRES_AT;
use crate::domain::{Millis, UserId};
use crate::error::StoreError;
use crate::ports::{Admission, Gcra, GcraStep, Key, RequestBudget, RequestRate};

/// Conditional writes one take may try: idle, burst, and a second round when another
/// request of the same user moved the bucket in between.
const MAX_WRITES: usize = 4;

/// Users whose last `tat` a process keeps as a hint.
const HINTS: usize = 10_000;

/// How long after a bucket is full again its item is kept (DynamoDB's TTL deletes it).
const KEEP_SECONDS: i64 = 3600;

#[derive(Clone)]
pub struct DynamoRequestBudget {
    client: Client,
    table: String,
    gcra: Gcra,
    /// The last `tat` seen per user (a hint: see `take`); cleared when it reaches `HINTS`.
    hints: Arc<Mutex<HashMap<UserId, i64>>>,
}

/// The item holding `user`'s bucket.
pub fn bucket_key(user: &UserId) -> Key {
    Key::new(format!("RATE#{}", user.as_str()), "BUCKET")
}

/// How one conditional write ended.
enum Write {
    /// Written; the `tat` stored now.
    Done(Option<i64>),
    /// The condition did not hold; the `tat` found (`None`: no bucket).
    Found(Option<i64>),
}

impl DynamoRequestBudget {
    pub fn new(client: Client, table: impl Into<String>, rate: RequestRate) -> Self {
        Self {
            client,
            table: table.into(),
            gcra: rate.gcra(),
            hints: Arc::default(),
        }
    }

    fn hint(&self, user: &UserId) -> Option<i64> {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied()
    }

    fn remember(&self, user: &UserId, tat: Option<i64>) {
        let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        match tat {
            Some(tat) => {
                if hints.len() >= HINTS && !hints.contains_key(user) {
                    hints.clear();
                }
                let h = hints.entry(user.clone()).or_insert(tat);
                *h = (*h).max(tat);
            }
            None => {
                hints.remove(user);
            }
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
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Write::Done(out.attributes().and_then(tat_of))),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Write::Found(c.item().and_then(tat_of)))
                }
                _ => Err(backend(e)),
            },
        }
    }
}

fn tat_of(item: &HashMap<String, AttributeValue>) -> Option<i64> {
    item.get("tat")?.as_n().ok()?.parse().ok()
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
        // The last `tat` this process saw for the user, if any. `tat` never decreases, so
        // a hint past the burst refuses exactly, with no write at all; a hint inside it
        // tries the burst's write first. A wrong guess only costs the other write.
        let mut seen: Option<i64> = self.hint(user);
        for _ in 0..MAX_WRITES {
            let outcome = match self.gcra.step(seen, now) {
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
                        "#t >= :now AND #t <= :limit",
                        HashMap::from([
                            (":interval".into(), n(interval)),
                            (":now".into(), n(now)),
                            (":limit".into(), n(now.saturating_add(tolerance))),
                            (":exp".into(), n(expires)),
                        ]),
                    )
                    .await?
                }
            };
            match outcome {
                Write::Done(tat) => {
                    self.remember(user, tat);
                    return Ok(Admission::Admitted);
                }
                Write::Found(tat) => {
                    self.remember(user, tat);
                    seen = tat;
                }
            }
        }
        // The same user's other requests kept moving the bucket under this one: they are
        // many at once, so this one waits an interval.
        Ok(Admission::Limited {
            retry_after: std::time::Duration::from_micros(self.gcra.interval),
        })
    }
}
