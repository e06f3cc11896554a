//! The audio engine: content stored once under its SHA-256, uploads (direct and by session),
//! proofs of possession, references counted exactly, deletion when the last one goes, blob
//! events, and the audio side of the reconciler. The chat service holds audio only through
//! the capability in [`holding`].

mod combine;
mod deletion;
mod events;
pub(crate) mod holding;
mod parts;
mod quota;
mod read;
pub(crate) mod reconcile;
mod references;
mod session;
mod stats;
mod upload;

use std::sync::Arc;

pub use events::Adoption;
pub use parts::{PartsRequest, MAX_PARTS, MAX_PARTS_PER_REQUEST};
pub use session::{
    proof_for, CompleteRequest, SessionRequest, PROOF_RANGES, PROOF_RANGE_LEN, WHOLE_FILE_PROOF_MAX,
};
pub use upload::DirectUpload;

use crate::domain::ContentHash;
use crate::protocol::Core;
use combine::Combiner;
use references::{AddAnswer, AddRequest};

/// Uploads, sessions, references, deletion and blob events over one store.
pub struct AudioEngine<B, I> {
    pub(crate) core: Arc<Core<B, I>>,
    /// Reference adds waiting to join a batch, by audio.
    adds: Arc<Combiner<ContentHash, AddRequest, AddAnswer>>,
}

impl<B, I> Clone for AudioEngine<B, I> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            adds: self.adds.clone(),
        }
    }
}

impl<B, I> AudioEngine<B, I> {
    pub(crate) fn new(core: Arc<Core<B, I>>) -> Self {
        Self {
            core,
            adds: Arc::default(),
        }
    }
}
