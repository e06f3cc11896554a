//! `TransactionalIndex` over one DynamoDB table: `pk`/`sk` strings, `v` (version), `body`
//! (JSON), optional `wpk`/`wsk` (the sparse work GSI), counters as
//! `c_<name>` numbers updated with `ADD`. Conditions are `attribute_not_exists(pk)` and
//! `v = :v`; failed conditions return the old item (`ALL_OLD`), surfaced in the error.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;

use crate::error::StoreError;
use crate::ports::{Expect, IndexName, Item, Key, Query, TransactionalIndex, TxnError, WriteOp};

pub const WORK_INDEX: &str = "work";
const MAX_QUERY_PAGES: usize = 50;

#[derive(Clone)]
pub struct DynamoIndex {
    client: Client,
    table: String,
    retry: ConflictRetry,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Cancellation reasons of a transaction that mean "too much at once, try later".
const THROTTLED_REASONS: [&str; 3] = [
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

/// A transaction DynamoDB cancelled for a reason no retry of the same request can change.
/// Answered `500 internal`, with this as the logged cause.
#[derive(Debug, thiserror::Error)]
pub enum TransactionRefused {
    /// `ValidationError` on one action: the request itself is invalid — an item over 400 KB,
    /// a malformed expression, a counter `ADD` on an attribute that is not a number. The
    /// protocol never builds one knowingly (the memory store refuses oversized
    /// transactions), so it is a bug: nothing was written.
    #[error("DynamoDB refused action {action} of the transaction as invalid (ValidationError: {message}): an item over 400 KB or a malformed write; nothing written, not retryable")]
    Invalid { action: usize, message: String },
    /// `ItemCollectionSizeLimitExceeded`: one partition key's items would pass 10 GB. Only
    /// tables with a local secondary index have that limit, and ours has none, so this
    /// means the table is not the one the template makes: nothing written, not retryable.
    #[error("DynamoDB refused action {action}: the item collection of its partition key would pass 10 GB (ItemCollectionSizeLimitExceeded; only tables with a local secondary index have that limit); nothing written, not retryable")]
    CollectionFull { action: usize },
    /// A reason this adapter does not know, with every action's code.
    #[error("DynamoDB cancelled the transaction for reasons {codes:?}; nothing written")]
    Other { codes: Vec<String> },
}

/// What a cancelled transaction's reasons (one per action, in order) mean: a failed
/// condition (which action), a conflict with another transaction, throttling (retry
/// later), or a refusal no retry changes ([`TransactionRefused`]).
fn cancelled(reasons: &[aws_sdk_dynamodb::types::CancellationReason]) -> TxnError {
    if let Some((i, r)) = reasons
        .iter()
        .enumerate()
        .find(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
    {
        // ALL_OLD: the current item, so a caller could tell "already applied" from a
        // conflict without a read. The protocol re-reads anyway; log what it was.
        tracing::debug!(op = i, current = ?r.item().map(|m| m.get("v").cloned()), "condition failed");
        return TxnError::Rejected { op_index: i };
    }
    if reasons
        .iter()
        .any(|r| r.code() == Some("TransactionConflict"))
    {
        return TxnError::Conflict;
    }
    // Throttled inside the transaction: nothing was written, and the same request may
    // succeed later (503 with Retry-After), not a 500.
    if let Some(throttled) = reasons
        .iter()
        .find_map(|r| r.code().filter(|c| THROTTLED_REASONS.contains(c)))
    {
        return TxnError::Store(StoreError::Unavailable(format!(
            "transaction throttled: {throttled}"
        )));
    }
    let refused = reasons
        .iter()
        .enumerate()
        .find_map(|(action, r)| match r.code() {
            Some("ValidationError") => Some(TransactionRefused::Invalid {
                action,
                message: r.message().unwrap_or_default().to_owned(),
            }),
            Some("ItemCollectionSizeLimitExceeded") => {
                Some(TransactionRefused::CollectionFull { action })
            }
            _ => None,
        })
        .unwrap_or_else(|| TransactionRefused::Other {
            codes: reasons
                .iter()
                .map(|r| r.code().unwrap_or("-").to_owned())
                .collect(),
        });
    tracing::error!(error = %refused, "transaction refused");
    TxnError::Store(StoreError::backend(refused))
}

/// The sort-key part of a query: a key condition holding every bound there is (so `Limit`
/// counts only items inside them, and a page never walks what lies past the upper bound),
/// the filters left over, and the exclusive lower bound's own item to leave out.
struct KeyCondition {
    key_expr: &'static str,
    values: HashMap<String, AttributeValue>,
    filters: Vec<&'static str>,
    /// `BETWEEN` is inclusive: an item at exactly the cursor (`after`) is dropped.
    skip: Option<String>,
}

/// `None`: no key can be inside the bounds (the cursor is past the upper bound).
fn key_condition(q: &Query) -> Option<KeyCondition> {
    let mut values = HashMap::new();
    let mut filters = Vec::new();
    let prefix = (!q.sk_prefix.is_empty()).then_some(q.sk_prefix.as_str());
    // Lower bound: the cursor (exclusive) or the prefix (inclusive), whichever is higher.
    let lower = match (&q.after, prefix) {
        (Some(after), Some(pre)) if after.as_str() < pre => Some((pre.to_owned(), false)),
        (Some(after), _) => Some((after.clone(), true)),
        (None, Some(pre)) => Some((pre.to_owned(), false)),
        (None, None) => None,
    };
    // Upper bound (inclusive): `upto`, or past every key with the prefix (keys are ASCII;
    // U+10FFFF sorts after each of them), whichever is lower.
    let prefix_end = prefix.map(|p| format!("{p}\u{10FFFF}"));
    let upper = match (&q.upto, prefix_end) {
        (Some(u), Some(e)) => Some(if *u < e { u.clone() } else { e }),
        (Some(u), None) => Some(u.clone()),
        (None, e) => e,
    };
    let key_expr = match (&lower, upper) {
        (None, None) => "#p = :p",
        // A prefix alone: DynamoDB's own form.
        (Some((_, false)), Some(_)) if q.upto.is_none() && q.after.is_none() => {
            values.insert(":pre".into(), s(&q.sk_prefix));
            "#p = :p AND begins_with(#s, :pre)"
        }
        (Some((lo, exclusive)), None) => {
            values.insert(":lo".into(), s(lo));
            if *exclusive {
                "#p = :p AND #s > :lo"
            } else {
                "#p = :p AND #s >= :lo"
            }
        }
        (None, Some(hi)) => {
            values.insert(":hi".into(), s(&hi));
            "#p = :p AND #s <= :hi"
        }
        (Some((lo, _)), Some(hi)) => {
            // DynamoDB refuses BETWEEN with its bounds reversed; nothing is inside anyway.
            if *lo > hi {
                return None;
            }
            values.insert(":lo".into(), s(lo));
            values.insert(":hi".into(), s(&hi));
            "#p = :p AND #s BETWEEN :lo AND :hi"
        }
    };
    if let Some(pre) = prefix {
        if key_expr != "#p = :p AND begins_with(#s, :pre)" {
            // Redundant for ASCII keys (the bounds already hold the prefix), kept exact for
            // any other; it removes nothing inside the bounds, so it cannot make a page walk.
            values.insert(":pre".into(), s(pre));
            filters.push("begins_with(#s, :pre)");
        }
    }
    let skip = lower.and_then(|(lo, exclusive)| exclusive.then_some(lo));
    Some(KeyCondition {
        key_expr,
        values,
        filters,
        skip,
    })
}

/// The sort key an item has in `index`.
fn sort_key_of(item: &Item, index: IndexName) -> Option<&str> {
    match index {
        IndexName::Primary => Some(item.key.sk.as_str()),
        IndexName::Work => item.work_key.as_ref().map(|k| k.sk.as_str()),
    }
}

/// How one attempt of a transaction ended.
#[derive(Debug)]
enum Attempt {
    /// Cancelled because a concurrent transaction held one of its items: nothing written.
    Conflict,
    /// A request with this token is still in progress: the outcome is unknown, so the same
    /// request (same token) is sent again until it is known.
    InProgress,
    /// Committed, or failed in a way a retry of the same request cannot change.
    Final(Result<(), TxnError>),
}

/// What a service error of `TransactWriteItems` means; `None`: a backend error.
fn classify_service(
    se: &aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
) -> Option<Attempt> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match se {
        E::TransactionCanceledException(tc) => match cancelled(tc.cancellation_reasons()) {
            TxnError::Conflict => Some(Attempt::Conflict),
            other => Some(Attempt::Final(Err(other))),
        },
        E::TransactionInProgressException(_) => Some(Attempt::InProgress),
        _ if se.code() == Some("TransactionConflictException") => Some(Attempt::Conflict),
        _ => None,
    }
}

/// Bounds of the retries of one transaction that conflicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictRetry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Backoff ceiling before the second attempt; it doubles for each one after, up to
    /// `max_delay`. Each wait is drawn uniformly below the ceiling (full jitter), so writers
    /// that collided once do not collide again in step.
    pub first_delay: std::time::Duration,
    pub max_delay: std::time::Duration,
    /// No wait starts that would end later than this after the first attempt.
    pub total: std::time::Duration,
}

impl Default for ConflictRetry {
    fn default() -> Self {
        Self {
            attempts: 8,
            first_delay: std::time::Duration::from_millis(10),
            max_delay: std::time::Duration::from_millis(400),
            total: std::time::Duration::from_secs(2),
        }
    }
}

impl ConflictRetry {
    /// The wait after failed attempt `n` (0-based): uniform in [0, ceiling].
    fn delay(&self, n: u32) -> std::time::Duration {
        use rand::Rng;
        let ceiling = self
            .first_delay
            .saturating_mul(1u32 << n.min(16))
            .min(self.max_delay);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        std::time::Duration::from_millis(rand::rng().random_range(0..=ms))
    }
}

/// Runs `attempt` with one token until it is final or the bounds are spent; then the
/// transaction is answered `Unavailable`: nothing known to be written, retry later.
async fn with_conflict_retries<F, Fut>(
    policy: ConflictRetry,
    mut attempt: F,
) -> Result<(), TxnError>
where
    F: FnMut(&str) -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let token = uuid::Uuid::new_v4().to_string();
    let started = tokio::time::Instant::now();
    let mut tried = 0;
    let mut last = Attempt::Conflict;
    for n in 0..policy.attempts.max(1) {
        tried = n + 1;
        match attempt(&token).await {
            Attempt::Final(r) => return r,
            a => last = a,
        }
        if tried == policy.attempts {
            break;
        }
        let wait = policy.delay(n);
        if started.elapsed() + wait > policy.total {
            break;
        }
        tokio::time::sleep(wait).await;
    }
    let why = match last {
        Attempt::InProgress => "its outcome is unknown (still in progress)",
        _ => "it conflicted with concurrent transactions",
    };
    tracing::warn!(attempts = tried, token = %token, "transaction given up: {why}");
    Err(TxnError::Store(StoreError::Unavailable(format!(
        "transaction not committed after {tried} attempts: {why}"
    ))))
}

pub(super) fn backend<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = e
        .as_service_error()
        .and_then(|se| se.code())
        .unwrap_or_default()
        .to_owned();
    let text = DisplayErrorContext(&e).to_string();
    match code.as_str() {
        "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "InternalServerError"
        | "ServiceUnavailable" => StoreError::Unavailable(text),
        _ if matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)) => {
            StoreError::Unavailable(text)
        }
        _ => StoreError::Backend(text.into()),
    }
}

fn item_from(map: &HashMap<String, AttributeValue>) -> Result<Item, StoreError> {
    let get_s = |k: &str| map.get(k).and_then(|v| v.as_s().ok()).cloned();
    let corrupt = |why: &str| StoreError::Corrupt {
        key: format!("{:?}/{:?}", get_s("pk"), get_s("sk")),
        reason: why.into(),
    };
    let pair = |a: &str, b: &str| get_s(a).zip(get_s(b)).map(|(pk, sk)| Key { pk, sk });
    Ok(Item {
        key: pair("pk", "sk").ok_or_else(|| corrupt("missing key"))?,
        version: map
            .get("v")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt("missing version"))?,
        body: get_s("body").ok_or_else(|| corrupt("missing body"))?,
        work_key: pair("wpk", "wsk"),
    })
}

fn condition(expect: Expect) -> Option<(String, HashMap<String, AttributeValue>)> {
    match expect {
        Expect::Absent => Some(("attribute_not_exists(pk)".into(), HashMap::new())),
        Expect::Version(v) => Some((
            "v = :expected_v".into(),
            HashMap::from([(":expected_v".into(), n(v as i64))]),
        )),
        Expect::Any => None,
    }
}

pub(super) fn key_map(k: &Key) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".into(), s(&k.pk)), ("sk".into(), s(&k.sk))])
}

impl DynamoIndex {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            retry: ConflictRetry::default(),
        }
    }

    /// The same index with other bounds on conflict retries.
    pub fn with_conflict_retry(mut self, retry: ConflictRetry) -> Self {
        self.retry = retry;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client (other adapters on the same table share it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the table with both GSIs (tests against moto; production uses the template).
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let ks = |h: &str, r: &str| {
            vec![
                KeySchemaElement::builder()
                    .attribute_name(h)
                    .key_type(KeyType::Hash)
                    .build(),
                KeySchemaElement::builder()
                    .attribute_name(r)
                    .key_type(KeyType::Range)
                    .build(),
            ]
        };
        let gsi = |name: &str, h: &str, r: &str| -> Result<GlobalSecondaryIndex, StoreError> {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .set_key_schema(Some(
                    ks(h, r)
                        .into_iter()
                        .collect::<Result<_, _>>()
                        .map_err(StoreError::backend)?,
                ))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(StoreError::backend)
        };
        let defs = ["pk", "sk", "wpk", "wsk"]
            .map(attr)
            .into_iter()
            .collect::<Result<Vec<_>, _>>();
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(defs.map_err(StoreError::backend)?))
            .set_key_schema(Some(
                ks("pk", "sk")
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(StoreError::backend)?,
            ))
            .global_secondary_indexes(gsi(WORK_INDEX, "wpk", "wsk")?)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Every item (tests only: a full scan).
    pub async fn dump(&self) -> Result<Vec<Item>, StoreError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        for _ in 0..1000 {
            let Some(page) = pages.next().await else {
                break;
            };
            for m in page.map_err(backend)?.items() {
                if m.contains_key("body") {
                    out.push(item_from(m)?);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn write_item(&self, op: WriteOp) -> Result<TransactWriteItem, StoreError> {
        let b = TransactWriteItem::builder();
        let built = match op {
            WriteOp::Put { item, expect } => {
                let mut attrs = key_map(&item.key);
                attrs.insert("v".into(), n(item.version as i64));
                attrs.insert("body".into(), s(&item.body));
                if let Some(k) = &item.work_key {
                    attrs.insert("wpk".into(), s(&k.pk));
                    attrs.insert("wsk".into(), s(&k.sk));
                }
                let mut put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(attrs))
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
                if let Some((expr, values)) = condition(expect) {
                    put = put.condition_expression(expr);
                    if !values.is_empty() {
                        put = put.set_expression_attribute_values(Some(values));
                    }
                }
                b.put(put.build().map_err(StoreError::backend)?)
            }
            WriteOp::Check { key, expect } => {
                let (expr, values) = condition(expect).unwrap_or_else(|| {
                    (
                        "attribute_exists(pk) OR attribute_not_exists(pk)".into(),
                        HashMap::new(),
                    )
                });
                let mut c = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_map(&key)))
                    .condition_expression(expr)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
                if !values.is_empty() {
                    c = c.set_expression_attribute_values(Some(values));
                }
                b.condition_check(c.build().map_err(StoreError::backend)?)
            }
            WriteOp::Bump { key, deltas } => {
                let mut names = HashMap::new();
                let mut values = HashMap::new();
                let mut parts = Vec::new();
                for (i, (name, d)) in deltas.iter().enumerate() {
                    names.insert(format!("#c{i}"), format!("c_{name}"));
                    values.insert(format!(":d{i}"), n(*d));
                    parts.push(format!("#c{i} :d{i}"));
                }
                let u = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_map(&key)))
                    .update_expression(format!("ADD {}", parts.join(", ")))
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values));
                b.update(u.build().map_err(StoreError::backend)?)
            }
        };
        Ok(built.build())
    }
}

impl TransactionalIndex for DynamoIndex {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_map(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        out.item().map(item_from).transpose()
    }

    async fn query(&self, q: &Query) -> Result<Vec<Item>, StoreError> {
        let (index, pk_attr, sk_attr) = match q.index {
            IndexName::Primary => (None, "pk", "sk"),
            IndexName::Work => (Some(WORK_INDEX), "wpk", "wsk"),
        };
        let Some(cond) = key_condition(q) else {
            return Ok(Vec::new());
        };
        // DynamoDB refuses a name the expressions do not use.
        let mut names = HashMap::from([("#p".to_owned(), pk_attr.to_owned())]);
        if cond.key_expr.contains("#s") || !cond.filters.is_empty() {
            names.insert("#s".to_owned(), sk_attr.to_owned());
        }
        let mut values = cond.values;
        values.insert(":p".to_owned(), s(&q.pk));
        let key_expr = cond.key_expr;
        let filters = cond.filters;
        let mut out = Vec::new();
        let mut start = None;
        for _ in 0..MAX_QUERY_PAGES {
            let mut req = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(key_expr)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start)
                // One more when the cursor's own item may be read (and dropped).
                .limit((q.limit + usize::from(cond.skip.is_some())).clamp(1, 1000) as i32);
            if let Some(i) = index {
                req = req.index_name(i);
            } else {
                req = req.consistent_read(true);
            }
            if !filters.is_empty() {
                req = req.filter_expression(filters.join(" AND "));
            }
            let page = req.send().await.map_err(backend)?;
            for m in page.items() {
                let item = item_from(m)?;
                if cond.skip.is_some() && sort_key_of(&item, q.index) == cond.skip.as_deref() {
                    continue;
                }
                out.push(item);
                if out.len() == q.limit {
                    return Ok(out);
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Conflicts with concurrent transactions (and "still in progress" answers) are retried
    /// here, with jittered backoff and the same `ClientRequestToken` throughout, so a retry
    /// of a transaction that did commit is answered as committed, not applied twice; bounded
    /// by [`ConflictRetry`], after which the answer is `Unavailable` (503 with Retry-After).
    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), TxnError> {
        let items = ops
            .into_iter()
            .map(|op| self.write_item(op))
            .collect::<Result<Vec<_>, _>>()?;
        with_conflict_retries(self.retry, |token| {
            let send = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(token)
                .send();
            async move {
                match send.await {
                    Ok(_) => Attempt::Final(Ok(())),
                    Err(e) => match e.as_service_error().and_then(classify_service) {
                        Some(a) => a,
                        None => Attempt::Final(Err(TxnError::Store(backend(e)))),
                    },
                }
            }
        })
        .await
    }

    async fn counters(&self, pk: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut out = BTreeMap::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", s(pk))
            .consistent_read(true)
            .into_paginator()
            .send();
        for _ in 0..MAX_QUERY_PAGES {
            let Some(page) = pages.next().await else {
                break;
            };
            for m in page.map_err(backend)?.items() {
                for (k, v) in m {
                    if let (Some(name), Ok(num)) = (k.strip_prefix("c_"), v.as_n()) {
                        *out.entry(name.to_owned()).or_insert(0) += num.parse::<i64>().unwrap_or(0);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::CancellationReason;

    fn reasons(codes: &[&str]) -> Vec<CancellationReason> {
        codes
            .iter()
            .map(|c| CancellationReason::builder().code(*c).build())
            .collect()
    }

    /// Throttling inside a transaction is "unavailable, retry" (503 with Retry-After), never
    /// a 500; a failed condition names its action; a conflict is a conflict; anything else
    /// is left to the backend error.
    #[test]
    fn cancellation_reasons_are_classified() {
        for throttled in [
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
            "RequestLimitExceeded",
        ] {
            let e = cancelled(&reasons(&["None", throttled]));
            let TxnError::Store(store) = e else {
                panic!("{throttled}: {e:?}")
            };
            let err = crate::DedupError::Store(store);
            assert!(err.is_transient(), "{throttled}");
            assert_eq!(err.code(), crate::ErrorCode::Unavailable);
            assert!(err.retry_after().is_some());
        }
        assert!(matches!(
            cancelled(&reasons(&["None", "ConditionalCheckFailed"])),
            TxnError::Rejected { op_index: 1 }
        ));
        assert!(matches!(
            cancelled(&reasons(&["TransactionConflict", "None"])),
            TxnError::Conflict
        ));
        // Refusals no retry changes: internal, not transient, each naming its cause and
        // its action.
        for (codes, says) in [
            (
                &["None", "ValidationError"][..],
                "action 1 of the transaction as invalid",
            ),
            (
                &["ItemCollectionSizeLimitExceeded", "None"][..],
                "action 0: the item collection",
            ),
            (&["Mystery"][..], "[\"Mystery\"]"),
        ] {
            let TxnError::Store(store) = cancelled(&reasons(codes)) else {
                panic!("{codes:?}")
            };
            let text = store.to_string();
            assert!(text.contains(says), "{codes:?}: {text}");
            let err = crate::DedupError::Store(store);
            assert!(!err.is_transient(), "{codes:?}");
            assert_eq!(err.code(), crate::ErrorCode::Internal);
            assert!(err.retry_after().is_none());
        }
        // A failed condition names its action even beside a refusal on another.
        assert!(matches!(
            cancelled(&reasons(&["ValidationError", "ConditionalCheckFailed"])),
            TxnError::Rejected { op_index: 1 }
        ));
    }

    fn conflict_error() -> aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError
    {
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
            aws_sdk_dynamodb::types::error::TransactionCanceledException::builder()
                .set_cancellation_reasons(Some(reasons(&["None", "TransactionConflict"])))
                .build(),
        )
    }

    /// A conflict and "still in progress" are retried; a failed condition and throttling
    /// are final; anything else is left to the backend error.
    #[test]
    fn transaction_errors_are_classified_for_retry() {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
        assert!(matches!(
            classify_service(&conflict_error()),
            Some(Attempt::Conflict)
        ));
        let in_progress = E::TransactionInProgressException(
            aws_sdk_dynamodb::types::error::TransactionInProgressException::builder().build(),
        );
        assert!(matches!(
            classify_service(&in_progress),
            Some(Attempt::InProgress)
        ));
        let failed = E::TransactionCanceledException(
            aws_sdk_dynamodb::types::error::TransactionCanceledException::builder()
                .set_cancellation_reasons(Some(reasons(&["ConditionalCheckFailed", "None"])))
                .build(),
        );
        assert!(matches!(
            classify_service(&failed),
            Some(Attempt::Final(Err(TxnError::Rejected { op_index: 0 })))
        ));
        let throttled = E::TransactionCanceledException(
            aws_sdk_dynamodb::types::error::TransactionCanceledException::builder()
                .set_cancellation_reasons(Some(reasons(&["ThrottlingError"])))
                .build(),
        );
        assert!(matches!(
            classify_service(&throttled),
            Some(Attempt::Final(Err(TxnError::Store(
                StoreError::Unavailable(_)
            ))))
        ));
        let mismatch = E::IdempotentParameterMismatchException(
            aws_sdk_dynamodb::types::error::IdempotentParameterMismatchException::builder().build(),
        );
        assert!(classify_service(&mismatch).is_none());
    }

    /// Runs the retry loop over scripted attempts; answers its result and the tokens sent.
    async fn scripted(
        policy: ConflictRetry,
        script: Vec<Attempt>,
    ) -> (Result<(), TxnError>, Vec<String>) {
        let script = std::sync::Mutex::new(script.into_iter());
        let tokens = std::sync::Mutex::new(Vec::new());
        let r = with_conflict_retries(policy, |token| {
            tokens.lock().unwrap().push(token.to_owned());
            let next = script.lock().unwrap().next().unwrap_or(Attempt::Conflict);
            async move { next }
        })
        .await;
        (r, tokens.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_are_retried_with_one_token_until_committed() {
        let (r, tokens) = scripted(
            ConflictRetry::default(),
            vec![
                Attempt::Conflict,
                Attempt::InProgress,
                Attempt::Final(Ok(())),
            ],
        )
        .await;
        assert!(r.is_ok());
        assert_eq!(tokens.len(), 3);
        assert!(tokens.iter().all(|t| t == &tokens[0]), "{tokens:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_is_not_retried() {
        let (r, tokens) = scripted(
            ConflictRetry::default(),
            vec![Attempt::Final(Err(TxnError::Rejected { op_index: 2 }))],
        )
        .await;
        assert!(matches!(r, Err(TxnError::Rejected { op_index: 2 })));
        assert_eq!(tokens.len(), 1);
    }

    /// Endless conflicts: given up after the attempts allowed, as Unavailable (503 with
    /// Retry-After), never as a conflict the protocol would retry again at once.
    #[tokio::test(start_paused = true)]
    async fn endless_conflicts_end_in_unavailable_after_the_bound() {
        let policy = ConflictRetry::default();
        let (r, tokens) = scripted(policy, Vec::new()).await;
        assert_eq!(tokens.len(), policy.attempts as usize);
        let Err(TxnError::Store(store)) = r else {
            panic!("{r:?}")
        };
        let err = crate::DedupError::Store(store);
        assert_eq!(err.code(), crate::ErrorCode::Unavailable);
        assert!(err.retry_after().is_some());
    }

    /// The time bound ends the retries before the count does.
    #[tokio::test(start_paused = true)]
    async fn retries_stop_within_the_time_bound() {
        let policy = ConflictRetry {
            attempts: 10_000,
            first_delay: std::time::Duration::from_millis(50),
            max_delay: std::time::Duration::from_millis(50),
            total: std::time::Duration::from_secs(1),
        };
        let started = tokio::time::Instant::now();
        let (r, tokens) = scripted(policy, Vec::new()).await;
        assert!(r.is_err());
        assert!(started.elapsed() <= policy.total, "{:?}", started.elapsed());
        // Waits average 25 ms: about 40 fit in a second; far fewer than the count allows.
        assert!(tokens.len() < 1_000, "{}", tokens.len());
        assert!(tokens.len() > 1);
    }

    /// Both bounds of a query stay in the key condition, so `Limit` counts only items inside
    /// them: a page after a cursor never reads what lies past the upper bound.
    #[test]
    fn both_bounds_stay_in_the_key_condition() {
        let q = |after: Option<&str>, upto: Option<&str>, prefix: &str| Query {
            index: IndexName::Work,
            pk: "WORK#00".into(),
            sk_prefix: prefix.into(),
            after: after.map(str::to_owned),
            upto: upto.map(str::to_owned),
            limit: 25,
        };
        let c = key_condition(&q(Some("0005#a"), Some("0009~"), "")).unwrap();
        assert_eq!(c.key_expr, "#p = :p AND #s BETWEEN :lo AND :hi");
        assert!(c.filters.is_empty(), "{:?}", c.filters);
        assert_eq!(c.values.get(":lo"), Some(&s("0005#a")));
        assert_eq!(c.values.get(":hi"), Some(&s("0009~")));
        assert_eq!(c.skip.as_deref(), Some("0005#a"));
        // The cursor past the upper bound: nothing to read at all.
        assert!(key_condition(&q(Some("0010#a"), Some("0009~"), "")).is_none());
        // One bound each.
        let c = key_condition(&q(Some("0005#a"), None, "")).unwrap();
        assert_eq!(c.key_expr, "#p = :p AND #s > :lo");
        let c = key_condition(&q(None, Some("0009~"), "")).unwrap();
        assert_eq!(c.key_expr, "#p = :p AND #s <= :hi");
        assert!(c.skip.is_none());
        let c = key_condition(&q(None, None, "")).unwrap();
        assert_eq!(c.key_expr, "#p = :p");
        // A prefix alone, and a prefix with a cursor: the cursor is the lower bound, the
        // prefix's end the upper one.
        let c = key_condition(&q(None, None, "REF#")).unwrap();
        assert_eq!(c.key_expr, "#p = :p AND begins_with(#s, :pre)");
        let c = key_condition(&q(Some("REF#b"), None, "REF#")).unwrap();
        assert_eq!(c.key_expr, "#p = :p AND #s BETWEEN :lo AND :hi");
        assert_eq!(c.values.get(":lo"), Some(&s("REF#b")));
        assert_eq!(c.values.get(":hi"), Some(&s("REF#\u{10FFFF}")));
        // A cursor before the prefix: the prefix is the (inclusive) lower bound.
        let c = key_condition(&q(Some("A"), None, "REF#")).unwrap();
        assert_eq!(c.values.get(":lo"), Some(&s("REF#")));
        assert!(c.skip.is_none());
    }
}
