//! The router takes from the per-user request budget on every authenticated route: over it,
//! `429 rate_limited` with `Retry-After` and nothing done; the budget unreadable, `503`;
//! unauthenticated requests and the open routes take nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audio_dedup_api::{bearer, router, ApiConfig, Authenticator, Caller, RouteSet, UserBudget};
use audio_dedup_core::ports::{Admission, RequestBudget};
use audio_dedup_core::store::memory::{MemoryBlobs, MemoryIndex};
use audio_dedup_core::{Dedup, DedupConfig, Millis, StoreError, UserId};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The bearer token is the user's name.
struct Names;
impl Authenticator for Names {
    fn authenticate(&self, parts: &http::request::Parts) -> Option<Caller> {
        Some(Caller {
            user: bearer(parts)?.parse().ok()?,
            admin: false,
        })
    }
}

/// Admits `allowed` requests per user, then refuses for 1.5 s; records every take.
struct Counted {
    allowed: u32,
    taken: Mutex<HashMap<UserId, u32>>,
}
impl RequestBudget for Counted {
    async fn take(&self, user: &UserId, _now: Millis) -> Result<Admission, StoreError> {
        let mut taken = self.taken.lock().unwrap();
        let n = taken.entry(user.clone()).or_default();
        *n += 1;
        Ok(if *n <= self.allowed {
            Admission::Admitted
        } else {
            Admission::Limited {
                retry_after: Duration::from_millis(1500),
            }
        })
    }
}

/// A budget whose store cannot be reached.
struct Unreachable;
impl RequestBudget for Unreachable {
    async fn take(&self, _: &UserId, _: Millis) -> Result<Admission, StoreError> {
        Err(StoreError::Unavailable("table unreachable".into()))
    }
}

fn app(budget: UserBudget) -> axum::Router {
    let hook = Arc::new(NoFaults);
    let dedup = Arc::new(Dedup::new(
        MemoryBlobs::new(hook.clone()),
        MemoryIndex::new(hook),
        DedupConfig::default(),
    ));
    let cfg = ApiConfig {
        request_budget: Some(budget),
        ..ApiConfig::default()
    };
    router(dedup, Arc::new(Names), cfg, RouteSet::All)
}

struct NoFaults;
impl audio_dedup_core::store::memory::FaultHook for NoFaults {
    fn fault(
        &self,
        _: audio_dedup_core::store::memory::Op,
    ) -> audio_dedup_core::store::memory::Fault {
        audio_dedup_core::store::memory::Fault::None
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some(u) = user {
        req = req.header("authorization", format!("Bearer {u}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(axum::body::Body::from(b.to_string())),
        None => req.body(axum::body::Body::empty()),
    }
    .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, retry_after, body)
}

fn thread(id: &str) -> Value {
    json!({ "id": id, "title": "t", "members": ["bob"] })
}

#[tokio::test]
async fn over_the_budget_a_user_gets_429_and_nothing_is_done() {
    let app = app(UserBudget::new(Counted {
        allowed: 2,
        taken: Mutex::default(),
    }));
    let (s, _, _) = call(
        &app,
        "POST",
        "/v1/threads",
        Some("alice"),
        Some(thread("t1")),
    )
    .await;
    assert_eq!(s, 201);
    // Another user has a budget of their own, and sees the thread shared with them.
    let (s, _, _) = call(&app, "GET", "/v1/threads/t1", Some("bob"), None).await;
    assert_eq!(s, 200);
    let (s, _, _) = call(&app, "GET", "/v1/threads", Some("alice"), None).await;
    assert_eq!(s, 200);
    // Alice's third: refused, whole seconds rounded up, and the thread not created.
    let (s, retry, body) = call(
        &app,
        "POST",
        "/v1/threads",
        Some("alice"),
        Some(thread("t2")),
    )
    .await;
    assert_eq!(s, 429);
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["message"].is_string());
    let (s, _, _) = call(&app, "GET", "/v1/threads/t2", Some("bob"), None).await;
    assert_eq!(s, 404);
}

/// With no budget at all, the open routes still answer and unauthenticated requests are
/// refused as unauthenticated: neither takes from a budget.
#[tokio::test]
async fn open_routes_and_strangers_take_nothing() {
    let app = app(UserBudget::new(Counted {
        allowed: 0,
        taken: Mutex::default(),
    }));
    assert_eq!(call(&app, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(call(&app, "GET", "/v1/threads", None, None).await.0, 401);
    assert_eq!(
        call(&app, "GET", "/v1/threads", Some("alice"), None)
            .await
            .0,
        429
    );
}

#[tokio::test]
async fn an_unreadable_budget_answers_503_with_retry_after() {
    let app = app(UserBudget::new(Unreachable));
    let (s, retry, body) = call(
        &app,
        "POST",
        "/v1/threads",
        Some("alice"),
        Some(thread("t1")),
    )
    .await;
    assert_eq!(s, 503);
    assert!(retry.is_some());
    assert_eq!(body["error"]["code"], "unavailable");
}
