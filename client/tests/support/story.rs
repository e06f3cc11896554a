//! "Two people, two devices": the end-to-end story, written once and run against the local
//! server and against the AWS adapters (moto).

use std::path::Path;

use audio_dedup_client::{
    Attachment, AudioSource, Client, ClientError, ErrorCode, LibraryAudio, SendState,
};
use audio_dedup_core::{AudioFormat, ContentHash, ThreadId};
use serde_json::json;

/// Deterministic "recorded" bytes.
pub fn recording(seed: u32, len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn status(e: &ClientError) -> Option<u16> {
    e.api().and_then(|a| a.status())
}

async fn stats(c: &Client) -> audio_dedup_core::Stats {
    c.api().stats().await.expect("stats")
}

/// Runs the story. `alice`, `bob` and `carol` are three users' clients (two cache folders
/// each their own); `gone(hash)` tells whether the store has no object for `hash` left.
pub async fn two_devices(
    alice: &Client,
    bob: &Client,
    carol: &Client,
    work: &Path,
    gone: impl AsyncFn(&ContentHash) -> bool,
) {
    let thread: ThreadId = format!("duo-{}", std::process::id()).parse().unwrap();

    // 1. Alice records a file and sends it in a thread with Bob.
    alice
        .create_thread(Some(&thread), "Duo", &["bob".to_owned()])
        .await
        .expect("create thread");
    let take = recording(1, 180_000);
    let take_hash = ContentHash::of(&take);
    let take_path = work.join("alice-take.wav");
    std::fs::write(&take_path, &take).unwrap();
    let sent = alice
        .send_message(
            &thread,
            &json!({"bpm": 96, "note": "first take"}),
            Some(Attachment::File {
                path: take_path.clone(),
                format: AudioFormat::Wav,
            }),
        )
        .await
        .expect("alice sends");
    assert_eq!(sent.send_state, SendState::Sent, "{:?}", sent.error);
    let played = alice
        .playable_path(sent.audio.as_ref().unwrap(), Some(&take_path), None)
        .await
        .unwrap();
    assert_eq!(
        played.source(),
        AudioSource::Recorded,
        "her own file, in place"
    );
    drop(played);

    // 2. Bob syncs and plays it (through the message: he never held it), hash-verified,
    //    then replies with his own audio.
    assert_eq!(bob.sync_messages(&thread).await.unwrap().new, 1);
    let msgs = bob.messages(&thread).unwrap();
    assert_eq!(msgs[0].author.as_deref(), Some("alice"));
    assert_eq!(msgs[0].audio.map(|a| a.content_hash), Some(take_hash));
    let err = bob.api().describe(&take_hash).await.expect_err("not bob's");
    assert_eq!(err.status(), Some(404));
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |done: u64, total: u64| seen.lock().unwrap().push((done, total));
    let h = bob
        .message_audio(&thread, &sent.id, Some(&progress))
        .await
        .expect("bob plays alice's track");
    assert_eq!(h.source(), AudioSource::Download);
    let got = std::fs::read(h.path()).unwrap();
    assert_eq!(ContentHash::of(&got), take_hash);
    assert_eq!(got, take);
    assert_eq!(
        seen.lock().unwrap().last().copied(),
        Some((take.len() as u64, take.len() as u64))
    );
    drop(h);
    // Cached by content: the render alone finds the same file, no request.
    let again = bob
        .playable_path(&msgs[0].audio.unwrap(), None, None)
        .await
        .unwrap();
    assert_eq!(again.source(), AudioSource::Cache);
    drop(again);
    let reply = recording(2, 120_000);
    let reply_hash = ContentHash::of(&reply);
    let reply_path = work.join("bob-reply.ogg");
    std::fs::write(&reply_path, &reply).unwrap();
    let answer = bob
        .send_message(
            &thread,
            &json!({"bpm": 96, "note": "my part"}),
            Some(Attachment::File {
                path: reply_path,
                format: AudioFormat::Ogg,
            }),
        )
        .await
        .unwrap();
    assert_eq!(answer.send_state, SendState::Sent, "{:?}", answer.error);
    alice.sync_messages(&thread).await.unwrap();
    let h = alice
        .message_audio(&thread, &answer.id, None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(h.path()).unwrap(), reply);
    drop(h);

    // 3. Bob saves Alice's track to his library, from her message.
    let fav = "fav-take".parse().unwrap();
    let item = bob
        .put_library_item(
            &fav,
            LibraryAudio::FromMessage(sent.id.clone()),
            "Alice's take",
        )
        .await
        .unwrap();
    assert_eq!(item.send_state, SendState::Sent, "{:?}", item.error);
    assert_eq!(item.content_hash, Some(take_hash));
    assert!(bob.api().describe(&take_hash).await.is_ok(), "a holder now");

    // 6. Carol, in no thread with them: 404 everywhere, and nothing changes.
    let before = stats(alice).await;
    let e = carol
        .api()
        .message_audio(&thread, &sent.id)
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(404), Some(ErrorCode::MessageNotFound))
    );
    assert_eq!(
        carol.api().describe(&take_hash).await.unwrap_err().status(),
        Some(404)
    );
    let e = carol.sync_messages(&thread).await.unwrap_err();
    assert_eq!(status(&e), Some(404));
    let e = carol
        .message_audio(&thread, &sent.id, None)
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(404));
    let e = carol
        .api()
        .delete_message(&thread, &sent.id)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    let stolen = carol
        .put_library_item(
            &"stolen".parse().unwrap(),
            LibraryAudio::FromMessage(sent.id.clone()),
            "Not mine",
        )
        .await
        .unwrap();
    assert_eq!(stolen.send_state, SendState::Failed);
    assert!(
        matches!(
            stolen.error,
            Some(audio_dedup_client::FailureReason::Refused { status: 404, .. })
        ),
        "{:?}",
        stolen.error
    );
    let own: ThreadId = format!("solo-{}", std::process::id()).parse().unwrap();
    carol.create_thread(Some(&own), "Solo", &[]).await.unwrap();
    let fwd = carol
        .send_message(
            &own,
            &json!({}),
            Some(Attachment::FromMessage(sent.id.clone())),
        )
        .await
        .unwrap();
    assert_eq!(
        fwd.send_state,
        SendState::Failed,
        "a forward of what she cannot see"
    );
    let e = carol
        .api()
        .put_library_item(
            &"stolen2".parse().unwrap(),
            audio_dedup_client::api::LibrarySource::Hash(&take_hash),
            "Not mine",
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(stats(alice).await, before, "carol changed nothing");
    assert!(carol.api().describe(&take_hash).await.is_err());

    // 4. Alice deletes her message: Bob's library keeps the audio alive.
    alice.delete_message(&thread, &sent.id).await.unwrap();
    assert_eq!(alice.pending_count().unwrap(), 0);
    bob.sync_messages(&thread).await.unwrap();
    assert!(bob
        .messages(&thread)
        .unwrap()
        .iter()
        .all(|m| m.id != sent.id));
    let e = bob
        .api()
        .message_audio(&thread, &sent.id)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "a deleted message grants nothing");
    assert!(!gone(&take_hash).await, "bob's library holds it");
    bob.clear_audio().unwrap();
    let h = bob.library_audio(&fav, None).await.expect("still playable");
    assert_eq!(h.source(), AudioSource::Download);
    assert_eq!(std::fs::read(h.path()).unwrap(), take);
    drop(h);

    // 5. Bob removes it from his library: Alice's track is gone; only Bob's reply is stored.
    bob.delete_library_item(&fav).await.unwrap();
    assert_eq!(bob.pending_count().unwrap(), 0, "{:?}", bob.queue());
    assert!(bob.library().unwrap().is_empty());
    assert!(gone(&take_hash).await, "the last reference went");
    assert!(!gone(&reply_hash).await);
    for c in [alice, bob] {
        assert_eq!(
            c.api().describe(&take_hash).await.unwrap_err().status(),
            Some(404)
        );
    }
    let st = stats(alice).await;
    assert_eq!(
        (st.unique_files, st.unreferenced_files, st.stored_bytes),
        (1, 0, reply.len() as i64),
        "{st:?}"
    );
    bob.sync_library().await.unwrap();
    assert!(bob.library().unwrap().is_empty());
    // What Bob cached stays playable without the server: content is immutable.
    let h = bob.audio_by_hash(take_hash, None).await.unwrap();
    assert_eq!(h.source(), AudioSource::Cache);
}
