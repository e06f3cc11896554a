//! Multipart uploads on the file system: `uploads/<id>/` holds the key the upload assembles
//! under, its uploader and part size, one `data` file every part is written into at its
//! offset, and a marker per stored part (`<number>~<size>~<sha256>`). A part is written
//! straight from the request body into its region while it is hashed; its marker appears
//! only once the bytes matched its signed SHA-256. One writer per part at a time (until its
//! last write has landed), and a part's marker goes before its region is rewritten, so a
//! marked region never changes. The whole object's SHA-256 runs along as parts arrive in
//! order (over marked regions only, one background task per upload), so finishing needs no
//! second pass over the bytes.
//!
//! Parts are not synced one by one: a process trusts the markers it wrote itself (their
//! bytes went through its page cache), and the markers it finds from before (a restart,
//! maybe a crash that lost unsynced bytes) are read back and checked against their SHA-256
//! the first time it lists or finishes the upload; a part that fails is unmarked and sent
//! again. The one sync is the assembled file's, before it is published under its key.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::blobs::{blocking, fsync_dir, FsBlobStore, Inner};
use crate::domain::{ContentHash, Part};
use crate::error::StoreError;
use crate::ports::{MultipartRef, ObjectMeta, StartParts};

const KEY_FILE: &str = "key";
const UPLOADER_FILE: &str = "uploader";
const PART_SIZE_FILE: &str = "part_size";
const DATA_FILE: &str = "data";
/// Body bytes gathered before each write into the data file; one buffer is written while
/// the next fills.
const WRITE_CHUNK: usize = 256 * 1024;
/// Write buffers kept for the next parts (4 MiB): copying into reused buffers keeps the
/// server's memory flat, where holding the request's own chunks until written made the
/// HTTP layer allocate new ones of varying sizes, part after part.
const POOLED_BUFFERS: usize = 16;
/// Read size of the running hash and of the checks after a restart: a buffer on the
/// blocking thread's stack, so reads allocate nothing.
const READ_CHUNK: usize = 64 * 1024;

/// What receiving one part came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartReceipt {
    Stored,
    /// No such upload in progress (finished or aborted).
    NoSuchUpload,
    /// Another request is writing this part right now.
    InProgress,
    /// More or fewer bytes than signed.
    WrongLength,
    /// The bytes do not match the signed SHA-256.
    WrongDigest,
    /// The body broke off.
    Incomplete,
}

/// Uploads being written to, by id: who writes which part, and the running hash.
#[derive(Default)]
pub(super) struct Uploads {
    map: Mutex<HashMap<String, Arc<Mutex<Running>>>>,
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl Uploads {
    fn buffer(&self) -> Vec<u8> {
        lock(&self.buffers)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(WRITE_CHUNK))
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = lock(&self.buffers);
        if pool.len() < POOLED_BUFFERS && buf.capacity() == WRITE_CHUNK {
            pool.push(buf);
        }
    }
}

type WriteTask = tokio::task::JoinHandle<std::io::Result<Vec<u8>>>;

/// Starts writing `buf` at `at` on the blocking pool once the write before it has landed,
/// and hands back an empty buffer to fill next.
async fn write_behind(
    pool: &Uploads,
    in_flight: &mut Option<WriteTask>,
    file: &Arc<File>,
    slot: &Arc<Writing>,
    buf: Vec<u8>,
    at: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut spare = match in_flight.take() {
        Some(w) => joined(w).await?,
        None => pool.buffer(),
    };
    spare.clear();
    let (file, slot) = (file.clone(), slot.clone());
    *in_flight = Some(tokio::task::spawn_blocking(move || {
        let turn = lock(&slot.write_turn);
        file.write_all_at(&buf, at)?;
        drop(turn);
        drop(slot);
        Ok(buf)
    }));
    Ok(spare)
}

struct Running {
    writing: BTreeSet<u32>,
    /// Marked parts whose bytes this process wrote or read back and checked.
    trusted: BTreeSet<u32>,
    /// SHA-256 over parts `1..next`, in order.
    next: u32,
    hasher: Sha256,
    /// Bumped whenever a marked region is unmarked: the background catch-up hashes outside
    /// the lock and keeps its work only if nothing changed meanwhile.
    epoch: u64,
    /// The background catch-up is running; `stored` counts parts marked since, so it does
    /// not stop while one waits for it.
    catching_up: bool,
    stored: u64,
    /// Held by each write into the data file: the kernel serialises buffered writes to one
    /// file anyway, and writers waiting there spin (four parts writing at once cost 1.5 to
    /// 6 times the CPU of one writer on ext4); waiting here sleeps.
    write_turn: Arc<Mutex<()>>,
}

impl Default for Running {
    fn default() -> Self {
        Self {
            writing: BTreeSet::new(),
            trusted: BTreeSet::new(),
            next: 1,
            hasher: Sha256::new(),
            epoch: 0,
            catching_up: false,
            stored: 0,
            write_turn: Arc::default(),
        }
    }
}

impl Running {
    /// Part `number`'s marker is going: a hash over it starts over, one underway is void.
    fn unmarked(&mut self, number: u32) {
        self.trusted.remove(&number);
        self.epoch += 1;
        if number < self.next {
            self.next = 1;
            self.hasher = Sha256::new();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

struct Folder {
    dir: PathBuf,
    part_size: u64,
}

impl Folder {
    fn offset(&self, number: u32) -> u64 {
        u64::from(number.saturating_sub(1)) * self.part_size
    }

    fn marker(&self, p: &Part) -> PathBuf {
        self.dir
            .join(format!("{}~{}~{}", p.number, p.size, p.sha256))
    }

    /// The marked parts, by number.
    fn parts(&self) -> Result<Vec<Part>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let mut it = name.splitn(3, '~');
            let (Some(n), Some(size), Some(sha)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if let (Ok(number), Ok(size), Ok(sha256)) = (n.parse(), size.parse(), sha.parse()) {
                out.push(Part {
                    number,
                    size,
                    sha256,
                });
            }
        }
        out.sort_by_key(|p| p.number);
        Ok(out)
    }

    fn data(&self) -> std::io::Result<File> {
        File::open(self.dir.join(DATA_FILE))
    }

    /// Feeds part `p`'s region into `hasher`.
    fn hash_region(
        &self,
        data: &File,
        p: &Part,
        hasher: &mut Sha256,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        let (mut at, end) = (self.offset(p.number), self.offset(p.number) + p.size);
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            data.read_exact_at(&mut buf[..n], at)?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }

    /// The marked parts, each one this process did not write read back and checked first
    /// (under the upload's lock); a part whose bytes do not match is unmarked.
    fn checked_parts(&self, run: &mut Running) -> Result<Vec<Part>, StoreError> {
        let mut out = Vec::new();
        let mut data = None;
        let mut buf = [0u8; READ_CHUNK];
        for p in self.parts()? {
            if run.trusted.contains(&p.number) {
                out.push(p);
                continue;
            }
            let data = match &mut data {
                Some(d) => d,
                None => data.insert(self.data()?),
            };
            let mut hasher = Sha256::new();
            let intact = match self.hash_region(data, &p, &mut hasher, &mut buf) {
                Ok(()) => ContentHash::from_bytes(hasher.finalize().into()) == p.sha256,
                // Shorter than marked: bytes lost in a crash.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
                Err(e) => return Err(e.into()),
            };
            if intact {
                run.trusted.insert(p.number);
                out.push(p);
            } else {
                tracing::info!(part = p.number, "a stored part's bytes were lost; unmarked");
                match std::fs::remove_file(self.marker(&p)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                run.unmarked(p.number);
            }
        }
        Ok(out)
    }

    /// Extends the running hash over the trusted parts that follow it, under the lock.
    fn catch_up(&self, run: &mut Running) -> Result<(), StoreError> {
        let parts = self.parts()?;
        let mut data = None;
        let mut buf = [0u8; READ_CHUNK];
        while let Some(p) = parts
            .iter()
            .find(|p| p.number == run.next && run.trusted.contains(&p.number))
        {
            let data = match &mut data {
                Some(d) => d,
                None => data.insert(self.data()?),
            };
            self.hash_region(data, p, &mut run.hasher, &mut buf)?;
            run.next += 1;
        }
        Ok(())
    }

    /// The background catch-up: the running hash extended part by part, each read and
    /// hashed outside the lock (part writes and listings never wait for it), kept only if
    /// no region was unmarked meanwhile. One per upload at a time.
    fn catch_up_in_background(&self, run: &Mutex<Running>) -> Result<(), StoreError> {
        let data = self.data()?;
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let (next, epoch, stored, trusted, mut hasher) = {
                let r = lock(run);
                let trusted = r.trusted.contains(&r.next);
                (r.next, r.epoch, r.stored, trusted, r.hasher.clone())
            };
            let part = if trusted {
                self.parts()?.into_iter().find(|p| p.number == next)
            } else {
                None
            };
            let Some(part) = part else {
                let mut r = lock(run);
                // Nothing marked since this look: stop; else look again.
                if r.stored == stored && r.epoch == epoch {
                    r.catching_up = false;
                    return Ok(());
                }
                continue;
            };
            self.hash_region(&data, &part, &mut hasher, &mut buf)?;
            let mut r = lock(run);
            if r.epoch == epoch && r.next == next {
                r.hasher = hasher;
                r.next += 1;
            }
        }
    }
}

impl Inner {
    fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// The folder of an upload in progress under `upload.key`, if there is one.
    fn folder(&self, upload: &MultipartRef) -> Result<Option<Folder>, StoreError> {
        if !valid_upload_id(&upload.upload_id) {
            return Ok(None);
        }
        let dir = self.uploads_dir().join(&upload.upload_id);
        match std::fs::read_to_string(dir.join(KEY_FILE)) {
            Ok(key) if key == upload.key => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let part_size = std::fs::read_to_string(dir.join(PART_SIZE_FILE))?
            .trim()
            .parse()
            .map_err(|_| StoreError::Corrupt {
                key: upload.key.clone(),
                reason: "unreadable part size".into(),
            })?;
        Ok(Some(Folder { dir, part_size }))
    }

    fn running(&self, upload_id: &str) -> Arc<Mutex<Running>> {
        lock(&self.uploads.map)
            .entry(upload_id.to_owned())
            .or_default()
            .clone()
    }

    fn forget_running(&self, upload_id: &str) {
        lock(&self.uploads.map).remove(upload_id);
    }
}

/// Frees a part's writer slot however its request ends (a dropped body included), once
/// the last write it started has landed: shared with each write in flight, so a write
/// left running by a request that went away never lands over the next writer's bytes.
struct Writing {
    run: Arc<Mutex<Running>>,
    number: u32,
    write_turn: Arc<Mutex<()>>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        lock(&self.run).writing.remove(&self.number);
    }
}

async fn joined<T>(task: tokio::task::JoinHandle<std::io::Result<T>>) -> Result<T, StoreError> {
    task.await
        .map_err(|e| StoreError::Unavailable(format!("part write failed: {e}")))?
        .map_err(StoreError::from)
}

impl FsBlobStore {
    /// Writes one part from a request body into its region of the upload, checking its
    /// length and SHA-256 against what was signed; marked stored only if both match.
    pub async fn receive_part<S, E>(
        &self,
        upload: &MultipartRef,
        part: Part,
        mut body: S,
    ) -> Result<PartReceipt, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let inner = self.inner.clone();
        let up = upload.clone();
        let begun = blocking(move || {
            let Some(folder) = inner.folder(&up)? else {
                return Ok(None);
            };
            let run = inner.running(&up.upload_id);
            {
                let mut r = lock(&run);
                if !r.writing.insert(part.number) {
                    return Ok(Some(Err(PartReceipt::InProgress)));
                }
                // The region is about to change: its marker goes first.
                for old in folder.parts()?.iter().filter(|p| p.number == part.number) {
                    if let Err(e) = std::fs::remove_file(folder.marker(old)) {
                        r.writing.remove(&part.number);
                        return Err(e.into());
                    }
                    r.unmarked(part.number);
                }
            }
            let write_turn = lock(&run).write_turn.clone();
            let writing = Arc::new(Writing {
                run,
                number: part.number,
                write_turn,
            });
            let data = std::fs::OpenOptions::new()
                .write(true)
                .open(folder.dir.join(DATA_FILE))?;
            Ok(Some(Ok((folder, writing, Arc::new(data)))))
        })
        .await?;
        let (folder, writing, data) = match begun {
            None => return Ok(PartReceipt::NoSuchUpload),
            Some(Err(busy)) => return Ok(busy),
            Some(Ok(b)) => b,
        };
        let start = folder.offset(part.number);
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let pool = &self.inner.uploads;
        let mut buf = pool.buffer();
        // Where `buf`'s bytes go.
        let mut at = start;
        let mut in_flight = None;
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    if received > part.size {
                        return Ok(PartReceipt::WrongLength);
                    }
                    hasher.update(&chunk);
                    let mut rest: &[u8] = &chunk;
                    while !rest.is_empty() {
                        let n = rest.len().min(WRITE_CHUNK - buf.len());
                        buf.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                        if buf.len() == WRITE_CHUNK {
                            let full = std::mem::take(&mut buf);
                            buf = write_behind(pool, &mut in_flight, &data, &writing, full, at)
                                .await?;
                            at += WRITE_CHUNK as u64;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::info!(error = %e, "part body broke off");
                    return Ok(PartReceipt::Incomplete);
                }
                None => break,
            }
        }
        if !buf.is_empty() {
            buf = write_behind(pool, &mut in_flight, &data, &writing, buf, at).await?;
        }
        pool.give_back(buf);
        if let Some(w) = in_flight.take() {
            pool.give_back(joined(w).await?);
        }
        if received != part.size {
            return Ok(PartReceipt::WrongLength);
        }
        if ContentHash::from_bytes(hasher.finalize().into()) != part.sha256 {
            return Ok(PartReceipt::WrongDigest);
        }
        let run = writing.run.clone();
        let spawn = blocking(move || {
            // No sync here: the marker is trusted by this process only (see the module's
            // comment); the bytes are synced once, before the assembled file is published.
            File::create(folder.marker(&part))?;
            let spawn = {
                let mut r = lock(&writing.run);
                r.trusted.insert(part.number);
                r.stored += 1;
                !std::mem::replace(&mut r.catching_up, true)
            };
            drop(writing);
            Ok(spawn.then_some(folder))
        })
        .await?;
        // The running hash catches up beside the next parts, not before this one's answer;
        // finishing catches up whatever is left.
        if let Some(folder) = spawn {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = folder.catch_up_in_background(&run) {
                    lock(&run).catching_up = false;
                    tracing::debug!(error = %e, "running hash left for the finish");
                }
            });
        }
        Ok(PartReceipt::Stored)
    }

    pub(super) async fn start_parts_fs(&self, req: &StartParts) -> Result<String, StoreError> {
        let inner = self.inner.clone();
        let (key, uploader, part_size) = (req.key.clone(), req.uploader.clone(), req.part_size);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let upload_id = id.clone();
        blocking(move || {
            inner.dir(&key)?;
            let dir = inner.uploads_dir().join(&id);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(UPLOADER_FILE), uploader)?;
            std::fs::write(dir.join(PART_SIZE_FILE), part_size.max(1).to_string())?;
            File::create(dir.join(DATA_FILE))?;
            // The key last: an upload exists once its key file does.
            std::fs::write(dir.join(KEY_FILE), key)?;
            fsync_dir(&dir)?;
            Ok(())
        })
        .await?;
        Ok(upload_id)
    }

    pub(super) async fn list_parts_fs(
        &self,
        upload: &MultipartRef,
    ) -> Result<Option<Vec<Part>>, StoreError> {
        let inner = self.inner.clone();
        let upload = upload.clone();
        blocking(move || match inner.folder(&upload)? {
            Some(folder) => {
                let run = inner.running(&upload.upload_id);
                let mut r = lock(&run);
                Ok(Some(folder.checked_parts(&mut r)?))
            }
            None => Ok(None),
        })
        .await
    }

    /// Moves the data file in under the upload's key, named with the whole SHA-256 (the
    /// running hash, or one pass over the data after a restart), and drops the upload.
    pub(super) async fn finish_parts_fs(
        &self,
        upload: &MultipartRef,
        parts: &[Part],
    ) -> Result<Option<ObjectMeta>, StoreError> {
        let inner = self.inner.clone();
        let (upload, parts) = (upload.clone(), parts.to_vec());
        let version = uuid::Uuid::now_v7().simple().to_string();
        let out = blocking(move || {
            let _guard = lock(&inner.lock);
            let Some(folder) = inner.folder(&upload)? else {
                return Ok(None);
            };
            if let Some(done) = inner.find(&upload.key)? {
                // Moved in before a crash left the upload's folder behind.
                std::fs::remove_dir_all(&folder.dir)?;
                inner.forget_running(&upload.upload_id);
                return Ok(Some(done.meta));
            }
            let corrupt = |reason: String| StoreError::Corrupt {
                key: upload.key.clone(),
                reason,
            };
            let run = inner.running(&upload.upload_id);
            let mut r = lock(&run);
            if !r.writing.is_empty() {
                return Err(StoreError::Unavailable(
                    "a part of this upload is still being written".into(),
                ));
            }
            let held = folder.checked_parts(&mut r)?;
            let mut size = 0u64;
            for (i, want) in parts.iter().enumerate() {
                if want.number as usize != i + 1 || !held.contains(want) {
                    return Err(corrupt(format!("part {} is not as listed", want.number)));
                }
                size += want.size;
            }
            folder.catch_up(&mut r)?;
            let data_path = folder.dir.join(DATA_FILE);
            let data = std::fs::OpenOptions::new().write(true).open(&data_path)?;
            data.set_len(size)?;
            let sha256 = if r.next as usize == parts.len() + 1 {
                ContentHash::from_bytes(r.hasher.clone().finalize().into())
            } else {
                crate::domain::hash_reader(File::open(&data_path)?.take(size))?.0
            };
            // The one sync of the parts' bytes: durable before they are published.
            data.sync_all()?;
            drop(r);
            let uploader = std::fs::read_to_string(folder.dir.join(UPLOADER_FILE))?;
            let obj_dir = inner.dir(&upload.key)?;
            std::fs::create_dir_all(&obj_dir)?;
            std::fs::rename(
                &data_path,
                obj_dir.join(format!("{version}~{sha256}~{uploader}")),
            )?;
            fsync_dir(&obj_dir)?;
            std::fs::remove_dir_all(&folder.dir)?;
            inner.forget_running(&upload.upload_id);
            Ok(Some(ObjectMeta {
                key: upload.key.clone(),
                version: version.clone(),
                size,
                sha256: Some(sha256),
                uploader: Some(uploader),
                last_modified: inner.clock.now_ms(),
            }))
        })
        .await?;
        if let Some(meta) = &out {
            self.emit_created(&meta.key, &meta.version);
        }
        Ok(out)
    }

    pub(super) async fn abort_parts_fs(&self, upload: &MultipartRef) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let upload = upload.clone();
        blocking(move || {
            let _guard = lock(&inner.lock);
            if let Some(folder) = inner.folder(&upload)? {
                std::fs::remove_dir_all(folder.dir)?;
            }
            inner.forget_running(&upload.upload_id);
            Ok(())
        })
        .await
    }
}

/// Uploads in progress under `root` (what the reconciler's contract tests count).
pub fn uploads_in_progress(root: &Path) -> usize {
    std::fs::read_dir(root.join("uploads")).map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{BlobStore, SystemClock};
    use crate::store::embedded::UrlSigner;

    fn store(root: &Path) -> FsBlobStore {
        let signer = UrlSigner::new("http://127.0.0.1:9", [1; 32]);
        FsBlobStore::open(root, signer, None, Arc::new(SystemClock)).unwrap()
    }

    fn body(b: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter([Ok(Bytes::copy_from_slice(b))])
    }

    fn part(n: u32, b: &[u8]) -> Part {
        Part {
            number: n,
            size: b.len() as u64,
            sha256: ContentHash::of(b),
        }
    }

    async fn start(s: &FsBlobStore) -> MultipartRef {
        let id = s
            .start_parts(&StartParts {
                key: "staging/h/s".into(),
                content_type: "audio/wav",
                uploader: "session:s".into(),
                part_size: 4,
            })
            .await
            .unwrap();
        MultipartRef {
            key: "staging/h/s".into(),
            upload_id: id,
        }
    }

    /// Parts out of order, one resent, the server restarted between them (its running hash
    /// lost): the assembled object is the parts in order, named with its whole SHA-256.
    #[tokio::test]
    async fn parts_in_any_order_across_a_restart_assemble_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: [&[u8]; 3] = [b"abcd", b"efgh", b"ij"];
        let parts: Vec<Part> = (1..=3).map(|n| part(n, chunks[n as usize - 1])).collect();
        let s = store(dir.path());
        let up = start(&s).await;
        let got = s
            .receive_part(&up, parts[2], body(chunks[2]))
            .await
            .unwrap();
        assert_eq!(got, PartReceipt::Stored);
        let got = s
            .receive_part(&up, parts[0], body(chunks[0]))
            .await
            .unwrap();
        assert_eq!(got, PartReceipt::Stored);
        drop(s);
        let s = store(dir.path());
        let got = s.receive_part(&up, parts[1], body(b"efgX")).await.unwrap();
        assert_eq!(got, PartReceipt::WrongDigest);
        assert_eq!(
            s.list_parts(&up).await.unwrap().unwrap(),
            vec![parts[0], parts[2]]
        );
        let got = s
            .receive_part(&up, parts[1], body(chunks[1]))
            .await
            .unwrap();
        assert_eq!(got, PartReceipt::Stored);
        // Part 1 again, same bytes: the running hash starts over and still ends right.
        let got = s
            .receive_part(&up, parts[0], body(chunks[0]))
            .await
            .unwrap();
        assert_eq!(got, PartReceipt::Stored);
        let meta = s.finish_parts(&up, &parts).await.unwrap().unwrap();
        assert_eq!(meta.sha256, Some(ContentHash::of(b"abcdefghij")));
        assert_eq!(meta.size, 10);
        let hashed = s.stream_sha256(&meta.key, &meta.version).await.unwrap();
        assert_eq!(hashed, Some(ContentHash::of(b"abcdefghij")));
        assert_eq!(s.list_parts(&up).await.unwrap(), None, "the upload is gone");
        assert_eq!(uploads_in_progress(dir.path()), 0);
    }

    /// A part longer or shorter than signed is refused and not listed; an unknown upload
    /// answers as such; finishing with a part not held is refused.
    #[tokio::test]
    async fn wrong_lengths_and_unknown_uploads_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let up = start(&s).await;
        let p = part(1, b"abcd");
        let long = s.receive_part(&up, p, body(b"abcde")).await.unwrap();
        assert_eq!(long, PartReceipt::WrongLength);
        let short = s.receive_part(&up, p, body(b"abc")).await.unwrap();
        assert_eq!(short, PartReceipt::WrongLength);
        assert_eq!(s.list_parts(&up).await.unwrap().unwrap(), vec![]);
        assert!(s.finish_parts(&up, &[p]).await.is_err());
        let other = MultipartRef {
            key: up.key.clone(),
            upload_id: "nosuchupload".into(),
        };
        let got = s.receive_part(&other, p, body(b"abcd")).await.unwrap();
        assert_eq!(got, PartReceipt::NoSuchUpload);
        s.abort_parts(&up).await.unwrap();
        let got = s.receive_part(&up, p, body(b"abcd")).await.unwrap();
        assert_eq!(got, PartReceipt::NoSuchUpload);
    }

    /// Parts are not synced one by one, so a crash can lose a marked part's bytes: the next
    /// process reads back the markers it did not write and unmarks a part whose bytes are
    /// wrong or missing (it is listed as missing, finishing without it is refused, and sent
    /// again it completes the upload).
    #[tokio::test]
    async fn a_marked_part_whose_bytes_were_lost_is_unmarked_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: [&[u8]; 3] = [b"abcd", b"efgh", b"ij"];
        let parts: Vec<Part> = (1..=3).map(|n| part(n, chunks[n as usize - 1])).collect();
        let s = store(dir.path());
        let up = start(&s).await;
        for (p, c) in parts.iter().zip(chunks) {
            assert_eq!(
                s.receive_part(&up, *p, body(c)).await.unwrap(),
                PartReceipt::Stored
            );
        }
        drop(s);
        // What a crash could leave: part 2's bytes zeroed, part 3's cut short.
        let data = dir
            .path()
            .join("uploads")
            .join(&up.upload_id)
            .join(DATA_FILE);
        let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
        f.write_all_at(&[0; 4], 4).unwrap();
        f.set_len(9).unwrap();
        let s = store(dir.path());
        assert_eq!(s.list_parts(&up).await.unwrap().unwrap(), vec![parts[0]]);
        assert!(s.finish_parts(&up, &parts).await.is_err());
        for n in [1, 2] {
            let got = s
                .receive_part(&up, parts[n], body(chunks[n]))
                .await
                .unwrap();
            assert_eq!(got, PartReceipt::Stored);
        }
        assert_eq!(s.list_parts(&up).await.unwrap().unwrap(), parts);
        let meta = s.finish_parts(&up, &parts).await.unwrap().unwrap();
        assert_eq!(meta.sha256, Some(ContentHash::of(b"abcdefghij")));
        let hashed = s.stream_sha256(&meta.key, &meta.version).await.unwrap();
        assert_eq!(hashed, Some(ContentHash::of(b"abcdefghij")));
    }

    /// Many parts out of order and at once: the background catch-up (one per upload) and
    /// the finish agree on the whole SHA-256.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_parts_in_any_order_give_the_whole_hash() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let up = start(&s).await;
        let data: Vec<u8> = (0..4 * 40 + 3).map(|i| (i * 7 % 251) as u8).collect();
        let chunks: Vec<&[u8]> = data.chunks(4).collect();
        let parts: Vec<Part> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| part(i as u32 + 1, c))
            .collect();
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.reverse();
        order.swap(3, 30);
        let sends = order.into_iter().map(|i| {
            let (s, up, p, c) = (s.clone(), up.clone(), parts[i], chunks[i].to_vec());
            tokio::spawn(async move { s.receive_part(&up, p, body(&c)).await.unwrap() })
        });
        for got in futures_util::future::join_all(sends).await {
            assert_eq!(got.unwrap(), PartReceipt::Stored);
        }
        // Part 1 again, while the catch-up may be running: it starts over and still ends right.
        let again = s.receive_part(&up, parts[0], body(chunks[0])).await;
        assert_eq!(again.unwrap(), PartReceipt::Stored);
        let meta = s.finish_parts(&up, &parts).await.unwrap().unwrap();
        assert_eq!(meta.sha256, Some(ContentHash::of(&data)));
    }

    /// While one request writes a part, another for the same part waits its turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_writer_per_part_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let up = start(&s).await;
        let p = part(1, b"abcd");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
        let slow = tokio_stream_of(rx);
        let first = {
            let (s, up) = (s.clone(), up.clone());
            tokio::spawn(async move { s.receive_part(&up, p, slow).await })
        };
        tx.send(Ok(Bytes::from_static(b"ab"))).unwrap();
        // The first writer claims part 1 before it reads its body, and now waits for the rest.
        for _ in 0..200 {
            if uploads_writing(&s, &up) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!first.is_finished());
        let busy = s.receive_part(&up, p, body(b"abcd")).await.unwrap();
        assert_eq!(busy, PartReceipt::InProgress);
        tx.send(Ok(Bytes::from_static(b"cd"))).unwrap();
        drop(tx);
        assert_eq!(first.await.unwrap().unwrap(), PartReceipt::Stored);
        assert_eq!(s.list_parts(&up).await.unwrap().unwrap(), vec![p]);
    }

    fn uploads_writing(s: &FsBlobStore, up: &MultipartRef) -> bool {
        lock(&s.inner.uploads.map)
            .get(&up.upload_id)
            .is_some_and(|r| !lock(r).writing.is_empty())
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
