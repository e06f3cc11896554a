//! The JWT walkthrough as a person runs it: `dev-issuer init`, the server in JWT mode (no
//! token table, no `--dev`), `dev-issuer token` for a 10-second token, a request with it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audio_dedup_server::dev_issuer::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_audio-dedup-server"))
}

#[tokio::test]
async fn a_dev_issuer_token_is_accepted_by_a_jwt_mode_server() {
    let dir = tempfile::tempdir().unwrap();
    let issuer_dir = dir.path().join("issuer");
    let out = bin()
        .args(["dev-issuer", "init", "--dir"])
        .arg(&issuer_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--jwks"));

    let mut child = bin()
        .args([
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--jwks")
        .arg(issuer_dir.join("jwks.json"))
        .args([
            "--jwt-issuer",
            DEFAULT_ISSUER,
            "--jwt-audience",
            DEFAULT_AUDIENCE,
        ])
        .env_remove("AUDIO_DEDUP_TOKENS")
        .env_remove("AUDIO_DEDUP_TOKENS_FILE")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while addr.is_none() && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            addr = v["addr"].as_str().map(str::to_owned);
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let addr = addr.expect("listening line logged");

    let out = bin()
        .args([
            "dev-issuer",
            "token",
            "--sub",
            "auth0|alice",
            "--ttl",
            "10",
            "--dir",
        ])
        .arg(&issuer_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |token: String| {
        let http = http.clone();
        let url = format!("http://{addr}/v1/threads");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let ok = get(token).await;
    let refused = get("not-a-token-at-all".into()).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((ok, refused), (200, 401));
}
