//! JWT mode: the local server accepts bearer JWTs of one issuer, checked by the core's
//! verifier (`audio_dedup_core::identity`, the one the WebSocket authorizer uses on AWS),
//! beside or instead of the token table. The API's `Authenticator` is synchronous, so
//! requests are checked against the keys held in memory: loaded at start-up (the server
//! does not start without them), refreshed in the background every TTL, and read again in
//! the background when a token names an unknown `kid` (that request gets 401; the client's
//! retry, after its token refresh, finds the new key).

use std::sync::Arc;

use http::request::Parts;

use audio_dedup_api::{bearer, Authenticator, Caller};
use audio_dedup_core::identity::{JwksError, Verifier, VerifierConfig};

use crate::TokenTable;

/// Bearer JWTs of one issuer. Callers are never admins: admin stays a token-table grant.
pub struct JwtAuthenticator {
    verifier: Arc<Verifier>,
}

impl JwtAuthenticator {
    /// Loads the keys (a JWKS URL is fetched now; unreachable: an error) and starts the
    /// background refresh.
    pub async fn start(cfg: VerifierConfig) -> Result<Self, JwksError> {
        let verifier = Verifier::load(cfg).await?;
        verifier.spawn_refresher();
        Ok(Self { verifier })
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, parts: &Parts) -> Option<Caller> {
        let token = bearer(parts)?;
        match self.verifier.verify_cached(token) {
            Ok(v) => Some(Caller {
                user: v.user,
                admin: false,
            }),
            Err(why) => {
                tracing::debug!(reason = %why, "bearer JWT refused");
                None
            }
        }
    }
}

/// The token table, then JWTs: a request is authenticated if either accepts it.
pub struct TokensOrJwt {
    tokens: TokenTable,
    jwt: Option<JwtAuthenticator>,
}

impl TokensOrJwt {
    pub fn new(tokens: TokenTable, jwt: Option<JwtAuthenticator>) -> Self {
        Self { tokens, jwt }
    }
}

impl Authenticator for TokensOrJwt {
    fn authenticate(&self, parts: &Parts) -> Option<Caller> {
        self.tokens
            .authenticate(parts)
            .or_else(|| self.jwt.as_ref()?.authenticate(parts))
    }
}
