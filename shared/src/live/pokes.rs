//! Live updates: which committed log entry tells whom *that* something changed, never
//! *what*. One mapping from a written item's key to a poke and its audience, used by the
//! local server (over the embedded index's commit feed) and, on AWS, by the stream consumer
//! (over DynamoDB Streams records). A poke carries a log position only: the cursor protocol
//! stays the one source of truth, so a lost or repeated poke can lose or repeat nothing.

use serde::{Deserialize, Serialize};

use crate::domain::{ThreadId, UserId};
use crate::ports::Key;
use crate::protocol::keys;

/// What a client is told: a log it can read has moved to `cursor` (or beyond).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Poke {
    /// A thread's messages changed (a message created or deleted).
    Thread { id: ThreadId, cursor: String },
    /// The user's thread list changed (a thread joined).
    Feed { cursor: String },
    /// The user's library changed.
    Library { cursor: String },
}

/// Who may be told: exactly those who may read the log the poke points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The thread's members (the thread record names them).
    ThreadMembers(ThreadId),
    /// One user: the owner of the feed or library.
    User(UserId),
}

/// The poke a written item means, if it is a log entry: `THREAD#<id>/LOG#<n>`,
/// `FEED#<user>/LOG#<n>` or `LIB#<user>/LOG#<n>`. Anything else means none.
pub fn poke_for(key: &Key) -> Option<(Audience, Poke)> {
    let cursor = keys::seq_of_log_sk(&key.sk)?.to_string();
    let (kind, name) = key.pk.split_once('#')?;
    match kind {
        "THREAD" => {
            let id: ThreadId = name.parse().ok()?;
            Some((
                Audience::ThreadMembers(id.clone()),
                Poke::Thread { id, cursor },
            ))
        }
        "FEED" => Some((Audience::User(name.parse().ok()?), Poke::Feed { cursor })),
        "LIB" => Some((Audience::User(name.parse().ok()?), Poke::Library { cursor })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_map_to_pokes_and_nothing_else_does() {
        let thread: ThreadId = "t1".parse().unwrap();
        let alice: UserId = "alice".parse().unwrap();
        assert_eq!(
            poke_for(&keys::thread_log(&thread, 7)),
            Some((
                Audience::ThreadMembers(thread.clone()),
                Poke::Thread {
                    id: thread.clone(),
                    cursor: "7".into()
                }
            ))
        );
        assert_eq!(
            poke_for(&Key::new(keys::feed_pk(&alice), keys::log_sk(3))),
            Some((
                Audience::User(alice.clone()),
                Poke::Feed { cursor: "3".into() }
            ))
        );
        assert_eq!(
            poke_for(&keys::library_log(&alice, 9)),
            Some((
                Audience::User(alice.clone()),
                Poke::Library { cursor: "9".into() }
            ))
        );
        for other in [
            keys::thread(&thread),
            keys::feed_head(&alice),
            keys::library_head(&alice),
            Key::new("AUDIO#x", "LOG#00000000000000000001"),
            Key::new("THREAD#not a valid id!", "LOG#00000000000000000001"),
        ] {
            assert_eq!(poke_for(&other), None, "{other}");
        }
        let json = serde_json::to_value(Poke::Thread {
            id: thread,
            cursor: "7".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "thread", "id": "t1", "cursor": "7"})
        );
    }
}
