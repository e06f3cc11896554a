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

/// What a cancelled transaction's reasons (one per action, in order) mean: a failed
/// condition (which action), a conflict with another transaction, or throttling; `None` for
/// anything else (a bug or a limit: logged as a backend error).
fn cancelled(reasons: &[aws_sdk_dynamodb::types::CancellationReason]) -> Option<TxnError> {
    if let Some((i, r)) = reasons
        .iter()
        .enumerate()
        .find(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
    {
        // ALL_OLD: the current item, so a caller could tell "already applied" from a
        // conflict without a read. The protocol re-reads anyway; log what it was.
        tracing::debug!(op = i, current = ?r.item().map(|m| m.get("v").cloned()), "condition failed");
        return Some(TxnError::Rejected { op_index: i });
    }
    if reasons
        .iter()
        .any(|r| r.code() == Some("TransactionConflict"))
    {
        return Some(TxnError::Conflict);
    }
    // Throttled inside the transaction: nothing was written, and the same request may
    // succeed later (503 with Retry-After), not a 500.
    let throttled = reasons
        .iter()
        .find_map(|r| r.code().filter(|c| THROTTLED_REASONS.contains(c)))?;
    Some(TxnError::Store(StoreError::Unavailable(format!(
        "transaction throttled: {throttled}"
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
        }
    }

    pub fn table(&self) -> &str {
        &self.table
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
        let names = HashMap::from([
            ("#p".to_owned(), pk_attr.to_owned()),
            ("#s".to_owned(), sk_attr.to_owned()),
        ]);
        let mut values = HashMap::from([(":p".to_owned(), s(&q.pk))]);
        // One sort-key condition in the key expression, the rest filter. A cursor (`after`)
        // goes in the key condition when there is one, so a page starts reading at the
        // cursor rather than at the start of the partition.
        let mut filters = Vec::new();
        let key_expr = if let Some(after) = &q.after {
            values.insert(":after".into(), s(after));
            if !q.sk_prefix.is_empty() {
                values.insert(":pre".into(), s(&q.sk_prefix));
                filters.push("begins_with(#s, :pre)");
            }
            if let Some(upto) = &q.upto {
                values.insert(":upto".into(), s(upto));
                filters.push("#s <= :upto");
            }
            "#p = :p AND #s > :after"
        } else {
            match (&q.upto, q.sk_prefix.is_empty()) {
                (Some(upto), _) => {
                    values.insert(":upto".into(), s(upto));
                    if !q.sk_prefix.is_empty() {
                        values.insert(":pre".into(), s(&q.sk_prefix));
                        filters.push("begins_with(#s, :pre)");
                    }
                    "#p = :p AND #s <= :upto"
                }
                (None, false) => {
                    values.insert(":pre".into(), s(&q.sk_prefix));
                    "#p = :p AND begins_with(#s, :pre)"
                }
                (None, true) => "#p = :p",
            }
        };
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
                .limit(q.limit.clamp(1, 1000) as i32);
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
                out.push(item_from(m)?);
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

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), TxnError> {
        let items = ops
            .into_iter()
            .map(|op| self.write_item(op))
            .collect::<Result<Vec<_>, _>>()?;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(se) = e.as_service_error() {
                    if se.is_transaction_canceled_exception() {
                        if let aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(tc) = se {
                            if let Some(e) = cancelled(tc.cancellation_reasons()) {
                                return Err(e);
                            }
                        }
                    }
                    // In progress: the outcome is unknown (it may still commit). Retried as a
                    // conflict, which is safe because every step re-reads what is stored and
                    // finds its own write if it landed (the steps are idempotent by content).
                    if se.is_transaction_in_progress_exception()
                        || se.code() == Some("TransactionConflictException")
                    {
                        return Err(TxnError::Conflict);
                    }
                }
                Err(TxnError::Store(backend(e)))
            }
        }
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
            let e = cancelled(&reasons(&["None", throttled])).expect("classified");
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
            Some(TxnError::Rejected { op_index: 1 })
        ));
        assert!(matches!(
            cancelled(&reasons(&["TransactionConflict", "None"])),
            Some(TxnError::Conflict)
        ));
        assert!(cancelled(&reasons(&["ValidationError"])).is_none());
    }
}
