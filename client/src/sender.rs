//! The background sender: one task per `Client` that drains the queue on its own.
//!
//! - It runs a pass of what is due (`Client::process_due`: the normal backoff and
//!   Retry-After), then sleeps until the earliest due time among the lanes' heads, or until
//!   woken: after each enqueue (once its transaction committed), and when a request gets an
//!   answer again after failing (`api.rs`). That last one means the client is back online,
//!   so the next pass is `Client::process_queue`, as if the app had called it: every
//!   pending operation now, skipping the backoff that the outage built up, still honouring
//!   Retry-After.
//! - It holds no `Client` that keeps the client alive: its own copy has no lifeline. When the
//!   last `Client` is dropped, the lifeline's channel closes and the task ends, dropping a
//!   pass in flight (the operation stays queued; resending is idempotent). `clear_all`
//!   stops it the same way before wiping.
//! - It runs on the client's runtime (the app's, or the client's own when the app opened it
//!   outside tokio). It waits while the app has paused the client, and while signed out it
//!   asks the token provider again once a minute; a new token wakes it at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::Client;

/// Shortest sleep after a pass that left a due operation unsent (an error in the pass), so
/// the task never spins.
const MIN_SLEEP: Duration = Duration::from_millis(100);
/// Longest sleep: due times are re-read at least this often (the wall clock may jump).
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct Background {
    wake: Arc<Notify>,
    /// Notified when requests get answers again after failing.
    reconnected: Arc<Notify>,
    /// Held by every `Client` the app has; dropped with the last one, which ends the task.
    /// `None` in the task's own copy.
    life: Option<Arc<watch::Sender<bool>>>,
    /// Every copy's view of the lifeline: true once stopped; closed with the last client.
    stop: watch::Receiver<bool>,
    started: Arc<AtomicBool>,
}

impl Background {
    pub(crate) fn new() -> Self {
        let (life, stop) = watch::channel(false);
        Self {
            wake: Arc::new(Notify::new()),
            reconnected: Arc::new(Notify::new()),
            life: Some(Arc::new(life)),
            stop,
            started: Arc::default(),
        }
    }

    /// A copy for a task: it does not hold the lifeline.
    pub(crate) fn for_task(&self) -> Self {
        Self {
            life: None,
            ..self.clone()
        }
    }

    /// Resolves when the client is stopped (logout) or its last app-held copy is dropped.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            // Err: every sender is gone, the last client was dropped.
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// As if requests got answers again: the next pass sends everything pending now.
    pub(crate) fn reconnected(&self) {
        self.reconnected.notify_one();
    }

    /// What `api.rs` notifies when requests get answers again.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.reconnected.clone()
    }

    /// Wakes the task (a permit is kept if it is busy, so no wake is lost).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Ends the task for good (logout).
    pub(crate) fn stop(&self) {
        if let Some(l) = &self.life {
            l.send_replace(true);
        }
    }
}

impl Client {
    /// Starts the background sender if it is not running (`false` after logout).
    /// `Client::open` calls it when `ClientConfig::background_sender` is set.
    pub fn start_background_sender(&self) -> bool {
        let Some(life) = &self.bg.life else {
            return false;
        };
        let stop = life.subscribe();
        if *stop.borrow() || self.store.is_closed() {
            return false;
        }
        if self.bg.started.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.runtime().spawn(self.for_task().run_sender(stop));
        true
    }

    /// Whether the background sender is running (started and not stopped).
    pub fn background_sender_running(&self) -> bool {
        self.bg.started.load(Ordering::SeqCst)
            && self.bg.life.as_ref().is_some_and(|l| !*l.borrow())
    }

    async fn run_sender(self, mut stop: watch::Receiver<bool>) {
        tracing::debug!("background sender started");
        let mut back_online = false;
        let mut paused = self.ctl.paused();
        // Bounded by the lifeline: it ends when the last client goes or on logout.
        loop {
            if *stop.borrow() || self.store.is_closed() {
                break;
            }
            // Paused by the app: nothing is sent until it resumes.
            if *paused.borrow_and_update() {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    r = paused.changed() => if r.is_err() { break },
                }
                back_online = true;
                continue;
            }
            let pass = async {
                if std::mem::take(&mut back_online) {
                    self.process_queue().await
                } else {
                    self.process_due().await
                }
            };
            tokio::select! {
                biased;
                // Ok: stopped; Err: the last client was dropped.
                _ = stop.changed() => break,
                r = pass => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "background queue pass failed");
                    }
                }
            }
            let now = self.cfg.now_ms();
            let sleep = match self.blocking(|c| c.store.next_due()).await {
                // Signed out: the provider is asked again now and then, and a new token
                // (`set_token`, or a request that works) wakes the task at once.
                _ if self.auth.is_signed_out() => MAX_SLEEP,
                Ok(Some(due)) if due > now => {
                    Duration::from_millis(u64::try_from(due - now).unwrap_or(0)).min(MAX_SLEEP)
                }
                Ok(Some(_)) => MIN_SLEEP,
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the queue's due times failed");
                    MAX_SLEEP
                }
            };
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = self.bg.wake.notified() => {}
                _ = self.bg.reconnected.notified() => back_online = true,
                _ = paused.changed() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        tracing::debug!("background sender stopped");
    }
}
