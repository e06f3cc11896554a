//! The audio cache end to end against the local server (in-process, loopback, ephemeral
//! port): the recorded file played in place, downloads with progress and hash checks, the
//! exact size-bounded LRU, pins, the age bound, and cached audio outliving the server's copy.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audio_dedup_client::{Client, ClientConfig, ClientError, Direction, Update};
use audio_dedup_core::ports::ManualClock;
use audio_dedup_core::{AudioFormat, AudioRender, ContentHash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{TempServer, ALICE};

fn config(base: &str, dir: &Path) -> ClientConfig {
    let mut cfg = ClientConfig::new(base, ALICE, dir);
    cfg.request_timeout = Duration::from_secs(20);
    cfg
}

fn open(cfg: ClientConfig) -> Client {
    Client::open(cfg).expect("open client")
}

/// A loopback URL nothing listens on: any request through it fails.
fn dead_base() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
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

fn render(bytes: &[u8]) -> AudioRender {
    AudioRender {
        content_hash: ContentHash::of(bytes),
        format: AudioFormat::Mp3,
    }
}

/// Uploads `bytes` as Alice (through a client of its own) and returns its render.
async fn uploaded(
    server: &TempServer,
    dir: &Path,
    seed: u64,
    len: usize,
) -> (AudioRender, Vec<u8>) {
    let bytes = audio(seed, len);
    let path = dir.join(format!("upload-{seed}.mp3"));
    std::fs::write(&path, &bytes).expect("write");
    let up = open(config(&server.base, &dir.join("uploader")));
    up.upload_audio(&path, AudioFormat::Mp3, None)
        .await
        .expect("upload");
    (render(&bytes), bytes)
}

fn cached_path(dir: &Path, r: &AudioRender) -> PathBuf {
    dir.join("audio").join(r.content_hash.to_string())
}

fn downloads(rx: &mut tokio::sync::broadcast::Receiver<Update>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while let Ok(u) = rx.try_recv() {
        if let Update::Transfer {
            direction: Direction::Download,
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

/// Everything in the cache folder (names only).
fn folder(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("audio"))
        .expect("audio dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_recorded_file_is_played_in_place_without_a_request() {
    let work = tempfile::tempdir().expect("temp dir");
    let bytes = audio(1, 300_000);
    let recorded = work.path().join("take.mp3");
    std::fs::write(&recorded, &bytes).expect("write");
    // Nothing listens at this client's server address: a request would fail.
    let cache = work.path().join("cache");
    let client = open(config(&dead_base(), &cache));
    let mut updates = client.subscribe();
    let h = client
        .playable_path(&render(&bytes), Some(&recorded), None)
        .await
        .expect("recorded file");
    assert_eq!(h.path(), recorded.as_path());
    assert!(h.is_recorded());
    assert_eq!(h.content_hash(), ContentHash::of(&bytes));
    assert!(client.is_online(), "no request was made");
    assert!(downloads(&mut updates).is_empty());
    assert_eq!(client.audio_cache_size().expect("size"), 0, "not copied");
    assert!(folder(&cache).is_empty());
}

#[tokio::test]
async fn a_recorded_file_that_changed_is_not_played_the_content_is_downloaded() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let (r, bytes) = uploaded(&server, work.path(), 2, 200_000).await;
    let recorded = work.path().join("take.mp3");
    std::fs::write(&recorded, audio(99, 200_000)).expect("overwrite the take");
    let cache = work.path().join("cache");
    let client = open(config(&server.base, &cache));
    let h = client
        .playable_path(&r, Some(&recorded), None)
        .await
        .expect("downloaded instead");
    assert!(h.downloaded());
    assert_eq!(h.path(), cached_path(&cache, &r));
    assert_eq!(std::fs::read(h.path()).expect("read"), bytes);
    // A recorded path that does not exist: the cache answers.
    drop(h);
    let h = client
        .playable_path(&r, Some(&work.path().join("gone.mp3")), None)
        .await
        .expect("cached");
    assert!(h.is_from_cache());
}

#[tokio::test]
async fn a_download_reports_progress_to_the_total_and_is_cached() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let (r, bytes) = uploaded(&server, work.path(), 3, 2_000_000).await;
    let total = bytes.len() as u64;
    let cache = work.path().join("cache");
    let client = open(config(&server.base, &cache));
    let mut updates = client.subscribe();
    let seen = Mutex::new(Vec::new());
    let cb = |d: u64, t: u64| seen.lock().expect("lock").push((d, t));
    let h = client
        .playable_path(&r, None, Some(&cb))
        .await
        .expect("download");
    assert!(h.downloaded());
    assert_eq!(h.path(), cached_path(&cache, &r));
    assert_eq!(std::fs::read(h.path()).expect("read"), bytes);
    let seen = seen.into_inner().expect("lock");
    assert_eq!(seen.first(), Some(&(0, total)));
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
    assert_eq!(
        downloads(&mut updates),
        seen,
        "the update stream saw the same"
    );
    assert_eq!(client.audio_cache_size().expect("size"), total);
    assert_eq!(client.cached_audio().expect("list"), vec![r.content_hash]);
    assert_eq!(
        folder(&cache),
        vec![r.content_hash.to_string()],
        "no partial file left"
    );

    // Again: from the cache, no progress, no request.
    drop(h);
    let calls = Mutex::new(0u32);
    let cb = |_: u64, _: u64| *calls.lock().expect("lock") += 1;
    let h = client
        .playable_path(&r, None, Some(&cb))
        .await
        .expect("cached");
    assert!(h.is_from_cache());
    assert_eq!(*calls.lock().expect("lock"), 0);
    assert!(downloads(&mut updates).is_empty());

    // Concurrent first plays of the same content download it once.
    let (r2, _) = uploaded(&server, work.path(), 4, 500_000).await;
    let (a, b) = tokio::join!(
        client.playable_path(&r2, None, None),
        client.playable_path(&r2, None, None)
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!(
        [a.downloaded(), b.downloaded()]
            .iter()
            .filter(|d| **d)
            .count(),
        1,
        "one download, one cache hit"
    );
    assert_eq!(a.path(), b.path());
}

/// A stand-in server whose blob URL serves other bytes than the content it describes.
async fn lying_server(hash: ContentHash, served: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let view = serde_json::json!({
        "content_hash": hash,
        "format": "mp3",
        "size": served.len(),
        "state": "active",
        "url": format!("{base}/blob/audio/{hash}"),
        "url_expires_at": 0,
    })
    .to_string();
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65_536 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let (ctype, body) = if text.starts_with("GET /blob/") {
                ("audio/mpeg", served.clone())
            } else {
                ("application/json", view.clone().into_bytes())
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
            let _ = sock.shutdown().await;
        }
    });
    base
}

#[tokio::test]
async fn bytes_that_do_not_match_the_hash_are_discarded() {
    let expected = audio(5, 100_000);
    let r = render(&expected);
    let base = lying_server(r.content_hash, audio(6, 100_000)).await;
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let client = open(config(&base, &cache));
    let err = client
        .playable_path(&r, None, None)
        .await
        .expect_err("mismatch");
    assert!(matches!(err, ClientError::HashMismatch(_)), "{err:?}");
    assert!(folder(&cache).is_empty(), "the partial file is deleted");
    assert_eq!(client.audio_cache_size().expect("size"), 0);
    assert!(!client.is_audio_pinned(&r.content_hash), "released");
}

#[tokio::test]
async fn the_size_bound_holds_exactly_least_recently_used_first() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for seed in 10..15 {
        files.push(uploaded(&server, work.path(), seed, 10_000).await.0);
    }
    let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|i| files[i]);
    let cache = work.path().join("cache");
    let mut cfg = config(&server.base, &cache);
    cfg.audio_max_bytes = 25_000;
    let client = open(cfg);
    let play = |r: AudioRender| {
        let client = client.clone();
        async move {
            client
                .playable_path(&r, None, None)
                .await
                .expect("play")
                .source()
        }
    };
    play(a).await;
    play(b).await;
    assert_eq!(
        client.cached_audio().expect("list"),
        vec![b.content_hash, a.content_hash]
    );
    // A hit makes A the most recently used, so C's insert evicts B.
    play(a).await;
    play(c).await;
    assert_eq!(
        client.cached_audio().expect("list"),
        vec![c.content_hash, a.content_hash]
    );
    assert!(!cached_path(&cache, &b).exists(), "B's file is gone");
    assert_eq!(client.audio_cache_size().expect("size"), 20_000);
    play(d).await;
    assert_eq!(
        client.cached_audio().expect("list"),
        vec![d.content_hash, c.content_hash]
    );
    assert!(!cached_path(&cache, &a).exists());
    play(c).await;
    play(e).await;
    assert_eq!(
        client.cached_audio().expect("list"),
        vec![e.content_hash, c.content_hash]
    );
    assert!(client.audio_cache_size().expect("size") <= 25_000);
    let mut expected = vec![c.content_hash.to_string(), e.content_hash.to_string()];
    expected.sort();
    assert_eq!(folder(&cache), expected, "files and rows agree");

    // A lower bound applies at the next eviction, and survives a restart.
    drop(client);
    let mut cfg = config(&server.base, &cache);
    cfg.audio_max_bytes = 10_000;
    let client = open(cfg);
    assert_eq!(client.evict_audio().expect("evict"), 1);
    assert_eq!(client.cached_audio().expect("list"), vec![e.content_hash]);
}

#[tokio::test]
async fn a_file_in_use_is_never_evicted_or_cleared() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for seed in 20..24 {
        files.push(uploaded(&server, work.path(), seed, 10_000).await);
    }
    let cache = work.path().join("cache");
    let mut cfg = config(&server.base, &cache);
    cfg.audio_max_bytes = 25_000;
    let client = open(cfg);
    let (a, a_bytes) = &files[0];
    let held = client.playable_path(a, None, None).await.expect("A");
    assert!(client.is_audio_pinned(&a.content_hash));
    for (r, _) in &files[1..] {
        client.playable_path(r, None, None).await.expect("play");
        assert!(cached_path(&cache, a).exists(), "A is in use: kept");
        assert!(client.audio_cache_size().expect("size") <= 25_000);
    }
    assert_eq!(
        client.cached_audio().expect("list"),
        vec![files[3].0.content_hash, a.content_hash]
    );
    assert_eq!(std::fs::read(held.path()).expect("read"), *a_bytes);
    // A clone pins too; clearing keeps what is in use.
    let clone = held.clone();
    drop(held);
    client.clear_audio().expect("clear");
    assert_eq!(client.cached_audio().expect("list"), vec![a.content_hash]);
    assert_eq!(folder(&cache), vec![a.content_hash.to_string()]);
    drop(clone);
    assert!(!client.is_audio_pinned(&a.content_hash));
    // Released: the next insert may evict it like any other.
    client
        .playable_path(&files[1].0, None, None)
        .await
        .expect("B");
    client
        .playable_path(&files[2].0, None, None)
        .await
        .expect("C");
    assert_eq!(
        client.cached_audio().expect("list"),
        vec![files[2].0.content_hash, files[1].0.content_hash]
    );
    client.clear_audio().expect("clear");
    assert_eq!(client.audio_cache_size().expect("size"), 0);
    assert!(folder(&cache).is_empty());
}

#[tokio::test]
async fn cached_audio_outlives_the_servers_copy() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let (r, bytes) = uploaded(&server, work.path(), 30, 150_000).await;
    let cache = work.path().join("cache");
    let client = open(config(&server.base, &cache));
    let h = client
        .playable_path(&r, None, None)
        .await
        .expect("download");
    assert!(h.downloaded());
    drop(h);

    // Give the content one reference and remove it: the last reference deletes the audio.
    let http = reqwest::Client::new();
    let refs = format!(
        "{}/v1/audio/{}/references/fav-1",
        server.base, r.content_hash
    );
    let put = http
        .put(&refs)
        .bearer_auth(ALICE)
        .json(&serde_json::json!({ "kind": "library" }))
        .send()
        .await
        .expect("add reference");
    assert_eq!(put.status(), 200);
    let del = http
        .delete(&refs)
        .bearer_auth(ALICE)
        .send()
        .await
        .expect("remove reference");
    assert_eq!(del.status(), 204);
    let gone = client
        .api()
        .describe(&r.content_hash)
        .await
        .expect_err("deleted on the server");
    assert_eq!(gone.status(), Some(404));

    let h = client.playable_path(&r, None, None).await.expect("cached");
    assert!(h.is_from_cache());
    assert_eq!(std::fs::read(h.path()).expect("read"), bytes);
    drop(h);

    // With the server stopped, and after a restart that does not scan the folder: still
    // playable, from the table's index.
    server.stop().await;
    drop(client);
    let client = open(config(&dead_base(), &cache));
    assert_eq!(client.audio_cache_size().expect("size"), bytes.len() as u64);
    let h = client.playable_path(&r, None, None).await.expect("offline");
    assert!(h.is_from_cache());
    assert!(client.is_online(), "no request was made");
}

#[tokio::test]
async fn a_cached_file_that_vanished_is_fetched_again() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let (r, bytes) = uploaded(&server, work.path(), 40, 50_000).await;
    let cache = work.path().join("cache");
    let client = open(config(&server.base, &cache));
    drop(
        client
            .playable_path(&r, None, None)
            .await
            .expect("download"),
    );
    std::fs::remove_file(cached_path(&cache, &r)).expect("remove behind its back");
    let h = client.playable_path(&r, None, None).await.expect("again");
    assert!(h.downloaded());
    assert_eq!(std::fs::read(h.path()).expect("read"), bytes);
    assert_eq!(client.audio_cache_size().expect("size"), 50_000);
}

#[tokio::test]
async fn entries_past_the_max_age_are_evicted() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for seed in 50..53 {
        files.push(uploaded(&server, work.path(), seed, 20_000).await.0);
    }
    let [a, b, c] = [files[0], files[1], files[2]];
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let cache = work.path().join("cache");
    let mut cfg = config(&server.base, &cache);
    cfg.audio_max_age = Duration::from_secs(30 * 24 * 3600);
    cfg.clock = clock.clone();
    let client = open(cfg);
    let day = Duration::from_secs(24 * 3600);

    drop(client.playable_path(&a, None, None).await.expect("A"));
    clock.advance(day * 10);
    drop(client.playable_path(&b, None, None).await.expect("B"));
    clock.advance(day * 20);
    // A is exactly 30 days old: not older than the bound yet. Being played does not make
    // it younger (age counts from the fetch).
    assert_eq!(client.evict_audio().expect("evict"), 0);
    drop(client.playable_path(&a, None, None).await.expect("A hit"));
    clock.advance(Duration::from_millis(1));
    assert_eq!(client.evict_audio().expect("evict"), 1);
    assert_eq!(client.cached_audio().expect("list"), vec![b.content_hash]);
    assert!(!cached_path(&cache, &a).exists());

    // On insert too: B turns 30 days + 1 ms old, C's insert evicts it.
    clock.advance(day * 10);
    drop(client.playable_path(&c, None, None).await.expect("C"));
    assert_eq!(client.cached_audio().expect("list"), vec![c.content_hash]);
    assert!(!cached_path(&cache, &b).exists());

    // A pinned entry outlives its age until released.
    let held = client.playable_path(&c, None, None).await.expect("C hit");
    clock.advance(day * 31);
    assert_eq!(client.evict_audio().expect("evict"), 0);
    drop(held);
    assert_eq!(client.evict_audio().expect("evict"), 1);
    assert_eq!(client.audio_cache_size().expect("size"), 0);
}

/// A download cut short leaves its bytes; the next one asks only for the rest (`Range`),
/// reports progress from where it resumed, and checks the whole file's hash. Dropping a
/// download (as a kill or a lost network ends it) keeps what it had. `clear_audio` removes
/// a partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_from_the_bytes_on_disk() {
    let server = TempServer::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let total = 12 << 20;
    let (r, bytes) = uploaded(&server, work.path(), 21, total).await;
    let cache = work.path().join("cache");
    let client = open(config(&server.base, &cache));
    let partial = cache.join("audio").join(format!("{}.part", r.content_hash));

    // What an earlier download left: the first third.
    let kept = total / 3;
    std::fs::write(&partial, &bytes[..kept]).expect("a partial download");
    let mut updates = client.subscribe();
    let h = client.playable_path(&r, None, None).await.expect("resumed");
    assert!(h.downloaded());
    assert_eq!(std::fs::read(h.path()).expect("read"), bytes);
    assert!(!partial.exists(), "renamed into place");
    let first = downloads(&mut updates)[0];
    assert_eq!(
        first,
        (kept as u64, total as u64),
        "progress starts where it resumed"
    );
    drop(h);
    client.clear_audio().expect("clear");

    // Dropped midway (the caller gives up): the bytes so far stay for the next try.
    let (cut, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let cut = Mutex::new(Some(cut));
    let cb = |done: u64, _total: u64| {
        if done > total as u64 / 3 {
            if let Some(tx) = cut.lock().expect("lock").take() {
                let _ = tx.send(());
            }
        }
    };
    tokio::select! {
        // A download fast enough to finish first is fine too: the cache has it.
        done = client.playable_path(&r, None, Some(&cb)) => { done.expect("downloaded"); }
        _ = cut_rx => {
            let len = std::fs::metadata(&partial).map_or(0, |m| m.len());
            assert!(len > 0, "the bytes so far stay");
        }
    }
    let h = client
        .playable_path(&r, None, None)
        .await
        .expect("resumed or cached");
    assert_eq!(std::fs::read(h.path()).expect("read"), bytes);

    // A partial whose bytes are wrong is found out at the end and deleted.
    let (r2, bytes2) = uploaded(&server, work.path(), 22, 3 << 20).await;
    let partial2 = cache
        .join("audio")
        .join(format!("{}.part", r2.content_hash));
    std::fs::write(&partial2, vec![0u8; 1 << 20]).expect("a wrong prefix");
    let err = client
        .playable_path(&r2, None, None)
        .await
        .expect_err("mismatch");
    assert!(matches!(err, ClientError::HashMismatch(_)), "{err:?}");
    assert!(!partial2.exists(), "the wrong bytes are gone");
    let h2 = client.playable_path(&r2, None, None).await.expect("from 0");
    assert_eq!(std::fs::read(h2.path()).expect("read"), bytes2);

    // clear_audio removes partial downloads too.
    std::fs::write(&partial, b"left over").expect("a partial");
    drop((h, h2));
    client.clear_audio().expect("clear");
    assert!(!partial.exists());
}
