//! The orphan sweep keeps its progress: the cursor is saved page by page (a pass that stops
//! early leaves the next one where it got to), and one object whose step fails is logged and
//! skipped rather than stopping every pass at the same place.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use audio_dedup_core::ports::{Expect, Item, ManualClock, OsEntropy, TransactionalIndex, WriteOp};
use audio_dedup_core::protocol::{keys, ReconcileBudget};
use audio_dedup_core::store::memory::{Fault, FaultHook, MemoryBlobs, MemoryIndex, Op};
use audio_dedup_core::*;
use bytes::Bytes;

/// Fails the `nth` call (1-based) of one op, and no other.
struct FailNth {
    op: Op,
    nth: u32,
    seen: AtomicU32,
}

impl FaultHook for FailNth {
    fn fault(&self, op: Op) -> Fault {
        if op == self.op && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            return Fault::FailBefore;
        }
        Fault::None
    }
}

struct Harness {
    d: Dedup<MemoryBlobs, MemoryIndex>,
    blobs: MemoryBlobs,
    index: MemoryIndex,
    clock: Arc<ManualClock>,
}

fn harness(page_size: usize, hook: Arc<dyn FaultHook>) -> Harness {
    let blobs = MemoryBlobs::new(hook.clone());
    let index = MemoryIndex::new(hook);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let cfg = DedupConfig {
        reconcile: ReconcileBudget {
            sweep_pages: 10,
            sweep_page_size: page_size,
            ..ReconcileBudget::default()
        },
        ..DedupConfig::default()
    };
    let d = Dedup::with_env(
        blobs.clone(),
        index.clone(),
        cfg,
        clock.clone(),
        Arc::new(OsEntropy),
    );
    Harness {
        d,
        blobs,
        index,
        clock,
    }
}

/// `n` orphan objects (no record claims them), in listing order: their keys.
fn orphans(h: &Harness, n: usize) -> Vec<String> {
    let mut keys: Vec<String> = (0..n)
        .map(|i| {
            let bytes = Bytes::from(format!("orphan {i}"));
            let key = keys::blob_key("", &ContentHash::of(&bytes));
            h.blobs.client_put(&key, bytes, "direct");
            key
        })
        .collect();
    keys.sort();
    keys
}

async fn saved_cursor(h: &Harness) -> Option<SweepCursor> {
    let item = h.index.get(&keys::sweep_cursor()).await.unwrap()?;
    Some(serde_json::from_str(&item.body).unwrap())
}

#[tokio::test]
async fn a_pass_that_stops_early_keeps_the_pages_it_swept() {
    // Pages of one object; the third listing fails (an unreachable store), ending the pass.
    let h = harness(
        1,
        Arc::new(FailNth {
            op: Op::BlobList,
            nth: 3,
            seen: AtomicU32::new(0),
        }),
    );
    let keys = orphans(&h, 5);
    h.clock.advance(Duration::from_secs(2 * 24 * 3600));
    assert!(
        h.d.reconcile().await.is_err(),
        "the failed listing ends the pass"
    );
    let cursor = saved_cursor(&h)
        .await
        .expect("progress saved before the failure");
    assert_eq!(cursor.after.as_deref(), Some(keys[1].as_str()));
    // The next pass resumes after the two pages swept, and finishes the cycle.
    let report = h.d.reconcile().await.unwrap();
    assert_eq!(report.objects_swept, 3);
    assert!(report.sweep_cycle_completed);
    assert!(h.blobs.objects().is_empty(), "every orphan deleted");
}

#[tokio::test]
async fn one_failing_object_is_skipped_not_the_end_of_every_pass() {
    let h = harness(
        100,
        Arc::new(FailNth {
            op: Op::BlobList,
            nth: 0,
            seen: AtomicU32::new(0),
        }),
    );
    let keys = orphans(&h, 3);
    // The first object listed has a record nobody can read: its step fails every time.
    let first = keys::hash_from_blob_key("", &keys[0]).unwrap();
    h.index
        .transact(vec![WriteOp::Put {
            item: Item {
                key: keys::audio(&first),
                version: 1,
                body: "not a record".into(),
                work_key: None,
            },
            expect: Expect::Absent,
        }])
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(2 * 24 * 3600));
    let report =
        h.d.reconcile()
            .await
            .expect("the pass goes on past the bad object");
    assert_eq!(report.objects_swept, 3);
    assert_eq!(report.orphans_deleted, 2);
    assert!(report.sweep_cycle_completed);
    let left: Vec<String> = h.blobs.objects().into_iter().map(|(m, _)| m.key).collect();
    assert_eq!(
        left,
        vec![keys[0].clone()],
        "only the failing object is left"
    );
}
