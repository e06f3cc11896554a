//! The s3-events handler, fed S3 notifications built from `sam local generate-event s3 put|delete`
//! (functions/fixtures), varied the ways S3 and Lambda vary them.

use audio_dedup_core::audio::{CompleteRequest, SessionRequest};
use audio_dedup_core::ports::{BlobStore, PutOutcome};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::store::memory::{MemoryBlobs, MemoryIndex};
use audio_dedup_core::{
    AudioFormat, ContentHash, Dedup, DedupConfig, PendingReference, ReferenceKind, Uploader, UserId,
};
use aws_lambda_events::s3::S3Event;
use serde_json::{json, Value};

const PREFIX: &str = "prod/";

fn fixture(name: &str) -> Value {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One record from the SAM fixture with our key (raw, as S3 encodes it) and version.
fn record(fixture_name: &str, raw_key: &str, version: Option<&str>, sequencer: &str) -> Value {
    let mut ev = fixture(fixture_name);
    let mut r = ev["Records"][0].take();
    r["s3"]["object"]["key"] = json!(raw_key);
    r["s3"]["object"]["sequencer"] = json!(sequencer);
    if let Some(v) = version {
        r["s3"]["object"]["versionId"] = json!(v);
    }
    r
}

fn event(records: Vec<Value>) -> S3Event {
    serde_json::from_value(json!({ "Records": records })).expect("S3Event parses")
}

struct World {
    d: Dedup<MemoryBlobs, MemoryIndex>,
    blobs: MemoryBlobs,
}

fn world() -> World {
    let blobs = MemoryBlobs::default();
    let cfg = DedupConfig {
        key_prefix: PREFIX.into(),
        ..DedupConfig::default()
    };
    World {
        d: Dedup::new(blobs.clone(), MemoryIndex::default(), cfg),
        blobs,
    }
}

async fn uploaded(
    w: &World,
    data: &'static [u8],
) -> (ContentHash, String, String, audio_dedup_core::SessionId) {
    uploaded_as(w, data, "m1").await
}

/// A session whose PUT landed: (hash, key, version, session id).
async fn uploaded_as(
    w: &World,
    data: &'static [u8],
    ref_id: &str,
) -> (ContentHash, String, String, audio_dedup_core::SessionId) {
    let hash = ContentHash::of(data);
    let s =
        w.d.audio()
            .open_session(SessionRequest {
                owner: "alice".parse().unwrap(),
                hash,
                size: data.len() as u64,
                format: AudioFormat::Mp3,
                reference: Some(PendingReference {
                    kind: ReferenceKind::Message,
                    ref_id: ref_id.parse().unwrap(),
                }),
            })
            .await
            .unwrap();
    let key = keys::blob_key(PREFIX, &hash);
    let PutOutcome::Created { version } = w.blobs.client_put(
        &key,
        bytes::Bytes::from_static(data),
        &Uploader::Session(s.session_id.clone()).to_string(),
    ) else {
        panic!("put")
    };
    (hash, key, version, s.session_id)
}

#[tokio::test]
async fn the_sam_fixture_parses_and_a_created_event_completes_the_session() {
    let w = world();
    let (hash, key, version, session_id) = uploaded(&w, b"created by event").await;
    let ev = event(vec![record("s3-put.json", &key, Some(&version), "0A1")]);
    let out = s3_events::handle(&w.d, ev).await.unwrap();
    assert_eq!((out.applied, out.ignored, out.skipped), (1, 0, 0));
    assert_eq!(w.d.audio().stats().await.unwrap().total_references, 1);
    // The client's complete, arriving after the event, is a no-op that answers success.
    let r =
        w.d.audio()
            .complete(CompleteRequest {
                owner: "alice".parse().unwrap(),
                hash,
                session_id,
                proof: None,
            })
            .await
            .unwrap();
    assert!(!r.deduplicated);
    assert_eq!(w.d.audio().stats().await.unwrap().total_references, 1);
}

#[tokio::test]
async fn duplicated_records_apply_once() {
    let w = world();
    let (_, key, version, _) = uploaded(&w, b"duplicated").await;
    let rec = record("s3-put.json", &key, Some(&version), "0A1");
    s3_events::handle(&w.d, event(vec![rec.clone(), rec.clone()]))
        .await
        .unwrap();
    s3_events::handle(&w.d, event(vec![rec])).await.unwrap();
    let s = w.d.audio().stats().await.unwrap();
    assert_eq!((s.unique_files, s.total_references), (1, 1));
}

#[tokio::test]
async fn url_encoded_keys_are_decoded() {
    // Our keys are plain, but a prefix with a space or reserved characters arrives encoded.
    let blobs = MemoryBlobs::default();
    let cfg = DedupConfig {
        key_prefix: "my bucket+dir/".into(),
        ..DedupConfig::default()
    };
    let d = Dedup::new(blobs.clone(), MemoryIndex::default(), cfg);
    let data = b"encoded key";
    let hash = ContentHash::of(data);
    let s = d
        .audio()
        .open_session(SessionRequest {
            owner: "bob".parse().unwrap(),
            hash,
            size: 11,
            format: AudioFormat::Ogg,
            reference: None,
        })
        .await
        .unwrap();
    let key = keys::blob_key("my bucket+dir/", &hash);
    let PutOutcome::Created { version } = blobs.client_put(
        &key,
        bytes::Bytes::from_static(data),
        &Uploader::Session(s.session_id.clone()).to_string(),
    ) else {
        panic!("put")
    };
    assert_eq!(
        s3_events::decode_key("my+bucket%2Bdir/audio/x").as_deref(),
        Some("my bucket+dir/audio/x")
    );
    assert_eq!(
        s3_events::decode_key("my%20bucket%2Bdir/audio/x").as_deref(),
        Some("my bucket+dir/audio/x")
    );
    let raw = format!("my+bucket%2Bdir/audio/{hash}");
    let out = s3_events::handle(
        &d,
        event(vec![record("s3-put.json", &raw, Some(&version), "1")]),
    )
    .await
    .unwrap();
    assert_eq!(out.applied, 1);
    // Active, and held by no reference yet: counted apart from the deduplicated files.
    let s = d.audio().stats().await.unwrap();
    assert_eq!((s.unique_files, s.unreferenced_files), (0, 1));
    let user: UserId = "bob".parse().unwrap();
    assert!(
        d.audio().describe(&user, &hash).await.is_ok(),
        "the uploading session was completed by the event"
    );
}

#[tokio::test]
async fn unknown_keys_and_records_without_versions_are_skipped() {
    let w = world();
    let ev = event(vec![
        record("s3-put.json", "someone/else/file.mp3", Some("v1"), "1"),
        record("s3-put.json", "prod/audio/not-a-hash", Some("v1"), "2"),
        record(
            "s3-put.json",
            &format!("prod/audio/{}", ContentHash::of(b"x")),
            None,
            "3",
        ),
    ]);
    let out = s3_events::handle(&w.d, ev).await.unwrap();
    assert_eq!((out.applied, out.ignored, out.skipped), (0, 2, 1));
    assert!(w.blobs.objects().is_empty());
}

#[tokio::test]
async fn late_and_out_of_order_events_never_touch_a_newer_upload() {
    let w = world();
    let (hash, key, v1, _) = uploaded(&w, b"generations").await;
    let created_v1 = record("s3-put.json", &key, Some(&v1), "01");
    s3_events::handle(&w.d, event(vec![created_v1.clone()]))
        .await
        .unwrap();
    // Last reference goes; v1 is deleted.
    let alice: UserId = "alice".parse().unwrap();
    w.d.audio()
        .remove_reference(&alice, &hash, &"m1".parse().unwrap())
        .await
        .unwrap();
    assert!(w.blobs.head(&key).await.unwrap().is_none());
    // Re-uploaded: a new generation at v2.
    let (_, _, v2, _) = uploaded_as(&w, b"generations", "m2").await;
    assert_ne!(v1, v2);
    // Old events arrive late and out of order: removed(v1) then created(v1), then the new one.
    let removed_v1 = record("s3-delete.json", &key, Some(&v1), "02");
    let created_v2 = record("s3-put.json", &key, Some(&v2), "03");
    let out = s3_events::handle(&w.d, event(vec![removed_v1, created_v1, created_v2]))
        .await
        .unwrap();
    assert_eq!(out.applied, 1, "only the current version's event applies");
    assert_eq!(
        w.blobs.head(&key).await.unwrap().map(|m| m.version),
        Some(v2)
    );
    assert_eq!(w.d.audio().stats().await.unwrap().total_references, 1);
}

#[tokio::test]
async fn a_removed_event_finishes_an_interrupted_deletion() {
    let w = world();
    let (hash, key, version, _) = uploaded(&w, b"to delete").await;
    s3_events::handle(
        &w.d,
        event(vec![record("s3-put.json", &key, Some(&version), "1")]),
    )
    .await
    .unwrap();
    // Someone deletes the exact version (as the protocol's delete would) but the index write
    // after it never happened: emulate with the blob store directly, then deliver the event.
    let alice: UserId = "alice".parse().unwrap();
    w.d.audio()
        .remove_reference(&alice, &hash, &"m1".parse().unwrap())
        .await
        .unwrap();
    let removed = record("s3-delete.json", &key, Some(&version), "2");
    let out = s3_events::handle(&w.d, event(vec![removed.clone(), removed]))
        .await
        .unwrap();
    assert_eq!(out.applied + out.ignored, 2);
    let s = w.d.audio().stats().await.unwrap();
    assert_eq!((s.unique_files, s.deleting), (0, Some(0)));
}
