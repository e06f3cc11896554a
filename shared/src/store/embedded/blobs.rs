//! A versioned blob store on the local file system, emulating an S3 bucket with versioning:
//! `objects/<key>/<version>~<sha256>~<uploader>`. Writes go to `tmp/`, are fsynced, linked
//! into place and the folder fsynced. At most one current object per key (if-none-match).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use super::signing::UrlSigner;
use crate::domain::{hash_reader, ContentHash, SignedRequest};
use crate::error::StoreError;
use crate::ports::{
    BlobBody, BlobEvent, BlobStore, Clock, ObjectMeta, ObjectPage, PresignPut, PutOutcome,
    PutRequest,
};

#[derive(Clone)]
pub struct FsBlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    signer: UrlSigner,
    /// Serialises the check-then-rename of puts and deletes (the if-none-match guarantee).
    lock: Mutex<()>,
    events: Option<UnboundedSender<BlobEvent>>,
    sequencer: AtomicU64,
    clock: Arc<dyn Clock>,
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

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

struct Found {
    path: PathBuf,
    meta: ObjectMeta,
}

impl FsBlobStore {
    pub fn open(
        root: &Path,
        signer: UrlSigner,
        events: Option<UnboundedSender<BlobEvent>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root.join("objects"))?;
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("blob task failed: {e}")))?
}

impl Inner {
    fn dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !valid_key(key) {
            return Err(bad_key(key));
        }
        Ok(self.root.join("objects").join(key))
    }

    fn find(&self, key: &str) -> Result<Option<Found>, StoreError> {
        let dir = self.dir(key)?;
        let entries = match std::fs::read_dir(&dir) {
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

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) -> std::io::Result<()> {
        if depth > 8 {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type()?.is_dir() {
                let has_file = std::fs::read_dir(entry.path())?
                    .flatten()
                    .any(|e| e.file_type().is_ok_and(|t| t.is_file()));
                if has_file {
                    out.push(child.clone());
                }
                self.walk(&entry.path(), &child, depth + 1, out)?;
            }
        }
        Ok(())
    }
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

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<ObjectPage, StoreError> {
        let inner = self.inner.clone();
        let after = after.map(str::to_owned);
        blocking(move || {
            let mut keys = Vec::new();
            inner.walk(&inner.root.join("objects"), "", 0, &mut keys)?;
            keys.sort();
            let mut objects = Vec::new();
            for k in keys
                .into_iter()
                .filter(|k| after.as_ref().is_none_or(|a| k > a))
            {
                if objects.len() == limit {
                    break;
                }
                if let Some(f) = inner.find(&k)? {
                    objects.push(f.meta);
                }
            }
            let next = (objects.len() == limit)
                .then(|| objects.last().map(|m| m.key.clone()))
                .flatten();
            Ok(ObjectPage { objects, next })
        })
        .await
    }
}
