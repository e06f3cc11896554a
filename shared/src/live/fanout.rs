//! The AWS fan-out: written log keys (from a DynamoDB Streams batch) to pokes, pokes to
//! their audience's open connections. A poke that cannot be delivered is harmless (the
//! client's next sync catches up), so only failing to learn *whom* to poke fails a batch,
//! which Lambda then retries.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use super::pokes::{poke_for, Audience, Poke};
use crate::chat::ChatService;
use crate::domain::{ConnectionId, UserId};
use crate::error::{DedupError, StoreError};
use crate::ports::{
    BlobStore, ConnectionPoster, ConnectionRegistry, Key, PostError, TransactionalIndex,
};
use crate::protocol::keys;

/// API Gateway closes a WebSocket connection after 2 hours; its record expires a little
/// later, in case `$disconnect` never ran.
pub const CONNECTION_RECORD_TTL: Duration = Duration::from_secs(2 * 3600 + 600);

/// Connections poked per user and poke: what one user's open connections can cost.
pub const MAX_CONNECTIONS_PER_USER: usize = 25;

/// Posts in flight at once.
const CONCURRENT_POSTS: usize = 16;

/// What one fan-out did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct FanOut {
    /// Distinct pokes in the batch, after coalescing.
    pub pokes: usize,
    /// Posts made, and of those: closed connections (now forgotten), and other failures.
    pub posted: usize,
    pub gone: usize,
    pub failed: usize,
}

/// Records a connection opened by `user` at `now` (Unix seconds).
pub async fn connected<R: ConnectionRegistry>(
    registry: &R,
    user: &UserId,
    connection: &ConnectionId,
    now: u64,
) -> Result<(), StoreError> {
    registry
        .add(user, connection, now + CONNECTION_RECORD_TTL.as_secs())
        .await
}

/// Forgets a connection that closed.
pub async fn disconnected<R: ConnectionRegistry>(
    registry: &R,
    user: &UserId,
    connection: &ConnectionId,
) -> Result<(), StoreError> {
    registry.remove(user, connection).await
}

/// The pokes that written `keys` mean, one per log: a poke says "moved to this position or
/// beyond", so of several for one log only the furthest is worth sending.
pub fn coalesce(keys: impl IntoIterator<Item = Key>) -> Vec<(Audience, Poke)> {
    // A log is one partition: `THREAD#<id>`, `FEED#<user>` or `LIB#<user>`.
    let mut furthest: BTreeMap<String, (u64, Audience, Poke)> = BTreeMap::new();
    for key in keys {
        let (Some((audience, poke)), Some(seq)) = (poke_for(&key), keys::seq_of_log_sk(&key.sk))
        else {
            continue;
        };
        if furthest.get(&key.pk).is_none_or(|(have, _, _)| *have < seq) {
            furthest.insert(key.pk, (seq, audience, poke));
        }
    }
    furthest.into_values().map(|(_, a, p)| (a, p)).collect()
}

/// The users a poke is for: the owner, or the thread's members as its record names them now.
pub async fn audience_of<B: BlobStore, I: TransactionalIndex>(
    chat: &ChatService<B, I>,
    audience: &Audience,
) -> Result<Vec<UserId>, DedupError> {
    match audience {
        Audience::User(user) => Ok(vec![user.clone()]),
        Audience::ThreadMembers(id) => chat.thread_members(id).await,
    }
}

/// Pokes every open connection of each poke's audience about the logs `written` moved.
/// Connections found closed are forgotten.
pub async fn fan_out<B, I, R, P>(
    chat: &ChatService<B, I>,
    registry: &R,
    poster: &P,
    written: impl IntoIterator<Item = Key>,
) -> Result<FanOut, DedupError>
where
    B: BlobStore,
    I: TransactionalIndex,
    R: ConnectionRegistry,
    P: ConnectionPoster,
{
    let pokes = coalesce(written);
    let mut out = FanOut {
        pokes: pokes.len(),
        ..FanOut::default()
    };
    // Whom each poke is for, then each user's connections: one read per thread and per user.
    let mut per_user: BTreeMap<UserId, Vec<Vec<u8>>> = BTreeMap::new();
    for (audience, poke) in &pokes {
        let users = audience_of(chat, audience).await?;
        let body = serde_json::to_vec(poke).map_err(StoreError::backend)?;
        for user in users {
            per_user.entry(user).or_default().push(body.clone());
        }
    }
    let mut posts = Vec::new();
    for (user, bodies) in &per_user {
        let connections = registry.list(user, MAX_CONNECTIONS_PER_USER).await?;
        for connection in connections {
            for body in bodies {
                posts.push((user, connection.clone(), body.as_slice()));
            }
        }
    }
    let results: Vec<_> = stream::iter(posts)
        .map(|(user, connection, body)| async move {
            let result = poster.post(&connection, body).await;
            (user, connection, result)
        })
        .buffer_unordered(CONCURRENT_POSTS)
        .collect()
        .await;
    let mut gone = BTreeSet::new();
    for (user, connection, result) in results {
        out.posted += 1;
        match result {
            Ok(()) => {}
            Err(PostError::Gone) => {
                out.gone += 1;
                gone.insert((user, connection));
            }
            Err(PostError::Store(e)) => {
                out.failed += 1;
                tracing::warn!(%connection, error = %e, "poke not posted");
            }
        }
    }
    for (user, connection) in gone {
        // Not fatal: the record's expiry removes it anyway.
        if let Err(e) = registry.remove(user, &connection).await {
            tracing::warn!(%connection, error = %e, "closed connection not forgotten");
        }
    }
    Ok(out)
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::chat::NewThread;
    use crate::domain::{Members, ThreadId, Title};
    use crate::store::memory::{MemoryBlobs, MemoryConnections, MemoryIndex, RecordingPoster};
    use crate::{Dedup, DedupConfig};
    use serde_json::json;

    fn user(s: &str) -> UserId {
        s.parse().unwrap()
    }

    fn conn(s: &str) -> ConnectionId {
        s.parse().unwrap()
    }

    /// alice and bob share thread t1; carol is in none. Each has one connection, alice two.
    async fn setup() -> (Dedup<MemoryBlobs, MemoryIndex>, MemoryConnections) {
        let d = Dedup::new(
            MemoryBlobs::default(),
            MemoryIndex::default(),
            DedupConfig::default(),
        );
        d.chat()
            .create_thread(
                &user("alice"),
                NewThread {
                    id: Some("t1".parse().unwrap()),
                    title: Title::new("mix").unwrap(),
                    members: Members::new(vec![user("bob")]).unwrap(),
                },
            )
            .await
            .unwrap();
        let reg = MemoryConnections::default();
        for (u, c) in [
            ("alice", "A1="),
            ("alice", "A2="),
            ("bob", "B1="),
            ("carol", "C1="),
        ] {
            connected(&reg, &user(u), &conn(c), 1_000).await.unwrap();
        }
        (d, reg)
    }

    #[tokio::test]
    async fn a_thread_poke_reaches_every_connection_of_its_members_and_no_one_else() {
        let (d, reg) = setup().await;
        let poster = RecordingPoster::default();
        let t1: ThreadId = "t1".parse().unwrap();
        let out = fan_out(d.chat(), &reg, &poster, [keys::thread_log(&t1, 4)])
            .await
            .unwrap();
        assert_eq!(
            out,
            FanOut {
                pokes: 1,
                posted: 3,
                gone: 0,
                failed: 0
            }
        );
        let mut to: Vec<_> = poster.delivered().into_iter().map(|(c, _)| c).collect();
        to.sort();
        assert_eq!(to, vec![conn("A1="), conn("A2="), conn("B1=")]);
        for (_, body) in poster.delivered() {
            assert_eq!(body, json!({"kind": "thread", "id": "t1", "cursor": "4"}));
        }
    }

    #[tokio::test]
    async fn feed_and_library_pokes_go_to_their_owner_only() {
        let (d, reg) = setup().await;
        let poster = RecordingPoster::default();
        fan_out(
            d.chat(),
            &reg,
            &poster,
            [
                keys::library_log(&user("carol"), 2),
                Key::new(keys::feed_pk(&user("bob")), keys::log_sk(5)),
            ],
        )
        .await
        .unwrap();
        let mut got = poster.delivered();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                (conn("B1="), json!({"kind": "feed", "cursor": "5"})),
                (conn("C1="), json!({"kind": "library", "cursor": "2"})),
            ]
        );
    }

    /// A batch may carry one log's entries several times (retries, several messages):
    /// each log is poked once, at its furthest position, whatever the order.
    #[tokio::test]
    async fn repeated_and_reordered_entries_coalesce_to_the_furthest_position() {
        let (d, reg) = setup().await;
        let poster = RecordingPoster::default();
        let t1: ThreadId = "t1".parse().unwrap();
        let keys = [9, 3, 9, 12, 7].map(|n| keys::thread_log(&t1, n));
        let out = fan_out(d.chat(), &reg, &poster, keys).await.unwrap();
        assert_eq!(out.pokes, 1);
        let bob: Vec<_> = poster
            .delivered()
            .into_iter()
            .filter(|(c, _)| *c == conn("B1="))
            .collect();
        assert_eq!(
            bob,
            vec![(
                conn("B1="),
                json!({"kind": "thread", "id": "t1", "cursor": "12"})
            )]
        );
    }

    /// Keys that are not log entries (thread records, heads, audio, connections) poke no one.
    #[tokio::test]
    async fn other_items_poke_no_one() {
        let (d, reg) = setup().await;
        let poster = RecordingPoster::default();
        let t1: ThreadId = "t1".parse().unwrap();
        let out = fan_out(
            d.chat(),
            &reg,
            &poster,
            [
                keys::thread(&t1),
                keys::feed_head(&user("bob")),
                Key::new("AUDIO#ab", "META"),
                Key::new("LIVE#bob", "CONN#B1="),
            ],
        )
        .await
        .unwrap();
        assert_eq!(out, FanOut::default());
        assert!(poster.delivered().is_empty());
    }

    /// A closed connection (410) is forgotten; a failing one is kept and does not fail the
    /// batch (the client's next sync catches up); the others still get their poke.
    #[tokio::test]
    async fn closed_connections_are_forgotten_and_failures_do_not_fail_the_batch() {
        let (d, reg) = setup().await;
        let poster = RecordingPoster::default();
        poster.gone.lock().unwrap().insert(conn("A1="));
        poster.failing.lock().unwrap().insert(conn("B1="));
        let t1: ThreadId = "t1".parse().unwrap();
        let out = fan_out(d.chat(), &reg, &poster, [keys::thread_log(&t1, 1)])
            .await
            .unwrap();
        assert_eq!(
            out,
            FanOut {
                pokes: 1,
                posted: 3,
                gone: 1,
                failed: 1
            }
        );
        assert_eq!(
            reg.of(&user("alice")).into_keys().collect::<Vec<_>>(),
            vec![conn("A2=")]
        );
        assert_eq!(
            reg.of(&user("bob")).len(),
            1,
            "a failing connection is kept"
        );
        let to: Vec<_> = poster.delivered().into_iter().map(|(c, _)| c).collect();
        assert_eq!(to, vec![conn("A2=")]);
    }

    /// A poke for a thread that does not exist (deleted, or a forged record) reaches no one.
    #[tokio::test]
    async fn a_thread_nobody_is_in_pokes_no_one() {
        let (d, reg) = setup().await;
        let poster = RecordingPoster::default();
        let ghost: ThreadId = "ghost".parse().unwrap();
        let out = fan_out(d.chat(), &reg, &poster, [keys::thread_log(&ghost, 1)])
            .await
            .unwrap();
        assert_eq!(out.posted, 0);
    }

    #[tokio::test]
    async fn records_expire_after_the_longest_connection_and_disconnect_forgets() {
        let reg = MemoryConnections::default();
        connected(&reg, &user("bob"), &conn("B1="), 1_000)
            .await
            .unwrap();
        assert_eq!(reg.of(&user("bob"))[&conn("B1=")], 1_000 + 2 * 3600 + 600);
        disconnected(&reg, &user("bob"), &conn("B1="))
            .await
            .unwrap();
        disconnected(&reg, &user("bob"), &conn("B1="))
            .await
            .unwrap();
        assert!(reg.of(&user("bob")).is_empty());
    }

    #[tokio::test]
    async fn a_user_with_many_connections_costs_at_most_the_cap_per_poke() {
        let (d, reg) = setup().await;
        for i in 0..(MAX_CONNECTIONS_PER_USER + 10) {
            connected(&reg, &user("carol"), &conn(&format!("X{i}=")), 1_000)
                .await
                .unwrap();
        }
        let poster = RecordingPoster::default();
        let out = fan_out(
            d.chat(),
            &reg,
            &poster,
            [keys::library_log(&user("carol"), 1)],
        )
        .await
        .unwrap();
        assert_eq!(out.posted, MAX_CONNECTIONS_PER_USER);
    }
}
