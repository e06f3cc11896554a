//! Audio that reaches a member through a message. Any member of a thread may play a live
//! message's audio, and reuse it: forward it to another thread they belong to, or save it to
//! their library. The grant is the message: it is checked on every use, and it opens only
//! that message's audio (docs/protocol.md, "Possession").
//!
//! Race closed: a reuse racing the message's deletion. The reuse's transaction checks the
//! source message at the version it read, so if the deletion commits first the reuse
//! re-reads and answers 404; if the reuse commits first, its reference holds the audio.

use super::ChatService;
use crate::audio::holding::Possession;
use crate::domain::{
    AudioRender, AudioSource, AudioView, ContentHash, EntryState, MessageId, MessageRecord,
    PendingReference, ThreadId, UserId,
};
use crate::error::{DedupError, ErrorCode};
use crate::ports::{BlobStore, TransactionalIndex};
use crate::protocol::codec::{Txn, Versioned};
use crate::protocol::keys;

pub(crate) fn message_not_found() -> DedupError {
    DedupError::refused(
        ErrorCode::MessageNotFound,
        "no such message for this caller",
    )
}

/// What a reuse's source resolved to: the audio, and the message that grants it (none when
/// the caller holds the audio themselves).
pub(crate) struct Resolved {
    pub hash: ContentHash,
    pub via: Option<Versioned<MessageRecord>>,
}

impl Resolved {
    fn possession(&self) -> Possession {
        match self.via {
            None => Possession::Held,
            Some(_) => Possession::Shared,
        }
    }
}

impl<B: BlobStore, I: TransactionalIndex> ChatService<B, I> {
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
        match self.audio.shared_audio(&render.content_hash).await? {
            Some(view) => Ok(view),
            None => {
                tracing::warn!(message = %id, hash = %render.content_hash, "a live message's audio is not active");
                Err(message_not_found())
            }
        }
    }

    /// What the reuse's transaction would refuse, checked ahead of work that writes before
    /// it (staging a snapshot): the caller holds the audio, or may reach it through the
    /// message, and it is active.
    pub(crate) async fn check_attachable(
        &self,
        caller: &UserId,
        source: &AudioSource,
    ) -> Result<(), DedupError> {
        let (resolved, _) = self.resolve_source(caller, source).await?;
        self.audio
            .check_holdable(caller, &resolved.hash, resolved.possession())
            .await
    }

    /// Plans, in the caller's transaction, the reference a message or library item will
    /// hold on resolved audio. Audio reached through a message is held on condition that
    /// the message is still as read (live) when the transaction commits.
    pub(crate) async fn plan_sourced_reference(
        &self,
        txn: &mut Txn,
        owner: &UserId,
        source: &Resolved,
        wanted: &PendingReference,
    ) -> Result<(), DedupError> {
        if let Some(m) = &source.via {
            txn.check(keys::message(&m.value.id), m.expect());
        }
        self.audio
            .plan_hold_reference(txn, owner, &source.hash, source.possession(), wanted)
            .await
    }

    /// Message `id` if it is live and `caller` is a member of its thread; otherwise 404
    /// `message_not_found`, the same for each reason.
    pub(crate) async fn live_message(
        &self,
        caller: &UserId,
        id: &MessageId,
    ) -> Result<Versioned<MessageRecord>, DedupError> {
        let Some(m) = self.core.load::<MessageRecord>(&keys::message(id)).await? else {
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
    pub(crate) async fn shared_message(
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
    pub(crate) async fn resolve_source(
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
}
