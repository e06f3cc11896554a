//! The chat service: threads, messages with their snapshots, and each user's library. It
//! holds audio only through the audio engine's capability ([`crate::audio::holding`]):
//! plan holding a reference in my transaction, plan dropping one, finish what a drop
//! started.

mod library;
mod membership;
mod message_audio;
mod messages;
mod positions;
mod snapshots;
mod threads;

use std::sync::Arc;

pub use membership::membership_violations;
pub use messages::{NewMessage, SnapshotBody};
pub use positions::{Positions, MAX_POSITION_THREADS};
pub use threads::{parse_cursor, NewThread, DEFAULT_PAGE, MAX_PAGE};

use crate::audio::AudioEngine;
use crate::protocol::Core;

/// Threads, messages and the library over one store, holding audio through the engine.
pub struct ChatService<B, I> {
    pub(crate) core: Arc<Core<B, I>>,
    audio: AudioEngine<B, I>,
}

impl<B, I> ChatService<B, I> {
    pub(crate) fn new(core: Arc<Core<B, I>>, audio: AudioEngine<B, I>) -> Self {
        Self { core, audio }
    }
}
