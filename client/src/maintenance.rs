//! Monitoring and maintenance. (Being written.)

/// What the cache holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub threads: u64,
    pub messages: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub audio_files: u64,
    pub audio_bytes: u64,
    pub pending_operations: u64,
    pub failed_operations: u64,
    /// Last sync time (ms since the epoch) per scope (`threads`, `messages:<thread>`, ...).
    pub last_syncs: Vec<(String, i64)>,
}
