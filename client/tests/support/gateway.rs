//! A test gateway that does what API Gateway's HTTP API does in front of the Lambda
//! functions: routes each request by method and path as `template.yaml`'s `HttpApi` events
//! say (read from the template, so it cannot drift), verifies the bearer JWT with the
//! project's verifier (`identity::Verifier`, the test issuer's keys), builds the payload 2.0
//! event JSON with the claims, hands it to the function's handler exactly as
//! `lambda_http::run` does (the event deserialized as `LambdaRequest`, the router built by
//! `lambda::function_from_env` behind lambda_http's own adapter, its `LambdaResponse`
//! serialized), and turns the answer back into HTTP as API Gateway reads it.
//!
//! API Gateway's own answers, as AWS documents them (`http-api-troubleshooting-jwt`,
//! `http-api-quotas`, `http-api-troubleshooting-lambda`): no route `404
//! {"message":"Not Found"}`; no or bad token `401 {"message":"Unauthorized"}` with
//! `www-authenticate`; a body over 10 MB `413`; an event or answer over Lambda's 6 MB, a
//! function error or a function past its `Timeout` `500 {"message":"Internal Server
//! Error"}`; no answer within the 30 s integration timeout `503 {"message":"Service
//! Unavailable"}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audio_dedup_api::{lambda, RouteSet};
use audio_dedup_core::identity::testing::TestIssuer;
use audio_dedup_core::identity::{JwksSource, Verifier};
use audio_dedup_core::store::aws::{clients_from_env, DynamoIndex, S3Blobs};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service as _};
use serde_json::{json, Value};

/// API Gateway's and Lambda's limits the gateway enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// HTTP API payload size (10 MB, not adjustable).
    pub payload: usize,
    /// Lambda's synchronous invocation payload, each way (6 MB).
    pub invoke_payload: usize,
    /// HTTP API's maximum integration timeout (30 s).
    pub integration_timeout: Duration,
    /// Every function's `Timeout` instead of the template's (tests of a slow function).
    pub function_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            payload: 10 * 1024 * 1024,
            invoke_payload: 6 * 1024 * 1024,
            integration_timeout: Duration::from_secs(30),
            function_timeout: None,
        }
    }
}

/// One `HttpApi` event of template.yaml: `METHOD /path/{param}` to a function.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: String,
    /// The template's `Binary` of the function (`upload`, `threads`, …).
    pub function: String,
}

impl Route {
    /// API Gateway's `routeKey`.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The path parameters if `path` matches, and how specific the match is (a literal
    /// segment beats a parameter, earlier segments first: API Gateway's "most specific
    /// route wins").
    fn matches(&self, path: &str) -> Option<(Vec<bool>, BTreeMap<String, String>)> {
        let want: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        let got: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if want.len() != got.len() {
            return None;
        }
        let mut params = BTreeMap::new();
        let mut rank = Vec::new();
        for (w, g) in want.iter().zip(&got) {
            if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                if g.is_empty() {
                    return None;
                }
                params.insert(name.to_owned(), (*g).to_owned());
                rank.push(false);
            } else if w == g {
                rank.push(true);
            } else {
                return None;
            }
        }
        Some((rank, params))
    }
}

/// The route API Gateway picks for `method path`, and its path parameters: among the
/// routes that match, the most specific.
pub fn route_for<'a>(
    routes: &'a [Route],
    method: &Method,
    path: &str,
) -> Option<(&'a Route, BTreeMap<String, String>)> {
    routes
        .iter()
        .filter(|r| r.method == *method)
        .filter_map(|r| r.matches(path).map(|(rank, params)| (rank, params, r)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, params, r)| (r, params))
}

/// A function of the template: its name, its `Timeout`, the share of the API it serves.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub timeout: Duration,
    pub routes: Vec<Route>,
}

/// The HTTP functions of template.yaml and their routes, read from the template itself.
pub fn template_functions() -> Vec<FunctionSpec> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    let text = std::fs::read_to_string(path).expect("read template.yaml");
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("parse template.yaml");
    let global_timeout = doc["Globals"]["Function"]["Timeout"].as_u64();
    let mut out = Vec::new();
    let resources = doc["Resources"].as_mapping().expect("Resources");
    for (_, r) in resources {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let Some(events) = r["Properties"]["Events"].as_mapping() else {
            continue;
        };
        let name = r["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("a function's Binary")
            .to_owned();
        let routes: Vec<Route> = events
            .values()
            .filter(|e| e["Type"].as_str() == Some("HttpApi"))
            .map(|e| Route {
                method: e["Properties"]["Method"]
                    .as_str()
                    .expect("Method")
                    .parse()
                    .expect("an HTTP method"),
                path: e["Properties"]["Path"].as_str().expect("Path").to_owned(),
                function: name.clone(),
            })
            .collect();
        if routes.is_empty() {
            continue;
        }
        let timeout = r["Properties"]["Timeout"]
            .as_u64()
            .or(global_timeout)
            .expect("a function Timeout");
        out.push(FunctionSpec {
            name,
            timeout: Duration::from_secs(timeout),
            routes,
        });
    }
    out
}

/// The share of the API the function binary serves (its main's `RouteSet`).
pub fn route_set(function: &str) -> RouteSet {
    match function {
        "upload" => RouteSet::Upload,
        "references" => RouteSet::References,
        "stats" => RouteSet::Stats,
        "threads" => RouteSet::Threads,
        "library" => RouteSet::Library,
        other => panic!("template.yaml routes HTTP to `{other}`, which the gateway does not know"),
    }
}

struct Function {
    name: String,
    timeout: Duration,
    app: axum::Router,
}

/// One answered request, as the gateway saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The function invoked (`None`: API Gateway answered by itself).
    pub function: Option<String>,
    pub route_key: String,
    pub status: u16,
}

struct State {
    routes: Vec<Route>,
    functions: BTreeMap<String, Function>,
    verifier: Arc<Verifier>,
    limits: Mutex<Limits>,
    calls: Mutex<Vec<Call>>,
    next_id: AtomicU64,
}

/// The gateway on a loopback port, over a table and a bucket of its own on moto.
pub struct Gateway {
    pub url: String,
    pub addr: SocketAddr,
    /// The bucket the functions store audio in (keys `prod/audio/<sha256>`).
    pub bucket: String,
    pub issuer: Arc<TestIssuer>,
    state: Arc<State>,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    _jwks: tempfile::TempDir,
}

/// The functions read their stores from the process environment (as on Lambda); gateways
/// built at once in one test binary take turns setting it.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT: AtomicU64 = AtomicU64::new(0);

impl Gateway {
    /// A fresh table and bucket on moto at `endpoint`, the template's HTTP functions built
    /// by `lambda::function_from_env` over them (the per-user budget at the template's
    /// defaults, 10/s, burst 100), served on 127.0.0.1.
    pub async fn start(endpoint: &str) -> Self {
        Self::start_with_budget(endpoint, 10, 100).await
    }

    /// `start`, with each user's request budget at `rate` per second, `burst` at once.
    pub async fn start_with_budget(endpoint: &str, rate: u32, burst: u32) -> Self {
        let (rate, burst) = (rate.to_string(), burst.to_string());
        let unique = format!(
            "gw-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let functions = {
            let _turn = ENV.lock().await;
            for (k, v) in [
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ENDPOINT_URL", endpoint),
                ("S3_FORCE_PATH_STYLE", "true"),
                ("TABLE_NAME", &unique),
                ("BUCKET_NAME", &unique),
                ("KEY_PREFIX", "prod/"),
                ("USER_RATE_PER_SECOND", &rate),
                ("USER_RATE_BURST", &burst),
            ] {
                std::env::set_var(k, v);
            }
            let (ddb, s3) = clients_from_env(true).await;
            DynamoIndex::new(ddb, unique.clone())
                .create_table()
                .await
                .expect("create table");
            S3Blobs::new(s3, unique.clone(), "prod/")
                .create_bucket()
                .await
                .expect("create bucket");
            let mut functions = BTreeMap::new();
            for spec in template_functions() {
                let app = lambda::function_from_env(route_set(&spec.name))
                    .await
                    .expect("the function builds from its environment");
                functions.insert(
                    spec.name.clone(),
                    Function {
                        name: spec.name.clone(),
                        timeout: spec.timeout,
                        app,
                    },
                );
            }
            functions
        };
        let routes = template_functions()
            .into_iter()
            .flat_map(|f| f.routes)
            .collect();
        let issuer = Arc::new(TestIssuer::new());
        let jwks = tempfile::tempdir().expect("dir");
        let jwks_file = jwks.path().join("jwks.json");
        issuer.write_jwks(&jwks_file).expect("write the JWKS");
        let verifier = Verifier::load(issuer.verifier_config(JwksSource::File(jwks_file)))
            .await
            .expect("load the JWKS");
        let state = Arc::new(State {
            routes,
            functions,
            verifier,
            limits: Mutex::new(Limits::default()),
            calls: Mutex::default(),
            next_id: AtomicU64::new(0),
        });
        let mut gw = Self {
            url: String::new(),
            addr: "127.0.0.1:0".parse().expect("addr"),
            bucket: unique,
            issuer,
            state,
            server: None,
            _jwks: jwks,
        };
        gw.serve().await;
        gw
    }

    /// Serves on `self.addr` (any free port the first time, the same one after `stop`).
    async fn serve(&mut self) {
        let l = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the gateway");
        self.addr = l.local_addr().expect("addr");
        self.url = format!("http://{}", self.addr);
        let state = self.state.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let state = state.clone();
            async move { handle(&state, req).await }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        self.server = Some((tx, task));
    }

    /// The network goes: nothing listens on the port until `restart`.
    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.serve().await;
    }

    /// A token for `sub` from the issuer the gateway trusts, valid for `ttl`.
    pub fn token(&self, sub: &str, ttl: Duration) -> String {
        self.issuer.token(sub, ttl)
    }

    pub fn set_limits(&self, limits: Limits) {
        *self.state.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// Every request answered so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// API Gateway's own JSON answer.
fn gateway_answer(status: StatusCode, message: &str) -> Response {
    let mut r = Response::new(Body::from(json!({ "message": message }).to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn unauthorized(description: Option<&str>) -> Response {
    let mut r = gateway_answer(StatusCode::UNAUTHORIZED, "Unauthorized");
    let challenge = match description {
        None => "Bearer".to_owned(),
        Some(d) => format!("Bearer scope=\"\" error=\"invalid_token\" error_description=\"{d}\""),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert("www-authenticate", v);
    }
    r
}

/// Whether API Gateway passes a body of this type as text rather than base64.
fn textual(headers: &HeaderMap) -> bool {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.starts_with("application/json")
        || ct.contains("+json")
        || ct.starts_with("application/xml")
        || ct.starts_with("application/x-www-form-urlencoded")
}

/// A claim as API Gateway hands it to the function: every value a string.
fn claim_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(claim_string).collect::<Vec<_>>().join(" ")
        ),
        other => other.to_string(),
    }
}

/// The verified token's claims (its payload, already checked by the verifier).
fn claims_of(token: &str) -> serde_json::Map<String, Value> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let s = claim_string(&v);
            (k, Value::String(s))
        })
        .collect()
}

async fn handle(state: &State, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let (answer, function, route_key) = match route_for(&state.routes, &parts.method, &path) {
        None => (
            gateway_answer(StatusCode::NOT_FOUND, "Not Found"),
            None,
            format!("{} {path}", parts.method),
        ),
        Some((route, params)) => {
            let answer = invoke(state, parts, body, route, params).await;
            (answer, Some(route.function.clone()), route.key())
        }
    };
    let status = answer.status().as_u16();
    state
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Call {
            function,
            route_key,
            status,
        });
    answer
}

async fn invoke(
    state: &State,
    parts: http::request::Parts,
    body: Body,
    route: &Route,
    params: BTreeMap<String, String>,
) -> Response {
    let limits = *state.limits.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(body) = axum::body::to_bytes(body, limits.payload).await else {
        return gateway_answer(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    };
    // The JWT authorizer: `$request.header.Authorization`, with or without `Bearer `.
    let Some(raw) = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized(None);
    };
    let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
    if let Err(e) = state.verifier.verify(token).await {
        return unauthorized(Some(&e.to_string()));
    }
    let Some(function) = state.functions.get(&route.function) else {
        return gateway_answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let event = event(state, &parts, &body, route, params, claims_of(token));
    let Ok(event) = serde_json::to_vec(&event) else {
        return gateway_answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let timeout = limits.function_timeout.unwrap_or(function.timeout);
    match tokio::time::timeout(
        limits.integration_timeout,
        run_function(function, &event, timeout, limits.invoke_payload),
    )
    .await
    {
        Ok(Some(answer)) => answer,
        Ok(None) => gateway_answer(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Err(_) => gateway_answer(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    }
}

/// The payload 2.0 event API Gateway sends for this request.
fn event(
    state: &State,
    parts: &http::request::Parts,
    body: &[u8],
    route: &Route,
    params: BTreeMap<String, String>,
    claims: serde_json::Map<String, Value>,
) -> Value {
    let n = state.next_id.fetch_add(1, Ordering::SeqCst);
    let request_id = format!("gw{n:012}");
    // Header names lower-cased, repeated headers joined by commas; cookies apart.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        if k == "cookie" {
            cookies.extend(v.split(';').map(|c| c.trim().to_owned()));
            continue;
        }
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    headers.insert("x-forwarded-proto".into(), "http".into());
    headers.insert("x-amzn-trace-id".into(), format!("Root=1-{request_id}"));
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(u) = reqwest::Url::parse(&format!("http://gw/?{raw_query}")) {
        for (k, v) in u.query_pairs() {
            query
                .entry(k.into_owned())
                .and_modify(|e| {
                    e.push(',');
                    e.push_str(&v);
                })
                .or_insert_with(|| v.into_owned());
        }
    }
    let domain = headers.get("host").cloned().unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut e = json!({
        "version": "2.0",
        "routeKey": route.key(),
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "gateway",
            "authorizer": { "jwt": { "claims": claims, "scopes": null } },
            "domainName": domain,
            "domainPrefix": domain.split('.').next().unwrap_or_default(),
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": parts.headers.get("user-agent")
                    .and_then(|v| v.to_str().ok()).unwrap_or_default(),
            },
            "requestId": request_id,
            "routeKey": route.key(),
            "stage": "$default",
            "timeEpoch": now_ms,
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        e["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        e["queryStringParameters"] = json!(query);
    }
    if !params.is_empty() {
        e["pathParameters"] = json!(params);
    }
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text) if textual(&parts.headers) => e["body"] = json!(text),
            _ => {
                e["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
                e["isBase64Encoded"] = json!(true);
            }
        }
    }
    e
}

/// One invocation as the Lambda runtime makes it: the event JSON deserialized as
/// lambda_http's `LambdaRequest`, lambda_http's adapter over the function's router (what
/// `lambda_http::run` wraps), its `LambdaResponse` serialized, then read back as API
/// Gateway reads a payload 2.0 answer. `None`: Lambda failed the invocation (payload too
/// large, function error, past its `Timeout`).
async fn run_function(
    function: &Function,
    event: &[u8],
    timeout: Duration,
    invoke_payload: usize,
) -> Option<Response> {
    if event.len() > invoke_payload {
        eprintln!(
            "gateway: {} B event over Lambda's limit for {}",
            event.len(),
            function.name
        );
        return None;
    }
    let payload: LambdaRequest = serde_json::from_slice(event).ok()?;
    let mut ctx = Context::default();
    ctx.request_id = format!("lambda-{}", function.name);
    // The adapter is not `Send` (it names the router's unsync body type): only its future
    // crosses the await. A router is always ready, so no `poll_ready` first.
    let invocation = {
        let mut adapter = Adapter::from(function.app.clone());
        adapter.call(LambdaEvent::new(payload, ctx))
    };
    let answer = tokio::time::timeout(timeout, invocation).await.ok()?.ok()?;
    let out = serde_json::to_vec(&answer).ok()?;
    if out.len() > invoke_payload {
        eprintln!(
            "gateway: {} B answer over Lambda's limit from {}",
            out.len(),
            function.name
        );
        return None;
    }
    let v2: ApiGatewayV2httpResponse = serde_json::from_slice(&out).ok()?;
    let body = match v2.body {
        None => Vec::new(),
        Some(lambda_http::Body::Text(t)) if v2.is_base64_encoded => {
            base64::engine::general_purpose::STANDARD.decode(t).ok()?
        }
        Some(lambda_http::Body::Text(t)) => t.into_bytes(),
        Some(lambda_http::Body::Binary(b)) => b,
        Some(_) => Vec::new(),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(u16::try_from(v2.status_code).ok()?).ok()?;
    for (k, v) in &v2.headers {
        r.headers_mut().append(k, v.clone());
    }
    for c in &v2.cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append("set-cookie", v);
        }
    }
    Some(r)
}
