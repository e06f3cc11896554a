//! Every number the seed fixes, as a default that the app can change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use audio_dedup_core::ports::{Clock, SystemClock};

use crate::auth::{StaticToken, TokenProvider};

#[derive(Clone)]
pub struct ClientConfig {
    /// The API's base URL, e.g. `http://127.0.0.1:3000` or the API Gateway URL.
    pub base_url: String,
    /// Where bearer tokens come from (the local server's token table, or JWTs from the
    /// issuer that the app refreshes). `ClientConfig::new` takes a fixed token;
    /// [`ClientConfig::with_token_provider`] takes a provider.
    pub token_provider: Arc<dyn TokenProvider>,
    /// The live channel's WebSocket URL. `None`: `ws(s)://<base_url>/v1/live` (the local
    /// server); on AWS the WebSocket API's URL (`wss://{id}.execute-api.{region}.amazonaws.com/{stage}`).
    pub live_url: Option<String>,
    /// How often the live channel sends a keepalive (5 min: API Gateway closes a WebSocket
    /// after 10 idle minutes).
    pub live_keepalive: Duration,
    /// Age at which the live channel opens a fresh connection and closes the old one (110
    /// min: API Gateway closes any WebSocket after 2 hours).
    pub live_rotate_after: Duration,
    /// Where the cache lives: `cache.sqlite` and `audio/`.
    pub data_dir: PathBuf,
    /// Threads are synced in the background when the last sync is older than this (60 s).
    pub thread_sync_interval: Duration,
    /// Snapshots kept, exactly (30).
    pub snapshot_capacity: usize,
    /// Audio cache bound in bytes (1 GiB), enforced on every insert.
    pub audio_max_bytes: u64,
    /// Cached audio older than this (since it was fetched) is evicted (30 days).
    pub audio_max_age: Duration,
    /// Retries after the first attempt of a queued operation (3), with delays
    /// `retry_base * 2^n` (1 s, 2 s, 4 s), each scaled by a jitter factor in [0.5, 1.5).
    pub max_retries: u32,
    pub retry_base: Duration,
    /// Longest wait between two attempts (60 s). Matters while offline: attempts that get no
    /// answer never use up `max_retries`, so their delays keep doubling up to this.
    pub max_retry_delay: Duration,
    /// Whether retry delays get jitter (tests turn it off to check delays exactly).
    pub retry_jitter: bool,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Start the background sender with the client (true): it drains the queue on its own,
    /// waking when an operation falls due, after each enqueue, and when requests succeed
    /// again. One-shot tools and exact-timing tests turn it off.
    pub background_sender: bool,
    pub clock: Arc<dyn Clock>,
}

impl ClientConfig {
    pub fn new(
        base_url: impl Into<String>,
        token: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            token_provider: Arc::new(StaticToken(token.into())),
            live_url: None,
            live_keepalive: Duration::from_secs(5 * 60),
            live_rotate_after: Duration::from_secs(110 * 60),
            data_dir: data_dir.into(),
            thread_sync_interval: Duration::from_secs(60),
            snapshot_capacity: 30,
            audio_max_bytes: 1 << 30,
            audio_max_age: Duration::from_secs(30 * 24 * 3600),
            max_retries: 3,
            retry_base: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            retry_jitter: true,
            request_timeout: Duration::from_secs(30),
            background_sender: true,
            clock: Arc::new(SystemClock),
        }
    }

    /// Tokens from `provider` instead of a fixed one.
    pub fn with_token_provider(mut self, provider: Arc<dyn TokenProvider>) -> Self {
        self.token_provider = provider;
        self
    }

    /// The live channel's URL: `live_url`, or the base URL's `/v1/live` over ws(s).
    pub fn live_url(&self) -> String {
        if let Some(u) = &self.live_url {
            return u.clone();
        }
        let base = &self.base_url;
        let ws = match base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some((_, rest)) => format!("ws://{rest}"),
            None => format!("ws://{base}"),
        };
        format!("{ws}/v1/live")
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
