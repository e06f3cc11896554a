//! Domain types: what the system talks about, each validated at construction.

mod chat;
mod format;
mod hash;
mod ids;
mod input;
mod records;
mod views;

pub use chat::*;
pub use format::{AudioFormat, UnknownFormat};
pub use hash::{hash_reader, ContentHash, HashParseError, StreamingHasher};
pub use ids::{
    ConnectionId, IdParseError, LibraryItemId, MessageId, ReferenceId, ReferenceKind, SessionId,
    ThreadId, UserId,
};
pub use input::{Members, MessageText, Proof, Snapshot, Title};
pub use records::*;
pub use views::*;
