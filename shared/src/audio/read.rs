//! Reads: one audio's metadata for a caller who holds it.

use super::AudioEngine;
use crate::domain::{AudioRecord, AudioState, AudioView, ContentHash, HolderRecord, UserId};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, TransactionalIndex};
use crate::protocol::{keys, Versioned};

impl<B: BlobStore, I: TransactionalIndex> AudioEngine<B, I> {
    /// Metadata and a short-lived download URL. Only for callers who proved possession of
    /// the current generation; everyone else gets the same 404 as for unknown content.
    pub async fn describe(
        &self,
        owner: &UserId,
        hash: &ContentHash,
    ) -> Result<AudioView, DedupError> {
        let p = self.held_audio(owner, hash).await?;
        if p.value.state() != AudioState::Active {
            return Err(audio_not_found());
        }
        self.view_with_url(&p.value).await
    }

    /// What a caller allowed to play active audio `a` gets: its metadata and a short-lived
    /// URL for its exact version.
    pub(crate) async fn view_with_url(&self, a: &AudioRecord) -> Result<AudioView, DedupError> {
        let (url, url_expires_at) = self.download_url(a).await?;
        Ok(AudioView {
            content_hash: a.hash,
            format: a.format,
            size: a.size,
            state: a.state(),
            url,
            url_expires_at,
        })
    }

    /// The audio record, if `owner` proved possession of its current generation; otherwise
    /// the same 404 as for unknown content, so nothing leaks about other callers' audio.
    /// The caller's holder record is read first: without one, unknown content and someone
    /// else's cost the same single read.
    pub(crate) async fn held_audio(
        &self,
        owner: &UserId,
        hash: &ContentHash,
    ) -> Result<Versioned<AudioRecord>, DedupError> {
        let Some(holder) = self
            .core
            .load::<HolderRecord>(&keys::holder(hash, owner))
            .await?
        else {
            return Err(audio_not_found());
        };
        let Some(p) = self.core.load_audio(hash).await? else {
            return Err(audio_not_found());
        };
        if holder.value.generation != p.value.generation || p.value.state() == AudioState::Gone {
            return Err(audio_not_found());
        }
        Ok(p)
    }

    /// Whether `owner` proved possession of audio `a`'s current generation (404 if not).
    pub(crate) async fn check_holds(
        &self,
        owner: &UserId,
        a: &AudioRecord,
    ) -> Result<(), DedupError> {
        let holder = self
            .core
            .load::<HolderRecord>(&keys::holder(&a.hash, owner))
            .await?;
        if holder.map(|h| h.value.generation) != Some(a.generation) || a.state() == AudioState::Gone
        {
            return Err(audio_not_found());
        }
        Ok(())
    }
}

pub(crate) fn audio_not_found() -> DedupError {
    DedupError::refused(ErrorCode::AudioNotFound, "no such audio for this caller")
}
