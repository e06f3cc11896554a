//! The reconciler's pass: finishes what crashes, lost events and abandoned sessions left
//! behind. Driven by the sparse work index (records carry their due time there), then a
//! sweep of the blob store for orphans; each item goes to the service whose record it is.

use super::{keys, Dedup};
use crate::domain::{ContentHash, ReconcileReport};
use crate::error::DedupError;
use crate::ports::{BlobStore, IndexName, Query, TransactionalIndex};

const BATCH: usize = 100;
const MAX_BATCHES: usize = 1000;
const MAX_SWEEP_PAGES: usize = 10_000;

impl<B: BlobStore, I: TransactionalIndex> Dedup<B, I> {
    /// One full pass. Bounded: at most `MAX_BATCHES` work batches and `MAX_SWEEP_PAGES` pages.
    pub async fn reconcile(&self) -> Result<ReconcileReport, DedupError> {
        let core = &self.audio.core;
        let mut report = ReconcileReport::default();
        let mut seen_stuck = std::collections::HashSet::new();
        for _ in 0..MAX_BATCHES {
            let now = core.now();
            let q = Query {
                index: IndexName::Work,
                pk: keys::WORK_PK.into(),
                sk_prefix: String::new(),
                after: None,
                upto: Some(format!("{}~", keys::work_due_prefix(now))),
                limit: BATCH,
            };
            let items = core.index.query(&q).await?;
            let fresh: Vec<_> = items
                .into_iter()
                .filter(|i| seen_stuck.insert((i.key.clone(), i.version)))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for item in fresh {
                if let Err(e) = self
                    .reconcile_item(&item.key.pk, &item.key.sk, &mut report)
                    .await
                {
                    tracing::warn!(key = %item.key, error = %e, "reconcile step failed; will retry next run");
                }
            }
        }
        self.sweep_orphans(&mut report).await?;
        Ok(report)
    }

    async fn reconcile_item(
        &self,
        pk: &str,
        sk: &str,
        report: &mut ReconcileReport,
    ) -> Result<(), DedupError> {
        if let Some(id) = pk.strip_prefix("MSG#").and_then(|i| i.parse().ok()) {
            // A deleted message whose snapshot object the delete did not get to.
            self.chat.purge_snapshot(&id).await?;
            report.snapshots_purged += 1;
            return Ok(());
        }
        match pk
            .strip_prefix("AUDIO#")
            .and_then(|h| h.parse::<ContentHash>().ok())
        {
            Some(hash) => self.audio.reconcile_item(&hash, sk, report).await,
            None => Ok(()),
        }
    }

    /// Every object in the blob store goes to the service whose key space it is in.
    async fn sweep_orphans(&self, report: &mut ReconcileReport) -> Result<(), DedupError> {
        let core = &self.audio.core;
        let mut after: Option<String> = None;
        for _ in 0..MAX_SWEEP_PAGES {
            let page = core.blobs.list(after.as_deref(), BATCH).await?;
            for meta in &page.objects {
                if let Some(id) = keys::message_from_snapshot_key(&core.cfg.key_prefix, &meta.key) {
                    match self.chat.sweep_snapshot(&id, meta).await {
                        Ok(true) => report.orphans_deleted += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(key = %meta.key, error = %e, "snapshot sweep step failed")
                        }
                    }
                    continue;
                }
                if let Some(hash) = keys::hash_from_blob_key(&core.cfg.key_prefix, &meta.key) {
                    self.audio.sweep_object(&hash, meta, report).await?;
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(())
    }
}
