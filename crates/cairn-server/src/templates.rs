//! `/v1/templates…`: push versions of a named template, read them, make plans of them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::template::{Pushed, TemplateDetail, TemplateDiff, TemplateVersion};
use cairn_core::view::{Page, PlanView};
use cairn_engine::Instantiate;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::history::DiffQuery;
use crate::plans::limit_of;
use crate::AppState;

/// Refuses names no template could have before touching the store.
fn template_name(name: &str) -> ApiResult<&str> {
    if cairn_core::plan::valid_id(name) {
        Ok(name)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "template_not_found",
            format!(
                "template {:?} not found",
                name.chars().take(140).collect::<String>()
            ),
        ))
    }
}

#[utoipa::path(
    post,
    operation_id = "push_template",
    path = "/v1/templates",
    tag = "templates",
    summary = "Push a version of a template",
    request_body(content = cairn_core::Template, description = "`{name, description?, parameters, plan}`: `parameters` is a JSON Schema of the inputs, `plan` a plan document without plan_id"),
    responses(
        (status = 201, description = "A new version", body = cairn_core::template::Pushed),
        (status = 200, description = "The same content as the latest version: no new version", body = cairn_core::template::Pushed),
        (status = 400, description = "Malformed JSON", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid template; `error.faults` lists the faults", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn push(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let pushed: Pushed = s.engine.push_template(body, &p.user).await?;
    let status = if pushed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(pushed)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    operation_id = "list_templates",
    path = "/v1/templates",
    tag = "templates",
    summary = "The latest version of each template, by name",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = crate::openapi::TemplateList),
        (status = 400, description = "Bad limit or cursor", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<TemplateVersion>>> {
    p.require(Role::Viewer)?;
    let limit = limit_of(q.limit, 50)?;
    Ok(Json(s.engine.templates(limit, q.cursor.as_deref()).await?))
}

#[utoipa::path(
    get,
    operation_id = "get_template",
    path = "/v1/templates/{name}",
    tag = "templates",
    summary = "A template's latest version and its versions",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "The latest version and the version list", body = cairn_core::template::TemplateDetail),
        (status = 404, description = "No such template", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<TemplateDetail>> {
    p.require(Role::Viewer)?;
    Ok(Json(s.engine.template(template_name(&name)?).await?))
}

#[utoipa::path(
    delete,
    operation_id = "delete_template",
    path = "/v1/templates/{name}",
    tag = "templates",
    summary = "Delete a template (admin): no new plans are made of it; every version is kept",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such template (or deleted already)", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    p.require(Role::Admin)?;
    s.engine.delete_template(template_name(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    operation_id = "get_template_version",
    path = "/v1/templates/{name}/versions/{version}",
    tag = "templates",
    summary = "One version of a template",
    params(
        ("name" = String, Path, description = "Template name"),
        ("version" = u64, Path, description = "Version, from 1")
    ),
    responses(
        (status = 200, description = "The version", body = cairn_core::template::TemplateVersion),
        (status = 404, description = "No such template or version", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn version(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<TemplateVersion>> {
    p.require(Role::Viewer)?;
    let name = template_name(&name)?;
    let version: u64 = version.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "template_version_not_found",
            format!(
                "template {name} has no version {:?} (versions are 1, 2, …)",
                version.chars().take(40).collect::<String>()
            ),
        )
    })?;
    Ok(Json(s.engine.template_version(name, Some(version)).await?))
}

#[utoipa::path(
    get,
    operation_id = "diff_template_versions",
    path = "/v1/templates/{name}/diff",
    tag = "templates",
    summary = "The structural diff of a template between two versions: steps added, removed, moved and changed, plan fields and parameters",
    params(("name" = String, Path, description = "Template name"), DiffQuery),
    responses(
        (status = 200, description = "The diff", body = cairn_core::template::TemplateDiff),
        (status = 404, description = "No such template or version", body = crate::openapi::ErrorBody),
        (status = 422, description = "`from` or `to` is not a version number", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn diff(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<DiffQuery>,
) -> ApiResult<Json<TemplateDiff>> {
    p.require(Role::Viewer)?;
    let name = template_name(&name)?;
    let (from, to) = q.versions()?;
    Ok(Json(s.engine.template_diff(name, from, to).await?))
}

#[utoipa::path(
    post,
    operation_id = "instantiate_template",
    path = "/v1/templates/{name}/instantiate",
    tag = "templates",
    summary = "Make a plan of a template (and start it unless `start` is false)",
    params(("name" = String, Path, description = "Template name")),
    request_body(content = cairn_engine::Instantiate, description = "The inputs, and optionally the version, the plan id and whether to start"),
    responses(
        (status = 201, description = "The new plan", body = cairn_core::view::PlanView),
        (status = 400, description = "Malformed JSON", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such template or version, or the template was deleted", body = crate::openapi::ErrorBody),
        (status = 409, description = "A plan with this id exists", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid inputs; `error.faults` names each failing input", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn instantiate(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Instantiate>,
) -> ApiResult<Response> {
    p.require(Role::Operator)?;
    let state = s
        .engine
        .instantiate(template_name(&name)?, body, &p.user)
        .await?;
    let mut view = PlanView::of(&state);
    view.warnings = crate::tasks::unserved_agent_types(&s, &view).await;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}
