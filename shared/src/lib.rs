//! audio-dedup core: content-addressed audio stored once, reference-counted, deleted as soon
//! as the last reference goes. The protocol lives in [`protocol`]; it talks to storage only
//! through the two ports in [`ports`]. Adapters live in [`store`].

pub mod audio;
pub mod chat;
mod dedup;
pub mod domain;
pub mod error;
#[cfg(feature = "jwt")]
pub mod identity;
pub mod live;
pub mod ports;
pub mod protocol;
pub mod store;

pub use dedup::Dedup;
pub use domain::*;
pub use error::{DedupError, ErrorCode, StoreError};
pub use protocol::DedupConfig;
