//! The scheduled reconciler: one pass per EventBridge schedule tick. Its own function (not a
//! branch of `s3-events`) so it alone holds `s3:ListBucket`, and a slow pass never delays
//! event handling.

use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::{Dedup, DedupError, ReconcileReport};

/// Runs one pass. The event's content is not needed: any invocation means "reconcile now".
pub async fn handle<B: BlobStore, I: TransactionalIndex>(
    dedup: &Dedup<B, I>,
    event: serde_json::Value,
) -> Result<ReconcileReport, DedupError> {
    let source = event
        .get("source")
        .and_then(|s| s.as_str())
        .unwrap_or("manual");
    let report = dedup.reconcile().await?;
    tracing::info!(source, ?report, "reconciler pass");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use audio_dedup_core::protocol::keys;
    use audio_dedup_core::store::memory::{MemoryBlobs, MemoryIndex};
    use audio_dedup_core::{ContentHash, Dedup, DedupConfig};

    #[tokio::test]
    async fn a_scheduled_event_runs_a_pass_that_removes_orphans() {
        let blobs = MemoryBlobs::default();
        let d = Dedup::new(
            blobs.clone(),
            MemoryIndex::default(),
            DedupConfig::default(),
        );
        let data = bytes::Bytes::from_static(b"orphaned");
        blobs.client_put(&keys::blob_key("", &ContentHash::of(&data)), data, "direct");
        let event = serde_json::json!({
            "version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-24T00:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/reconcile"], "detail": {}
        });
        let report = super::handle(&d, event).await.unwrap();
        assert_eq!(report.orphans_deleted, 1);
        assert!(blobs.objects().is_empty());
    }
}
