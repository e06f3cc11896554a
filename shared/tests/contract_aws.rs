//! The store contract over DynamoDB + S3, against moto's server. `scripts/test` starts moto on
//! a loopback port and sets `AUDIO_DEDUP_MOTO_ENDPOINT`. Without it these tests fail when
//! `AUDIO_DEDUP_REQUIRE_MOTO=1` (CI) and are skipped with a notice otherwise.

mod contract;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use audio_dedup_core::ports::{
    BlobStore, Clock, Item, ManualClock, ObjectMeta, OsEntropy, SystemClock,
};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::store::aws::{DynamoIndex, S3Blobs};
use audio_dedup_core::{ContentHash, Dedup, DedupConfig, SignedRequest};
use contract::Env;

static NEXT: AtomicU32 = AtomicU32::new(0);

struct Aws {
    d: Dedup<S3Blobs, DynamoIndex>,
    index: DynamoIndex,
    blobs: S3Blobs,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
    s3: aws_sdk_s3::Client,
}

fn endpoint() -> Option<String> {
    match std::env::var("AUDIO_DEDUP_MOTO_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("AUDIO_DEDUP_REQUIRE_MOTO").as_deref() != Ok("1"),
                "AUDIO_DEDUP_MOTO_ENDPOINT is not set but moto is required"
            );
            eprintln!("skipping: AUDIO_DEDUP_MOTO_ENDPOINT not set (scripts/test starts moto)");
            None
        }
    }
}

impl Aws {
    async fn new() -> Option<Self> {
        Self::with_config(DedupConfig::default()).await
    }

    async fn with_config(base: DedupConfig) -> Option<Self> {
        let endpoint = endpoint()?;
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        let (ddb, s3) = audio_dedup_core::store::aws::clients_from_env(true).await;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let unique = format!("{}-{n}", std::process::id());
        let index = DynamoIndex::new(ddb, format!("audio-dedup-{unique}"));
        index.create_table().await.expect("create table");
        let blobs = S3Blobs::new(s3.clone(), format!("audio-dedup-{unique}"), "prod/");
        blobs.create_bucket().await.expect("create bucket");
        let cfg = DedupConfig {
            key_prefix: "prod/".into(),
            ..base
        };
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
        let d = Dedup::with_env(
            blobs.clone(),
            index.clone(),
            cfg,
            clock.clone(),
            Arc::new(OsEntropy),
        );
        Some(Self {
            d,
            index,
            blobs,
            clock,
            http: reqwest::Client::new(),
            s3,
        })
    }
}

impl Env for Aws {
    type B = S3Blobs;
    type I = DynamoIndex;

    fn dedup(&self) -> &Dedup<S3Blobs, DynamoIndex> {
        &self.d
    }

    async fn client_put(&self, req: &SignedRequest, body: Vec<u8>) -> u16 {
        let mut r = self.http.put(&req.url);
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        r.body(body).send().await.unwrap().status().as_u16()
    }

    fn advance(&self, by: std::time::Duration) {
        self.clock.advance(by);
    }

    async fn uploads_in_progress(&self) -> usize {
        let out = self
            .s3
            .list_multipart_uploads()
            .bucket(self.blobs.bucket())
            .send()
            .await
            .unwrap();
        out.uploads().len()
    }

    async fn snapshot(&self) -> (Vec<Item>, Vec<ObjectMeta>, BTreeMap<String, i64>) {
        use audio_dedup_core::ports::TransactionalIndex;
        let items = self.index.dump().await.unwrap();
        let mut counters = BTreeMap::new();
        for pk in keys::stats_partitions(keys::MAX_STATS_SHARDS) {
            for (name, v) in self.index.counters(&pk).await.unwrap() {
                *counters.entry(name).or_insert(0) += v;
            }
        }
        let mut objects = self.blobs.list(None, 1000).await.unwrap().objects;
        // moto's HEAD reports no checksum: hash the bytes, as the protocol does then.
        for o in &mut objects {
            if o.sha256.is_none() {
                o.sha256 = self.blobs.stream_sha256(&o.key, &o.version).await.unwrap();
            }
        }
        (items, objects, counters)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_then_delete_with_last_reference() {
    let Some(env) = Aws::new().await else { return };
    contract::dedup_then_delete_with_last_reference(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_put_complete_and_proof() {
    let Some(env) = Aws::new().await else { return };
    contract::session_put_complete_and_proof(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_event_completes_first_and_complete_is_a_noop() {
    let Some(env) = Aws::new().await else { return };
    contract::created_event_completes_first_and_complete_is_a_noop(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_removes_orphans() {
    let Some(env) = Aws::new().await else { return };
    contract::reconciler_removes_orphans(&env).await;
}

/// aws-sdk-rust#1103: the checksum must be a *signed header* of the presigned PUT, or S3 will
/// not hold the client to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_put_signs_the_checksum_length_and_no_overwrite() {
    let Some(env) = Aws::new().await else { return };
    let hash = ContentHash::of(b"signed");
    let req = audio_dedup_core::ports::PresignPut {
        key: "prod/audio/x".into(),
        sha256: hash,
        size: 6,
        content_type: "audio/mpeg",
        uploader: "session:abc".into(),
        expires_in: std::time::Duration::from_secs(900),
    };
    let signed = env.blobs.presign_put(&req).await.unwrap();
    let query = signed.url.split_once('?').unwrap().1;
    let signed_headers = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("X-Amz-SignedHeaders="))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .unwrap()
                .into_owned()
        })
        .expect("X-Amz-SignedHeaders");
    for h in [
        "x-amz-checksum-sha256",
        "content-length",
        "if-none-match",
        "x-amz-meta-uploader",
        "content-type",
    ] {
        assert!(
            signed_headers.split(';').any(|s| s == h),
            "{h} not signed: {signed_headers}"
        );
    }
    assert_eq!(signed.headers["x-amz-checksum-sha256"], hash.to_base64());
    assert!(query.contains("X-Amz-Expires=900"));
    let get = env
        .blobs
        .presign_get(
            "prod/audio/x",
            "v1",
            "audio/mpeg",
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert!(get.url.contains("X-Amz-Expires=600") && get.url.contains("versionId=v1"));
    // Download URLs are capped at 15 minutes whatever the caller asks.
    let long = env
        .blobs
        .presign_get(
            "prod/audio/x",
            "v1",
            "audio/mpeg",
            std::time::Duration::from_secs(86_400),
        )
        .await
        .unwrap();
    assert!(long.url.contains("X-Amz-Expires=900"), "{}", long.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_hold_audio_and_sync_incrementally() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::messages_hold_audio_and_sync_incrementally(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_inactive_audio_fails_and_writes_nothing() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::create_on_inactive_audio_fails_and_writes_nothing(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_snapshots_go_to_the_blob_store() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::big_snapshots_go_to_the_blob_store(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_an_incremental_reader() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::concurrent_writers_and_an_incremental_reader(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_items_hold_references() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::library_items_hold_references(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_racing_audio_deletion() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::create_racing_audio_deletion(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_sweeps_unrecorded_snapshots() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::reconciler_sweeps_unrecorded_snapshots(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reach_audio_through_messages() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::members_reach_audio_through_messages(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_open_answers_the_same_session() {
    let Some(env) = Aws::new().await else { return };
    contract::limits::a_retried_open_answers_the_same_session(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_stops_at_the_quota() {
    let Some(env) = Aws::new().await else { return };
    contract::limits::a_session_flood_stops_at_the_quota(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_holder_cannot_reroll_or_keep_guessing() {
    let Some(env) = Aws::new().await else { return };
    contract::limits::a_partial_holder_cannot_reroll_or_keep_guessing(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_across_passes_collects_every_orphan() {
    let mut cfg = DedupConfig::default();
    cfg.reconcile.sweep_pages = 1;
    cfg.reconcile.sweep_page_size = 2;
    let Some(env) = Aws::with_config(cfg).await else {
        return;
    };
    contract::a_sweep_across_passes_collects_every_orphan(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_thread_reaches_every_members_feed() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::a_full_thread_reaches_every_members_feed(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parted_upload_resumes_and_publishes_verified_content() {
    let Some(env) = Aws::with_config(contract::parts::config()).await else {
        return;
    };
    let busy = contract::parts::a_parted_upload_resumes_and_publishes_verified_content(&env).await;
    // S3 has no whole SHA-256 of a multipart object: the check reads it through, one range
    // per call here (no time budget): two calls for 12 MiB in 8 MiB ranges.
    assert_eq!(busy, 1, "the check went on across complete calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_never_appear_under_the_hash() {
    let Some(env) = Aws::with_config(contract::parts::config()).await else {
        return;
    };
    contract::parts::wrong_bytes_never_appear_under_the_hash(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_use_someone_elses_parts() {
    let Some(env) = Aws::with_config(contract::parts::config()).await else {
        return;
    };
    contract::parts::a_stranger_cannot_use_someone_elses_parts(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parts_path_is_no_existence_oracle() {
    let Some(env) = Aws::with_config(contract::parts::config()).await else {
        return;
    };
    contract::parts::the_parts_path_is_no_existence_oracle(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_parts_are_aborted_by_the_reconciler() {
    let Some(env) = Aws::with_config(contract::parts::config()).await else {
        return;
    };
    contract::parts::abandoned_parts_are_aborted_by_the_reconciler(&env).await;
}

/// Each part's checksum is a signed header of its presigned UploadPart, as for whole PUTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_parts_sign_their_checksum_and_length() {
    let Some(env) = Aws::new().await else { return };
    let hash = ContentHash::of(b"part");
    let req = audio_dedup_core::ports::PresignPart {
        upload: audio_dedup_core::ports::MultipartRef {
            key: "prod/staging/x/y".into(),
            upload_id: "u1".into(),
        },
        part: audio_dedup_core::Part {
            number: 2,
            size: 4,
            sha256: hash,
        },
        uploader: "session:abc".into(),
        expires_in: std::time::Duration::from_secs(900),
    };
    let signed = env.blobs.presign_part(&req).await.unwrap();
    let query = signed.url.split_once('?').unwrap().1;
    let signed_headers = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("X-Amz-SignedHeaders="))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .unwrap()
                .into_owned()
        })
        .expect("X-Amz-SignedHeaders");
    for h in ["x-amz-checksum-sha256", "content-length"] {
        assert!(
            signed_headers.split(';').any(|s| s == h),
            "{h} not signed: {signed_headers}"
        );
    }
    assert!(query.contains("partNumber=2") && query.contains("uploadId=u1"));
    assert_eq!(signed.headers["x-amz-checksum-sha256"], hash.to_base64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_membership_changes_keep_record_and_feeds_consistent() {
    let Some(env) = Aws::new().await else { return };
    contract::chat::concurrent_membership_changes_keep_record_and_feeds_consistent(&env).await;
}

#[tokio::test]
async fn unread_counts_and_previews_follow_messages() {
    let Some(env) = Aws::new().await else { return };
    contract::unread::unread_counts_and_previews_follow_messages(env.dedup()).await;
}
