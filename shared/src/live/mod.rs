//! Live updates: pokes that tell online clients *that* a log they may read moved, never
//! *what* ([`pokes`]), and their fan-out on AWS to the WebSocket connections each user has
//! open ([`fanout`]), driven by DynamoDB Streams. The local server delivers the same pokes
//! over the same WebSocket protocol (server/src/live.rs).

mod fanout;
mod pokes;

pub use fanout::{
    audience_of, coalesce, connected, disconnected, fan_out, FanOut, CONNECTION_RECORD_TTL,
    MAX_CONNECTIONS_PER_USER,
};
pub use pokes::{poke_for, Audience, Poke};
