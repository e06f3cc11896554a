//! Staying signed in: tokens that expire while the app runs, a provider that refreshes them,
//! a user who must sign in again, and the client's life (one client per folder, tasks that
//! end with it, lanes that do not wait for each other). The server is the local one in JWT
//! mode, verifying tokens from a test issuer exactly as API Gateway's authorizer would.
//! Loopback only; every wait is bounded.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use audio_dedup_client::{
    Client, ClientConfig, ClientError, SendState, TokenFuture, TokenProvider, TokenUnavailable,
    Update,
};
use audio_dedup_core::identity::testing::TestIssuer;
use audio_dedup_core::ThreadId;
use audio_dedup_server::in_process::{test_config, test_jwt_config, InProcess};
use audio_dedup_server::TokenTable;
use serde_json::json;
use support::{Proxy, Server, ALICE};
use tokio::time::{timeout, Instant};

/// Tokens live this long: many expiries in a short test.
const TTL: Duration = Duration::from_secs(5);

/// Mints a fresh short-lived token on every call, as an app's OIDC library would after
/// using its refresh token; or none once `signed_out` is set.
struct Issuer {
    issuer: Arc<TestIssuer>,
    sub: &'static str,
    ttl: Duration,
    calls: AtomicUsize,
    signed_out: AtomicBool,
}

impl Issuer {
    fn new(issuer: &Arc<TestIssuer>, sub: &'static str, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            issuer: issuer.clone(),
            sub,
            ttl,
            calls: AtomicUsize::new(0),
            signed_out: AtomicBool::new(false),
        })
    }
}

impl TokenProvider for Issuer {
    fn token(&self, _refresh: bool) -> TokenFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.signed_out.load(Ordering::SeqCst) {
                return Err(TokenUnavailable::SignInRequired);
            }
            Ok(self.issuer.token(self.sub, self.ttl))
        })
    }
}

async fn jwt_server(dir: &std::path::Path, issuer: &TestIssuer) -> InProcess {
    std::fs::create_dir_all(dir).expect("server dir");
    let mut cfg = test_config(dir, TokenTable::default());
    cfg.jwt = Some(test_jwt_config(issuer, &dir.join("jwks.json")).expect("jwt config"));
    InProcess::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server")
}

fn device(url: &str, dir: &std::path::Path, provider: Arc<Issuer>) -> Client {
    let mut cfg = ClientConfig::new(url, "", dir).with_token_provider(provider);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.retry_base = Duration::from_millis(200);
    cfg.max_retry_delay = Duration::from_secs(1);
    Client::open(cfg).expect("open")
}

fn tid(s: &str) -> ThreadId {
    s.parse().expect("thread id")
}

/// Waits until `done` holds, for at most `limit`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two devices (alice and bob) in one thread, tokens expiring every 5 s, a server restart
/// in the middle, sends while it is down: every message is delivered exactly once, none is
/// ever failed, and bob's live channel keeps bringing alice's messages across expiries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_hourly_tokens_compressed_into_seconds() {
    let dir = tempfile::tempdir().expect("dir");
    let issuer = Arc::new(TestIssuer::new());
    let mut server = jwt_server(&dir.path().join("server"), &issuer).await;
    let url = server.url();
    let (alice_tokens, bob_tokens) = (
        Issuer::new(&issuer, "alice", TTL),
        Issuer::new(&issuer, "bob", TTL),
    );
    let alice = device(&url, &dir.path().join("alice"), alice_tokens.clone());
    let bob = device(&url, &dir.path().join("bob"), bob_tokens.clone());
    let thread = tid("week");
    alice
        .create_thread(Some(&thread), "A week", &["bob".into()])
        .await
        .expect("thread");
    let mut failures = alice.subscribe();
    let mut bob_failures = bob.subscribe();
    let _live = bob.go_live();

    // 24 s of traffic by default (about five token lifetimes; the test command's budget),
    // `SIGNED_IN_TRAFFIC_SECS=60` for the full minute; a restart with sends while it
    // is down either way.
    let traffic = Duration::from_secs(
        std::env::var("SIGNED_IN_TRAFFIC_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(24),
    );
    let mut sent = BTreeSet::new();
    let start = Instant::now();
    let mut restarted = false;
    let mut n = 0u32;
    while start.elapsed() < traffic {
        n += 1;
        let (who, client) = if n.is_multiple_of(3) {
            ("bob", &bob)
        } else {
            ("alice", &alice)
        };
        let m = client
            .send_message(&thread, &json!({ "from": who, "n": n }), None)
            .await
            .expect("queued");
        assert!(sent.insert(m.id.to_string()), "ids are unique");
        if !restarted && start.elapsed() > Duration::from_secs(9) {
            server.stop().await.expect("stop");
            for k in 0..3 {
                let m = alice
                    .send_message(&thread, &json!({ "offline": k }), None)
                    .await
                    .expect("queued offline");
                assert_eq!(m.send_state, SendState::Sending);
                sent.insert(m.id.to_string());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            server.restart().await.expect("restart");
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    until(Duration::from_secs(30), "both queues to drain", || {
        alice.pending_count().unwrap_or(1) == 0 && bob.pending_count().unwrap_or(1) == 0
    })
    .await;
    assert_eq!(alice.failed_count().expect("count"), 0);
    assert_eq!(bob.failed_count().expect("count"), 0);

    // Exactly once on the server, as a third device reads it.
    let reader = device(
        &url,
        &dir.path().join("reader"),
        Issuer::new(&issuer, "alice", TTL),
    );
    reader.sync_messages(&thread).await.expect("sync");
    let on_server: Vec<String> = reader
        .messages(&thread)
        .expect("cache")
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(on_server.len(), sent.len(), "nothing lost or doubled");
    assert_eq!(on_server.iter().cloned().collect::<BTreeSet<_>>(), sent);

    // Bob's live channel brought every message without the app asking.
    until(
        Duration::from_secs(15),
        "bob's cache to hold every message",
        || bob.messages(&thread).map(|m| m.len()).unwrap_or(0) == sent.len(),
    )
    .await;

    // Tokens really expired and were refreshed, and no update ever said failed.
    assert!(
        alice_tokens.calls.load(Ordering::SeqCst) >= 4,
        "alice's provider was asked again"
    );
    assert!(
        bob_tokens.calls.load(Ordering::SeqCst) >= 4,
        "bob's provider was asked again"
    );
    for rx in [&mut failures, &mut bob_failures] {
        while let Ok(u) = rx.try_recv() {
            let bad = matches!(
                u,
                Update::Message {
                    state: SendState::Failed,
                    ..
                } | Update::AuthRequired { .. }
            );
            assert!(!bad, "{u:?}");
        }
    }
}

/// The token expires and the provider has no new one (the refresh token was revoked): the
/// queue waits with nothing failed, the app is told once; a token the app pushes resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_sign_in_pauses_the_queue_and_a_new_token_resumes_it() {
    let dir = tempfile::tempdir().expect("dir");
    let issuer = Arc::new(TestIssuer::new());
    let server = jwt_server(&dir.path().join("server"), &issuer).await;
    let tokens = Issuer::new(&issuer, "alice", Duration::from_secs(2));
    let alice = device(&server.url(), &dir.path().join("alice"), tokens.clone());
    let thread = tid("t");
    alice
        .create_thread(Some(&thread), "T", &[])
        .await
        .expect("thread");
    let mut updates = alice.subscribe();
    tokens.signed_out.store(true, Ordering::SeqCst);
    // The token expired: `exp` is in whole seconds and a token is valid through its `exp`
    // second, so a 2-second token may be accepted for up to 3 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let mut queued = Vec::new();
    for k in 0..3 {
        let m = alice
            .send_message(&thread, &json!({ "k": k }), None)
            .await
            .expect("queued");
        queued.push(m.id);
    }
    until(Duration::from_secs(5), "the client to sign out", || {
        alice.is_signed_out()
    })
    .await;
    assert_eq!(alice.pending_count().expect("count"), 3);
    assert_eq!(alice.failed_count().expect("count"), 0);
    for m in alice.messages(&thread).expect("cache") {
        assert_eq!(m.send_state, SendState::Sending, "{m:?}");
    }
    let mut told = 0;
    while let Ok(u) = updates.try_recv() {
        match u {
            Update::AuthRequired { reason } => {
                assert_eq!(reason, TokenUnavailable::SignInRequired);
                told += 1;
            }
            Update::Message {
                state: SendState::Failed,
                ..
            } => panic!("{u:?}"),
            _ => {}
        }
    }
    assert_eq!(told, 1, "told once, not once per operation");

    // The user signs in again; the app pushes the new token.
    alice.set_token(issuer.token("alice", Duration::from_secs(60)));
    until(Duration::from_secs(10), "the queue to drain", || {
        alice.pending_count().unwrap_or(1) == 0
    })
    .await;
    assert!(!alice.is_signed_out());
    let sent: Vec<_> = alice
        .messages(&thread)
        .expect("cache")
        .into_iter()
        .filter(|m| m.send_state == SendState::Sent)
        .map(|m| m.id)
        .collect();
    assert_eq!(sent, queued, "all three, in order, once");
    let mut restored = false;
    while let Ok(u) = updates.try_recv() {
        restored |= u == Update::AuthRestored;
    }
    assert!(restored);
}

/// A second client on a folder in use is refused with a clear error (not a second sender
/// on one queue); once the first is dropped the folder opens again.
#[tokio::test]
async fn one_client_per_cache_folder() {
    let dir = tempfile::tempdir().expect("dir");
    let open = || Client::open(ClientConfig::new("http://127.0.0.1:9", ALICE, dir.path()));
    let first = open().expect("first");
    let second = open().err().expect("refused");
    assert!(
        matches!(second, ClientError::FolderInUse(ref p) if p == dir.path()),
        "{second:?}"
    );
    drop(first);
    open().expect("free again");
}

/// Dropping the app's last client and its live handle ends every task the client started
/// (sender, live channel, a background thread sync) and frees the folder.
#[test]
fn dropping_the_last_client_ends_every_task() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let server = Server::start(
            &dir.path().join("server"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await;
        let metrics = tokio::runtime::Handle::current().metrics();
        let baseline = metrics.num_alive_tasks();
        let client = Client::open(ClientConfig::new(server.url(), ALICE, dir.path().join("c")))
            .expect("open");
        let live = client.go_live();
        let _ = client.threads().expect("threads"); // starts a background sync
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            metrics.num_alive_tasks() > baseline,
            "the client runs tasks"
        );
        drop(live);
        drop(client);
        until(Duration::from_secs(5), "every client task to end", || {
            metrics.num_alive_tasks() <= baseline
        })
        .await;
        Client::open(ClientConfig::new(server.url(), ALICE, dir.path().join("c")))
            .expect("the folder is free");
    });
}

/// A message in one thread is not held back by a slow send in another: lanes run side by
/// side, while order within each stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_thread_does_not_hold_back_another() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await;
    let (proxy, paddr) = Proxy::start(server.url(), Duration::from_secs(4)).await;
    let mut cfg = ClientConfig::new(format!("http://{paddr}"), ALICE, dir.path().join("c"));
    cfg.background_sender = false;
    cfg.request_timeout = Duration::from_secs(10);
    let c = Client::open(cfg).expect("open");
    for t in ["slow", "fast"] {
        c.create_thread(Some(&tid(t)), t, &[])
            .await
            .expect("thread");
    }
    // The answer to the slow thread's send is held for 4 s.
    proxy.lose_next(1, "POST /v1/threads/slow/messages");
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            c.send_message(&tid("slow"), &json!({"big": true}), None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast = timeout(
        Duration::from_secs(2),
        c.send_message(&tid("fast"), &json!({"hi": true}), None),
    )
    .await
    .expect("the fast thread was not held back")
    .expect("sent");
    assert_eq!(fast.send_state, SendState::Sent, "{fast:?}");
    assert!(
        !slow.is_finished(),
        "the slow one is still waiting for its answer"
    );
    let slow = timeout(Duration::from_secs(10), slow)
        .await
        .expect("slow ends")
        .expect("task")
        .expect("queued");
    assert_eq!(
        c.messages(&tid("slow")).expect("cache")[0].id,
        slow.id,
        "the slow thread's message got through too"
    );
}

/// The smallest executor that is not tokio: polls one future on this thread, parking between
/// wake-ups (as an app's UI executor or another async runtime would drive the client).
fn block_on_plain<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call never finished"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// An app that does not run tokio opens the client on its UI thread and awaits its calls on
/// an executor of its own: every call works (the client runs them inside its own runtime).
#[test]
fn calls_work_from_a_thread_and_an_executor_that_are_not_tokio() {
    let dir = tempfile::tempdir().expect("dir");
    let server_rt = tokio::runtime::Runtime::new().expect("server runtime");
    let server = server_rt.block_on(Server::start(
        &dir.path().join("server"),
        "127.0.0.1:0".parse().expect("addr"),
    ));
    let url = server.url();
    let handle = std::thread::spawn(move || {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "no tokio here"
        );
        let c = Client::open(ClientConfig::new(url, ALICE, dir.path().join("c"))).expect("open");
        let thread = tid("plain");
        block_on_plain(c.create_thread(Some(&thread), "Plain", &[])).expect("create");
        let m = block_on_plain(c.send_message(&thread, &json!({"from": "a UI thread"}), None))
            .expect("send");
        assert_eq!(m.send_state, SendState::Sent);
        block_on_plain(c.sync_threads()).expect("sync");
        assert_eq!(c.threads().expect("threads").len(), 1);
        c.pause();
        c.resume();
        c.reconnect_now();
    });
    handle.join().expect("the app thread did not panic");
    drop(server);
}
