//! The reconciler's pass: finishes what crashes, lost events and abandoned sessions left
//! behind. Driven by the sparse work index (records carry their due time there, spread over
//! `WORK_SHARDS` partitions), then a slice of a sweep of the blob store for orphans; each
//! item goes to the service whose record it is.
//!
//! A pass costs what its budget allows, never what is stored: it reads only due items, in
//! pages taken in turn from each shard (so a flood in one kind or one shard cannot starve
//! the rest), and the sweep resumes from a persisted cursor.

use std::time::Instant;

use super::Dedup;
use crate::domain::{ContentHash, ReconcileReport, SweepCursor};
use crate::error::DedupError;
use crate::ports::{BlobStore, IndexName, ObjectMeta, Query, TransactionalIndex};
use crate::protocol::codec::{expect_of, Versioned};
use crate::protocol::keys;

/// Due items read from one shard at a time, before the next shard's turn.
const SHARD_PAGE: usize = 25;
/// Due items counted per shard for the backlog figure.
const BACKLOG_COUNT: usize = 100;

/// What saving the sweep cursor left stored.
enum CursorSave {
    /// The cursor as stored now (`None`: never saved, and nothing to save).
    Stored(Option<Versioned<SweepCursor>>),
    /// A concurrent pass saved first.
    Lost,
}

impl<B: BlobStore, I: TransactionalIndex> Dedup<B, I> {
    /// One pass, within `cfg.reconcile`'s budget.
    pub async fn reconcile(&self) -> Result<ReconcileReport, DedupError> {
        let started = Instant::now();
        let mut report = ReconcileReport::default();
        self.work_due(started, &mut report).await?;
        self.backlog(&mut report).await?;
        self.sweep_orphans(started, &mut report).await?;
        Ok(report)
    }

    fn due_query(&self, pk: &str, after: Option<String>, limit: usize) -> Query {
        Query {
            index: IndexName::Work,
            pk: pk.to_owned(),
            sk_prefix: String::new(),
            after,
            upto: Some(format!("{}~", keys::work_due_prefix(self.audio.core.now()))),
            limit,
        }
    }

    /// Due items, a page from each shard in turn, until none is due or the budget is spent.
    /// Each shard is read forward from where its last page ended, so an item that stays due
    /// (its step failed) is not looked at again this pass and cannot hide the ones after it.
    async fn work_due(
        &self,
        started: Instant,
        report: &mut ReconcileReport,
    ) -> Result<(), DedupError> {
        let budget = &self.audio.core.cfg.reconcile;
        let shards = keys::work_partitions();
        let mut after: Vec<Option<String>> = vec![None; shards.len()];
        let mut drained = vec![false; shards.len()];
        while drained.iter().any(|d| !d) {
            for (i, pk) in shards.iter().enumerate() {
                if drained[i] {
                    continue;
                }
                if report.work_items as usize >= budget.work_items
                    || started.elapsed() >= budget.time
                {
                    return Ok(());
                }
                let q = self.due_query(pk, after[i].clone(), SHARD_PAGE);
                let items = self.audio.core.index.query(&q).await?;
                if items.len() < SHARD_PAGE {
                    drained[i] = true;
                }
                after[i] = items
                    .last()
                    .and_then(|i| i.work_key.as_ref())
                    .map(|w| w.sk.clone())
                    .or(after[i].take());
                for item in items {
                    report.work_items += 1;
                    if let Err(e) = self
                        .reconcile_item(&item.key.pk, &item.key.sk, report)
                        .await
                    {
                        tracing::warn!(key = %item.key, error = %e, "reconcile step failed; will retry next run");
                    }
                }
            }
        }
        Ok(())
    }

    /// What is still due after the pass: a bounded count, and the oldest due time.
    async fn backlog(&self, report: &mut ReconcileReport) -> Result<(), DedupError> {
        let core = &self.audio.core;
        let now = core.now();
        let mut oldest: Option<i64> = None;
        for pk in keys::work_partitions() {
            let items = core
                .index
                .query(&self.due_query(&pk, None, BACKLOG_COUNT))
                .await?;
            report.due_left += items.len() as u64;
            let first_due = items
                .first()
                .and_then(|i| i.work_key.as_ref())
                .and_then(|w| keys::due_of_work_sk(&w.sk));
            if let Some(due) = first_due {
                oldest = Some(oldest.map_or(due, |o| o.min(due)));
            }
        }
        report.oldest_due_age_seconds = oldest.map_or(0, |due| ((now - due).max(0) / 1000) as u64);
        Ok(())
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

    /// The next slice of the blob store: every object goes to the service whose key space it
    /// is in. Resumes from the cursor the last pass saved; at the end of the key space the
    /// cycle is complete and the next pass starts over.
    ///
    /// Progress is saved after every page, so a pass that stops early (its time budget, a
    /// failed listing) leaves the next one where it got to. An object whose step fails is
    /// logged and skipped: it is looked at again in the next cycle, and cannot stop every
    /// pass at the same place.
    async fn sweep_orphans(
        &self,
        started: Instant,
        report: &mut ReconcileReport,
    ) -> Result<(), DedupError> {
        let core = &self.audio.core;
        let budget = &core.cfg.reconcile;
        let mut saved = core.load::<SweepCursor>(&keys::sweep_cursor()).await?;
        let mut cursor = saved.as_ref().map(|c| c.value.clone()).unwrap_or_default();
        if cursor.after.is_none() {
            cursor.cycle_started_at = core.now();
        }
        for _ in 0..budget.sweep_pages {
            if started.elapsed() >= budget.time {
                break;
            }
            let page = core
                .blobs
                .list(cursor.after.as_deref(), budget.sweep_page_size)
                .await?;
            report.objects_swept += page.objects.len() as u64;
            for meta in &page.objects {
                self.sweep_one(meta, report).await;
            }
            cursor.after = page.next;
            match self.save_sweep_cursor(saved.as_ref(), &cursor).await? {
                CursorSave::Stored(now_saved) => saved = now_saved,
                // A concurrent pass saved first: it owns the sweep; this one's slice is
                // simply swept again.
                CursorSave::Lost => break,
            }
            if cursor.after.is_none() {
                report.sweep_cycle_completed = true;
                break;
            }
        }
        Ok(())
    }

    /// One listed object, to the service whose key space it is in. Failures are logged.
    async fn sweep_one(&self, meta: &ObjectMeta, report: &mut ReconcileReport) {
        let core = &self.audio.core;
        if let Some(id) = keys::message_from_snapshot_key(&core.cfg.key_prefix, &meta.key) {
            match self.chat.sweep_snapshot(&id, meta).await {
                Ok(true) => report.orphans_deleted += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(key = %meta.key, error = %e, "snapshot sweep step failed; skipped")
                }
            }
            return;
        }
        if let Some(hash) = keys::hash_from_blob_key(&core.cfg.key_prefix, &meta.key) {
            if let Err(e) = self.audio.sweep_object(&hash, meta, report).await {
                tracing::warn!(key = %meta.key, error = %e, "orphan sweep step failed; skipped");
            }
        }
    }

    /// Saves the sweep cursor over `saved`. Unchanged (the whole key space fits in one
    /// page): nothing to write, so a store at rest stays at rest.
    async fn save_sweep_cursor(
        &self,
        saved: Option<&Versioned<SweepCursor>>,
        cursor: &SweepCursor,
    ) -> Result<CursorSave, DedupError> {
        let core = &self.audio.core;
        if saved.map(|c| &c.value.after).unwrap_or(&None) == &cursor.after {
            return Ok(CursorSave::Stored(saved.cloned()));
        }
        let mut txn = core.txn();
        txn.put(keys::sweep_cursor(), cursor, expect_of(saved))?;
        if !core.commit(txn).await? {
            return Ok(CursorSave::Lost);
        }
        Ok(CursorSave::Stored(Some(Versioned {
            value: cursor.clone(),
            version: saved.map_or(1, |s| s.version + 1),
        })))
    }
}
