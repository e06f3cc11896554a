//! `audio-dedup-server`: the whole API on 127.0.0.1 over SQLite and files. No AWS, Docker or
//! Python. `--dev` makes a token (kept in the data directory) and prints it. `--jwks` adds
//! JWT mode; `dev-issuer` is a local issuer to try it with.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use audio_dedup_core::identity::{JwksSource, VerifierConfig};
use audio_dedup_core::protocol::{Limits, ReconcileBudget};
use audio_dedup_core::store::embedded::Synchronous;
use audio_dedup_core::DedupConfig;
use audio_dedup_server::dev_issuer;
use audio_dedup_server::rate_limit::RequestRate;
use audio_dedup_server::{run, ConnectionLimits, ServerConfig, TokenTable};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "AUDIO_DEDUP_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Where the index and the audio files live.
    #[arg(long, env = "AUDIO_DEDUP_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// JSON token table: {"<token>": {"user": "alice", "admin": false}}.
    #[arg(long, env = "AUDIO_DEDUP_TOKENS_FILE")]
    tokens: Option<PathBuf>,
    /// Token table inline: token=user[:admin],token=user.
    #[arg(long, env = "AUDIO_DEDUP_TOKENS", hide_env_values = true)]
    tokens_inline: Option<String>,
    /// JWT mode: also accept bearer JWTs signed by a key of this JWKS (a file, or an
    /// http(s) URL fetched at start-up and every hour).
    #[arg(long, env = "AUDIO_DEDUP_JWKS", requires_all = ["jwt_issuer", "jwt_audience"])]
    jwks: Option<String>,
    /// JWT mode: the tokens' exact `iss`.
    #[arg(long, env = "AUDIO_DEDUP_JWT_ISSUER", requires = "jwks")]
    jwt_issuer: Option<String>,
    /// JWT mode: an accepted `aud` (or access token `client_id`); repeatable, or
    /// comma-separated in the environment.
    #[arg(
        long,
        env = "AUDIO_DEDUP_JWT_AUDIENCE",
        value_delimiter = ',',
        requires = "jwks"
    )]
    jwt_audience: Vec<String>,
    /// Development mode: create a token for user `dev` (an admin) and print it.
    #[arg(long)]
    dev: bool,
    /// Base URL of signed upload/download URLs (default: http://<addr>).
    #[arg(long, env = "AUDIO_DEDUP_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seconds between the last reference going and deletion (0: at once).
    #[arg(long, default_value_t = 0)]
    deletion_grace_secs: u64,
    /// Seconds between reconciler passes (0: never; POST /v1/admin/reconcile still works).
    #[arg(long, default_value_t = 60)]
    reconcile_every_secs: u64,
    /// SQLite synchronous mode: full (survives power loss) or normal.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sync: String,
    /// Due work items one reconciler pass looks at (default 2000).
    #[arg(long)]
    reconcile_work_items: Option<usize>,
    /// Blob-store pages of 100 one reconciler pass sweeps (default 10).
    #[arg(long)]
    sweep_pages: Option<usize>,
    /// Seconds after which a reconciler pass starts nothing new (default 60).
    #[arg(long)]
    reconcile_budget_secs: Option<u64>,
    /// Sessions for content larger than this many MiB take parts of this size (default 8;
    /// 5 to 5120, S3's part sizes).
    #[arg(long, env = "AUDIO_DEDUP_PART_SIZE_MIB", value_parser = clap::value_parser!(u64).range(5..=5120))]
    part_size_mib: Option<u64>,
    /// Upload sessions one user may hold open at once (default 20).
    #[arg(long, env = "AUDIO_DEDUP_MAX_OPEN_SESSIONS")]
    max_open_sessions: Option<u32>,
    /// Bytes one user may upload per UTC day (default 20 GiB).
    #[arg(long, env = "AUDIO_DEDUP_MAX_UPLOAD_BYTES_PER_DAY")]
    max_upload_bytes_per_day: Option<u64>,
    /// Failed proofs of one content before that user is locked out of proving it (default 3).
    #[arg(long, env = "AUDIO_DEDUP_PROOF_FAILURES")]
    proof_failures: Option<u32>,
    /// Seconds that lockout lasts (default 3600).
    #[arg(long, env = "AUDIO_DEDUP_PROOF_LOCKOUT_SECS")]
    proof_lockout_secs: Option<u64>,
    /// Connections served at once; more wait to be accepted (default 1024).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers (default 10).
    #[arg(long)]
    header_timeout_secs: Option<u64>,
    /// Longest pause, in seconds, while a request body is being received (default 30).
    #[arg(long)]
    body_idle_timeout_secs: Option<u64>,
    /// Requests per second one user may make (0: unlimited).
    #[arg(long, default_value_t = 50)]
    rate_per_user: u32,
    /// Requests one user may make in a burst above that rate.
    #[arg(long, default_value_t = 200)]
    burst_per_user: u32,
    /// Log format.
    #[arg(long, env = "AUDIO_DEDUP_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A local JWT issuer for trying JWT mode by hand.
    DevIssuer {
        #[command(subcommand)]
        command: DevIssuerCommand,
    },
}

#[derive(Subcommand, Debug)]
enum DevIssuerCommand {
    /// Write a private key (kept if there is one) and its JWKS (DIR/jwks.json).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a token signed by DIR's key.
    Token {
        #[arg(long)]
        dir: PathBuf,
        /// The subject (user); any string, mapped to a user id.
        #[arg(long)]
        sub: String,
        /// Seconds the token is valid.
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        #[arg(long, default_value = dev_issuer::DEFAULT_ISSUER)]
        iss: String,
        #[arg(long, default_value = dev_issuer::DEFAULT_AUDIENCE)]
        aud: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if let Some(Command::DevIssuer { command }) = args.command.take() {
        return match dev_issuer_command(command) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("audio-dedup-server dev-issuer: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        fmt.json().flatten_event(true).init();
    } else {
        fmt.init();
    }
    match start(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audio-dedup-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dev_issuer_command(command: DevIssuerCommand) -> Result<(), dev_issuer::DevIssuerError> {
    match command {
        DevIssuerCommand::Init { dir } => {
            let done = dev_issuer::init(&dir)?;
            let what = if done.created { "new key" } else { "key kept" };
            println!("{what}: {}", done.key.display());
            println!(
                "run: audio-dedup-server --dev --jwks {} --jwt-issuer {} --jwt-audience {}",
                done.jwks.display(),
                dev_issuer::DEFAULT_ISSUER,
                dev_issuer::DEFAULT_AUDIENCE
            );
        }
        DevIssuerCommand::Token {
            dir,
            sub,
            ttl,
            iss,
            aud,
        } => println!(
            "{}",
            dev_issuer::token(&dir, &sub, Duration::from_secs(ttl), &iss, &aud)?
        ),
    }
    Ok(())
}

async fn start(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut tokens = match (&args.tokens, &args.tokens_inline) {
        (Some(path), _) => TokenTable::from_file(path)?,
        (None, Some(inline)) => TokenTable::from_env_value(inline)?,
        (None, None) => TokenTable::default(),
    };
    if args.dev {
        // Kept in the data directory, so a restart does not break an exported token.
        let (token, dev) = audio_dedup_server::tokens::dev_token(&args.data_dir)?;
        tokens.merge(dev)?;
        println!(
            "dev token (user \"dev\", admin; kept in {}): {token}",
            args.data_dir
                .join(audio_dedup_server::tokens::DEV_TOKENS_FILE)
                .display()
        );
        println!("export TOKEN={token}");
    }
    let jwt = match (&args.jwks, &args.jwt_issuer) {
        (Some(jwks), Some(issuer)) => Some(VerifierConfig::new(
            issuer,
            args.jwt_audience.iter().filter(|a| !a.is_empty()),
            JwksSource::parse(jwks),
        )),
        _ => None,
    };
    if tokens.is_empty() && jwt.is_none() {
        return Err(Box::new(audio_dedup_server::tokens::TokenError::Missing));
    }
    let limits = limits(&args);
    let reconcile_budget = reconcile_budget(&args);
    let connections = connection_limits(&args);
    let cfg = ServerConfig {
        data_dir: args.data_dir,
        public_url: args.public_url,
        tokens,
        jwt,
        dedup: DedupConfig {
            deletion_grace: Duration::from_secs(args.deletion_grace_secs),
            part_size: args
                .part_size_mib
                .map_or(DedupConfig::default().part_size, |m| m * 1024 * 1024),
            limits,
            reconcile: reconcile_budget,
            ..DedupConfig::default()
        },
        reconcile_every: Duration::from_secs(args.reconcile_every_secs),
        sync: if args.sync == "normal" {
            Synchronous::Normal
        } else {
            Synchronous::Full
        },
        live: Default::default(),
        request_rate: NonZeroU32::new(args.rate_per_user).map(|per_second| RequestRate {
            per_second,
            burst: NonZeroU32::new(args.burst_per_user).unwrap_or(per_second),
        }),
        connections,
    };
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    run(listener, cfg, shutdown).await?;
    Ok(())
}

/// What one reconciler pass may do: the core's defaults, each one overridable.
fn reconcile_budget(args: &Args) -> ReconcileBudget {
    let d = ReconcileBudget::default();
    ReconcileBudget {
        work_items: args.reconcile_work_items.unwrap_or(d.work_items),
        sweep_pages: args.sweep_pages.unwrap_or(d.sweep_pages),
        time: args
            .reconcile_budget_secs
            .map_or(d.time, Duration::from_secs),
        ..d
    }
}

/// Connections and deadlines for slow clients: the server's defaults, each one overridable.
fn connection_limits(args: &Args) -> ConnectionLimits {
    let d = ConnectionLimits::default();
    let secs = |v: Option<u64>, default| v.map_or(default, Duration::from_secs);
    ConnectionLimits {
        max_connections: args.max_connections.unwrap_or(d.max_connections),
        header_read_timeout: secs(args.header_timeout_secs, d.header_read_timeout),
        body_idle_timeout: secs(args.body_idle_timeout_secs, d.body_idle_timeout),
    }
}

/// The per-user limits: the core's defaults, each one overridable.
fn limits(args: &Args) -> Limits {
    let d = Limits::default();
    Limits {
        open_sessions: args.max_open_sessions.unwrap_or(d.open_sessions),
        upload_bytes_per_day: args
            .max_upload_bytes_per_day
            .unwrap_or(d.upload_bytes_per_day),
        proof_failures: args.proof_failures.unwrap_or(d.proof_failures),
        proof_lockout: args
            .proof_lockout_secs
            .map_or(d.proof_lockout, Duration::from_secs),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed now, before the server
/// starts, so a signal that arrives while it starts drains it rather than killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let (int, term) = streams;
            tokio::select! {
                _ = recv(int) => {},
                _ = recv(term) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested; draining");
    }
}
