//! The `audio-dedup` binary, run as a user would: offline against a closed port, and online
//! against the local server in-process.

use std::path::Path;

mod support;

const TOKEN: &str = support::ALICE;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(server: &str, data: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_audio-dedup"))
        .env_remove("AUDIO_DEDUP_URL")
        .env_remove("AUDIO_DEDUP_CLIENT_DIR")
        .env("AUDIO_DEDUP_TOKEN", TOKEN)
        .arg("--server")
        .arg(server)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .await
        .expect("run the binary");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "the binary panicked: {}",
        run.stderr
    );
    run
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

#[tokio::test]
async fn offline_send_is_queued_listed_and_cleared() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("client");
    let snap = dir.path().join("snap.json");
    std::fs::write(&snap, br#"{"bpm":120,"key":"C minor"}"#).expect("snapshot");
    let url = closed_port();
    let snap_arg = snap.to_string_lossy().into_owned();

    let r = cli(&url, &data, &["send", "jam", "--snapshot", &snap_arg]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.trim_end().ends_with(" sending"), "{}", r.stdout);

    let r = cli(&url, &data, &["queue", "list"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("1 queued operations"), "{}", r.stdout);
    assert!(r.stdout.contains("create_message"), "{}", r.stdout);
    assert!(
        r.stdout.contains("pending [thread:jam] attempts 1"),
        "{}",
        r.stdout
    );

    let r = cli(&url, &data, &["messages", "jam"]).await;
    assert_eq!(r.code, 0, "offline is a warning: {}", r.stderr);
    assert!(r.stdout.contains("sending"), "{}", r.stdout);
    assert!(r.stderr.contains("warning"), "{}", r.stderr);

    let r = cli(&url, &data, &["cache", "stats"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    for row in ["messages 1", "unsent messages 1", "pending operations 1"] {
        let found = r
            .stdout
            .lines()
            .any(|l| l.split_whitespace().eq(row.split(' ')));
        assert!(found, "{row:?} in {}", r.stdout);
    }

    let r = cli(&url, &data, &["cache", "clear"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cli(&url, &data, &["queue", "list"]).await;
    assert!(r.stdout.starts_with("0 queued operations"), "{}", r.stdout);

    // Errors: exit 1 with `error: ...`, never a panic.
    let r = cli(&url, &data, &["stats"]).await;
    assert_eq!(
        r.code, 0,
        "offline server stats are a warning: {}",
        r.stderr
    );
    let r = cli(&url, &data, &["send", "jam", "--snapshot", "/nonexistent"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    let r = cli(&url, &data, &["upload", &snap_arg]).await;
    assert_eq!(r.code, 1, "no format for .json: {}", r.stderr);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_audio-dedup"))
        .env_remove("AUDIO_DEDUP_TOKEN")
        .args(["--data-dir", &data.to_string_lossy(), "cache", "stats"])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: a token is required"));
}

#[tokio::test]
async fn online_send_and_sync() {
    let srv = tempfile::tempdir().expect("dir");
    let server = support::Server::start(srv.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = server.url();
    let (status, _) = server
        .call(
            TOKEN,
            reqwest::Method::POST,
            "/v1/threads",
            Some(serde_json::json!({"id": "jam", "title": "Jam", "members": []})),
        )
        .await;
    assert_eq!(status, 201);

    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("client");
    let snap = dir.path().join("snap.json");
    std::fs::write(&snap, br#"{"bpm":90}"#).expect("snapshot");
    let snap_arg = snap.to_string_lossy().into_owned();

    let r = cli(&url, &data, &["threads"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("jam  \"Jam\"  by alice"), "{}", r.stdout);

    let r = cli(&url, &data, &["send", "jam", "--snapshot", &snap_arg]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.trim_end().ends_with(" sent"), "{}", r.stdout);
    // Text alone (the snapshot is `{}`); a bad text is refused before anything is queued.
    let r = cli(&url, &data, &["send", "jam", "--text", "in D, slower"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let texted = r
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let r = cli(&url, &data, &["send", "jam", "--text", "bell\u{7}"]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("control characters"), "{}", r.stderr);

    let other = tempfile::tempdir().expect("dir");
    let r = cli(&url, other.path(), &["messages", "jam"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("synced: 2 new, 0 deleted"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("alice"), "{}", r.stdout);
    let line = r.stdout.lines().rev().find(|l| l.contains(&texted));
    assert!(
        line.is_some_and(|l| l.contains("\"in D, slower\"")),
        "{}",
        r.stdout
    );
    let r = cli(&url, other.path(), &["snapshot", &texted]).await;
    assert_eq!((r.code, r.stdout.trim()), (0, "{}"), "{}", r.stderr);

    let r = cli(&url, &data, &["messages", "nope"]).await;
    assert_eq!(r.code, 1, "an unknown thread is an error: {}", r.stdout);
    assert!(r.stderr.contains("thread_not_found"), "{}", r.stderr);

    // Audio: upload twice (the second sends nothing), attach, download elsewhere.
    let song = dir.path().join("song.mp3");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&song, &bytes).expect("song");
    let song_arg = song.to_string_lossy().into_owned();
    let r = cli(&url, &data, &["upload", &song_arg]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let hash = r.stdout.lines().next().unwrap_or_default().to_owned();
    assert_eq!(hash.len(), 64, "{}", r.stdout);
    assert!(r.stdout.contains("uploaded 300000 B"), "{}", r.stdout);
    let r = cli(&url, &data, &["upload", &song_arg, "--format", "mp3"]).await;
    assert!(r.stdout.contains("deduplicated"), "{}", r.stdout);
    let args = ["send", "jam", "--snapshot", &snap_arg, "--audio", &song_arg];
    let r = cli(&url, &data, &args).await;
    assert!(
        r.stdout.trim_end().ends_with(" sent"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let copy = dir.path().join("copy.mp3");
    let copy_arg = copy.to_string_lossy().into_owned();
    let args = ["download", &hash, "--out", &copy_arg];
    let r = cli(&url, other.path(), &args).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&copy).expect("copy"), bytes);

    // The seed's check: after a duplicate upload the ratio is above 1 (each upload kept a
    // library item, and the message holds a third reference on the one stored file).
    let r = cli(&url, &data, &["stats"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let figure = |name: &str| -> f64 {
        let line = r.stdout.lines().find(|l| l.trim_start().starts_with(name));
        let value = line.and_then(|l| l.split_whitespace().last());
        value.and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    assert!(figure("dedup ratio") > 1.0, "{}", r.stdout);
    assert_eq!(figure("bytes saved"), 600_000.0, "{}", r.stdout);
    assert_eq!(figure("unreferenced files"), 0.0, "{}", r.stdout);
}

async fn cli_as(token: &str, server: &str, data: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_audio-dedup"))
        .env_remove("AUDIO_DEDUP_URL")
        .env_remove("AUDIO_DEDUP_CLIENT_DIR")
        .env("AUDIO_DEDUP_TOKEN", token)
        .arg("--server")
        .arg(server)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .await
        .expect("run the binary");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run
}

/// The first word of the last line of stdout (the id a command prints).
fn first_word(r: &Run) -> String {
    let line = r.stdout.lines().last().unwrap_or_default();
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// "Two people, two devices" as people do it, through the `audio-dedup` binary: Alice and
/// Bob each on a cache folder of their own, Carol in none of their threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_two_devices_through_the_cli() {
    use support::{ALICE, BOB, CAROL};
    let srv = tempfile::tempdir().expect("dir");
    let server = support::Server::start(srv.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("dir");
    let (a, b, c) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p.to_string_lossy().into_owned()
    };
    let snap = file("snap.json", br#"{"bpm":100}"#);
    let take_bytes = support::story::recording(7, 150_000);
    let take = file("take.wav", &take_bytes);
    let reply = file("reply.ogg", &support::story::recording(8, 90_000));
    let take_hash = audio_dedup_core::ContentHash::of(&take_bytes).to_hex();

    // 1. Alice creates the thread and sends her recording.
    let r = cli_as(
        ALICE,
        &url,
        &a,
        &[
            "threads", "create", "--title", "Duo", "--member", "bob", "--id", "duo",
        ],
    )
    .await;
    assert_eq!((r.code, r.stdout.trim()), (0, "duo"), "{}", r.stderr);
    let r = cli_as(
        ALICE,
        &url,
        &a,
        &["send", "duo", "--snapshot", &snap, "--audio", &take],
    )
    .await;
    assert!(
        r.stdout.trim_end().ends_with(" sent"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let msg = first_word(&r);

    // 2. Bob sees it (not cached yet), plays it, and replies.
    let r = cli_as(BOB, &url, &b, &["messages", "duo"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains(&msg))
        .expect("the message");
    assert!(line.contains("by alice") && line.contains("sent"), "{line}");
    assert!(line.contains("(not cached)"), "{line}");
    let r = cli_as(BOB, &url, &b, &["play", &msg]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(r.stdout.trim()).expect("played file"),
        take_bytes
    );
    let r = cli_as(BOB, &url, &b, &["messages", "duo"]).await;
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains(&msg))
        .expect("the message");
    assert!(line.contains("(cached)"), "{line}");
    let out = dir.path().join("copy.wav");
    let out_arg = out.to_string_lossy().into_owned();
    let r = cli_as(
        BOB,
        &url,
        &b,
        &["download", "--message", &msg, "--out", &out_arg],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&out).expect("copy"), take_bytes);
    let r = cli_as(
        BOB,
        &url,
        &b,
        &["send", "duo", "--snapshot", &snap, "--audio", &reply],
    )
    .await;
    assert!(
        r.stdout.trim_end().ends_with(" sent"),
        "{} {}",
        r.stdout,
        r.stderr
    );

    // 3. Bob saves Alice's track from her message.
    let r = cli_as(
        BOB,
        &url,
        &b,
        &["library", "save", &msg, "--title", "Alice's take"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.trim_end().ends_with(" sent"), "{}", r.stdout);
    let item = first_word(&r);
    let r = cli_as(BOB, &url, &b, &["library", "list"]).await;
    assert!(
        r.stdout.contains(&take_hash) && r.stdout.contains("Alice's take"),
        "{}",
        r.stdout
    );

    // 6. Carol gets 404 everywhere and changes nothing.
    let stats_before = server
        .call(ALICE, reqwest::Method::GET, "/v1/audio/stats", None)
        .await;
    let r = cli_as(CAROL, &url, &c, &["play", &msg, "--thread", "duo"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("404") && r.stderr.contains("message_not_found"),
        "{}",
        r.stderr
    );
    let r = cli_as(CAROL, &url, &c, &["messages", "duo"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    let r = cli_as(
        CAROL,
        &url,
        &c,
        &["library", "save", &msg, "--title", "Mine now"],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    let r = cli_as(CAROL, &url, &c, &["download", &take_hash]).await;
    assert_eq!(r.code, 1);
    let r = cli_as(CAROL, &url, &c, &["delete", "duo", &msg]).await;
    assert_eq!(r.code, 1, "not in her cache: {}", r.stdout);
    let stats_after = server
        .call(ALICE, reqwest::Method::GET, "/v1/audio/stats", None)
        .await;
    assert_eq!(stats_before, stats_after);

    // 4. Alice deletes her message; Bob's library keeps the audio.
    let r = cli_as(ALICE, &url, &a, &["delete", "duo", &msg]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, format!("{msg} deleted").as_str()),
        "{}",
        r.stderr
    );
    assert!(server.blob_path(&take_hash).exists());
    let r = cli_as(BOB, &url, &b, &["cache", "stats"]).await;
    assert_eq!(r.code, 0);
    let fresh = dir.path().join("bob-2");
    let r = cli_as(BOB, &url, &fresh, &["library", "play", &item]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(r.stdout.trim()).expect("played"), take_bytes);

    // 5. Bob removes it: the track is gone; only his reply is stored.
    let r = cli_as(BOB, &url, &b, &["library", "rm", &item]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, format!("{item} removed").as_str()),
        "{}",
        r.stderr
    );
    assert!(!server.blob_path(&take_hash).exists());
    let r = cli_as(BOB, &url, &b, &["stats"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let row = |name: &str| {
        r.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_owned())
    };
    assert_eq!(row("unique files").as_deref(), Some("1"), "{}", r.stdout);
    assert_eq!(
        row("unreferenced files").as_deref(),
        Some("0"),
        "{}",
        r.stdout
    );

    // `upload` keeps the file in the library unless told not to, and says so.
    let solo = file("solo.mp3", &support::story::recording(9, 20_000));
    let r = cli_as(ALICE, &url, &a, &["upload", &solo]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("library item") && r.stdout.contains("\"solo.mp3\" sent"),
        "{}",
        r.stdout
    );
    let other = file("other.mp3", &support::story::recording(10, 20_000));
    let r = cli_as(ALICE, &url, &a, &["upload", &other, "--no-library"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("deletes it after its grace period"),
        "{}",
        r.stdout
    );
    let r = cli_as(ALICE, &url, &a, &["library", "list"]).await;
    assert!(r.stdout.starts_with("1 library items"), "{}", r.stdout);

    // Offline: a library add and a send queue up; `queue process` sends them at once.
    let gone_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let late = file("late.flac", &support::story::recording(11, 30_000));
    let r = cli_as(
        ALICE,
        &gone_url,
        &a,
        &["library", "add", &late, "--title", "Late"],
    )
    .await;
    assert!(
        r.stdout.trim_end().ends_with(" sending"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let r = cli_as(ALICE, &gone_url, &a, &["send", "duo", "--snapshot", &snap]).await;
    assert!(r.stdout.trim_end().ends_with(" sending"), "{}", r.stdout);
    let r = cli_as(ALICE, &url, &a, &["queue", "process"]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "sent 3, failed 0, waiting 0"),
        "{}",
        r.stderr
    );
}

/// Two windows: bob runs `audio-dedup watch jam` while alice sends from her own cache; her
/// messages appear in bob's output by themselves, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_other_members_messages_as_they_arrive() {
    use support::{ALICE, BOB};
    let srv = tempfile::tempdir().expect("dir");
    let server = support::Server::start(srv.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("dir");
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    let made = cli_as(
        ALICE,
        &url,
        &a,
        &[
            "threads", "create", "--id", "jam", "--title", "jam", "--member", "bob",
        ],
    )
    .await;
    assert_eq!(made.code, 0, "{}{}", made.stdout, made.stderr);
    let watcher = {
        let (url, b) = (url.clone(), b.clone());
        tokio::spawn(
            async move { cli_as(BOB, &url, &b, &["watch", "jam", "--for-secs", "6"]).await },
        )
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let snapshot = dir.path().join("s.json");
    std::fs::write(&snapshot, br#"{"bpm": 128}"#).expect("write");
    let mut sent_ids = Vec::new();
    for _ in 0..2 {
        let sent = cli_as(
            ALICE,
            &url,
            &a,
            &[
                "send",
                "jam",
                "--snapshot",
                snapshot.to_str().expect("utf-8"),
            ],
        )
        .await;
        assert_eq!(sent.code, 0, "{}{}", sent.stdout, sent.stderr);
        sent_ids.push(first_word(&sent));
    }
    let watched = watcher.await.expect("watch ran");
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    let printed: Vec<&str> = watched
        .stdout
        .lines()
        .filter(|l| l.starts_with("jam  "))
        .collect();
    assert_eq!(printed.len(), 2, "each message once: {}", watched.stdout);
    for id in &sent_ids {
        assert!(
            printed.iter().any(|l| l.contains(id.as_str())),
            "{id} in {}",
            watched.stdout
        );
    }
}

/// Issue #25's story through the binary: Alice adds Carol, who sees the history and plays
/// its audio; Bob leaves, gets 404 from then on, and his cache forgets the thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_and_go_through_the_cli() {
    use support::{ALICE, BOB, CAROL};
    let srv = tempfile::tempdir().expect("dir");
    let server = support::Server::start(srv.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("dir");
    let (a, b, c) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    let song = dir.path().join("take.mp3");
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(&song, &bytes).expect("song");
    let song_arg = song.to_string_lossy().into_owned();
    let ok = |r: &Run| assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    let r = cli_as(
        ALICE,
        &url,
        &a,
        &[
            "threads", "create", "--id", "duo", "--title", "Duo", "--member", "bob",
        ],
    )
    .await;
    ok(&r);
    let args = ["send", "duo", "--text", "take one", "--audio", &song_arg];
    let r = cli_as(ALICE, &url, &a, &args).await;
    ok(&r);
    let sent = first_word(&r);
    // Bob caches the thread, the message and its snapshot.
    ok(&cli_as(BOB, &url, &b, &["threads"]).await);
    let r = cli_as(BOB, &url, &b, &["messages", "duo"]).await;
    ok(&r);
    assert!(r.stdout.contains("\"take one\""), "{}", r.stdout);
    ok(&cli_as(BOB, &url, &b, &["snapshot", &sent]).await);

    // Bob may not remove anyone; Alice adds Carol.
    let r = cli_as(BOB, &url, &b, &["threads", "remove-member", "duo", "alice"]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("forbidden"), "{}", r.stderr);
    let r = cli_as(ALICE, &url, &a, &["threads", "add-member", "duo", "carol"]).await;
    ok(&r);
    assert!(
        r.stdout.contains("members [alice, bob, carol]"),
        "{}",
        r.stdout
    );
    let r = cli_as(CAROL, &url, &c, &["threads"]).await;
    ok(&r);
    assert!(r.stdout.contains("duo  \"Duo\""), "{}", r.stdout);
    let r = cli_as(CAROL, &url, &c, &["messages", "duo"]).await;
    ok(&r);
    assert!(
        r.stdout.contains(&sent) && r.stdout.contains("take one"),
        "{}",
        r.stdout
    );
    // Her list: one unread message from Alice, with its text and audio; reading clears it.
    let r = cli_as(CAROL, &url, &c, &["threads", "list"]).await;
    ok(&r);
    assert!(
        r.stdout.contains("unread 1") && r.stdout.contains("alice \"take one\" [audio]"),
        "{}",
        r.stdout
    );
    let r = cli_as(CAROL, &url, &c, &["threads", "read", "duo"]).await;
    ok(&r);
    assert_eq!(r.stdout.trim(), "duo: read", "{}", r.stdout);
    let r = cli_as(CAROL, &url, &c, &["threads", "list"]).await;
    assert!(r.stdout.contains("unread 0"), "{}", r.stdout);
    let r = cli_as(CAROL, &url, &c, &["play", &sent]).await;
    ok(&r);
    let path = r
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert_eq!(std::fs::read(&path).expect("played file"), bytes);

    // Bob leaves: his cache forgets the thread, its message and its snapshot.
    let r = cli_as(BOB, &url, &b, &["threads", "leave", "duo"]).await;
    ok(&r);
    let r = cli_as(BOB, &url, &b, &["cache", "stats"]).await;
    ok(&r);
    for row in ["threads", "messages", "snapshots"] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{row} ")));
        let n = line
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?");
        assert_eq!(n, "0", "{row}: {}", r.stdout);
    }
    // From then on, a stranger's 404.
    let r = cli_as(BOB, &url, &b, &["messages", "duo"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("thread_not_found"), "{}", r.stderr);
    let r = cli_as(BOB, &url, &b, &["play", &sent, "--thread", "duo"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    // Alice's members list follows by the thread's log.
    let r = cli_as(ALICE, &url, &a, &["messages", "duo"]).await;
    ok(&r);
    let r = cli_as(ALICE, &url, &a, &["threads"]).await;
    ok(&r);
    assert!(r.stdout.contains("members [alice, carol]"), "{}", r.stdout);
}
