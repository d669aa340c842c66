//! `/v1/plans…`: registration, state, control, interventions, checkpoints, snapshots, events.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::view::{CheckpointSummary, Page, PlanSummary, PlanView};
use cairn_core::{Event, Intervention, InterventionRequest, PauseMode, Plan, PlanStatus};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, OptionalJson};
use crate::AppState;

/// Refuses ids no plan could have before touching the store.
pub(crate) fn plan_id(id: &str) -> ApiResult<&str> {
    if cairn_core::plan::valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "plan_not_found",
            format!(
                "plan {:?} not found",
                id.chars().take(140).collect::<String>()
            ),
        ))
    }
}

/// A cursor the store or engine could not read answers 400, like any other bad query.
pub(crate) fn cursor_error(e: cairn_engine::EngineError) -> ApiError {
    match e {
        cairn_engine::EngineError::Store(cairn_store::StoreError::BadCursor(c)) => {
            ApiError::bad_request(format!(
                "invalid cursor {:?}",
                c.chars().take(140).collect::<String>()
            ))
        }
        other => other.into(),
    }
}

/// `limit` of a list: 1 to 1000, `default` when absent.
pub(crate) fn limit_of(limit: Option<usize>, default: usize) -> ApiResult<usize> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    Ok(limit)
}

#[utoipa::path(
    post,
    operation_id = "register_plan",
    path = "/v1/plans",
    tag = "plans",
    summary = "Register a plan",
    request_body(content = cairn_core::Plan, description = "A plan definition; YAML is accepted by the CLI, JSON here"),
    responses(
        (status = 201, description = "Registered; the plan's state", body = cairn_core::view::PlanView),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 409, description = "A plan with this id exists", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid plan; `error.faults` lists the faults", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn register(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let plan = Plan::from_value(body)?;
    let state = s.engine.register(plan, &p.user).await?;
    let mut view = PlanView::of(&state);
    view.warnings = crate::tasks::unserved_agent_types(&s, &view).await;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only plans in this state: idle, running, paused, completed, failed, cancelled.
    state: Option<String>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only plans whose id contains this text (case-sensitive).
    id_contains: Option<String>,
}

#[utoipa::path(
    get,
    operation_id = "list_plans",
    path = "/v1/plans",
    tag = "plans",
    summary = "List plans, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = crate::openapi::PlanList),
        (status = 400, description = "Unknown state, bad limit or cursor", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<PlanSummary>>> {
    p.require(Role::Viewer)?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(st) => Some(PlanStatus::parse(st).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown state {st:?}; one of {}",
                PlanStatus::names()
            ))
        })?),
    };
    let limit = limit_of(q.limit, 50)?;
    let part = q.id_contains.as_deref().filter(|p| !p.is_empty());
    if part.is_some_and(|p| p.len() > 128) {
        return Err(ApiError::bad_request(
            "id_contains is longer than any plan id (128 bytes at most)",
        ));
    }
    let page = s
        .engine
        .search(state, part, limit, q.cursor.as_deref())
        .await
        .map_err(cursor_error)?;
    Ok(Json(page))
}

#[utoipa::path(
    get,
    operation_id = "get_plan",
    path = "/v1/plans/{id}",
    tag = "plans",
    summary = "A plan's state",
    params(("id" = String, Path, description = "Plan id")),
    responses(
        (status = 200, description = "The plan's state", body = cairn_core::view::PlanView),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Viewer)?;
    Ok(Json(s.engine.view(plan_id(&id)?).await?))
}

#[utoipa::path(
    delete,
    operation_id = "delete_plan",
    path = "/v1/plans/{id}",
    tag = "plans",
    summary = "Delete a plan that is not running (admin)",
    params(("id" = String, Path, description = "Plan id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "The plan is running", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    p.require(Role::Admin)?;
    s.engine.delete(plan_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    reason: Option<String>,
    #[serde(default)]
    mode: PauseMode,
    /// When to resume by itself: an RFC 3339 time (`2026-12-01T21:14:29Z`); an integer of
    /// microseconds since the Unix epoch is also accepted.
    resume_at: Option<cairn_core::Timestamp>,
}

#[utoipa::path(
    post,
    operation_id = "start_plan",
    path = "/v1/plans/{id}/start",
    tag = "plans",
    summary = "Start an idle plan",
    params(("id" = String, Path, description = "Plan id")),
    request_body(content = Option<ReasonBody>, description = "Optional"),
    responses(
        (status = 200, description = "The plan's new state", body = cairn_core::view::PlanView),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "Refused in the plan's current state", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn start(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<ReasonBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    let st = s.engine.start(plan_id(&id)?, &p.user, b.reason).await?;
    let mut view = PlanView::of(&st);
    view.warnings = crate::tasks::unserved_agent_types(&s, &view).await;
    Ok(Json(view))
}

#[utoipa::path(
    post,
    operation_id = "pause_plan",
    path = "/v1/plans/{id}/pause",
    tag = "plans",
    summary = "Pause a plan",
    params(("id" = String, Path, description = "Plan id")),
    request_body(content = Option<PauseBody>, description = "Optional"),
    responses(
        (status = 200, description = "The plan's new state", body = cairn_core::view::PlanView),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "Refused in the plan's current state", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn pause(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<PauseBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    let st = s
        .engine
        .pause(plan_id(&id)?, b.mode, b.resume_at, &p.user, b.reason)
        .await?;
    Ok(Json(PlanView::of(&st)))
}

#[utoipa::path(
    post,
    operation_id = "resume_plan",
    path = "/v1/plans/{id}/resume",
    tag = "plans",
    summary = "Resume a paused plan",
    params(("id" = String, Path, description = "Plan id")),
    request_body(content = Option<ReasonBody>, description = "Optional"),
    responses(
        (status = 200, description = "The plan's new state", body = cairn_core::view::PlanView),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "Refused in the plan's current state", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn resume(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<ReasonBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    let st = s.engine.resume(plan_id(&id)?, &p.user, b.reason).await?;
    Ok(Json(PlanView::of(&st)))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    reason: Option<String>,
    /// Roll back what the plan did before it ends cancelled: steps still running are told to
    /// stop, then the compensations run one at a time, newest start first.
    #[serde(default)]
    rollback: bool,
    /// With `rollback`: answer the compensations it would run, in order, and change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// What `cancel` answers: the plan's new state, or with `{"rollback": true}` the compensations
/// the rollback runs (or for a dry run, would run) in order, with the plan's state.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CancelAnswer {
    Plan(PlanView),
    Rollback(cairn_core::view::RollbackAnswer),
}

#[utoipa::path(
    post,
    operation_id = "cancel_plan",
    path = "/v1/plans/{id}/cancel",
    tag = "plans",
    summary = "Cancel a plan, rolling back what it did with `rollback: true`",
    params(("id" = String, Path, description = "Plan id")),
    request_body(content = Option<CancelBody>, description = "Optional"),
    responses(
        (status = 200, description = "The plan's new state (a `PlanView`), or with `rollback: true` a `RollbackAnswer`: the compensations in order (for a dry run, those it would run, nothing changed) and the plan's state", body = CancelAnswer),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "Refused in the plan's current state", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body (`dry_run` without `rollback`)", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<CancelBody>,
) -> ApiResult<Json<CancelAnswer>> {
    p.require(Role::Operator)?;
    let id = plan_id(&id)?;
    if b.dry_run && !b.rollback {
        return Err(ApiError::unprocessable(
            "dry_run applies to a cancel with rollback: true only",
        ));
    }
    if !b.rollback {
        let st = s.engine.cancel(id, &p.user, b.reason).await?;
        return Ok(Json(CancelAnswer::Plan(PlanView::of(&st))));
    }
    let (st, order) = s
        .engine
        .cancel_and_rollback(id, &p.user, b.dry_run, b.reason)
        .await?;
    Ok(Json(CancelAnswer::Rollback(
        cairn_core::view::RollbackAnswer::of(&st, order, b.dry_run),
    )))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    reason: Option<String>,
    /// Answer the compensations it would run, in order, and change nothing.
    #[serde(default)]
    dry_run: bool,
}

#[utoipa::path(
    post,
    operation_id = "rollback_plan",
    path = "/v1/plans/{id}/rollback",
    tag = "plans",
    summary = "Roll back a failed or cancelled plan, or continue a rollback that failed",
    description = "Runs the compensations of the steps the plan ran (completed, or with an unknown outcome), one at a time, newest start first; the plan is `running` meanwhile and then takes its final state again. A rollback that stopped on a failed compensation continues from that compensation. A plan rolled back once is refused (409).",
    params(("id" = String, Path, description = "Plan id")),
    request_body(content = Option<RollbackBody>, description = "Optional"),
    responses(
        (status = 200, description = "Started (or for a dry run, what it would run): the compensations in order and the plan's state", body = cairn_core::view::RollbackAnswer),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "The plan is not failed or cancelled, or has been rolled back already", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<RollbackBody>,
) -> ApiResult<Json<cairn_core::view::RollbackAnswer>> {
    p.require(Role::Operator)?;
    let (st, order) = s
        .engine
        .rollback(plan_id(&id)?, &p.user, b.dry_run, b.reason)
        .await?;
    Ok(Json(cairn_core::view::RollbackAnswer::of(
        &st, order, b.dry_run,
    )))
}

#[utoipa::path(
    post,
    operation_id = "create_intervention",
    path = "/v1/plans/{id}/interventions",
    tag = "interventions",
    summary = "Change a plan while it runs",
    params(("id" = String, Path, description = "Plan id")),
    request_body = crate::openapi::InterventionBody,
    responses(
        (status = 201, description = "Applied; the intervention record", body = cairn_core::Intervention),
        (status = 200, description = "Dry run; the record it would make", body = cairn_core::Intervention),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "Conflict (version moved, step not in a state allowing it); `error.intervention` holds the failed record", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid intervention; `error.intervention` holds the failed record", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn intervene(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let id = plan_id(&id)?;
    // A body that is not an intervention is a bad request, not a bad plan.
    let request = InterventionRequest::from_body(body).map_err(|invalid| ApiError {
        code: "invalid_request",
        ..ApiError::from(invalid)
    })?;
    let dry_run = request.dry_run;
    let record = s.engine.intervene(id, request, &p.user).await?;
    let status = if dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)).into_response())
}

#[utoipa::path(
    get,
    operation_id = "list_interventions",
    path = "/v1/plans/{id}/interventions",
    tag = "interventions",
    summary = "A plan's interventions, oldest first",
    params(("id" = String, Path, description = "Plan id"), PageQuery),
    responses(
        (status = 200, description = "One page", body = crate::openapi::InterventionList),
        (status = 400, description = "Bad limit, cursor or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn interventions(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<Intervention>>> {
    p.require(Role::Viewer)?;
    let limit = limit_of(q.limit, 100)?;
    let page = s
        .engine
        .interventions_page(plan_id(&id)?, q.cursor.as_deref(), limit)
        .await
        .map_err(cursor_error)?;
    Ok(Json(page))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    operation_id = "list_checkpoints",
    path = "/v1/plans/{id}/checkpoints",
    tag = "checkpoints",
    summary = "A plan's checkpoints, oldest first",
    params(("id" = String, Path, description = "Plan id"), PageQuery),
    responses(
        (status = 200, description = "One page", body = crate::openapi::CheckpointList),
        (status = 400, description = "Bad limit, cursor or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn checkpoints(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<CheckpointSummary>>> {
    p.require(Role::Viewer)?;
    let limit = limit_of(q.limit, 100)?;
    let page = s
        .engine
        .checkpoints_page(plan_id(&id)?, q.cursor.as_deref(), limit)
        .await
        .map_err(cursor_error)?;
    Ok(Json(page))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    label: Option<String>,
    reason: Option<String>,
}

#[utoipa::path(
    post,
    operation_id = "create_checkpoint",
    path = "/v1/plans/{id}/checkpoints",
    tag = "checkpoints",
    summary = "Create a manual checkpoint",
    params(("id" = String, Path, description = "Plan id")),
    request_body(content = Option<CheckpointBody>, description = "Optional"),
    responses(
        (status = 201, description = "The checkpoint", body = cairn_core::view::CheckpointSummary),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody),
        (status = 409, description = "Refused in the plan's current state", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn create_checkpoint(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<CheckpointBody>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let c = s
        .engine
        .create_checkpoint(plan_id(&id)?, b.label, &p.user, b.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

#[utoipa::path(
    get,
    operation_id = "get_checkpoint",
    path = "/v1/plans/{id}/checkpoints/{cid}",
    tag = "checkpoints",
    summary = "A checkpoint with the state it implies",
    params(("id" = String, Path, description = "Plan id"), ("cid" = String, Path, description = "Checkpoint id, e.g. `cp-12`")),
    responses(
        (status = 200, description = "The checkpoint", body = cairn_core::view::CheckpointView),
        (status = 404, description = "No such plan or checkpoint", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn checkpoint(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, cid)): Path<(String, String)>,
) -> ApiResult<Json<cairn_core::view::CheckpointView>> {
    p.require(Role::Viewer)?;
    Ok(Json(s.engine.checkpoint(plan_id(&id)?, &cid).await?))
}

#[utoipa::path(
    post,
    operation_id = "restore_checkpoint",
    path = "/v1/plans/{id}/checkpoints/{cid}/restore",
    tag = "checkpoints",
    summary = "Restore a plan to a checkpoint",
    params(("id" = String, Path, description = "Plan id"), ("cid" = String, Path, description = "Checkpoint id, e.g. `cp-12`")),
    request_body(content = Option<ReasonBody>, description = "Optional"),
    responses(
        (status = 200, description = "The plan's new state", body = cairn_core::view::PlanView),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan or checkpoint", body = crate::openapi::ErrorBody),
        (status = 409, description = "Refused in the plan's current state", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn restore(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, cid)): Path<(String, String)>,
    OptionalJson(b): OptionalJson<ReasonBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    let st = s
        .engine
        .restore(plan_id(&id)?, &cid, &p.user, b.reason)
        .await?;
    Ok(Json(PlanView::of(&st)))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkBody {
    new_plan_id: Option<String>,
    reason: Option<String>,
}

#[utoipa::path(
    post,
    operation_id = "fork_checkpoint",
    path = "/v1/plans/{id}/checkpoints/{cid}/fork",
    tag = "checkpoints",
    summary = "Fork a new plan from a checkpoint",
    params(("id" = String, Path, description = "Plan id"), ("cid" = String, Path, description = "Checkpoint id, e.g. `cp-12`")),
    request_body(content = Option<ForkBody>, description = "Optional"),
    responses(
        (status = 201, description = "The new plan's state", body = cairn_core::view::PlanView),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan or checkpoint", body = crate::openapi::ErrorBody),
        (status = 409, description = "The new plan id exists", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn fork(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, cid)): Path<(String, String)>,
    OptionalJson(b): OptionalJson<ForkBody>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let st = s
        .engine
        .fork(plan_id(&id)?, &cid, b.new_plan_id, &p.user, b.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(PlanView::of(&st))).into_response())
}

#[utoipa::path(
    get,
    operation_id = "get_snapshot",
    path = "/v1/plans/{id}/snapshot",
    tag = "plans",
    summary = "The plan with outputs, scores, checkpoints, interventions and definition",
    params(("id" = String, Path, description = "Plan id")),
    responses(
        (status = 200, description = "The snapshot", body = cairn_core::view::Snapshot),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn snapshot(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<cairn_core::view::Snapshot>> {
    p.require(Role::Viewer)?;
    Ok(Json(s.engine.snapshot(plan_id(&id)?).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events with `seq` greater than this (default 0).
    #[param(minimum = 0)]
    after: Option<u64>,
    /// `next_cursor` of the previous page (the same as `after`).
    cursor: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    operation_id = "list_events",
    path = "/v1/plans/{id}/events",
    tag = "events",
    summary = "A page of a plan's log, oldest first",
    params(("id" = String, Path, description = "Plan id"), EventsQuery),
    responses(
        (status = 200, description = "One page", body = crate::openapi::EventList),
        (status = 400, description = "Bad limit or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<Page<Event>>> {
    p.require(Role::Viewer)?;
    let limit = limit_of(q.limit, 100)?;
    let after = match (q.after, q.cursor.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either after or cursor, not both",
            ))
        }
        (_, Some(c)) => c.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid cursor {:?}",
                c.chars().take(140).collect::<String>()
            ))
        })?,
        (after, None) => after.unwrap_or(0),
    };
    Ok(Json(
        s.engine.events_page(plan_id(&id)?, after, limit).await?,
    ))
}

/// Refuses step ids no step could have before touching the store.
fn step_not_found(plan: &str, step: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "step_not_found",
        format!(
            "plan {plan} has no step {:?}",
            step.chars().take(140).collect::<String>()
        ),
    )
}

#[utoipa::path(
    get,
    operation_id = "get_step",
    path = "/v1/plans/{id}/steps/{step}",
    tag = "plans",
    summary = "One step in full: definition, record, idempotency key and every attempt",
    params(("id" = String, Path, description = "Plan id"), ("step" = String, Path, description = "Step id")),
    responses(
        (status = 200, description = "The step with every attempt, oldest first", body = cairn_core::history::StepDetail),
        (status = 404, description = "No such plan or step", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn step(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult<Json<cairn_core::history::StepDetail>> {
    p.require(Role::Viewer)?;
    let id = plan_id(&id)?;
    if !cairn_core::plan::valid_id(&step) {
        return Err(step_not_found(id, &step));
    }
    s.engine
        .step_detail(id, &step)
        .await?
        .map(Json)
        .ok_or_else(|| step_not_found(id, &step))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    /// 1 to 1000 steps (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page, or a step's position (0-based) to start at.
    cursor: Option<String>,
    /// Only these steps, comma-separated (at most 1000), in plan order, on one page; ids the
    /// plan does not have are left out. Not with `cursor` or `limit`.
    steps: Option<String>,
}

#[utoipa::path(
    get,
    operation_id = "list_attempts",
    path = "/v1/plans/{id}/attempts",
    tag = "plans",
    summary = "The attempt spans (start, end, outcome) of a page of steps, in plan order",
    params(("id" = String, Path, description = "Plan id"), AttemptsQuery),
    responses(
        (status = 200, description = "One page of steps, each with its attempts", body = crate::openapi::AttemptList),
        (status = 400, description = "Bad limit, cursor or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn attempts(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AttemptsQuery>,
) -> ApiResult<Json<Page<cairn_core::history::StepAttempts>>> {
    p.require(Role::Viewer)?;
    if let Some(list) = q.steps.as_deref() {
        if q.cursor.is_some() || q.limit.is_some() {
            return Err(ApiError::bad_request(
                "give either steps or cursor and limit, not both",
            ));
        }
        let ids: Vec<String> = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.len() > 1000 {
            return Err(ApiError::bad_request("steps names more than 1000 steps"));
        }
        let items = s.engine.attempt_spans_of(plan_id(&id)?, &ids).await?;
        return Ok(Json(Page {
            items,
            next_cursor: None,
        }));
    }
    let limit = limit_of(q.limit, 100)?;
    let from = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid cursor {:?}",
                c.chars().take(140).collect::<String>()
            ))
        })?,
    };
    Ok(Json(
        s.engine.attempt_spans(plan_id(&id)?, from, limit).await?,
    ))
}
