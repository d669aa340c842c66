//! `/v1/plans…`: registration, state, control, interventions, checkpoints, snapshots, events.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::view::PlanView;
use cairn_core::{InterventionRequest, PauseMode, Plan, PlanStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, OptionalJson};
use crate::AppState;

/// Refuses ids no plan could have before touching the store.
fn plan_id(id: &str) -> ApiResult<&str> {
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

fn reason_ok(reason: &Option<String>) -> ApiResult<()> {
    match reason {
        Some(r) if r.len() > 4096 => {
            Err(ApiError::unprocessable("reason is longer than 4096 bytes"))
        }
        _ => Ok(()),
    }
}

pub async fn register(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let plan = Plan::from_value(body)?;
    let state = s.engine.register(plan, &p.user).await?;
    Ok((StatusCode::CREATED, Json(PlanView::of(&state))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    p.require(Role::Viewer)?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(st) => Some(PlanStatus::parse(st).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown state {st:?}; one of idle, running, paused, completed, failed, cancelled"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let page = s
        .engine
        .list(state, limit, q.cursor.as_deref())
        .await
        .map_err(|e| match e {
            cairn_engine::EngineError::Store(cairn_store::StoreError::BadCursor(c)) => {
                ApiError::bad_request(format!("invalid cursor {c:?}"))
            }
            other => other.into(),
        })?;
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|r| {
            json!({"plan_id": r.plan_id, "state": r.state, "created_at": r.created_at,
                   "updated_at": r.updated_at, "last_seq": r.last_seq})
        })
        .collect();
    Ok(Json(
        json!({"items": items, "next_cursor": page.next_cursor}),
    ))
}

pub async fn get(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Viewer)?;
    Ok(Json(s.engine.view(plan_id(&id)?).await?))
}

pub async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    p.require(Role::Admin)?;
    s.engine.delete(plan_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    reason: Option<String>,
    #[serde(default)]
    mode: PauseMode,
    /// Microseconds since the Unix epoch.
    resume_at: Option<i64>,
}

pub async fn start(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<ReasonBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    reason_ok(&b.reason)?;
    let st = s.engine.start(plan_id(&id)?, &p.user, b.reason).await?;
    Ok(Json(PlanView::of(&st)))
}

pub async fn pause(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<PauseBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    reason_ok(&b.reason)?;
    let st = s
        .engine
        .pause(plan_id(&id)?, b.mode, b.resume_at, &p.user, b.reason)
        .await?;
    Ok(Json(PlanView::of(&st)))
}

pub async fn resume(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<ReasonBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    reason_ok(&b.reason)?;
    let st = s.engine.resume(plan_id(&id)?, &p.user, b.reason).await?;
    Ok(Json(PlanView::of(&st)))
}

pub async fn cancel(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<ReasonBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    reason_ok(&b.reason)?;
    let st = s.engine.cancel(plan_id(&id)?, &p.user, b.reason).await?;
    Ok(Json(PlanView::of(&st)))
}

pub async fn intervene(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let id = plan_id(&id)?;
    let request = InterventionRequest::from_body(body)?;
    let dry_run = request.dry_run;
    let record = s.engine.intervene(id, request, &p.user).await?;
    let status = if dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)).into_response())
}

pub async fn interventions(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    p.require(Role::Viewer)?;
    let items = s.engine.interventions(plan_id(&id)?).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

pub async fn checkpoints(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    p.require(Role::Viewer)?;
    let items = s.engine.checkpoints(plan_id(&id)?).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    label: Option<String>,
    reason: Option<String>,
}

pub async fn create_checkpoint(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<CheckpointBody>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    reason_ok(&b.reason)?;
    let c = s
        .engine
        .create_checkpoint(plan_id(&id)?, b.label, &p.user, b.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

pub async fn checkpoint(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, cid)): Path<(String, String)>,
) -> ApiResult<Json<cairn_core::view::CheckpointView>> {
    p.require(Role::Viewer)?;
    Ok(Json(s.engine.checkpoint(plan_id(&id)?, &cid).await?))
}

pub async fn restore(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, cid)): Path<(String, String)>,
    OptionalJson(b): OptionalJson<ReasonBody>,
) -> ApiResult<Json<PlanView>> {
    p.require(Role::Operator)?;
    reason_ok(&b.reason)?;
    let st = s
        .engine
        .restore(plan_id(&id)?, &cid, &p.user, b.reason)
        .await?;
    Ok(Json(PlanView::of(&st)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ForkBody {
    new_plan_id: Option<String>,
    reason: Option<String>,
}

pub async fn fork(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, cid)): Path<(String, String)>,
    OptionalJson(b): OptionalJson<ForkBody>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    reason_ok(&b.reason)?;
    let st = s
        .engine
        .fork(plan_id(&id)?, &cid, b.new_plan_id, &p.user, b.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(PlanView::of(&st))).into_response())
}

pub async fn snapshot(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<cairn_engine::Snapshot>> {
    p.require(Role::Viewer)?;
    Ok(Json(s.engine.snapshot(plan_id(&id)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn events(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<Value>> {
    p.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let events = s
        .engine
        .events(plan_id(&id)?, q.after.unwrap_or(0), limit)
        .await?;
    let next = if events.len() == limit {
        events.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(Json(json!({"items": events, "next_cursor": next})))
}
