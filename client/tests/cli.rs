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

    let other = tempfile::tempdir().expect("dir");
    let r = cli(&url, other.path(), &["messages", "jam"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("synced: 1 new, 0 deleted"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("alice"), "{}", r.stdout);

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

    let r = cli(&url, &data, &["stats"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("dedup ratio"), "{}", r.stdout);
}
