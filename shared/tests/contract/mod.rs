//! Store contract: the same protocol scenarios, run unchanged over every store. Each store's
//! test file supplies an `Env`: fresh stores, a client-side signed PUT, and a snapshot.

#![allow(dead_code)]

pub mod chat;
pub mod limits;
pub mod parts;
pub mod unread;

use std::collections::BTreeMap;

use audio_dedup_core::audio::{proof_for, CompleteRequest, DirectUpload, SessionRequest};
use audio_dedup_core::ports::{
    BlobBody, BlobEvent, BlobStore, Item, ObjectMeta, TransactionalIndex,
};
use audio_dedup_core::protocol::{invariants, keys};
use audio_dedup_core::*;
use bytes::Bytes;

pub trait Env {
    type B: BlobStore;
    type I: TransactionalIndex;
    fn dedup(&self) -> &Dedup<Self::B, Self::I>;
    /// Sends a signed PUT as a client would; returns the HTTP status.
    fn client_put(
        &self,
        req: &SignedRequest,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = u16>;
    fn snapshot(
        &self,
    ) -> impl std::future::Future<Output = (Vec<Item>, Vec<ObjectMeta>, BTreeMap<String, i64>)>;
    /// Moves the protocol's clock forward (it starts at the real time).
    fn advance(&self, by: std::time::Duration);
    /// Multipart uploads the blob store holds in progress.
    fn uploads_in_progress(&self) -> impl std::future::Future<Output = usize>;
}

pub fn user(s: &str) -> UserId {
    s.parse().unwrap()
}

pub fn rid(s: &str) -> ReferenceId {
    s.parse().unwrap()
}

pub fn bytes_of(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub async fn assert_safe<E: Env>(env: &E) {
    let (items, objects, counters) = env.snapshot().await;
    let bad = invariants::safety(
        &items,
        &objects,
        &counters,
        &env.dedup().config().key_prefix,
    );
    assert!(bad.is_empty(), "invariants broken: {bad:#?}");
}

pub async fn assert_settled<E: Env>(env: &E) {
    let (items, objects, _) = env.snapshot().await;
    let bad = invariants::settled(&items, &objects, &env.dedup().config().key_prefix);
    assert!(bad.is_empty(), "not settled: {bad:#?}");
}

pub async fn direct<E: Env>(
    env: &E,
    owner: &str,
    data: &[u8],
    reference: Option<&str>,
) -> UploadResult {
    env.dedup()
        .audio()
        .upload_direct(DirectUpload {
            owner: user(owner),
            format: AudioFormat::Mp3,
            hash: ContentHash::of(data),
            size: data.len() as u64,
            body: BlobBody::Bytes(Bytes::copy_from_slice(data)),
            reference: reference.map(|r| PendingReference {
                kind: ReferenceKind::Message,
                ref_id: rid(r),
            }),
        })
        .await
        .expect("direct upload")
}

pub async fn dedup_then_delete_with_last_reference<E: Env>(env: &E) {
    let d = env.dedup();
    let data = bytes_of(1, 70_000);
    let hash = ContentHash::of(&data);
    assert!(!direct(env, "alice", &data, Some("m1")).await.deduplicated);
    assert!(direct(env, "bob", &data, Some("m2")).await.deduplicated);
    assert!(
        direct(env, "bob", &data, Some("m2")).await.deduplicated,
        "retry is a no-op"
    );
    d.audio()
        .add_reference(&user("alice"), &hash, &rid("lib"), ReferenceKind::Library)
        .await
        .unwrap();
    d.audio()
        .add_reference(&user("alice"), &hash, &rid("lib"), ReferenceKind::Library)
        .await
        .unwrap();
    let s = d.audio().stats().await.unwrap();
    assert_eq!(
        (s.unique_files, s.total_references, s.stored_bytes),
        (1, 3, 70_000)
    );
    assert_safe(env).await;
    let key = keys::blob_key(&d.config().key_prefix, &hash);
    for (who, r) in [("alice", "m1"), ("bob", "m2"), ("alice", "lib")] {
        assert!(d.blobs().head(&key).await.unwrap().is_some());
        d.audio()
            .remove_reference(&user(who), &hash, &rid(r))
            .await
            .unwrap();
        d.audio()
            .remove_reference(&user(who), &hash, &rid(r))
            .await
            .unwrap();
    }
    assert!(
        d.blobs().head(&key).await.unwrap().is_none(),
        "deleted with the last reference"
    );
    assert_eq!(d.audio().stats().await.unwrap().unique_files, 0);
    assert_safe(env).await;
    assert_settled(env).await;
}

pub async fn session_put_complete_and_proof<E: Env>(env: &E) {
    let d = env.dedup();
    let data = bytes_of(2, 200_000);
    let hash = ContentHash::of(&data);
    let s = d
        .audio()
        .open_session(SessionRequest {
            owner: user("alice"),
            hash,
            size: data.len() as u64,
            format: AudioFormat::Wav,
            reference: Some(PendingReference {
                kind: ReferenceKind::Message,
                ref_id: rid("m1"),
            }),
        })
        .await
        .unwrap();
    assert_eq!(s.upload.as_ref().expect("a whole-file URL").method, "PUT");
    let done = CompleteRequest {
        owner: user("alice"),
        hash,
        session_id: s.session_id.clone(),
        proof: None,
    };
    assert_eq!(
        d.audio().complete(done.clone()).await.unwrap_err().code(),
        ErrorCode::UploadRequired
    );
    assert_eq!(
        env.client_put(s.upload.as_ref().unwrap(), data.clone())
            .await,
        200
    );
    assert_eq!(
        env.client_put(s.upload.as_ref().unwrap(), data.clone())
            .await,
        412,
        "signed PUTs never overwrite"
    );
    let r = d.audio().complete(done.clone()).await.unwrap();
    assert_eq!(
        (r.deduplicated, r.state, r.size),
        (false, AudioState::Active, 200_000)
    );
    assert_eq!(d.audio().complete(done).await.unwrap().content_hash, hash);
    assert_eq!(d.audio().stats().await.unwrap().total_references, 1);
    // Bob claims it by proof, without the bytes.
    let s2 = d
        .audio()
        .open_session(SessionRequest {
            owner: user("bob"),
            hash,
            size: 200_000,
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
        d.audio().complete(bob.clone()).await.unwrap_err().code(),
        ErrorCode::UploadRequired
    );
    let chunks: Vec<&[u8]> = s2
        .challenge
        .ranges
        .iter()
        .map(|r| &data[r.offset as usize..(r.offset + r.length) as usize])
        .collect();
    let proof = proof_for(&s2.challenge.nonce, chunks);
    assert!(
        d.audio()
            .complete(CompleteRequest {
                proof: Some(Proof::new(&proof).unwrap()),
                ..bob
            })
            .await
            .unwrap()
            .deduplicated
    );
    assert!(d.audio().describe(&user("bob"), &hash).await.is_ok());
    assert_safe(env).await;
}

pub async fn created_event_completes_first_and_complete_is_a_noop<E: Env>(env: &E) {
    let d = env.dedup();
    let data = bytes_of(3, 5_000);
    let hash = ContentHash::of(&data);
    let s = d
        .audio()
        .open_session(SessionRequest {
            owner: user("carol"),
            hash,
            size: 5_000,
            format: AudioFormat::Ogg,
            reference: Some(PendingReference {
                kind: ReferenceKind::Library,
                ref_id: rid("l1"),
            }),
        })
        .await
        .unwrap();
    assert_eq!(env.client_put(s.upload.as_ref().unwrap(), data).await, 200);
    let key = keys::blob_key(&d.config().key_prefix, &hash);
    let meta = d.blobs().head(&key).await.unwrap().expect("stored");
    let event = BlobEvent::Created {
        key: key.clone(),
        version: meta.version.clone(),
        sequencer: "1".into(),
    };
    d.audio().on_blob_event(&event).await.unwrap();
    d.audio().on_blob_event(&event).await.unwrap();
    assert_eq!(d.audio().stats().await.unwrap().total_references, 1);
    let r = d
        .audio()
        .complete(CompleteRequest {
            owner: user("carol"),
            hash,
            session_id: s.session_id,
            proof: None,
        })
        .await
        .unwrap();
    assert!(!r.deduplicated);
    assert_eq!(d.audio().stats().await.unwrap().total_references, 1);
    assert_safe(env).await;
}

/// Stores `data` in the blob store with nothing in the index; its key.
async fn put_orphan<B: BlobStore, I: TransactionalIndex>(d: &Dedup<B, I>, data: Vec<u8>) -> String {
    let hash = ContentHash::of(&data);
    let key = keys::blob_key(&d.config().key_prefix, &hash);
    let put = audio_dedup_core::ports::PutRequest {
        key: key.clone(),
        size: data.len() as u64,
        body: BlobBody::Bytes(Bytes::from(data)),
        sha256: hash,
        content_type: "audio/mpeg",
        uploader: "direct".into(),
    };
    d.blobs().put_if_absent(put).await.unwrap();
    key
}

pub async fn reconciler_removes_orphans<E: Env>(env: &E) {
    let d = env.dedup();
    // An object with no claim in the index: a crash after the put, long ago.
    let key = put_orphan(d, bytes_of(4, 3_000)).await;
    let report = d.reconcile().await.unwrap();
    assert_eq!(report.orphans_deleted, 1);
    assert!(d.blobs().head(&key).await.unwrap().is_none());
    assert_safe(env).await;
    assert_settled(env).await;
}

/// A budget of one page of two objects per pass: the sweep takes several passes over eight
/// objects, never sweeps more than its budget in one, resumes where it stopped, and still
/// collects every orphan while keeping what references hold. (The env is built with
/// `sweep_pages: 1, sweep_page_size: 2`.)
pub async fn a_sweep_across_passes_collects_every_orphan<E: Env>(env: &E) {
    let d = env.dedup();
    assert_eq!(
        (
            d.config().reconcile.sweep_pages,
            d.config().reconcile.sweep_page_size
        ),
        (1, 2)
    );
    let mut kept = Vec::new();
    for i in 0..3u8 {
        let data = bytes_of(40 + i, 2_000);
        let r = direct(env, "alice", &data, Some(&format!("k{i}"))).await;
        kept.push(keys::blob_key(&d.config().key_prefix, &r.content_hash));
    }
    let mut orphans = Vec::new();
    for i in 0..5u8 {
        orphans.push(put_orphan(d, bytes_of(60 + i, 1_000)).await);
    }
    let (mut passes, mut swept, mut deleted, mut cycles) = (0, 0, 0, 0);
    while passes < 12 && (deleted < orphans.len() as u64 || cycles == 0) {
        let r = d.reconcile().await.unwrap();
        passes += 1;
        assert!(
            r.objects_swept <= 2,
            "pass {passes} swept {} objects",
            r.objects_swept
        );
        swept += r.objects_swept;
        deleted += r.orphans_deleted;
        cycles += u64::from(r.sweep_cycle_completed);
    }
    assert_eq!(deleted, 5, "every orphan collected within {passes} passes");
    assert!(
        passes >= 4,
        "8 objects at 2 a pass take at least 4 passes, took {passes}"
    );
    assert!(swept >= 8);
    for key in &orphans {
        assert!(
            d.blobs().head(key).await.unwrap().is_none(),
            "{key} still stored"
        );
    }
    for key in &kept {
        assert!(
            d.blobs().head(key).await.unwrap().is_some(),
            "{key} was held"
        );
    }
    assert_safe(env).await;
}
