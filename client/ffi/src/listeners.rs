//! Traits the app implements (Kotlin, Swift, Python) and their adapters to the client.
//!
//! Their methods are called on the client's threads, never the app's UI thread: a listener
//! hands what it gets to its own thread or loop, and returns quickly.

use std::sync::Arc;

use audio_dedup_client as client;
use audio_dedup_client::{TokenFuture, TokenUnavailable};

use crate::error::TokenError;
use crate::types::ClientUpdate;

/// Hears the client's updates (`ClientHandle::subscribe`).
#[uniffi::export(with_foreign)]
pub trait UpdateListener: Send + Sync {
    fn on_update(&self, update: ClientUpdate);
}

/// Hears one transfer's progress: `done` of `total` bytes, at most about every 1 %.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    fn on_progress(&self, done: u64, total: u64);
}

/// Hands the client bearer tokens. `refresh` is true when the server refused the last one:
/// answer a new one (or an error), not the same again. Called on a blocking thread of the
/// client's, so it may wait on the network.
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    fn token(&self, refresh: bool) -> Result<String, TokenError>;
}

/// The app's provider as the client's [`client::TokenProvider`].
pub(crate) struct ForeignTokens(pub(crate) Arc<dyn TokenProvider>);

impl client::TokenProvider for ForeignTokens {
    fn token(&self, refresh: bool) -> TokenFuture<'_> {
        let provider = self.0.clone();
        Box::pin(async move {
            let asked = move || provider.token(refresh);
            // The foreign call may block (a refresh over the network): keep it off the
            // executor threads.
            let answer = match tokio::runtime::Handle::try_current() {
                Ok(rt) => rt.spawn_blocking(asked).await.map_err(|e| {
                    TokenUnavailable::Temporarily(format!("token provider failed: {e}"))
                })?,
                Err(_) => asked(),
            };
            answer.map_err(|e| match e {
                TokenError::SignInRequired => TokenUnavailable::SignInRequired,
                TokenError::Temporarily { details } => TokenUnavailable::Temporarily(details),
            })
        })
    }
}

/// A progress listener as the client's progress callback.
pub(crate) fn progress_fn(
    listener: Option<Arc<dyn ProgressListener>>,
) -> Option<impl Fn(u64, u64) + Send + Sync> {
    listener.map(|l| move |done, total| l.on_progress(done, total))
}
