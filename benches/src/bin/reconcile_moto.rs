//! The reconciler over the AWS adapters (DynamoDB + S3), against moto on loopback: one pass
//! with nothing due at 1,000 and 10,000 stored objects, with the S3 calls it makes counted per
//! object swept. Every call the protocol makes to the blob store goes through a counting
//! wrapper of the S3 adapter, one port call being one S3 request.
//!
//! Needs `AUDIO_DEDUP_MOTO_ENDPOINT` (as `scripts/test` sets it; start moto with
//! `.venv-moto/bin/python scripts/moto_serial.py -H 127.0.0.1 -p 5077`). moto's figures say
//! nothing about S3's latency; the call counts are the point.
//!
//! Target (issue #12): no HEAD per listed object; one LIST per page of 100.
//!
//! Knobs: `BENCH_SIZES` (1000,10000), `BENCH_PASSES` (3), `BENCH_UPLOAD_CONCURRENCY` (4).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use audio_dedup_benches::{env_u64, machine_summary, pass_fail};
use audio_dedup_core::ports::{
    BlobStore, MultipartRef, ObjectMeta, ObjectPage, OsEntropy, PresignPart, PresignPut,
    PutOutcome, PutRequest, StartParts, SystemClock,
};
use audio_dedup_core::store::aws::{clients_from_env, DynamoIndex, S3Blobs};
use audio_dedup_core::{ContentHash, Dedup, DedupConfig, Part, SignedRequest, StoreError};

/// The S3 adapter, counting its calls by operation.
#[derive(Clone)]
struct Counted {
    inner: S3Blobs,
    calls: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    total: Arc<AtomicU64>,
}

impl Counted {
    fn count(&self, op: &'static str) {
        self.total.fetch_add(1, Ordering::SeqCst);
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_insert(0) += 1;
    }

    fn take(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl BlobStore for Counted {
    async fn put_if_absent(&self, req: PutRequest) -> Result<PutOutcome, StoreError> {
        self.count("PutObject");
        self.inner.put_if_absent(req).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.count("HeadObject");
        self.inner.head(key).await
    }
    async fn delete_version(&self, key: &str, version: &str) -> Result<(), StoreError> {
        self.count("DeleteObject");
        self.inner.delete_version(key, version).await
    }
    async fn read_range(
        &self,
        key: &str,
        version: &str,
        offset: u64,
        length: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        self.count("GetObject (range)");
        self.inner.read_range(key, version, offset, length).await
    }
    async fn stream_sha256(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<ContentHash>, StoreError> {
        self.count("GetObject (hash)");
        self.inner.stream_sha256(key, version).await
    }
    async fn presign_put(&self, req: &PresignPut) -> Result<SignedRequest, StoreError> {
        self.inner.presign_put(req).await
    }
    async fn presign_get(
        &self,
        key: &str,
        version: &str,
        content_type: &'static str,
        expires_in: Duration,
    ) -> Result<SignedRequest, StoreError> {
        self.inner
            .presign_get(key, version, content_type, expires_in)
            .await
    }
    async fn start_parts(&self, req: &StartParts) -> Result<String, StoreError> {
        self.count("CreateMultipartUpload");
        self.inner.start_parts(req).await
    }
    async fn presign_part(&self, req: &PresignPart) -> Result<SignedRequest, StoreError> {
        self.inner.presign_part(req).await
    }
    async fn list_parts(&self, upload: &MultipartRef) -> Result<Option<Vec<Part>>, StoreError> {
        self.count("ListParts");
        self.inner.list_parts(upload).await
    }
    async fn finish_parts(
        &self,
        upload: &MultipartRef,
        parts: &[Part],
    ) -> Result<Option<ObjectMeta>, StoreError> {
        self.count("CompleteMultipartUpload");
        self.inner.finish_parts(upload, parts).await
    }
    async fn abort_parts(&self, upload: &MultipartRef) -> Result<(), StoreError> {
        self.count("AbortMultipartUpload");
        self.inner.abort_parts(upload).await
    }
    async fn copy_if_absent(
        &self,
        from: &ObjectMeta,
        to_key: &str,
        content_type: &'static str,
        uploader: &str,
    ) -> Result<PutOutcome, StoreError> {
        self.count("CopyObject");
        self.inner
            .copy_if_absent(from, to_key, content_type, uploader)
            .await
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<ObjectPage, StoreError> {
        self.count("ListObjectVersions");
        self.inner.list(after, limit).await
    }
}

fn sizes() -> Vec<u64> {
    std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 10_000])
}

fn main() -> ExitCode {
    audio_dedup_benches::main_async("reconcile_moto", run)
}

async fn run() -> Result<bool, String> {
    let endpoint = std::env::var("AUDIO_DEDUP_MOTO_ENDPOINT")
        .map_err(|_| "set AUDIO_DEDUP_MOTO_ENDPOINT to a moto server on loopback".to_owned())?;
    println!("reconcile_moto: {} (moto at {endpoint})", machine_summary());
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    let (ddb, s3) = clients_from_env(true).await;
    let name = format!("reconcile-bench-{}", std::process::id());
    let index = DynamoIndex::new(ddb, name.clone());
    index.create_table().await.map_err(|e| e.to_string())?;
    let s3 = S3Blobs::new(s3, name, "");
    s3.create_bucket().await.map_err(|e| e.to_string())?;
    let blobs = Counted {
        inner: s3,
        calls: Arc::default(),
        total: Arc::default(),
    };
    let d = Arc::new(Dedup::with_env(
        blobs.clone(),
        index,
        DedupConfig::default(),
        Arc::new(SystemClock),
        Arc::new(OsEntropy),
    ));
    let passes = env_u64("BENCH_PASSES", 3).max(1);
    let concurrency = env_u64("BENCH_UPLOAD_CONCURRENCY", 4).max(1);
    let (mut stored, mut ok) = (0u64, true);
    for n in sizes() {
        let t = Instant::now();
        audio_dedup_benches::grow_store(&d, stored, n, concurrency).await?;
        stored = n.max(stored);
        println!("{n} objects stored in {:.0} s", t.elapsed().as_secs_f64());
        // Steady state: one whole cycle since the store grew.
        for _ in 0..10_000 {
            if d.reconcile()
                .await
                .map_err(|e| e.to_string())?
                .sweep_cycle_completed
            {
                break;
            }
        }
        blobs.take();
        let (mut swept, mut took) = (0u64, Duration::ZERO);
        for _ in 0..passes {
            let t = Instant::now();
            let r = d.reconcile().await.map_err(|e| e.to_string())?;
            took += t.elapsed();
            swept += r.objects_swept;
        }
        let calls = blobs.take();
        let total: u64 = calls.values().sum();
        let heads = calls.get("HeadObject").copied().unwrap_or(0);
        let lists = calls.get("ListObjectVersions").copied().unwrap_or(0);
        println!(
            "  {passes} passes: {swept} objects swept, {:.0} ms per pass; S3 calls {total} ({:.3} per object): {calls:?}",
            took.as_secs_f64() * 1e3 / passes as f64,
            total as f64 / swept.max(1) as f64,
        );
        ok &= heads == 0 && lists <= swept.div_ceil(100) + passes;
    }
    println!(
        "target: no HEAD per listed object, one LIST per 100: {}",
        pass_fail(ok)
    );
    Ok(ok)
}
