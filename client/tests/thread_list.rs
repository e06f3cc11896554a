//! The thread list from the cache (issue #25): last activity, previews, unread counts, paged;
//! read markers across two devices of one user, through the sync, the live poke and the
//! offline queue.

use std::time::Duration;

use audio_dedup_client::{Client, ClientConfig, ThreadSummary};
use audio_dedup_core::ThreadId;
use serde_json::json;

mod support;

use support::{ALICE, BOB};

fn open(url: &str, token: &str, dir: &std::path::Path) -> Client {
    let mut cfg = ClientConfig::new(url, token, dir);
    cfg.request_timeout = Duration::from_secs(10);
    cfg.retry_jitter = false;
    Client::open(cfg).expect("open")
}

fn tid(s: &str) -> ThreadId {
    s.parse().expect("thread id")
}

fn all(c: &Client) -> Vec<ThreadSummary> {
    c.thread_list(None, 100).expect("list").threads
}

fn unread(c: &Client, t: &str) -> u64 {
    all(c)
        .iter()
        .find(|s| s.thread.id.as_str() == t)
        .map_or(u64::MAX, |s| s.unread)
}

async fn sync_all(c: &Client) {
    c.sync_threads().await.expect("threads");
    for s in all(c) {
        c.sync_messages(&s.thread.id).await.expect("messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_orders_by_activity_and_two_devices_share_read_markers() {
    let srv = tempfile::tempdir().expect("dir");
    let server = support::Server::start(srv.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("dir");
    let bob = open(&url, BOB, &dir.path().join("bob"));
    let (a1, a2) = (
        open(&url, ALICE, &dir.path().join("alice-phone")),
        open(&url, ALICE, &dir.path().join("alice-laptop")),
    );
    for t in ["t1", "t2", "t3"] {
        bob.create_thread(Some(&tid(t)), t, &["alice".into()])
            .await
            .expect("thread");
    }
    let long = "long ".repeat(40);
    for (t, text) in [("t1", "one"), ("t1", "two"), ("t2", long.as_str())] {
        bob.send_message_with_text(&tid(t), &json!({}), Some(text), None)
            .await
            .expect("send");
    }
    sync_all(&a1).await;
    sync_all(&a2).await;

    // Newest activity first, paged; previews and unread counts from the cache.
    let first = a1.thread_list(None, 2).expect("page");
    let ids: Vec<&str> = first.threads.iter().map(|s| s.thread.id.as_str()).collect();
    assert_eq!(ids, ["t2", "t1"]);
    let p = first.threads[0].preview.clone().expect("preview");
    assert_eq!(p.author.as_deref(), Some("bob"));
    assert_eq!(p.text.map(|t| t.chars().count()), Some(100), "cut to 100");
    assert!(!p.has_audio);
    assert_eq!(first.threads[1].unread, 2);
    let rest = a1.thread_list(first.older.as_ref(), 2).expect("next page");
    assert_eq!(rest.threads.len(), 1);
    assert_eq!(rest.threads[0].thread.id.as_str(), "t3");
    assert!(rest.threads[0].preview.is_none() && rest.older.is_none());

    // Reading on the phone clears the laptop's count through the live poke.
    let _live = a2.go_live();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a1.mark_read(&tid("t1"), None).await.expect("read");
    assert_eq!(unread(&a1, "t1"), 0, "at once on the device that read");
    assert_eq!(a1.pending_count().expect("pending"), 0, "sent");
    let mut seen = u64::MAX;
    for _ in 0..200 {
        seen = unread(&a2, "t1");
        if seen == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 0, "the laptop learned the marker from its feed");
    assert_eq!(unread(&a2, "t2"), 1);

    // Alice's own message (from the laptop) is never unread on the phone.
    a2.send_message_with_text(&tid("t3"), &json!({}), Some("mine"), None)
        .await
        .expect("send");
    a1.sync_messages(&tid("t3")).await.expect("sync");
    assert_eq!(unread(&a1, "t3"), 0);
    assert_eq!(
        all(&a1)[0].thread.id.as_str(),
        "t3",
        "newest activity first"
    );

    // Marking read offline is queued like a send, and delivered once back online.
    let offline_dir = dir.path().join("alice-phone");
    drop(a1);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let off = open(&closed, ALICE, &offline_dir);
    off.mark_read(&tid("t2"), None).await.expect("queued");
    assert_eq!(unread(&off, "t2"), 0);
    assert_eq!(off.pending_count().expect("pending"), 1);
    drop(off);
    let back = open(&url, ALICE, &offline_dir);
    back.process_queue().await.expect("process");
    assert_eq!(back.pending_count().expect("pending"), 0);
    a2.sync_threads().await.expect("sync");
    assert_eq!(
        unread(&a2, "t2"),
        0,
        "the queued marker reached the other device"
    );
}

/// A device that only synced its feed draws the list from the server's summary (unread
/// count, preview); once it syncs a thread's log, its own count takes over. Deleting the
/// newest message makes the one before it the preview, on the server and in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_shows_the_servers_counts_and_a_deleted_preview_falls_back() {
    let srv = tempfile::tempdir().expect("dir");
    let server = support::Server::start(srv.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("dir");
    let bob = open(&url, BOB, &dir.path().join("bob"));
    bob.create_thread(Some(&tid("news")), "news", &["alice".into()])
        .await
        .expect("thread");
    let mut sent = Vec::new();
    for text in ["first", "second", "third"] {
        let m = bob
            .send_message_with_text(&tid("news"), &json!({}), Some(text), None)
            .await
            .expect("send");
        sent.push(m.id);
    }

    let alice = open(&url, ALICE, &dir.path().join("alice"));
    alice.sync_threads().await.expect("feed");
    let s = all(&alice).into_iter().next().expect("listed");
    assert_eq!(s.unread, 3, "the server's count, no message synced");
    let p = s.preview.expect("the server's preview");
    assert_eq!(
        (p.text.as_deref(), p.author.as_deref()),
        (Some("third"), Some("bob"))
    );
    let info = alice.thread_info(&tid("news")).await.expect("info");
    assert_eq!(info.unread, 3);

    // The newest message deleted: the server's preview and the author's cache fall back.
    bob.delete_message(&tid("news"), &sent[2])
        .await
        .expect("delete");
    let info = alice.thread_info(&tid("news")).await.expect("info");
    assert_eq!(
        info.last_message.and_then(|p| p.text).as_deref(),
        Some("second")
    );
    assert_eq!(info.unread, 2);
    let mine = all(&bob).into_iter().next().expect("bob's list");
    assert_eq!(mine.preview.and_then(|p| p.text).as_deref(), Some("second"));

    // Synced, the cache knows better than the feed's summary.
    alice.sync_threads().await.expect("feed");
    alice.sync_messages(&tid("news")).await.expect("messages");
    let s = all(&alice).into_iter().next().expect("listed");
    assert_eq!(s.unread, 2);
    assert_eq!(s.preview.and_then(|p| p.text).as_deref(), Some("second"));
    alice.mark_read(&tid("news"), None).await.expect("read");
    assert_eq!(unread(&alice, "news"), 0);
    assert_eq!(
        alice.thread_info(&tid("news")).await.expect("info").unread,
        0,
        "the server counts from the marker too"
    );
    drop(server);
}
