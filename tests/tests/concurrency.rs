//! Many clients upload the same content and add and remove references at once, over HTTP.
//! At the end the invariants hold, counts are exact and nothing is orphaned.

use audio_dedup_e2e::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uploads_and_reference_churn_keep_the_invariants() {
    let s = TestServer::start().await;
    let contents: Vec<Vec<u8>> = (0..3).map(|i| audio(40 + i, 20_000 + i as usize)).collect();
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let c = s.client(if t % 2 == 0 { ALICE } else { BOB });
        let content = contents[t % contents.len()].clone();
        tasks.push(tokio::spawn(async move {
            let hash = sha256_hex(&content);
            let mut kept = 0;
            for i in 0..8 {
                let rid = format!("t{t}-r{i}");
                let r = c
                    .upload(
                        &content,
                        &format!("format=mp3&ref_kind=message&ref_id={rid}"),
                    )
                    .await;
                assert!(
                    r.status.is_success() || r.status == StatusCode::SERVICE_UNAVAILABLE,
                    "{}",
                    r.body
                );
                if !r.status.is_success() {
                    continue;
                }
                if i % 3 == 0 {
                    kept += 1;
                } else {
                    let d = c.remove_ref(&hash, &rid).await;
                    assert_eq!(d.status, StatusCode::NO_CONTENT, "{}", d.body);
                }
            }
            kept
        }));
    }
    let mut kept = 0;
    for t in tasks {
        kept += t.await.unwrap();
    }
    s.assert_invariants();
    let st = s.client(ALICE).stats().await.body;
    assert_eq!(st["total_references"].as_i64(), Some(kept));
    assert!(st["unique_files"].as_i64().unwrap() <= 3);
    s.client(ADMIN).reconcile().await;
    s.assert_invariants();
    s.assert_settled();
}
