//! audio-dedup client: offline-first caches for a chat-like music app, over this project's
//! API (the local server, or the same API on AWS).
//!
//! One [`Client`] per signed-in user. Everything it caches lives under one folder: the
//! SQLite file `cache.sqlite` (threads, messages, snapshots, sync state, LRU bookkeeping and
//! the offline queue) and `audio/<sha256>` files. See `docs/client.md` for the layout and why
//! it differs from the seed's JSON files.
//!
//! - Threads: [`Client::threads`] answers from the cache at once and syncs in the background
//!   when the last sync is older than 60 s ([`Client::sync_threads`] forces it).
//! - Messages: [`Client::messages`], [`Client::messages_page`] (a page of a long thread),
//!   [`Client::sync_messages`] (incremental, by cursor), [`Client::send_message`] and
//!   [`Client::delete_message`] (optimistic, queued).
//! - Snapshots: [`Client::snapshot`] (LRU of 30, exact).
//! - Audio: [`Client::playable_path`] (size-bounded LRU, 1 GiB).
//! - Library: [`Client::library`], [`Client::sync_library`], [`Client::put_library_item`]
//!   and [`Client::delete_library_item`] (optimistic, queued), [`Client::library_audio`].
//! - Shared audio: [`Client::message_audio`] plays a message's audio for any member.
//! - The offline queue: a background sender drains it on its own
//!   ([`ClientConfig::background_sender`]); [`Client::process_queue`] sends everything now
//!   (when connectivity returns); [`Client::pending_count`], [`Client::clear_queue`],
//!   [`Client::retry_failed`], [`Client::discard_failed`].
//! - Uploads: [`Client::upload_audio`] hashes the file before anything leaves the device.
//! - Updates for the UI: [`Client::subscribe`].
//! - Monitoring and maintenance: [`Client::cache_stats`], [`Client::clear_all`].
//!
//! SQL lives in `store` only; the modules above call its typed functions. Async methods run
//! that blocking work on tokio's blocking pool (`Client::blocking`), never on an executor
//! thread; sync methods (cache reads) run it in place.

pub mod api;
mod audio;
pub mod config;
pub mod error;
mod library;
mod live;
mod maintenance;
mod messages;
mod queue;
mod sender;
mod snapshots;
mod store;
mod sync;
mod threads;
pub mod updates;
mod upload;

use std::path::PathBuf;

pub use api::AudioChoice;
pub use audio::{AudioHandle, AudioSource, Progress};
pub use config::ClientConfig;
pub use error::{ApiError, ClientError, ErrorCode};
pub use library::{LibraryAudio, LibraryItem};
pub use live::LiveHandle;
pub use maintenance::CacheStats;
pub use messages::{Attachment, LocalMessage, MessagePage, MessagePosition};
pub use queue::{Lane, QueueEntry, QueueParseError, QueueReport, QueueState, QueuedOp};
pub use sync::SyncReport;
pub use updates::{Direction, SendState, Update};
pub use upload::UploadOutcome;

use api::Api;
use store::Store;
use updates::Updates;

/// The client. Cheap to clone; clones share the cache and the update stream.
#[derive(Clone)]
pub struct Client {
    cfg: ClientConfig,
    store: Store,
    api: Api,
    updates: Updates,
    audio: audio::AudioState,
    recovered: Option<(PathBuf, usize)>,
    /// One queue pass at a time (the app and a background task may both ask).
    queue_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    bg: sender::Background,
}

impl Client {
    /// Opens the cache under `cfg.data_dir` (creating it). An unreadable cache file is moved
    /// aside and rebuilt, carrying over the queued operations it can still read; see
    /// [`Client::recovered`]. Starts the background sender when
    /// `cfg.background_sender` is set and a tokio runtime is running (outside one it is not
    /// started; call [`Client::start_background_sender`] from inside one).
    pub fn open(cfg: ClientConfig) -> Result<Self, ClientError> {
        let updates = Updates::default();
        let (store, opened) = Store::open(&cfg.data_dir, cfg.now_ms())?;
        let bg = sender::Background::new();
        let api = Api::new(
            &cfg.base_url,
            &cfg.token,
            cfg.request_timeout,
            updates.clone(),
        )?
        .with_back_online(bg.waker());
        let audio = audio::AudioState::new(&cfg.data_dir)?;
        let recovered = opened.moved_to.map(|p| (p, opened.salvaged));
        if let Some((p, n)) = &recovered {
            updates.send(Update::CacheRecovered {
                salvaged: *n,
                moved_to: p.display().to_string(),
            });
        }
        let client = Self {
            cfg,
            store,
            api,
            updates,
            audio,
            recovered,
            queue_lock: Default::default(),
            bg,
        };
        if client.cfg.background_sender {
            client.start_background_sender();
        }
        Ok(client)
    }

    /// Where an unreadable cache was moved, and how many queued operations were carried over,
    /// if opening had to rebuild it.
    pub fn recovered(&self) -> Option<(&std::path::Path, usize)> {
        self.recovered.as_ref().map(|(p, n)| (p.as_path(), *n))
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Whether the last request got an answer. Flipped by requests only.
    pub fn is_online(&self) -> bool {
        self.api.is_online()
    }

    /// The typed API, for calls the caches do not wrap.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Runs blocking work (SQLite, the file system) on tokio's blocking pool with a clone of
    /// this client, so async methods never block an executor thread.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Client) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, ClientError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| ClientError::Task(format!("blocking task: {e}")))?
    }
}
