//! The audio cache: files named by their SHA-256 under `audio/`, with size, fetch time and
//! recency in the `audio` table, so start-up never scans the folder.
//!
//! - [`Client::playable_path`] answers, in order: the just-recorded local file when it still
//!   hashes to the content (no copy); the cached `audio/<sha256>`; or a download, streamed to
//!   `audio/<sha256>.part` while hashing, checked (size and SHA-256), fsynced, renamed into
//!   place and the folder fsynced, then recorded. A download cut short (no network, a kill,
//!   the caller dropping the future) leaves its `.part`; the next one asks only for the rest
//!   (`Range`), hashes what it had, and checks the whole at the end (bytes that do not match
//!   are deleted). `clear_audio` and `clear_all` remove partial downloads. A download asks `GET /v1/audio/{hash}`
//!   (the caller holds the content); refused (a recipient does not), it goes through a
//!   cached message carrying it. [`Client::message_audio`] goes through the message route
//!   directly (any member of the thread), [`Client::library_audio`] by the item's hash.
//! - Bounds, enforced on every insert (and by [`Client::evict_audio`]): entries fetched more
//!   than `audio_max_age` ago go, then the least recently used go until the total is at most
//!   `audio_max_bytes`. Recency is a counter in SQLite (like the snapshots'), bumped on every
//!   hit and insert, so the order is exact and survives restarts.
//! - A file handed out ([`AudioHandle`]) is pinned until the handle is dropped: eviction and
//!   [`Client::clear_audio`] skip it. Eviction runs under the pin lock and pinning takes the
//!   same lock, so a file is never removed between being pinned and being played. While
//!   files are pinned the total may stay above the bound; the next insert or `evict_audio`
//!   after they are released restores it.
//! - Cached content is immutable (it is named by its hash), so a hit never asks the server:
//!   cached audio stays playable after the server deleted its copy, and offline. An entry past
//!   its age is still served on a hit (it is stale for space, not for correctness).
//! - One download per hash at a time: a second caller waits and then finds the file cached.
//!
//! Downloads get `request_timeout` plus one second per 64 KiB of content (a total timeout
//! that a slow but working link still meets), and ask for `accept-encoding: identity` (a
//! decompressed body would lose its length, and with it the progress).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use audio_dedup_core::{AudioRender, AudioView, ContentHash, MessageId, StreamingHasher, ThreadId};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ClientError};
use crate::updates::{Direction, Update, Updates};
use crate::Client;

/// Transfer progress: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

type Pins = Arc<Mutex<HashMap<ContentHash, usize>>>;
type Turns = Arc<Mutex<HashMap<ContentHash, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Clone)]
pub(crate) struct AudioState {
    pub(crate) dir: PathBuf,
    /// Files in use (handed out by `playable_path` and not yet released): never evicted.
    pub(crate) pins: Pins,
    /// One writer of `audio/<hash>` at a time, per hash (downloads, repairs, inserts).
    turns: Turns,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AudioState {
    /// Creates the folder if needed. Never lists it: what is cached is in the `audio` table.
    pub(crate) fn new(data_dir: &Path) -> Result<Self, ClientError> {
        let dir = data_dir.join("audio");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            pins: Arc::default(),
            turns: Arc::default(),
        })
    }

    fn path_of(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    fn partial_of(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(format!("{}.part", hash.to_hex()))
    }

    fn is_pinned(&self, hash: &ContentHash) -> bool {
        lock(&self.pins).contains_key(hash)
    }

    /// This hash's writer turn (wait on it with `turn.m.lock().await`).
    fn turn(&self, hash: ContentHash) -> Turn {
        let m = lock(&self.turns).entry(hash).or_default().clone();
        Turn {
            turns: self.turns.clone(),
            hash,
            m,
        }
    }
}

/// A claim on a hash's writer turn; forgets the turn's entry when nobody else holds it.
struct Turn {
    turns: Turns,
    hash: ContentHash,
    m: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turns = lock(&self.turns);
        // Clones are made only under this lock, so the count is exact: the map's and ours.
        if Arc::strong_count(&self.m) == 2 {
            turns.remove(&self.hash);
        }
    }
}

/// Where a missing file is downloaded from.
enum Origin<'a> {
    /// `GET /v1/audio/{hash}` (the caller holds it), else a cached message carrying it.
    Hash,
    /// The message route, for any member of the thread.
    Message(&'a ThreadId, &'a MessageId),
    /// Already described (a signed URL in hand).
    Described(AudioView),
}

/// Where a playable file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioSource {
    /// The just-recorded local file (it hashes to the content).
    Recorded,
    /// Already in the cache: no request was made.
    Cache,
    /// Downloaded now, verified and cached.
    Download,
}

/// A playable file. While it (or a clone) is alive its content is pinned: the cache never
/// evicts or clears the file in use.
#[derive(Debug)]
pub struct AudioHandle {
    path: PathBuf,
    hash: ContentHash,
    source: AudioSource,
    pins: Pins,
}

impl AudioHandle {
    fn new(pins: &Pins, hash: ContentHash, path: PathBuf, source: AudioSource) -> Self {
        *lock(pins).entry(hash).or_insert(0) += 1;
        Self {
            path,
            hash,
            source,
            pins: pins.clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content_hash(&self) -> ContentHash {
        self.hash
    }

    pub fn source(&self) -> AudioSource {
        self.source
    }

    /// The just-recorded file was used (nothing cached, nothing downloaded).
    pub fn is_recorded(&self) -> bool {
        self.source == AudioSource::Recorded
    }

    /// Served from the cache without any request.
    pub fn is_from_cache(&self) -> bool {
        self.source == AudioSource::Cache
    }

    /// Downloaded by this call.
    pub fn downloaded(&self) -> bool {
        self.source == AudioSource::Download
    }
}

impl Clone for AudioHandle {
    fn clone(&self) -> Self {
        Self::new(&self.pins, self.hash, self.path.clone(), self.source)
    }
}

impl AsRef<Path> for AudioHandle {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for AudioHandle {
    fn drop(&mut self) {
        let mut pins = lock(&self.pins);
        if let Some(n) = pins.get_mut(&self.hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pins.remove(&self.hash);
            }
        }
    }
}

/// Reports a transfer's progress to the update stream and the caller's callback, at most
/// about every 1 % (or 64 KiB), always at the start and once at the end.
pub(crate) struct Reporter<'a> {
    updates: &'a Updates,
    hash: ContentHash,
    direction: Direction,
    total: u64,
    progress: Option<Progress<'a>>,
    last: Option<u64>,
    step: u64,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(
        updates: &'a Updates,
        hash: ContentHash,
        direction: Direction,
        total: u64,
        progress: Option<Progress<'a>>,
    ) -> Self {
        Self {
            updates,
            hash,
            direction,
            total,
            progress,
            last: None,
            step: (total / 100).max(64 * 1024),
        }
    }

    pub(crate) fn report(&mut self, done: u64) {
        let due = match self.last {
            None => true,
            Some(last) => done > last && (done == self.total || done - last >= self.step),
        };
        if !due {
            return;
        }
        self.last = Some(done);
        self.updates.send(Update::Transfer {
            hash: self.hash,
            direction: self.direction,
            done,
            total: self.total,
        });
        if let Some(p) = self.progress {
            p(done, self.total);
        }
    }
}

/// SHA-256 and length of a file, streamed (never the whole file in memory), off the executor.
pub(crate) async fn hash_file(path: &Path) -> Result<(ContentHash, u64), ClientError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(ContentHash, u64), ClientError> {
        let f = std::fs::File::open(&path)?;
        Ok(audio_dedup_core::hash_reader(f)?)
    })
    .await
    .map_err(|e| ClientError::Task(format!("hashing task: {e}")))?
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The first byte of a `206`'s `Content-Range: bytes <first>-<last>/<total>`.
fn range_start(res: &reqwest::Response) -> Option<u64> {
    let v = res
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let (first, _) = v.strip_prefix("bytes ")?.split_once('-')?;
    first.parse().ok()
}

/// The SHA-256 state and length of the bytes already in `path` (a partial download), read
/// in the blocking pool.
async fn hash_prefix(path: PathBuf) -> Result<StreamingHasher, ClientError> {
    tokio::task::spawn_blocking(move || -> Result<StreamingHasher, ClientError> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut hasher = StreamingHasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher);
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| ClientError::Task(format!("hashing task: {e}")))?
}

enum Lookup {
    Hit,
    Miss,
    /// A row whose file is missing or has the wrong size: the row is gone; remove the file.
    Damaged,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Client {
    /// A file to play `render` from, pinned while the handle lives:
    ///
    /// 1. `local_path_if_recorded`, when it exists and its SHA-256 (streamed) is the
    ///    content's: played in place, not copied;
    /// 2. else the cached `audio/<sha256>`, made the most recently used (no request);
    /// 3. else downloaded: the server's short-lived URL (`GET /v1/audio/{hash}`), streamed
    ///    with progress (`Update::Transfer` and `progress`), checked against the hash and
    ///    size, made durable and cached; the cache's bounds are enforced after the insert.
    ///
    /// A download whose bytes do not match deletes them and answers
    /// [`ClientError::HashMismatch`].
    pub async fn playable_path(
        &self,
        render: &AudioRender,
        local_path_if_recorded: Option<&Path>,
        progress: Option<Progress<'_>>,
    ) -> Result<AudioHandle, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let hash = render.content_hash;
            if let Some(local) = local_path_if_recorded {
                match hash_file(local).await {
                    Ok((h, _)) if h == hash => {
                        return Ok(AudioHandle::new(
                            &self.audio.pins,
                            hash,
                            local.to_owned(),
                            AudioSource::Recorded,
                        ))
                    }
                    Ok((h, _)) => tracing::warn!(
                        path = %local.display(), expected = %hash, found = %h,
                        "the recorded file no longer matches its content; using the cache"
                    ),
                    Err(e) => tracing::debug!(
                        path = %local.display(), error = %e,
                        "the recorded file is unreadable; using the cache"
                    ),
                }
            }
            self.cached_or_fetched(hash, Origin::Hash, progress).await
        })
        .await
    }

    /// A playable file for a message's audio, for any member of its thread: the cache (by
    /// the content hash the cached message states: Alice's and Bob's copies of one track
    /// are one file), or a download through the message
    /// (`GET /v1/threads/{thread}/messages/{message}/audio`), verified by hash.
    pub async fn message_audio(
        &self,
        thread: &ThreadId,
        message: &MessageId,
        progress: Option<Progress<'_>>,
    ) -> Result<AudioHandle, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            let (t, m) = (thread.clone(), message.clone());
            let known = self
                .blocking(move |c| c.store.local_message(&t, &m))
                .await?
                .and_then(|m| m.audio)
                .map(|r| r.content_hash);
            match known {
                Some(hash) => {
                    self.cached_or_fetched(hash, Origin::Message(thread, message), progress)
                        .await
                }
                None => {
                    let view = self.api.message_audio(thread, message).await?;
                    let hash = view.content_hash;
                    self.cached_or_fetched(hash, Origin::Described(view), progress)
                        .await
                }
            }
        })
        .await
    }

    /// A playable file for content the caller holds (`GET /v1/audio/{hash}`), or that a
    /// cached message carries; the cache first.
    pub async fn audio_by_hash(
        &self,
        hash: ContentHash,
        progress: Option<Progress<'_>>,
    ) -> Result<AudioHandle, ClientError> {
        crate::runtime::in_runtime(self.rt.handle(), async move {
            self.cached_or_fetched(hash, Origin::Hash, progress).await
        })
        .await
    }

    /// The cached file, or a download from `origin`; pinned while the handle lives.
    async fn cached_or_fetched(
        &self,
        hash: ContentHash,
        origin: Origin<'_>,
        progress: Option<Progress<'_>>,
    ) -> Result<AudioHandle, ClientError> {
        // Pin first: from here on, eviction leaves this hash alone.
        let mut handle = AudioHandle::new(
            &self.audio.pins,
            hash,
            self.audio.path_of(&hash),
            AudioSource::Cache,
        );
        let turn = self.audio.turn(hash);
        let _writer = turn.m.lock().await;
        let found = self
            .blocking(move |c| {
                let found = c.lookup(&hash)?;
                if let Lookup::Damaged = found {
                    remove_if_present(&c.audio.path_of(&hash))?;
                }
                Ok(found)
            })
            .await?;
        if let Lookup::Hit = found {
            return Ok(handle);
        }
        let view = match origin {
            Origin::Described(v) => v,
            Origin::Message(t, m) => self.api.message_audio(t, m).await?,
            Origin::Hash => self.describe_any(&hash).await?,
        };
        self.download(&hash, view, progress).await?;
        handle.source = AudioSource::Download;
        Ok(handle)
    }

    /// `GET /v1/audio/{hash}`; refused (the caller does not hold it: a recipient), then
    /// through a cached live message that carries it, which any member may read.
    async fn describe_any(&self, hash: &ContentHash) -> Result<AudioView, ClientError> {
        let refused = match self.api.describe(hash).await {
            Ok(v) => return Ok(v),
            Err(
                e @ ApiError::Rejected {
                    status: 403 | 404, ..
                },
            ) => e,
            Err(e) => return Err(e.into()),
        };
        let h = *hash;
        let carriers = self
            .blocking(move |c| c.store.audio_carriers(&h, 5))
            .await?;
        for (t, m) in carriers {
            match self.api.message_audio(&t, &m).await {
                Ok(v) => return Ok(v),
                Err(ApiError::Rejected { status: 404, .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(refused.into())
    }

    /// Looks a hash up in the table; a hit becomes the most recently used. A row whose file
    /// is gone or has the wrong length (a stat, not a re-hash) is forgotten. Blocking.
    fn lookup(&self, hash: &ContentHash) -> Result<Lookup, ClientError> {
        let path = self.audio.path_of(hash);
        self.store.write_cache(|tx| {
            let Some(size) = tx.audio_size(hash)? else {
                return Ok(Lookup::Miss);
            };
            let intact = std::fs::metadata(&path)
                .is_ok_and(|m| m.is_file() && i64::try_from(m.len()) == Ok(size));
            if intact {
                tx.touch_audio(hash)?;
                Ok(Lookup::Hit)
            } else {
                tracing::warn!(%hash, "cached audio file missing or damaged; fetching again");
                tx.forget_audio(hash)?;
                Ok(Lookup::Damaged)
            }
        })
    }

    /// `request_timeout` plus one second per 64 KiB: a whole-transfer timeout that a slow
    /// but working link (≥ 64 KiB/s) still meets.
    pub(crate) fn transfer_timeout(&self, size: u64) -> Duration {
        self.cfg
            .request_timeout
            .saturating_add(Duration::from_secs(size / (64 * 1024)))
    }

    /// Downloads `hash` from the URL `view` signed into the cache. The caller holds the
    /// hash's pin and writer turn.
    async fn download(
        &self,
        hash: &ContentHash,
        view: AudioView,
        progress: Option<Progress<'_>>,
    ) -> Result<(), ClientError> {
        if view.content_hash != *hash {
            return Err(ApiError::Protocol(format!(
                "asked for {hash}, the server described {}",
                view.content_hash
            ))
            .into());
        }
        let total = view.size;
        let tmp = self.audio.partial_of(hash);
        // Bytes an interrupted download of this content left (a lost network, a kill, a
        // cancel): asked for the rest only. Checked with the rest at the end, like any byte.
        let have = match tokio::fs::metadata(&tmp).await {
            Ok(m) if m.len() < total => m.len(),
            _ => 0,
        };
        let mut rb = self
            .api
            .http()
            .get(&view.url)
            .header(reqwest::header::ACCEPT_ENCODING, "identity")
            .timeout(self.transfer_timeout(total - have));
        if have > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let res = self.api.send_signed(rb).await?;
        // A server (or cache) that ignores the range sends it all: start over.
        let from = match res.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            true if range_start(&res) == Some(have) => have,
            true => {
                return Err(
                    ApiError::Protocol("a range the download did not ask for".into()).into(),
                )
            }
            false => 0,
        };
        if res.content_length().is_some_and(|n| n != total - from) {
            tracing::warn!(%hash, expected = total - from, announced = ?res.content_length(), "download has the wrong length");
            remove_if_present(&tmp)?;
            return Err(ClientError::HashMismatch(hash.to_string()));
        }
        let (mut file, mut hasher) = if from > 0 {
            tracing::info!(%hash, resumed_from = from, total, "download resumed");
            let hasher = hash_prefix(tmp.clone()).await?;
            let file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&tmp)
                .await?;
            (file, hasher)
        } else {
            (tokio::fs::File::create(&tmp).await?, StreamingHasher::new())
        };
        let mut reporter =
            Reporter::new(&self.updates, *hash, Direction::Download, total, progress);
        reporter.report(hasher.len());
        let mut body = res.bytes_stream();
        // Bounded: the body is refused as soon as it runs past `total`, and the request has a
        // total timeout.
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::Offline(format!("reading the download: {e}")))?;
            if hasher.len().saturating_add(chunk.len() as u64) > total {
                tracing::warn!(%hash, expected = total, "download is longer than described");
                drop(file);
                remove_if_present(&tmp)?;
                return Err(ClientError::HashMismatch(hash.to_string()));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
            reporter.report(hasher.len());
        }
        file.flush().await?;
        let (got, len) = hasher.finish();
        if len != total || got != *hash {
            tracing::warn!(%hash, %got, len, expected = total, "downloaded bytes do not match their hash; discarded");
            drop(file);
            remove_if_present(&tmp)?;
            return Err(ClientError::HashMismatch(hash.to_string()));
        }
        file.sync_all().await?;
        drop(file);
        let h = *hash;
        self.blocking(move |c| c.insert_audio_file(&h, total, &tmp))
            .await?;
        Ok(())
    }

    /// Moves a complete, verified and fsynced file into the cache as `audio/<sha256>` (rename,
    /// then the folder fsynced), records it as the most recently used, and enforces the
    /// bounds. The caller holds the hash's pin if the file must survive this insert (a file
    /// bigger than the whole bound does not otherwise). Blocking.
    pub(crate) fn insert_audio_file(
        &self,
        hash: &ContentHash,
        size: u64,
        path_of_temp: &Path,
    ) -> Result<PathBuf, ClientError> {
        // After logout nothing of the previous user is written back.
        if self.store.is_closed() {
            return Err(ClientError::Closed);
        }
        let dest = self.audio.path_of(hash);
        std::fs::rename(path_of_temp, &dest)?;
        sync_dir(&self.audio.dir)?;
        let now = self.cfg.now_ms();
        // Durable: a row lost to a power cut would leave a file nothing counts.
        self.store
            .write_durable(|tx| Ok(tx.record_audio(hash, to_i64(size), now)?))?;
        self.enforce_audio_bounds()?;
        Ok(dest)
    }

    /// Evicts what the bounds exclude: entries fetched more than `audio_max_age` ago, then
    /// the least recently used until the total is at most `audio_max_bytes`. Pinned files are
    /// skipped. Runs on every insert; call it at start-up or on a timer for the age bound.
    /// Returns how many files went.
    pub fn evict_audio(&self) -> Result<usize, ClientError> {
        self.enforce_audio_bounds()
    }

    fn enforce_audio_bounds(&self) -> Result<usize, ClientError> {
        // Held throughout: nothing can be pinned between choosing a victim and removing it.
        let pins = lock(&self.audio.pins);
        let max_age = to_i64(u64::try_from(self.cfg.audio_max_age.as_millis()).unwrap_or(u64::MAX));
        let cutoff = self.cfg.now_ms().saturating_sub(max_age);
        let max_bytes = to_i64(self.cfg.audio_max_bytes);
        let pinned = |h: &str| {
            h.parse::<ContentHash>()
                .is_ok_and(|h| pins.contains_key(&h))
        };
        let victims = self.store.audio_victims(cutoff, max_bytes, pinned)?;
        let n = self.remove_entries(&victims)?;
        drop(pins);
        if n > 0 {
            tracing::debug!(evicted = n, "audio cache evicted");
        }
        Ok(n)
    }

    /// Removes files, then their rows (a file that cannot be removed keeps its row, so
    /// nothing uncounted stays on disk). The caller holds the pin lock.
    fn remove_entries(&self, keys: &[String]) -> Result<usize, ClientError> {
        let mut gone = Vec::with_capacity(keys.len());
        for key in keys {
            // Only a well-formed hash ever names a file (a damaged row is just dropped).
            let removed = match key.parse::<ContentHash>() {
                Ok(h) => remove_if_present(&self.audio.path_of(&h)),
                Err(_) => Ok(()),
            };
            match removed {
                Ok(()) => gone.push(key),
                Err(e) => tracing::warn!(hash = %key, error = %e, "could not remove cached audio"),
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        self.store.forget_audio_keys(&gone)
    }

    /// Bytes of cached audio (from the table; no folder scan).
    pub fn audio_cache_size(&self) -> Result<u64, ClientError> {
        self.store.audio_bytes()
    }

    /// The cached contents, most recently used first.
    pub fn cached_audio(&self) -> Result<Vec<ContentHash>, ClientError> {
        let keys = self.store.audio_keys_by_recency()?;
        Ok(keys.iter().filter_map(|k| k.parse().ok()).collect())
    }

    /// Whether `hash` is in the cache (no request, recency unchanged).
    pub fn is_audio_cached(&self, hash: &ContentHash) -> Result<bool, ClientError> {
        self.store.is_audio_cached(hash)
    }

    /// Removes every cached file and its row, except files in use (pinned), which stay.
    pub fn clear_audio(&self) -> Result<(), ClientError> {
        let pins = lock(&self.audio.pins);
        let keys = self.store.audio_keys()?;
        let victims: Vec<String> = keys
            .into_iter()
            .filter(|k| {
                !k.parse::<ContentHash>()
                    .is_ok_and(|h| pins.contains_key(&h))
            })
            .collect();
        self.remove_entries(&victims)?;
        // Partial downloads kept for resuming (a download in flight holds its pin).
        for e in std::fs::read_dir(&self.audio.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hash) = name.strip_suffix(".part") else {
                continue;
            };
            if !hash
                .parse::<ContentHash>()
                .is_ok_and(|h| pins.contains_key(&h))
            {
                remove_if_present(&e.path())?;
            }
        }
        drop(pins);
        Ok(())
    }

    /// Whether a content is in use (pinned by a live handle).
    pub fn is_audio_pinned(&self, hash: &ContentHash) -> bool {
        self.audio.is_pinned(hash)
    }
}
