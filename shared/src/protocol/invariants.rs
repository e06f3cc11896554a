//! The protocol's invariants, checked from a dump of the index and the blob store. Used by
//! the simulation after every step, and by the integration tests at the end.

use std::collections::{BTreeMap, HashMap};

use super::keys;
use crate::domain::{
    AudioRecord, AudioState, ContentHash, EntryState, LibraryItemRecord, MessageRecord,
    ReferenceId, ReferenceRecord, ReferenceState, SessionRecord, SessionState, SnapshotStore,
    UserQuota,
};
use crate::ports::{Item, ObjectMeta};

/// Safety: must hold after every step, whatever failed.
pub fn safety(
    items: &[Item],
    objects: &[ObjectMeta],
    counters: &BTreeMap<String, i64>,
    prefix: &str,
) -> Vec<String> {
    let mut bad = Vec::new();
    let objects: HashMap<&str, &ObjectMeta> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut audio: HashMap<ContentHash, AudioRecord> = HashMap::new();
    let mut live: HashMap<ContentHash, u64> = HashMap::new();
    for item in items {
        if item.key.sk == "META" && item.key.pk.starts_with("AUDIO#") {
            match serde_json::from_str::<AudioRecord>(&item.body) {
                Ok(a) => {
                    audio.insert(a.hash, a);
                }
                Err(e) => bad.push(format!("undecodable audio record {}: {e}", item.key)),
            }
        } else if item.key.sk.starts_with("REF#") {
            match serde_json::from_str::<ReferenceRecord>(&item.body) {
                Ok(r) if r.state == ReferenceState::Live => *live.entry(r.hash).or_default() += 1,
                Ok(_) => {}
                Err(e) => bad.push(format!("undecodable reference {}: {e}", item.key)),
            }
        }
    }
    let (mut active, mut stored, mut pending, mut deleting) = (0i64, 0i64, 0i64, 0i64);
    let (mut unreferenced, mut unreferenced_bytes) = (0i64, 0i64);
    for (hash, a) in &audio {
        let n = live.get(hash).copied().unwrap_or(0);
        if a.refs != n {
            bad.push(format!("{hash}: count {} but {n} live references", a.refs));
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
    for (hash, n) in &live {
        if !audio.contains_key(hash) {
            bad.push(format!("{hash}: {n} live references to no audio record"));
        }
    }
    bad.extend(holders(items, &objects));
    bad.extend(open_session_quotas(items));
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
fn open_session_quotas(items: &[Item]) -> Vec<String> {
    let mut open: BTreeMap<String, u32> = BTreeMap::new();
    let mut counted: BTreeMap<String, u32> = BTreeMap::new();
    let mut bad = Vec::new();
    for item in items {
        if item.key.sk.starts_with("SESSION#") {
            match serde_json::from_str::<SessionRecord>(&item.body) {
                Ok(s) if s.state == SessionState::Open => {
                    *open.entry(s.owner.to_string()).or_default() += 1
                }
                Ok(_) => {}
                Err(e) => bad.push(format!("undecodable session {}: {e}", item.key)),
            }
        } else if item.key.sk == "QUOTA" {
            match serde_json::from_str::<UserQuota>(&item.body) {
                Ok(q) => {
                    let user = item.key.pk.trim_start_matches("USER#").to_owned();
                    counted.insert(user, q.open_sessions);
                }
                Err(e) => bad.push(format!("undecodable quota {}: {e}", item.key)),
            }
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
fn holders(items: &[Item], objects: &HashMap<&str, &ObjectMeta>) -> Vec<String> {
    let mut bad = Vec::new();
    let mut refs: HashMap<(ContentHash, String, String), bool> = HashMap::new();
    let mut wanted: Vec<(ContentHash, String, String)> = Vec::new();
    for item in items {
        if item.key.sk.starts_with("REF#") {
            if let Ok(r) = serde_json::from_str::<ReferenceRecord>(&item.body) {
                if r.ref_id.is_managed() {
                    refs.insert(
                        (r.hash, r.owner.to_string(), r.ref_id.to_string()),
                        r.state == ReferenceState::Live,
                    );
                }
            }
        } else if item.key.pk.starts_with("MSG#") && item.key.sk == "META" {
            match serde_json::from_str::<MessageRecord>(&item.body) {
                Ok(m) if m.state == EntryState::Live => {
                    if let Some(a) = m.audio {
                        let id = ReferenceId::of_message(&m.id).to_string();
                        wanted.push((a.content_hash, m.author.to_string(), id));
                    }
                    if let SnapshotStore::Blob { key, version } = &m.snapshot {
                        if objects.get(key.as_str()).map(|o| &o.version) != Some(version) {
                            bad.push(format!("message {}: snapshot object missing", m.id));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => bad.push(format!("undecodable message {}: {e}", item.key)),
            }
        } else if item.key.pk.starts_with("LIB#") && item.key.sk.starts_with("ITEM#") {
            match serde_json::from_str::<LibraryItemRecord>(&item.body) {
                Ok(i) if i.state == EntryState::Live => {
                    let id = ReferenceId::of_library_item(&i.id, i.incarnation).to_string();
                    wanted.push((i.content_hash, i.owner.to_string(), id));
                }
                Ok(_) => {}
                Err(e) => bad.push(format!("undecodable library item {}: {e}", item.key)),
            }
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
        if item.key.sk == "META" && item.key.pk.starts_with("AUDIO#") {
            if let Ok(a) = serde_json::from_str::<AudioRecord>(&item.body) {
                match a.state() {
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
                }
            }
        } else if item.key.pk.starts_with("MSG#") && item.key.sk == "META" {
            if let Ok(m) = serde_json::from_str::<MessageRecord>(&item.body) {
                if let SnapshotStore::Blob { key, version } = m.snapshot {
                    if m.state == EntryState::Deleted {
                        bad.push(format!("message {}: snapshot not purged", m.id));
                    }
                    active_versions.insert(key, version);
                }
            }
        } else if item.key.sk.starts_with("SESSION#") {
            if let Ok(s) = serde_json::from_str::<SessionRecord>(&item.body) {
                if s.state == SessionState::Open {
                    bad.push(format!("session {} still open", s.id));
                }
            }
        }
    }
    for o in objects {
        if active_versions.get(&o.key) != Some(&o.version) {
            bad.push(format!("orphaned object {} version {}", o.key, o.version));
        }
    }
    bad
}
