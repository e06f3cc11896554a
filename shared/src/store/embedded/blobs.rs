//! A versioned blob store on the local file system, emulating an S3 bucket with versioning:
//! `objects/<parent>/~<fan>/<name>/<version>~<sha256>~<uploader>` for key `<parent>/<name>`,
//! `<fan>` being the name's first two bytes ([`object_dir`]). Writes go to `tmp/`, are
//! fsynced, linked into place and the folder fsynced. At most one current object per key
//! (if-none-match). The fan-out lets a listing page read only the folders its keys are in.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use super::signing::UrlSigner;
use crate::domain::{hash_reader, ContentHash, Part, SignedRequest};
use crate::error::StoreError;
use crate::ports::{
    BlobBody, BlobEvent, BlobStore, Clock, MultipartRef, ObjectMeta, ObjectPage, PresignPart,
    PresignPut, PutOutcome, PutRequest, StartParts,
};

#[derive(Clone)]
pub struct FsBlobStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) root: PathBuf,
    signer: UrlSigner,
    /// Serialises the check-then-rename of puts and deletes (the if-none-match guarantee).
    pub(super) lock: Mutex<()>,
    events: Option<UnboundedSender<BlobEvent>>,
    sequencer: AtomicU64,
    pub(super) clock: Arc<dyn Clock>,
    /// Multipart uploads being written to (`parts.rs`).
    pub(super) uploads: super::parts::Uploads,
}

/// Written once the store is in the fan-out layout (new, or migrated from one folder per key).
const LAYOUT_MARK: &str = ".layout-fanout";

/// The folder holding `key`'s versions, under the store's `objects/` folder.
pub fn object_dir(objects: &Path, key: &str) -> PathBuf {
    let (parent, name) = key.rsplit_once('/').unwrap_or(("", key));
    let mut dir = objects.to_path_buf();
    if !parent.is_empty() {
        dir.push(parent);
    }
    dir.push(format!("~{}", fan_of(name)));
    dir.push(name);
    dir
}

/// A name's first two bytes (keys are ASCII: `valid_key`).
fn fan_of(name: &str) -> &str {
    &name[..name.len().min(2)]
}

/// Keys are ours (`<prefix>audio/<hash>`), but signed URLs carry them back from clients, so
/// they are checked before they become paths: plain segments only.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

fn bad_key(key: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: "not a valid blob key".into(),
    }
}

pub(super) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub(super) struct Found {
    pub(super) path: PathBuf,
    pub(super) meta: ObjectMeta,
}

impl FsBlobStore {
    pub fn open(
        root: &Path,
        signer: UrlSigner,
        events: Option<UnboundedSender<BlobEvent>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root.join("objects"))?;
        migrate_to_fanout(&root.join("objects"))?;
        let tmp = root.join("tmp");
        // Leftover temp files are from requests that died mid-body: nobody owns them.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let start = clock.now_ms().max(0) as u64;
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                signer,
                lock: Mutex::new(()),
                events,
                sequencer: AtomicU64::new(start.saturating_mul(1000)),
                clock,
                uploads: Default::default(),
            }),
        })
    }

    pub fn signer(&self) -> &UrlSigner {
        &self.inner.signer
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Where a body is spooled before a put links it into place (same filesystem).
    pub fn spool_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    /// The file holding one exact version, for serving a signed GET.
    pub async fn version_path(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<PathBuf>, StoreError> {
        let inner = self.inner.clone();
        let (key, version) = (key.to_owned(), version.to_owned());
        blocking(move || {
            Ok(inner
                .find(&key)?
                .filter(|f| f.meta.version == version)
                .map(|f| f.path))
        })
        .await
    }

    /// Sends a created event for a version just written.
    pub(super) fn emit_created(&self, key: &str, version: &str) {
        let sequencer = self.next_sequencer();
        self.emit(BlobEvent::Created {
            key: key.to_owned(),
            version: version.to_owned(),
            sequencer,
        });
    }

    fn emit(&self, event: BlobEvent) {
        if let Some(tx) = &self.inner.events {
            let _ = tx.send(event);
        }
    }

    fn next_sequencer(&self) -> String {
        format!(
            "{:020X}",
            self.inner.sequencer.fetch_add(1, Ordering::SeqCst)
        )
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("blob task failed: {e}")))?
}

impl Inner {
    pub(super) fn dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !valid_key(key) {
            return Err(bad_key(key));
        }
        Ok(object_dir(&self.root.join("objects"), key))
    }

    pub(super) fn find(&self, key: &str) -> Result<Option<Found>, StoreError> {
        self.find_in(&self.dir(key)?, key)
    }

    fn find_in(&self, dir: &Path, key: &str) -> Result<Option<Found>, StoreError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.splitn(3, '~');
            let (Some(version), Some(sha), Some(uploader)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let md = entry.metadata()?;
            let modified = md
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            return Ok(Some(Found {
                path: entry.path(),
                meta: ObjectMeta {
                    key: key.to_owned(),
                    version: version.to_owned(),
                    size: md.len(),
                    sha256: sha.parse().ok(),
                    uploader: Some(uploader.to_owned()),
                    last_modified: modified,
                },
            }));
        }
        Ok(None)
    }

    /// Appends to `out`, in key order, the objects under `dir` (keys `rel/...`) that come
    /// after the cursor `after` (its components still to match here), until `limit`. Reads
    /// this folder, and only the fan-out folders that can hold keys past the cursor.
    fn collect(
        &self,
        dir: &Path,
        rel: &str,
        mut after: Option<&[&str]>,
        limit: usize,
        out: &mut Vec<ObjectMeta>,
        depth: usize,
    ) -> Result<(), StoreError> {
        if depth > 8 || out.len() >= limit {
            return Ok(());
        }
        // By fan: whether it has a fan-out folder (keys named here), and the subfolders
        // whose names share it (keys further down).
        let mut groups: std::collections::BTreeMap<String, (bool, Vec<String>)> =
            Default::default();
        for entry in read_dir_if_any(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_prefix('~') {
                Some(fan) => groups.entry(fan.to_owned()).or_default().0 = true,
                None => groups
                    .entry(fan_of(&name).to_owned())
                    .or_default()
                    .1
                    .push(name),
            }
        }
        for (fan, (has_fan, subs)) in groups {
            if out.len() >= limit {
                break;
            }
            if after.is_some_and(|a| fan.as_str() < fan_of(a[0])) {
                continue; // every key in this group sorts before the cursor
            }
            // (name, is_subfolder): a key sorts before the keys below a folder of its name.
            let mut items: Vec<(String, bool)> = subs.into_iter().map(|n| (n, true)).collect();
            if has_fan {
                for entry in read_dir_if_any(&dir.join(format!("~{fan}")))? {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        items.push((entry.file_name().to_string_lossy().into_owned(), false));
                    }
                }
            }
            items.sort();
            for (name, is_sub) in items {
                if out.len() >= limit {
                    break;
                }
                let below = match after {
                    None => None,
                    Some(a) => match name.as_str().cmp(a[0]) {
                        std::cmp::Ordering::Less => continue,
                        std::cmp::Ordering::Equal if is_sub => a.get(1..).filter(|r| !r.is_empty()),
                        // The cursor itself, or a key before the cursor's folder of that name.
                        std::cmp::Ordering::Equal => continue,
                        std::cmp::Ordering::Greater => None,
                    },
                };
                after = None; // everything after this item sorts after the cursor
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if is_sub {
                    self.collect(&dir.join(&name), &key, below, limit, out, depth + 1)?;
                } else if let Some(found) =
                    self.find_in(&dir.join(format!("~{fan}")).join(&name), &key)?
                {
                    out.push(found.meta);
                }
            }
        }
        Ok(())
    }
}

fn read_dir_if_any(dir: &Path) -> std::io::Result<Vec<std::io::Result<std::fs::DirEntry>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Moves a store from one folder per key (`objects/<key>/`) to the fan-out layout, once.
fn migrate_to_fanout(objects: &Path) -> Result<(), StoreError> {
    let mark = objects.join(LAYOUT_MARK);
    if mark.exists() {
        return Ok(());
    }
    let mut old = Vec::new();
    old_key_dirs(objects, "", 0, &mut old)?;
    for key in old {
        let from = objects.join(&key);
        let to = object_dir(objects, &key);
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::rename(entry.path(), to.join(entry.file_name()))?;
            }
        }
        fsync_dir(&to)?;
        let _ = std::fs::remove_dir(&from);
    }
    std::fs::write(&mark, b"")?;
    fsync_dir(objects)?;
    Ok(())
}

/// Keys in the old layout: folders holding version files, not under a fan-out folder.
fn old_key_dirs(dir: &Path, rel: &str, depth: usize, out: &mut Vec<String>) -> std::io::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() || name.starts_with('~') {
            continue;
        }
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let has_file = std::fs::read_dir(entry.path())?
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_file()));
        if has_file {
            out.push(child.clone());
        }
        old_key_dirs(&entry.path(), &child, depth + 1, out)?;
    }
    Ok(())
}

impl BlobStore for FsBlobStore {
    async fn put_if_absent(&self, req: PutRequest) -> Result<PutOutcome, StoreError> {
        let inner = self.inner.clone();
        let key = req.key.clone();
        let version = uuid::Uuid::now_v7().simple().to_string();
        let out = {
            let version = version.clone();
            blocking(move || {
                let dir = inner.dir(&req.key)?;
                // The body becomes a synced temp file first (spooled bodies already are).
                let tmp = match &req.body {
                    BlobBody::File(p) => {
                        std::fs::File::open(p)?.sync_all()?;
                        p.clone()
                    }
                    BlobBody::Bytes(b) => {
                        if ContentHash::of(b) != req.sha256 || b.len() as u64 != req.size {
                            return Err(StoreError::Corrupt {
                                key: req.key,
                                reason: "body does not match its checksum".into(),
                            });
                        }
                        let p = inner.root.join("tmp").join(format!("{version}.part"));
                        let mut f = std::fs::File::create(&p)?;
                        f.write_all(b)?;
                        f.sync_all()?;
                        p
                    }
                };
                let _guard = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
                if inner.find(&req.key)?.is_some() {
                    if matches!(req.body, BlobBody::Bytes(_)) {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    return Ok(PutOutcome::AlreadyExists);
                }
                std::fs::create_dir_all(&dir)?;
                let name = format!("{version}~{}~{}", req.sha256, req.uploader);
                // A link, not a rename: a caller's spooled file stays valid for its retries;
                // the caller removes its temp name.
                std::fs::hard_link(&tmp, dir.join(name))?;
                if matches!(req.body, BlobBody::Bytes(_)) {
                    let _ = std::fs::remove_file(&tmp);
                }
                fsync_dir(&dir)?;
                Ok(PutOutcome::Created { version })
            })
            .await?
        };
        if let PutOutcome::Created { version } = &out {
            let sequencer = self.next_sequencer();
            self.emit(BlobEvent::Created {
                key,
                version: version.clone(),
                sequencer,
            });
        }
        Ok(out)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || Ok(inner.find(&key)?.map(|f| f.meta))).await
    }

    async fn delete_version(&self, key: &str, version: &str) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let (k, v) = (key.to_owned(), version.to_owned());
        let removed = blocking(move || {
            let _guard = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
            match inner.find(&k)? {
                Some(found) if found.meta.version == v => {
                    std::fs::remove_file(&found.path)?;
                    let dir = inner.dir(&k)?;
                    fsync_dir(&dir)?;
                    let _ = std::fs::remove_dir(&dir);
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await?;
        if removed {
            let sequencer = self.next_sequencer();
            self.emit(BlobEvent::Removed {
                key: key.to_owned(),
                version: version.to_owned(),
                sequencer,
            });
        }
        Ok(())
    }

    async fn read_range(
        &self,
        key: &str,
        version: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let inner = self.inner.clone();
        let (k, v) = (key.to_owned(), version.to_owned());
        blocking(move || {
            let Some(found) = inner.find(&k)?.filter(|f| f.meta.version == v) else {
                return Ok(None);
            };
            if offset > found.meta.size {
                return Ok(Some(Bytes::new()));
            }
            let len = length.min(found.meta.size - offset).min(16 * 1024 * 1024);
            let mut f = std::fs::File::open(&found.path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(Some(Bytes::from(buf)))
        })
        .await
    }

    async fn stream_sha256(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<ContentHash>, StoreError> {
        let inner = self.inner.clone();
        let (k, v) = (key.to_owned(), version.to_owned());
        blocking(move || {
            let Some(found) = inner.find(&k)?.filter(|f| f.meta.version == v) else {
                return Ok(None);
            };
            Ok(Some(hash_reader(std::fs::File::open(&found.path)?)?.0))
        })
        .await
    }

    async fn presign_put(&self, req: &PresignPut) -> Result<SignedRequest, StoreError> {
        let expires_at = self.inner.clock.now_ms() + req.expires_in.as_millis() as i64;
        Ok(self.inner.signer.sign_put(
            &req.key,
            &req.uploader,
            req.size,
            &req.sha256,
            req.content_type,
            expires_at,
        ))
    }

    async fn start_parts(&self, req: &StartParts) -> Result<String, StoreError> {
        self.start_parts_fs(req).await
    }

    async fn presign_part(&self, req: &PresignPart) -> Result<SignedRequest, StoreError> {
        let expires_at = self.inner.clock.now_ms() + req.expires_in.as_millis() as i64;
        Ok(self.inner.signer.sign_part(
            &req.upload.key,
            &req.upload.upload_id,
            req.part.number,
            req.part.size,
            &req.part.sha256,
            expires_at,
        ))
    }

    async fn list_parts(&self, upload: &MultipartRef) -> Result<Option<Vec<Part>>, StoreError> {
        self.list_parts_fs(upload).await
    }

    /// Moves the written parts in under the upload's key, named with their whole SHA-256
    /// (`parts.rs`).
    async fn finish_parts(
        &self,
        upload: &MultipartRef,
        parts: &[Part],
    ) -> Result<Option<ObjectMeta>, StoreError> {
        self.finish_parts_fs(upload, parts).await
    }

    async fn abort_parts(&self, upload: &MultipartRef) -> Result<(), StoreError> {
        self.abort_parts_fs(upload).await
    }

    /// A hard link of the source version's file: no bytes copied, the checksum it was
    /// stored with kept.
    async fn copy_if_absent(
        &self,
        from: &ObjectMeta,
        to_key: &str,
        _content_type: &'static str,
        uploader: &str,
    ) -> Result<PutOutcome, StoreError> {
        let inner = self.inner.clone();
        let (from, to, uploader) = (from.clone(), to_key.to_owned(), uploader.to_owned());
        let version = uuid::Uuid::now_v7().simple().to_string();
        let out = {
            let version = version.clone();
            blocking(move || {
                let _guard = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
                let Some(src) = inner
                    .find(&from.key)?
                    .filter(|f| f.meta.version == from.version)
                else {
                    return Err(StoreError::Corrupt {
                        key: from.key,
                        reason: "the copy source version is gone".into(),
                    });
                };
                if inner.find(&to)?.is_some() {
                    return Ok(PutOutcome::AlreadyExists);
                }
                let sha = src.meta.sha256.map(|h| h.to_string()).unwrap_or_default();
                let dir = inner.dir(&to)?;
                std::fs::create_dir_all(&dir)?;
                std::fs::hard_link(&src.path, dir.join(format!("{version}~{sha}~{uploader}")))?;
                fsync_dir(&dir)?;
                Ok(PutOutcome::Created { version })
            })
            .await?
        };
        if let PutOutcome::Created { version } = &out {
            let sequencer = self.next_sequencer();
            self.emit(BlobEvent::Created {
                key: to_key.to_owned(),
                version: version.clone(),
                sequencer,
            });
        }
        Ok(out)
    }

    async fn presign_get(
        &self,
        key: &str,
        version: &str,
        content_type: &'static str,
        ttl: Duration,
    ) -> Result<SignedRequest, StoreError> {
        let expires_at = self.inner.clock.now_ms() + ttl.as_millis() as i64;
        Ok(self
            .inner
            .signer
            .sign_get(key, version, content_type, expires_at))
    }

    /// In component order (a key before the keys below a folder of its name), at the cost of
    /// the folders the page's keys are in.
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<ObjectPage, StoreError> {
        let inner = self.inner.clone();
        let after = after.map(str::to_owned);
        blocking(move || {
            let cursor: Option<Vec<&str>> = after.as_deref().map(|a| a.split('/').collect());
            let mut objects = Vec::new();
            let root = inner.root.join("objects");
            inner.collect(&root, "", cursor.as_deref(), limit.max(1), &mut objects, 0)?;
            let next = (objects.len() >= limit.max(1))
                .then(|| objects.last().map(|m| m.key.clone()))
                .flatten();
            Ok(ObjectPage { objects, next })
        })
        .await
    }
}

#[cfg(test)]
mod listing_tests {
    use super::*;
    use crate::ports::SystemClock;

    fn store(root: &Path) -> FsBlobStore {
        let signer = UrlSigner::new("http://127.0.0.1:9", [1; 32]);
        FsBlobStore::open(root, signer, None, Arc::new(SystemClock)).expect("open store")
    }

    async fn put(s: &FsBlobStore, key: &str) {
        let body = Bytes::from(key.as_bytes().to_vec());
        let req = PutRequest {
            key: key.to_owned(),
            sha256: ContentHash::of(&body),
            size: body.len() as u64,
            body: BlobBody::Bytes(body),
            content_type: "audio/mpeg",
            uploader: "direct".into(),
        };
        s.put_if_absent(req).await.expect("put");
    }

    /// Keys in the order the store lists them: component by component, a key before the
    /// keys below a folder of its name.
    fn component_order(keys: &mut [String]) {
        keys.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    }

    #[tokio::test]
    async fn pages_cover_every_key_once_in_order_whatever_the_page_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = store(dir.path());
        let mut keys: Vec<String> = (0..60u32)
            .map(|i| format!("audio/{}", ContentHash::of(&i.to_le_bytes())))
            .chain((0..7).map(|i| format!("snapshots/m{i}-x")))
            // Names sharing a fan with a folder, and a key that is also a folder's name.
            .chain(["a", "a-b", "a/b", "a/b/c", "ab", "a.", "x"].map(String::from))
            .collect();
        for k in &keys {
            put(&s, k).await;
        }
        component_order(&mut keys);
        for page in [1, 2, 7, 100] {
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..200 {
                let p = s.list(after.as_deref(), page).await.expect("list");
                assert!(p.objects.len() <= page);
                got.extend(p.objects.iter().map(|m| m.key.clone()));
                match p.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(got, keys, "page size {page}");
        }
    }

    #[tokio::test]
    async fn a_store_in_the_old_layout_is_migrated_once_and_keeps_every_object() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hash = ContentHash::of(b"old");
        // One folder per key, as stores were written before the fan-out.
        let old = dir.path().join("objects/audio").join(hash.to_string());
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::write(old.join(format!("v1~{hash}~direct")), b"old").expect("write");
        let s = store(dir.path());
        let key = format!("audio/{hash}");
        let meta = s.head(&key).await.expect("head").expect("still stored");
        assert_eq!((meta.version.as_str(), meta.size), ("v1", 3));
        assert!(!old.exists(), "moved out of the old folder");
        let page = s.list(None, 10).await.expect("list");
        assert_eq!(page.objects.len(), 1);
        drop(s);
        // Opening again finds the mark and walks nothing.
        let s = store(dir.path());
        assert!(s.head(&key).await.expect("head").is_some());
    }
}
