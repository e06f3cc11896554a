//! Recordings waiting to be sent are the client's own: attaching a file to a message or a
//! library item copies it into `outbox/<sha256>` (hashing as it copies) before anything is
//! queued, and the queue uploads that copy. So the queue never depends on a path outside
//! the cache folder: the app may delete or re-record the file, and an app update that moves
//! the container (iOS) moves the copy with it, since the queue stores the path relative to
//! the cache folder. Once uploaded, the copy becomes the cached audio (`audio/<sha256>`,
//! under the audio cache's bounds); a copy no queued upload needs (its message cancelled or
//! discarded, a kill between copying and queueing) is removed when the client next opens
//! (`sweep_outbox`), and `clear_all` empties the folder.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use audio_dedup_core::{ContentHash, StreamingHasher};

use crate::error::ClientError;
use crate::Client;

pub(crate) const OUTBOX: &str = "outbox";

/// A recording copied into the outbox.
pub(crate) struct Staged {
    pub hash: ContentHash,
    /// Relative to the cache folder (`outbox/<sha256>`), as the queue stores it.
    pub relative: PathBuf,
}

impl Client {
    /// Copies `path` into the outbox, hashing as it copies; blocking work off the executor.
    pub(crate) async fn stage(&self, path: &Path) -> Result<Staged, ClientError> {
        let src = path.to_owned();
        self.blocking(move |c| c.stage_blocking(&src)).await
    }

    fn stage_blocking(&self, src: &Path) -> Result<Staged, ClientError> {
        let dir = self.cfg.data_dir.join(OUTBOX);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{}.tmp", uuid::Uuid::new_v4()));
        let copied = (|| -> Result<ContentHash, ClientError> {
            let mut from = std::fs::File::open(src)?;
            let mut to = std::fs::File::create(&tmp)?;
            let mut hasher = StreamingHasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = from.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                to.write_all(&buf[..n])?;
            }
            to.sync_all()?;
            Ok(hasher.finish().0)
        })();
        let hash = match copied {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let relative = Path::new(OUTBOX).join(hash.to_hex());
        // The same recording staged twice: one copy (same name, same bytes).
        std::fs::rename(&tmp, self.cfg.data_dir.join(&relative))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(Staged { hash, relative })
    }

    /// Where a queued upload's file is: paths the queue stored relative to the cache folder
    /// (staged copies) resolve against it; absolute ones (queued by older versions) as is.
    pub(crate) fn queued_path(&self, stored: &str) -> PathBuf {
        let p = Path::new(stored);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.cfg.data_dir.join(p)
        }
    }

    /// After an upload of `stored` was acknowledged: if no other queued upload needs the
    /// staged copy, it becomes the cached audio of `hash` (it is that content, verified).
    pub(crate) fn settle_staged(&self, stored: &str, hash: &ContentHash, size: u64) {
        if Path::new(stored).is_absolute() || self.outbox_needed().contains(stored) {
            return;
        }
        let path = self.queued_path(stored);
        if let Err(e) = self.insert_audio_file(hash, size, &path) {
            tracing::debug!(error = %e, "staged recording not kept in the cache");
            let _ = std::fs::remove_file(&path);
        }
    }

    /// The outbox paths queued uploads still need.
    fn outbox_needed(&self) -> std::collections::BTreeSet<String> {
        self.store
            .queue()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| match e.op {
                crate::QueuedOp::UploadAudio { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    }

    /// Removes staged copies that no queued upload needs (a message cancelled or discarded,
    /// a kill between staging and queueing). Lists only the outbox folder. At open only:
    /// later, a copy staged a moment ago may not be queued yet.
    pub(crate) fn sweep_outbox(&self) -> Result<usize, ClientError> {
        let dir = self.cfg.data_dir.join(OUTBOX);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let needed = self.outbox_needed();
        let mut removed = 0;
        for e in entries.flatten() {
            let stored = Path::new(OUTBOX).join(e.file_name());
            if !needed.contains(&stored.to_string_lossy().into_owned()) {
                std::fs::remove_file(e.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
