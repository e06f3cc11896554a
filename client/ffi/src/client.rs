//! `ClientHandle`: one signed-in account's client, as foreign code holds it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use audio_dedup_client as client;
use audio_dedup_client::{ClientConfig, Progress, StaticToken};
use audio_dedup_core::{AudioFormat, LibraryItemId, MessageId, ThreadId};
use tokio::sync::broadcast::error::RecvError;

use crate::error::ClientError;
use crate::handles::{DownloadHandle, PlayableAudio, TaskHandle, UploadHandle};
use crate::listeners::{
    progress_fn, ForeignTokens, ProgressListener, TokenProvider, UpdateListener,
};
use crate::runtime;
use crate::types::{
    parse, CacheStats, ChatMessage, ChatThread, ClientState, ClientUpdate, LibraryItem,
    MessagePage, OutgoingAudio, QueueReport, SyncResult, ThreadListEntry, ThreadListPage,
    UploadResult,
};

/// What `ClientHandle.open` needs. Give a `token` (a fixed one; `set_token` replaces it) or a
/// `TokenProvider` to `open`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientOptions {
    /// The API, e.g. `http://127.0.0.1:3000` or the API Gateway URL.
    pub base_url: String,
    /// This account's folder (the cache, the queue, audio files); one client per folder.
    pub data_dir: String,
    #[uniffi(default = None)]
    pub token: Option<String>,
    /// The live channel's WebSocket URL; `None`: the base URL's `/v1/live`.
    #[uniffi(default = None)]
    pub live_url: Option<String>,
    /// Drain the offline queue in the background (true).
    #[uniffi(default = true)]
    pub background_sender: bool,
    /// Per-request timeout; `None`: 30 s.
    #[uniffi(default = None)]
    pub request_timeout_ms: Option<u64>,
}

/// One account's client. Open it once per account and folder; `shutdown()` it at sign-out or
/// when the app no longer needs it. Kotlin's `close()` (or `use {}`) frees the object and so
/// shuts the client down too; the cleaner frees a forgotten one. After `shutdown()` every call
/// answers `ClientError.Closed`. (Not named `close`: Kotlin objects already have one.)
#[derive(uniffi::Object)]
pub struct ClientHandle {
    /// `None` once closed. Calls take a clone (cheap), so `close()` never waits for them.
    client: RwLock<Option<client::Client>>,
}

impl ClientHandle {
    fn client(&self) -> Result<client::Client, ClientError> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ClientError::Closed)
    }

    fn thread_id(id: &str) -> Result<ThreadId, ClientError> {
        parse("thread id", id)
    }

    fn message_id(id: &str) -> Result<MessageId, ClientError> {
        parse("message id", id)
    }

    fn item_id(id: &str) -> Result<LibraryItemId, ClientError> {
        parse("library item id", id)
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl ClientHandle {
    /// Opens (or creates) the cache in `options.data_dir` and starts the background sender.
    /// No request is made. A folder another live client holds answers `FolderInUse`.
    #[uniffi::constructor(default(token_provider = None))]
    pub async fn open(
        options: ClientOptions,
        token_provider: Option<Arc<dyn TokenProvider>>,
    ) -> Result<Arc<Self>, ClientError> {
        let rt = runtime()?;
        let provider: Arc<dyn client::TokenProvider> = match (token_provider, options.token) {
            (Some(p), _) => Arc::new(ForeignTokens(p)),
            (None, Some(t)) => Arc::new(StaticToken(t)),
            (None, None) => {
                return Err(ClientError::invalid(
                    "a token or a token provider is needed",
                ))
            }
        };
        let mut cfg = ClientConfig::new(
            options.base_url,
            String::new(),
            PathBuf::from(options.data_dir),
        )
        .with_token_provider(provider);
        cfg.live_url = options.live_url;
        cfg.background_sender = options.background_sender;
        if let Some(ms) = options.request_timeout_ms {
            cfg.request_timeout = Duration::from_millis(ms);
        }
        // Opened on this crate's runtime, so the client's tasks run there (blocking: SQLite).
        let opened = rt
            .spawn_blocking(move || client::Client::open(cfg))
            .await
            .map_err(|e| ClientError::Internal {
                details: format!("opening: {e}"),
            })??;
        Ok(Arc::new(Self {
            client: RwLock::new(Some(opened)),
        }))
    }

    /// Lets the client go: its background tasks, live channel and update streams end, and
    /// the folder is free once calls still running return. Safe to call twice.
    pub fn shutdown(&self) {
        let closed = self
            .client
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(closed);
    }

    /// Calls `listener` with the current state first, then with every change, until the
    /// returned handle is cancelled or dropped (or the client closes).
    pub fn subscribe(
        self: Arc<Self>,
        listener: Arc<dyn UpdateListener>,
    ) -> Result<Arc<TaskHandle>, ClientError> {
        let rt = runtime()?;
        let c = self.client()?;
        // Subscribed before the state is read, so no change falls between the two.
        let mut updates = c.subscribe();
        let first = ClientState::of(&c)?;
        drop(c);
        // The stream must not keep the client open.
        let me = Arc::downgrade(&self);
        let task = rt.spawn(async move {
            listener.on_update(ClientUpdate::State { state: first });
            loop {
                match updates.recv().await {
                    Ok(u) => listener.on_update(u.into()),
                    Err(RecvError::Lagged(missed)) => {
                        listener.on_update(ClientUpdate::Lagged { missed });
                        let now = me
                            .upgrade()
                            .and_then(|h| h.client().ok())
                            .and_then(|c| ClientState::of(&c).ok());
                        if let Some(state) = now {
                            listener.on_update(ClientUpdate::State { state });
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Ok(Arc::new(TaskHandle::task(task.abort_handle())))
    }

    /// Opens the live channel (a WebSocket: new messages arrive as `MessagesSynced`) and
    /// keeps it open, reconnecting, until the handle is cancelled or dropped.
    pub fn go_live(&self) -> Result<Arc<TaskHandle>, ClientError> {
        Ok(Arc::new(TaskHandle::live(self.client()?.go_live())))
    }

    /// Uses `token` from now on; a signed-out client resumes.
    pub fn set_token(&self, token: String) -> Result<(), ClientError> {
        self.client()?.set_token(token);
        Ok(())
    }

    /// Asks `provider` for tokens from now on.
    pub fn set_token_provider(&self, provider: Arc<dyn TokenProvider>) -> Result<(), ClientError> {
        self.client()?
            .set_token_provider(Arc::new(ForeignTokens(provider)));
        Ok(())
    }

    /// The app went to the background: sending and the live channel stop.
    pub fn pause(&self) -> Result<(), ClientError> {
        self.client()?.pause();
        Ok(())
    }

    pub fn resume(&self) -> Result<(), ClientError> {
        self.client()?.resume();
        Ok(())
    }

    /// The network is back: reconnect and send what waits, skipping the backoff.
    pub fn reconnect_now(&self) -> Result<(), ClientError> {
        self.client()?.reconnect_now();
        Ok(())
    }

    pub fn state(&self) -> Result<ClientState, ClientError> {
        ClientState::of(&self.client()?)
    }

    /// Creates a thread on the server (online only) with the caller and `members`.
    #[uniffi::method(default(thread_id = None))]
    pub async fn create_thread(
        &self,
        title: String,
        members: Vec<String>,
        thread_id: Option<String>,
    ) -> Result<ChatThread, ClientError> {
        let c = self.client()?;
        let id = thread_id.as_deref().map(Self::thread_id).transpose()?;
        Ok(c.create_thread(id.as_ref(), &title, &members).await?.into())
    }

    /// The cached threads, at once; a sync starts in the background when the last one is
    /// a minute old (`ThreadsChanged` follows).
    pub fn threads(&self) -> Result<Vec<ChatThread>, ClientError> {
        Ok(self
            .client()?
            .threads()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Syncs the thread list now; answers how many threads changed.
    pub async fn sync_threads(&self) -> Result<u64, ClientError> {
        let n = self.client()?.sync_threads().await?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// A thread's live messages from the cache (no request), oldest first, unsent last.
    pub fn messages(&self, thread_id: String) -> Result<Vec<ChatMessage>, ClientError> {
        let thread = Self::thread_id(&thread_id)?;
        Ok(self
            .client()?
            .messages(&thread)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Fetches a thread's changes since the last sync.
    pub async fn sync_messages(&self, thread_id: String) -> Result<SyncResult, ClientError> {
        let thread = Self::thread_id(&thread_id)?;
        Ok(self.client()?.sync_messages(&thread).await?.into())
    }

    /// Sends a message: shown at once as `SENDING`, queued durably, sent when it can be.
    /// `snapshot_json` is any JSON value but null; `text` an optional plain text (at most
    /// 2,000 characters, no control characters but line feed and tab).
    #[uniffi::method(default(audio = None, text = None))]
    pub async fn send_message(
        &self,
        thread_id: String,
        snapshot_json: String,
        audio: Option<OutgoingAudio>,
        text: Option<String>,
    ) -> Result<ChatMessage, ClientError> {
        let c = self.client()?;
        let thread = Self::thread_id(&thread_id)?;
        let snapshot: serde_json::Value = serde_json::from_str(&snapshot_json)
            .map_err(|e| ClientError::invalid(format!("the snapshot is not JSON: {e}")))?;
        let audio = audio.map(OutgoingAudio::into_attachment).transpose()?;
        Ok(
            c.send_message_with_text(&thread, &snapshot, text.as_deref(), audio)
                .await?
                .into(),
        )
    }

    /// The thread list from the cache: newest activity first, at most `limit` threads, each
    /// with its last activity, a preview of its newest message and the unread count.
    pub fn thread_list(&self, limit: u32) -> Result<Vec<ThreadListEntry>, ClientError> {
        Ok(self
            .client()?
            .thread_list(None, limit.max(1) as usize)?
            .threads
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// A page of the thread list from the cache: newest activity first, at most `limit`
    /// threads after `before` (`None`: from the newest; else a page's `older`).
    #[uniffi::method(default(before = None))]
    pub fn thread_list_page(
        &self,
        limit: u32,
        before: Option<String>,
    ) -> Result<ThreadListPage, ClientError> {
        let before = before
            .map(|b| parse::<client::ThreadListPosition>("thread list position", &b))
            .transpose()?;
        let page = self
            .client()?
            .thread_list(before.as_ref(), limit.max(1) as usize)?;
        Ok(ThreadListPage {
            threads: page.threads.into_iter().map(Into::into).collect(),
            older: page.older.map(|p| p.to_string()),
        })
    }

    /// A page of a thread's live messages from the cache: the newest `limit` before `before`
    /// (`None`: the thread's end; else a page's `older`), oldest first.
    #[uniffi::method(default(before = None))]
    pub fn messages_page(
        &self,
        thread_id: String,
        limit: u32,
        before: Option<String>,
    ) -> Result<MessagePage, ClientError> {
        let thread = Self::thread_id(&thread_id)?;
        let before = before
            .map(|b| parse::<client::MessagePosition>("message position", &b))
            .transpose()?;
        let page = self
            .client()?
            .messages_page(&thread, before, limit.max(1) as usize)?;
        Ok(MessagePage {
            messages: page.messages.into_iter().map(Into::into).collect(),
            older: page.older.map(|p| p.to_string()),
        })
    }

    /// Removes a member from a thread (online; the creator only, or the member themselves).
    pub async fn remove_member(&self, thread_id: String, user: String) -> Result<(), ClientError> {
        let thread = Self::thread_id(&thread_id)?;
        let user = parse("user id", &user)?;
        Ok(self.client()?.remove_member(&thread, &user).await?)
    }

    /// Marks a thread read up to its newest cached message: the unread count drops at once,
    /// the marker is queued for the server and the caller's other devices.
    pub async fn mark_read(&self, thread_id: String) -> Result<(), ClientError> {
        let thread = Self::thread_id(&thread_id)?;
        Ok(self.client()?.mark_read(&thread, None).await?)
    }

    /// Adds a member to a thread (online; any member may).
    pub async fn add_member(
        &self,
        thread_id: String,
        user: String,
    ) -> Result<ChatThread, ClientError> {
        let thread = Self::thread_id(&thread_id)?;
        let user = parse("user id", &user)?;
        Ok(self.client()?.add_member(&thread, &user).await?.into())
    }

    /// Leaves a thread (online): this cache forgets it, its messages and snapshots.
    pub async fn leave_thread(&self, thread_id: String) -> Result<(), ClientError> {
        let thread = Self::thread_id(&thread_id)?;
        Ok(self.client()?.leave_thread(&thread).await?)
    }

    /// Deletes a message (optimistic; an unsent one is cancelled without a request).
    pub async fn delete_message(
        &self,
        thread_id: String,
        message_id: String,
    ) -> Result<(), ClientError> {
        let (t, m) = (Self::thread_id(&thread_id)?, Self::message_id(&message_id)?);
        Ok(self.client()?.delete_message(&t, &m).await?)
    }

    /// A message's snapshot (JSON text): the cache, or downloaded and verified.
    pub async fn snapshot(&self, message_id: String) -> Result<String, ClientError> {
        let m = Self::message_id(&message_id)?;
        let bytes = self.client()?.snapshot(&m).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Corrupt {
            details: format!("snapshot of {message_id} is not UTF-8: {e}"),
        })
    }

    /// A message's audio as a local file: the cache, or a download (verified by hash).
    #[uniffi::method(default(progress = None))]
    pub async fn play_message(
        &self,
        thread_id: String,
        message_id: String,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Arc<PlayableAudio>, ClientError> {
        // The cancellable job, awaited here.
        self.start_message_download(thread_id, message_id, progress)?
            .join()
            .await
    }

    /// `play_message` as a job the app can cancel.
    #[uniffi::method(default(progress = None))]
    pub fn start_message_download(
        &self,
        thread_id: String,
        message_id: String,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Arc<DownloadHandle>, ClientError> {
        let (t, m) = (Self::thread_id(&thread_id)?, Self::message_id(&message_id)?);
        let c = self.client()?;
        let task = runtime()?.spawn(async move {
            let report = progress_fn(progress);
            let handle = c
                .message_audio(&t, &m, report.as_ref().map(|f| f as Progress<'_>))
                .await?;
            Ok(Arc::new(PlayableAudio::new(handle)))
        });
        Ok(Arc::new(DownloadHandle::new(task)))
    }

    /// Uploads a local file now: hashed first; nothing is sent when the server has it.
    #[uniffi::method(default(progress = None))]
    pub async fn upload_audio(
        &self,
        path: String,
        format: AudioFormat,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<UploadResult, ClientError> {
        // The cancellable job, awaited here.
        self.start_upload(path, format, progress)?.join().await
    }

    /// `upload_audio` as a job the app can cancel.
    #[uniffi::method(default(progress = None))]
    pub fn start_upload(
        &self,
        path: String,
        format: AudioFormat,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Arc<UploadHandle>, ClientError> {
        let c = self.client()?;
        let task = runtime()?.spawn(async move {
            let report = progress_fn(progress);
            Ok(c.upload_audio(
                std::path::Path::new(&path),
                format,
                report.as_ref().map(|f| f as Progress<'_>),
            )
            .await?
            .into())
        });
        Ok(Arc::new(UploadHandle::new(task)))
    }

    /// The library from the cache (no request).
    pub fn library(&self) -> Result<Vec<LibraryItem>, ClientError> {
        Ok(self
            .client()?
            .library()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn sync_library(&self) -> Result<SyncResult, ClientError> {
        Ok(self.client()?.sync_library().await?.into())
    }

    /// Puts a library item (optimistic, queued): a file, uploaded content, or a message's
    /// audio (saving someone's track).
    pub async fn put_library_item(
        &self,
        item_id: String,
        audio: OutgoingAudio,
        title: String,
    ) -> Result<LibraryItem, ClientError> {
        let id = Self::item_id(&item_id)?;
        let audio = audio.into_library_audio()?;
        Ok(self
            .client()?
            .put_library_item(&id, audio, &title)
            .await?
            .into())
    }

    pub async fn delete_library_item(&self, item_id: String) -> Result<(), ClientError> {
        let id = Self::item_id(&item_id)?;
        Ok(self.client()?.delete_library_item(&id).await?)
    }

    /// A library item's audio as a local file.
    #[uniffi::method(default(progress = None))]
    pub async fn play_library_item(
        &self,
        item_id: String,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Arc<PlayableAudio>, ClientError> {
        let id = Self::item_id(&item_id)?;
        let c = self.client()?;
        let report = progress_fn(progress);
        let handle = c
            .library_audio(&id, report.as_ref().map(|f| f as Progress<'_>))
            .await?;
        Ok(Arc::new(PlayableAudio::new(handle)))
    }

    /// Connectivity is back: sends everything pending now (backoff skipped).
    pub async fn process_queue(&self) -> Result<QueueReport, ClientError> {
        Ok(self.client()?.process_queue().await?.into())
    }

    pub fn pending_count(&self) -> Result<u64, ClientError> {
        Ok(u64::try_from(self.client()?.pending_count()?).unwrap_or(u64::MAX))
    }

    pub fn cache_stats(&self) -> Result<CacheStats, ClientError> {
        Ok(self.client()?.cache_stats()?.into())
    }

    /// Logout: wipes the folder (cache, queue, audio) and closes this client.
    pub async fn clear_all(&self) -> Result<(), ClientError> {
        let c = self.client()?;
        let wiped = c.clear_all().await;
        drop(c);
        self.shutdown();
        Ok(wiped?)
    }
}
