//! The upload service end to end against the local server (in-process, loopback, ephemeral
//! port): hash first, claim by proof when the content exists (no audio byte sent), otherwise
//! a streamed PUT to the signed URL with progress.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use audio_dedup_client::{
    ApiError, Client, ClientConfig, ClientError, Direction, TokenUnavailable, Update,
};
use audio_dedup_core::{AudioFormat, ContentHash};

use support::{TempServer, ALICE, BOB};

fn client(server: &TempServer, token: &str, dir: &Path) -> Client {
    let mut cfg = ClientConfig::new(&server.base, token, dir);
    cfg.request_timeout = Duration::from_secs(20);
    Client::open(cfg).expect("open client")
}

/// Deterministic pseudo-random bytes (distinct per seed).
fn audio(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write file");
    p
}

/// Upload transfer updates seen so far (without waiting).
fn upload_updates(rx: &mut tokio::sync::broadcast::Receiver<Update>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while let Ok(u) = rx.try_recv() {
        if let Update::Transfer {
            direction: Direction::Upload,
            done,
            total,
            ..
        } = u
        {
            out.push((done, total));
        }
    }
    out
}

async fn stats(server: &TempServer, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/v1/audio/stats", server.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

#[tokio::test]
async fn the_same_file_twice_sends_its_bytes_once() {
    let server = TempServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = client(&server, ALICE, &dir.path().join("cache"));
    let song = audio(1, 1_500_000);
    let path = write(dir.path(), "song.mp3", &song);
    let hash = ContentHash::of(&song);
    let mut updates = alice.subscribe();

    let seen = Mutex::new(Vec::new());
    let cb = |d: u64, t: u64| seen.lock().expect("lock").push((d, t));
    let first = alice
        .upload_audio(&path, AudioFormat::Mp3, Some(&cb))
        .await
        .expect("first upload");
    assert_eq!(first.content_hash, hash);
    assert_eq!(first.size, song.len() as u64);
    assert!(!first.deduplicated);
    assert_eq!(first.bytes_sent, song.len() as u64);
    let total = song.len() as u64;
    let seen = seen.into_inner().expect("lock");
    assert_eq!(seen.first(), Some(&(0, total)), "progress starts at 0");
    assert_eq!(
        seen.last(),
        Some(&(total, total)),
        "progress reaches the total"
    );
    assert!(seen.len() > 2, "progress in steps: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "monotonic: {seen:?}"
    );
    let ups = upload_updates(&mut updates);
    assert_eq!(ups.last(), Some(&(total, total)));

    let calls = Mutex::new(0u32);
    let cb = |_: u64, _: u64| *calls.lock().expect("lock") += 1;
    let second = alice
        .upload_audio(&path, AudioFormat::Mp3, Some(&cb))
        .await
        .expect("second upload");
    assert_eq!(
        (second.content_hash, second.deduplicated, second.bytes_sent),
        (hash, true, 0),
        "the second upload claims the content by proof"
    );
    assert_eq!(*calls.lock().expect("lock"), 0, "no transfer progress");
    assert!(
        upload_updates(&mut updates).is_empty(),
        "no transfer updates"
    );

    // Nothing references it yet: stored once, counted apart from the dedup figures.
    let st = stats(&server, ALICE).await;
    assert_eq!(st["unreferenced_files"], 1, "{st}");
    assert_eq!(st["unreferenced_bytes"], total, "{st}");
    assert_eq!(st["unique_files"], 0, "{st}");
    // Claims in flight are an admin's figure: a caller without the bytes could tell from
    // it whether a file exists.
    assert!(st.get("pending_uploads").is_none(), "{st}");
}

#[tokio::test]
async fn another_user_with_the_same_content_claims_it_by_proof() {
    let server = TempServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = client(&server, ALICE, &dir.path().join("alice"));
    let bob = client(&server, BOB, &dir.path().join("bob"));
    // One file above the whole-file proof size (sampled ranges), one below it (whole file).
    for (seed, len) in [(2u64, 1_200_000usize), (3, 40_000)] {
        let song = audio(seed, len);
        let a = write(dir.path(), &format!("alice-{seed}.flac"), &song);
        let b = write(dir.path(), &format!("bob-{seed}.flac"), &song);
        let hash = ContentHash::of(&song);
        let up = alice
            .upload_audio(&a, AudioFormat::Flac, None)
            .await
            .expect("alice uploads");
        assert_eq!((up.deduplicated, up.bytes_sent), (false, len as u64));

        // Bob has never been granted this content: he cannot describe it yet.
        let before = bob.api().describe(&hash).await.expect_err("not bob's yet");
        assert_eq!(before.status(), Some(404));
        let mut updates = bob.subscribe();
        let claimed = bob
            .upload_audio(&b, AudioFormat::Flac, None)
            .await
            .expect("bob uploads");
        assert_eq!(
            (
                claimed.content_hash,
                claimed.deduplicated,
                claimed.bytes_sent
            ),
            (hash, true, 0)
        );
        assert!(upload_updates(&mut updates).is_empty(), "bob sent no bytes");
        // The proof made him a holder.
        let view = bob.api().describe(&hash).await.expect("bob holds it now");
        assert_eq!(view.size, len as u64);
    }
    let st = stats(&server, ALICE).await;
    assert_eq!(st["unreferenced_files"], 2, "{st}");
}

#[tokio::test]
async fn a_file_that_differs_from_the_claimed_hash_is_sent_not_proved() {
    // Bob has different bytes of the same length as Alice's: his own hash, his own upload.
    let server = TempServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = client(&server, ALICE, &dir.path().join("alice"));
    let bob = client(&server, BOB, &dir.path().join("bob"));
    let a = write(dir.path(), "a.ogg", &audio(4, 200_000));
    let b = write(dir.path(), "b.ogg", &audio(5, 200_000));
    alice
        .upload_audio(&a, AudioFormat::Ogg, None)
        .await
        .expect("alice");
    let up = bob
        .upload_audio(&b, AudioFormat::Ogg, None)
        .await
        .expect("bob");
    assert_eq!((up.deduplicated, up.bytes_sent), (false, 200_000));
    assert_eq!(stats(&server, ALICE).await["unreferenced_files"], 2);
}

#[tokio::test]
async fn errors_are_classified() {
    let server = TempServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = client(&server, ALICE, &dir.path().join("alice"));
    let missing = alice
        .upload_audio(&dir.path().join("missing.mp3"), AudioFormat::Mp3, None)
        .await
        .expect_err("no such file");
    assert!(matches!(missing, ClientError::Io(_)), "{missing:?}");

    // A bad token: refused (401), asked for a fresh one (the same fixed token), refused
    // again: signed out, waiting for a new token, not retryable as is.
    let stranger = client(&server, "not-a-token-00000000000", &dir.path().join("x"));
    let mut updates = stranger.subscribe();
    let f = write(dir.path(), "s.mp3", &audio(6, 1000));
    let err = stranger
        .upload_audio(&f, AudioFormat::Mp3, None)
        .await
        .expect_err("unauthorized");
    let api = err.api().expect("an API error");
    assert!(
        matches!(api, ApiError::AuthRequired(TokenUnavailable::Refused)),
        "{api:?}"
    );
    assert!(!api.is_retryable());
    assert!(stranger.is_signed_out());
    let mut told = false;
    while let Ok(u) = updates.try_recv() {
        told |= matches!(u, Update::AuthRequired { .. });
    }
    assert!(told, "the app is told the user must sign in again");

    // Nothing listening: offline, retryable.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut cfg = ClientConfig::new(
        format!("http://127.0.0.1:{port}"),
        ALICE,
        dir.path().join("y"),
    );
    cfg.request_timeout = Duration::from_secs(5);
    let offline = Client::open(cfg).expect("open");
    let err = offline
        .upload_audio(&f, AudioFormat::Mp3, None)
        .await
        .expect_err("offline");
    assert!(err.api().is_some_and(|e| e.is_retryable()), "{err:?}");
    assert!(!offline.is_online());
}

/// Bob answered wrongly three times and is locked out of proving alice's song. His honest
/// upload then neither fails for good nor loops: it tries the bytes (stored already, so the
/// PUT is refused), and answers a retryable 429 that says how long the lockout lasts.
#[tokio::test]
async fn a_locked_out_uploader_gets_a_retryable_429_with_the_lockout() {
    use audio_dedup_core::ErrorCode;

    let server = TempServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = client(&server, ALICE, &dir.path().join("alice"));
    let bob = client(&server, BOB, &dir.path().join("bob"));
    let song = audio(11, 1_500_000);
    let path = write(dir.path(), "song.flac", &song);
    let hash = ContentHash::of(&song);
    alice
        .upload_audio(&path, AudioFormat::Flac, None)
        .await
        .expect("alice uploads");
    let session = bob
        .api()
        .open_session(&hash, song.len() as u64, AudioFormat::Flac, None)
        .await
        .expect("bob opens a session");
    for _ in 0..3 {
        let wrong = bob
            .api()
            .complete(&hash, &session.session_id, Some(&"ab".repeat(32)))
            .await
            .expect_err("a wrong proof");
        assert!(matches!(
            wrong,
            ApiError::Rejected {
                code: ErrorCode::UploadRequired,
                ..
            }
        ));
    }
    let e = bob
        .upload_audio(&path, AudioFormat::Flac, None)
        .await
        .expect_err("locked out");
    assert!(e.api().is_some_and(ApiError::is_retryable), "{e:?}");
    match e.api() {
        Some(ApiError::Retryable {
            status: 429,
            code: ErrorCode::RateLimited,
            retry_after: Some(wait),
        }) => assert!(*wait > Duration::from_secs(59 * 60), "{wait:?}"),
        other => panic!("expected a retryable 429 with the lockout, got {other:?}"),
    }
}
