//! `Client::messages_page`: a long thread read a page at a time, newest first, through the
//! real client against the local server in-process on loopback.

mod support;

use std::time::Duration;

use audio_dedup_client::{Client, ClientConfig, LocalMessage, MessagePosition, SendState};
use audio_dedup_core::ThreadId;
use reqwest::Method;
use serde_json::json;
use support::*;

fn config(url: &str, dir: &std::path::Path) -> ClientConfig {
    let mut c = ClientConfig::new(url, ALICE, dir);
    c.request_timeout = Duration::from_millis(800);
    c.retry_jitter = false;
    // Sends happen when the test says (process_queue), not in the background.
    c.background_sender = false;
    c
}

fn tid(s: &str) -> ThreadId {
    s.parse().unwrap()
}

fn ids(ms: &[LocalMessage]) -> Vec<String> {
    ms.iter().map(|m| m.id.to_string()).collect()
}

/// A thread of Bob's with Alice in it.
async fn thread_with_alice(s: &Server, id: &str) {
    let (st, v) = s
        .call(
            BOB,
            Method::POST,
            "/v1/threads",
            Some(json!({"id": id, "title": id, "members": ["alice"]})),
        )
        .await;
    assert!(st == 201 || st == 200, "{v}");
}

/// Bob posts `ids` to the thread, in order.
async fn bob_posts(s: &Server, thread: &str, ids: impl IntoIterator<Item = String>) {
    for id in ids {
        let (st, v) = s
            .call(
                BOB,
                Method::POST,
                &format!("/v1/threads/{thread}/messages"),
                Some(json!({"id": id, "snapshot": {"from": "bob"}})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// Every page from the newest to the first, each oldest first.
fn pages(c: &Client, thread: &ThreadId, limit: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut before = None;
    for _ in 0..1_000 {
        let page = c.messages_page(thread, before, limit).unwrap();
        out.push(ids(&page.messages));
        match page.older {
            Some(p) => before = Some(p),
            None => return out,
        }
    }
    panic!("paging did not reach the start");
}

/// Every page, joined in the thread's order.
fn joined(c: &Client, thread: &ThreadId, limit: usize) -> Vec<String> {
    pages(c, thread, limit)
        .into_iter()
        .rev()
        .flatten()
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_reach_the_start_of_a_synced_thread_and_an_empty_one_is_one_empty_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    thread_with_alice(&s, "empty").await;
    thread_with_alice(&s, "long").await;
    bob_posts(&s, "long", names("m", 23)).await;
    let c = Client::open(config(&s.url(), &dir.path().join("client"))).unwrap();
    c.sync_messages(&tid("empty")).await.unwrap();
    c.sync_messages(&tid("long")).await.unwrap();

    let page = c.messages_page(&tid("empty"), None, 10).unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(page.older, None);

    let long = tid("long");
    let got = pages(&c, &long, 10);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], names("m", 23)[13..]);
    assert_eq!(got[1], names("m", 23)[3..13]);
    assert_eq!(
        got[2],
        names("m", 23)[..3],
        "the last page is the thread's start"
    );
    // A page exactly at the start: nothing older.
    let page = c.messages_page(&long, None, 23).unwrap();
    assert_eq!(ids(&page.messages), names("m", 23));
    assert_eq!(page.older, None);
    // One more than the thread: the same.
    assert_eq!(c.messages_page(&long, None, 24).unwrap(), page);

    // A deletion leaves a hole in no page.
    c.delete_message(&long, &"m10".parse().unwrap())
        .await
        .unwrap();
    let joined = joined(&c, &long, 4);
    assert_eq!(joined, ids(&c.messages(&long).unwrap()));
    assert!(!joined.contains(&"m10".to_owned()));
    assert_eq!(joined.len(), 22);

    assert!(
        c.messages_page(&long, None, 0).is_err(),
        "a page of nothing"
    );
}

/// Unsent messages sort after the synced ones (in the order written); a page boundary can
/// fall between them, or on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_boundaries_among_unsent_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    thread_with_alice(&s, "t").await;
    bob_posts(&s, "t", names("s", 5)).await;
    let c = Client::open(config(&s.url(), &dir.path().join("client"))).unwrap();
    let t = tid("t");
    c.sync_messages(&t).await.unwrap();
    s.stop().await;
    let mut unsent = Vec::new();
    for i in 0..3 {
        let m = c.send_message(&t, &json!({ "u": i }), None).await.unwrap();
        assert_eq!(m.send_state, SendState::Sending);
        unsent.push(m.id.to_string());
    }
    let (u0, u1, u2) = (&unsent[0], &unsent[1], &unsent[2]);

    let got = pages(&c, &t, 2);
    let want = [
        vec![u1.clone(), u2.clone()],
        vec!["s04".to_owned(), u0.clone()],
        strs(&["s02", "s03"]),
        strs(&["s00", "s01"]),
    ];
    assert_eq!(got, want);
    // Page sizes that end exactly at the unsent part, and inside the synced part.
    assert_eq!(
        pages(&c, &t, 3),
        [
            unsent.clone(),
            strs(&["s02", "s03", "s04"]),
            strs(&["s00", "s01"]),
        ]
    );
    let whole = ids(&c.messages(&t).unwrap());
    for limit in 1..=9 {
        let joined = joined(&c, &t, limit);
        assert_eq!(joined, whole, "limit {limit}");
    }
}

/// Pages are positions, not offsets: what arrives between two reads (a sync, a local send)
/// after the position does not shift the next older page. An acknowledgement moves a message
/// from the unsent tail to its server position: paging on from an unsent position can show
/// it again, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arriving_between_page_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("server"), "127.0.0.1:0".parse().unwrap()).await;
    thread_with_alice(&s, "t").await;
    bob_posts(&s, "t", names("s", 10)).await;
    let c = Client::open(config(&s.url(), &dir.path().join("client"))).unwrap();
    let t = tid("t");
    c.sync_messages(&t).await.unwrap();

    // A synced message arrives between two reads.
    let first = c.messages_page(&t, None, 4).unwrap();
    assert_eq!(ids(&first.messages), names("s", 10)[6..]);
    let older: MessagePosition = first.older.unwrap();
    bob_posts(&s, "t", ["late".to_owned()]).await;
    assert_eq!(c.sync_messages(&t).await.unwrap().new, 1);
    let second = c.messages_page(&t, Some(older), 4).unwrap();
    assert_eq!(ids(&second.messages), names("s", 10)[2..6]);
    let newest = c.messages_page(&t, None, 4).unwrap();
    assert_eq!(ids(&newest.messages), ["s07", "s08", "s09", "late"]);

    // A local send arrives between two reads: it is after the position too.
    s.stop().await;
    let mut unsent = Vec::new();
    for i in 0..3 {
        let m = c.send_message(&t, &json!({ "u": i }), None).await.unwrap();
        unsent.push(m.id.to_string());
    }
    let third = c.messages_page(&t, second.older, 4).unwrap();
    assert_eq!(ids(&third.messages), names("s", 10)[..2]);
    assert_eq!(third.older, None);

    // An unsent position, then the server acknowledges all three.
    let tail = c.messages_page(&t, None, 2).unwrap();
    assert_eq!(ids(&tail.messages), unsent[1..]);
    s.restart().await;
    assert_eq!(c.process_queue().await.unwrap().sent, 3);
    let mut seen = ids(&tail.messages);
    let mut before = tail.older;
    for _ in 0..100 {
        let Some(p) = before else { break };
        let page = c.messages_page(&t, Some(p), 2).unwrap();
        seen.extend(ids(&page.messages));
        before = page.older;
    }
    assert_eq!(before, None, "paging reached the start");
    let whole = ids(&c.messages(&t).unwrap());
    let mut once = seen.clone();
    once.sort();
    once.dedup();
    let mut all = whole.clone();
    all.sort();
    assert_eq!(once, all, "nothing lost");
    let repeated = seen.len() - once.len();
    assert!(repeated <= 2, "only acknowledged messages repeat: {seen:?}");
    for m in &seen {
        if seen.iter().filter(|x| *x == m).count() > 1 {
            assert!(unsent.contains(m), "{m} repeated but was never unsent");
        }
    }
}
