//! `GET /v1/positions`: where each log the caller follows stands now, in one answer, so a
//! client that was away (a reconnect of the live channel) syncs only the logs that moved
//! instead of asking every cached thread.

use std::collections::BTreeMap;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::threads::MAX_PAGE;
use super::ChatService;
use crate::domain::{FeedEntry, LogHead, Seq, ThreadId, ThreadRecord, UserId};
use crate::error::DedupError;
use crate::ports::{BlobStore, TransactionalIndex};
use crate::protocol::keys;

/// Most threads one answer lists (the feed read in pages of [`MAX_PAGE`]); past it the answer
/// says `complete: false` and a client syncs every thread it caches instead.
pub const MAX_POSITION_THREADS: usize = 10 * MAX_PAGE;
/// Thread records read at once.
const READS_AT_ONCE: usize = 16;

/// The current position (cursor) of each of the caller's logs: the same decimal cursors the
/// log reads answer as `next_cursor`, so a client compares them with what it stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// The caller's user id (a client learns who it is, to tell its own messages apart).
    pub user: UserId,
    /// The thread feed (`GET /v1/threads?since=`).
    pub feed: String,
    /// The library (`GET /v1/library?since=`).
    pub library: String,
    /// Each thread the caller is a member of (with `changed_since`: each that changed since
    /// then): its message log's `last_cursor`.
    pub threads: BTreeMap<ThreadId, String>,
    /// The server's time of this answer (ms): the next catch-up's `changed_since`.
    pub as_of: String,
    /// False when the caller is in more than [`MAX_POSITION_THREADS`] threads and some are
    /// left out.
    pub complete: bool,
}

impl<B: BlobStore, I: TransactionalIndex> ChatService<B, I> {
    /// The caller's positions: two head reads, the feed (one query per 500 threads) and each
    /// thread's record (16 at a time). With `changed_since` (an earlier answer's `as_of`) only
    /// threads changed since then are listed, so the answer's size and the client's syncs
    /// follow what moved; the reads stay O(the caller's threads).
    pub async fn positions(
        &self,
        caller: &UserId,
        changed_since: Option<i64>,
    ) -> Result<Positions, DedupError> {
        let as_of = self.core.now();
        // `DedupConfig::positions_margin`: a change committed late is never missed.
        let margin = i64::try_from(self.core.cfg.positions_margin.as_millis()).unwrap_or(i64::MAX);
        let floor = changed_since.map(|t| t.saturating_sub(margin));
        let head_of = |key| async move {
            Ok::<Seq, DedupError>(
                self.core
                    .load::<LogHead>(&key)
                    .await?
                    .map_or(0, |h| h.value.last_seq),
            )
        };
        let feed = head_of(keys::feed_head(caller)).await?;
        let library = head_of(keys::library_head(caller)).await?;
        let mut ids = Vec::new();
        let mut after = 0;
        let mut complete = true;
        loop {
            let page = self
                .read_log::<FeedEntry>(&keys::feed_pk(caller), after, MAX_PAGE)
                .await?;
            ids.extend(page.items.into_iter().map(|e| e.thread.id));
            after = super::parse_cursor(Some(&page.next_cursor))?;
            if !page.has_more {
                break;
            }
            if ids.len() >= MAX_POSITION_THREADS {
                complete = false;
                break;
            }
        }
        let threads = futures_util::stream::iter(ids)
            .map(|id| async move {
                let rec = self.core.load::<ThreadRecord>(&keys::thread(&id)).await?;
                // Only threads that exist and still list the caller.
                Ok::<_, DedupError>(rec.and_then(|t| {
                    let changed = floor.is_none_or(|f| t.value.updated_at >= f);
                    (changed && t.value.is_member(caller))
                        .then(|| (id, t.value.last_seq.to_string()))
                }))
            })
            .buffer_unordered(READS_AT_ONCE)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await?;
        Ok(Positions {
            user: caller.clone(),
            feed: feed.to_string(),
            library: library.to_string(),
            threads,
            as_of: as_of.to_string(),
            complete,
        })
    }
}
