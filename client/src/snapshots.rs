//! Snapshots: cache-first, downloaded on a miss, kept in an exact LRU of `snapshot_capacity`
//! (30) entries. Recency is a counter in SQLite, bumped on every read and insert, so the
//! order survives restarts and two reads in the same millisecond still order.

use audio_dedup_core::{ContentHash, MessageId};
use bytes::Bytes;

use crate::error::ClientError;
use crate::Client;

impl Client {
    /// The message's snapshot (its JSON text): from the cache, or downloaded, checked against
    /// the SHA-256 the message carries when known, and cached. Every call makes it the most
    /// recently used; the least recently used beyond the capacity are evicted.
    pub async fn snapshot(&self, id: &MessageId) -> Result<Bytes, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let m = id.clone();
            let cached = self.blocking(move |c| c.store.cached_snapshot(&m)).await?;
            if let Some(json) = cached {
                return Ok(Bytes::from(json));
            }
            let body = self.api.snapshot(id).await?;
            let m = id.clone();
            if let Some(expected) = self.blocking(move |c| c.store.snapshot_sha(&m)).await? {
                if ContentHash::of(&body) != expected {
                    return Err(ClientError::HashMismatch(expected.to_string()));
                }
            }
            let (m, json, capacity) = (id.clone(), body.clone(), self.cfg.snapshot_capacity);
            self.blocking(move |c| {
                c.store
                    .write_cache(|tx| Ok(tx.remember_snapshot(&m, &json)?))?;
                c.store.evict_snapshots(capacity)
            })
            .await?;
            Ok(body)
        })
        .await
    }

    /// Message ids of the cached snapshots, most recently used first.
    pub fn cached_snapshots(&self) -> Result<Vec<String>, ClientError> {
        self.store.cached_snapshots()
    }
}
