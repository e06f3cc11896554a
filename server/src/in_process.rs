//! The server in-process on a loopback port: what the end-to-end tests, the client's tests
//! and the benchmarks start, one way, instead of a copy each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use audio_dedup_core::identity::testing::TestIssuer;
use audio_dedup_core::identity::{JwksSource, VerifierConfig};

use crate::{ServerConfig, ServerError, TokenTable};

/// A running server. Dropping it asks it to stop; `stop` also waits for it.
pub struct InProcess {
    addr: SocketAddr,
    cfg: ServerConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl InProcess {
    /// Serves `cfg` on `addr` (port 0: a free one) on the current runtime, and waits until
    /// it answers `/healthz`. Binding retries for up to 2 s, so a restart can take its own
    /// port back.
    pub async fn start(cfg: ServerConfig, addr: SocketAddr) -> Result<Self, String> {
        let mut last = None;
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let Some(listener) = listener else {
            return Err(format!("bind {addr}: {last:?}"));
        };
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(listener, cfg.clone(), async move {
            let _ = rx.await;
        }));
        let server = Self {
            addr,
            cfg,
            stop: Some(tx),
            task: Some(task),
        };
        server.wait_healthy(Duration::from_secs(5)).await?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// Asks it to stop, and waits (10 s at most) for in-flight requests and for `run`'s
    /// result. The port is free once this returns.
    pub async fn stop(&mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => match tokio::time::timeout(Duration::from_secs(10), t).await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the server did not stop within 10 s".into()),
            },
            None => Ok(()),
        }
    }

    /// Stops it and starts it again on the same address over the same data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop().await?;
        *self = Self::start(self.cfg.clone(), self.addr).await?;
        Ok(())
    }

    /// `GET /healthz` over a plain socket until it answers 200, for at most `limit`.
    async fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if healthz(self.addr).await {
                return Ok(());
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                return Err("the server stopped while starting".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!(
            "the server did not answer /healthz within {limit:?}"
        ))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

/// A test or benchmark server's configuration: `tokens`, data in `data_dir`, no scheduled
/// reconciler, `synchronous=NORMAL`. Change fields as needed.
pub fn test_config(data_dir: &Path, tokens: TokenTable) -> ServerConfig {
    ServerConfig {
        data_dir: data_dir.to_owned(),
        public_url: None,
        tokens,
        jwt: None,
        dedup: audio_dedup_core::DedupConfig::default(),
        reconcile_every: Duration::ZERO,
        sync: audio_dedup_core::store::embedded::Synchronous::Normal,
        connections: crate::ConnectionLimits::default(),
        request_rate: None,
        live: crate::live::LiveConfig::default(),
    }
}

/// JWT mode for a test server: writes `issuer`'s JWKS to `jwks_file` and answers the
/// settings that trust it (no clock leeway; an unknown `kid` reads the file again at once).
/// After `issuer.rotate()`, `issuer.write_jwks(jwks_file)` publishes the new key.
pub fn test_jwt_config(
    issuer: &TestIssuer,
    jwks_file: &Path,
) -> Result<VerifierConfig, audio_dedup_core::identity::testing::TestIssuerError> {
    issuer.write_jwks(jwks_file)?;
    Ok(issuer.verifier_config(JwksSource::File(jwks_file.to_owned())))
}

/// A server over a temporary data folder of its own, removed after it stops.
pub struct TempServer {
    pub server: InProcess,
    dir: tempfile::TempDir,
}

/// Where [`TempServer::start_jwt`] keeps its issuer's JWKS, in the temporary folder.
pub const TEST_JWKS_FILE: &str = "jwks.json";

impl TempServer {
    /// `configure` gets the default test configuration over the temporary folder.
    pub async fn start(
        tokens: TokenTable,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut cfg = test_config(dir.path(), tokens);
        configure(&mut cfg);
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = InProcess::start(cfg, addr).await?;
        Ok(Self { server, dir })
    }

    /// A server in JWT mode trusting `issuer` (its JWKS in [`Self::jwks_path`]), and the
    /// token table `tokens` too (it may be empty):
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), String> {
    /// use std::time::Duration;
    /// use audio_dedup_core::identity::testing::TestIssuer;
    /// use audio_dedup_server::{in_process::TempServer, TokenTable};
    /// let issuer = TestIssuer::new();
    /// let server = TempServer::start_jwt(&issuer, TokenTable::default(), |_| {}).await?;
    /// let token = issuer.token("alice", Duration::from_secs(5));
    /// // GET {server.url()}/v1/threads with `authorization: Bearer {token}`: 200, as alice.
    /// # Ok(()) }
    /// ```
    pub async fn start_jwt(
        issuer: &TestIssuer,
        tokens: TokenTable,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut cfg = test_config(dir.path(), tokens);
        cfg.jwt = Some(
            test_jwt_config(issuer, &dir.path().join(TEST_JWKS_FILE)).map_err(|e| e.to_string())?,
        );
        configure(&mut cfg);
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = InProcess::start(cfg, addr).await?;
        Ok(Self { server, dir })
    }

    /// The JWKS file a [`start_jwt`](Self::start_jwt) server reads.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.path().join(TEST_JWKS_FILE)
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub async fn stop(mut self) -> Result<(), String> {
        self.server.stop().await
    }
}
