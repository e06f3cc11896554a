//! S3 notifications → protocol blob events. Tolerates everything S3 and Lambda's async queue
//! do: duplicates, late and out-of-order delivery (the protocol decides from the current
//! object's exact version, never from event order), URL-encoded keys (`+` and `%XX`), and
//! keys it does not own (ignored with a log line).

use audio_dedup_core::audio::Adoption;
use audio_dedup_core::ports::{BlobEvent, BlobStore, TransactionalIndex};
use audio_dedup_core::{Dedup, DedupError};
use aws_lambda_events::s3::S3Event;
use serde::Serialize;

/// What one invocation did, per record (returned to Lambda, so it shows in test invocations).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Handled {
    pub applied: usize,
    pub ignored: usize,
    pub skipped: usize,
}

/// S3 object keys in notifications are form-encoded: `+` is a space, `%XX` a byte.
pub fn decode_key(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

/// The protocol events in a notification; records we cannot use are `None` (logged).
pub fn blob_events(event: &S3Event) -> Vec<Option<BlobEvent>> {
    event
        .records
        .iter()
        .map(|r| {
            let name = r.event_name.as_deref().unwrap_or_default();
            let (Some(raw_key), Some(version)) = (
                r.s3.object.key.as_deref(),
                r.s3.object.version_id.as_deref(),
            ) else {
                tracing::warn!(
                    event = name,
                    "record without key or versionId (is bucket versioning on?); skipped"
                );
                return None;
            };
            let Some(key) = decode_key(raw_key) else {
                tracing::warn!(key = raw_key, "undecodable key; skipped");
                return None;
            };
            let version = version.to_owned();
            let sequencer = r.s3.object.sequencer.clone().unwrap_or_default();
            if name.starts_with("ObjectCreated:") {
                Some(BlobEvent::Created {
                    key,
                    version,
                    sequencer,
                })
            } else if name.starts_with("ObjectRemoved:") {
                Some(BlobEvent::Removed {
                    key,
                    version,
                    sequencer,
                })
            } else {
                tracing::info!(event = name, "event type not handled; skipped");
                None
            }
        })
        .collect()
}

/// Applies every record. A store failure fails the invocation, so Lambda retries it (and the
/// reconciler covers what retries do not).
pub async fn handle<B: BlobStore, I: TransactionalIndex>(
    dedup: &Dedup<B, I>,
    event: S3Event,
) -> Result<Handled, DedupError> {
    let mut out = Handled::default();
    for ev in blob_events(&event) {
        let Some(ev) = ev else {
            out.skipped += 1;
            continue;
        };
        match dedup.audio().on_blob_event(&ev).await? {
            Adoption::Ignored => out.ignored += 1,
            _ => out.applied += 1,
        }
        tracing::info!(event = ?ev, "blob event handled");
    }
    Ok(out)
}
