//! The audio-dedup client for Kotlin, Swift and Python (uniffi, proc-macros).
//!
//! A thin layer: the client library stays Rust-shaped, and this crate owns what the foreign
//! boundary needs: a tokio runtime, objects with explicit lifetimes ([`ClientHandle`] with
//! `shutdown()`), listeners the app implements ([`UpdateListener`], [`ProgressListener`],
//! [`TokenProvider`]), handles that stop work ([`TaskHandle`], [`UploadHandle`],
//! [`DownloadHandle`]), and errors as enums ([`ClientError`]). Nothing here may panic on a
//! path the app calls: a panic must not unwind across the FFI.

mod client;
mod error;
mod handles;
mod listeners;
mod types;

pub use client::{ClientHandle, ClientOptions};
pub use error::{ClientError, FailureReason, SignOutReason, TokenError};
pub use handles::{DownloadHandle, PlayableAudio, TaskHandle, UploadHandle};
pub use listeners::{ProgressListener, TokenProvider, UpdateListener};
pub use types::{
    AudioSource, CacheStats, ChatMessage, ChatThread, ClientState, ClientUpdate, LibraryItem,
    OutgoingAudio, QueueReport, SyncResult, UploadResult,
};

uniffi::setup_scaffolding!();

/// The runtime every client of this process runs on (its tasks, its I/O). Owned here, not by
/// the app: foreign callers have no tokio. Two workers, as the client's own runtime has.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, ClientError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("audio-dedup-ffi")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ClientError::Internal {
            details: format!("starting the runtime: {e}"),
        })
}
