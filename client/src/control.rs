//! What the app steers: pause and resume (the app goes to the background and back), and
//! "reconnect now" (it came to the foreground, or the OS says the network is back). Safe to
//! call from any thread; the background sender and the live channel watch these.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub(crate) struct Control {
    paused: Arc<watch::Sender<bool>>,
    /// Bumped by every `reconnect_now`.
    reconnects: Arc<watch::Sender<u64>>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            paused: Arc::new(watch::channel(false).0),
            reconnects: Arc::new(watch::channel(0).0),
        }
    }
}

impl Control {
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Changes on pause and resume.
    pub(crate) fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    pub(crate) fn reconnect_now(&self) {
        self.reconnects.send_modify(|n| *n += 1);
    }

    /// Changes on every `reconnect_now`.
    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}
