//! Threads, messages and library over every store: references in the same write, cursors,
//! idempotent retries, big snapshots, and races with audio deletion.

use std::collections::{BTreeMap, HashSet};

use audio_dedup_core::chat::{NewMessage, NewThread};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::*;
use serde_json::value::RawValue;

use super::{assert_safe, assert_settled, bytes_of, direct, user, Env};

pub fn snap(json: &str) -> Snapshot {
    Snapshot::new(raw(json)).unwrap()
}

pub fn title(t: &str) -> Title {
    Title::new(t).unwrap()
}

pub fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

pub fn mid(s: &str) -> MessageId {
    s.parse().unwrap()
}

pub fn msg(id: &str, snapshot: &str, audio: Option<ContentHash>) -> NewMessage {
    NewMessage {
        id: mid(id),
        snapshot: snap(snapshot),
        audio: audio.map(|h| {
            MessageAudio::Render(AudioRender {
                content_hash: h,
                format: AudioFormat::Mp3,
            })
        }),
        text: None,
    }
}

pub async fn thread<E: Env>(env: &E, owner: &str, id: &str, members: &[&str]) -> ThreadId {
    let (t, created) = env
        .dedup()
        .chat()
        .create_thread(
            &user(owner),
            NewThread {
                id: Some(id.parse().unwrap()),
                title: title(&format!("thread {id}")),
                members: Members::new(members.iter().map(|m| user(m)).collect()).unwrap(),
            },
        )
        .await
        .unwrap();
    assert!(created);
    t.id
}

/// Uploaded by `owner` with no reference: held, active, deleted after the unreferenced TTL.
async fn held_audio<E: Env>(env: &E, owner: &str, seed: u8) -> ContentHash {
    let data = bytes_of(seed, 5_000 + seed as usize);
    direct(env, owner, &data, None).await.content_hash
}

async fn audio_refs<E: Env>(env: &E, hash: &ContentHash) -> (AudioState, u64) {
    let item = env
        .dedup()
        .index()
        .get(&keys::audio(hash))
        .await
        .unwrap()
        .expect("audio record");
    let a: AudioRecord = serde_json::from_str(&item.body).unwrap();
    (a.state(), a.refs)
}

use audio_dedup_core::ports::{BlobStore as _, TransactionalIndex as _};

async fn sync_all<E: Env>(
    env: &E,
    who: &str,
    t: &ThreadId,
    after: u64,
    limit: usize,
) -> (Vec<MessageView>, u64) {
    let d = env.dedup();
    let mut out = Vec::new();
    let mut cursor = after;
    for _ in 0..10_000 {
        let page = d
            .chat()
            .list_messages(&user(who), t, cursor, limit)
            .await
            .unwrap();
        out.extend(page.items.into_iter().filter_map(|e| e.message().cloned()));
        cursor = page.next_cursor.parse().unwrap();
        if !page.has_more {
            break;
        }
    }
    (out, cursor)
}

pub async fn messages_hold_audio_and_sync_incrementally<E: Env>(env: &E) {
    let d = env.dedup();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let audio = held_audio(env, "alice", 1).await;
    let t = thread(env, "alice", "t1", &["bob"]).await;

    let (m1, created) = d
        .chat()
        .create_message(&alice, &t, msg("m1", r#"{"bpm":120}"#, Some(audio)))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(audio_refs(env, &audio).await, (AudioState::Active, 1));
    let (m2, _) = d
        .chat()
        .create_message(&bob, &t, msg("m2", "[1,2,3]", None))
        .await
        .unwrap();
    assert_eq!((m1.cursor.as_str(), m2.cursor.as_str()), ("1", "2"));

    // A retry, later, answers the same message and adds nothing.
    let (again, created) = d
        .chat()
        .create_message(&alice, &t, msg("m1", r#"{"bpm":120}"#, Some(audio)))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again, m1);
    assert_eq!(audio_refs(env, &audio).await, (AudioState::Active, 1));
    // The same id with other content is a conflict, not a silent overwrite.
    let e = d
        .chat()
        .create_message(&alice, &t, msg("m1", r#"{"bpm":121}"#, Some(audio)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MessageIdConflict);

    // Members sync from the start; others see no thread at all.
    let (all, cursor) = sync_all(env, "bob", &t, 0, 1).await;
    assert_eq!(
        all.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m1", "m2"]
    );
    assert_eq!(cursor, 2);
    let e = d.chat().list_messages(&carol, &t, 0, 10).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ThreadNotFound);
    let e = d
        .chat()
        .create_message(&carol, &t, msg("m9", "{}", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ThreadNotFound);
    assert_eq!(
        d.chat()
            .snapshot(&carol, &mid("m1"))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::MessageNotFound
    );
    let snap = d.chat().snapshot(&bob, &mid("m1")).await.unwrap();
    assert_eq!(&snap.json[..], br#"{"bpm":120}"#);

    // Only the author deletes; the delete drops the last reference and so the audio.
    let e = d
        .chat()
        .delete_message(&bob, &t, &mid("m1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MessageNotFound);
    d.chat()
        .delete_message(&alice, &t, &mid("m1"))
        .await
        .unwrap();
    d.chat()
        .delete_message(&alice, &t, &mid("m1"))
        .await
        .unwrap();
    assert_eq!(audio_refs(env, &audio).await.0, AudioState::Gone);
    let key = keys::blob_key(&d.config().key_prefix, &audio);
    assert!(d.blobs().head(&key).await.unwrap().is_none());

    // The incremental read answers just the tombstone.
    let (delta, cursor) = sync_all(env, "bob", &t, cursor, 100).await;
    assert_eq!(delta.len(), 1);
    assert_eq!(
        (delta[0].id.as_str(), delta[0].state, delta[0].audio),
        ("m1", EntryState::Deleted, None)
    );
    assert_eq!(cursor, 3);
    assert!(
        d.chat().list_messages(&bob, &t, 4, 10).await.is_err(),
        "cursor ahead"
    );
    // A late retry of the create cannot resurrect it.
    let (late, created) = d
        .chat()
        .create_message(&alice, &t, msg("m1", r#"{"bpm":120}"#, Some(audio)))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(late.state, EntryState::Deleted);
    assert_eq!(sync_all(env, "bob", &t, 3, 10).await.0.len(), 0);
    assert_eq!(
        d.chat().get_thread(&bob, &t).await.unwrap().message_count,
        1
    );
    assert_safe(env).await;
    assert_settled(env).await;
}

pub async fn create_on_inactive_audio_fails_and_writes_nothing<E: Env>(env: &E) {
    let d = env.dedup();
    let alice = user("alice");
    let audio = held_audio(env, "alice", 2).await;
    let t = thread(env, "alice", "t2", &[]).await;
    // Make it go: one library reference, then remove it (the last: deleted at once).
    d.chat()
        .put_library_item(
            &alice,
            &"fav".parse().unwrap(),
            &AudioSource::Held(audio),
            &title("fav"),
        )
        .await
        .unwrap();
    d.chat()
        .delete_library_item(&alice, &"fav".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(audio_refs(env, &audio).await.0, AudioState::Gone);
    let never = held_audio(env, "bob", 3).await;
    let before = env.snapshot().await.0;
    let e = d
        .chat()
        .create_message(&alice, &t, msg("m1", "{}", Some(audio)))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::AudioNotFound,
        "gone audio is unknown to everyone: {e}"
    );
    let e = d
        .chat()
        .create_message(&alice, &t, msg("m1", "{}", Some(never)))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::AudioNotFound,
        "alice never held bob's audio"
    );
    assert_eq!(env.snapshot().await.0, before, "nothing written");
    assert_safe(env).await;
}

pub async fn big_snapshots_go_to_the_blob_store<E: Env>(env: &E) {
    let d = env.dedup();
    let alice = user("alice");
    let t = thread(env, "alice", "t3", &[]).await;
    let big = format!(
        r#"{{"notes":"{}"}}"#,
        "a".repeat(d.config().snapshot_inline_max + 1)
    );
    let (m, _) = d
        .chat()
        .create_message(&alice, &t, msg("big", &big, None))
        .await
        .unwrap();
    assert_eq!(m.snapshot.unwrap().size, big.len() as u64);
    let objects = env.snapshot().await.1;
    let snaps: Vec<_> = objects
        .iter()
        .filter(|o| o.key.contains("snapshots/"))
        .collect();
    assert_eq!(snaps.len(), 1, "one snapshot object");
    let item = d
        .index()
        .get(&keys::message(&mid("big")))
        .await
        .unwrap()
        .unwrap();
    assert!(
        item.body.len() < 2_000,
        "the item holds a pointer, not the snapshot"
    );
    assert_eq!(
        d.chat().snapshot(&alice, &mid("big")).await.unwrap().json,
        big.as_bytes()
    );
    // A retry reuses the stored object.
    d.chat()
        .create_message(&alice, &t, msg("big", &big, None))
        .await
        .unwrap();
    assert_eq!(
        env.snapshot()
            .await
            .1
            .iter()
            .filter(|o| o.key.contains("snapshots/"))
            .count(),
        1
    );
    assert_safe(env).await;
    d.chat()
        .delete_message(&alice, &t, &mid("big"))
        .await
        .unwrap();
    assert!(env
        .snapshot()
        .await
        .1
        .iter()
        .all(|o| !o.key.contains("snapshots/")));
    assert_safe(env).await;
    assert_settled(env).await;
}

/// Writers create and delete messages concurrently while a reader syncs incrementally:
/// the reader sees every change exactly once, in cursor order.
pub async fn concurrent_writers_and_an_incremental_reader<E: Env>(env: &E) {
    let d = env.dedup();
    let members = ["w0", "w1", "w2", "w3"];
    let t = thread(env, "reader", "t4", &members).await;
    let per_writer = 12;
    let writers = members.iter().map(|w| {
        let t = t.clone();
        async move {
            for i in 0..per_writer {
                let id = format!("{w}-{i}");
                d.chat()
                    .create_message(&user(w), &t, msg(&id, &format!("{{\"i\":{i}}}"), None))
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    d.chat()
                        .delete_message(&user(w), &t, &mid(&id))
                        .await
                        .unwrap();
                }
            }
        }
    });
    let writers = futures_util::future::join_all(writers);
    let reader = async {
        let mut seen = Vec::new();
        let mut cursor = 0;
        for _ in 0..150 {
            let page = d
                .chat()
                .list_messages(&user("reader"), &t, cursor, 5)
                .await
                .unwrap();
            seen.extend(page.items.into_iter().filter_map(|e| e.message().cloned()));
            cursor = page.next_cursor.parse().unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        (seen, cursor)
    };
    let (_, (mut seen, cursor)) = tokio::join!(writers, reader);
    let (rest, _) = sync_all(env, "reader", &t, cursor, 7).await;
    seen.extend(rest);
    let cursors: Vec<u64> = seen.iter().map(|m| m.cursor.parse().unwrap()).collect();
    let total = members.len() * per_writer + members.len() * per_writer.div_ceil(3);
    assert_eq!(
        cursors,
        (1..=total as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    let mut states: BTreeMap<&str, Vec<EntryState>> = BTreeMap::new();
    for m in &seen {
        states.entry(m.id.as_str()).or_default().push(m.state);
    }
    assert_eq!(states.len(), members.len() * per_writer);
    for (id, s) in states {
        let i: usize = id.rsplit('-').next().unwrap().parse().unwrap();
        let want = if i.is_multiple_of(3) {
            vec![EntryState::Live, EntryState::Deleted]
        } else {
            vec![EntryState::Live]
        };
        assert_eq!(s, want, "{id}");
    }
    assert_safe(env).await;
}

pub async fn library_items_hold_references<E: Env>(env: &E) {
    let d = env.dedup();
    let (alice, bob) = (user("alice"), user("bob"));
    let a1 = held_audio(env, "alice", 4).await;
    let a2 = held_audio(env, "alice", 5).await;
    let fav: LibraryItemId = "fav".parse().unwrap();
    let (v, created) = d
        .chat()
        .put_library_item(&alice, &fav, &AudioSource::Held(a1), &title("Song"))
        .await
        .unwrap();
    assert!(created);
    let (same, created) = d
        .chat()
        .put_library_item(&alice, &fav, &AudioSource::Held(a1), &title("Song"))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(same, v, "a repeated put changes nothing");
    d.chat()
        .put_library_item(&alice, &fav, &AudioSource::Held(a1), &title("Renamed"))
        .await
        .unwrap();
    assert_eq!(audio_refs(env, &a1).await, (AudioState::Active, 1));
    // Moving to other audio drops the old reference (the last: a1 goes).
    d.chat()
        .put_library_item(&alice, &fav, &AudioSource::Held(a2), &title("Renamed"))
        .await
        .unwrap();
    assert_eq!(audio_refs(env, &a1).await.0, AudioState::Gone);
    assert_eq!(audio_refs(env, &a2).await, (AudioState::Active, 1));
    // Bob sees nothing of it and cannot touch it.
    assert!(d
        .chat()
        .list_library(&bob, 0, 100)
        .await
        .unwrap()
        .items
        .is_empty());
    let e = d.chat().delete_library_item(&bob, &fav).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::LibraryItemNotFound);
    let e = d
        .chat()
        .put_library_item(&bob, &fav, &AudioSource::Held(a2), &title("mine"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AudioNotFound, "bob never held a2");
    assert_eq!(audio_refs(env, &a2).await, (AudioState::Active, 1));
    // Delete, delete again, put again (a fresh reference id).
    d.chat().delete_library_item(&alice, &fav).await.unwrap();
    d.chat().delete_library_item(&alice, &fav).await.unwrap();
    assert_eq!(audio_refs(env, &a2).await.0, AudioState::Gone);
    let a3 = held_audio(env, "alice", 6).await;
    d.chat()
        .put_library_item(&alice, &fav, &AudioSource::Held(a3), &title("Back"))
        .await
        .unwrap();
    assert_eq!(audio_refs(env, &a3).await, (AudioState::Active, 1));
    let page = d.chat().list_library(&alice, 0, 100).await.unwrap();
    let log: Vec<(String, EntryState)> = page
        .items
        .iter()
        .map(|i| (i.cursor.clone(), i.state))
        .collect();
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(log[3].1, EntryState::Deleted);
    let delta = d.chat().list_library(&alice, 4, 100).await.unwrap();
    assert_eq!(delta.items.len(), 1);
    assert_eq!(delta.items[0].title.as_deref(), Some("Back"));
    assert_safe(env).await;
}

/// A message create racing the removal of its audio's last reference: either the create
/// fails cleanly (and the audio goes) or the audio stays. Never a message on missing audio.
pub async fn create_racing_audio_deletion<E: Env>(env: &E) {
    let d = env.dedup();
    let alice = user("alice");
    let t = thread(env, "alice", "t5", &[]).await;
    let mut outcomes = HashSet::new();
    for round in 0..12u8 {
        let audio = held_audio(env, "alice", 40 + round).await;
        let item: LibraryItemId = format!("i{round}").parse().unwrap();
        d.chat()
            .put_library_item(&alice, &item, &AudioSource::Held(audio), &title("x"))
            .await
            .unwrap();
        let id = format!("race{round}");
        let (created, removed) = tokio::join!(
            d.chat()
                .create_message(&alice, &t, msg(&id, "{}", Some(audio))),
            d.chat().delete_library_item(&alice, &item),
        );
        removed.unwrap();
        let (state, refs) = audio_refs(env, &audio).await;
        match created {
            Ok((m, _)) => {
                assert_eq!((state, refs), (AudioState::Active, 1), "round {round}");
                assert_eq!(m.state, EntryState::Live);
                outcomes.insert("kept");
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.code(),
                        ErrorCode::AudioNotFound | ErrorCode::AudioNotActive
                    ),
                    "round {round}: {e}"
                );
                assert_eq!(state, AudioState::Gone);
                assert!(d
                    .index()
                    .get(&keys::message(&mid(&id)))
                    .await
                    .unwrap()
                    .is_none());
                outcomes.insert("refused");
            }
        }
        assert_safe(env).await;
    }
    assert!(!outcomes.is_empty());
}

pub async fn reconciler_sweeps_unrecorded_snapshots<E: Env>(env: &E) {
    use audio_dedup_core::ports::{BlobBody, PutRequest};
    let d = env.dedup();
    let text = b"{\"lost\":true}";
    let sha = ContentHash::of(text);
    let key = keys::snapshot_blob_key(&d.config().key_prefix, &mid("lost"), &sha);
    // A create that died after putting its snapshot: no message records it.
    d.blobs()
        .put_if_absent(PutRequest {
            key: key.clone(),
            body: BlobBody::Bytes(bytes::Bytes::from_static(text)),
            sha256: sha,
            size: text.len() as u64,
            content_type: "application/json",
            uploader: "message:lost".into(),
        })
        .await
        .unwrap();
    let r = d.reconcile().await.unwrap();
    assert_eq!(
        r.orphans_deleted, 0,
        "kept while a create may still record it"
    );
    assert!(d.blobs().head(&key).await.unwrap().is_some());
    env.advance(d.config().snapshot_grace + std::time::Duration::from_secs(1));
    let r = d.reconcile().await.unwrap();
    assert_eq!(r.orphans_deleted, 1);
    assert!(d.blobs().head(&key).await.unwrap().is_none());
    assert_settled(env).await;
}

/// A member plays, forwards and saves audio someone else posted; the grant is the message,
/// and it opens nothing else. Every refusal is the same 404 and writes nothing.
pub async fn members_reach_audio_through_messages<E: Env>(env: &E) {
    let d = env.dedup();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let track = held_audio(env, "alice", 21).await;
    let other = held_audio(env, "alice", 22).await;
    let duo = thread(env, "alice", "duo", &["bob"]).await;
    let side = thread(env, "bob", "side", &["carol"]).await;
    d.chat()
        .create_message(&alice, &duo, msg("m-track", "{}", Some(track)))
        .await
        .unwrap();
    d.chat()
        .create_message(&alice, &duo, msg("m-text", "{}", None))
        .await
        .unwrap();

    // Bob never uploaded it: the audio route is closed, the message route open.
    assert_eq!(
        d.audio().describe(&bob, &track).await.unwrap_err().code(),
        ErrorCode::AudioNotFound
    );
    let v = d
        .chat()
        .message_audio(&bob, &duo, &mid("m-track"))
        .await
        .unwrap();
    assert_eq!(v.content_hash, track);
    assert!(!v.url.is_empty());
    assert_eq!(
        d.audio().describe(&bob, &track).await.unwrap_err().code(),
        ErrorCode::AudioNotFound,
        "playing grants nothing"
    );

    // Refusals: a non-member, the wrong thread, no audio, unknown. Same code, no writes.
    let before = env.snapshot().await;
    let refusals = [
        (&carol, &duo, "m-track"),
        (&bob, &side, "m-track"),
        (&bob, &duo, "m-text"),
        (&bob, &duo, "m-unknown"),
    ];
    for (who, t, m) in refusals {
        let e = d.chat().message_audio(who, t, &mid(m)).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::MessageNotFound, "{who} {t} {m}");
    }
    // Carol cannot reuse what she cannot see, nor name audio by hash.
    let e = d
        .chat()
        .put_library_item(
            &carol,
            &"x".parse().unwrap(),
            &AudioSource::Message(mid("m-track")),
            &title("x"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MessageNotFound);
    let e = d
        .chat()
        .put_library_item(
            &carol,
            &"x".parse().unwrap(),
            &AudioSource::Held(track),
            &title("x"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AudioNotFound);
    let forward = |id: &str, from: &str| NewMessage {
        id: mid(id),
        snapshot: snap("{}"),
        audio: Some(MessageAudio::FromMessage(mid(from))),
        text: None,
    };
    let e = d
        .chat()
        .create_message(&carol, &side, forward("c-fwd", "m-track"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MessageNotFound);
    let e = d
        .chat()
        .create_message(&bob, &side, forward("b-fwd0", "m-text"))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::MessageNotFound,
        "a message without audio grants nothing"
    );
    let after = env.snapshot().await;
    assert_eq!(before.0, after.0, "refusals wrote nothing");
    assert_eq!(before.2, after.2);

    // Bob forwards it to another thread: the new message holds its own reference.
    let (fwd, created) = d
        .chat()
        .create_message(&bob, &side, forward("b-fwd", "m-track"))
        .await
        .unwrap();
    assert!(created);
    let render = fwd.audio.expect("a forward carries the audio");
    assert_eq!(render.content_hash, track);
    assert_eq!(render.format, AudioFormat::Mp3);
    assert_eq!(audio_refs(env, &track).await, (AudioState::Active, 2));
    let (again, created) = d
        .chat()
        .create_message(&bob, &side, forward("b-fwd", "m-track"))
        .await
        .unwrap();
    assert!(!created, "a retried forward answers the first");
    assert_eq!(again, fwd);
    // Reusing it made Bob a holder of this generation (he could play it anyway).
    assert_eq!(
        d.audio().describe(&bob, &track).await.unwrap().content_hash,
        track
    );
    // The grant opens only that message's audio.
    assert_eq!(
        d.audio().describe(&bob, &other).await.unwrap_err().code(),
        ErrorCode::AudioNotFound
    );
    // Carol sees Bob's forward, and may play it.
    let v = d
        .chat()
        .message_audio(&carol, &side, &mid("b-fwd"))
        .await
        .unwrap();
    assert_eq!(v.content_hash, track);

    // Bob saves Alice's original to his library.
    let fav: LibraryItemId = "from-alice".parse().unwrap();
    let (item, created) = d
        .chat()
        .put_library_item(
            &bob,
            &fav,
            &AudioSource::Message(mid("m-track")),
            &title("Alice's take"),
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(item.content_hash, Some(track));
    assert_eq!(audio_refs(env, &track).await, (AudioState::Active, 3));

    // Alice deletes her message: it grants no more, and Bob's reuses keep the audio.
    d.chat()
        .delete_message(&alice, &duo, &mid("m-track"))
        .await
        .unwrap();
    let e = d
        .chat()
        .message_audio(&bob, &duo, &mid("m-track"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MessageNotFound);
    let e = d
        .chat()
        .put_library_item(
            &bob,
            &"late".parse().unwrap(),
            &AudioSource::Message(mid("m-track")),
            &title("late"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::MessageNotFound);
    assert_eq!(audio_refs(env, &track).await, (AudioState::Active, 2));
    d.chat()
        .delete_message(&bob, &side, &mid("b-fwd"))
        .await
        .unwrap();
    d.chat().delete_library_item(&bob, &fav).await.unwrap();
    assert_eq!(audio_refs(env, &track).await.0, AudioState::Gone);
    assert_safe(env).await;
}

/// The largest thread: 49 members announced in the creating transaction (99 writes, near
/// the store's 100), the other 51 in two more; every member's feed lists it once.
pub async fn a_full_thread_reaches_every_members_feed<E: Env>(env: &E) {
    let names: Vec<String> = (1..MAX_THREAD_MEMBERS)
        .map(|i| format!("m{i:03}"))
        .collect();
    let others: Vec<&str> = names.iter().map(String::as_str).collect();
    let id = thread(env, "owner", "everyone", &others).await;
    for who in std::iter::once("owner").chain(others.iter().copied()) {
        let feed = env
            .dedup()
            .chat()
            .list_threads(&user(who), 0, 10)
            .await
            .unwrap();
        assert_eq!(feed.items.len(), 1, "{who}");
        assert_eq!(feed.items[0].id, id, "{who}");
        assert_eq!(feed.items[0].members.len(), MAX_THREAD_MEMBERS);
    }
    assert_safe(env).await;
}

/// Concurrent adds, removals and leaves on one thread, each retried (an answer lost after
/// the commit): the record's members and every member's feed agree, each change is once in
/// the thread's log, and a departed member reads nothing.
pub async fn concurrent_membership_changes_keep_record_and_feeds_consistent<E: Env>(env: &E) {
    let d = env.dedup();
    let t = thread(env, "owner", "club", &["m1", "m2", "m3"]).await;
    let guests: Vec<String> = (0..6).map(|i| format!("g{i}")).collect();
    let chat = d.chat();
    let adds = guests.iter().enumerate().map(|(i, g)| {
        let chat = &chat;
        let t = &t;
        async move {
            let by = if i % 2 == 0 { "m3" } else { "owner" };
            for _ in 0..2 {
                chat.add_member(&user(by), t, &user(g)).await.unwrap();
            }
        }
    });
    let leaves = ["m1", "m2"].map(|m| {
        let chat = &chat;
        let t = &t;
        async move {
            // Leaves after its own adds had a chance to start; a retry is the stranger's 404.
            tokio::task::yield_now().await;
            let _ = chat.remove_member(&user(m), t, &user(m)).await;
            let again = chat.remove_member(&user(m), t, &user(m)).await;
            assert_eq!(again.unwrap_err().code(), ErrorCode::ThreadNotFound);
        }
    });
    let removes = guests.iter().take(3).map(|g| {
        let chat = &chat;
        let t = &t;
        async move {
            chat.remove_member(&user("owner"), t, &user(g))
                .await
                .unwrap();
            chat.remove_member(&user("owner"), t, &user(g))
                .await
                .unwrap();
        }
    });
    futures_util::future::join3(
        futures_util::future::join_all(adds),
        futures_util::future::join_all(leaves),
        futures_util::future::join_all(removes),
    )
    .await;
    let (items, _, _) = env.snapshot().await;
    let bad = audio_dedup_core::chat::membership_violations(&items);
    assert!(bad.is_empty(), "{bad:#?}");
    let detail = d.chat().get_thread(&user("owner"), &t).await.unwrap();
    let members: HashSet<String> = detail
        .thread
        .members
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert!(!members.contains("m1") && !members.contains("m2"));
    // Each change is one entry of the log: as many as the changes the members saw.
    let page = d
        .chat()
        .list_messages(&user("owner"), &t, 0, 500)
        .await
        .unwrap();
    let events = page.items.iter().filter(|e| e.message().is_none()).count();
    assert_eq!(
        events.to_string(),
        detail.last_cursor,
        "every position is one change"
    );
    // Read markers: forward only, into the reader's feed; a departed member may not mark.
    let last: u64 = detail.last_cursor.parse().unwrap();
    assert!(d.chat().mark_read(&user("m3"), &t, last).await.unwrap());
    assert!(!d.chat().mark_read(&user("m3"), &t, 1).await.unwrap());
    let e = d
        .chat()
        .mark_read(&user("m3"), &t, last + 1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::CursorUnknown);
    let feed = d.chat().list_threads(&user("m3"), 0, 10).await.unwrap();
    let marker = last.to_string();
    assert_eq!(
        feed.items.last().and_then(|v| v.read_cursor.as_deref()),
        Some(marker.as_str())
    );
    let e = d.chat().mark_read(&user("m1"), &t, 1).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ThreadNotFound);
    for gone in ["m1", "m2"] {
        let e = d
            .chat()
            .list_messages(&user(gone), &t, 0, 10)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ThreadNotFound);
        let feed = d.chat().list_threads(&user(gone), 0, 10).await.unwrap();
        assert!(feed.items.last().is_some_and(|v| v.left), "{gone}'s feed");
    }
}
