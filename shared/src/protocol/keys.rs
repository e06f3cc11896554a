//! Where each record lives in the index and in the blob store. One place, so every adapter
//! and every flow agrees.

use crate::domain::{ContentHash, Millis, ReferenceId, SessionId, UserId};
use crate::ports::Key;

pub const STATS_PK: &str = "STATS";
pub const WORK_PK: &str = "WORK";

fn audio_pk(hash: &ContentHash) -> String {
    format!("AUDIO#{hash}")
}

pub fn audio(hash: &ContentHash) -> Key {
    Key::new(audio_pk(hash), "META")
}

pub fn reference(hash: &ContentHash, owner: &UserId, ref_id: &ReferenceId) -> Key {
    Key::new(audio_pk(hash), format!("REF#{owner}#{ref_id}"))
}

pub fn reference_owner(hash: &ContentHash, owner: &UserId, ref_id: &ReferenceId) -> Key {
    Key::new(format!("OWNER#{owner}"), format!("REF#{hash}#{ref_id}"))
}

pub fn holder(hash: &ContentHash, owner: &UserId) -> Key {
    Key::new(audio_pk(hash), format!("HOLDER#{owner}"))
}

pub fn session(hash: &ContentHash, id: &SessionId) -> Key {
    Key::new(audio_pk(hash), format!("SESSION#{id}"))
}

pub fn stats_shard(shard: u64) -> Key {
    Key::new(STATS_PK, format!("SHARD#{shard:03}"))
}

/// Work index entry: sorted by due time, unique per item.
pub fn work(due: Millis, of: &Key) -> Key {
    Key::new(
        WORK_PK,
        format!("{}#{}#{}", work_due_prefix(due), of.pk, of.sk),
    )
}

pub fn work_due_prefix(due: Millis) -> String {
    format!("{:016}", due.max(0))
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

pub fn session_uploader(id: &SessionId) -> String {
    format!("session:{id}")
}

pub const DIRECT_UPLOADER: &str = "direct";

pub fn session_from_uploader(uploader: Option<&str>) -> Option<SessionId> {
    uploader?.strip_prefix("session:")?.parse().ok()
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
    fn work_keys_sort_by_due_time() {
        let a = work(5, &Key::new("AUDIO#b", "META"));
        let b = work(40, &Key::new("AUDIO#a", "META"));
        assert!(a.sk < b.sk);
        assert!(a.sk <= format!("{}~", work_due_prefix(5)));
    }
}
