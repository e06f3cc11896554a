//! Parted uploads, from each side: the uploader who resumes, the attacker who sends wrong
//! bytes or claims content with parts of other content, the stranger who takes someone's
//! session, the caller without the bytes, and the operator whose abandoned uploads the
//! reconciler aborts. Stores must take parts of at least 5 MiB (S3's minimum but the last),
//! so the content here is 12 MiB in parts of 5 MiB.

use std::time::Duration;

use audio_dedup_core::audio::{CompleteRequest, PartsRequest, SessionRequest};
use audio_dedup_core::*;

use super::{assert_safe, assert_settled, bytes_of, user, Env};

pub const PART: u64 = 5 * 1024 * 1024;
const SIZE: usize = 12 * 1024 * 1024;

/// The config these scenarios run under (a store's `Env` is built with it).
/// No time for the whole-object check in one call: a store that has no whole SHA-256 of
/// its own reads one range per complete call, and each call goes on where the last stopped.
pub fn config() -> DedupConfig {
    DedupConfig {
        part_size: PART,
        verify_budget: Duration::ZERO,
        ..Default::default()
    }
}

/// Completes, calling again while the server answers `busy` (the check goes on): the
/// result and how many calls answered `busy`.
async fn complete_until_done<E: Env>(
    env: &E,
    owner: &str,
    s: &UploadSession,
) -> (Result<UploadResult, DedupError>, usize) {
    let mut busy = 0;
    loop {
        match env.dedup().audio().complete(complete(owner, s)).await {
            Err(e) if e.code() == ErrorCode::Busy && busy < 20 => busy += 1,
            other => return (other, busy),
        }
    }
}

fn open(owner: &str, hash: ContentHash, size: u64) -> SessionRequest {
    SessionRequest {
        owner: user(owner),
        hash,
        size,
        format: AudioFormat::Wav,
        reference: None,
    }
}

fn complete(owner: &str, s: &UploadSession) -> CompleteRequest {
    CompleteRequest {
        owner: user(owner),
        hash: s.content_hash,
        session_id: s.session_id.clone(),
        proof: None,
    }
}

/// Part `n` of `data` as the plan cuts it.
fn part_of(plan: &PartsPlan, data: &[u8], n: u32) -> (Part, Vec<u8>) {
    let (offset, len) = plan.span(n).expect("part in plan");
    let bytes = data[offset as usize..(offset + len) as usize].to_vec();
    let part = Part {
        number: n,
        size: len,
        sha256: ContentHash::of(&bytes),
    };
    (part, bytes)
}

async fn sign<E: Env>(
    env: &E,
    owner: &str,
    s: &UploadSession,
    parts: Vec<Part>,
) -> Vec<PartUpload> {
    env.dedup()
        .audio()
        .sign_parts(PartsRequest {
            owner: user(owner),
            hash: s.content_hash,
            session_id: s.session_id.clone(),
            parts,
        })
        .await
        .expect("sign parts")
}

/// Sends part `n` of `data` through its signed URL; the HTTP status.
async fn send<E: Env>(env: &E, owner: &str, s: &UploadSession, data: &[u8], n: u32) -> u16 {
    let plan = s.parts.expect("a parted session");
    let (part, bytes) = part_of(&plan, data, n);
    let signed = sign(env, owner, s, vec![part]).await;
    env.client_put(&signed[0].upload, bytes).await
}

/// A parted session on `data`, every part sent (not completed).
async fn send_all<E: Env>(env: &E, owner: &str, data: &[u8]) -> UploadSession {
    let s = env
        .dedup()
        .audio()
        .open_session(open(owner, ContentHash::of(data), data.len() as u64))
        .await
        .expect("open");
    let count = s.parts.expect("a parted session").part_count;
    for n in 1..=count {
        assert_eq!(send(env, owner, &s, data, n).await, 200, "part {n}");
    }
    s
}

/// The uploader: a 12 MiB file goes up in three parts; after two of them (a kill), the
/// server lists those two, completing early names what is missing, and the rest completes
/// it. The object appears under the content's key only then, nothing stays staged, and a
/// retried complete answers the same.
pub async fn a_parted_upload_resumes_and_publishes_verified_content<E: Env>(env: &E) -> usize {
    let d = env.dedup();
    let song = bytes_of(21, SIZE);
    let hash = ContentHash::of(&song);
    let s = d
        .audio()
        .open_session(open("alice", hash, SIZE as u64))
        .await
        .expect("open");
    let plan = s.parts.expect("large content takes parts");
    assert!(s.upload.is_none(), "no whole-file URL for a parted session");
    assert_eq!((plan.part_count, plan.part_size), (3, PART));
    for n in [1, 2] {
        assert_eq!(send(env, "alice", &s, &song, n).await, 200, "part {n}");
    }
    let held = d
        .audio()
        .uploaded_parts(&user("alice"), &hash, &s.session_id)
        .await
        .expect("list");
    let numbers: Vec<u32> = held.parts.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(held.parts[1], part_of(&plan, &song, 2).0);
    let early = d.audio().complete(complete("alice", &s)).await.unwrap_err();
    assert_eq!(early.code(), ErrorCode::PartsMissing, "{early}");
    assert!(d.audio().describe(&user("alice"), &hash).await.is_err());
    // Part 2 sent again (a retry after a lost answer) replaces itself.
    assert_eq!(send(env, "alice", &s, &song, 2).await, 200);
    assert_eq!(send(env, "alice", &s, &song, 3).await, 200);
    let (done, busy) = complete_until_done(env, "alice", &s).await;
    let done = done.expect("complete");
    assert!(!done.deduplicated);
    assert_eq!(done.size, SIZE as u64);
    let again = d
        .audio()
        .complete(complete("alice", &s))
        .await
        .expect("retry");
    assert_eq!((again.content_hash, again.deduplicated), (hash, false));
    let (_, objects, _) = env.snapshot().await;
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let key = audio_dedup_core::protocol::keys::blob_key(&d.config().key_prefix, &hash);
    assert_eq!(keys, vec![key.as_str()], "nothing staged");
    assert_eq!(env.uploads_in_progress().await, 0);
    assert_safe(env).await;
    busy
}

/// The attacker: a part whose bytes are not what its URL was signed for is refused; parts
/// of other content (each matching its own signed checksum) never make an object under
/// the claimed hash: the session is closed and what was staged deleted.
pub async fn wrong_bytes_never_appear_under_the_hash<E: Env>(env: &E) {
    let d = env.dedup();
    let song = bytes_of(22, SIZE);
    let hash = ContentHash::of(&song);
    let s = d
        .audio()
        .open_session(open("mallory", hash, SIZE as u64))
        .await
        .expect("open");
    let plan = s.parts.expect("parted");
    let (part, mut bytes) = part_of(&plan, &song, 1);
    let signed = sign(env, "mallory", &s, vec![part]).await;
    bytes[0] ^= 1;
    let status = env.client_put(&signed[0].upload, bytes).await;
    assert_eq!(status, 400, "a part with wrong bytes is refused");
    // Other bytes of the same length, each part signed with its own hash.
    let fake = bytes_of(99, SIZE);
    for n in 1..=plan.part_count {
        assert_eq!(send(env, "mallory", &s, &fake, n).await, 200);
    }
    let e = complete_until_done(env, "mallory", &s).await.0.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ChecksumMismatch, "{e}");
    let (_, objects, _) = env.snapshot().await;
    assert!(objects.is_empty(), "nothing stored: {objects:?}");
    let closed = d
        .audio()
        .complete(complete("mallory", &s))
        .await
        .unwrap_err();
    assert_eq!(closed.code(), ErrorCode::SessionExpired);
    assert_safe(env).await;
}

/// A stranger cannot sign, list or complete someone else's parted session: the answer is
/// the one for a session that does not exist.
pub async fn a_stranger_cannot_use_someone_elses_parts<E: Env>(env: &E) {
    let d = env.dedup();
    let song = bytes_of(23, SIZE);
    let hash = ContentHash::of(&song);
    let s = send_all(env, "alice", &song).await;
    let plan = s.parts.expect("parted");
    let signed = d
        .audio()
        .sign_parts(PartsRequest {
            owner: user("bob"),
            hash,
            session_id: s.session_id.clone(),
            parts: vec![part_of(&plan, &song, 1).0],
        })
        .await
        .unwrap_err();
    assert_eq!(signed.code(), ErrorCode::SessionNotFound);
    let listed = d
        .audio()
        .uploaded_parts(&user("bob"), &hash, &s.session_id)
        .await
        .unwrap_err();
    assert_eq!(listed.code(), ErrorCode::SessionNotFound);
    let done = d.audio().complete(complete("bob", &s)).await.unwrap_err();
    assert_eq!(done.code(), ErrorCode::SessionNotFound);
    complete_until_done(env, "alice", &s)
        .await
        .0
        .expect("the owner completes");
    assert_safe(env).await;
}

/// A caller without the bytes learns nothing from the parts path: the session looks the
/// same for stored and absent content, and completing it without sending anything answers
/// `upload_required` either way, as the single PUT's path does.
pub async fn the_parts_path_is_no_existence_oracle<E: Env>(env: &E) {
    let d = env.dedup();
    let song = bytes_of(24, SIZE);
    let stored = ContentHash::of(&song);
    let s = send_all(env, "alice", &song).await;
    complete_until_done(env, "alice", &s)
        .await
        .0
        .expect("stored");
    let absent = ContentHash::of(&bytes_of(25, SIZE));
    let mut answers = Vec::new();
    for hash in [stored, absent] {
        let s = d
            .audio()
            .open_session(open("eve", hash, SIZE as u64))
            .await
            .expect("open");
        let e = d.audio().complete(complete("eve", &s)).await.unwrap_err();
        answers.push((
            s.parts,
            s.upload.is_some(),
            s.challenge.ranges.len(),
            e.code(),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].3, ErrorCode::UploadRequired);
    assert_safe(env).await;
}

/// The operator: an abandoned parted upload holds its owner's session slot (quota) until
/// the reconciler expires the session, which aborts the upload and frees the slot.
pub async fn abandoned_parts_are_aborted_by_the_reconciler<E: Env>(env: &E) {
    let d = env.dedup();
    let limit = d.config().limits.open_sessions;
    let song = bytes_of(26, SIZE);
    let hash = ContentHash::of(&song);
    let s = d
        .audio()
        .open_session(open("alice", hash, SIZE as u64))
        .await
        .expect("open");
    assert_eq!(send(env, "alice", &s, &song, 1).await, 200);
    assert_eq!(env.uploads_in_progress().await, 1);
    // Counted against the quota until then: the slots left are one fewer.
    for i in 1..limit {
        d.audio()
            .open_session(open("alice", ContentHash::of(&[i as u8, 7]), 100))
            .await
            .expect("a slot left");
    }
    let full = d
        .audio()
        .open_session(open("alice", ContentHash::of(b"one too many"), 100))
        .await
        .unwrap_err();
    assert_eq!(full.code(), ErrorCode::QuotaExceeded);
    env.advance(d.config().parted_session_ttl + d.config().session_slack + Duration::from_secs(1));
    let report = d.reconcile().await.expect("reconcile");
    assert!(report.sessions_expired >= 1, "{report:?}");
    assert_eq!(env.uploads_in_progress().await, 0, "the upload is aborted");
    d.audio()
        .open_session(open("alice", ContentHash::of(b"one too many"), 100))
        .await
        .expect("the slot is back");
    let e = d.audio().complete(complete("alice", &s)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::SessionExpired);
    assert_safe(env).await;
    env.advance(d.config().session_ttl + d.config().session_slack + Duration::from_secs(1));
    d.reconcile().await.expect("reconcile");
    assert_settled(env).await;
}
