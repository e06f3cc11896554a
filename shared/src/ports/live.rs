//! Live connections on AWS: where each user's open WebSocket connections are recorded, and
//! how a poke reaches one. (The local server holds its connections in memory.)

use std::future::Future;

use crate::domain::{ConnectionId, UserId};
use crate::error::StoreError;

/// The open connections of each user.
pub trait ConnectionRegistry: Send + Sync + 'static {
    /// Records an open connection. `expires_at` (Unix seconds) is a clean-up aid only: a
    /// record that outlives its connection costs one failed post, which then removes it.
    fn add(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        expires_at: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets a connection; forgetting one not recorded is not an error.
    fn remove(
        &self,
        user: &UserId,
        connection: &ConnectionId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// At most `limit` of the user's recorded connections.
    fn list(
        &self,
        user: &UserId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ConnectionId>, StoreError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The connection is closed for good (API Gateway's 410): forget it.
    #[error("connection gone")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sends one message down one open connection.
pub trait ConnectionPoster: Send + Sync + 'static {
    fn post(
        &self,
        connection: &ConnectionId,
        body: &[u8],
    ) -> impl Future<Output = Result<(), PostError>> + Send;
}
