//! cairn's HTTP API (DESIGN §4) over an [`Engine`].
//!
//! Architecture invariants: this is the only crate that knows HTTP status codes; handlers do no
//! work of their own beyond parsing, authorising and shaping answers — every decision is the
//! engine's; no input may cause a 5xx or a panic (bodies are size- and depth-limited and
//! strictly typed, every refusal is a 4xx with `{"error": {"code", "message"}}`).

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{middleware, Json, Router};
use cairn_engine::Engine;
use serde_json::json;

pub mod auth;
mod conn;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
mod plans;
pub mod streams;
mod tasks;
mod tokens;
pub mod webhooks;

pub use auth::{Authenticator, Principal, Role};
pub use conn::{raise_fd_limit, ServeOptions};

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
}

impl AppState {
    pub fn new(engine: Engine, auth: Authenticator) -> AppState {
        AppState {
            engine,
            auth,
            remote: None,
            keep_alive: streams::KEEP_ALIVE,
        }
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> (StatusCode, Json<serde_json::Value>) {
    match s.engine.store().last_event_id().await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": e.to_string()})),
        ),
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/plans", post(plans::register).get(plans::list))
        .route("/plans/{id}", get(plans::get).delete(plans::delete))
        .route("/plans/{id}/start", post(plans::start))
        .route("/plans/{id}/pause", post(plans::pause))
        .route("/plans/{id}/resume", post(plans::resume))
        .route("/plans/{id}/cancel", post(plans::cancel))
        .route(
            "/plans/{id}/interventions",
            post(plans::intervene).get(plans::interventions),
        )
        .route(
            "/plans/{id}/checkpoints",
            get(plans::checkpoints).post(plans::create_checkpoint),
        )
        .route("/plans/{id}/checkpoints/{cid}", get(plans::checkpoint))
        .route(
            "/plans/{id}/checkpoints/{cid}/restore",
            post(plans::restore),
        )
        .route("/plans/{id}/checkpoints/{cid}/fork", post(plans::fork))
        .route("/plans/{id}/snapshot", get(plans::snapshot))
        .route("/plans/{id}/events", get(plans::events))
        .route("/tasks/poll", post(tasks::poll))
        .route("/tasks/{task_id}/heartbeat", post(tasks::heartbeat))
        .route("/tasks/{task_id}/complete", post(tasks::complete))
        .route("/tasks/{task_id}/fail", post(tasks::fail))
        .route("/plans/{id}/events/stream", get(streams::plan_stream))
        .route("/events/stream", get(streams::all_stream))
        .route("/ws", get(streams::ws))
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{id}", delete(tokens::revoke))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::endpoint))
        .route("/openapi.json", get(openapi::endpoint))
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
