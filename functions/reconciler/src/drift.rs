//! Drift between the table and the bucket: a live audio record whose object version is gone
//! (deleted by hand in the console, a bucket rule, a point-in-time restore of the table to a
//! time before a deletion). Nothing else notices it: the sweep lists what the bucket holds,
//! so it finds objects without records, never records without objects.
//!
//! The index has no scan, so records are not enumerated. Each pass keeps a bounded sample of
//! (content, version) pairs taken from the bucket's listing (`NEW_PER_PASS` more each pass,
//! resuming where the last pass stopped) in one item (`RECONCILE/DRIFT`), and re-checks
//! `CHECKS_PER_PASS` of them: is the record still active at that version, and is that exact
//! version still the object under its key (a HEAD)? A record that moved on (deleted, gone)
//! leaves the sample; a missing object is reported every pass until it is repaired, so its
//! alarm stays on. The sample lives in the table, so a restored table brings back the sample
//! of its time, and records deleted since then are among those found missing.
//!
//! Cost follows the sample, never the store: per pass one item read and write, at most
//! `CHECKS_PER_PASS` record reads and HEADs (two record reads for a missing one), one LIST.

use std::collections::VecDeque;

use audio_dedup_core::ports::{BlobStore, Expect, Item, Key, TransactionalIndex, WriteOp};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::{AudioRecord, AudioState, ContentHash, Dedup, DedupError, StoreError};
use serde::{Deserialize, Serialize};

/// Pairs kept in the sample (about 110 bytes each in the item).
pub const SAMPLE_CAPACITY: usize = 64;
/// Pairs re-checked per pass: each is looked at again about every `64 / 8` passes.
pub const CHECKS_PER_PASS: usize = 8;
/// Objects taken from the listing per pass (one LIST request).
pub const NEW_PER_PASS: usize = 2;

/// What one drift check found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DriftCheck {
    /// Sampled records looked at this pass.
    pub checked: u64,
    /// Of those, live records whose exact object version is gone.
    pub missing: u64,
    /// Pairs added to the sample from the listing.
    pub sampled: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    hash: ContentHash,
    version: String,
    #[serde(default)]
    missing: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Sample {
    /// Where the next listing resumes (`None`: from the start).
    after: Option<String>,
    entries: VecDeque<Entry>,
}

fn sample_key() -> Key {
    Key::new("RECONCILE", "DRIFT")
}

enum Verdict {
    Present,
    Missing,
    /// The record no longer holds this version (deleted, or gone): not drift.
    MovedOn,
}

async fn live_at<B: BlobStore, I: TransactionalIndex>(
    dedup: &Dedup<B, I>,
    e: &Entry,
) -> Result<bool, DedupError> {
    let Some(item) = dedup.index().get(&keys::audio(&e.hash)).await? else {
        return Ok(false);
    };
    let rec: AudioRecord = serde_json::from_str(&item.body).map_err(|err| StoreError::Corrupt {
        key: item.key.to_string(),
        reason: err.to_string(),
    })?;
    Ok(rec.state() == AudioState::Active && rec.blob_version() == Some(e.version.as_str()))
}

async fn check_one<B: BlobStore, I: TransactionalIndex>(
    dedup: &Dedup<B, I>,
    e: &Entry,
) -> Result<Verdict, DedupError> {
    if !live_at(dedup, e).await? {
        return Ok(Verdict::MovedOn);
    }
    let key = keys::blob_key(&dedup.config().key_prefix, &e.hash);
    if let Some(meta) = dedup.blobs().head(&key).await? {
        if meta.version == e.version {
            return Ok(Verdict::Present);
        }
    }
    // A deletion may have run between the read and the HEAD: only a record still live at
    // this version after the HEAD is drift.
    Ok(if live_at(dedup, e).await? {
        Verdict::Missing
    } else {
        Verdict::MovedOn
    })
}

/// One bounded drift check (see the module's documentation). A concurrent pass that saved
/// the sample first wins; this one's findings are still reported.
pub async fn check_drift<B: BlobStore, I: TransactionalIndex>(
    dedup: &Dedup<B, I>,
) -> Result<DriftCheck, DedupError> {
    let stored = dedup.index().get(&sample_key()).await?;
    let mut sample: Sample = match &stored {
        // An unreadable sample (an older layout) is started afresh rather than failing passes.
        Some(item) => serde_json::from_str(&item.body).unwrap_or_default(),
        None => Sample::default(),
    };
    let mut out = DriftCheck::default();
    let mut checked = VecDeque::new();
    for _ in 0..CHECKS_PER_PASS.min(sample.entries.len()) {
        let Some(mut e) = sample.entries.pop_front() else {
            break;
        };
        out.checked += 1;
        match check_one(dedup, &e).await? {
            Verdict::Present => {
                e.missing = false;
                checked.push_back(e);
            }
            Verdict::Missing => {
                out.missing += 1;
                tracing::warn!(hash = %e.hash, version = %e.version, "drift: a live record's object version is missing");
                e.missing = true;
                checked.push_back(e);
            }
            Verdict::MovedOn => {}
        }
    }
    let prefix = &dedup.config().key_prefix;
    let page = dedup
        .blobs()
        .list(sample.after.as_deref(), NEW_PER_PASS)
        .await?;
    let mut fresh = Vec::new();
    for meta in &page.objects {
        if let Some(hash) = keys::hash_from_blob_key(prefix, &meta.key) {
            let known = |e: &Entry| e.hash == hash;
            if !sample.entries.iter().any(known) && !checked.iter().any(known) {
                fresh.push(Entry {
                    hash,
                    version: meta.version.clone(),
                    missing: false,
                });
            }
        }
    }
    sample.after = page.next;
    out.sampled = fresh.len() as u64;
    // Over capacity: the pairs just found present make room first (each has been looked at
    // at least once); missing ones stay, so their alarm stays on until repaired.
    let mut over =
        (sample.entries.len() + checked.len() + fresh.len()).saturating_sub(SAMPLE_CAPACITY);
    checked.retain(|e| {
        if over > 0 && !e.missing {
            over -= 1;
            false
        } else {
            true
        }
    });
    sample.entries.extend(checked);
    sample.entries.extend(fresh);
    while sample.entries.len() > SAMPLE_CAPACITY {
        sample.entries.pop_front();
    }
    save(dedup, &sample, stored.as_ref()).await?;
    Ok(out)
}

async fn save<B: BlobStore, I: TransactionalIndex>(
    dedup: &Dedup<B, I>,
    sample: &Sample,
    stored: Option<&Item>,
) -> Result<(), DedupError> {
    let body = serde_json::to_string(sample).map_err(|err| StoreError::Corrupt {
        key: sample_key().to_string(),
        reason: err.to_string(),
    })?;
    let (version, expect) = match stored {
        Some(i) => (i.version + 1, Expect::Version(i.version)),
        None => (1, Expect::Absent),
    };
    let put = WriteOp::Put {
        item: Item {
            key: sample_key(),
            version,
            body,
            work_key: None,
        },
        expect,
    };
    match dedup.index().transact(vec![put]).await {
        Ok(()) | Err(audio_dedup_core::ports::TxnError::Rejected { .. }) => Ok(()),
        Err(audio_dedup_core::ports::TxnError::Conflict) => Ok(()),
        Err(audio_dedup_core::ports::TxnError::Store(e)) => Err(e.into()),
    }
}
