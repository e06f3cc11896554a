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
pub mod auth;
pub mod config;
mod control;
pub mod error;
mod failure;
mod library;
mod live;
mod maintenance;
mod messages;
mod outbox;
mod parts;
mod queue;
mod runtime;
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
pub use auth::{StaticToken, TokenFuture, TokenProvider, TokenUnavailable};
pub use config::ClientConfig;
pub use error::{ApiError, ClientError, ErrorCode};
pub use failure::FailureReason;
pub use library::{LibraryAudio, LibraryItem};
pub use live::LiveHandle;
pub use maintenance::CacheStats;
pub use messages::{Attachment, LocalMessage, MessagePage, MessagePosition};
pub use queue::{Lane, QueueEntry, QueueParseError, QueueReport, QueueState, QueuedOp};
pub use sync::SyncReport;
pub use threads::{Preview, ThreadListPage, ThreadListPosition, ThreadSummary};
pub use updates::{Direction, SendState, Update};
pub use upload::UploadOutcome;

use api::Api;
use auth::Auth;
use control::Control;
use runtime::{ClientRuntime, FolderLock};
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
    /// One pass per lane at a time (the app and a background task may both ask); lanes
    /// run side by side.
    lanes: queue::LaneLocks,
    bg: sender::Background,
    auth: Auth,
    pub(crate) ctl: Control,
    rt: ClientRuntime,
    /// The cache folder is this client's while the app holds a clone of it (`None` in
    /// tasks' copies).
    pub(crate) folder: Option<std::sync::Arc<FolderLock>>,
}

impl Client {
    /// Opens the cache under `cfg.data_dir` (creating it). An unreadable cache file is moved
    /// aside and rebuilt, carrying over the queued operations it can still read; see
    /// [`Client::recovered`]. Starts the background sender when `cfg.background_sender` is
    /// set. Works from any thread: its tasks run on the tokio runtime it is opened in, or on
    /// one of its own. A folder another live client holds answers
    /// [`ClientError::FolderInUse`].
    pub fn open(cfg: ClientConfig) -> Result<Self, ClientError> {
        let folder = std::sync::Arc::new(FolderLock::acquire(&cfg.data_dir)?);
        let rt = ClientRuntime::find_or_start()?;
        let updates = Updates::default();
        let (store, opened) = Store::open(&cfg.data_dir, cfg.now_ms())?;
        let bg = sender::Background::new();
        let auth = Auth::new(cfg.token_provider.clone());
        let api = Api::new(
            &cfg.base_url,
            auth.clone(),
            rt.handle().clone(),
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
            lanes: Default::default(),
            bg,
            auth,
            ctl: Control::default(),
            rt,
            folder: Some(folder),
        };
        // Staged recordings no queued upload needs (cancelled, discarded, a kill before
        // queueing): nothing else runs yet, so none is about to be queued.
        if let Err(e) = client.sweep_outbox() {
            tracing::warn!(error = %e, "outbox not swept");
        }
        if client.cfg.background_sender {
            client.start_background_sender();
        }
        // WAL checkpoints, beside the client's writes (see `Store::checkpoint`).
        let due = client.store.checkpoint_due();
        client.spawn_task(|c| async move {
            loop {
                due.notified().await;
                if let Err(e) = c.blocking(|c| c.store.checkpoint()).await {
                    tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
                }
            }
        });
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

    /// Uses `token` from now on (for apps that push tokens rather than provide them); a
    /// signed-out client resumes its queue and live channel.
    pub fn set_token(&self, token: impl Into<String>) {
        self.auth.set_token(token.into());
        self.bg.wake();
    }

    /// Asks `provider` for tokens from now on; a signed-out client resumes.
    pub fn set_token_provider(&self, provider: std::sync::Arc<dyn TokenProvider>) {
        self.auth.set_provider(provider);
        self.bg.wake();
    }

    /// Whether the client is waiting for a new token (`Update::AuthRequired` was sent).
    pub fn is_signed_out(&self) -> bool {
        self.auth.is_signed_out()
    }

    /// Changes whenever a new token is handed over (the live channel waits on it).
    pub fn auth_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.auth.generations()
    }

    /// Stops sending and closes the live channel (the app went to the background). Queued
    /// operations stay queued; cache reads and direct calls still work. Any thread.
    pub fn pause(&self) {
        self.ctl.set_paused(true);
    }

    /// Undoes `pause`: the sender drains what waited, the live channel reconnects.
    pub fn resume(&self) {
        self.ctl.set_paused(false);
        self.bg.wake();
    }

    pub fn is_paused(&self) -> bool {
        self.ctl.is_paused()
    }

    /// The app came to the foreground or the OS says the network is back: the live channel
    /// reconnects and the queue sends everything pending now, skipping their backoff.
    pub fn reconnect_now(&self) {
        self.ctl.reconnect_now();
        self.bg.reconnected();
    }

    /// The runtime the client's tasks run on (the app's, or the client's own).
    pub(crate) fn runtime(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    /// A copy for the client's own tasks: it keeps neither the app's lifeline nor an owned
    /// runtime, so dropping the app's last client still ends the tasks.
    pub(crate) fn for_task(&self) -> Self {
        let mut me = self.clone();
        me.bg = me.bg.for_task();
        me.rt = me.rt.for_task();
        me.folder = None;
        me
    }

    /// Runs `work` on the client's runtime until it ends or the app's last client goes.
    pub(crate) fn spawn_task<F>(&self, work: impl FnOnce(Client) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.bg.stopped();
        let fut = work(self.for_task());
        self.rt.handle().spawn(async move {
            tokio::select! {
                _ = stop => {}
                _ = fut => {}
            }
        });
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
        let me = self.for_task();
        self.rt
            .handle()
            .spawn_blocking(move || f(&me))
            .await
            .map_err(|e| ClientError::Task(format!("blocking task: {e}")))?
    }
}
