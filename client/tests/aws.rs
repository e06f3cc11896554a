//! The client against the same API over the AWS adapters (DynamoDB + S3 on moto's server):
//! the Lambda functions' router on a loopback port, with audio going straight to S3 through
//! presigned URLs. `scripts/test` starts moto and sets `AUDIO_DEDUP_MOTO_ENDPOINT`; without it
//! this test is skipped (and fails when `AUDIO_DEDUP_REQUIRE_MOTO=1`, as in CI).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use audio_dedup_api::{bearer, ApiConfig, Authenticator, Caller, RouteSet};
use audio_dedup_client::{Attachment, Client, ClientConfig, SendState};
use audio_dedup_core::store::aws::{clients_from_env, DynamoIndex, S3Blobs};
use audio_dedup_core::{AudioFormat, AudioRender, Dedup, DedupConfig, ThreadId};
use serde_json::json;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Bearer tokens named by user: `token-<user>` (the Lambda functions read the JWT's `sub`).
struct Tokens;

impl Authenticator for Tokens {
    fn authenticate(&self, parts: &http::request::Parts) -> Option<Caller> {
        let user = bearer(parts)?.strip_prefix("token-")?.parse().ok()?;
        Some(Caller { user, admin: false })
    }
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

/// The whole API over DynamoDB + S3 (moto), served on a loopback port.
async fn aws_api() -> Option<String> {
    aws_api_and_bucket().await.map(|(url, _)| url)
}

/// `aws_api`, and the bucket it stores audio in (keys `prod/audio/<sha256>`).
async fn aws_api_and_bucket() -> Option<(String, String)> {
    let endpoint = endpoint()?;
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    let (ddb, s3) = clients_from_env(true).await;
    let unique = format!(
        "client-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let index = DynamoIndex::new(ddb, unique.clone());
    index.create_table().await.expect("create table");
    let blobs = S3Blobs::new(s3, unique.clone(), "prod/");
    blobs.create_bucket().await.expect("create bucket");
    let cfg = DedupConfig {
        key_prefix: "prod/".into(),
        ..DedupConfig::default()
    };
    let dedup = Arc::new(Dedup::new(blobs, index, cfg));
    let app = audio_dedup_api::router(dedup, Arc::new(Tokens), ApiConfig::default(), RouteSet::All);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Some((url, unique))
}

fn client(url: &str, user: &str, dir: &std::path::Path) -> Client {
    let mut cfg = ClientConfig::new(url, format!("token-{user}"), dir);
    cfg.request_timeout = Duration::from_secs(20);
    Client::open(cfg).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_works_against_the_aws_adapters() {
    let Some(url) = aws_api().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let alice = client(&url, "alice", &dir.path().join("alice"));
    let bob = client(&url, "bob", &dir.path().join("bob"));

    // Upload through a presigned S3 PUT; the same bytes again send nothing.
    let song: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = dir.path().join("take.wav");
    std::fs::write(&path, &song).unwrap();
    let first = alice
        .upload_audio(&path, AudioFormat::Wav, None)
        .await
        .unwrap();
    assert!(!first.deduplicated);
    assert_eq!(first.bytes_sent, song.len() as u64);
    let again = bob
        .upload_audio(&path, AudioFormat::Wav, None)
        .await
        .unwrap();
    assert!(again.deduplicated, "bob proves possession; no bytes");
    assert_eq!(again.bytes_sent, 0);

    // A thread, a message carrying the audio, synced by the other member.
    let thread: ThreadId = "jam".parse().unwrap();
    alice
        .create_thread(Some(&thread), "Jam", &["bob".to_owned()])
        .await
        .unwrap();
    let render = AudioRender {
        content_hash: first.content_hash,
        format: AudioFormat::Wav,
    };
    let sent = alice
        .send_message(
            &thread,
            &json!({"bpm": 128}),
            Some(Attachment::Uploaded(render)),
        )
        .await
        .unwrap();
    assert_eq!(sent.send_state, SendState::Sent, "{:?}", sent.error);
    let r = bob.sync_messages(&thread).await.unwrap();
    assert_eq!(r.new, 1);
    let got = bob.messages(&thread).unwrap();
    assert_eq!(got[0].audio, Some(render));
    let snap = bob.snapshot(&got[0].id).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&snap).unwrap(),
        json!({"bpm": 128})
    );

    // The audio, downloaded through a presigned S3 GET and verified by hash.
    let handle = bob.playable_path(&render, None, None).await.unwrap();
    assert_eq!(std::fs::read(handle.path()).unwrap(), song);
}

/// "Two people, two devices" over DynamoDB + S3: the same story as on the local server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_two_devices_on_the_aws_adapters() {
    let Some((url, bucket)) = aws_api_and_bucket().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let alice = client(&url, "alice", &dir.path().join("alice"));
    let bob = client(&url, "bob", &dir.path().join("bob"));
    let carol = client(&url, "carol", &dir.path().join("carol"));
    let (_, s3) = clients_from_env(true).await;
    // Gone from the bucket: no object under the content's key.
    let gone = async |h: &audio_dedup_core::ContentHash| {
        let listed = s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(format!("prod/audio/{}", h.to_hex()))
            .send()
            .await
            .expect("list the bucket");
        listed.contents().is_empty()
    };
    support::story::two_devices(&alice, &bob, &carol, dir.path(), gone).await;
}
