//! The protocol's invariants, checked from a dump of the index and the blob store. Used by
//! the simulation after every step, and by the integration tests at the end.

use std::collections::{BTreeMap, HashMap};

use super::codec::{direct_refs, open_shards, CountShard};
use super::keys;
use crate::domain::{
    AudioRecord, AudioState, ContentHash, EntryState, LibraryItemRecord, MessageRecord,
    ReferenceId, ReferenceRecord, ReferenceState, SessionRecord, SessionState, SnapshotStore,
    UserQuota,
};
use crate::ports::{Item, Key, ObjectMeta};

/// An index item as the invariants read it, decoded once. The simulation keeps these between
/// checks (an item's version changes on every write), so a check decodes only what changed.
#[derive(Debug, Clone)]
pub enum Record {
    Audio(AudioRecord),
    Reference(ReferenceRecord),
    /// One of an audio's reference-count shards.
    CountShard(CountShard),
    Message(MessageRecord),
    LibraryItem(LibraryItemRecord),
    Session(SessionRecord),
    Quota {
        user: String,
        quota: UserQuota,
    },
    /// An item of a kind above whose body does not decode: a violation in itself.
    Undecodable(String),
    /// An item no invariant reads.
    Other,
}

/// The kinds of item the invariants read, told by their keys: the one list of what `safety`
/// and `settled` look at.
#[derive(Clone, Copy)]
enum Kind {
    Audio,
    Reference,
    CountShard,
    Message,
    LibraryItem,
    Session,
    Quota,
}

fn kind_of(key: &Key) -> Option<Kind> {
    let (pk, sk) = (key.pk.as_str(), key.sk.as_str());
    if sk == "META" && pk.starts_with("AUDIO#") {
        Some(Kind::Audio)
    } else if sk.starts_with("REF#") {
        Some(Kind::Reference)
    } else if sk.starts_with("COUNT#") && pk.starts_with("AUDIO#") {
        Some(Kind::CountShard)
    } else if sk == "META" && pk.starts_with("MSG#") {
        Some(Kind::Message)
    } else if sk.starts_with("ITEM#") && pk.starts_with("LIB#") {
        Some(Kind::LibraryItem)
    } else if sk.starts_with("SESSION#") {
        Some(Kind::Session)
    } else if sk == "QUOTA" {
        Some(Kind::Quota)
    } else {
        None
    }
}

/// Whether the invariants read the item at `key`: a check that saw none of these items
/// change (nor the counters or the objects) would give the same answer again.
pub fn reads(key: &Key) -> bool {
    kind_of(key).is_some()
}

impl Record {
    pub fn decode(item: &Item) -> Self {
        let decoded = match kind_of(&item.key) {
            Some(Kind::Audio) => decode(item, "audio record", Record::Audio),
            Some(Kind::Reference) => decode(item, "reference", Record::Reference),
            Some(Kind::CountShard) => decode(item, "count shard", Record::CountShard),
            Some(Kind::Message) => decode(item, "message", Record::Message),
            Some(Kind::LibraryItem) => decode(item, "library item", Record::LibraryItem),
            Some(Kind::Session) => decode(item, "session", Record::Session),
            Some(Kind::Quota) => {
                let user = item.key.pk.trim_start_matches("USER#").to_owned();
                decode(item, "quota", |quota| Record::Quota { user, quota })
            }
            None => Ok(Record::Other),
        };
        decoded.unwrap_or_else(Record::Undecodable)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    item: &Item,
    what: &str,
    wrap: impl FnOnce(T) -> Record,
) -> Result<Record, String> {
    serde_json::from_str(&item.body)
        .map(wrap)
        .map_err(|e| format!("undecodable {what} {}: {e}", item.key))
}

/// Safety: must hold after every step, whatever failed.
pub fn safety(
    items: &[Item],
    objects: &[ObjectMeta],
    counters: &BTreeMap<String, i64>,
    prefix: &str,
) -> Vec<String> {
    let records: Vec<Record> = items.iter().map(Record::decode).collect();
    safety_of(
        &records.iter().collect::<Vec<_>>(),
        objects,
        counters,
        prefix,
    )
}

/// `safety` over records already decoded.
pub fn safety_of(
    records: &[&Record],
    objects: &[ObjectMeta],
    counters: &BTreeMap<String, i64>,
    prefix: &str,
) -> Vec<String> {
    let mut bad = Vec::new();
    let objects: HashMap<&str, &ObjectMeta> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut audio: HashMap<ContentHash, &AudioRecord> = HashMap::new();
    let mut live: HashMap<ContentHash, u64> = HashMap::new();
    let mut shards: HashMap<ContentHash, Vec<&CountShard>> = HashMap::new();
    for record in records {
        match record {
            Record::Audio(a) => {
                audio.insert(a.hash, a);
            }
            Record::CountShard(s) => shards.entry(s.hash).or_default().push(s),
            Record::Reference(r) if r.state == ReferenceState::Live => {
                *live.entry(r.hash).or_default() += 1
            }
            Record::Undecodable(e) => bad.push(e.clone()),
            _ => {}
        }
    }
    let (mut active, mut stored, mut pending, mut deleting) = (0i64, 0i64, 0i64, 0i64);
    let (mut unreferenced, mut unreferenced_bytes) = (0i64, 0i64);
    for (hash, a) in &audio {
        let n = live.get(hash).copied().unwrap_or(0);
        // The record's own count plus its open shards' counts; the record holds one token
        // per open shard, and an open shard is of the record's generation.
        let open: Vec<&CountShard> = shards
            .get(hash)
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| s.count > 0)
            .collect();
        let counted = direct_refs(a.refs) + open.iter().map(|s| s.count).sum::<u64>();
        if counted != n {
            bad.push(format!(
                "{hash}: count {counted} ({} on the record, {} open shards) but {n} live references",
                direct_refs(a.refs),
                open.len()
            ));
        }
        if open_shards(a.refs) != open.len() as u64 {
            bad.push(format!(
                "{hash}: the record counts {} open shards, {} are open",
                open_shards(a.refs),
                open.len()
            ));
        }
        if open.iter().any(|s| s.generation != a.generation) {
            bad.push(format!("{hash}: an open count shard of another generation"));
        }
        match a.state() {
            AudioState::Active => {
                active += 1;
                stored += a.size as i64;
                if n == 0 {
                    unreferenced += 1;
                    unreferenced_bytes += a.size as i64;
                }
                let key = keys::blob_key(prefix, hash);
                match (objects.get(key.as_str()), a.blob_version()) {
                    (Some(o), Some(v)) if o.version == v => {
                        if o.sha256 != Some(*hash) {
                            bad.push(format!("{hash}: stored bytes do not hash to the key"));
                        }
                        if o.size != a.size {
                            bad.push(format!(
                                "{hash}: size {} recorded, {} stored",
                                a.size, o.size
                            ));
                        }
                    }
                    _ => bad.push(format!("{hash}: active but its object version is missing")),
                }
            }
            AudioState::PendingUpload => pending += 1,
            AudioState::Deleting => deleting += 1,
            AudioState::Gone => {}
        }
        if a.state() != AudioState::Active && n > 0 {
            bad.push(format!(
                "{hash}: {n} live references to {} audio",
                a.state().as_str()
            ));
        }
    }
    for hash in shards.keys() {
        if !audio.contains_key(hash) {
            bad.push(format!("{hash}: count shards of no audio record"));
        }
    }
    for (hash, n) in &live {
        if !audio.contains_key(hash) {
            bad.push(format!("{hash}: {n} live references to no audio record"));
        }
    }
    bad.extend(holders(records, &objects));
    bad.extend(open_session_quotas(records));
    let total_live: i64 = live.values().map(|n| *n as i64).sum();
    let referenced: i64 = live
        .iter()
        .map(|(h, n)| *n as i64 * audio.get(h).map_or(0, |a| a.size as i64))
        .sum();
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    for (name, want) in [
        ("active_files", active),
        ("stored_bytes", stored),
        ("live_refs", total_live),
        ("referenced_bytes", referenced),
        ("pending", pending),
        ("deleting", deleting),
        ("unreferenced_files", unreferenced),
        ("unreferenced_bytes", unreferenced_bytes),
    ] {
        if c(name) != want {
            bad.push(format!(
                "stats {name} = {} but the records say {want}",
                c(name)
            ));
        }
    }
    bad
}

/// Each user's quota counts exactly their sessions still open.
fn open_session_quotas(records: &[&Record]) -> Vec<String> {
    let mut open: BTreeMap<String, u32> = BTreeMap::new();
    let mut counted: BTreeMap<String, u32> = BTreeMap::new();
    let mut bad = Vec::new();
    for record in records {
        match record {
            Record::Session(s) if s.state == SessionState::Open => {
                *open.entry(s.owner.to_string()).or_default() += 1
            }
            Record::Quota { user, quota } => {
                counted.insert(user.clone(), quota.open_sessions);
            }
            _ => {}
        }
    }
    for user in open
        .keys()
        .chain(counted.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (o, c) = (
            open.get(user).copied().unwrap_or(0),
            counted.get(user).copied().unwrap_or(0),
        );
        if o != c {
            bad.push(format!(
                "{user}: quota counts {c} open sessions, {o} are open"
            ));
        }
    }
    bad
}

/// Messages and library items hold exactly the references they name: a live holder has its
/// live reference (so its audio is active, by the checks above), and a live managed
/// reference has its live holder. A live message's snapshot object exists.
fn holders(records: &[&Record], objects: &HashMap<&str, &ObjectMeta>) -> Vec<String> {
    let mut bad = Vec::new();
    let mut refs: HashMap<(ContentHash, String, String), bool> = HashMap::new();
    let mut wanted: Vec<(ContentHash, String, String)> = Vec::new();
    for record in records {
        match record {
            Record::Reference(r) if r.ref_id.is_managed() => {
                refs.insert(
                    (r.hash, r.owner.to_string(), r.ref_id.to_string()),
                    r.state == ReferenceState::Live,
                );
            }
            Record::Message(m) if m.state == EntryState::Live => {
                if let Some(a) = &m.audio {
                    let id = ReferenceId::of_message(&m.id).to_string();
                    wanted.push((a.content_hash, m.author.to_string(), id));
                }
                if let SnapshotStore::Blob { key, version } = &m.snapshot {
                    if objects.get(key.as_str()).map(|o| &o.version) != Some(version) {
                        bad.push(format!("message {}: snapshot object missing", m.id));
                    }
                }
            }
            Record::LibraryItem(i) if i.state == EntryState::Live => {
                let id = ReferenceId::of_library_item(&i.id, i.incarnation).to_string();
                wanted.push((i.content_hash, i.owner.to_string(), id));
            }
            _ => {}
        }
    }
    for w in &wanted {
        if refs.remove(w) != Some(true) {
            bad.push(format!(
                "{} holds no live reference {} on {}",
                w.1, w.2, w.0
            ));
        }
    }
    for ((hash, owner, id), live) in refs {
        if live {
            bad.push(format!(
                "{owner}: live reference {id} on {hash} with no live holder"
            ));
        }
    }
    bad
}

/// Liveness: after faults stop and the reconciler has run with the clock past every due
/// time, nothing is in flight and nothing is orphaned.
pub fn settled(items: &[Item], objects: &[ObjectMeta], prefix: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut active_versions = HashMap::new();
    for item in items {
        match Record::decode(item) {
            Record::Audio(a) => match a.state() {
                AudioState::PendingUpload | AudioState::Deleting => {
                    bad.push(format!("{}: stuck in {}", a.hash, a.state().as_str()))
                }
                AudioState::Active if a.refs == 0 => {
                    bad.push(format!("{}: active with no references", a.hash))
                }
                AudioState::Active => {
                    if let Some(v) = a.blob_version() {
                        active_versions.insert(keys::blob_key(prefix, &a.hash), v.to_owned());
                    }
                }
                AudioState::Gone => {}
            },
            Record::Message(m) => {
                if let SnapshotStore::Blob { key, version } = m.snapshot {
                    if m.state == EntryState::Deleted {
                        bad.push(format!("message {}: snapshot not purged", m.id));
                    }
                    active_versions.insert(key, version);
                }
            }
            Record::Session(s) if s.state == SessionState::Open => {
                bad.push(format!("session {} still open", s.id));
            }
            _ => {}
        }
    }
    for o in objects {
        if active_versions.get(&o.key) != Some(&o.version) {
            bad.push(format!("orphaned object {} version {}", o.key, o.version));
        }
    }
    bad
}
