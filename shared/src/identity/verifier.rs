//! The JWT verifier: keys from a JWKS file or URL, cached; checks in [`Verifier::check`].

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Header, Validation};

use crate::UserId;

/// How long fetched keys are used before they are fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(3600);
/// A token naming a key the cached JWKS lacks (the issuer rotated) fetches the keys again,
/// at most this often: unknown `kid`s cannot make a verifier hammer the issuer.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(60);
/// Clock skew allowed on `exp` and `nbf`. Small, so short-lived test tokens expire when
/// their tests expect.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// Where the issuer's keys are: a local file, or an `http(s)` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    /// `http://…` and `https://…` are URLs; anything else is a file path.
    pub fn parse(s: &str) -> Self {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Self::Url(s.to_owned())
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Url(u) => f.write_str(u),
        }
    }
}

/// Why a token is not accepted. Logged, never told to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no bearer token")]
    NoToken,
    #[error("not a JWT")]
    Malformed,
    #[error("signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("algorithm not allowed for its key")]
    Algorithm,
    #[error("signature does not verify")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong audience")]
    Audience,
    #[error("wrong issuer")]
    Issuer,
    #[error("no subject")]
    MissingSubject,
    #[error("subject does not map to a user id")]
    Subject,
    #[error("a required claim is missing")]
    MissingClaim,
    #[error("a claim has the wrong type")]
    InvalidClaim,
}

/// The issuer's keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the key set {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch the key set: {0}")]
    Fetch(#[source] reqwest::Error),
    #[error("the key set's URL answered HTTP {0}")]
    Status(u16),
    #[error("the key set is not a JWKS: {0}")]
    Parse(#[source] serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// No keys at all: the caller fails (500) rather than deny everyone.
    #[error("JWKS unavailable: {0}")]
    JwksUnavailable(#[source] JwksError),
}

/// What a verifier accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted `aud` values, or `client_id` values of tokens without `aud` (Cognito access
    /// tokens).
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub leeway: Duration,
    /// How long keys are used before a fetch (the background refresher's period).
    pub ttl: Duration,
    /// The least time between two fetches for unknown `kid`s.
    pub min_refetch: Duration,
}

impl VerifierConfig {
    /// The defaults: [`DEFAULT_LEEWAY`], [`JWKS_TTL`], [`JWKS_MIN_REFETCH`].
    pub fn new<A: Into<String>>(
        issuer: impl Into<String>,
        audiences: impl IntoIterator<Item = A>,
        jwks: JwksSource,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: audiences.into_iter().map(Into::into).collect(),
            jwks,
            leeway: DEFAULT_LEEWAY,
            ttl: JWKS_TTL,
            min_refetch: JWKS_MIN_REFETCH,
        }
    }
}

/// An accepted token's caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// The `sub` claim as the issuer wrote it.
    pub subject: String,
}

/// The issuer's keys and when they were last had.
struct Cached {
    keys: JwkSet,
    fetched: Instant,
}

/// Verifies tokens of one issuer for a set of audiences. [`Verifier::verify`] (async)
/// fetches keys as needed; [`Verifier::verify_cached`] (sync) uses only the keys it holds.
pub struct Verifier {
    cfg: VerifierConfig,
    http: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    /// When a fetch for unknown keys was last started: the rate limit.
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time; others wait for its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    client_id: Option<String>,
}

impl Verifier {
    /// A verifier holding no keys yet: the first [`verify`](Self::verify) fetches them.
    pub fn new(cfg: VerifierConfig) -> Self {
        Self {
            cfg,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            cache: RwLock::default(),
            last_attempt: Mutex::default(),
            fetching: tokio::sync::Mutex::default(),
        }
    }

    /// A verifier with its keys loaded now: fails if they cannot be had (start-up).
    pub async fn load(cfg: VerifierConfig) -> Result<Arc<Self>, JwksError> {
        let v = Arc::new(Self::new(cfg));
        v.refresh().await?;
        Ok(v)
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.cfg
    }

    /// The caller a token names, if it is valid now. Fetches keys when none are held, when
    /// they are older than the TTL, or when the token names an unknown `kid` (at most once
    /// per `min_refetch`). A failed fetch keeps the keys held.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = header(token)?;
        let kid = header.kid.as_deref();
        let (found, fresh, any) = {
            let cache = self.read_cache();
            match cache.as_ref() {
                Some(c) => (find(&c.keys, kid), c.fetched.elapsed() < self.cfg.ttl, true),
                None => (None, false, false),
            }
        };
        let jwk = match found {
            Some(jwk) if fresh => jwk,
            // Stale keys still verify while the issuer is unreachable.
            Some(jwk) => {
                if self.may_refetch() {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "JWKS refetch failed; using the cached keys");
                    }
                }
                self.cached_key(kid).unwrap_or(jwk)
            }
            None if !any => {
                self.refresh_once()
                    .await
                    .map_err(AuthError::JwksUnavailable)?;
                self.cached_key(kid).ok_or(Rejected::UnknownKey)?
            }
            None => {
                if self.may_refetch() {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "JWKS refetch failed; using the cached keys");
                    }
                }
                self.cached_key(kid).ok_or(Rejected::UnknownKey)?
            }
        };
        Ok(self.check(token, &header, &jwk)?)
    }

    /// The caller a token names, checked against the keys held now, without waiting. A
    /// token with an unknown `kid` is refused and, at most once per `min_refetch`, starts a
    /// fetch in the background (on the current tokio runtime) so the client's retry, with a
    /// refreshed token, finds the issuer's new key.
    pub fn verify_cached(self: &Arc<Self>, token: &str) -> Result<Verified, Rejected> {
        let header = header(token)?;
        let Some(jwk) = self.cached_key(header.kid.as_deref()) else {
            if self.may_refetch() {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let me = self.clone();
                    rt.spawn(async move {
                        if let Err(e) = me.refresh().await {
                            tracing::warn!(error = %e, "JWKS refetch for an unknown key failed");
                        }
                    });
                }
            }
            return Err(Rejected::UnknownKey);
        };
        self.check(token, &header, &jwk)
    }

    /// Reads or fetches the keys now, replacing the held ones on success.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        let _one = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// Refreshes the keys every TTL until the verifier is dropped; a failed refresh keeps
    /// the old keys and is retried after `min_refetch`.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let (ttl, retry) = (
            self.cfg.ttl,
            self.cfg.min_refetch.max(Duration::from_secs(1)),
        );
        tokio::spawn(async move {
            let mut wait = ttl;
            loop {
                tokio::time::sleep(wait).await;
                let Some(v) = weak.upgrade() else { return };
                wait = match v.refresh().await {
                    Ok(()) => ttl,
                    Err(e) => {
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                        retry
                    }
                };
            }
        })
    }

    /// The first fetch: callers arriving together share one.
    async fn refresh_once(&self) -> Result<(), JwksError> {
        let _one = self.fetching.lock().await;
        if self.read_cache().is_some() {
            return Ok(());
        }
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> Result<(), JwksError> {
        // Any fetch restarts the unknown-kid interval: right after one, another is pointless.
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let keys = self.fetch().await?;
        let cached = Cached {
            keys,
            fetched: Instant::now(),
        };
        match self.cache.write() {
            Ok(mut c) => *c = Some(cached),
            Err(poisoned) => *poisoned.into_inner() = Some(cached),
        }
        Ok(())
    }

    /// Whether a fetch for unknown keys may start now; if so, records that it did.
    fn may_refetch(&self) -> bool {
        let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.cfg.min_refetch) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Option<Cached>> {
        // The lock is never held across a panic point; a poisoned one still holds valid keys.
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_key(&self, kid: Option<&str>) -> Option<Jwk> {
        self.read_cache().as_ref().and_then(|c| find(&c.keys, kid))
    }

    async fn fetch(&self) -> Result<JwkSet, JwksError> {
        let bytes = match &self.cfg.jwks {
            JwksSource::File(path) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| JwksError::Read {
                        path: path.clone(),
                        source,
                    })?
            }
            JwksSource::Url(url) => {
                let resp = self.http.get(url).send().await.map_err(JwksError::Fetch)?;
                if !resp.status().is_success() {
                    return Err(JwksError::Status(resp.status().as_u16()));
                }
                resp.bytes().await.map_err(JwksError::Fetch)?.to_vec()
            }
        };
        serde_json::from_slice(&bytes).map_err(JwksError::Parse)
    }

    /// Every check but the key lookup: algorithm, signature, `iss`, `exp`, `nbf`, audience,
    /// `sub`.
    fn check(&self, token: &str, header: &Header, jwk: &Jwk) -> Result<Verified, Rejected> {
        let alg = allowed_algorithm(jwk).ok_or(Rejected::Algorithm)?;
        if header.alg != alg {
            return Err(Rejected::Algorithm);
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| Rejected::UnknownKey)?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.cfg.issuer]);
        // `aud`, when present, must be one of ours; when absent, `client_id` is checked below.
        validation.set_audience(&self.cfg.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.cfg.leeway.as_secs();
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => Rejected::Expired,
            ErrorKind::ImmatureSignature => Rejected::NotYetValid,
            ErrorKind::InvalidAudience => Rejected::Audience,
            ErrorKind::InvalidIssuer => Rejected::Issuer,
            ErrorKind::InvalidSignature => Rejected::Signature,
            ErrorKind::InvalidAlgorithm => Rejected::Algorithm,
            ErrorKind::MissingRequiredClaim(c) if c == "sub" => Rejected::MissingSubject,
            ErrorKind::MissingRequiredClaim(_) => Rejected::MissingClaim,
            ErrorKind::InvalidClaimFormat(_) | ErrorKind::InvalidSubject => Rejected::InvalidClaim,
            _ => Rejected::Malformed,
        })?;
        let claims = data.claims;
        if claims.aud.is_none() {
            let client = claims.client_id.as_deref().ok_or(Rejected::Audience)?;
            if !self.cfg.audiences.iter().any(|a| a == client) {
                return Err(Rejected::Audience);
            }
        }
        let subject = claims.sub.ok_or(Rejected::MissingSubject)?;
        let user = UserId::from_subject(&subject).map_err(|_| Rejected::Subject)?;
        Ok(Verified { user, subject })
    }
}

fn header(token: &str) -> Result<Header, Rejected> {
    // `alg: none` is not an algorithm jsonwebtoken knows: such a header does not parse.
    decode_header(token).map_err(|_| Rejected::Malformed)
}

fn find(set: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => set.find(kid).cloned(),
        None if set.keys.len() == 1 => set.keys.first().cloned(),
        None => None,
    }
}

/// The one algorithm a key may verify: RS256 for RSA keys, ES256 for P-256 keys, what
/// Cognito and most OIDC issuers sign with. A key naming another algorithm is not used;
/// `none` and HMAC are never accepted.
fn allowed_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    match jwk.common.key_algorithm.map(|a| a.to_string()) {
        Some(named) if named != format!("{alg:?}") => None,
        _ => Some(alg),
    }
}
