//! The store contract over the embedded store (SQLite + files).

mod contract;

use std::collections::BTreeMap;
use std::sync::Arc;

use audio_dedup_core::ports::{
    BlobBody, BlobStore, Item, ObjectMeta, PutOutcome, PutRequest, SystemClock,
};
use audio_dedup_core::protocol::keys;
use audio_dedup_core::store::embedded::{FsBlobStore, SqliteIndex, Synchronous, UrlSigner};
use audio_dedup_core::{Dedup, DedupConfig, SignedRequest};
use contract::Env;

struct Embedded {
    d: Dedup<FsBlobStore, SqliteIndex>,
    index: SqliteIndex,
    blobs: FsBlobStore,
    _dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let signer = UrlSigner::new("http://127.0.0.1:9", [3; 32]);
        let blobs = FsBlobStore::open(
            &dir.path().join("blobs"),
            signer,
            None,
            Arc::new(SystemClock),
        )
        .unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.sqlite"), Synchronous::Full).unwrap();
        let d = Dedup::new(blobs.clone(), index.clone(), DedupConfig::default());
        Self {
            d,
            index,
            blobs,
            _dir: dir,
        }
    }
}

impl Env for Embedded {
    type B = FsBlobStore;
    type I = SqliteIndex;

    fn dedup(&self) -> &Dedup<FsBlobStore, SqliteIndex> {
        &self.d
    }

    /// What the local server's `/blob` route does with a signed PUT.
    async fn client_put(&self, req: &SignedRequest, body: Vec<u8>) -> u16 {
        let (path, query) = req.url.split_once('?').unwrap();
        let key = path.split_once("/blob/").unwrap().1;
        let q: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect();
        let grant =
            match self
                .blobs
                .signer()
                .verify_put(key, &q, |h| req.headers.get(h).cloned(), 0)
            {
                Ok(g) => g,
                Err(_) => return 403,
            };
        if audio_dedup_core::ContentHash::of(&body) != grant.sha256
            || body.len() as u64 != grant.size
        {
            return 400;
        }
        let put = PutRequest {
            key: key.to_owned(),
            body: BlobBody::Bytes(body.into()),
            sha256: grant.sha256,
            size: grant.size,
            content_type: "audio/wav",
            uploader: grant.uploader,
        };
        match self.blobs.put_if_absent(put).await.unwrap() {
            PutOutcome::Created { .. } => 200,
            PutOutcome::AlreadyExists => 412,
        }
    }

    async fn snapshot(&self) -> (Vec<Item>, Vec<ObjectMeta>, BTreeMap<String, i64>) {
        let (items, counters) = self.index.dump(keys::STATS_PK).await.unwrap();
        let objects = self.blobs.list(None, 10_000).await.unwrap().objects;
        (items, objects, counters)
    }
}

#[tokio::test]
async fn dedup_then_delete_with_last_reference() {
    contract::dedup_then_delete_with_last_reference(&Embedded::new()).await;
}

#[tokio::test]
async fn session_put_complete_and_proof() {
    contract::session_put_complete_and_proof(&Embedded::new()).await;
}

#[tokio::test]
async fn created_event_completes_first_and_complete_is_a_noop() {
    contract::created_event_completes_first_and_complete_is_a_noop(&Embedded::new()).await;
}

#[tokio::test]
async fn reconciler_removes_orphans() {
    contract::reconciler_removes_orphans(&Embedded::new()).await;
}
