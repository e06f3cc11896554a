//! Accepting connections with limits: at most `max_connections` open at once (the next one
//! waits in the listen backlog), a deadline for each request's headers, and (a layer in the
//! router) an idle deadline for its body. A client that trickles its headers or stalls its
//! body is cut off without holding a slot others need. Shutdown drains requests in flight.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (each request, on a kept-alive
    /// connection too).
    pub header_read_timeout: Duration,
    /// Longest pause allowed while a request body is being received.
    pub body_idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections to
/// finish their requests (at most `drain`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_idle_timeout,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // hyper-util's GracefulShutdown does not take upgradeable connections, so the same by
    // hand: a stop signal each connection watches, and a channel that closes once every
    // connection task (each holding a sender) has ended.
    let (stop, _) = watch::channel(false);
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // With upgrades: `GET /v1/live` turns the connection into a WebSocket.
        let conn = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()))
            .with_upgrades();
        let mut stopping = stop.subscribe();
        let open = open.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let stop_asked = async move {
                // A closed signal also means stop.
                let _ = stopping.wait_for(|s| *s).await;
            };
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop_asked => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(slot);
            drop(open);
        });
    }
    drop(listener);
    stop.send_replace(true);
    drop(open);
    if tokio::time::timeout(drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain deadline");
    }
}
