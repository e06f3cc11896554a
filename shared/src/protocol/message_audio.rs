//! Audio that reaches a member through a message. Any member of a thread may play a live
//! message's audio, and reuse it: forward it to another thread they belong to, or save it to
//! their library. The grant is the message: it is checked on every use, and it opens only
//! that message's audio (docs/protocol.md, "Possession").
//!
//! Race closed: a reuse racing the message's deletion. The reuse's transaction checks the
//! source message at the version it read, so if the deletion commits first the reuse
//! re-reads and answers 404; if the reuse commits first, its reference holds the audio.

use super::codec::{expect_of, Txn, Versioned};
use super::read::audio_not_found;
use super::references::{live_reference_without_audio, not_attachable};
use super::{keys, Dedup};
use crate::domain::{
    AudioRecord, AudioRender, AudioSource, AudioState, AudioView, ContentHash, EntryState,
    HolderRecord, MessageId, MessageRecord, PendingReference, ThreadId, UserId,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, TransactionalIndex};

pub(super) fn message_not_found() -> DedupError {
    DedupError::refused(
        ErrorCode::MessageNotFound,
        "no such message for this caller",
    )
}

/// What a reuse's source resolved to: the audio, and the message that grants it (none when
/// the caller holds the audio themselves).
pub(super) struct Resolved {
    pub hash: ContentHash,
    pub via: Option<Versioned<MessageRecord>>,
}

impl<B: BlobStore, I: TransactionalIndex> Dedup<B, I> {
    /// A live message's audio for a member of its thread: metadata and a short-lived URL
    /// for the exact stored version. Everyone else, and messages deleted or without audio,
    /// get the same 404 as an unknown message. Writes nothing.
    pub async fn message_audio(
        &self,
        caller: &UserId,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<AudioView, DedupError> {
        let (m, render) = self.shared_message(caller, id).await?;
        if &m.value.thread_id != thread {
            return Err(message_not_found());
        }
        let Some(a) = self.load_audio(&render.content_hash).await? else {
            return Err(live_reference_without_audio(&render.content_hash));
        };
        // A live message holds a live reference, so its audio is active; anything else is
        // a store out of step with itself, answered as not found rather than served.
        if a.value.state != AudioState::Active {
            tracing::warn!(message = %id, hash = %render.content_hash, state = a.value.state.as_str(), "a live message's audio is not active");
            return Err(message_not_found());
        }
        let (url, url_expires_at) = self.download_url(&a.value).await?;
        Ok(AudioView {
            content_hash: render.content_hash,
            format: a.value.format,
            size: a.value.size,
            state: a.value.state,
            url,
            url_expires_at,
        })
    }

    /// Message `id` if it is live and `caller` is a member of its thread; otherwise 404
    /// `message_not_found`, the same for each reason.
    pub(super) async fn live_message(
        &self,
        caller: &UserId,
        id: &MessageId,
    ) -> Result<Versioned<MessageRecord>, DedupError> {
        let Some(m) = self.load::<MessageRecord>(&keys::message(id)).await? else {
            return Err(message_not_found());
        };
        match self.member_thread(caller, &m.value.thread_id).await {
            Ok(_) => {}
            Err(DedupError::Refused {
                code: ErrorCode::ThreadNotFound,
                ..
            }) => return Err(message_not_found()),
            Err(e) => return Err(e),
        }
        if m.value.state != EntryState::Live {
            return Err(message_not_found());
        }
        Ok(m)
    }

    /// `live_message`, if it carries audio (404 `message_not_found` if not).
    pub(super) async fn shared_message(
        &self,
        caller: &UserId,
        id: &MessageId,
    ) -> Result<(Versioned<MessageRecord>, AudioRender), DedupError> {
        let m = self.live_message(caller, id).await?;
        match m.value.audio {
            Some(render) => Ok((m, render)),
            None => Err(message_not_found()),
        }
    }

    /// Resolves where a reuse's audio comes from (read again on every attempt).
    pub(super) async fn resolve_source(
        &self,
        caller: &UserId,
        source: &AudioSource,
    ) -> Result<(Resolved, Option<AudioRender>), DedupError> {
        match source {
            AudioSource::Held(hash) => Ok((
                Resolved {
                    hash: *hash,
                    via: None,
                },
                None,
            )),
            AudioSource::Message(id) => {
                let (m, render) = self.shared_message(caller, id).await?;
                Ok((
                    Resolved {
                        hash: render.content_hash,
                        via: Some(m),
                    },
                    Some(render),
                ))
            }
        }
    }

    /// What the reuse's transaction would refuse, checked ahead of work that writes before
    /// it (staging a snapshot): the caller holds the audio, or may reach it through the
    /// message, and it is active.
    pub(super) async fn check_attachable(
        &self,
        caller: &UserId,
        source: &AudioSource,
    ) -> Result<(), DedupError> {
        let (resolved, _) = self.resolve_source(caller, source).await?;
        let a = match &resolved.via {
            None => self.held_audio(caller, &resolved.hash).await?,
            Some(_) => match self.load_audio(&resolved.hash).await? {
                Some(a) => a,
                None => return Err(live_reference_without_audio(&resolved.hash)),
            },
        };
        if a.value.state != AudioState::Active {
            return Err(not_attachable(a.value.state));
        }
        Ok(())
    }

    /// Plans, in the caller's transaction, the reference a message or library item will
    /// hold on resolved audio. Held audio takes the holder check; audio reached through a
    /// message makes the caller a holder of its current generation, on condition that the
    /// message is still as read (live) when the transaction commits.
    pub(super) async fn plan_sourced_reference(
        &self,
        txn: &mut Txn,
        owner: &UserId,
        source: &Resolved,
        wanted: &PendingReference,
    ) -> Result<(), DedupError> {
        let Some(m) = &source.via else {
            return self
                .plan_held_reference(txn, owner, &source.hash, wanted)
                .await;
        };
        let Some(p) = self.load_audio(&source.hash).await? else {
            return Err(live_reference_without_audio(&source.hash));
        };
        if p.value.state != AudioState::Active {
            // Only a store out of step reaches here: the live message holds a reference.
            return Err(audio_not_found());
        }
        txn.check(keys::message(&m.value.id), m.expect());
        let mut a: AudioRecord = p.value.clone();
        self.grant_holder(txn, &a, owner).await?;
        self.plan_new_reference(txn, &mut a, owner, wanted)?;
        self.put_or_check_audio(txn, a, &p)
    }

    /// Makes `owner` a holder of `a`'s current generation, unless they are already.
    pub(super) async fn grant_holder(
        &self,
        txn: &mut Txn,
        a: &AudioRecord,
        owner: &UserId,
    ) -> Result<(), DedupError> {
        let holder = self
            .load::<HolderRecord>(&keys::holder(&a.hash, owner))
            .await?;
        if holder.as_ref().map(|h| h.value.generation) != Some(a.generation) {
            let rec = HolderRecord {
                owner: owner.clone(),
                generation: a.generation,
                granted_at: self.now(),
            };
            txn.put_holder(&a.hash, &rec, expect_of(holder.as_ref()))?;
        }
        Ok(())
    }
}
