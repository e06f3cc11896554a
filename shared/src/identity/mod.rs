//! Who a bearer JWT names: the one verifier the WebSocket authorizer (Lambda) and the local
//! server's JWT mode share. What the HTTP API's JWT authorizer checks on AWS, checked here the
//! same way: the signature against the issuer's JWKS (RS256 and ES256 only), `iss`, `exp`,
//! `nbf`, the audience (`aud`, or a Cognito access token's `client_id`), and `sub`, mapped to
//! a user id by [`UserId::from_subject`](crate::UserId::from_subject).

mod verifier;

#[cfg(feature = "jwt-testing")]
pub mod testing;

pub use verifier::{
    AuthError, JwksError, JwksSource, Rejected, Verified, Verifier, VerifierConfig, DEFAULT_LEEWAY,
    JWKS_MIN_REFETCH, JWKS_TTL,
};

#[cfg(all(test, feature = "jwt-testing"))]
mod tests;
