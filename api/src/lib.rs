//! HTTP API v1. One router, generic over the storage ports, so the local server and every
//! Lambda function answer identically (the same OpenAPI file describes both).

mod auth;
mod budget;
mod error;
mod extract;
#[cfg(feature = "lambda")]
pub mod lambda;
mod openapi;
mod routes;
pub mod spool;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

use audio_dedup_core::ports::{BlobStore, TransactionalIndex};
use audio_dedup_core::Dedup;

pub use auth::{bearer, Authenticator, Caller};
pub use budget::UserBudget;
pub use error::ApiError;
pub use openapi::openapi_json;

/// Largest body `POST /v1/audio` takes; larger audio goes through upload sessions.
pub const MAX_DIRECT_UPLOAD: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Where direct-upload bodies are spooled (the blob store's own temp folder, so a put
    /// is a link, not a copy). `None` keeps them in memory (Lambda: the event is anyway).
    pub spool_dir: Option<PathBuf>,
    /// Each user's request budget, taken on every authenticated route; `None`: no limit.
    pub request_budget: Option<UserBudget>,
}

pub struct AppState<B, I> {
    pub dedup: Arc<Dedup<B, I>>,
    pub cfg: ApiConfig,
}

/// Which routes a deployment serves: everything (local server) or one Lambda's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSet {
    All,
    Upload,
    References,
    Stats,
    /// Threads, messages, snapshots, and the positions of the caller's logs.
    Threads,
    Library,
}

pub fn router<B: BlobStore, I: TransactionalIndex>(
    dedup: Arc<Dedup<B, I>>,
    auth: Arc<dyn Authenticator>,
    cfg: ApiConfig,
    set: RouteSet,
) -> Router {
    use routes::{audio, library, messages, meta, references, threads};
    let per_user = cfg.request_budget.clone();
    let state = Arc::new(AppState { dedup, cfg });
    let mut api: Router<Arc<AppState<B, I>>> = Router::new();
    if matches!(set, RouteSet::All | RouteSet::Upload) {
        api = api
            .route(
                "/v1/audio",
                post(audio::upload_direct::<B, I>).layer(DefaultBodyLimit::disable()),
            )
            .route("/v1/audio/uploads", post(audio::open_session::<B, I>))
            .route(
                "/v1/audio/{hash}/parts",
                post(audio::sign_parts::<B, I>).get(audio::list_parts::<B, I>),
            )
            .route("/v1/audio/{hash}/complete", post(audio::complete::<B, I>))
            .route("/v1/audio/{hash}", get(audio::describe::<B, I>));
    }
    if matches!(set, RouteSet::All | RouteSet::References) {
        api = api.route(
            "/v1/audio/{hash}/references/{ref_id}",
            put(references::add::<B, I>).delete(references::remove::<B, I>),
        );
    }
    if matches!(set, RouteSet::All | RouteSet::Stats) {
        api = api.route("/v1/audio/stats", get(meta::stats::<B, I>));
    }
    if matches!(set, RouteSet::All | RouteSet::Threads) {
        api = api
            .route(
                "/v1/threads",
                post(threads::create::<B, I>).get(threads::list::<B, I>),
            )
            .route("/v1/threads/{id}", get(threads::get_one::<B, I>))
            .route(
                "/v1/threads/{id}/members",
                post(threads::add_member::<B, I>),
            )
            .route(
                "/v1/threads/{id}/members/{member}",
                delete(threads::remove_member::<B, I>),
            )
            .route("/v1/threads/{id}/leave", post(threads::leave::<B, I>))
            .route("/v1/threads/{id}/read", put(threads::mark_read::<B, I>))
            .route("/v1/positions", get(threads::positions::<B, I>))
            .route(
                "/v1/threads/{id}/messages",
                get(messages::list::<B, I>).merge(
                    post(messages::create::<B, I>)
                        .layer(DefaultBodyLimit::max(messages::MAX_MESSAGE_BODY)),
                ),
            )
            .route(
                "/v1/threads/{id}/messages/{message_id}",
                delete(messages::delete::<B, I>),
            )
            .route(
                "/v1/threads/{id}/messages/{message_id}/audio",
                get(messages::audio::<B, I>),
            )
            .route(
                "/v1/messages/{message_id}/snapshot",
                get(messages::snapshot::<B, I>),
            );
    }
    if matches!(set, RouteSet::All | RouteSet::Library) {
        api = api.route("/v1/library", get(library::list::<B, I>)).route(
            "/v1/library/{item_id}",
            put(library::put::<B, I>).delete(library::delete::<B, I>),
        );
    }
    if set == RouteSet::All {
        api = api.route("/v1/admin/reconcile", post(meta::reconcile::<B, I>));
    }
    let mut api = api.layer(DefaultBodyLimit::max(extract::MAX_JSON_BODY));
    if let Some(per_user) = per_user {
        // Added before the identity layer, so it runs after it: keyed by the caller.
        api = api.route_layer(axum::middleware::from_fn_with_state(
            per_user,
            budget::limit_per_user,
        ));
    }
    let api = api
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_caller,
        ))
        .with_state(state);
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/openapi.json", get(meta::openapi))
        .merge(api)
        .fallback(meta::no_route)
        .method_not_allowed_fallback(meta::wrong_method)
}
