//! The tokio runtime the client's tasks and I/O run on: the one the app is running in when it
//! opens the client, or else one the client owns (so sync methods called from a UI thread, and
//! the background tasks they start, work without the app running tokio).

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use crate::error::ClientError;

#[derive(Clone)]
pub(crate) struct ClientRuntime {
    handle: Handle,
    /// Held by the app's clients only (tasks' copies drop it), so the owned runtime is shut
    /// down where the app drops its last client, never on one of the runtime's own threads.
    _owned: Option<Arc<Owned>>,
}

struct Owned(Option<Runtime>);

/// How long dropping the client's own runtime waits for its tasks to be dropped, when the
/// last client is dropped outside any runtime: none of them still touches the cache after.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

impl Drop for Owned {
    fn drop(&mut self) {
        let Some(rt) = self.0.take() else { return };
        // Inside some runtime, blocking is not allowed: do not wait (tasks end by the
        // lifeline anyway). Outside, wait, so every task has ended when `drop` returns.
        if Handle::try_current().is_ok() {
            rt.shutdown_background();
        } else {
            rt.shutdown_timeout(SHUTDOWN_WAIT);
        }
    }
}

impl ClientRuntime {
    /// The current runtime, or a new two-thread one the client owns.
    pub(crate) fn find_or_start() -> Result<Self, ClientError> {
        if let Ok(handle) = Handle::try_current() {
            return Ok(Self {
                handle,
                _owned: None,
            });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("audio-dedup-client")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: rt.handle().clone(),
            _owned: Some(Arc::new(Owned(Some(rt)))),
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// A copy for the client's own tasks: it does not keep an owned runtime alive.
    pub(crate) fn for_task(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            _owned: None,
        }
    }
}

/// One client per cache folder: an exclusive lock on `client.lock`, held by the app's clones
/// of the client (its tasks end at their next step once the last of those is dropped). A
/// second client (another process, or a forgotten one in this process) gets
/// [`ClientError::FolderInUse`] instead of a second sender on one queue.
pub(crate) struct FolderLock {
    /// Closing the file releases the lock (`release`, at logout).
    file: std::sync::Mutex<Option<std::fs::File>>,
}

impl FolderLock {
    pub(crate) fn acquire(dir: &std::path::Path) -> Result<Self, ClientError> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("client.lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                file: std::sync::Mutex::new(Some(file)),
            }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(ClientError::FolderInUse(dir.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Lets the folder go (logout: the next user's client opens it).
    pub(crate) fn release(&self) {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Polls `fut` with the client's runtime entered, so a public async method works when the
/// app awaits it from a thread, or an executor, that is not tokio's: its timers, spawns and
/// sockets find the client's runtime.
pub(crate) struct InRuntime<F> {
    handle: Handle,
    fut: std::pin::Pin<Box<F>>,
}

impl<F: std::future::Future> std::future::Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _entered = self.handle.enter();
        self.fut.as_mut().poll(cx)
    }
}

/// [`InRuntime`] over `fut`.
pub(crate) fn in_runtime<F: std::future::Future>(handle: &Handle, fut: F) -> InRuntime<F> {
    InRuntime {
        handle: handle.clone(),
        fut: Box::pin(fut),
    }
}
