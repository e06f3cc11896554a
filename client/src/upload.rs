//! The upload service. (Being written.)

use audio_dedup_core::ContentHash;

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    pub content_hash: ContentHash,
    pub size: u64,
    /// The server had the content already: no audio bytes were sent.
    pub deduplicated: bool,
    /// Audio bytes sent to the server or the blob store.
    pub bytes_sent: u64,
}

impl crate::Client {
    /// Uploads a queued file, checking it still hashes to what was queued.
    pub(crate) async fn upload_queued(
        &self,
        _path: &std::path::Path,
        _expected: ContentHash,
        _format: audio_dedup_core::AudioFormat,
    ) -> Result<UploadOutcome, crate::ClientError> {
        Err(crate::ClientError::Invalid(
            "the upload service is being written".into(),
        ))
    }
}
