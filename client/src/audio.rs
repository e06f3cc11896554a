//! The audio cache: files named by their SHA-256 under `audio/`, with size and access times
//! in the `audio` table (start-up never scans the folder). (Being written.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use audio_dedup_core::ContentHash;

use crate::error::ClientError;

/// Transfer progress: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

#[derive(Clone)]
pub(crate) struct AudioState {
    pub(crate) dir: PathBuf,
    /// Files in use (handed out by `playable_path` and not yet released): never evicted.
    pub(crate) pins: Arc<Mutex<HashMap<ContentHash, usize>>>,
}

impl AudioState {
    pub(crate) fn new(data_dir: &Path) -> Result<Self, ClientError> {
        let dir = data_dir.join("audio");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            pins: Arc::default(),
        })
    }
}
