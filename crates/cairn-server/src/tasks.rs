//! `/v1/tasks…`: remote workers (DESIGN §3, §4). Long-poll for a task, heartbeat the lease,
//! report complete or fail. The worker role (or admin) only.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_engine::remote::{RemoteError, RemoteQueue};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::AppState;

/// The longest a poll waits.
pub const MAX_WAIT_MS: u64 = 60_000;
/// The most agent types one poll may ask for.
pub const MAX_AGENT_TYPES: usize = 64;
/// The longest error message a worker may report.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::UnknownTask(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "task_not_found", e.to_string())
            }
            RemoteError::WrongWorker { .. } => {
                ApiError::conflict("not_lease_holder", e.to_string())
            }
            RemoteError::NotRecorded { .. } => {
                tracing::warn!(error = %e, "a worker's report was not recorded");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    e.to_string(),
                )
            }
        }
    }
}

fn queue(s: &AppState) -> ApiResult<&RemoteQueue> {
    s.remote
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server does not hand out tasks to remote workers"))
}

/// 1 to 128 bytes, no control characters.
fn check_id(what: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(format!(
            "{what} must be 1 to 128 characters without control characters"
        )));
    }
    Ok(())
}

/// A task id from the path: anything no task could have is simply unknown.
fn task_id(id: &str) -> ApiResult<&str> {
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "task_not_found",
            "no such task",
        ));
    }
    Ok(id)
}

fn authorise(p: &Principal, worker_id: &str) -> ApiResult<()> {
    p.require(Role::Worker)?;
    check_id("worker_id", worker_id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollBody {
    worker_id: String,
    agent_types: Vec<String>,
    /// How long to wait for a task; 0 (the default) answers at once; capped at 60 000.
    #[serde(default)]
    wait_ms: u64,
}

pub async fn poll(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<PollBody>,
) -> ApiResult<Response> {
    authorise(&p, &body.worker_id)?;
    if body.agent_types.is_empty() || body.agent_types.len() > MAX_AGENT_TYPES {
        return Err(ApiError::unprocessable(format!(
            "agent_types must list 1 to {MAX_AGENT_TYPES} agent types"
        )));
    }
    for t in &body.agent_types {
        check_id("each agent type", t)?;
    }
    let q = queue(&s)?;
    let wait = Duration::from_millis(body.wait_ms.min(MAX_WAIT_MS));
    match q.poll(&body.worker_id, &body.agent_types, wait).await {
        Some(task) => Ok(Json(task).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    worker_id: String,
}

pub async fn heartbeat(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> ApiResult<Response> {
    authorise(&p, &body.worker_id)?;
    let answer = queue(&s)?.heartbeat(task_id(&id)?, &body.worker_id)?;
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    worker_id: String,
    #[serde(default)]
    output: Value,
    #[serde(default)]
    scores: Option<Map<String, Value>>,
}

pub async fn complete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CompleteBody>,
) -> ApiResult<Response> {
    authorise(&p, &body.worker_id)?;
    if let Some(scores) = &body.scores {
        if let Some((name, v)) = scores.iter().find(|(_, v)| !v.is_number()) {
            return Err(ApiError::unprocessable(format!(
                "scores must all be numbers; `{name}` is {v}"
            )));
        }
    }
    // Answered once the outcome is durable in the plan's log, so an acknowledged result
    // survives a crash.
    queue(&s)?
        .complete_recorded(task_id(&id)?, &body.worker_id, body.output, body.scores)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    worker_id: String,
    error: String,
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

pub async fn fail(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FailBody>,
) -> ApiResult<Response> {
    authorise(&p, &body.worker_id)?;
    if body.error.trim().is_empty() || body.error.len() > MAX_ERROR_BYTES {
        return Err(ApiError::unprocessable(format!(
            "error must be a non-empty message of at most {MAX_ERROR_BYTES} bytes"
        )));
    }
    queue(&s)?
        .fail_recorded(task_id(&id)?, &body.worker_id, body.error, body.retryable)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
