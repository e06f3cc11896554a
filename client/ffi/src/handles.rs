//! Handles the app holds: streams and the live channel (`TaskHandle`), transfers it can
//! cancel (`UploadHandle`, `DownloadHandle`), and a playable file (`PlayableAudio`).

use std::sync::{Mutex, MutexGuard};

use audio_dedup_client as client;
use tokio::task::{AbortHandle, JoinHandle};

use crate::error::ClientError;
use crate::types::{AudioSource, UploadResult};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the Option inside is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Running {
    Task(AbortHandle),
    Live(client::LiveHandle),
}

/// Keeps a stream (updates) or the live channel running; dropping it, or `cancel()`, stops
/// it. Kotlin: `close()` it (or `use {}`); Swift: release it; Python: `cancel()`.
#[derive(uniffi::Object)]
pub struct TaskHandle {
    running: Mutex<Option<Running>>,
}

impl TaskHandle {
    pub(crate) fn task(task: AbortHandle) -> Self {
        Self {
            running: Mutex::new(Some(Running::Task(task))),
        }
    }

    pub(crate) fn live(live: client::LiveHandle) -> Self {
        Self {
            running: Mutex::new(Some(Running::Live(live))),
        }
    }
}

#[uniffi::export]
impl TaskHandle {
    /// Stops it. Safe to call twice.
    pub fn cancel(&self) {
        match lock(&self.running).take() {
            Some(Running::Task(t)) => t.abort(),
            // Dropping the live handle closes the channel and ends its tasks.
            Some(Running::Live(live)) => drop(live),
            None => {}
        }
    }

    /// Whether it stopped (cancelled, or ended because its client closed).
    pub fn is_finished(&self) -> bool {
        match &*lock(&self.running) {
            Some(Running::Task(t)) => t.is_finished(),
            Some(Running::Live(_)) => false,
            None => true,
        }
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A one-shot job on the runtime: joined once, cancelled at will.
struct Job<T> {
    task: Mutex<Option<JoinHandle<Result<T, ClientError>>>>,
    abort: AbortHandle,
}

impl<T> Job<T> {
    fn new(task: JoinHandle<Result<T, ClientError>>) -> Self {
        Self {
            abort: task.abort_handle(),
            task: Mutex::new(Some(task)),
        }
    }

    async fn join(&self) -> Result<T, ClientError> {
        let Some(task) = lock(&self.task).take() else {
            return Err(ClientError::WrongState {
                details: "already joined".into(),
            });
        };
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_cancelled() => Err(ClientError::Cancelled),
            Err(e) => Err(ClientError::Internal {
                details: format!("transfer task: {e}"),
            }),
        }
    }
}

/// An upload in progress (`ClientHandle::start_upload`). Dropping the handle lets it
/// finish; `cancel()` stops it (`join()` then answers `Cancelled`).
#[derive(uniffi::Object)]
pub struct UploadHandle(Job<UploadResult>);

impl UploadHandle {
    pub(crate) fn new(task: JoinHandle<Result<UploadResult, ClientError>>) -> Self {
        Self(Job::new(task))
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl UploadHandle {
    /// Waits for the upload's end. Once only: a second call answers `WrongState`.
    pub async fn join(&self) -> Result<UploadResult, ClientError> {
        self.0.join().await
    }

    pub fn cancel(&self) {
        self.0.abort.abort();
    }
}

/// A download in progress (`ClientHandle::start_message_download`). Dropping the handle
/// lets it finish (the file is cached); `cancel()` stops it and removes the partial file.
#[derive(uniffi::Object)]
pub struct DownloadHandle(Job<std::sync::Arc<PlayableAudio>>);

impl DownloadHandle {
    pub(crate) fn new(
        task: JoinHandle<Result<std::sync::Arc<PlayableAudio>, ClientError>>,
    ) -> Self {
        Self(Job::new(task))
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl DownloadHandle {
    /// Waits for the file. Once only: a second call answers `WrongState`.
    pub async fn join(&self) -> Result<std::sync::Arc<PlayableAudio>, ClientError> {
        self.0.join().await
    }

    pub fn cancel(&self) {
        self.0.abort.abort();
    }
}

/// A playable local file. While the app holds it the cache never evicts the file; close it
/// (Kotlin), release it (Swift) or drop it (Python) when playback ends.
#[derive(uniffi::Object)]
pub struct PlayableAudio(client::AudioHandle);

impl PlayableAudio {
    pub(crate) fn new(handle: client::AudioHandle) -> Self {
        Self(handle)
    }
}

#[uniffi::export]
impl PlayableAudio {
    /// The file to hand to the player.
    pub fn path(&self) -> String {
        self.0.path().display().to_string()
    }

    /// The content's SHA-256 (hex).
    pub fn content_hash(&self) -> String {
        self.0.content_hash().to_string()
    }

    pub fn source(&self) -> AudioSource {
        self.0.source().into()
    }
}
