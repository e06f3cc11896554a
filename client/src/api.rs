//! The HTTP API, typed. Every answer is classified (`ApiError`), and every outcome flips the
//! client's online flag: a request that got no answer means offline, any answer means online.
//! There are no OS connectivity hooks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use audio_dedup_core::{
    AudioFormat, AudioRender, AudioView, ContentHash, LibraryItemId, LibraryItemView, MessageId,
    MessageView, Page, Part, PartUpload, PartsView, ReferenceKind, SessionId, Stats, ThreadDetail,
    ThreadId, ThreadLogEntry, ThreadView, UploadResult, UploadSession, UserId,
};

use crate::auth::{Auth, TokenUnavailable};
use crate::error::{ApiError, ErrorCode};
use crate::updates::{Update, Updates};

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    /// The client's runtime: every public call is polled inside it (`runtime::in_runtime`).
    rt: tokio::runtime::Handle,
    online: Arc<AtomicBool>,
    updates: Updates,
    /// Notified when requests get answers again (the background sender wakes on it).
    back_online: Option<Arc<tokio::sync::Notify>>,
}

/// The audio of a new message or library item, as the wire names it: audio the caller holds
/// (`{"content_hash", "format"}`), or the audio of a message they can see
/// (`{"from_message"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioChoice {
    Render(AudioRender),
    FromMessage(MessageId),
}

impl AudioChoice {
    fn json(&self) -> serde_json::Value {
        match self {
            Self::Render(r) => {
                serde_json::json!({ "content_hash": r.content_hash, "format": r.format })
            }
            Self::FromMessage(m) => serde_json::json!({ "from_message": m }),
        }
    }
}

#[derive(Serialize)]
struct NewMessageBody<'a> {
    id: &'a MessageId,
    snapshot: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// Where a library item's audio comes from, on the wire.
#[derive(Debug, Clone, Copy)]
pub enum LibrarySource<'a> {
    Hash(&'a ContentHash),
    Message(&'a MessageId),
}

/// `ThreadDetail` as the wire has it (the core type is flattened for serialising only).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ThreadInfo {
    #[serde(flatten)]
    pub thread: ThreadView,
    pub last_cursor: String,
    pub message_count: u64,
    /// The newest live message (the thread's last activity), if any.
    #[serde(default)]
    pub last_message: Option<audio_dedup_core::MessagePreview>,
    /// Live messages of others after the caller's read marker, as the server counts them.
    #[serde(default)]
    pub unread: u64,
}

impl From<ThreadInfo> for ThreadDetail {
    fn from(t: ThreadInfo) -> Self {
        ThreadDetail {
            thread: t.thread,
            last_cursor: t.last_cursor,
            message_count: t.message_count,
            last_message: t.last_message,
            unread: t.unread,
        }
    }
}

/// S3 answers to a signed request that a later try gets past: two devices putting the same
/// new content at once (`409 ConditionalRequestConflict`, which S3 documents), a body S3
/// waited too long for (`400 RequestTimeout`), and URLs signed with credentials that expired
/// or a clock that drifted (`400 ExpiredToken`, `403 RequestTimeTooSkewed`).
fn s3_retryable(status: StatusCode, body: &[u8]) -> bool {
    const CODES: [&str; 4] = [
        "ConditionalRequestConflict",
        "RequestTimeout",
        "ExpiredToken",
        "RequestTimeTooSkewed",
    ];
    let text = String::from_utf8_lossy(body);
    status == StatusCode::CONFLICT
        || CODES
            .iter()
            .any(|c| text.contains(&format!("<Code>{c}</Code>")))
}

/// A non-2xx answer, classified: retryable (5xx, 408, 429, and S3's passing refusals) or a
/// refusal. The API's JSON error gives the code; any other body (S3's XML) gives `Unknown`,
/// and the status still classifies.
fn classify(
    status: StatusCode,
    body: &[u8],
    after: Option<Duration>,
) -> Result<Response, ApiError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = serde_json::from_value(json["error"]["code"].clone()).unwrap_or(ErrorCode::Unknown);
    let message = json["error"]["message"].as_str().unwrap_or("").to_owned();
    let s = status.as_u16();
    let s3_passing = code == ErrorCode::Unknown && s3_retryable(status, body);
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || s3_passing
    {
        Err(ApiError::Retryable {
            status: s,
            code,
            retry_after: after,
        })
    } else {
        Err(ApiError::Rejected {
            status: s,
            code,
            message,
        })
    }
}

fn retry_after(r: &Response) -> Option<Duration> {
    let v = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

impl Api {
    pub(crate) fn new(
        base: &str,
        auth: Auth,
        rt: tokio::runtime::Handle,
        timeout: Duration,
        updates: Updates,
    ) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ApiError::Protocol(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            auth,
            rt,
            online: Arc::new(AtomicBool::new(true)),
            updates,
            back_online: None,
        })
    }

    /// Notifies `n` whenever a request gets an answer after requests had failed.
    pub(crate) fn with_back_online(mut self, n: Arc<tokio::sync::Notify>) -> Self {
        self.back_online = Some(n);
        self
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    fn set_online(&self, online: bool) {
        if self.online.swap(online, Ordering::SeqCst) != online {
            self.updates.send(Update::Connectivity { online });
            if let (true, Some(n)) = (online, &self.back_online) {
                n.notify_one();
            }
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to the API; `send` adds the bearer token.
    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// The token to present now (the live channel's upgrade uses it too).
    pub async fn bearer_token(&self) -> Result<String, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            match self.auth.token().await {
                Ok(t) => Ok(t),
                Err(why) => Err(self.signed_out(why)),
            }
        })
        .await
    }

    /// `refused` got a 401 (or the live upgrade a 401/403): a fresh token from the provider,
    /// or `AuthRequired` (the client is then signed out until a new token comes).
    pub async fn token_refused(&self, refused: &str) -> Result<String, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            match self.auth.refresh(refused).await {
                Ok(t) => Ok(t),
                Err(why) => Err(self.signed_out(why)),
            }
        })
        .await
    }

    /// Records that no usable token exists, tells the app once, and answers the error.
    fn signed_out(&self, why: TokenUnavailable) -> ApiError {
        if self.auth.sign_out() {
            tracing::info!(reason = %why, "signed out: requests wait for a new token");
            self.updates.send(Update::AuthRequired {
                reason: why.clone(),
            });
        }
        ApiError::AuthRequired(why)
    }

    /// A request with a token got an answer other than 401: signed in (again).
    fn signed_in(&self) {
        if self.auth.signed_in() {
            self.updates.send(Update::AuthRestored);
            if let Some(n) = &self.back_online {
                n.notify_one();
            }
        }
    }

    /// Sends with the bearer token, classifies the answer, and returns the response of a
    /// 2xx. A 401 asks the token provider once for a fresh token and sends again; a second
    /// 401 (or no token) answers `AuthRequired`, which the queue waits out.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let token = self.bearer_token().await?;
            // Bodies that stream (a file) cannot be sent twice; the queue sends them again.
            let again = rb.try_clone();
            match self.send_once(rb.bearer_auth(&token)).await {
                Err(e) if e.status() == Some(401) => {}
                other => return self.answered(other),
            }
            let fresh = self.token_refused(&token).await?;
            let Some(rb) = again else {
                return Err(ApiError::Retryable {
                    status: 401,
                    code: ErrorCode::Unauthorized,
                    retry_after: Some(Duration::ZERO),
                });
            };
            match self.send_once(rb.bearer_auth(&fresh)).await {
                Err(e) if e.status() == Some(401) => {
                    Err(self.signed_out(TokenUnavailable::Refused))
                }
                other => self.answered(other),
            }
        })
        .await
    }

    /// An answer other than 401 to a request with a token: the token works.
    fn answered(&self, r: Result<Response, ApiError>) -> Result<Response, ApiError> {
        if r.as_ref().map_or_else(|e| e.status().is_some(), |_| true) {
            self.signed_in();
        }
        r
    }

    /// Sends as is (no token), classifies the answer ([`classify`]), and returns the response
    /// of a 2xx.
    async fn send_once(&self, rb: RequestBuilder) -> Result<Response, ApiError> {
        let res = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                self.set_online(false);
                return Err(ApiError::Offline(e.to_string()));
            }
        };
        self.set_online(true);
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let after = retry_after(&res);
        let body = res.bytes().await.unwrap_or_default();
        classify(status, &body, after)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
    ) -> Result<(StatusCode, T), ApiError> {
        let res = self.send(rb).await?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| ApiError::Offline(format!("reading the answer: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(|v| (status, v))
            .map_err(|e| ApiError::Protocol(e.to_string()))
    }

    // Threads ---------------------------------------------------------------------------

    pub async fn create_thread(
        &self,
        id: Option<&ThreadId>,
        title: &str,
        members: &[String],
    ) -> Result<ThreadView, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let body = serde_json::json!({ "id": id, "title": title, "members": members });
            let body = if id.is_none() {
                serde_json::json!({ "title": title, "members": members })
            } else {
                body
            };
            Ok(self
                .json(self.req(Method::POST, "/v1/threads").json(&body))
                .await?
                .1)
        })
        .await
    }

    pub async fn list_threads(
        &self,
        since: &str,
        limit: usize,
    ) -> Result<Page<ThreadView>, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let path = format!("/v1/threads?since={since}&limit={limit}");
            Ok(self.json(self.req(Method::GET, &path)).await?.1)
        })
        .await
    }

    pub async fn get_thread(&self, id: &ThreadId) -> Result<ThreadInfo, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            Ok(self
                .json(self.req(Method::GET, &format!("/v1/threads/{id}")))
                .await?
                .1)
        })
        .await
    }

    /// Adds `member` to the thread (any member may). Answers the thread as it is now.
    pub async fn add_member(
        &self,
        thread: &ThreadId,
        member: &UserId,
    ) -> Result<ThreadView, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let body = serde_json::json!({ "member": member });
            let rb = self
                .req(Method::POST, &format!("/v1/threads/{thread}/members"))
                .json(&body);
            Ok(self.json(rb).await?.1)
        })
        .await
    }

    /// Removes `member` from the thread (the creator), or leaves it (`member` is the
    /// caller).
    pub async fn remove_member(&self, thread: &ThreadId, member: &str) -> Result<(), ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            self.send(self.req(
                Method::DELETE,
                &format!("/v1/threads/{thread}/members/{member}"),
            ))
            .await
            .map(|_| ())
        })
        .await
    }

    /// Marks the thread read up to `cursor` for the caller (all their devices).
    pub async fn mark_read(&self, thread: &ThreadId, cursor: &str) -> Result<(), ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let body = serde_json::json!({ "cursor": cursor });
            self.send(
                self.req(Method::PUT, &format!("/v1/threads/{thread}/read"))
                    .json(&body),
            )
            .await
            .map(|_| ())
        })
        .await
    }

    /// Leaves the thread (`POST /v1/threads/{id}/leave`: the server knows who asks).
    pub async fn leave_thread(&self, thread: &ThreadId) -> Result<(), ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            self.send(self.req(Method::POST, &format!("/v1/threads/{thread}/leave")))
                .await
                .map(|_| ())
        })
        .await
    }

    // Messages --------------------------------------------------------------------------

    pub async fn list_messages(
        &self,
        thread: &ThreadId,
        after: &str,
        limit: usize,
    ) -> Result<Page<ThreadLogEntry>, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let path = format!("/v1/threads/{thread}/messages?after={after}&limit={limit}");
            Ok(self.json(self.req(Method::GET, &path)).await?.1)
        })
        .await
    }

    /// Creates (or, for an id the server has, answers) a message. Idempotent by `id`.
    pub async fn create_message(
        &self,
        thread: &ThreadId,
        id: &MessageId,
        snapshot: &RawValue,
        audio: Option<&AudioChoice>,
    ) -> Result<MessageView, ApiError> {
        self.create_message_with_text(thread, id, snapshot, None, audio)
            .await
    }

    /// [`Self::create_message`] with an optional plain-text body.
    pub async fn create_message_with_text(
        &self,
        thread: &ThreadId,
        id: &MessageId,
        snapshot: &RawValue,
        text: Option<&str>,
        audio: Option<&AudioChoice>,
    ) -> Result<MessageView, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let body = NewMessageBody {
                id,
                snapshot,
                audio: audio.map(AudioChoice::json),
                text,
            };
            let rb = self
                .req(Method::POST, &format!("/v1/threads/{thread}/messages"))
                .json(&body);
            Ok(self.json(rb).await?.1)
        })
        .await
    }

    pub async fn delete_message(&self, thread: &ThreadId, id: &MessageId) -> Result<(), ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            self.send(self.req(
                Method::DELETE,
                &format!("/v1/threads/{thread}/messages/{id}"),
            ))
            .await
            .map(|_| ())
        })
        .await
    }

    /// A short-lived URL for a message's audio, for any member of its thread (404
    /// `message_not_found` for anyone else, and for messages without audio).
    pub async fn message_audio(
        &self,
        thread: &ThreadId,
        id: &MessageId,
    ) -> Result<AudioView, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let path = format!("/v1/threads/{thread}/messages/{id}/audio");
            Ok(self.json(self.req(Method::GET, &path)).await?.1)
        })
        .await
    }

    pub async fn snapshot(&self, id: &MessageId) -> Result<Bytes, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let res = self
                .send(self.req(Method::GET, &format!("/v1/messages/{id}/snapshot")))
                .await?;
            res.bytes()
                .await
                .map_err(|e| ApiError::Offline(format!("reading the snapshot: {e}")))
        })
        .await
    }

    // Library ---------------------------------------------------------------------------

    /// Puts a library item: audio the caller holds (by hash), or saved from a message they
    /// can see (which makes them a holder of its audio).
    pub async fn put_library_item(
        &self,
        id: &LibraryItemId,
        audio: LibrarySource<'_>,
        title: &str,
    ) -> Result<LibraryItemView, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let body = match audio {
                LibrarySource::Hash(h) => serde_json::json!({ "content_hash": h, "title": title }),
                LibrarySource::Message(m) => {
                    serde_json::json!({ "from_message": m, "title": title })
                }
            };
            Ok(self
                .json(
                    self.req(Method::PUT, &format!("/v1/library/{id}"))
                        .json(&body),
                )
                .await?
                .1)
        })
        .await
    }

    pub async fn delete_library_item(&self, id: &LibraryItemId) -> Result<(), ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            self.send(self.req(Method::DELETE, &format!("/v1/library/{id}")))
                .await
                .map(|_| ())
        })
        .await
    }

    pub async fn list_library(
        &self,
        since: &str,
        limit: usize,
    ) -> Result<Page<LibraryItemView>, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let path = format!("/v1/library?since={since}&limit={limit}");
            Ok(self.json(self.req(Method::GET, &path)).await?.1)
        })
        .await
    }

    // Audio -----------------------------------------------------------------------------

    pub async fn open_session(
        &self,
        hash: &ContentHash,
        size: u64,
        format: AudioFormat,
        reference: Option<(ReferenceKind, &str)>,
    ) -> Result<UploadSession, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let mut body = serde_json::json!({ "sha256": hash, "size": size, "format": format });
            if let Some((kind, ref_id)) = reference {
                body["reference"] = serde_json::json!({ "kind": kind, "ref_id": ref_id });
            }
            Ok(self
                .json(self.req(Method::POST, "/v1/audio/uploads").json(&body))
                .await?
                .1)
        })
        .await
    }

    pub async fn complete(
        &self,
        hash: &ContentHash,
        session: &SessionId,
        proof: Option<&str>,
    ) -> Result<UploadResult, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let mut body = serde_json::json!({ "session_id": session });
            if let Some(p) = proof {
                body["proof"] = serde_json::json!(p);
            }
            Ok(self
                .json(
                    self.req(Method::POST, &format!("/v1/audio/{hash}/complete"))
                        .json(&body),
                )
                .await?
                .1)
        })
        .await
    }

    /// Signed PUTs for parts of a parted session (`POST /v1/audio/{hash}/parts`).
    pub async fn sign_parts(
        &self,
        hash: &ContentHash,
        session: &SessionId,
        parts: &[Part],
    ) -> Result<Vec<PartUpload>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Signed {
            parts: Vec<PartUpload>,
        }
        crate::runtime::in_runtime(&self.rt, async move {
            let body = serde_json::json!({ "session_id": session, "parts": parts });
            let signed: Signed = self
                .json(
                    self.req(Method::POST, &format!("/v1/audio/{hash}/parts"))
                        .json(&body),
                )
                .await?
                .1;
            Ok(signed.parts)
        })
        .await
    }

    /// The parts the server holds of a parted session (`GET /v1/audio/{hash}/parts`).
    pub async fn list_parts(
        &self,
        hash: &ContentHash,
        session: &SessionId,
    ) -> Result<PartsView, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let path = format!("/v1/audio/{hash}/parts?session_id={session}");
            Ok(self.json(self.req(Method::GET, &path)).await?.1)
        })
        .await
    }

    pub async fn describe(&self, hash: &ContentHash) -> Result<AudioView, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            Ok(self
                .json(self.req(Method::GET, &format!("/v1/audio/{hash}")))
                .await?
                .1)
        })
        .await
    }

    pub async fn stats(&self) -> Result<Stats, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            Ok(self.json(self.req(Method::GET, "/v1/audio/stats")).await?.1)
        })
        .await
    }

    /// A request to a URL the server signed (no bearer token: the signature is the grant).
    /// S3's answers that a later try gets past are retryable, not refusals
    /// ([`s3_retryable`]); a new try opens a new session, so its URL is signed afresh.
    pub async fn send_signed(&self, rb: RequestBuilder) -> Result<Response, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move { self.send_once(rb).await }).await
    }

    // Live channel (owned by the live-updates work) ----------------------------------------

    /// Where each log the caller follows stands now (`GET /v1/positions`): one request that
    /// lets a reconnecting live channel sync only the logs that moved. With `changed_since`
    /// (an earlier answer's `as_of`) it lists only threads changed since.
    pub async fn positions(
        &self,
        changed_since: Option<&str>,
    ) -> Result<audio_dedup_core::chat::Positions, ApiError> {
        crate::runtime::in_runtime(&self.rt, async move {
            let path = match changed_since {
                Some(t) => format!("/v1/positions?changed_since={t}"),
                None => "/v1/positions".to_owned(),
            };
            Ok(self.json(self.req(Method::GET, &path)).await?.1)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_error(code: &str) -> Vec<u8> {
        format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")
            .into_bytes()
    }

    /// S3's passing refusals of a signed request are retried; its real refusals and the
    /// API's own 4xx are not.
    #[test]
    fn s3_answers_that_a_later_try_gets_past_are_retryable() {
        let retryable = |status: u16, body: &[u8]| {
            classify(StatusCode::from_u16(status).unwrap(), body, None)
                .err()
                .is_some_and(|e| e.is_retryable())
        };
        assert!(retryable(409, &s3_error("ConditionalRequestConflict")));
        assert!(retryable(400, &s3_error("RequestTimeout")));
        assert!(retryable(400, &s3_error("ExpiredToken")));
        assert!(retryable(403, &s3_error("RequestTimeTooSkewed")));
        assert!(retryable(503, &s3_error("SlowDown")));
        assert!(!retryable(400, &s3_error("BadDigest")));
        assert!(!retryable(403, &s3_error("SignatureDoesNotMatch")));
        assert!(!retryable(412, &s3_error("PreconditionFailed")));
        // The API's own 409 (a known code) is a refusal.
        let api = br#"{"error":{"code":"thread_id_conflict","message":"taken"}}"#;
        assert!(!retryable(409, api));
    }
}
