//! Where each record lives in the index and in the blob store. One place, so every adapter
//! and every flow agrees.

use crate::domain::{
    ConnectionId, ContentHash, LibraryItemId, MessageId, Millis, ReferenceId, Seq, SessionId,
    ThreadId, UserId,
};
use sha2::{Digest, Sha256};

use crate::ports::Key;

/// The stats shards' partition before they were spread over partitions of their own; still
/// read (its counters are summed with the shards'), never written.
pub const STATS_PK: &str = "STATS";
/// Most stats shards (`DedupConfig::stats_shards` is clamped to it).
pub const MAX_STATS_SHARDS: u64 = 256;
/// The work index's partition before it was sharded; still read, so old items drain.
pub const LEGACY_WORK_PK: &str = "WORK";
/// Due items spread over this many work partitions, so no one partition takes them all.
pub const WORK_SHARDS: u8 = 16;

fn audio_pk(hash: &ContentHash) -> String {
    format!("AUDIO#{hash}")
}

pub fn audio(hash: &ContentHash) -> Key {
    Key::new(audio_pk(hash), "META")
}

pub fn reference(hash: &ContentHash, owner: &UserId, ref_id: &ReferenceId) -> Key {
    Key::new(audio_pk(hash), format!("REF#{owner}#{ref_id}"))
}

/// Reference-count shards per audio (docs/protocol.md, "A hot track").
pub const COUNT_SHARDS: u64 = 32;

/// Count shard `n` of `hash`'s references: `AUDIO#h / COUNT#nn`.
pub fn count_shard(hash: &ContentHash, n: u64) -> Key {
    Key::new(audio_pk(hash), format!("COUNT#{n:02}"))
}

pub fn holder(hash: &ContentHash, owner: &UserId) -> Key {
    Key::new(audio_pk(hash), format!("HOLDER#{owner}"))
}

pub fn session(hash: &ContentHash, id: &SessionId) -> Key {
    Key::new(audio_pk(hash), format!("SESSION#{id}"))
}

/// `owner`'s standing challenge on `hash`.
pub fn prover(hash: &ContentHash, owner: &UserId) -> Key {
    Key::new(audio_pk(hash), format!("PROVER#{owner}"))
}

/// `owner`'s quota counters.
pub fn user_quota(owner: &UserId) -> Key {
    Key::new(format!("USER#{owner}"), "QUOTA")
}

/// Stats shard `shard`: `STATS#nnn / SHARD`, each alone in its partition, so the counters'
/// writes spread over as many partitions as there are shards (one partition takes about
/// 1,000 writes/s on DynamoDB).
pub fn stats_shard(shard: u64) -> Key {
    Key::new(stats_shard_pk(shard), "SHARD")
}

fn stats_shard_pk(shard: u64) -> String {
    format!("{STATS_PK}#{shard:03}")
}

/// Every partition whose counters make up the stats: the legacy `STATS` partition (a store
/// written before the shards moved keeps its counts there), then each of `shards` shards.
pub fn stats_partitions(shards: u64) -> Vec<String> {
    [STATS_PK.to_owned()]
        .into_iter()
        .chain((0..shards.clamp(1, MAX_STATS_SHARDS)).map(stats_shard_pk))
        .collect()
}

/// Whether partition `pk` holds stats counters (the legacy one or a shard's).
pub fn is_stats_pk(pk: &str) -> bool {
    pk == STATS_PK
        || pk
            .strip_prefix(STATS_PK)
            .and_then(|r| r.strip_prefix('#'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub fn thread(id: &ThreadId) -> Key {
    Key::new(format!("THREAD#{id}"), "META")
}

/// Sort keys of log entries sort by position (zero-padded).
pub fn log_sk(seq: Seq) -> String {
    format!("LOG#{seq:020}")
}

pub fn seq_of_log_sk(sk: &str) -> Option<Seq> {
    sk.strip_prefix("LOG#")?.parse().ok()
}

pub fn thread_log_pk(id: &ThreadId) -> String {
    format!("THREAD#{id}")
}

pub fn thread_log(id: &ThreadId, seq: Seq) -> Key {
    Key::new(thread_log_pk(id), log_sk(seq))
}

/// A message is keyed by its id alone: ids are global idempotency keys, and
/// `GET /v1/messages/{id}/snapshot` names no thread.
pub fn message(id: &MessageId) -> Key {
    Key::new(format!("MSG#{id}"), "META")
}

/// Written by the sweep before it deletes a snapshot object no message records; a create
/// that would record that object version conditions on its absence.
pub fn snapshot_fence(id: &MessageId, version: &str) -> Key {
    Key::new(format!("MSG#{id}"), format!("SWEPT#{version}"))
}

pub fn feed_pk(user: &UserId) -> String {
    format!("FEED#{user}")
}

/// Where a user's read marker of a thread is kept: beside their feed.
pub fn read_marker(user: &UserId, thread: &ThreadId) -> Key {
    Key::new(feed_pk(user), format!("READ#{thread}"))
}

pub fn feed_head(user: &UserId) -> Key {
    Key::new(feed_pk(user), "HEAD")
}

pub fn feed_entry(user: &UserId, seq: Seq) -> Key {
    Key::new(feed_pk(user), log_sk(seq))
}

pub fn library_pk(owner: &UserId) -> String {
    format!("LIB#{owner}")
}

pub fn library_head(owner: &UserId) -> Key {
    Key::new(library_pk(owner), "HEAD")
}

pub fn library_item(owner: &UserId, id: &LibraryItemId) -> Key {
    Key::new(library_pk(owner), format!("ITEM#{id}"))
}

pub fn library_log(owner: &UserId, seq: Seq) -> Key {
    Key::new(library_pk(owner), log_sk(seq))
}

/// A user's open live connections (AWS): not protocol records (no version, no body), kept
/// in the same table so one stream and one backup cover everything.
pub fn live_pk(user: &UserId) -> String {
    format!("LIVE#{user}")
}

pub const LIVE_CONNECTION_PREFIX: &str = "CONN#";

pub fn live_connection(user: &UserId, connection: &ConnectionId) -> Key {
    Key::new(
        live_pk(user),
        format!("{LIVE_CONNECTION_PREFIX}{connection}"),
    )
}

/// Work index entry: sorted by due time, unique per item.
pub fn work(due: Millis, of: &Key) -> Key {
    Key::new(
        work_shard(of),
        format!("{}#{}#{}", work_due_prefix(due), of.pk, of.sk),
    )
}

/// `WORK#00`..`WORK#15`, by a hash of the record's partition (stable across releases).
fn work_shard(of: &Key) -> String {
    let digest = Sha256::digest(of.pk.as_bytes());
    format!("WORK#{:02}", digest[0] % WORK_SHARDS)
}

/// Every work partition a pass reads: the shards, then the legacy one.
pub fn work_partitions() -> Vec<String> {
    (0..WORK_SHARDS)
        .map(|s| format!("WORK#{s:02}"))
        .chain([LEGACY_WORK_PK.to_owned()])
        .collect()
}

/// Where the blob sweep resumes.
pub fn sweep_cursor() -> Key {
    Key::new("RECONCILE", "SWEEP")
}

pub fn work_due_prefix(due: Millis) -> String {
    format!("{:016}", due.max(0))
}

/// The due time a work index sort key starts with.
pub fn due_of_work_sk(sk: &str) -> Option<Millis> {
    sk.split('#').next()?.parse().ok()
}

/// Blob key for content: `<prefix>audio/<sha256>`. No extension: one content, one key,
/// whatever format a caller claims (see docs/protocol.md).
pub fn blob_key(prefix: &str, hash: &ContentHash) -> String {
    format!("{prefix}audio/{hash}")
}

/// The content hash a blob key names, if the key is one of ours.
pub fn hash_from_blob_key(prefix: &str, key: &str) -> Option<ContentHash> {
    key.strip_prefix(prefix)?
        .strip_prefix("audio/")?
        .parse()
        .ok()
}

/// Where a parted upload is assembled: `<prefix>staging/<sha256>/<session>`. Outside
/// `audio/`, so nothing there is ever mistaken for content; published under the content's
/// key only once its whole SHA-256 is checked.
pub fn staging_blob_key(prefix: &str, hash: &ContentHash, session: &SessionId) -> String {
    format!("{prefix}staging/{hash}/{session}")
}

/// The content and session a staging key names, if the key is one of ours.
pub fn session_from_staging_key(prefix: &str, key: &str) -> Option<(ContentHash, SessionId)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("staging/")?;
    let (hash, id) = rest.split_once('/')?;
    Some((hash.parse().ok()?, id.parse().ok()?))
}

/// Blob key for a snapshot too big for an index item: `<prefix>snapshots/<message>-<sha256>`.
/// One key per (message, content), so two racing creates of one id never share an object.
pub fn snapshot_blob_key(prefix: &str, id: &MessageId, sha256: &ContentHash) -> String {
    format!("{prefix}snapshots/{id}-{sha256}")
}

/// The message a snapshot blob key names, if the key is one of ours.
pub fn message_from_snapshot_key(prefix: &str, key: &str) -> Option<MessageId> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("snapshots/")?;
    let (id, hash) = rest.rsplit_once('-')?;
    hash.parse::<ContentHash>().ok()?;
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_keys_round_trip_and_foreign_keys_are_refused() {
        let h = ContentHash::of(b"x");
        let k = blob_key("prod/", &h);
        assert_eq!(k, format!("prod/audio/{h}"));
        assert_eq!(hash_from_blob_key("prod/", &k), Some(h));
        assert_eq!(hash_from_blob_key("dev/", &k), None);
        assert_eq!(
            hash_from_blob_key("prod/", &format!("prod/audio/{h}.mp3")),
            None
        );
        assert_eq!(hash_from_blob_key("prod/", "prod/other/x"), None);
    }

    #[test]
    fn snapshot_keys_round_trip() {
        let h = ContentHash::of(b"{}");
        let id: MessageId = "0190-a_b".parse().unwrap();
        let k = snapshot_blob_key("prod/", &id, &h);
        assert_eq!(message_from_snapshot_key("prod/", &k), Some(id));
        assert_eq!(
            message_from_snapshot_key("prod/", &blob_key("prod/", &h)),
            None
        );
        assert_eq!(
            message_from_snapshot_key("prod/", "prod/snapshots/x-y"),
            None
        );
        assert!(log_sk(9) < log_sk(10));
        assert_eq!(seq_of_log_sk(&log_sk(42)), Some(42));
    }

    #[test]
    fn stats_shards_each_have_a_partition_and_the_legacy_one_is_still_read() {
        let parts = stats_partitions(16);
        assert_eq!(parts.len(), 17);
        assert_eq!(parts[0], STATS_PK);
        let shard_pks: std::collections::BTreeSet<_> = (0..16).map(|s| stats_shard(s).pk).collect();
        assert_eq!(shard_pks.len(), 16, "one partition per shard");
        for pk in &shard_pks {
            assert!(parts.contains(pk), "{pk} is read");
            assert!(is_stats_pk(pk));
        }
        assert!(is_stats_pk(STATS_PK));
        assert!(!is_stats_pk("STATSX"));
        assert!(!is_stats_pk("STATS#"));
        assert!(!is_stats_pk("AUDIO#00"));
        assert_eq!(stats_partitions(0).len(), 2, "at least one shard");
        assert_eq!(
            stats_partitions(u64::MAX).len() as u64,
            MAX_STATS_SHARDS + 1
        );
    }

    #[test]
    fn work_keys_sort_by_due_time() {
        let a = work(5, &Key::new("AUDIO#b", "META"));
        let b = work(40, &Key::new("AUDIO#a", "META"));
        assert!(a.sk < b.sk);
        assert!(a.sk <= format!("{}~", work_due_prefix(5)));
    }
}
