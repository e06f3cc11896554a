//! The transactional index port: versioned items, conditional all-or-nothing writes and
//! additive counters. DynamoDB, SQLite and the in-memory store implement it the same way.

use std::collections::BTreeMap;
use std::future::Future;

use crate::error::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pk, self.sk)
    }
}

/// One stored item. `version` increases by one on every write (the compare-and-swap token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Key,
    pub version: u64,
    /// JSON text of the record.
    pub body: String,
    /// Key in the sparse work index (what the reconciler must look at, by due time), if any.
    pub work_key: Option<Key>,
}

/// Most ops in one transaction: what DynamoDB's `TransactWriteItems` takes (100 since 2022).
pub const MAX_TRANSACTION_OPS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The item must not exist.
    Absent,
    /// The item must exist at exactly this version.
    Version(u64),
    /// No condition; the adapter stores the current version + 1. Only mutation builds use it.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Write the whole item if `expect` holds.
    Put { item: Item, expect: Expect },
    /// Write nothing; fail the transaction unless `expect` holds.
    Check { key: Key, expect: Expect },
    /// Add to named counters on an item, creating it at zero. Unconditional (DynamoDB `ADD`),
    /// so it is only ever used beside a conditional op that makes the transaction idempotent.
    Bump {
        key: Key,
        deltas: Vec<(&'static str, i64)>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The condition of op `op_index` did not hold; nothing was written.
    #[error("condition failed on op {op_index}")]
    Rejected { op_index: usize },
    /// Collided with a concurrent transaction; nothing was written; retry.
    #[error("transaction conflict")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexName {
    Primary,
    Work,
}

/// Items of one partition of an index, in sort-key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub index: IndexName,
    pub pk: String,
    pub sk_prefix: String,
    /// Exclusive lower bound (paging).
    pub after: Option<String>,
    /// Inclusive upper bound.
    pub upto: Option<String>,
    pub limit: usize,
}

pub trait TransactionalIndex: Send + Sync + 'static {
    fn get(&self, key: &Key) -> impl Future<Output = Result<Option<Item>, StoreError>> + Send;

    fn query(&self, query: &Query) -> impl Future<Output = Result<Vec<Item>, StoreError>> + Send;

    /// All-or-nothing. At most `MAX_TRANSACTION_OPS` ops, no two on the same key.
    fn transact(&self, ops: Vec<WriteOp>) -> impl Future<Output = Result<(), TxnError>> + Send;

    /// Sums of each counter over every item in partition `pk`.
    fn counters(
        &self,
        pk: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, i64>, StoreError>> + Send;
}
