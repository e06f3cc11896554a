//! Domain types: what the system talks about, each validated at construction.

mod format;
mod hash;
mod ids;
mod records;
mod views;

pub use format::{AudioFormat, UnknownFormat};
pub use hash::{hash_reader, ContentHash, HashParseError, StreamingHasher};
pub use ids::{IdParseError, ReferenceId, ReferenceKind, SessionId, UserId};
pub use records::*;
pub use views::*;
