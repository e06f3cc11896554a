//! The narrow ports the protocol is written against. Adapters implement them; they hold no
//! protocol logic.

mod blob;
mod index;
mod live;
mod time;

pub use blob::*;
pub use index::*;
pub use live::*;
pub use time::*;
