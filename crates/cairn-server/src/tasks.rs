//! `/v1/tasks…`: remote workers. Long-poll for a task, heartbeat the lease,
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
/// The most plan ids one poll may restrict itself to.
pub const MAX_PLAN_IDS: usize = 1_000;
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
            RemoteError::NotRecorded { .. } | RemoteError::Unavailable(_) => {
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

/// The body of `POST /v1/tasks/poll`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollBody {
    /// Who asks: 1 to 128 characters, no control characters.
    #[schema(min_length = 1, max_length = 128)]
    worker_id: String,
    /// The agent types this worker runs (1 to 64, each 1 to 128 characters).
    #[schema(min_items = 1, max_items = 64)]
    agent_types: Vec<String>,
    /// How long to wait for a task; 0 (the default) answers at once; more than 60 000 waits
    /// 60 000.
    #[serde(default)]
    #[schema(minimum = 0)]
    wait_ms: u64,
    /// Only tasks of these plans (1 to 1 000 plan ids); absent: of any plan. A worker that
    /// serves one plan's steps (the Python client's controller) names it.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 1000)]
    plan_ids: Option<Vec<String>>,
}

/// Long-polls for a task of one of `agent_types`.
#[utoipa::path(post, operation_id = "poll_task", path = "/v1/tasks/poll", tag = "tasks",
    request_body = PollBody,
    responses(
        (status = 200, description = "A task to run", body = cairn_engine::remote::TaskLease),
        (status = 204, description = "No task within `wait_ms`"),
        (status = 404, description = "This server hands out no tasks", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
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
    if let Some(ids) = &body.plan_ids {
        if ids.is_empty() || ids.len() > MAX_PLAN_IDS {
            return Err(ApiError::unprocessable(format!(
                "plan_ids must list 1 to {MAX_PLAN_IDS} plan ids (leave it out for any plan)"
            )));
        }
        for id in ids {
            check_id("each plan id", id)?;
        }
    }
    let q = queue(&s)?;
    let until = tokio::time::Instant::now() + Duration::from_millis(body.wait_ms.min(MAX_WAIT_MS));
    loop {
        let wait = until.saturating_duration_since(tokio::time::Instant::now());
        let plans = body.plan_ids.as_deref();
        let Some(lease) = q
            .poll_plans(&body.worker_id, &body.agent_types, plans, wait)
            .await
        else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        // The step is `queued` until its claim is in the plan's log; only then does the worker
        // get the task.
        let t = &lease.task;
        match s
            .engine
            .claim(&t.plan_id, &t.step_id, t.attempt, &body.worker_id, &p.user)
            .await
        {
            Ok(_) => return Ok(Json(lease).into_response()),
            // The plan moved on (the attempt was stopped, completed by hand, the plan deleted):
            // this task is not wanted (dropped, not put back to be handed out again); look for
            // another.
            Err(e) if e.is_client_error() => q.refused(&lease.task_id, &e).await,
            Err(e) => {
                q.unclaim(&lease.task_id).await;
                return Err(e.into());
            }
        }
    }
}

/// The workers seen polling, with the agent types they asked for and the tasks they hold;
/// and the tasks waiting for a worker, counted by agent type.
#[utoipa::path(get, operation_id = "list_workers", path = "/v1/workers", tag = "tasks",
    responses(
        (status = 200, description = "Every worker seen since the server started, and the tasks no worker has claimed yet by agent type", body = crate::openapi::WorkerList)),
    security(("bearer" = [])))]
pub async fn workers(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<crate::openapi::WorkerList>> {
    p.require(Role::Viewer)?;
    let (items, queued) = match &s.remote {
        Some(q) => (q.workers().await, q.queued_by_type().await),
        None => (Vec::new(), Vec::new()),
    };
    let queued = queued
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(agent_type, tasks)| crate::openapi::QueuedTasks { agent_type, tasks })
        .collect();
    Ok(Json(crate::openapi::WorkerList {
        items,
        next_cursor: None,
        queued,
    }))
}

/// The warnings for a plan about to run on this server: agent types that have no local
/// executor and that no worker has polled for (a typo, or a worker not started yet).
pub(crate) async fn unserved_agent_types(
    s: &AppState,
    view: &cairn_core::view::PlanView,
) -> Vec<String> {
    let mut types: Vec<&str> = view
        .steps
        .iter()
        .filter(|st| !st.status.has_ended())
        .map(|st| st.agent_type.as_str())
        .filter(|t| s.engine.registry().get(t).is_none())
        .collect();
    types.sort_unstable();
    types.dedup();
    // The worker list is a read of the store: only asked for when some type has no executor.
    if let (Some(q), false) = (&s.remote, types.is_empty()) {
        let workers = q.workers().await;
        types.retain(|t| !workers.iter().any(|w| w.agent_types.iter().any(|a| a == t)));
    }
    types
        .into_iter()
        .map(|t| match s.remote {
            Some(_) => format!(
                "no executor and no worker for agent type {t}: its steps wait until a worker polls for it (cairn worker --agent-type {t} …)"
            ),
            None => format!("no executor for agent type {t}: its steps will fail"),
        })
        .collect()
}

/// The body of `POST /v1/tasks/{task_id}/heartbeat`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The worker holding the task.
    #[schema(min_length = 1, max_length = 128)]
    worker_id: String,
}

/// Extends the lease of a task being worked on; answers whether the plan still wants it.
#[utoipa::path(post, operation_id = "heartbeat_task", path = "/v1/tasks/{task_id}/heartbeat", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    request_body = HeartbeatBody,
    responses(
        (status = 200, description = "Lease extended", body = cairn_engine::remote::HeartbeatAnswer),
        (status = 404, description = "No such task (never handed out, reported, stopped or expired)", body = crate::openapi::ErrorBody),
        (status = 409, description = "Another worker holds the task (`not_lease_holder`)", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> ApiResult<Response> {
    authorise(&p, &body.worker_id)?;
    let answer = queue(&s)?.heartbeat(task_id(&id)?, &body.worker_id).await?;
    Ok(Json(answer).into_response())
}

/// The body of `POST /v1/tasks/{task_id}/complete`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// The worker holding the task.
    #[schema(min_length = 1, max_length = 128)]
    worker_id: String,
    /// The step's output (any JSON; null when absent).
    #[serde(default)]
    #[schema(value_type = Object)]
    output: Value,
    /// Scores for the step's quality gate: name → number.
    #[serde(default)]
    #[schema(value_type = Option<HashMap<String, f64>>)]
    scores: Option<Map<String, Value>>,
}

/// Reports a task's result.
#[utoipa::path(post, operation_id = "complete_task", path = "/v1/tasks/{task_id}/complete", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    request_body = CompleteBody,
    responses(
        (status = 204, description = "Result recorded"),
        (status = 404, description = "No such task", body = crate::openapi::ErrorBody),
        (status = 409, description = "Another worker holds the task (`not_lease_holder`)", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
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

/// The body of `POST /v1/tasks/{task_id}/fail`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The worker holding the task.
    #[schema(min_length = 1, max_length = 128)]
    worker_id: String,
    /// What went wrong: a non-empty sentence of at most 64 KiB.
    #[schema(min_length = 1, max_length = 65536)]
    error: String,
    /// Whether the step's retry policy may try again (default true).
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

/// Reports a task's failure.
#[utoipa::path(post, operation_id = "fail_task", path = "/v1/tasks/{task_id}/fail", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    request_body = FailBody,
    responses(
        (status = 204, description = "Failure recorded"),
        (status = 404, description = "No such task", body = crate::openapi::ErrorBody),
        (status = 409, description = "Another worker holds the task (`not_lease_holder`)", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
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
