//! The `uploads` table: parted upload sessions in progress, by content, so an upload the app
//! was killed in the middle of resumes from the parts the server holds instead of starting
//! over. A row goes when its upload completes or fails for good.

use rusqlite::{params, OptionalExtension};

use audio_dedup_core::{ContentHash, UploadSession};

use super::Store;
use crate::error::ClientError;

impl Store {
    /// The session saved for `hash`, if any (a row that no longer parses is none).
    pub(crate) fn saved_upload(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<UploadSession>, ClientError> {
        let json: Option<String> = self.read(|c| {
            c.query_row(
                "SELECT session FROM uploads WHERE hash = ?1",
                [hash.to_hex()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    pub(crate) fn save_upload(
        &self,
        session: &UploadSession,
        now_ms: i64,
    ) -> Result<(), ClientError> {
        let json = serde_json::to_string(session)
            .map_err(|e| ClientError::Task(format!("encoding an upload session: {e}")))?;
        self.write_durable(|tx| {
            tx.conn().execute(
                "INSERT OR REPLACE INTO uploads (hash, session, updated_at) VALUES (?1, ?2, ?3)",
                params![session.content_hash.to_hex(), json, now_ms],
            )?;
            Ok(())
        })
    }

    pub(crate) fn forget_upload(&self, hash: &ContentHash) -> Result<(), ClientError> {
        self.write_cache(|tx| {
            tx.conn()
                .execute("DELETE FROM uploads WHERE hash = ?1", [hash.to_hex()])?;
            Ok(())
        })
    }
}
