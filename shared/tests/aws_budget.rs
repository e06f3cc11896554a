//! Against moto (`scripts/test` starts it and sets `AUDIO_DEDUP_MOTO_ENDPOINT`; without it
//! these tests fail when `AUDIO_DEDUP_REQUIRE_MOTO=1` and are skipped otherwise): the
//! per-user request budget in the table, and the work-index query's bounds.
#![cfg(feature = "aws")]

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

use audio_dedup_core::ports::{
    Admission, Expect, IndexName, Item, Key, Query, RequestBudget, RequestRate, TransactionalIndex,
    WriteOp,
};
use audio_dedup_core::store::aws::{bucket_key, DynamoIndex, DynamoRequestBudget};
use audio_dedup_core::UserId;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Counts the DynamoDB requests of one operation (by its `x-amz-target`) sent on the wire.
#[derive(Debug, Clone)]
struct CountRequests {
    target: &'static str,
    sent: Arc<AtomicUsize>,
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if ctx.request().headers().get("x-amz-target") == Some(self.target) {
            self.sent.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A client of moto (`None`: skipped) and a new table in it; `count` counts one operation.
async fn table(count: Option<CountRequests>) -> Option<DynamoIndex> {
    let endpoint = match std::env::var("AUDIO_DEDUP_MOTO_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => {
            assert!(
                std::env::var("AUDIO_DEDUP_REQUIRE_MOTO").as_deref() != Ok("1"),
                "AUDIO_DEDUP_MOTO_ENDPOINT is not set but moto is required"
            );
            eprintln!("skipping: AUDIO_DEDUP_MOTO_ENDPOINT not set (scripts/test starts moto)");
            return None;
        }
    };
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    let sdk = audio_dedup_core::store::aws::sdk_config().await;
    let mut cfg = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if let Some(c) = count {
        cfg = cfg.interceptor(c);
    }
    let client = aws_sdk_dynamodb::Client::from_conf(cfg.build());
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let index = DynamoIndex::new(client, format!("budget-{}-{n}", std::process::id()));
    index.create_table().await.expect("create table");
    Some(index)
}

fn budget(index: &DynamoIndex, per_second: u32, burst: u32) -> DynamoRequestBudget {
    DynamoRequestBudget::new(
        index.client().clone(),
        index.table(),
        RequestRate::new(per_second, burst).unwrap(),
    )
}

fn user(name: &str) -> UserId {
    name.parse().unwrap()
}

const T0: i64 = 1_700_000_000_000;

#[tokio::test]
async fn the_table_keeps_a_burst_then_the_rate_per_user() {
    let Some(index) = table(None).await else {
        return;
    };
    let b = budget(&index, 2, 3);
    let alice = user("alice");
    for i in 0..3 {
        assert_eq!(
            b.take(&alice, T0).await.unwrap(),
            Admission::Admitted,
            "#{i}"
        );
    }
    // The fourth at the same instant: refused, told to come back in one interval (500 ms).
    assert_eq!(
        b.take(&alice, T0).await.unwrap(),
        Admission::Limited {
            retry_after: Duration::from_millis(500)
        }
    );
    // Another user has a bucket of their own.
    assert_eq!(b.take(&user("bob"), T0).await.unwrap(), Admission::Admitted);
    // Refused requests took nothing: 499 ms later still refused, at 500 ms one passes.
    assert!(matches!(
        b.take(&alice, T0 + 499).await.unwrap(),
        Admission::Limited { .. }
    ));
    assert_eq!(b.take(&alice, T0 + 500).await.unwrap(), Admission::Admitted);
    assert!(matches!(
        b.take(&alice, T0 + 500).await.unwrap(),
        Admission::Limited { .. }
    ));
    // After an idle hour the whole burst is back, and no more.
    let later = T0 + 3_600_000;
    for _ in 0..3 {
        assert_eq!(b.take(&alice, later).await.unwrap(), Admission::Admitted);
    }
    assert!(matches!(
        b.take(&alice, later).await.unwrap(),
        Admission::Limited { .. }
    ));
    // The bucket item expires (TTL) an hour after it is full again.
    let key = bucket_key(&alice);
    let stored = index
        .client()
        .get_item()
        .table_name(index.table())
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(key.pk))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(key.sk))
        .send()
        .await
        .unwrap();
    let item = stored.item().expect("bucket item");
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    let tat: i64 = item["tat"].as_n().unwrap().parse().unwrap();
    assert!(
        expires * 1_000_000 >= tat + 3_600_000_000,
        "{expires} {tat}"
    );
}

/// Many requests of one user at once, from many callers: exactly the burst is admitted.
#[tokio::test]
async fn concurrent_takes_admit_exactly_the_burst() {
    let Some(index) = table(None).await else {
        return;
    };
    let b = Arc::new(budget(&index, 1, 5));
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.take(&user("carol"), T0).await.unwrap() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == Admission::Admitted {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

fn work_item(pk: &str, wsk: &str) -> WriteOp {
    WriteOp::Put {
        item: Item {
            key: Key::new(format!("AUDIO#{wsk}"), "META"),
            version: 1,
            body: "{}".into(),
            work_key: Some(Key::new(pk, wsk)),
        },
        expect: Expect::Absent,
    }
}

/// A page after a cursor reads only what lies between the cursor and the upper bound: with
/// one due item and many future ones, it is one request, not a walk over the future ones.
#[tokio::test]
async fn a_work_page_after_a_cursor_does_not_walk_future_items() {
    let sent = Arc::new(AtomicUsize::new(0));
    let Some(index) = table(Some(CountRequests {
        target: "DynamoDB_20120810.Query",
        sent: sent.clone(),
    }))
    .await
    else {
        return;
    };
    let mut ops = vec![
        work_item("WORK#00", "0000000000000001#a"),
        work_item("WORK#00", "0000000000000005#b"),
    ];
    ops.extend((0..40).map(|i| work_item("WORK#00", &format!("0000000000009999#f{i:02}"))));
    for chunk in ops.chunks(20) {
        index.transact(chunk.to_vec()).await.unwrap();
    }
    let q = Query {
        index: IndexName::Work,
        pk: "WORK#00".into(),
        sk_prefix: String::new(),
        after: Some("0000000000000001#a".into()),
        upto: Some("0000000000000010~".into()),
        limit: 2,
    };
    let items = index.query(&q).await.unwrap();
    let got: Vec<_> = items
        .iter()
        .filter_map(|i| i.work_key.as_ref().map(|k| k.sk.as_str()))
        .collect();
    assert_eq!(got, ["0000000000000005#b"]);
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "query requests for one page"
    );
    // The cursor itself is excluded, the bounds inclusive at the top.
    let q = Query {
        after: None,
        upto: Some("0000000000000005#b".into()),
        ..q
    };
    let items = index.query(&q).await.unwrap();
    assert_eq!(items.len(), 2);
}

/// The writes each take costs (docs/deploy.md's cost table), and exactness across two
/// processes (each with its own hints) sharing one user's bucket.
#[tokio::test]
async fn writes_per_take_match_the_documented_cost() {
    let sent = Arc::new(AtomicUsize::new(0));
    let Some(index) = table(Some(CountRequests {
        target: "DynamoDB_20120810.UpdateItem",
        sent: sent.clone(),
    }))
    .await
    else {
        return;
    };
    let writes = |before: usize| sent.load(Ordering::SeqCst) - before;
    let (one, two) = (budget(&index, 1, 3), budget(&index, 1, 3));
    let dave = user("dave");
    // A user under the rate (no bucket yet, or a full one): one write.
    let w = sent.load(Ordering::SeqCst);
    assert_eq!(one.take(&dave, T0).await.unwrap(), Admission::Admitted);
    assert_eq!(writes(w), 1);
    // Inside the burst, in the process that saw the bucket last: one write.
    let w = sent.load(Ordering::SeqCst);
    assert_eq!(one.take(&dave, T0).await.unwrap(), Admission::Admitted);
    assert_eq!(writes(w), 1);
    // Inside the burst, from another process (no hint): the idle try, then the burst's.
    let w = sent.load(Ordering::SeqCst);
    assert_eq!(two.take(&dave, T0).await.unwrap(), Admission::Admitted);
    assert_eq!(writes(w), 2);
    // The bucket is empty now (burst 3 taken across both processes). The first process's
    // hint is stale: its try fails and refuses (one write); the second's refusal is known
    // from its own last sight (no write), and stays so.
    let w = sent.load(Ordering::SeqCst);
    assert!(matches!(
        one.take(&dave, T0).await.unwrap(),
        Admission::Limited { .. }
    ));
    assert_eq!(writes(w), 1);
    let w = sent.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert!(matches!(
            two.take(&dave, T0).await.unwrap(),
            Admission::Limited { .. }
        ));
        assert!(matches!(
            one.take(&dave, T0).await.unwrap(),
            Admission::Limited { .. }
        ));
    }
    assert_eq!(writes(w), 0, "refusals known from a hint write nothing");
    // A second later one more passes, once, whichever process takes it.
    let w = sent.load(Ordering::SeqCst);
    assert_eq!(
        two.take(&dave, T0 + 1000).await.unwrap(),
        Admission::Admitted
    );
    assert!(matches!(
        one.take(&dave, T0 + 1000).await.unwrap(),
        Admission::Limited { .. }
    ));
    assert_eq!(writes(w), 2);
}
