//! Following a change log (messages, the thread feed, the library) from the stored cursor,
//! page by page.

use audio_dedup_core::Page;

use crate::error::{ApiError, ClientError, ErrorCode};
use crate::store::sync_state::{LogItem, Scope};
use crate::Client;

/// Page size of sync reads (messages, the thread feed, the library).
pub(crate) const SYNC_PAGE: usize = 500;
/// Most pages one sync reads (500,000 changes); the next sync continues from the cursor.
const MAX_SYNC_PAGES: usize = 1_000;

/// What one sync brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub new: usize,
    pub deleted: usize,
    /// Requests made (pages read).
    pub requests: usize,
}

impl Client {
    /// Reads a change log from the cursor stored for `scope`, page by page. Each page is
    /// merged in the transaction that stores the page's cursor, so a crash mid-sync never
    /// skips or repeats a change. A cursor the server no longer recognises
    /// (`409 cursor_unknown`) restarts from the start.
    pub(crate) async fn sync_log<T, Fut>(
        &self,
        scope: Scope,
        fetch: impl Fn(String) -> Fut,
    ) -> Result<SyncReport, ClientError>
    where
        T: LogItem,
        Fut: std::future::Future<Output = Result<Page<T>, ApiError>>,
    {
        let mut report = SyncReport::default();
        let s = scope.clone();
        let mut cursor = self
            .blocking(move |c| c.store.cursor(&s))
            .await?
            .unwrap_or_else(|| "0".into());
        for _ in 0..MAX_SYNC_PAGES {
            report.requests += 1;
            let page = match fetch(cursor.clone()).await {
                Ok(p) => p,
                Err(ApiError::Rejected { code, .. })
                    if code == ErrorCode::CursorUnknown && cursor != "0" =>
                {
                    cursor = "0".into();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let now = self.cfg.now_ms();
            let Page {
                items,
                next_cursor,
                has_more,
            } = page;
            let (s, next) = (scope.clone(), next_cursor.clone());
            let (changed, deleted) = self
                .blocking(move |c| c.store.apply_page(&s, &items, &next, now))
                .await?;
            report.new += changed;
            report.deleted += deleted;
            cursor = next_cursor;
            if !has_more {
                break;
            }
        }
        Ok(report)
    }

    /// When `scope` was last synced (ms since the epoch).
    pub fn last_sync(&self, scope: &str) -> Result<Option<i64>, ClientError> {
        self.store.last_sync(scope)
    }
}
