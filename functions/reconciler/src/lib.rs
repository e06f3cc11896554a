//! The scheduled reconciler: one pass per EventBridge schedule tick. Its own function (not a
//! branch of `s3-events`) so it alone holds `s3:ListBucket`, and a slow pass never delays
//! event handling. Each pass also samples drift between the table and the bucket
//! ([`drift`]) and publishes the dedup figures as metrics.

pub mod drift;

use audio_dedup_core::ports::{BlobStore, Clock, TransactionalIndex};
use audio_dedup_core::{Dedup, DedupError, ReconcileReport, Stats};
use serde::Serialize;

pub use drift::{check_drift, DriftCheck};

/// What one invocation did: the pass, and the drift check after it.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct PassReport {
    #[serde(flatten)]
    pub pass: ReconcileReport,
    /// Sampled live records checked against the bucket this pass.
    pub drift_checked: u64,
    /// Of those, records whose exact object version is missing (metric `DriftMissingObjects`).
    pub drift_missing_objects: u64,
}

/// Runs one pass, then the drift check. The event's content is not needed: any invocation
/// means "reconcile now". With `METRICS_NAMESPACE` set (the template sets it), the backlog,
/// the drift and the dedup figures go to stdout as metrics.
pub async fn handle<B: BlobStore, I: TransactionalIndex>(
    dedup: &Dedup<B, I>,
    event: serde_json::Value,
) -> Result<PassReport, DedupError> {
    let source = event
        .get("source")
        .and_then(|s| s.as_str())
        .unwrap_or("manual");
    let pass = dedup.reconcile().await?;
    // A failed drift check must not fail the pass (the backlog metric would go missing and
    // alarm for the wrong reason): it is logged, and counts nothing.
    let drift = match check_drift(dedup).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "drift check failed; next pass retries");
            DriftCheck::default()
        }
    };
    let report = PassReport {
        pass,
        drift_checked: drift.checked,
        drift_missing_objects: drift.missing,
    };
    tracing::info!(source, ?report, "reconciler pass");
    if let Some(ns) = std::env::var("METRICS_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
    {
        let now_ms = audio_dedup_core::ports::SystemClock.now_ms();
        println!("{}", backlog_metrics(&ns, &report, now_ms));
        match dedup.audio().stats().await {
            Ok(stats) => println!("{}", dedup_metrics(&ns, &stats, now_ms)),
            Err(e) => tracing::warn!(error = %e, "stats not read; dedup metrics skipped"),
        }
    }
    Ok(report)
}

/// The pass's backlog and drift as one CloudWatch Embedded Metric Format line: printed to
/// stdout, Lambda's log pipeline turns it into the metrics `DueItemsLeft`,
/// `OldestDueAgeSeconds`, `WorkItems`, `ObjectsSwept` and `DriftMissingObjects` (dimension
/// `Service=reconciler`) in `namespace`, which the template's alarms and dashboard read.
pub fn backlog_metrics(namespace: &str, report: &PassReport, now_ms: i64) -> String {
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
                    { "Name": "ObjectsSwept", "Unit": "Count" },
                    { "Name": "DriftMissingObjects", "Unit": "Count" }
                ]
            }]
        },
        "Service": "reconciler",
        "DueItemsLeft": report.pass.due_left,
        "OldestDueAgeSeconds": report.pass.oldest_due_age_seconds,
        "WorkItems": report.pass.work_items,
        "ObjectsSwept": report.pass.objects_swept,
        "DriftMissingObjects": report.drift_missing_objects,
    })
    .to_string()
}

/// The dedup figures (the sharded counters `GET /v1/audio/stats` answers) as one EMF line:
/// `StoredBytes`, `ReferencedBytes`, `BytesSaved`, `UniqueFiles`, `LiveReferences`, dimension
/// `Service=stats`, as the template's dashboard reads them. Published by the reconciler
/// because it runs on a schedule (every 5 minutes); the stats function runs only when asked.
pub fn dedup_metrics(namespace: &str, stats: &Stats, now_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Service"]],
                "Metrics": [
                    { "Name": "StoredBytes", "Unit": "Bytes" },
                    { "Name": "ReferencedBytes", "Unit": "Bytes" },
                    { "Name": "BytesSaved", "Unit": "Bytes" },
                    { "Name": "UniqueFiles", "Unit": "Count" },
                    { "Name": "LiveReferences", "Unit": "Count" }
                ]
            }]
        },
        "Service": "stats",
        "StoredBytes": stats.stored_bytes,
        "ReferencedBytes": stats.referenced_bytes,
        "BytesSaved": stats.bytes_saved,
        "UniqueFiles": stats.unique_files,
        "LiveReferences": stats.total_references,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use audio_dedup_core::audio::DirectUpload;
    use audio_dedup_core::ports::{BlobBody, OsEntropy, SystemClock};
    use audio_dedup_core::protocol::keys;
    use audio_dedup_core::store::embedded::{
        object_dir, FsBlobStore, SqliteIndex, Synchronous, UrlSigner,
    };
    use audio_dedup_core::store::memory::{MemoryBlobs, MemoryIndex};
    use audio_dedup_core::{
        AudioFormat, ContentHash, Dedup, DedupConfig, PendingReference, ReferenceKind,
    };

    use super::{PassReport, Stats};

    fn scheduled() -> serde_json::Value {
        serde_json::json!({
            "version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-24T00:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/reconcile"], "detail": {}
        })
    }

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
        let report = super::handle(&d, scheduled()).await.unwrap();
        assert_eq!(report.pass.orphans_deleted, 1);
        assert_eq!(report.drift_missing_objects, 0);
        assert!(blobs.objects().is_empty());
    }

    /// Checks one EMF line against the specification: one line, the namespace and time,
    /// every dimension a string at the top level, every metric the directive names a number
    /// at the top level. Answers the metric names.
    fn emf_metrics(line: &str, namespace: &str, now_ms: i64) -> Vec<String> {
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], namespace);
        assert_eq!(v["_aws"]["Timestamp"], now_ms);
        for dims in directive["Dimensions"].as_array().unwrap() {
            for d in dims.as_array().unwrap() {
                assert!(v[d.as_str().unwrap()].is_string(), "dimension {d}");
            }
        }
        directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let name = m["Name"].as_str().unwrap();
                assert!(
                    v[name].is_number(),
                    "{name} is not a number at the top level"
                );
                assert!(m["Unit"].is_string());
                name.to_owned()
            })
            .collect()
    }

    #[test]
    fn backlog_metrics_are_an_emf_line_naming_what_they_carry() {
        let report = PassReport {
            pass: audio_dedup_core::ReconcileReport {
                due_left: 7,
                oldest_due_age_seconds: 90,
                work_items: 3,
                objects_swept: 100,
                ..Default::default()
            },
            drift_checked: 8,
            drift_missing_objects: 2,
        };
        let line = super::backlog_metrics("my-stack", &report, 1_796_000_000_000);
        let names = emf_metrics(&line, "my-stack", 1_796_000_000_000);
        assert_eq!(
            names,
            [
                "DueItemsLeft",
                "OldestDueAgeSeconds",
                "WorkItems",
                "ObjectsSwept",
                "DriftMissingObjects"
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["Service"], "reconciler");
        assert_eq!(
            (
                v["DueItemsLeft"].as_u64(),
                v["OldestDueAgeSeconds"].as_u64(),
                v["DriftMissingObjects"].as_u64()
            ),
            (Some(7), Some(90), Some(2))
        );
    }

    fn some_stats() -> Stats {
        Stats {
            unique_files: 3,
            stored_bytes: 3_000,
            total_references: 7,
            referenced_bytes: 7_000,
            deduplication_ratio: 7.0 / 3.0,
            bytes_saved: 4_000,
            unreferenced_files: 0,
            unreferenced_bytes: 0,
            pending_uploads: None,
            deleting: None,
        }
    }

    #[test]
    fn dedup_metrics_are_an_emf_line_with_the_dashboards_names() {
        let stats = some_stats();
        let line = super::dedup_metrics("my-stack", &stats, 1_796_000_000_000);
        let names = emf_metrics(&line, "my-stack", 1_796_000_000_000);
        assert_eq!(
            names,
            [
                "StoredBytes",
                "ReferencedBytes",
                "BytesSaved",
                "UniqueFiles",
                "LiveReferences"
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["Service"], "stats");
        assert_eq!(
            (
                v["StoredBytes"].as_i64(),
                v["ReferencedBytes"].as_i64(),
                v["BytesSaved"].as_i64(),
                v["UniqueFiles"].as_i64(),
                v["LiveReferences"].as_i64()
            ),
            (Some(3_000), Some(7_000), Some(4_000), Some(3), Some(7))
        );
    }

    /// The template's dashboard and alarms read exactly what the function publishes: each
    /// metric, in the stack's namespace, with its `Service` dimension.
    #[test]
    fn the_template_reads_the_metrics_the_function_publishes() {
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml"),
        )
        .unwrap();
        let report = super::backlog_metrics("ns", &PassReport::default(), 0);
        let stats = super::dedup_metrics("ns", &some_stats(), 0);
        for (line, service) in [(report, "reconciler"), (stats, "stats")] {
            for name in emf_metrics(&line, "ns", 0) {
                if name == "WorkItems" || name == "ObjectsSwept" || name == "DueItemsLeft" {
                    // On the dashboard as a line of their widget.
                    assert!(template.contains(&format!(
                        "[\"${{AWS::StackName}}\", \"{name}\", \"Service\", \"{service}\""
                    )));
                    continue;
                }
                let on_dashboard = template.contains(&format!(
                    "[\"${{AWS::StackName}}\", \"{name}\", \"Service\", \"{service}\""
                ));
                let alarmed = template.contains(&format!("MetricName: {name}\n"))
                    && template.contains(&format!("{{ Name: Service, Value: {service} }}"));
                assert!(
                    on_dashboard || alarmed,
                    "{name} ({service}) is not read by the template"
                );
            }
        }
        assert!(template.contains("MetricName: DriftMissingObjects"));
    }

    /// An object deleted behind the index's back (the embedded store's files removed by
    /// hand): a later pass finds the live record's version missing and reports it.
    #[tokio::test]
    async fn an_object_deleted_behind_the_index_is_reported_as_drift() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(SystemClock);
        let objects = dir.path().join("blobs");
        let blobs = FsBlobStore::open(
            &objects,
            UrlSigner::new("http://127.0.0.1:9", [9; 32]),
            None,
            clock.clone(),
        )
        .unwrap();
        let index =
            SqliteIndex::open(&dir.path().join("index.sqlite"), Synchronous::Normal).unwrap();
        let d = Dedup::with_env(
            blobs,
            index,
            DedupConfig::default(),
            clock,
            Arc::new(OsEntropy),
        );
        let mut hashes = Vec::new();
        for i in 0..3u8 {
            let body = bytes::Bytes::from(vec![i; 64]);
            let hash = ContentHash::of(&body);
            d.audio()
                .upload_direct(DirectUpload {
                    owner: "alice".parse().unwrap(),
                    format: AudioFormat::Mp3,
                    hash,
                    size: body.len() as u64,
                    body: BlobBody::Bytes(body),
                    reference: Some(PendingReference {
                        kind: ReferenceKind::Library,
                        ref_id: format!("r{i}").parse().unwrap(),
                    }),
                })
                .await
                .unwrap();
            hashes.push(hash);
        }
        // Passes sample the three objects and find them all present.
        let mut checked = 0;
        for _ in 0..4 {
            let r = super::handle(&d, scheduled()).await.unwrap();
            assert_eq!(r.drift_missing_objects, 0);
            checked += r.drift_checked;
        }
        assert!(checked >= 3, "{checked}");
        // Deleted by hand: the record still says active at that version.
        let gone = hashes[1];
        let folder = object_dir(&objects.join("objects"), &keys::blob_key("", &gone));
        assert!(folder.exists(), "{}", folder.display());
        std::fs::remove_dir_all(&folder).unwrap();
        let r = super::handle(&d, scheduled()).await.unwrap();
        assert_eq!(r.drift_missing_objects, 1, "{r:?}");
        // It stays reported until repaired, and only that one.
        let r = super::handle(&d, scheduled()).await.unwrap();
        assert_eq!(r.drift_missing_objects, 1, "{r:?}");
        let line = super::backlog_metrics("ns", &r, 0);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["DriftMissingObjects"], 1);
    }

    /// A record deleted the ordinary way leaves the sample: not drift.
    #[tokio::test]
    async fn a_deleted_record_is_not_drift() {
        let blobs = MemoryBlobs::default();
        let d = Dedup::new(
            blobs.clone(),
            MemoryIndex::default(),
            DedupConfig::default(),
        );
        let body = bytes::Bytes::from_static(b"kept then deleted");
        let hash = ContentHash::of(&body);
        d.audio()
            .upload_direct(DirectUpload {
                owner: "alice".parse().unwrap(),
                format: AudioFormat::Mp3,
                hash,
                size: body.len() as u64,
                body: BlobBody::Bytes(body),
                reference: Some(PendingReference {
                    kind: ReferenceKind::Library,
                    ref_id: "r1".parse().unwrap(),
                }),
            })
            .await
            .unwrap();
        super::handle(&d, scheduled()).await.unwrap();
        d.audio()
            .remove_reference(&"alice".parse().unwrap(), &hash, &"r1".parse().unwrap())
            .await
            .unwrap();
        for _ in 0..3 {
            let r = super::handle(&d, scheduled()).await.unwrap();
            assert_eq!(r.drift_missing_objects, 0, "{r:?}");
        }
    }
}
