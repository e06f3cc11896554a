//! The narrow ports the protocol is written against. Adapters implement them; they hold no
//! protocol logic.

mod blob;
mod index;
mod live;
mod request_budget;
mod time;

pub use blob::*;
pub use index::*;
pub use live::*;
pub use request_budget::*;
pub use time::*;
