//! The store contract over the embedded store (SQLite + files).

mod contract;

use std::collections::BTreeMap;
use std::sync::Arc;

use audio_dedup_core::ports::{
    BlobBody, BlobStore, Clock, Item, ManualClock, ObjectMeta, OsEntropy, PutOutcome, PutRequest,
    SystemClock,
};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::store::embedded::{
    uploads_in_progress, FsBlobStore, PartReceipt, SqliteIndex, Synchronous, UrlSigner,
};
use audio_dedup_core::{Dedup, DedupConfig, SignedRequest};
use contract::Env;

struct Embedded {
    d: Dedup<FsBlobStore, SqliteIndex>,
    index: SqliteIndex,
    blobs: FsBlobStore,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        Self::with_config(DedupConfig::default())
    }

    fn with_config(cfg: DedupConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let signer = UrlSigner::new("http://127.0.0.1:9", [3; 32]);
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let blobs =
            FsBlobStore::open(&dir.path().join("blobs"), signer, None, clock.clone()).unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.sqlite"), Synchronous::Full).unwrap();
        let d = Dedup::with_env(
            blobs.clone(),
            index.clone(),
            cfg,
            clock.clone(),
            Arc::new(OsEntropy),
        );
        Self {
            d,
            index,
            blobs,
            clock,
            _dir: dir,
        }
    }
}

fn query_of(url: &str) -> (String, BTreeMap<String, String>) {
    let (path, query) = url.split_once('?').unwrap();
    let key = path.split_once("/blob/").unwrap().1.to_owned();
    let q = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .unwrap()
                    .into_owned(),
            )
        })
        .collect();
    (key, q)
}

impl Embedded {
    /// What the `/blob` route does with a signed part PUT.
    async fn client_put_part(&self, req: &SignedRequest, body: Vec<u8>) -> u16 {
        let (key, q) = query_of(&req.url);
        let Ok(grant) =
            self.blobs
                .signer()
                .verify_part(&key, &q, |h| req.headers.get(h).cloned(), 0)
        else {
            return 403;
        };
        let upload = audio_dedup_core::ports::MultipartRef {
            key,
            upload_id: grant.upload_id,
        };
        let part = audio_dedup_core::Part {
            number: grant.number,
            size: grant.size,
            sha256: grant.sha256,
        };
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
        match self.blobs.receive_part(&upload, part, body).await.unwrap() {
            PartReceipt::Stored => 200,
            PartReceipt::NoSuchUpload => 404,
            PartReceipt::InProgress => 503,
            _ => 400,
        }
    }
}

impl Env for Embedded {
    type B = FsBlobStore;
    type I = SqliteIndex;

    fn dedup(&self) -> &Dedup<FsBlobStore, SqliteIndex> {
        &self.d
    }

    /// What the local server's `/blob` route does with a signed PUT (of a whole object, or
    /// of one part).
    async fn client_put(&self, req: &SignedRequest, body: Vec<u8>) -> u16 {
        if req.url.contains("X-Part=") {
            return self.client_put_part(req, body).await;
        }
        let (key, q) = query_of(&req.url);
        let key = key.as_str();
        let grant =
            match self
                .blobs
                .signer()
                .verify_put(key, &q, |h| req.headers.get(h).cloned(), 0)
            {
                Ok(g) => g,
                Err(_) => return 403,
            };
        if audio_dedup_core::ContentHash::of(&body) != grant.sha256
            || body.len() as u64 != grant.size
        {
            return 400;
        }
        let put = PutRequest {
            key: key.to_owned(),
            body: BlobBody::Bytes(body.into()),
            sha256: grant.sha256,
            size: grant.size,
            content_type: "audio/wav",
            uploader: grant.uploader,
        };
        match self.blobs.put_if_absent(put).await.unwrap() {
            PutOutcome::Created { .. } => 200,
            PutOutcome::AlreadyExists => 412,
        }
    }

    fn advance(&self, by: std::time::Duration) {
        self.clock.advance(by);
    }

    async fn uploads_in_progress(&self) -> usize {
        uploads_in_progress(&self._dir.path().join("blobs"))
    }

    async fn snapshot(&self) -> (Vec<Item>, Vec<ObjectMeta>, BTreeMap<String, i64>) {
        let (items, counters) = self.index.dump(keys::STATS_PK).await.unwrap();
        let objects = self.blobs.list(None, 10_000).await.unwrap().objects;
        (items, objects, counters)
    }
}

#[tokio::test]
async fn dedup_then_delete_with_last_reference() {
    contract::dedup_then_delete_with_last_reference(&Embedded::new()).await;
}

#[tokio::test]
async fn session_put_complete_and_proof() {
    contract::session_put_complete_and_proof(&Embedded::new()).await;
}

#[tokio::test]
async fn created_event_completes_first_and_complete_is_a_noop() {
    contract::created_event_completes_first_and_complete_is_a_noop(&Embedded::new()).await;
}

#[tokio::test]
async fn reconciler_removes_orphans() {
    contract::reconciler_removes_orphans(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_hold_audio_and_sync_incrementally() {
    contract::chat::messages_hold_audio_and_sync_incrementally(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_inactive_audio_fails_and_writes_nothing() {
    contract::chat::create_on_inactive_audio_fails_and_writes_nothing(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_snapshots_go_to_the_blob_store() {
    contract::chat::big_snapshots_go_to_the_blob_store(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_an_incremental_reader() {
    contract::chat::concurrent_writers_and_an_incremental_reader(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_items_hold_references() {
    contract::chat::library_items_hold_references(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_racing_audio_deletion() {
    contract::chat::create_racing_audio_deletion(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_sweeps_unrecorded_snapshots() {
    contract::chat::reconciler_sweeps_unrecorded_snapshots(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reach_audio_through_messages() {
    contract::chat::members_reach_audio_through_messages(&Embedded::new()).await;
}

#[tokio::test]
async fn a_retried_open_answers_the_same_session() {
    contract::limits::a_retried_open_answers_the_same_session(&Embedded::new()).await;
}

#[tokio::test]
async fn a_session_flood_stops_at_the_quota() {
    contract::limits::a_session_flood_stops_at_the_quota(&Embedded::new()).await;
}

#[tokio::test]
async fn a_partial_holder_cannot_reroll_or_keep_guessing() {
    contract::limits::a_partial_holder_cannot_reroll_or_keep_guessing(&Embedded::new()).await;
}

fn small_sweep() -> DedupConfig {
    let mut cfg = DedupConfig::default();
    cfg.reconcile.sweep_pages = 1;
    cfg.reconcile.sweep_page_size = 2;
    cfg
}

#[tokio::test]
async fn a_sweep_across_passes_collects_every_orphan() {
    contract::a_sweep_across_passes_collects_every_orphan(&Embedded::with_config(small_sweep()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_thread_reaches_every_members_feed() {
    contract::chat::a_full_thread_reaches_every_members_feed(&Embedded::new()).await;
}

#[tokio::test]
async fn a_parted_upload_resumes_and_publishes_verified_content() {
    let env = Embedded::with_config(contract::parts::config());
    let busy = contract::parts::a_parted_upload_resumes_and_publishes_verified_content(&env).await;
    assert_eq!(
        busy, 0,
        "the local store hashed the whole object as the parts came"
    );
}

#[tokio::test]
async fn wrong_bytes_never_appear_under_the_hash() {
    let env = Embedded::with_config(contract::parts::config());
    contract::parts::wrong_bytes_never_appear_under_the_hash(&env).await;
}

#[tokio::test]
async fn a_stranger_cannot_use_someone_elses_parts() {
    let env = Embedded::with_config(contract::parts::config());
    contract::parts::a_stranger_cannot_use_someone_elses_parts(&env).await;
}

#[tokio::test]
async fn the_parts_path_is_no_existence_oracle() {
    let env = Embedded::with_config(contract::parts::config());
    contract::parts::the_parts_path_is_no_existence_oracle(&env).await;
}

#[tokio::test]
async fn abandoned_parts_are_aborted_by_the_reconciler() {
    let env = Embedded::with_config(contract::parts::config());
    contract::parts::abandoned_parts_are_aborted_by_the_reconciler(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_membership_changes_keep_record_and_feeds_consistent() {
    contract::chat::concurrent_membership_changes_keep_record_and_feeds_consistent(&Embedded::new())
        .await;
}

#[tokio::test]
async fn unread_counts_and_previews_follow_messages() {
    let env = Embedded::new();
    contract::unread::unread_counts_and_previews_follow_messages(env.dedup()).await;
}
