//! Cold-start proxy per Lambda function. A fake Lambda Runtime API on loopback spawns the
//! function's release binary (x86_64, as built here; Lambda runs the arm64 build), records
//! the time from spawn to its first `GET /2018-06-01/runtime/invocation/next`, then hands it
//! one event and records how long the first invocation takes (against moto).
//!
//! Needs moto: `AUDIO_DEDUP_MOTO_ENDPOINT=http://127.0.0.1:PORT` (scripts/test starts one), and
//! the binaries: `cargo build --release -p upload -p references -p stats -p s3-events -p reconciler`.
//! Env: `BENCH_ROUNDS` (default 10), `BENCH_BIN_DIR` (default target/release).
//! Exit codes: 0 targets met, 2 a target missed, 1 error.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use tokio::sync::{mpsc, oneshot};

#[derive(Default)]
struct Probe {
    first_poll: Option<Instant>,
    event: Option<(String, serde_json::Value)>,
    done: Option<oneshot::Sender<(Instant, bool)>>,
}

type Shared = Arc<Mutex<Probe>>;

async fn next(State(p): State<Shared>) -> (HeaderMap, String) {
    let ev = {
        let mut g = p.lock().unwrap();
        g.first_poll.get_or_insert_with(Instant::now);
        g.event.take()
    };
    match ev {
        Some((id, body)) => {
            let mut h = HeaderMap::new();
            h.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
            h.insert(
                "lambda-runtime-deadline-ms",
                "99999999999999".parse().unwrap(),
            );
            h.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:bench"
                    .parse()
                    .unwrap(),
            );
            (h, body.to_string())
        }
        // Only one event per process: park the second poll until the process is killed.
        None => std::future::pending().await,
    }
}

async fn respond(
    State(p): State<Shared>,
    Path((_id, kind)): Path<(String, String)>,
    body: String,
) -> &'static str {
    let ok = kind == "response";
    if !ok {
        eprintln!("function reported an error: {body}");
    }
    if let Some(tx) = p.lock().unwrap().done.take() {
        let _ = tx.send((Instant::now(), ok));
    }
    "{}"
}

async fn init_error(body: String) -> &'static str {
    eprintln!("init error: {body}");
    "{}"
}

fn api_event(method: &str, path: &str, body: Option<&[u8]>) -> serde_json::Value {
    let fixture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../functions/fixtures/apigw-http.json"
    ))
    .unwrap();
    let mut e: serde_json::Value = serde_json::from_str(&fixture).unwrap();
    e["rawPath"] = path.into();
    e["rawQueryString"] = "format=mp3".into();
    e["queryStringParameters"] = serde_json::json!({ "format": "mp3" });
    e["requestContext"]["http"]["method"] = method.into();
    e["requestContext"]["http"]["path"] = path.into();
    e["requestContext"]["authorizer"]["jwt"]["claims"] = serde_json::json!({ "sub": "bench-user" });
    e["headers"] = serde_json::json!({ "content-type": "application/json" });
    match body {
        Some(b) => {
            e["body"] = base64::engine::general_purpose::STANDARD.encode(b).into();
            e["isBase64Encoded"] = true.into();
        }
        None => {
            e.as_object_mut().unwrap().remove("body");
            e["isBase64Encoded"] = false.into();
        }
    }
    e
}

struct Sample {
    to_first_poll: Duration,
    first_invocation: Duration,
}

async fn one_round(
    bin: &std::path::Path,
    event: serde_json::Value,
    env: &[(String, String)],
) -> Result<Sample, String> {
    let probe: Shared = Arc::default();
    let (tx, rx) = oneshot::channel();
    {
        let mut g = probe.lock().unwrap();
        g.event = Some(("req-1".into(), event));
        g.done = Some(tx);
    }
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(respond))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(probe.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.recv().await;
            })
            .await
    });
    let spawned = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .env_clear()
        .envs(env.iter().cloned())
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AWS_LAMBDA_LOG_LEVEL", "ERROR")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let result = tokio::time::timeout(Duration::from_secs(30), rx).await;
    let _ = child.kill().await;
    let _ = stop_tx.send(()).await;
    let _ = server.await;
    let (done, ok) = result
        .map_err(|_| "timed out".to_string())?
        .map_err(|_| "no response".to_string())?;
    if !ok {
        return Err("the invocation failed".into());
    }
    let first_poll = probe.lock().unwrap().first_poll.ok_or("never polled")?;
    Ok(Sample {
        to_first_poll: first_poll - spawned,
        first_invocation: done - first_poll,
    })
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Ok(moto) = std::env::var("AUDIO_DEDUP_MOTO_ENDPOINT") else {
        eprintln!("set AUDIO_DEDUP_MOTO_ENDPOINT (a running moto_server)");
        return std::process::ExitCode::from(1);
    };
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = std::path::PathBuf::from(
        std::env::var("BENCH_BIN_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release").into()),
    );
    let suffix = std::process::id();
    let env: Vec<(String, String)> = [
        ("TABLE_NAME", format!("cold-{suffix}")),
        ("BUCKET_NAME", format!("cold-{suffix}")),
        ("KEY_PREFIX", "prod/".into()),
        ("AWS_ENDPOINT_URL", moto.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("S3_FORCE_PATH_STYLE", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // The stores, created with the adapters' own setup code.
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let (ddb, s3) = audio_dedup_core::store::aws::clients_from_env(true).await;
    let index = audio_dedup_core::store::aws::DynamoIndex::new(ddb, format!("cold-{suffix}"));
    let blobs = audio_dedup_core::store::aws::S3Blobs::new(s3, format!("cold-{suffix}"), "prod/");
    if let Err(e) = index.create_table().await.and(blobs.create_bucket().await) {
        eprintln!("cannot create the stores on moto: {e}");
        return std::process::ExitCode::from(1);
    }
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("stats", api_event("GET", "/v1/audio/stats", None)),
        ("upload", api_event("POST", "/v1/audio", Some(b"cold start bench audio"))),
        ("references", api_event("DELETE", "/v1/audio/0000000000000000000000000000000000000000000000000000000000000000/references/r1", None)),
        ("s3-events", serde_json::json!({ "Records": [] })),
        ("reconciler", serde_json::json!({ "source": "aws.events", "detail": {} })),
    ];
    println!(
        "cold-start proxy: {rounds} rounds per function; binaries from {}",
        dir.display()
    );
    println!(
        "{:<12} {:>16} {:>16} {:>20} {:>12}",
        "function", "spawn→poll p50", "spawn→poll max", "1st invocation p50", "size"
    );
    let mut missed = false;
    for (name, event) in cases {
        let bin = dir.join(name);
        let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
        let mut polls = Vec::new();
        let mut invs = Vec::new();
        for _ in 0..rounds {
            match one_round(&bin, event.clone(), &env).await {
                Ok(s) => {
                    polls.push(s.to_first_poll);
                    invs.push(s.first_invocation);
                }
                Err(e) => {
                    eprintln!("{name}: {e}");
                    return std::process::ExitCode::from(1);
                }
            }
        }
        let p50 = pct(polls.clone(), 0.5);
        missed |= p50 > Duration::from_millis(20);
        println!(
            "{:<12} {:>16} {:>16} {:>20} {:>9.1} MB",
            name,
            ms(p50),
            ms(pct(polls, 1.0)),
            ms(pct(invs, 0.5)),
            size as f64 / 1e6
        );
    }
    println!("target: spawn→first poll p50 ≤ 20 ms; published Rust provided.al2023 init ≈ 14–15.5 ms (hello world), 120–145 ms with SDK + DynamoDB (p50/p99, end to end).");
    if missed {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
