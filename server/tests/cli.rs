//! The README's first command, as a new user runs it: the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_audio-dedup-server"))
}

#[test]
fn refuses_to_start_without_a_token_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("AUDIO_DEDUP_TOKENS")
        .env_remove("AUDIO_DEDUP_TOKENS_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token table"), "{err}");
}

/// Starts `--dev` on `dir`; answers the child, the token it printed and its address.
fn start_dev(dir: &std::path::Path) -> (std::process::Child, String, String) {
    let mut child = bin()
        .args([
            "--dev",
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir)
        .env_remove("AUDIO_DEDUP_TOKENS")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut token, mut addr) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (token.is_none() || addr.is_none()) && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(t) = line.strip_prefix("export TOKEN=") {
            token = Some(t.to_owned());
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(a) = v["addr"].as_str() {
                addr = Some(a.to_owned());
            }
        }
    }
    // Keep reading its logs until it exits, so its writes never hit a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (
        child,
        token.expect("token printed"),
        addr.expect("listening line logged"),
    )
}

/// Sends SIGTERM and waits (bounded) for a clean exit.
fn stop(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "graceful shutdown exits 0, got {st}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (status with the token, status without one) of `GET /v1/audio/stats`.
fn stats_statuses(addr: &str, token: &str) -> (u16, u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest_like_get(&format!("http://{addr}/v1/audio/stats"), Some(token)).await;
        let unauth = reqwest_like_get(&format!("http://{addr}/v1/audio/stats"), None).await;
        (c, unauth)
    })
}

#[test]
fn dev_mode_prints_a_token_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, token, addr) = start_dev(dir.path());
    assert_eq!(stats_statuses(&addr, &token), (200, 401));
    assert!(dir.path().join("index.sqlite").exists());
    stop(child);
}

#[test]
fn dev_mode_keeps_its_token_across_restarts_and_a_new_data_dir_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, first, _) = start_dev(&data);
    stop(child);
    let (child, second, addr) = start_dev(&data);
    assert_eq!(first, second, "a restart prints the same token");
    assert_eq!(
        stats_statuses(&addr, &first),
        (200, 401),
        "and it still works"
    );
    stop(child);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&data.join("dev-tokens.json")),
            0o600,
            "the token file is the owner's only"
        );
        assert_eq!(
            mode(&data),
            0o700,
            "a data dir --dev creates is not world-readable"
        );
        assert_eq!(
            mode(&data.join("signing.key")),
            0o600,
            "nor is the signing key"
        );
    }
    let other = tempfile::tempdir().unwrap();
    let (child, fresh, _) = start_dev(other.path());
    assert_ne!(fresh, first, "a new data dir gets a fresh random token");
    stop(child);
}

/// Minimal HTTP/1.1 GET returning the status code (keeps this test free of client crates).
async fn reqwest_like_get(url: &str, token: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nhost: {host}\r\n{auth}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}
