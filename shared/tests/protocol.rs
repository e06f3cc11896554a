//! The protocol over the in-memory store: every flow, every race the docs name, and the
//! invariants after each.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use audio_dedup_core::audio::{proof_for, CompleteRequest, DirectUpload, SessionRequest};
use audio_dedup_core::ports::{BlobEvent, ManualClock, OsEntropy};
use audio_dedup_core::protocol::invariants;
use audio_dedup_core::protocol::keys;
use audio_dedup_core::store::memory::{Fault, FaultHook, MemoryBlobs, MemoryIndex, Op};
use audio_dedup_core::*;
use bytes::Bytes;

type D = Dedup<MemoryBlobs, MemoryIndex>;

struct Harness {
    d: Arc<D>,
    blobs: MemoryBlobs,
    index: MemoryIndex,
    clock: Arc<ManualClock>,
}

fn harness_with(cfg: DedupConfig, hook: Arc<dyn FaultHook>) -> Harness {
    let blobs = MemoryBlobs::new(hook.clone());
    let index = MemoryIndex::new(hook);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let d = Dedup::with_env(
        blobs.clone(),
        index.clone(),
        cfg,
        clock.clone(),
        Arc::new(OsEntropy),
    );
    Harness {
        d: Arc::new(d),
        blobs,
        index,
        clock,
    }
}

fn harness() -> Harness {
    harness_with(DedupConfig::default(), Arc::new(NoFault))
}

struct NoFault;
impl FaultHook for NoFault {
    fn fault(&self, _: Op) -> Fault {
        Fault::None
    }
}

/// Fails the next `n` calls of one op in the given way.
struct FailNext {
    op: Op,
    fault: Fault,
    left: AtomicU32,
}
impl FaultHook for FailNext {
    fn fault(&self, op: Op) -> Fault {
        if op == self.op && self.left.load(Ordering::SeqCst) > 0 {
            self.left.fetch_sub(1, Ordering::SeqCst);
            return self.fault;
        }
        Fault::None
    }
}

impl Harness {
    fn check(&self) {
        let bad = invariants::safety(
            &self.index.dump(),
            &self
                .blobs
                .objects()
                .into_iter()
                .map(|(m, _)| m)
                .collect::<Vec<_>>(),
            &self.index.counter_totals(keys::STATS_PK),
            "",
        );
        assert!(bad.is_empty(), "invariants broken: {bad:#?}");
    }

    fn settled(&self) {
        let bad = invariants::settled(
            &self.index.dump(),
            &self
                .blobs
                .objects()
                .into_iter()
                .map(|(m, _)| m)
                .collect::<Vec<_>>(),
            "",
        );
        assert!(bad.is_empty(), "not settled: {bad:#?}");
    }

    async fn upload(
        &self,
        owner: &str,
        bytes: &[u8],
        reference: Option<&str>,
    ) -> Result<UploadResult, DedupError> {
        self.d
            .audio()
            .upload_direct(DirectUpload {
                owner: user(owner),
                format: AudioFormat::Mp3,
                hash: ContentHash::of(bytes),
                size: bytes.len() as u64,
                body: audio_dedup_core::ports::BlobBody::Bytes(Bytes::copy_from_slice(bytes)),
                reference: reference.map(|r| PendingReference {
                    kind: ReferenceKind::Message,
                    ref_id: rid(r),
                }),
            })
            .await
    }

    async fn deliver_events(&self) {
        for e in self.blobs.take_events() {
            self.d.audio().on_blob_event(&e).await.unwrap();
        }
    }

    fn object_count(&self) -> usize {
        self.blobs.objects().len()
    }
}

fn user(s: &str) -> UserId {
    s.parse().unwrap()
}
fn rid(s: &str) -> ReferenceId {
    s.parse().unwrap()
}

#[tokio::test]
async fn same_content_twice_is_stored_once() {
    let h = harness();
    let a = h.upload("alice", b"song one", Some("m1")).await.unwrap();
    assert!(!a.deduplicated);
    assert_eq!(a.state, AudioState::Active);
    let b = h.upload("bob", b"song one", Some("m2")).await.unwrap();
    assert!(b.deduplicated);
    assert_eq!(h.object_count(), 1);
    let s = h.d.audio().stats().await.unwrap();
    assert_eq!(
        (
            s.unique_files,
            s.stored_bytes,
            s.total_references,
            s.referenced_bytes
        ),
        (1, 8, 2, 16)
    );
    assert_eq!(s.deduplication_ratio, 2.0);
    assert_eq!(s.bytes_saved, 8);
    h.check();
}

#[tokio::test]
async fn last_reference_removed_deletes_at_once_and_retries_are_noops() {
    let h = harness();
    let hash = ContentHash::of(b"x1");
    h.upload("alice", b"x1", Some("m1")).await.unwrap();
    h.d.audio()
        .add_reference(&user("alice"), &hash, &rid("lib1"), ReferenceKind::Library)
        .await
        .unwrap();
    // Same add again: same answer, no second count.
    let again =
        h.d.audio()
            .add_reference(&user("alice"), &hash, &rid("lib1"), ReferenceKind::Library)
            .await
            .unwrap();
    assert_eq!(again.ref_id.as_str(), "lib1");
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 2);
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("m1"))
        .await
        .unwrap();
    assert_eq!(h.object_count(), 1);
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("lib1"))
        .await
        .unwrap();
    assert_eq!(h.object_count(), 0, "aggressive deletion");
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("lib1"))
        .await
        .unwrap();
    // A late retried add of a removed reference cannot resurrect it.
    let late =
        h.d.audio()
            .add_reference(&user("alice"), &hash, &rid("lib1"), ReferenceKind::Library)
            .await;
    assert!(late.is_err());
    let s = h.d.audio().stats().await.unwrap();
    assert_eq!(
        (
            s.unique_files,
            s.total_references,
            s.stored_bytes,
            s.deleting
        ),
        (0, 0, 0, Some(0))
    );
    h.check();
    h.settled();
}

#[tokio::test]
async fn references_are_per_owner_and_need_possession() {
    let h = harness();
    let hash = ContentHash::of(b"mine");
    h.upload("alice", b"mine", Some("m1")).await.unwrap();
    let e =
        h.d.audio()
            .add_reference(&user("mallory"), &hash, &rid("x"), ReferenceKind::Library)
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AudioNotFound);
    let e =
        h.d.audio()
            .remove_reference(&user("mallory"), &hash, &rid("m1"))
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ReferenceNotFound);
    let e =
        h.d.audio()
            .describe(&user("mallory"), &hash)
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AudioNotFound);
    assert!(h.d.audio().describe(&user("alice"), &hash).await.is_ok());
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 1);
    h.check();
}

#[tokio::test]
async fn session_upload_then_complete_is_idempotent_and_event_driven() {
    let h = harness();
    let bytes = Bytes::from(vec![7u8; 100_000]);
    let hash = ContentHash::of(&bytes);
    let req = SessionRequest {
        owner: user("alice"),
        hash,
        size: bytes.len() as u64,
        format: AudioFormat::Wav,
        reference: Some(PendingReference {
            kind: ReferenceKind::Message,
            ref_id: rid("m1"),
        }),
    };
    let s = h.d.audio().open_session(req).await.unwrap();
    assert_eq!(
        s.upload.as_ref().unwrap().headers["x-amz-checksum-sha256"],
        hash.to_base64()
    );
    let complete = CompleteRequest {
        owner: user("alice"),
        hash,
        session_id: s.session_id.clone(),
        proof: None,
    };
    // Nothing uploaded yet.
    assert_eq!(
        h.d.audio()
            .complete(complete.clone())
            .await
            .unwrap_err()
            .code(),
        ErrorCode::UploadRequired
    );
    h.blobs.client_put(
        &keys::blob_key("", &hash),
        bytes.clone(),
        &Uploader::Session(s.session_id.clone()).to_string(),
    );
    // The created event wins the race; complete finds it done and answers the same.
    h.deliver_events().await;
    let r1 = h.d.audio().complete(complete.clone()).await.unwrap();
    let r2 = h.d.audio().complete(complete).await.unwrap();
    assert_eq!(
        (r1.deduplicated, r1.state, r1.size),
        (false, AudioState::Active, 100_000)
    );
    assert_eq!(r1.content_hash, r2.content_hash);
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 1);
    // Another user's session for the same content cannot claim it without proof.
    let s2 =
        h.d.audio()
            .open_session(SessionRequest {
                owner: user("bob"),
                hash,
                size: 100_000,
                format: AudioFormat::Wav,
                reference: None,
            })
            .await
            .unwrap();
    let bob = CompleteRequest {
        owner: user("bob"),
        hash,
        session_id: s2.session_id.clone(),
        proof: None,
    };
    assert_eq!(
        h.d.audio().complete(bob.clone()).await.unwrap_err().code(),
        ErrorCode::UploadRequired
    );
    let wrong = CompleteRequest {
        proof: Some(Proof::new(&"00".repeat(32)).unwrap()),
        ..bob.clone()
    };
    assert_eq!(
        h.d.audio().complete(wrong).await.unwrap_err().code(),
        ErrorCode::UploadRequired
    );
    let chunks: Vec<&[u8]> = s2
        .challenge
        .ranges
        .iter()
        .map(|r| &bytes[r.offset as usize..(r.offset + r.length) as usize])
        .collect();
    let proof = proof_for(&s2.challenge.nonce, chunks);
    let ok =
        h.d.audio()
            .complete(CompleteRequest {
                proof: Some(Proof::new(&proof).unwrap()),
                ..bob
            })
            .await
            .unwrap();
    assert!(ok.deduplicated);
    assert!(h.d.audio().describe(&user("bob"), &hash).await.is_ok());
    assert_eq!(h.object_count(), 1);
    h.check();
}

/// A correct proof after the session's `expires_at` is refused (410), even before the
/// reconciler has marked the session expired, and grants nothing.
#[tokio::test]
async fn a_proof_after_the_session_expired_is_refused() {
    let h = harness();
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let hash = h.upload("alice", &bytes, None).await.unwrap().content_hash;
    let s =
        h.d.audio()
            .open_session(SessionRequest {
                owner: user("bob"),
                hash,
                size: 100_000,
                format: AudioFormat::Mp3,
                reference: None,
            })
            .await
            .unwrap();
    let chunks: Vec<&[u8]> = s
        .challenge
        .ranges
        .iter()
        .map(|r| &bytes[r.offset as usize..(r.offset + r.length) as usize])
        .collect();
    let proof = proof_for(&s.challenge.nonce, chunks);
    h.clock
        .advance(DedupConfig::default().session_ttl + Duration::from_secs(1));
    let e =
        h.d.audio()
            .complete(CompleteRequest {
                owner: user("bob"),
                hash,
                session_id: s.session_id.clone(),
                proof: Some(Proof::new(&proof).unwrap()),
            })
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SessionExpired);
    assert_eq!(
        h.d.audio()
            .describe(&user("bob"), &hash)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::AudioNotFound
    );
    h.check();
}

#[tokio::test]
async fn a_proof_for_absent_content_answers_like_a_wrong_proof() {
    let h = harness();
    let hash = ContentHash::of(b"never uploaded");
    let s =
        h.d.audio()
            .open_session(SessionRequest {
                owner: user("eve"),
                hash,
                size: 14,
                format: AudioFormat::Mp3,
                reference: None,
            })
            .await
            .unwrap();
    let e =
        h.d.audio()
            .complete(CompleteRequest {
                owner: user("eve"),
                hash,
                session_id: s.session_id,
                proof: Some(Proof::new(&"ab".repeat(32)).unwrap()),
            })
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::UploadRequired);
    h.check();
}

#[tokio::test]
async fn crash_between_index_write_and_blob_delete_is_finished_by_the_reconciler() {
    let hook = Arc::new(FailNext {
        op: Op::BlobDelete,
        fault: Fault::FailBefore,
        left: AtomicU32::new(1),
    });
    let h = harness_with(DedupConfig::default(), hook);
    let hash = ContentHash::of(b"doomed");
    h.upload("alice", b"doomed", Some("m1")).await.unwrap();
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("m1"))
        .await
        .unwrap();
    assert_eq!(h.object_count(), 1, "blob delete failed");
    assert_eq!(h.d.audio().stats().await.unwrap().deleting, Some(1));
    // A new reference cannot land on content being deleted.
    let e =
        h.d.audio()
            .add_reference(&user("alice"), &hash, &rid("m2"), ReferenceKind::Message)
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AudioNotActive);
    h.check();
    let report = h.d.reconcile().await.unwrap();
    assert_eq!(report.deletions_finished, 1);
    assert_eq!(h.object_count(), 0);
    h.check();
    h.settled();
}

#[tokio::test]
async fn reupload_while_deleting_finishes_the_old_deletion_first() {
    let hook = Arc::new(FailNext {
        op: Op::BlobDelete,
        fault: Fault::LoseResponse,
        left: AtomicU32::new(1),
    });
    let h = harness_with(DedupConfig::default(), hook);
    let hash = ContentHash::of(b"again");
    h.upload("alice", b"again", Some("m1")).await.unwrap();
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("m1"))
        .await
        .unwrap();
    let r = h.upload("bob", b"again", Some("m9")).await.unwrap();
    assert!(
        !r.deduplicated,
        "the old object was deleted; this is a new upload"
    );
    assert_eq!(h.object_count(), 1);
    // Late events about the old version change nothing.
    h.deliver_events().await;
    assert_eq!(h.object_count(), 1);
    assert!(h.d.audio().describe(&user("bob"), &hash).await.is_ok());
    assert_eq!(
        h.d.audio()
            .describe(&user("alice"), &hash)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::AudioNotFound,
        "old generation's grant"
    );
    h.check();
}

#[tokio::test]
async fn duplicate_and_stale_events_are_noops() {
    let h = harness();
    let hash = ContentHash::of(b"evt");
    h.upload("alice", b"evt", Some("m1")).await.unwrap();
    let events = h.blobs.take_events();
    for e in events.iter().chain(events.iter()) {
        h.d.audio().on_blob_event(e).await.unwrap();
    }
    h.d.audio()
        .on_blob_event(&BlobEvent::Removed {
            key: keys::blob_key("", &hash),
            version: "v-old".into(),
            sequencer: "0".into(),
        })
        .await
        .unwrap();
    h.d.audio()
        .on_blob_event(&BlobEvent::Created {
            key: "someone/else".into(),
            version: "v".into(),
            sequencer: "0".into(),
        })
        .await
        .unwrap();
    assert_eq!(h.object_count(), 1);
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 1);
    h.check();
}

#[tokio::test]
async fn orphans_and_abandoned_sessions_are_cleaned() {
    let h = harness();
    // An object nobody claims (a crash after the put, with the claim long gone).
    let orphan = Bytes::from_static(b"orphan");
    h.blobs.client_put(
        &keys::blob_key("", &ContentHash::of(&orphan)),
        orphan,
        "direct",
    );
    // A session opened and never used.
    let hash = ContentHash::of(b"abandoned");
    h.d.audio()
        .open_session(SessionRequest {
            owner: user("a"),
            hash,
            size: 9,
            format: AudioFormat::Mp3,
            reference: None,
        })
        .await
        .unwrap();
    // Uploaded content nobody ever referenced.
    h.upload("alice", b"unreferenced", None).await.unwrap();
    h.check();
    h.clock.advance(Duration::from_secs(2 * 24 * 3600));
    let report = h.d.reconcile().await.unwrap();
    assert_eq!(report.orphans_deleted, 1);
    assert_eq!(report.sessions_expired, 1);
    assert_eq!(report.unreferenced_deleted, 1);
    h.check();
    h.settled();
}

#[tokio::test]
async fn grace_period_delays_deletion_and_a_new_reference_revives() {
    let cfg = DedupConfig {
        deletion_grace: Duration::from_secs(60),
        ..DedupConfig::default()
    };
    let h = harness_with(cfg, Arc::new(NoFault));
    let hash = ContentHash::of(b"graceful");
    h.upload("alice", b"graceful", Some("m1")).await.unwrap();
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("m1"))
        .await
        .unwrap();
    assert_eq!(h.object_count(), 1);
    h.d.audio()
        .add_reference(&user("alice"), &hash, &rid("m2"), ReferenceKind::Message)
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(120));
    h.d.reconcile().await.unwrap();
    assert_eq!(h.object_count(), 1, "revived");
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("m2"))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(61));
    h.d.reconcile().await.unwrap();
    assert_eq!(h.object_count(), 0);
    h.check();
    h.settled();
}

#[tokio::test]
async fn lost_responses_then_retries_count_once() {
    let hook = Arc::new(FailNext {
        op: Op::IndexTransact,
        fault: Fault::LoseResponse,
        left: AtomicU32::new(1),
    });
    let h = harness_with(DedupConfig::default(), hook);
    let hash = ContentHash::of(b"lost");
    // The first transaction commits but its answer is lost: the caller sees an error.
    assert!(h.upload("alice", b"lost", Some("m1")).await.is_err());
    h.upload("alice", b"lost", Some("m1")).await.unwrap();
    h.upload("alice", b"lost", Some("m1")).await.unwrap();
    h.d.audio()
        .add_reference(&user("alice"), &hash, &rid("m1"), ReferenceKind::Message)
        .await
        .unwrap();
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 1);
    h.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_and_reference_churn_keep_counts_exact() {
    let h = harness();
    let contents: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("content-{i}").into_bytes())
        .collect();
    let mut tasks = Vec::new();
    for t in 0..24 {
        let d = h.d.clone();
        let content = contents[t % contents.len()].clone();
        tasks.push(tokio::spawn(async move {
            let owner = user(&format!("u{}", t % 6));
            let hash = ContentHash::of(&content);
            for i in 0..10 {
                let r = rid(&format!("r{t}-{i}"));
                let up = DirectUpload {
                    owner: owner.clone(),
                    format: AudioFormat::Mp3,
                    hash,
                    size: content.len() as u64,
                    body: audio_dedup_core::ports::BlobBody::Bytes(Bytes::from(content.clone())),
                    reference: Some(PendingReference {
                        kind: ReferenceKind::Message,
                        ref_id: r.clone(),
                    }),
                };
                match d.audio().upload_direct(up).await {
                    Ok(_) => {}
                    Err(e) if e.code() == ErrorCode::Busy => continue,
                    Err(e) => panic!("{e}"),
                }
                if i % 2 == 0 {
                    d.audio().remove_reference(&owner, &hash, &r).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    h.check();
    assert!(h.object_count() <= 3);
    h.d.reconcile().await.unwrap();
    h.check();
}

#[tokio::test]
async fn an_upload_whose_session_reference_was_removed_is_still_adopted() {
    let h = harness();
    let data = Bytes::from_static(b"adopt me anyway");
    let hash = ContentHash::of(&data);
    let m1 = PendingReference {
        kind: ReferenceKind::Message,
        ref_id: rid("m1"),
    };
    let s =
        h.d.audio()
            .open_session(SessionRequest {
                owner: user("alice"),
                hash,
                size: data.len() as u64,
                format: AudioFormat::Mp3,
                reference: Some(m1.clone()),
            })
            .await
            .unwrap();
    // Meanwhile the same reference is used and removed through a direct upload.
    h.upload("alice", &data, Some("m1")).await.unwrap();
    h.d.audio()
        .remove_reference(&user("alice"), &hash, &rid("m1"))
        .await
        .unwrap();
    // A new session cannot name the removed reference at all.
    let again = SessionRequest {
        owner: user("alice"),
        hash,
        size: data.len() as u64,
        format: AudioFormat::Mp3,
        reference: Some(m1),
    };
    assert_eq!(
        h.d.audio().open_session(again).await.unwrap_err().code(),
        ErrorCode::ReferenceRemoved
    );
    // The first session's PUT lands; its event adopts the object without the dead reference.
    h.blobs.client_put(
        &keys::blob_key("", &hash),
        data,
        &Uploader::Session(s.session_id.clone()).to_string(),
    );
    h.deliver_events().await;
    let r =
        h.d.audio()
            .complete(CompleteRequest {
                owner: user("alice"),
                hash,
                session_id: s.session_id,
                proof: None,
            })
            .await
            .unwrap();
    assert_eq!(r.state, AudioState::Active);
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 0);
    h.check();
    h.clock.advance(Duration::from_secs(2 * 24 * 3600));
    h.d.reconcile().await.unwrap();
    h.check();
    h.settled();
}

/// Makes every index transaction take `pause` (tokio time), so concurrent adds queue up
/// behind a running batch.
struct SlowCommits {
    pause: Duration,
}
impl FaultHook for SlowCommits {
    fn fault(&self, _: Op) -> Fault {
        Fault::None
    }
    fn delay(&self, op: Op) -> Duration {
        if op == Op::IndexTransact {
            self.pause
        } else {
            Duration::ZERO
        }
    }
}

fn slow_harness(max_add_batch: usize) -> Harness {
    harness_with(
        DedupConfig {
            max_add_batch,
            ..DedupConfig::default()
        },
        Arc::new(SlowCommits {
            pause: Duration::from_millis(10),
        }),
    )
}

/// Spawns one add per `(owner, ref_id, kind)` at once and returns the answers in order.
async fn add_all(
    h: &Harness,
    hash: ContentHash,
    adds: Vec<(&str, String, ReferenceKind)>,
) -> Vec<Result<ReferenceView, DedupError>> {
    let tasks: Vec<_> = adds
        .into_iter()
        .map(|(owner, r, kind)| {
            let d = h.d.clone();
            let (owner, r) = (user(owner), rid(&r));
            tokio::spawn(async move { d.audio().add_reference(&owner, &hash, &r, kind).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        // Paused time jumps ahead when every task waits: a stranded add fails, not hangs.
        let answer = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("an add was stranded in its batch queue");
        out.push(answer.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn concurrent_adds_to_one_audio_commit_in_batches() {
    let mut writes = Vec::new();
    for batch in [1, 20] {
        let h = slow_harness(batch);
        let hash = ContentHash::of(b"popular");
        h.upload("alice", b"popular", None).await.unwrap();
        let before = h.index.writes();
        let adds = (0..50)
            .map(|i| ("alice", format!("r{i}"), ReferenceKind::Library))
            .collect();
        for (i, a) in add_all(&h, hash, adds).await.into_iter().enumerate() {
            let v = a.unwrap();
            assert_eq!(
                (v.ref_id.as_str(), v.content_hash),
                (&*format!("r{i}"), hash)
            );
        }
        writes.push(h.index.writes() - before);
        assert_eq!(h.d.audio().stats().await.unwrap().total_references, 50);
        h.check();
    }
    // One transaction per add without batching; with it, the first add commits alone and
    // the 49 that queued behind it go in batches of at most 20.
    assert_eq!(writes, vec![50, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_answers_each_add_on_its_own() {
    let h = slow_harness(20);
    let hash = ContentHash::of(b"shared");
    h.upload("alice", b"shared", Some("m1")).await.unwrap();
    h.upload("bob", b"shared", None).await.unwrap();
    let answers = add_all(
        &h,
        hash,
        vec![
            ("alice", "first".into(), ReferenceKind::Library), // leads alone
            ("alice", "a1".into(), ReferenceKind::Library),
            ("alice", "a1".into(), ReferenceKind::Library), // same add twice in one queue
            ("alice", "m1".into(), ReferenceKind::Message), // exists: same answer
            ("alice", "m1".into(), ReferenceKind::Library), // exists with another kind
            ("mallory", "x".into(), ReferenceKind::Library), // never proved possession
            ("bob", "b1".into(), ReferenceKind::Message),
        ],
    )
    .await;
    let codes: Vec<_> = answers
        .iter()
        .map(|a| match a {
            Ok(v) => format!("ok {}", v.ref_id),
            Err(e) => format!("{}", e.code()),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "ok first",
            "ok a1",
            "ok a1",
            "ok m1",
            "reference_kind_mismatch",
            "audio_not_found",
            "ok b1"
        ]
    );
    // m1, first, a1 (once) and b1.
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 4);
    h.check();
}

#[tokio::test(start_paused = true)]
async fn adds_queued_behind_a_deletion_answer_not_active() {
    let h = slow_harness(20);
    let hash = ContentHash::of(b"going");
    h.upload("alice", b"going", Some("m1")).await.unwrap();
    let remove = {
        let d = h.d.clone();
        tokio::spawn(async move {
            d.audio()
                .remove_reference(&user("alice"), &hash, &rid("m1"))
                .await
        })
    };
    tokio::task::yield_now().await;
    let answers = add_all(
        &h,
        hash,
        (0..5)
            .map(|i| ("alice", format!("late{i}"), ReferenceKind::Library))
            .collect(),
    )
    .await;
    remove.await.unwrap().unwrap();
    // The removal committed first; the batch read the audio active, lost its commit, read
    // again and found it deleting or gone: every add is refused, none holds a reference.
    for a in answers {
        let e = a.unwrap_err();
        assert!(
            matches!(
                e.code(),
                ErrorCode::AudioNotActive | ErrorCode::AudioNotFound
            ),
            "{e:?}"
        );
    }
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 0);
    assert_eq!(h.object_count(), 0);
    h.check();
    h.d.reconcile().await.unwrap();
    h.check();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_batch_leader_strands_no_one() {
    let h = slow_harness(20);
    let hash = ContentHash::of(b"cancel");
    h.upload("alice", b"cancel", None).await.unwrap();
    // The leader's commit takes 10 ms; it is dropped after 1 ms, mid-commit.
    let leader = {
        let d = h.d.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(1),
                d.audio().add_reference(
                    &user("alice"),
                    &hash,
                    &rid("lead"),
                    ReferenceKind::Library,
                ),
            )
            .await
        })
    };
    tokio::task::yield_now().await;
    let answers = add_all(
        &h,
        hash,
        (0..30)
            .map(|i| ("alice", format!("w{i}"), ReferenceKind::Library))
            .collect(),
    )
    .await;
    assert!(leader.await.unwrap().is_err(), "the leader timed out");
    for a in answers {
        a.unwrap();
    }
    // The queue for this audio was handed on, not left behind: a later add still completes,
    // and the retried leader's add counts once whether or not its commit landed.
    h.d.audio()
        .add_reference(&user("alice"), &hash, &rid("lead"), ReferenceKind::Library)
        .await
        .unwrap();
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 31);
    h.check();
}

/// Counts index reads (and transactions), to compare what two requests cost.
#[derive(Default)]
struct CountGets(AtomicU32, AtomicU32);
impl FaultHook for CountGets {
    fn fault(&self, op: Op) -> Fault {
        match op {
            Op::IndexGet => self.0.fetch_add(1, Ordering::SeqCst),
            Op::IndexTransact => self.1.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        Fault::None
    }
}

/// Opening a session on stored content and on content nobody has: the same index reads and
/// one transaction each (the claim rides in the session's transaction), so the work done
/// does not tell a caller without the bytes which it was.
#[tokio::test]
async fn a_session_on_stored_content_costs_what_one_on_absent_content_does() {
    let counts = Arc::new(CountGets::default());
    let h = harness_with(DedupConfig::default(), counts.clone());
    h.upload("alice", b"alice's track", Some("m1"))
        .await
        .unwrap();
    let cost = |content: &'static [u8]| {
        let (h, counts) = (&h, counts.clone());
        async move {
            let (gets, txns) = (
                counts.0.load(Ordering::SeqCst),
                counts.1.load(Ordering::SeqCst),
            );
            h.d.audio()
                .open_session(SessionRequest {
                    owner: user("mallory"),
                    hash: ContentHash::of(content),
                    size: content.len() as u64,
                    format: AudioFormat::Mp3,
                    reference: None,
                })
                .await
                .unwrap();
            (
                counts.0.load(Ordering::SeqCst) - gets,
                counts.1.load(Ordering::SeqCst) - txns,
            )
        }
    };
    let stored = cost(b"alice's track").await;
    let absent = cost(b"nobody's track").await;
    assert_eq!(
        stored, absent,
        "(index reads, transactions): stored vs absent"
    );
    assert_eq!(absent.1, 1, "one transaction");
    h.check();
}

#[tokio::test]
async fn content_someone_else_holds_costs_a_stranger_what_unknown_content_does() {
    let gets = Arc::new(CountGets::default());
    let h = harness_with(DedupConfig::default(), gets.clone());
    h.upload("alice", b"alice's track", Some("m1"))
        .await
        .unwrap();
    let stored = ContentHash::of(b"alice's track");
    let unknown = ContentHash::of(b"nobody's track");
    let cost = |hash: ContentHash| {
        let (h, gets) = (&h, gets.clone());
        async move {
            let before = gets.0.load(Ordering::SeqCst);
            let e =
                h.d.audio()
                    .describe(&user("mallory"), &hash)
                    .await
                    .unwrap_err();
            assert_eq!(e.code(), ErrorCode::AudioNotFound);
            gets.0.load(Ordering::SeqCst) - before
        }
    };
    let (for_stored, for_unknown) = (cost(stored).await, cost(unknown).await);
    assert_eq!(
        for_stored, for_unknown,
        "reads for a stranger: held elsewhere vs unknown"
    );
    assert_eq!(for_unknown, 1, "only the caller's holder record is read");
    // The holder still reads what it holds.
    assert!(h.d.audio().describe(&user("alice"), &stored).await.is_ok());
}

/// Fails the `nth` call (0-based) of one op, before it does anything.
struct FailNth {
    op: Op,
    nth: u32,
    seen: AtomicU32,
}
impl FaultHook for FailNth {
    fn fault(&self, op: Op) -> Fault {
        if op == self.op && self.seen.fetch_add(1, Ordering::SeqCst) == self.nth {
            return Fault::FailBefore;
        }
        Fault::None
    }
}

/// A 100-member thread is announced to 49 members in its creating transaction and to the
/// others in further ones. If the request dies between them, every member can already read
/// the thread, and the retry announces it to the rest, each exactly once.
#[tokio::test]
async fn a_big_thread_reaches_every_feed_once_even_if_its_creation_is_cut_short() {
    let hook = Arc::new(FailNth {
        op: Op::IndexTransact,
        nth: 1,
        seen: AtomicU32::new(0),
    });
    let h = harness_with(DedupConfig::default(), hook);
    let u = |i: usize| -> UserId { format!("u{i:03}").parse().unwrap() };
    let others: Vec<UserId> = (1..MAX_THREAD_MEMBERS).map(u).collect();
    let req = || audio_dedup_core::chat::NewThread {
        id: Some("big".parse().unwrap()),
        title: Title::new("everyone").unwrap(),
        members: Members::new(others.clone()).unwrap(),
    };
    let creator = u(0);
    let feed = |who: UserId| {
        let d = h.d.clone();
        async move { d.chat().list_threads(&who, 0, 500).await.unwrap().items }
    };
    assert!(h.d.chat().create_thread(&creator, req()).await.is_err());
    // The creator and the first 48 others have it in their feeds; the rest do not yet, but
    // every member can read it.
    assert_eq!(feed(u(48)).await.len(), 1);
    assert!(feed(u(49)).await.is_empty());
    assert!(feed(u(99)).await.is_empty());
    let t =
        h.d.chat()
            .get_thread(&u(99), &"big".parse().unwrap())
            .await
            .unwrap();
    assert_eq!(t.thread.members.len(), MAX_THREAD_MEMBERS);
    let (view, created) = h.d.chat().create_thread(&creator, req()).await.unwrap();
    assert!(!created, "the retry answers the thread created before");
    for i in 0..MAX_THREAD_MEMBERS {
        let items = feed(u(i)).await;
        assert_eq!(items.len(), 1, "member {i}");
        // The feed answers the thread as it stands: no message yet, nothing unread.
        let listed = ThreadView {
            last_cursor: Some("0".into()),
            unread: Some(0),
            ..view.clone()
        };
        assert_eq!(items[0], listed);
    }
    // Nothing is announced twice by a further retry.
    h.d.chat().create_thread(&creator, req()).await.unwrap();
    assert_eq!(feed(u(99)).await.len(), 1);
    h.check();
}

/// Stats shards live each in a partition of their own, and a store written before they
/// moved (counters under the one `STATS` partition) still reads its counts: the stats sum
/// both, and new writes never touch the legacy partition.
#[tokio::test]
async fn stats_shards_spread_over_partitions_and_legacy_counters_still_count() {
    use audio_dedup_core::ports::{Key, TransactionalIndex, WriteOp};
    let h = harness();
    // What an older release left: one file of 8 bytes with one reference, counted under
    // `STATS / SHARD#003`.
    h.index
        .transact(vec![WriteOp::Bump {
            key: Key::new(keys::STATS_PK, "SHARD#003"),
            deltas: vec![
                ("active_files", 1),
                ("stored_bytes", 8),
                ("live_refs", 1),
                ("referenced_bytes", 8),
            ],
        }])
        .await
        .unwrap();
    let legacy = h.index.counter_totals(keys::STATS_PK);
    for i in 0..24 {
        h.upload(
            "alice",
            format!("song {i:03}").as_bytes(),
            Some(&format!("m{i}")),
        )
        .await
        .unwrap();
    }
    let s = h.d.audio().stats().await.unwrap();
    assert_eq!((s.unique_files, s.total_references), (25, 25));
    assert_eq!(s.stored_bytes, 8 + 24 * 8);
    // The port's sum over the legacy partition alone did not move: new counts went to the
    // shards' partitions, more than one of them.
    let legacy_now = h.index.counters(keys::STATS_PK).await.unwrap();
    assert_eq!(legacy_now.get("live_refs"), Some(&1), "{legacy:?}");
    let mut written = 0;
    for pk in keys::stats_partitions(DedupConfig::default().stats_shards)
        .iter()
        .skip(1)
    {
        if !h.index.counters(pk).await.unwrap().is_empty() {
            written += 1;
        }
    }
    assert!(
        written > 1,
        "counts spread over {written} shard partition(s)"
    );
}

/// A hot track on Lambda: many processes (each its own `Dedup`, so nothing batches across
/// them) add references to one audio at once over a store that models DynamoDB's
/// transaction conflicts. Every add succeeds; most skip the audio record (they write an open
/// count shard); then every reference is removed, again from many processes, and the last
/// one closes the shards and deletes the audio.
#[tokio::test(start_paused = true)]
async fn a_hot_track_takes_adds_from_many_processes_through_count_shards() {
    use audio_dedup_core::ports::TransactionalIndex;
    use audio_dedup_core::store::memory::ConflictModel;
    let blobs = MemoryBlobs::new(Arc::new(NoFault));
    let index = MemoryIndex::new(Arc::new(NoFault)).with_conflicts(ConflictModel {
        hold: Duration::from_millis(10),
        hold_yields: 0,
    });
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let process = || {
        Arc::new(Dedup::with_env(
            blobs.clone(),
            index.clone(),
            DedupConfig {
                max_add_batch: 1,
                ..DedupConfig::default()
            },
            clock.clone(),
            Arc::new(OsEntropy),
        ))
    };
    let h = Harness {
        d: process(),
        blobs: blobs.clone(),
        index: index.clone(),
        clock: clock.clone(),
    };
    let hash = ContentHash::of(b"viral");
    h.upload("alice", b"viral", None).await.unwrap();
    let record_version = || async {
        index
            .get(&keys::audio(&hash))
            .await
            .unwrap()
            .unwrap()
            .version
    };
    let before = record_version().await;
    const ADDS: usize = 120;
    let tasks: Vec<_> = (0..ADDS)
        .map(|i| {
            let d = process();
            tokio::spawn(async move {
                d.audio()
                    .add_reference(
                        &user("alice"),
                        &hash,
                        &rid(&format!("r{i}")),
                        ReferenceKind::Library,
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    h.check();
    assert_eq!(
        h.d.audio().stats().await.unwrap().total_references,
        ADDS as i64
    );
    let record_writes = record_version().await - before;
    assert!(
        record_writes < ADDS as u64 / 2,
        "{record_writes} of {ADDS} adds wrote the audio record"
    );
    let open = index
        .dump()
        .iter()
        .filter(|i| i.key.sk.starts_with("COUNT#") && !i.body.contains("\"count\":0"))
        .count();
    assert!(open > 1, "{open} count shards open");
    assert!(index.modelled_conflicts() > 0, "the adds did contend");
    let tasks: Vec<_> = (0..ADDS)
        .map(|i| {
            let d = process();
            tokio::spawn(async move {
                d.audio()
                    .remove_reference(&user("alice"), &hash, &rid(&format!("r{i}")))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    h.check();
    assert_eq!(h.object_count(), 0, "the last removal deleted the audio");
    assert!(index
        .dump()
        .iter()
        .filter(|i| i.key.sk.starts_with("COUNT#"))
        .all(|i| i.body.contains("\"count\":0")));
    h.settled();
}

/// Once armed: slow commits (so adds queue into one batch), and the second transaction
/// gets `fault`.
struct SlowThenSecondFault {
    fault: Fault,
    armed: std::sync::atomic::AtomicBool,
    seen: AtomicU32,
}

impl SlowThenSecondFault {
    fn new(fault: Fault) -> Self {
        Self {
            fault,
            armed: false.into(),
            seen: AtomicU32::new(0),
        }
    }
}

impl FaultHook for SlowThenSecondFault {
    fn fault(&self, op: Op) -> Fault {
        if op == Op::IndexTransact
            && self.armed.load(Ordering::SeqCst)
            && self.seen.fetch_add(1, Ordering::SeqCst) == 1
        {
            return self.fault;
        }
        Fault::None
    }
    fn delay(&self, op: Op) -> Duration {
        if op == Op::IndexTransact && self.armed.load(Ordering::SeqCst) {
            Duration::from_millis(10)
        } else {
            Duration::ZERO
        }
    }
}

/// A batch of adds whose transaction fails with a store error does not hand that one error
/// to every add in it: each is tried again on its own and answered on its own.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_answers_each_add_with_its_own_outcome() {
    // The second transaction fails before it writes (the first is the add that leads alone).
    let hook = Arc::new(SlowThenSecondFault::new(Fault::FailBefore));
    let h = harness_with(DedupConfig::default(), hook.clone());
    let hash = ContentHash::of(b"batched");
    h.upload("alice", b"batched", None).await.unwrap();
    hook.armed.store(true, Ordering::SeqCst);
    let adds = (0..6)
        .map(|i| ("alice", format!("r{i}"), ReferenceKind::Library))
        .collect();
    let codes: Vec<String> = add_all(&h, hash, adds)
        .await
        .iter()
        .map(|a| match a {
            Ok(v) => format!("ok {}", v.ref_id),
            Err(e) => e.code().to_string(),
        })
        .collect();
    assert!(
        hook.seen.load(Ordering::SeqCst) > 2,
        "the batch failed and was split"
    );
    assert_eq!(
        codes,
        ["ok r0", "ok r1", "ok r2", "ok r3", "ok r4", "ok r5"]
    );
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 6);
    h.check();
}

/// The largest batch still fits in one transaction when its retry opens a count shard:
/// its references, the audio record, the shard and a stats shard (the memory store refuses
/// a transaction over DynamoDB's 100 operations).
#[tokio::test(start_paused = true)]
async fn the_largest_batch_fits_when_it_opens_a_count_shard() {
    let hook = Arc::new(SlowThenSecondFault::new(Fault::Conflict));
    let cfg = DedupConfig {
        max_add_batch: 1_000,
        ..DedupConfig::default()
    };
    let h = harness_with(cfg, hook.clone());
    let hash = ContentHash::of(b"big batch");
    h.upload("alice", b"big batch", None).await.unwrap();
    hook.armed.store(true, Ordering::SeqCst);
    // One leads alone; 99 queue behind it, more than a batch takes.
    let adds = (0..100)
        .map(|i| ("alice", format!("r{i}"), ReferenceKind::Library))
        .collect();
    for a in add_all(&h, hash, adds).await {
        a.unwrap();
    }
    assert!(
        h.index
            .dump()
            .iter()
            .any(|i| i.key.sk.starts_with("COUNT#")),
        "the retried batch opened a count shard"
    );
    assert_eq!(h.d.audio().stats().await.unwrap().total_references, 100);
    h.check();
}

#[path = "contract/unread.rs"]
mod unread;

#[tokio::test]
async fn unread_counts_and_previews_follow_messages() {
    let h = harness();
    unread::unread_counts_and_previews_follow_messages(&h.d).await;
}
