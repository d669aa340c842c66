//! cairn's HTTP API over an [`Engine`].
//!
//! Architecture invariants: this is the only crate that knows HTTP status codes; handlers do no
//! work of their own beyond parsing, authorising and shaping answers — every decision is the
//! engine's; no input may cause a 5xx or a panic (bodies are size- and depth-limited and
//! strictly typed, every refusal is a 4xx with `{"error": {"code", "message"}}`).

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{middleware, Json, Router};
use cairn_engine::Engine;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod auth;
pub mod cluster;
mod conn;
pub mod error;
pub mod extract;
mod history;
pub mod metrics;
pub mod openapi;
mod plans;
mod reviews;
pub mod streams;
mod tasks;
mod templates;
mod tokens;
pub mod ui;
pub mod webhooks;
mod wire;

pub use auth::{Authenticator, Principal, Role};
pub use conn::{raise_fd_limit, ServeOptions};
pub use wire::{AuthMode, Server, ServerOptions};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: Authenticator,
    /// The remote task queue (`/v1/tasks…`); `None`: those endpoints answer 404.
    pub remote: Option<cairn_engine::remote::RemoteQueue>,
    /// How often an event stream with nothing to say sends a keep-alive comment (SSE) or a
    /// ping (WebSocket).
    pub keep_alive: std::time::Duration,
    /// This node: its id, lease and address (`GET /v1/nodes` marks it).
    pub node: cluster::NodeIdentity,
    /// The store's cluster secret, which forwarded requests must carry.
    pub cluster_secret: cluster::SecretCache,
}

impl AppState {
    pub fn new(engine: Engine, auth: Authenticator) -> AppState {
        AppState {
            engine,
            auth,
            remote: None,
            keep_alive: streams::KEEP_ALIVE,
            node: cluster::NodeIdentity {
                node_id: cairn_engine::EngineOptions::default().node_id,
                lease_ms: cairn_engine::EngineOptions::default().lease_ms,
                advertise: None,
            },
            cluster_secret: cluster::SecretCache::default(),
        }
    }

    /// Sets this node's identity (the engine's node id and lease, and its address).
    pub fn with_node(mut self, node: cluster::NodeIdentity) -> AppState {
        self.node = node;
        self
    }

    /// Sets the keep-alive interval of event streams (default 15 s).
    pub fn with_keep_alive(mut self, every: std::time::Duration) -> AppState {
        self.keep_alive = every;
        self
    }

    /// Serves `/v1/tasks…` from `queue` (the one given to the engine as `EngineOptions::remote`).
    pub fn with_remote(mut self, queue: cairn_engine::remote::RemoteQueue) -> AppState {
        self.remote = Some(queue);
        self
    }
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("no such endpoint; see /openapi.json")
}

/// Liveness: the process answers.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = openapi::Status)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the store answers.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ready\"}`", body = openapi::Status),
              (status = 503, description = "The store does not answer", body = openapi::Status)))]
async fn readyz(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> (StatusCode, Json<serde_json::Value>) {
    let store = s.engine.store();
    if let Err(e) = store.last_event_id().await {
        return not_ready(e.to_string());
    }
    // After a failed write, probe with a tiny one so readiness comes back by itself once the
    // store can write again, without waiting for traffic.
    if store.unavailable().is_some() {
        if let Err(e) = store
            .set_cursor(READYZ_PROBE, cairn_engine::now_micros().max(0) as u64)
            .await
        {
            return not_ready(e.to_string());
        }
    }
    (StatusCode::OK, Json(json!({"status": "ready"})))
}

/// The cursor `/readyz` writes to find out whether a store that failed can write again.
const READYZ_PROBE: &str = "readyz-probe";

fn not_ready(error: String) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "error": error})),
    )
}

/// The authenticated API under `/v1`, each route with its OpenAPI operation. The document is
/// generated from these lists ([`document`]), so it describes exactly what is routed.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(plans::register, plans::list))
        .routes(routes!(plans::get, plans::delete))
        .routes(routes!(plans::start))
        .routes(routes!(plans::pause))
        .routes(routes!(plans::resume))
        .routes(routes!(plans::cancel))
        .routes(routes!(plans::rollback))
        .routes(routes!(plans::intervene, plans::interventions))
        .routes(routes!(plans::checkpoints, plans::create_checkpoint))
        .routes(routes!(plans::checkpoint))
        .routes(routes!(plans::restore))
        .routes(routes!(plans::fork))
        .routes(routes!(plans::snapshot))
        .routes(routes!(plans::events))
        .routes(routes!(plans::step))
        .routes(routes!(plans::attempts))
        .routes(routes!(history::versions))
        .routes(routes!(history::version))
        .routes(routes!(history::diff))
        .routes(routes!(reviews::list))
        .routes(routes!(templates::push, templates::list))
        .routes(routes!(templates::get, templates::delete))
        .routes(routes!(templates::version))
        .routes(routes!(templates::diff))
        .routes(routes!(templates::instantiate))
        .routes(routes!(streams::plan_stream))
        .routes(routes!(streams::all_stream))
        .routes(routes!(streams::ws))
        .routes(routes!(tasks::poll))
        .routes(routes!(tasks::heartbeat))
        .routes(routes!(tasks::complete))
        .routes(routes!(tasks::fail))
        .routes(routes!(tasks::workers))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(tokens::whoami))
        .routes(routes!(cluster::nodes))
}

/// The unauthenticated endpoints at the root.
fn root_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::endpoint))
        .routes(routes!(openapi::endpoint))
}

/// The OpenAPI document of exactly the routed handlers.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, v1) = v1_routes().split_for_parts();
    let (_, root) = root_routes().split_for_parts();
    openapi::finish(v1, root)
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let (v1, _) = v1_routes().split_for_parts();
    let (root, _) = root_routes().split_for_parts();
    let v1 = v1.layer(middleware::from_fn_with_state(
        state.clone(),
        auth::middleware,
    ));
    // Internal, between nodes: its own authentication (the cluster secret) and body limit, and
    // no OpenAPI operation.
    let forward = Router::new()
        .route(cluster::FORWARD_PATH, axum::routing::post(cluster::forward))
        .layer(DefaultBodyLimit::max(cluster::MAX_FORWARD_BODY));
    Router::new()
        .merge(v1)
        .merge(forward)
        .merge(root)
        .merge(ui::routes())
        .fallback(not_found)
        .layer(middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::map_response(error::json_errors))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then stops taking requests and
/// lets those in flight finish. Connections get the default limits of [`ServeOptions`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ServeOptions::default(), shutdown).await
}

/// Like [`serve`], with explicit connection limits and timeouts.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    conn::serve(listener, router(state), opts, shutdown).await
}
