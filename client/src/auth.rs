//! Who the client is: a bearer token that can change while the app runs.
//!
//! The app gives a [`TokenProvider`] (or pushes tokens with [`Client::set_token`]). Every
//! request and every live (re)connect asks [`Auth::token`]. A 401 asks the provider once for
//! a fresh token and retries; if that is refused too, the client is *signed out*: the queue
//! pauses (nothing is marked failed), the app gets [`crate::Update::AuthRequired`], and the
//! next token the provider or the app hands over resumes everything.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Why a provider has no token to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenUnavailable {
    /// The user must sign in again (the refresh token is gone or revoked).
    #[error("the user must sign in again")]
    SignInRequired,
    /// The provider could not get one now (no network to the issuer); try later.
    #[error("no token now: {0}")]
    Temporarily(String),
    /// The server refused the provider's fresh token as well.
    #[error("the server refused a freshly issued token")]
    Refused,
}

pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<String, TokenUnavailable>> + Send + 'a>>;

/// Hands the client the current token. `refresh` is true when the server refused the last
/// one it gave: answer a new one (or an error), not the same again.
pub trait TokenProvider: Send + Sync + 'static {
    fn token(&self, refresh: bool) -> TokenFuture<'_>;
}

/// A fixed token: what `ClientConfig::new` takes, and what [`Client::set_token`] replaces.
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

impl TokenProvider for StaticToken {
    fn token(&self, _refresh: bool) -> TokenFuture<'_> {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// The client's identity state, shared by every clone of the client.
#[derive(Clone)]
pub(crate) struct Auth {
    provider: Arc<Mutex<Arc<dyn TokenProvider>>>,
    /// The token in use; `None` until the provider is first asked (or after a refusal).
    current: Arc<Mutex<Option<String>>>,
    /// True while signed out (a fresh token was refused too, or the provider had none).
    signed_out: Arc<watch::Sender<bool>>,
    /// Bumped whenever a new token is handed over (the sender and live channel wait on it).
    generation: Arc<watch::Sender<u64>>,
}

impl Auth {
    pub(crate) fn new(provider: Arc<dyn TokenProvider>) -> Self {
        Self {
            provider: Arc::new(Mutex::new(provider)),
            current: Arc::default(),
            signed_out: Arc::new(watch::channel(false).0),
            generation: Arc::new(watch::channel(0).0),
        }
    }

    fn provider(&self) -> Arc<dyn TokenProvider> {
        self.provider
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token to send: the one in use, or the provider's.
    pub(crate) async fn token(&self) -> Result<String, TokenUnavailable> {
        if let Some(t) = self.current().clone() {
            return Ok(t);
        }
        self.ask(false).await
    }

    /// After a 401 with `refused`: a fresh token from the provider, unless another request
    /// already got one since (then that one).
    pub(crate) async fn refresh(&self, refused: &str) -> Result<String, TokenUnavailable> {
        if let Some(t) = self.current().clone() {
            if t != refused {
                return Ok(t);
            }
        }
        self.ask(true).await
    }

    async fn ask(&self, refresh: bool) -> Result<String, TokenUnavailable> {
        let t = self.provider().token(refresh).await?;
        let changed = self.current().replace(t.clone()).as_deref() != Some(t.as_str());
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(t)
    }

    /// A new token pushed by the app: used from now on; a signed-out client tries it at once.
    pub(crate) fn set_token(&self, token: String) {
        *self.provider.lock().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(StaticToken(token.clone()));
        *self.current() = Some(token);
        // Still signed out until a request shows the token works (`signed_in`).
        self.generation.send_modify(|g| *g += 1);
    }

    /// A new provider: asked from the next request on.
    pub(crate) fn set_provider(&self, provider: Arc<dyn TokenProvider>) {
        *self.provider.lock().unwrap_or_else(|p| p.into_inner()) = provider;
        *self.current() = None;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Marks the client signed out; answers whether it was signed in until now.
    pub(crate) fn sign_out(&self) -> bool {
        *self.current() = None;
        !self.signed_out.send_replace(true)
    }

    /// Marks the client signed in again; answers whether it was signed out.
    pub(crate) fn signed_in(&self) -> bool {
        self.signed_out.send_replace(false)
    }

    pub(crate) fn is_signed_out(&self) -> bool {
        *self.signed_out.borrow()
    }

    /// Changes whenever a new token is handed over.
    pub(crate) fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
