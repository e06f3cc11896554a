//! Global statistics from sharded counters. Each counter change is written in the same
//! transaction as the state change it counts, on a random shard (each shard alone in its
//! partition), so the totals are exact once writes settle, no request scans the table, and
//! no single item or partition takes every write.

use super::AudioEngine;
use crate::domain::Stats;
use crate::error::DedupError;
use crate::ports::{BlobStore, TransactionalIndex};
use crate::protocol::keys;

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    pub async fn stats(&self) -> Result<Stats, DedupError> {
        // One read per shard's partition (and the legacy one), all at once.
        let parts = keys::stats_partitions(self.core.cfg.stats_shards);
        let sums =
            futures_util::future::try_join_all(parts.iter().map(|pk| self.core.index.counters(pk)))
                .await?;
        let mut c = std::collections::BTreeMap::<String, i64>::new();
        for (name, v) in sums.into_iter().flatten() {
            *c.entry(name).or_insert(0) += v;
        }
        // Counters of a store written before a counter existed start at 0: never below it.
        let get = |k: &str| c.get(k).copied().unwrap_or(0).max(0);
        let unreferenced_files = get("unreferenced_files").min(get("active_files"));
        let unreferenced_bytes = get("unreferenced_bytes").min(get("stored_bytes"));
        // Every file counted here has a reference, so referenced >= stored; the `max` only
        // matters on a store whose unreferenced counters started after its first files.
        let stored = get("stored_bytes") - unreferenced_bytes;
        let referenced = get("referenced_bytes").max(stored);
        Ok(Stats {
            unique_files: get("active_files") - unreferenced_files,
            stored_bytes: stored,
            total_references: get("live_refs"),
            referenced_bytes: referenced,
            deduplication_ratio: if stored > 0 {
                referenced as f64 / stored as f64
            } else {
                1.0
            },
            bytes_saved: referenced - stored,
            unreferenced_files,
            unreferenced_bytes,
            pending_uploads: Some(get("pending")),
            deleting: Some(get("deleting")),
        })
    }
}
