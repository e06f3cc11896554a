//! In-memory live-connection ports, for tests of the fan-out: a registry, and a poster that
//! records what it was asked to send and answers `Gone` or fails for chosen connections.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use crate::domain::{ConnectionId, UserId};
use crate::error::StoreError;
use crate::ports::{ConnectionPoster, ConnectionRegistry, PostError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Each user's connections, with the expiry each was recorded with.
#[derive(Debug, Default)]
pub struct MemoryConnections {
    by_user: Mutex<BTreeMap<UserId, BTreeMap<ConnectionId, u64>>>,
}

impl MemoryConnections {
    /// The user's connections and their expiries.
    pub fn of(&self, user: &UserId) -> BTreeMap<ConnectionId, u64> {
        lock(&self.by_user).get(user).cloned().unwrap_or_default()
    }
}

impl ConnectionRegistry for MemoryConnections {
    async fn add(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        lock(&self.by_user)
            .entry(user.clone())
            .or_default()
            .insert(connection.clone(), expires_at);
        Ok(())
    }

    async fn remove(&self, user: &UserId, connection: &ConnectionId) -> Result<(), StoreError> {
        let mut by_user = lock(&self.by_user);
        if let Some(conns) = by_user.get_mut(user) {
            conns.remove(connection);
            if conns.is_empty() {
                by_user.remove(user);
            }
        }
        Ok(())
    }

    async fn list(&self, user: &UserId, limit: usize) -> Result<Vec<ConnectionId>, StoreError> {
        Ok(lock(&self.by_user)
            .get(user)
            .map(|c| c.keys().take(limit).cloned().collect())
            .unwrap_or_default())
    }
}

/// Records every post; connections in `gone` answer `Gone`, those in `failing` an error.
#[derive(Debug, Default)]
pub struct RecordingPoster {
    pub gone: Mutex<BTreeSet<ConnectionId>>,
    pub failing: Mutex<BTreeSet<ConnectionId>>,
    posts: Mutex<Vec<(ConnectionId, serde_json::Value)>>,
}

impl RecordingPoster {
    /// What was posted and delivered, in order: connection and JSON body.
    pub fn delivered(&self) -> Vec<(ConnectionId, serde_json::Value)> {
        lock(&self.posts).clone()
    }
}

impl ConnectionPoster for RecordingPoster {
    async fn post(&self, connection: &ConnectionId, body: &[u8]) -> Result<(), PostError> {
        if lock(&self.gone).contains(connection) {
            return Err(PostError::Gone);
        }
        if lock(&self.failing).contains(connection) {
            return Err(PostError::Store(StoreError::Unavailable(
                "injected post failure".into(),
            )));
        }
        let body = serde_json::from_slice(body).map_err(StoreError::backend)?;
        lock(&self.posts).push((connection.clone(), body));
        Ok(())
    }
}
