//! The typed stream of changes the UI listens to.

use audio_dedup_core::{ContentHash, LibraryItemId, MessageId, ThreadId};
use tokio::sync::broadcast;

use crate::auth::TokenUnavailable;
use crate::failure::FailureReason;

/// Where a message stands on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    /// Shown at once; queued or being sent.
    Sending,
    /// Acknowledged by the server.
    Sent,
    /// Refused for good (4xx) or out of retries; `retry` or `discard` it.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A local message changed state (optimistic create or delete, ack, failure, rollback).
    Message {
        thread_id: ThreadId,
        message_id: MessageId,
        state: SendState,
        error: Option<FailureReason>,
    },
    /// A local message was rolled back (discarded after failing, or cancelled unsent).
    MessageRemoved {
        thread_id: ThreadId,
        message_id: MessageId,
    },
    /// A sync brought changes from the server.
    MessagesSynced {
        thread_id: ThreadId,
        new: usize,
        deleted: usize,
    },
    ThreadsChanged {
        count: usize,
    },
    /// A library item changed on this device: put or deleted optimistically (`Sending`),
    /// acknowledged (`Sent`), failed (`Failed` + reason), retried, or a failed deletion
    /// rolled back (`Sent`).
    LibraryItem {
        item_id: LibraryItemId,
        state: SendState,
        error: Option<FailureReason>,
    },
    /// A library item left the list: deleted optimistically, or an unsent put rolled back.
    LibraryItemRemoved {
        item_id: LibraryItemId,
    },
    /// A library sync brought changes (from another device, or acknowledgements).
    LibrarySynced {
        changed: usize,
        deleted: usize,
    },
    /// The queue's size changed.
    Queue {
        pending: usize,
        failed: usize,
    },
    /// Bytes moved for one transfer.
    Transfer {
        hash: ContentHash,
        direction: Direction,
        done: u64,
        total: u64,
    },
    /// No token the server accepts: the queue and the live channel wait until the app (or
    /// its token provider) hands over a new one. Nothing queued is lost or marked failed.
    AuthRequired {
        reason: TokenUnavailable,
    },
    /// A new token works again; the queue and the live channel resumed by themselves.
    AuthRestored,
    /// Requests started failing (offline) or succeeding again (online).
    Connectivity {
        online: bool,
    },
    /// The cache file was unreadable: moved aside and rebuilt; `salvaged` queued operations
    /// were carried over.
    CacheRecovered {
        salvaged: usize,
        moved_to: String,
    },
}

#[derive(Clone)]
pub struct Updates(broadcast::Sender<Update>);

impl Default for Updates {
    fn default() -> Self {
        Self(broadcast::channel(1024).0)
    }
}

impl Updates {
    pub fn send(&self, u: Update) {
        // No listener is fine: the UI may not be subscribed yet.
        let _ = self.0.send(u);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.0.subscribe()
    }
}
