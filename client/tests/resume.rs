//! Large uploads survive a kill: `audio-dedup upload` of a 64 MiB recording is killed
//! (SIGKILL) about halfway through its parts and run again; the second run sends only what
//! the server does not hold and says how much it resumed from. Bytes are counted on the
//! server's side of a proxy that every signed part PUT goes through (the server signs its
//! URLs for the proxy's address).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use audio_dedup_core::ContentHash;
use support::*;

const SIZE: usize = 64 * 1024 * 1024;
const PART: u64 = 8 * 1024 * 1024;
const PART_PUT: &str = "PUT /blob/staging/";

fn recording() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn upload_cmd(
    proxy: &str,
    data: &std::path::Path,
    file: &std::path::Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_audio-dedup"));
    cmd.env_remove("AUDIO_DEDUP_URL")
        .env_remove("AUDIO_DEDUP_CLIENT_DIR")
        .env("AUDIO_DEDUP_TOKEN", ALICE)
        .arg("--server")
        .arg(proxy)
        .arg("--data-dir")
        .arg(data)
        .arg("upload")
        .arg(file)
        .arg("--no-library")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upload_resumes_from_the_parts_the_server_holds() {
    let dir = tempfile::tempdir().expect("dir");
    let server_addr = free_addr();
    let (proxy, proxy_addr) = Proxy::start(format!("http://{server_addr}"), Duration::ZERO).await;
    let proxy_url = format!("http://{proxy_addr}");
    let public = proxy_url.clone();
    let _server = Server::start_with(&dir.path().join("server"), server_addr, |cfg| {
        cfg.public_url = Some(public);
    })
    .await;
    let song = recording();
    let hash = ContentHash::of(&song);
    let file = dir.path().join("take.wav");
    std::fs::write(&file, &song).expect("write the recording");
    let data = dir.path().join("client");

    // Slow parts, so the kill lands mid-upload whatever the machine.
    proxy.slow_down(PART_PUT, Duration::from_millis(300));
    let mut first = upload_cmd(&proxy_url, &data, &file).spawn().expect("run");
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.answered(PART_PUT, 200) < 3 && Instant::now() < deadline {
        assert!(
            first.try_wait().expect("poll").is_none(),
            "the upload ended before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().await.expect("kill -9");
    let stored_before = proxy.answered(PART_PUT, 200);
    let parts = (SIZE as u64 / PART) as usize;
    assert!(
        (3..parts).contains(&stored_before),
        "killed at {stored_before} of {parts} parts"
    );
    let sent_before = proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with(PART_PUT))
        .count();

    proxy.slow_down("", Duration::ZERO);
    let out = upload_cmd(&proxy_url, &data, &file)
        .output()
        .await
        .expect("run again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with(&hash.to_string()), "{stdout}");
    let resumed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("resumed from "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume point printed: {stdout}"));
    assert!(resumed >= stored_before as u64 * PART, "{stdout}");
    let sent_after = proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with(PART_PUT))
        .count()
        - sent_before;
    // The missing parts, plus at most one the kill cut off.
    assert!(
        sent_after <= parts - stored_before + 1,
        "sent {sent_after} parts after the restart; {stored_before} of {parts} were stored"
    );
    assert_eq!(sent_after as u64 * PART, SIZE as u64 - resumed, "{stdout}");
    eprintln!(
        "killed with {stored_before} of {parts} parts stored; resumed from {resumed} B; \
         {sent_after} parts ({} B) sent after the restart",
        sent_after as u64 * PART
    );

    // The server holds the whole recording under its hash.
    let (status, view) = call_as(
        &proxy_url,
        ALICE,
        reqwest::Method::GET,
        &format!("/v1/audio/{hash}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["size"], SIZE as u64);
    let url = view["url"].as_str().expect("url");
    let bytes = reqwest::get(url)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(ContentHash::of(&bytes), hash);
}
