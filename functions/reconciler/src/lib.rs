//! The scheduled reconciler: one pass per EventBridge schedule tick. Its own function (not a
//! branch of `s3-events`) so it alone holds `s3:ListBucket`, and a slow pass never delays
//! event handling.

use audio_dedup_core::ports::{BlobStore, Clock, TransactionalIndex};
use audio_dedup_core::{Dedup, DedupError, ReconcileReport};

/// Runs one pass. The event's content is not needed: any invocation means "reconcile now".
/// With `METRICS_NAMESPACE` set (the template sets it), the backlog goes to stdout as metrics.
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
    if let Some(ns) = std::env::var("METRICS_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
    {
        let now_ms = audio_dedup_core::ports::SystemClock.now_ms();
        println!("{}", backlog_metrics(&ns, &report, now_ms));
    }
    Ok(report)
}

/// The pass's backlog as one CloudWatch Embedded Metric Format line: printed to stdout,
/// Lambda's log pipeline turns it into the metrics `DueItemsLeft` and `OldestDueAgeSeconds`
/// (dimension `Service=reconciler`) in `namespace`, which the template's backlog alarm watches.
pub fn backlog_metrics(namespace: &str, report: &ReconcileReport, now_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Service"]],
                "Metrics": [
                    { "Name": "DueItemsLeft", "Unit": "Count" },
                    { "Name": "OldestDueAgeSeconds", "Unit": "Seconds" },
                    { "Name": "WorkItems", "Unit": "Count" },
                    { "Name": "ObjectsSwept", "Unit": "Count" }
                ]
            }]
        },
        "Service": "reconciler",
        "DueItemsLeft": report.due_left,
        "OldestDueAgeSeconds": report.oldest_due_age_seconds,
        "WorkItems": report.work_items,
        "ObjectsSwept": report.objects_swept,
    })
    .to_string()
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

    /// The line follows the EMF specification: every metric the directive names is a
    /// number at the top level, and the dimension is there too.
    #[test]
    fn backlog_metrics_are_an_emf_line_naming_what_they_carry() {
        let report = audio_dedup_core::ReconcileReport {
            due_left: 7,
            oldest_due_age_seconds: 90,
            work_items: 3,
            objects_swept: 100,
            ..Default::default()
        };
        let line = super::backlog_metrics("my-stack", &report, 1_796_000_000_000);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "my-stack");
        assert_eq!(v["_aws"]["Timestamp"], 1_796_000_000_000i64);
        for dims in directive["Dimensions"].as_array().unwrap() {
            for d in dims.as_array().unwrap() {
                assert!(v[d.as_str().unwrap()].is_string());
            }
        }
        let metrics = directive["Metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 4);
        for m in metrics {
            assert!(v[m["Name"].as_str().unwrap()].is_u64(), "{m}");
        }
        assert_eq!(
            (
                v["DueItemsLeft"].as_u64(),
                v["OldestDueAgeSeconds"].as_u64()
            ),
            (Some(7), Some(90))
        );
    }
}
