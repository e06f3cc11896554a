//! `$connect` records the caller's connection, `$disconnect` forgets it, `ping` (the client's
//! keepalive, `{"action":"ping"}`) is answered `{"kind":"pong"}` through the route's
//! response. The caller is who the REQUEST authorizer (live-authorizer) let in: API Gateway
//! passes its `principalId` in the request context of every route of that connection.
//! Nothing else is trusted.

use audio_dedup_core::live::{connected, disconnected};
use audio_dedup_core::ports::ConnectionRegistry;
use audio_dedup_core::{ConnectionId, UserId};
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;

/// What a route is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Connect,
    Disconnect,
    /// The keepalive: a message whose `action` is `ping`.
    Ping,
    /// Any other route (the template has none; `$default` would land here): refused.
    Other(String),
}

/// The keepalive's answer, the same frame the local server sends.
pub const PONG: &str = r#"{"kind":"pong"}"#;

/// The caller and connection a request is about, from what API Gateway set.
fn identify(req: &ApiGatewayWebsocketProxyRequest) -> Option<(UserId, ConnectionId)> {
    let ctx = &req.request_context;
    let user = ctx
        .authorizer
        .fields
        .get("principalId")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())?;
    let connection = ctx.connection_id.as_deref()?.parse().ok()?;
    Some((user, connection))
}

pub fn route(req: &ApiGatewayWebsocketProxyRequest) -> Route {
    match req.request_context.route_key.as_deref() {
        Some("$connect") => Route::Connect,
        Some("$disconnect") => Route::Disconnect,
        Some("ping") => Route::Ping,
        other => Route::Other(other.unwrap_or_default().to_owned()),
    }
}

fn response(status: i64, message: &str) -> ApiGatewayProxyResponse {
    let mut r = ApiGatewayProxyResponse::default();
    r.status_code = status;
    r.body = Some(Body::Text(message.to_owned()));
    r
}

/// Answers the route. A `$connect` that is not 2xx refuses the connection; the client
/// retries it with backoff. `$disconnect`'s answer is ignored by API Gateway.
pub async fn handle<R: ConnectionRegistry>(
    registry: &R,
    now_secs: u64,
    req: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let route = route(&req);
    match route {
        // Nothing to read or write: the message itself is what keeps the connection open.
        Route::Ping => return response(200, PONG),
        Route::Other(key) => {
            tracing::info!(route = key, "client message refused: only ping is routed");
            return response(400, "only ping is routed");
        }
        Route::Connect | Route::Disconnect => {}
    }
    let Some((user, connection)) = identify(&req) else {
        // Only reachable if the API were deployed without the authorizer.
        tracing::warn!("no authorized caller or connection id in the request context");
        return response(403, "forbidden");
    };
    let result = match route {
        Route::Connect => connected(registry, &user, &connection, now_secs).await,
        _ => disconnected(registry, &user, &connection).await,
    };
    match result {
        Ok(()) => response(200, "ok"),
        Err(e) => {
            tracing::error!(%user, %connection, error = %e, "connection record not written");
            response(500, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audio_dedup_core::store::memory::MemoryConnections;

    fn event(name: &str) -> ApiGatewayWebsocketProxyRequest {
        let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn bob() -> UserId {
        "bob".parse().unwrap()
    }

    #[tokio::test]
    async fn connect_records_the_authorized_caller_and_disconnect_forgets_them() {
        let reg = MemoryConnections::default();
        let r = handle(&reg, 1_700_000_000, event("ws-connect.json")).await;
        assert_eq!(r.status_code, 200);
        let conns = reg.of(&bob());
        let conn: ConnectionId = "L0SM9cOFvHcCIhw=".parse().unwrap();
        assert_eq!(conns.get(&conn), Some(&(1_700_000_000 + 2 * 3600 + 600)));
        let r = handle(&reg, 1_700_000_100, event("ws-disconnect.json")).await;
        assert_eq!(r.status_code, 200);
        assert!(reg.of(&bob()).is_empty());
        // A repeated $disconnect (Lambda retries) is fine.
        let r = handle(&reg, 1_700_000_100, event("ws-disconnect.json")).await;
        assert_eq!(r.status_code, 200);
    }

    /// Without an authorizer's principal nothing is recorded: identity never comes from
    /// the request itself (headers, query, body).
    #[tokio::test]
    async fn a_request_without_an_authorized_caller_is_refused_and_records_nothing() {
        let reg = MemoryConnections::default();
        let mut e = event("ws-connect.json");
        e.request_context.authorizer.fields.remove("principalId");
        e.headers.insert("x-user", "bob".parse().unwrap());
        let r = handle(&reg, 1, e).await;
        assert_eq!(r.status_code, 403);
        assert!(reg.of(&bob()).is_empty());
    }

    /// The client's own keepalive frame, routed as `ping`: 200 with the pong as the body
    /// (the route response sends it back), and no connection record touched.
    #[tokio::test]
    async fn ping_is_answered_with_pong() {
        let reg = MemoryConnections::default();
        let e = event("ws-ping.json");
        assert_eq!(e.body.as_deref(), Some(r#"{"action":"ping"}"#));
        let r = handle(&reg, 1, e).await;
        assert_eq!(r.status_code, 200);
        assert_eq!(r.body, Some(Body::Text(PONG.to_owned())));
        assert!(reg.of(&bob()).is_empty());
    }

    #[tokio::test]
    async fn client_messages_are_refused() {
        let reg = MemoryConnections::default();
        let mut e = event("ws-connect.json");
        e.request_context.route_key = Some("$default".into());
        let r = handle(&reg, 1, e).await;
        assert_eq!(r.status_code, 400);
        assert!(reg.of(&bob()).is_empty());
    }
}
