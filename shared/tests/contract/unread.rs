//! Unread counts and the thread's preview, over any store (the memory store's test file
//! includes this file too): counters on the thread record and the reader's marker, no
//! message read; a deleted newest message gives way to the newest one still live.

use audio_dedup_core::chat::{NewMessage, NewThread};
use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::*;
use serde_json::value::RawValue;

fn u(s: &str) -> UserId {
    s.parse().unwrap()
}

fn text_message(id: &str) -> NewMessage {
    NewMessage {
        id: id.parse().unwrap(),
        snapshot: Snapshot::new(RawValue::from_string("{}".into()).unwrap()).unwrap(),
        audio: None,
        text: Some(MessageText::new(format!("this is {id}")).unwrap()),
    }
}

pub async fn unread_counts_and_previews_follow_messages<B: BlobStore, I: TransactionalIndex>(
    d: &Dedup<B, I>,
) {
    let chat = d.chat();
    let (t, _) = chat
        .create_thread(
            &u("alice"),
            NewThread {
                id: Some("inbox".parse().unwrap()),
                title: Title::new("inbox").unwrap(),
                members: Members::new(vec![u("bob"), u("carol")]).unwrap(),
            },
        )
        .await
        .unwrap();
    let t = t.id;
    let post = |who: &'static str, id: &'static str| {
        let chat = &chat;
        let t = &t;
        async move {
            let (v, _) = chat
                .create_message(&u(who), t, text_message(id))
                .await
                .unwrap();
            v.cursor.parse::<u64>().unwrap()
        }
    };
    let unread = |who: &'static str| {
        let chat = &chat;
        let t = &t;
        async move { chat.get_thread(&u(who), t).await.unwrap().unread }
    };
    let preview = |who: &'static str| {
        let chat = &chat;
        let t = &t;
        async move {
            chat.get_thread(&u(who), t)
                .await
                .unwrap()
                .last_message
                .map(|p| p.message_id.to_string())
        }
    };
    let delete = |who: &'static str, id: &'static str| {
        let chat = &chat;
        let t = &t;
        async move {
            chat.delete_message(&u(who), t, &id.parse().unwrap())
                .await
                .unwrap()
        }
    };

    post("bob", "b1").await;
    let b2 = post("bob", "b2").await;
    post("alice", "a1").await;
    let b3 = post("bob", "b3").await;
    // Others' messages only: the reader's own never count.
    assert_eq!(unread("alice").await, 3);
    assert_eq!(unread("bob").await, 1);
    assert_eq!(unread("carol").await, 4);
    // A marker behind the head (what the reader's client had synced) counts what is after.
    assert!(chat.mark_read(&u("alice"), &t, b2).await.unwrap());
    assert_eq!(unread("alice").await, 1, "b3 after the marker");
    assert!(chat.mark_read(&u("carol"), &t, b3).await.unwrap());
    assert_eq!(unread("carol").await, 0);

    // The newest message deleted: the preview falls back to the newest still live, and a
    // reader who had not read it stops counting it.
    delete("bob", "b3").await;
    assert_eq!(preview("alice").await.as_deref(), Some("a1"));
    assert_eq!(unread("alice").await, 0);
    assert_eq!(unread("carol").await, 0);
    assert_eq!(unread("bob").await, 1);
    // A deletion before a reader's marker changes nothing for them.
    delete("bob", "b1").await;
    assert_eq!(unread("carol").await, 0);
    assert_eq!(preview("carol").await.as_deref(), Some("a1"));

    // The feed carries the same, as the thread stands at the read.
    post("bob", "b4").await;
    let feed = chat.list_threads(&u("alice"), 0, 10).await.unwrap();
    let entry = feed.items.first().unwrap();
    assert_eq!(entry.unread, Some(1));
    assert_eq!(
        entry
            .last_message
            .as_ref()
            .map(|p| p.message_id.to_string()),
        Some("b4".into())
    );
    assert_eq!(
        entry.last_message.as_ref().and_then(|p| p.text.clone()),
        Some("this is b4".into())
    );
    let detail = chat.get_thread(&u("alice"), &t).await.unwrap();
    assert_eq!(
        entry.last_cursor.as_deref(),
        Some(detail.last_cursor.as_str())
    );

    // A new member reads the whole history: every live message of others is unread.
    chat.add_member(&u("bob"), &t, &u("dave")).await.unwrap();
    assert_eq!(unread("dave").await, 3, "b2, a1, b4");

    // Deleting down the list: each time the newest live one before.
    delete("alice", "a1").await;
    assert_eq!(preview("bob").await.as_deref(), Some("b4"));
    delete("bob", "b4").await;
    assert_eq!(preview("bob").await.as_deref(), Some("b2"));
    assert_eq!(unread("dave").await, 1);
    delete("bob", "b2").await;
    assert_eq!(preview("bob").await, None, "nothing live is left");
    for who in ["alice", "bob", "carol", "dave"] {
        assert_eq!(unread(who).await, 0, "{who}");
    }
    // Marking read at the head (membership entries included) keeps it at zero.
    let head: u64 = chat
        .get_thread(&u("dave"), &t)
        .await
        .unwrap()
        .last_cursor
        .parse()
        .unwrap();
    assert!(chat.mark_read(&u("dave"), &t, head).await.unwrap());
    post("carol", "c1").await;
    assert_eq!(unread("dave").await, 1);
    assert_eq!(unread("carol").await, 0);
}
