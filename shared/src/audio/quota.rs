//! Per-user quotas: upload sessions held open, and bytes declared for upload per UTC day.
//! Exact, and so valid on DynamoDB as locally: the counters live in one record per user,
//! written under a version condition in the same transaction that opens or closes a session.
//! Reference adds and message creates never touch it.

use super::AudioEngine;
use crate::domain::{UserId, UserQuota};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, Expect, TransactionalIndex};
use crate::protocol::codec::{expect_of, Txn};
use crate::protocol::{guards, keys, Step};

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// `owner`'s counters (zero if none yet), and what writing them back must expect.
    async fn quota(&self, owner: &UserId) -> Result<(UserQuota, Expect), DedupError> {
        let prev = self
            .core
            .load::<UserQuota>(&keys::user_quota(owner))
            .await?;
        let q = prev.as_ref().map(|p| p.value.clone()).unwrap_or_default();
        Ok((q, expect_of(prev.as_ref())))
    }

    /// Plans one more open session of `size` bytes for `owner` in `txn`, or refuses it
    /// (`quota_exceeded`, nothing written).
    pub(crate) async fn plan_session_opened(
        &self,
        txn: &mut Txn,
        owner: &UserId,
        size: u64,
    ) -> Result<(), DedupError> {
        let limits = &self.core.cfg.limits;
        let (mut q, expect) = self.quota(owner).await?;
        if q.open_sessions >= limits.open_sessions {
            return Err(DedupError::limited(
                ErrorCode::QuotaExceeded,
                format!(
                    "at most {} upload sessions may be open at once; complete one or wait",
                    limits.open_sessions
                ),
                self.core.cfg.session_ttl,
            ));
        }
        self.charge_bytes(&mut q, size)?;
        q.open_sessions += 1;
        txn.put(keys::user_quota(owner), &q, expect)
    }

    /// Plans one fewer open session for `owner` (completed or expired) in `txn`.
    pub(crate) async fn plan_session_closed(
        &self,
        txn: &mut Txn,
        owner: &UserId,
    ) -> Result<(), DedupError> {
        let (mut q, expect) = self.quota(owner).await?;
        if guards::session_release() {
            q.open_sessions = q.open_sessions.saturating_sub(1);
        }
        txn.put(keys::user_quota(owner), &q, expect)
    }

    /// Charges a direct upload's bytes to `owner`'s day, in its own transaction, before the
    /// bytes are stored.
    pub(crate) async fn charge_direct_upload(
        &self,
        owner: &UserId,
        size: u64,
    ) -> Result<(), DedupError> {
        self.core
            .cas(|| async {
                let (mut q, expect) = self.quota(owner).await?;
                self.charge_bytes(&mut q, size)?;
                let mut txn = self.core.txn();
                txn.put(keys::user_quota(owner), &q, expect)?;
                Ok(if self.core.commit(txn).await? {
                    Step::Done(())
                } else {
                    Step::Lost
                })
            })
            .await
    }

    fn charge_bytes(&self, q: &mut UserQuota, size: u64) -> Result<(), DedupError> {
        let limit = self.core.cfg.limits.upload_bytes_per_day;
        q.uploaded
            .charge(size, limit, self.core.now())
            .map_err(|wait| {
                DedupError::limited(
                    ErrorCode::QuotaExceeded,
                    format!("at most {limit} bytes may be uploaded per day"),
                    wait,
                )
            })
    }
}
