//! Hostile users over every store: a session flood stops at the quota, and a partial holder
//! can neither re-roll a challenge nor keep guessing.

use std::time::Duration;

use audio_dedup_core::audio::{proof_for, CompleteRequest, DirectUpload, SessionRequest};
use audio_dedup_core::ports::BlobBody;
use audio_dedup_core::*;
use bytes::Bytes;

use super::{assert_safe, bytes_of, user, Env};

fn hash_of(i: u32) -> ContentHash {
    ContentHash::of(format!("absent content {i}").as_bytes())
}

fn session(owner: &str, hash: ContentHash, size: u64) -> SessionRequest {
    SessionRequest {
        owner: user(owner),
        hash,
        size,
        format: AudioFormat::Mp3,
        reference: None,
    }
}

/// One user opens sessions on random hashes until the quota refuses one with
/// `quota_exceeded`, writing nothing; others are unaffected; expiry gives the quota back.
pub async fn a_session_flood_stops_at_the_quota<E: Env>(env: &E) {
    let d = env.dedup();
    let limit = d.config().limits.open_sessions;
    for i in 0..limit {
        d.audio()
            .open_session(session("mallory", hash_of(i), 1000))
            .await
            .unwrap_or_else(|e| panic!("session {i} of {limit}: {e}"));
    }
    let before = env.snapshot().await.0;
    let refused = d
        .audio()
        .open_session(session("mallory", hash_of(limit), 1000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::QuotaExceeded);
    assert!(refused.retry_after().is_some_and(|d| d > Duration::ZERO));
    assert_eq!(
        env.snapshot().await.0,
        before,
        "a refused open writes nothing"
    );
    d.audio()
        .open_session(session("alice", hash_of(limit), 1000))
        .await
        .expect("another user still opens sessions");
    assert_safe(env).await;

    // The sessions expire and the reconciler closes them: the quota is free again.
    env.advance(d.config().session_ttl + d.config().session_slack + Duration::from_secs(1));
    d.reconcile().await.expect("reconcile");
    d.audio()
        .open_session(session("mallory", hash_of(limit + 1), 1000))
        .await
        .expect("the quota is back after expiry");
    assert_safe(env).await;
}

/// A retried open (its answer lost) answers the same open session: no second quota slot and
/// no second charge to the day's bytes, so retries never lock a user out; the URL answered
/// again is signed for the rest of the session's life. Another size opens another session,
/// and so does a retry once less than half the session's life is left.
pub async fn a_retried_open_answers_the_same_session<E: Env>(env: &E) {
    let d = env.dedup();
    let limit = d.config().limits.open_sessions;
    let first = d
        .audio()
        .open_session(session("mallory", hash_of(7), 1000))
        .await
        .expect("open");
    let before = env.snapshot().await.0;
    for i in 0..limit + 5 {
        let again = d
            .audio()
            .open_session(session("mallory", hash_of(7), 1000))
            .await
            .unwrap_or_else(|e| panic!("retry {i}: {e}"));
        assert_eq!(again.session_id, first.session_id, "retry {i}");
        assert_eq!(again.expires_at, first.expires_at);
    }
    assert_eq!(
        env.snapshot().await.0,
        before,
        "a retried open writes nothing"
    );
    let other = d
        .audio()
        .open_session(session("mallory", hash_of(7), 2000))
        .await
        .expect("another size");
    assert_ne!(other.session_id, first.session_id);
    env.advance(d.config().session_ttl / 2 + Duration::from_secs(1));
    let late = d
        .audio()
        .open_session(session("mallory", hash_of(7), 1000))
        .await
        .expect("late retry");
    assert_ne!(
        late.session_id, first.session_id,
        "too little life left: a new one"
    );
    assert_safe(env).await;
}

/// Bob holds only the first 3/4 of alice's file. Every session he opens carries the same
/// challenge, so he cannot re-roll it until it lands in what he has; his wrong answers lock
/// him out of proving it; and failures on absent content count the same.
pub async fn a_partial_holder_cannot_reroll_or_keep_guessing<E: Env>(env: &E) {
    let d = env.dedup();
    let size = 2 * 1024 * 1024;
    let song = bytes_of(9, size);
    let hash = ContentHash::of(&song);
    d.audio()
        .upload_direct(DirectUpload {
            owner: user("alice"),
            format: AudioFormat::Flac,
            hash,
            size: size as u64,
            body: BlobBody::Bytes(Bytes::from(song.clone())),
            reference: None,
        })
        .await
        .expect("alice uploads");
    let mut partial = song.clone();
    partial[size * 3 / 4..].fill(0);

    let first = d
        .audio()
        .open_session(session("bob", hash, size as u64))
        .await
        .unwrap();
    let answer = |bytes: &[u8], s: &UploadSession| {
        let chunks = s
            .challenge
            .ranges
            .iter()
            .map(|r| &bytes[r.offset as usize..(r.offset + r.length) as usize]);
        Proof::new(&proof_for(&s.challenge.nonce, chunks)).unwrap()
    };
    let complete = |s: &UploadSession, proof: Proof| {
        d.audio().complete(CompleteRequest {
            owner: user("bob"),
            hash,
            session_id: s.session_id.clone(),
            proof: Some(proof),
        })
    };
    let failures = d.config().limits.proof_failures;
    for attempt in 0..failures {
        let s = d
            .audio()
            .open_session(session("bob", hash, size as u64))
            .await
            .unwrap();
        // Still open, same size: the open is answered with the same session.
        assert_eq!(s.session_id, first.session_id);
        assert_eq!(
            (&s.challenge.nonce, &s.challenge.ranges),
            (&first.challenge.nonce, &first.challenge.ranges),
            "session {attempt}: the same challenge until it is answered or expires"
        );
        assert_eq!(
            complete(&s, answer(&partial, &s)).await.unwrap_err().code(),
            ErrorCode::UploadRequired,
            "attempt {attempt}: 3/4 of the bytes do not answer 140 ranges"
        );
    }
    // Locked out: even the right answer is refused until the lockout ends.
    let locked = complete(&first, answer(&song, &first)).await.unwrap_err();
    assert_eq!(locked.code(), ErrorCode::RateLimited);
    let wait = locked.retry_after().expect("a lockout says how long");
    assert!(wait <= d.config().limits.proof_lockout && wait > Duration::ZERO);
    assert!(d.audio().describe(&user("bob"), &hash).await.is_err());

    // Carol guesses at content nobody stored: locked out the same way, so the lockout
    // does not tell her whether it exists.
    let absent = ContentHash::of(b"nobody has this");
    let c = d
        .audio()
        .open_session(session("carol", absent, size as u64))
        .await
        .unwrap();
    let carol = |proof: Proof| {
        d.audio().complete(CompleteRequest {
            owner: user("carol"),
            hash: absent,
            session_id: c.session_id.clone(),
            proof: Some(proof),
        })
    };
    for _ in 0..failures {
        assert_eq!(
            carol(answer(&partial, &c)).await.unwrap_err().code(),
            ErrorCode::UploadRequired
        );
    }
    assert_eq!(
        carol(answer(&partial, &c)).await.unwrap_err().code(),
        ErrorCode::RateLimited
    );

    // After the lockout, a new session (the old challenge has expired) and the whole file.
    env.advance(wait + Duration::from_secs(1));
    let s = d
        .audio()
        .open_session(session("bob", hash, size as u64))
        .await
        .unwrap();
    assert_ne!(s.challenge.nonce, first.challenge.nonce);
    assert!(complete(&s, answer(&song, &s)).await.unwrap().deduplicated);
    assert!(d.audio().describe(&user("bob"), &hash).await.is_ok());
    assert_safe(env).await;
}
