//! The composition root: [`Dedup`] builds the audio engine and the chat service over one
//! blob store and one index, and runs the reconciler's pass across both
//! ([`reconcile`]). Nothing in [`crate::protocol`], [`crate::audio`] or [`crate::chat`]
//! imports this module, so the services depend on what they share, never on what builds
//! them. Where the process-wide pieces plug in (the clock and entropy today; a request
//! budget or a conflict model to wrap the index) is here, at construction.

mod reconcile;

use std::sync::Arc;

use crate::audio::AudioEngine;
use crate::chat::ChatService;
use crate::ports::{BlobStore, Clock, Entropy, OsEntropy, SystemClock, TransactionalIndex};
use crate::protocol::{Core, DedupConfig};

/// The audio engine and the chat service over one blob store and one index.
pub struct Dedup<B, I> {
    audio: AudioEngine<B, I>,
    chat: ChatService<B, I>,
}

impl<B: BlobStore, I: TransactionalIndex> Dedup<B, I> {
    pub fn new(blobs: B, index: I, cfg: DedupConfig) -> Self {
        Self::with_env(
            blobs,
            index,
            cfg,
            Arc::new(SystemClock),
            Arc::new(OsEntropy),
        )
    }

    pub fn with_env(
        blobs: B,
        index: I,
        cfg: DedupConfig,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Self {
        let core = Arc::new(Core::new(blobs, index, cfg, clock, entropy));
        let audio = AudioEngine::new(core.clone());
        Self {
            chat: ChatService::new(core, audio.clone()),
            audio,
        }
    }

    /// Uploads, sessions, proofs, references, deletion, blob events, stats.
    pub fn audio(&self) -> &AudioEngine<B, I> {
        &self.audio
    }

    /// Threads, messages and the library.
    pub fn chat(&self) -> &ChatService<B, I> {
        &self.chat
    }

    pub fn blobs(&self) -> &B {
        &self.audio.core.blobs
    }

    pub fn index(&self) -> &I {
        &self.audio.core.index
    }

    pub fn config(&self) -> &DedupConfig {
        &self.audio.core.cfg
    }
}
