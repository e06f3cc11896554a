//! Hostile users through the HTTP surface: a session flood, and a partial holder who tries
//! to re-roll challenges and keeps guessing. The store-level versions run over SQLite and
//! moto in `shared/tests/contract/limits.rs`.

use std::time::Duration;

use audio_dedup_core::protocol::Limits;
use audio_dedup_core::DedupConfig;
use audio_dedup_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {:?}", r.headers))
}

#[tokio::test]
async fn a_session_flood_is_refused_with_429_and_others_are_served() {
    let limits = Limits {
        open_sessions: 5,
        ..Limits::default()
    };
    let s = TestServer::start_with(DedupConfig {
        limits,
        ..DedupConfig::default()
    })
    .await;
    let (mallory, bob) = (s.client(ALICE), s.client(BOB));
    let open = |who: &Client, i: u32| {
        let who = who.clone();
        async move {
            let hash = sha256_hex(format!("random {i}").as_bytes());
            who.open_session(json!({ "sha256": hash, "size": 1000, "format": "mp3" }))
                .await
        }
    };
    for i in 0..5 {
        assert_eq!(open(&mallory, i).await.status, StatusCode::CREATED);
    }
    let before = s.dump();
    let refused = open(&mallory, 5).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    assert!(retry_after(&refused) >= 1);
    assert_eq!(
        s.dump().items,
        before.items,
        "a refused open writes nothing"
    );
    assert_eq!(open(&bob, 5).await.status, StatusCode::CREATED);
    s.assert_invariants();
}

fn proof_of(song: &[u8], sess: &Value) -> String {
    let chunks = sess["challenge"]["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            let (o, l) = (
                r["offset"].as_u64().expect("offset") as usize,
                r["length"].as_u64().expect("length") as usize,
            );
            &song[o..o + l]
        });
    audio_dedup_core::audio::proof_for(sess["challenge"]["nonce"].as_str().expect("nonce"), chunks)
}

#[tokio::test]
async fn a_partial_holder_cannot_reroll_the_challenge_and_is_locked_out() {
    let lockout = Duration::from_secs(3);
    let s = TestServer::start_with(DedupConfig {
        limits: Limits {
            proof_lockout: lockout,
            ..Limits::default()
        },
        ..DedupConfig::default()
    })
    .await;
    let (alice, bob) = (s.client(ALICE), s.client(BOB));
    let size = 2 * 1024 * 1024;
    let song = audio(7, size);
    let hash = sha256_hex(&song);
    assert_eq!(
        alice.upload(&song, "format=flac").await.status,
        StatusCode::CREATED
    );
    let mut partial = song.clone();
    partial[size * 3 / 4..].fill(0);

    let open = || bob.open_session(json!({ "sha256": hash, "size": size, "format": "flac" }));
    let first = open().await.body;
    for attempt in 0..3 {
        let again = open().await.body;
        // A retried open of the same content and size answers the same open session.
        assert_eq!(again["session_id"], first["session_id"]);
        assert_eq!(
            again["challenge"], first["challenge"],
            "attempt {attempt}: the same challenge"
        );
        let wrong = bob
            .complete(
                &hash,
                json!({ "session_id": again["session_id"], "proof": proof_of(&partial, &again) }),
            )
            .await;
        assert_eq!(
            (wrong.status, wrong.code()),
            (StatusCode::CONFLICT, "upload_required")
        );
    }
    let locked = bob
        .complete(
            &hash,
            json!({ "session_id": first["session_id"], "proof": proof_of(&song, &first) }),
        )
        .await;
    assert_eq!(
        (locked.status, locked.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "locked out: even the right answer waits"
    );
    assert!((1..=lockout.as_secs()).contains(&retry_after(&locked)));
    assert_eq!(bob.describe(&hash).await.status, StatusCode::NOT_FOUND);

    tokio::time::sleep(lockout + Duration::from_millis(300)).await;
    let ok = bob
        .complete(
            &hash,
            json!({ "session_id": first["session_id"], "proof": proof_of(&song, &first) }),
        )
        .await;
    assert_eq!(
        (ok.status, ok.body["deduplicated"].as_bool()),
        (StatusCode::OK, Some(true)),
        "after the lockout, the whole file answers: {:?}",
        ok.body
    );
    assert_eq!(bob.describe(&hash).await.status, StatusCode::OK);
    s.assert_invariants();
}

/// Slow clients against a server with 3 connection slots, a 1 s header deadline and a 1 s
/// body idle deadline: a client that trickles its headers, idle connections that fill every
/// slot, and a body that stalls are all cut off, and an honest request is still served.
#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_while_others_are_served() {
    use audio_dedup_server::in_process::TempServer;
    use audio_dedup_server::{ConnectionLimits, TokenTable};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let mut tokens = TokenTable::default();
    tokens.insert(ALICE, "alice", false).expect("token");
    let server = TempServer::start(tokens, |cfg| {
        cfg.connections = ConnectionLimits {
            max_connections: 3,
            header_read_timeout: Duration::from_secs(1),
            body_idle_timeout: Duration::from_secs(1),
        }
    })
    .await
    .expect("start");
    let addr = server.server.addr();
    let healthz = || async {
        reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status())
    };
    /// Reads until the server closes the connection; what it sent, if anything.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        read.ok()
            .map(|()| String::from_utf8_lossy(&got).into_owned())
    }

    // Headers trickled and never finished.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    assert_eq!(healthz().await.expect("served"), StatusCode::OK);
    assert!(
        closed_within(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "a client that never finishes its headers is disconnected"
    );

    // Every slot taken by connections that send nothing: an honest request waits for the
    // header deadline to free one, then is served.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    assert_eq!(healthz().await.expect("served"), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(8));
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(5)).await.is_some());
    }

    // A body that stalls halfway.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(
            format!(
                "POST /v1/audio?format=mp3 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALICE}\r\n\
                 content-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    stalled.write_all(&[7u8; 1000]).await.expect("write");
    let answer = closed_within(&mut stalled, Duration::from_secs(6))
        .await
        .expect("a stalled body is cut off");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a stalled body stores nothing and answers no success: {answer:?}"
    );
    assert_eq!(healthz().await.expect("served"), StatusCode::OK);
}

/// A signed URL replayed with a wrong body: each attempt is read and refused, and once the
/// owner's daily budget of bytes through signed PUTs is spent the server refuses with 429
/// before reading another byte.
#[tokio::test]
async fn a_replayed_signed_put_stops_at_the_owners_daily_byte_cap() {
    let s = TestServer::start_with(DedupConfig {
        limits: Limits {
            upload_bytes_per_day: 3_000,
            ..Limits::default()
        },
        ..DedupConfig::default()
    })
    .await;
    let alice = s.client(ALICE);
    let song = audio(5, 1_000);
    let sess = alice
        .open_session(json!({ "sha256": sha256_hex(&song), "size": 1_000, "format": "mp3" }))
        .await;
    assert_eq!(sess.status, StatusCode::CREATED);
    let garbage = vec![0u8; 1_000];
    let mut refused = Vec::new();
    for _ in 0..4 {
        refused.push(
            alice
                .put_signed(&sess.body["upload"], garbage.clone())
                .await,
        );
    }
    let statuses: Vec<StatusCode> = refused.iter().map(|(st, _)| *st).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "{refused:?}"
    );
    assert_eq!(refused[3].1["error"]["code"], "quota_exceeded");
    // The real bytes are refused as well today: the budget counts what was sent.
    let (st, _) = alice.put_signed(&sess.body["upload"], song).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    s.assert_invariants();
}

/// One user over the request rate gets 429 `rate_limited` with `Retry-After`; another user
/// is served meanwhile.
#[tokio::test]
async fn a_user_over_the_request_rate_is_throttled_and_others_are_not() {
    use std::num::NonZeroU32;

    use audio_dedup_server::in_process::TempServer;
    use audio_dedup_server::rate_limit::RequestRate;
    use audio_dedup_server::TokenTable;

    let mut tokens = TokenTable::default();
    tokens.insert(ALICE, "alice", false).expect("token");
    tokens.insert(BOB, "bob", false).expect("token");
    let server = TempServer::start(tokens, |cfg| {
        cfg.request_rate = Some(RequestRate {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::new(3).expect("3"),
        })
    })
    .await
    .expect("start");
    let http = reqwest::Client::new();
    let stats = |token: &'static str| {
        http.get(format!("{}/v1/audio/stats", server.url()))
            .bearer_auth(token)
            .send()
    };
    for i in 0..3 {
        assert_eq!(
            stats(ALICE).await.expect("answer").status(),
            StatusCode::OK,
            "request {i}"
        );
    }
    let throttled = stats(ALICE).await.expect("answer");
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = throttled.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&wait), "{wait}");
    let body: Value = throttled.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(stats(BOB).await.expect("answer").status(), StatusCode::OK);
}
