//! DynamoDB Streams records to pokes. A record whose item is a log entry (a message created
//! or deleted, a thread joined, a library change) pokes the open connections of those who
//! may read that log; every other record is ignored. The stream carries keys only
//! (`KEYS_ONLY`): a poke needs nothing else.
//!
//! Failing to learn whom to poke fails the batch, and Lambda retries it (bisecting, then
//! sending what still fails to the failure queue). Pokes sent twice are harmless; a poke
//! not sent costs only latency, as the client's next sync catches up.

use audio_dedup_core::chat::ChatService;
use audio_dedup_core::live::{fan_out, FanOut};
use audio_dedup_core::ports::{
    BlobStore, ConnectionPoster, ConnectionRegistry, Key, TransactionalIndex,
};
use audio_dedup_core::DedupError;
use aws_lambda_events::dynamodb::Event;

#[derive(serde::Deserialize)]
struct StreamKey {
    pk: String,
    sk: String,
}

/// The keys of the items the batch inserted or modified, in stream order. Removals are
/// skipped: the protocol never removes a log entry (only the TTL removes connection
/// records).
pub fn written_keys(event: &Event) -> Vec<Key> {
    event
        .records
        .iter()
        .filter(|r| matches!(r.event_name.as_str(), "INSERT" | "MODIFY"))
        .filter_map(|r| {
            match serde_dynamo::from_item::<_, StreamKey>(r.change.keys.clone()) {
                Ok(k) => Some(Key::new(k.pk, k.sk)),
                Err(e) => {
                    tracing::warn!(event_id = r.event_id, error = %e, "record without pk/sk; skipped");
                    None
                }
            }
        })
        .collect()
}

pub async fn handle<B, I, R, P>(
    chat: &ChatService<B, I>,
    registry: &R,
    poster: &P,
    event: &Event,
) -> Result<FanOut, DedupError>
where
    B: BlobStore,
    I: TransactionalIndex,
    R: ConnectionRegistry,
    P: ConnectionPoster,
{
    // Boxed: the fan-out's future nests deep enough to overflow the compiler's layout depth
    // inside the runtime's.
    let out = Box::pin(fan_out(chat, registry, poster, written_keys(event))).await?;
    tracing::info!(
        records = event.records.len(),
        pokes = out.pokes,
        posted = out.posted,
        gone = out.gone,
        failed = out.failed,
        "stream batch fanned out"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use audio_dedup_core::chat::NewThread;
    use audio_dedup_core::live::connected;
    use audio_dedup_core::store::memory::{
        MemoryBlobs, MemoryConnections, MemoryIndex, RecordingPoster,
    };
    use audio_dedup_core::{ConnectionId, Dedup, DedupConfig, Members, Title, UserId};
    use serde_json::json;

    fn event() -> Event {
        let path = format!(
            "{}/../fixtures/dynamodb-stream.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn user(s: &str) -> UserId {
        s.parse().unwrap()
    }

    fn conn(s: &str) -> ConnectionId {
        s.parse().unwrap()
    }

    /// The fixture: a message in thread t1 (INSERT), the same record again (a duplicate),
    /// a thread record update (MODIFY of a non-log item), bob's feed entry, carol's library
    /// entry, a connection record's TTL removal, and an audio record.
    #[test]
    fn only_inserted_or_modified_items_are_read_and_in_order() {
        let keys = written_keys(&event());
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "THREAD#t1/LOG#00000000000000000003",
                "THREAD#t1/LOG#00000000000000000003",
                "THREAD#t1/META",
                "FEED#bob/LOG#00000000000000000002",
                "LIB#carol/LOG#00000000000000000001",
                "AUDIO#9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/META",
            ]
        );
    }

    #[tokio::test]
    async fn a_batch_pokes_members_and_owners_once_per_log() {
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
            ("bob", "B1="),
            ("carol", "C1="),
            ("dave", "D1="),
        ] {
            connected(&reg, &user(u), &conn(c), 0).await.unwrap();
        }
        let poster = RecordingPoster::default();
        let out = handle(d.chat(), &reg, &poster, &event()).await.unwrap();
        assert_eq!(out.pokes, 3);
        let mut got = poster.delivered();
        got.sort_by(|a, b| (a.0.as_str(), a.1.to_string()).cmp(&(b.0.as_str(), b.1.to_string())));
        assert_eq!(
            got,
            vec![
                (
                    conn("A1="),
                    json!({"kind": "thread", "id": "t1", "cursor": "3"})
                ),
                (conn("B1="), json!({"kind": "feed", "cursor": "2"})),
                (
                    conn("B1="),
                    json!({"kind": "thread", "id": "t1", "cursor": "3"})
                ),
                (conn("C1="), json!({"kind": "library", "cursor": "1"})),
            ]
        );
    }
}
