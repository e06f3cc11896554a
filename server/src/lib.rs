//! The local server: the whole API over the embedded store, plus the signed-URL blob routes,
//! the blob-event pump and the scheduled reconciler.

mod blob_routes;
pub mod dev_issuer;
pub mod in_process;
pub mod jwt;
pub mod live;
mod private_files;
pub mod rate_limit;
pub mod serve;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::put;
use axum::Router;
use rand::RngCore;
use tokio::net::TcpListener;

use serve::serve;
pub use serve::ConnectionLimits;
use tower_http::trace::TraceLayer;

use audio_dedup_api::{router, ApiConfig, Authenticator, RouteSet, UserBudget};
use audio_dedup_core::identity::{JwksError, VerifierConfig};
use audio_dedup_core::ports::{Clock, SystemClock};
use audio_dedup_core::store::embedded::{FsBlobStore, SqliteIndex, Synchronous, UrlSigner};
use audio_dedup_core::{Dedup, DedupConfig, StoreError};

pub use tokens::TokenTable;

pub type LocalDedup = Dedup<FsBlobStore, SqliteIndex>;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Base of signed URLs; defaults to `http://<bound address>`.
    pub public_url: Option<String>,
    pub tokens: TokenTable,
    /// JWT mode: bearer JWTs of this issuer are accepted too (`--jwks`, `--jwt-issuer`,
    /// `--jwt-audience`).
    pub jwt: Option<VerifierConfig>,
    pub dedup: DedupConfig,
    /// How often the reconciler runs; zero disables the schedule.
    pub reconcile_every: Duration,
    pub sync: Synchronous,
    /// Open connections, and deadlines for slow clients.
    pub connections: ConnectionLimits,
    /// Live updates (`GET /v1/live`): limits and per-connection queue.
    pub live: live::LiveConfig,
    /// Requests per user (none: unlimited, as in tests and benchmarks).
    pub request_rate: Option<rate_limit::RequestRate>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// JWT mode without the issuer's keys: the server does not start.
    #[error("JWT mode: {0}")]
    Jwks(#[from] JwksError),
}

pub struct Built {
    pub app: Router,
    pub dedup: Arc<LocalDedup>,
    pub live: Arc<live::LiveHub>,
}

/// The URL-signing key, kept in the data directory. A new key is written to a temporary
/// file created with mode 0600 (never readable by others, not even for an instant), then
/// renamed into place.
fn signing_secret(data_dir: &std::path::Path) -> Result<[u8; 32], std::io::Error> {
    let path = data_dir.join("signing.key");
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(secret);
        }
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let tmp = data_dir.join("signing.key.tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    private_files::create_file(&tmp, &secret)?;
    std::fs::rename(&tmp, &path)?;
    Ok(secret)
}

/// Who may call: the token table, and in JWT mode the issuer's tokens (keys loaded now).
pub async fn authenticator(cfg: &ServerConfig) -> Result<Arc<dyn Authenticator>, ServerError> {
    let jwt = match &cfg.jwt {
        Some(v) => Some(jwt::JwtAuthenticator::start(v.clone()).await?),
        None => None,
    };
    Ok(Arc::new(jwt::TokensOrJwt::new(cfg.tokens.clone(), jwt)))
}

/// Opens the stores and builds the app. Spawns the event pump (and in JWT mode the key
/// refresh).
pub async fn build(cfg: &ServerConfig, bound: SocketAddr) -> Result<Built, ServerError> {
    // First: JWT mode's keys may be unreachable, and then nothing else should start.
    let auth = authenticator(cfg).await?;
    // Created readable by its owner only: it holds the signing key and every stored byte.
    private_files::create_dir(&cfg.data_dir)?;
    let public = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let signer = UrlSigner::new(public, signing_secret(&cfg.data_dir)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let blob_root = cfg.data_dir.join("blobs");
    let blobs = FsBlobStore::open(&blob_root, signer, Some(tx), clock.clone())?;
    let index = SqliteIndex::open(&cfg.data_dir.join("index.sqlite"), cfg.sync)?;
    let commits = index.subscribe_commits();
    let dedup = Arc::new(Dedup::with_env(
        blobs.clone(),
        index,
        cfg.dedup.clone(),
        clock,
        Arc::new(audio_dedup_core::ports::OsEntropy),
    ));

    // Blob events drive completion and deletion, exactly as S3 notifications do on AWS.
    let pump = dedup.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let Err(e) = pump.audio().on_blob_event(&event).await {
                tracing::warn!(?event, error = %e, "blob event left for the reconciler");
            }
        }
    });

    let api_cfg = ApiConfig {
        spool_dir: Some(blob_root.join("tmp")),
        // Taken by the router on every authenticated route, as on Lambda.
        request_budget: cfg
            .request_rate
            .map(|rate| UserBudget::new(rate_limit::GovernorBudget::new(rate))),
    };
    // One authenticator for the API and live updates.
    let api = router(dedup.clone(), auth.clone(), api_cfg, RouteSet::All);
    let blob_state = Arc::new(blob_routes::BlobState {
        blobs,
        key_prefix: cfg.dedup.key_prefix.clone(),
        dedup: dedup.clone(),
        put_bytes_per_day: cfg.dedup.limits.upload_bytes_per_day,
        put_bytes: Default::default(),
    });
    let blob_routes = Router::new()
        .route(
            "/blob/{*key}",
            put(blob_routes::put_object).get(blob_routes::get_object),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(blob_state);
    let hub = live::LiveHub::start(dedup.clone(), auth, cfg.live.clone(), commits);
    let live_routes = live::routes(hub.clone());
    let app = blob_routes
        .merge(live_routes)
        .merge(api)
        .layer(TraceLayer::new_for_http());
    Ok(Built {
        app,
        dedup,
        live: hub,
    })
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    listener: TcpListener,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let bound = listener.local_addr()?;
    let built = build(&cfg, bound).await?;
    if !cfg.reconcile_every.is_zero() {
        let dedup = built.dedup.clone();
        let every = cfg.reconcile_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match dedup.reconcile().await {
                    Ok(r) if r != Default::default() => {
                        tracing::info!(report = ?r, "reconciler pass")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
                }
            }
        });
    }
    tracing::info!(addr = %bound, data_dir = %cfg.data_dir.display(), "audio-dedup listening");
    serve(
        listener,
        built.app,
        &cfg.connections,
        // Event streams never end by themselves: close them, so connections can drain.
        {
            let live = built.live.clone();
            async move {
                shutdown.await;
                live.close_all();
            }
        },
        Duration::from_secs(30),
    )
    .await;
    tracing::info!("shut down cleanly");
    Ok(())
}
