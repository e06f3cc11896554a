//! The reconciler: finishes what crashes, lost events and abandoned sessions left behind.
//! Driven by the sparse work index (records carry their due time there), then a sweep of
//! the blob store for orphans. Every step is one of the idempotent flows the API uses.

use super::events::Adoption;
use super::{keys, Dedup, Step};
use crate::domain::{
    AudioRecord, AudioState, ContentHash, EntryState, MessageRecord, ReconcileReport,
    SessionRecord, SessionState, SnapshotStore,
};
use crate::error::DedupError;
use crate::ports::{BlobStore, Expect, IndexName, Query, TransactionalIndex};

/// The sweep's fence on one snapshot object version (see `sweep_snapshot`).
#[derive(serde::Serialize)]
struct FenceRecord {
    at: crate::domain::Millis,
}

const BATCH: usize = 100;
const MAX_BATCHES: usize = 1000;
const MAX_SWEEP_PAGES: usize = 10_000;

impl<B: BlobStore, I: TransactionalIndex> Dedup<B, I> {
    /// One full pass. Bounded: at most `MAX_BATCHES` work batches and `MAX_SWEEP_PAGES` pages.
    pub async fn reconcile(&self) -> Result<ReconcileReport, DedupError> {
        let mut report = ReconcileReport::default();
        let mut seen_stuck = std::collections::HashSet::new();
        for _ in 0..MAX_BATCHES {
            let now = self.now();
            let q = Query {
                index: IndexName::Work,
                pk: keys::WORK_PK.into(),
                sk_prefix: String::new(),
                after: None,
                upto: Some(format!("{}~", keys::work_due_prefix(now))),
                limit: BATCH,
            };
            let items = self.index.query(&q).await?;
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
            self.purge_snapshot(&id).await?;
            report.snapshots_purged += 1;
            return Ok(());
        }
        let Some(hash) = pk
            .strip_prefix("AUDIO#")
            .and_then(|h| h.parse::<ContentHash>().ok())
        else {
            return Ok(());
        };
        if sk == "META" {
            let Some(p) = self.load_audio(&hash).await? else {
                return Ok(());
            };
            let due = p.value.due_at.is_some_and(|d| d <= self.now());
            match p.value.state {
                AudioState::Deleting => {
                    self.finish_deletion(&hash).await?;
                    report.deletions_finished += 1;
                }
                AudioState::PendingUpload if due => {
                    self.resolve_pending(&hash).await?;
                    report.pending_resolved += 1;
                }
                AudioState::Active
                    if p.value.refs == 0
                        && due
                        && self.cas(|| self.expire_unreferenced_step(&hash)).await? =>
                {
                    self.finish_deletion(&hash).await?;
                    report.unreferenced_deleted += 1;
                }
                _ => {}
            }
        } else if let Some(id) = sk.strip_prefix("SESSION#").and_then(|i| i.parse().ok()) {
            let key = keys::session(&hash, &id);
            if let Some(s) = self.load::<SessionRecord>(&key).await? {
                let over = s.value.expires_at + super::ms(self.cfg.session_slack) <= self.now();
                if s.value.state == SessionState::Open && over {
                    let mut e = s.value.clone();
                    e.state = SessionState::Expired;
                    let mut txn = self.txn();
                    txn.put_session(&e, s.expect())?;
                    if self.commit(txn).await? {
                        report.sessions_expired += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// A pending claim whose lease ran out: adopt the object if one landed, else drop it.
    async fn resolve_pending(&self, hash: &ContentHash) -> Result<(), DedupError> {
        if let Some(meta) = self.blobs.head(&self.blob_key(hash)).await? {
            self.adopt_object(hash, &meta).await?;
            return Ok(());
        }
        self.cas(|| self.drop_pending_step(hash)).await
    }

    async fn drop_pending_step(&self, hash: &ContentHash) -> Result<Step<()>, DedupError> {
        let Some(p) = self.load_audio(hash).await? else {
            return Ok(Step::Done(()));
        };
        if p.value.state != AudioState::PendingUpload
            || p.value.due_at.is_some_and(|d| d > self.now())
        {
            return Ok(Step::Done(()));
        }
        let a = AudioRecord {
            state: AudioState::Gone,
            due_at: None,
            updated_at: self.now(),
            ..p.value.clone()
        };
        let mut txn = self.txn();
        txn.stats
            .transition(Some((AudioState::PendingUpload, 0)), (AudioState::Gone, 0));
        txn.put_audio(&a, Some(&p))?;
        Ok(if self.commit(txn).await? {
            Step::Done(())
        } else {
            Step::Lost
        })
    }

    async fn expire_unreferenced_step(&self, hash: &ContentHash) -> Result<Step<bool>, DedupError> {
        let Some(p) = self.load_audio(hash).await? else {
            return Ok(Step::Done(false));
        };
        let due = p.value.due_at.is_some_and(|d| d <= self.now());
        if p.value.state != AudioState::Active || p.value.refs != 0 || !due {
            return Ok(Step::Done(false));
        }
        let a = AudioRecord {
            state: AudioState::Deleting,
            due_at: None,
            updated_at: self.now(),
            ..p.value.clone()
        };
        let mut txn = self.txn();
        txn.stats.transition(
            Some((AudioState::Active, p.value.size)),
            (AudioState::Deleting, p.value.size),
        );
        txn.put_audio(&a, Some(&p))?;
        Ok(if self.commit(txn).await? {
            Step::Done(true)
        } else {
            Step::Lost
        })
    }

    /// A snapshot object no message records: a create that failed or died after putting it.
    /// If its message exists, it never will (a message is created once): delete it. If not,
    /// wait out the grace, then fence the version in the index (conditioned on the message
    /// still being absent) before deleting, so a slow create can never commit a message
    /// that records a deleted object. A deleted message's object is purged.
    async fn sweep_snapshot(
        &self,
        id: &crate::domain::MessageId,
        meta: &crate::ports::ObjectMeta,
    ) -> Result<bool, DedupError> {
        let m = self.load::<MessageRecord>(&keys::message(id)).await?;
        if let Some(m) = &m {
            let recorded = matches!(&m.value.snapshot,
                SnapshotStore::Blob { key, version } if key == &meta.key && version == &meta.version);
            if recorded {
                if m.value.state == EntryState::Live {
                    return Ok(false);
                }
                self.purge_snapshot(id).await?;
                return Ok(true);
            }
        } else {
            if self.now() - meta.last_modified < super::ms(self.cfg.snapshot_grace) {
                return Ok(false);
            }
            let fence = keys::snapshot_fence(id, &meta.version);
            if self.index.get(&fence).await?.is_none() {
                let mut txn = self.txn();
                txn.check(keys::message(id), Expect::Absent);
                txn.put(fence, &FenceRecord { at: self.now() }, Expect::Absent)?;
                if !self.commit(txn).await? {
                    return Ok(false); // a create committed, or another sweep fenced it
                }
            }
        }
        self.blobs.delete_version(&meta.key, &meta.version).await?;
        Ok(true)
    }

    /// Objects the index does not account for (a crash after the put, a lost event, a slow
    /// PUT after its session expired) are adopted or deleted.
    async fn sweep_orphans(&self, report: &mut ReconcileReport) -> Result<(), DedupError> {
        let mut after: Option<String> = None;
        for _ in 0..MAX_SWEEP_PAGES {
            let page = self.blobs.list(after.as_deref(), BATCH).await?;
            for meta in &page.objects {
                if let Some(id) = keys::message_from_snapshot_key(&self.cfg.key_prefix, &meta.key) {
                    match self.sweep_snapshot(&id, meta).await {
                        Ok(true) => report.orphans_deleted += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(key = %meta.key, error = %e, "snapshot sweep step failed")
                        }
                    }
                    continue;
                }
                let Some(hash) = keys::hash_from_blob_key(&self.cfg.key_prefix, &meta.key) else {
                    continue;
                };
                let accounted = self.load_audio(&hash).await?.is_some_and(|p| {
                    p.value.state == AudioState::Active
                        && p.value.blob_version.as_deref() == Some(meta.version.as_str())
                });
                if accounted {
                    continue;
                }
                match self.adopt_object(&hash, meta).await {
                    Ok(Adoption::Deleted) => report.orphans_deleted += 1,
                    Ok(Adoption::Activated) => report.activated += 1,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%hash, error = %e, "orphan sweep step failed"),
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
