//! `/v1/plans/{id}/versions…` and `/v1/plans/{id}/diff`: a plan's definition history and
//! structural diffs between its versions, read from its log.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use cairn_core::versions::{PlanDiff, VersionList, VersionedDefinition};
use serde::Deserialize;

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::plans::plan_id;
use crate::AppState;

/// A version number read from a path or query: a positive integer, or a 422 naming `what`.
pub(crate) fn version_of(what: &str, raw: &str) -> ApiResult<u64> {
    match raw.trim().parse::<u64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(ApiError::unprocessable(format!(
            "{what} must be a version number (1, 2, …), not {:?}",
            raw.chars().take(40).collect::<String>()
        ))),
    }
}

#[utoipa::path(
    get,
    operation_id = "list_plan_versions",
    path = "/v1/plans/{id}/versions",
    tag = "history",
    summary = "Every version of a plan's definition with its cause, oldest first",
    params(("id" = String, Path, description = "Plan id")),
    responses(
        (status = 200, description = "The versions", body = cairn_core::versions::VersionList),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn versions(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<VersionList>> {
    p.require(Role::Viewer)?;
    let versions = s.engine.plan_versions(plan_id(&id)?).await?;
    Ok(Json(VersionList {
        plan_id: id,
        versions,
    }))
}

#[utoipa::path(
    get,
    operation_id = "get_plan_version",
    path = "/v1/plans/{id}/versions/{v}",
    tag = "history",
    summary = "A version of a plan's definition: its cause and the definition then",
    params(("id" = String, Path, description = "Plan id"), ("v" = u64, Path, description = "Version, from 1")),
    responses(
        (status = 200, description = "The version and its definition", body = cairn_core::versions::VersionedDefinition),
        (status = 404, description = "No such plan or version", body = crate::openapi::ErrorBody),
        (status = 422, description = "The version is not a number", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn version(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, v)): Path<(String, String)>,
) -> ApiResult<Json<VersionedDefinition>> {
    p.require(Role::Viewer)?;
    let id = plan_id(&id)?;
    let v = version_of("the version", &v)?;
    Ok(Json(s.engine.plan_version(id, v).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The version to diff from (default: the one before `to`).
    #[param(value_type = Option<u64>)]
    from: Option<String>,
    /// The version to diff to (default: the latest).
    #[param(value_type = Option<u64>)]
    to: Option<String>,
}

impl DiffQuery {
    /// `from` and `to` as version numbers, if given (422 naming the one that is not).
    pub(crate) fn versions(&self) -> ApiResult<(Option<u64>, Option<u64>)> {
        let parse =
            |what, raw: &Option<String>| raw.as_deref().map(|v| version_of(what, v)).transpose();
        Ok((parse("from", &self.from)?, parse("to", &self.to)?))
    }
}

#[utoipa::path(
    get,
    operation_id = "diff_plan_versions",
    path = "/v1/plans/{id}/diff",
    tag = "history",
    summary = "The structural diff of a plan's definition between two versions",
    params(("id" = String, Path, description = "Plan id"), DiffQuery),
    responses(
        (status = 200, description = "The diff", body = cairn_core::versions::PlanDiff),
        (status = 404, description = "No such plan or version", body = crate::openapi::ErrorBody),
        (status = 422, description = "`from` or `to` is not a version number", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn diff(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DiffQuery>,
) -> ApiResult<Json<PlanDiff>> {
    p.require(Role::Viewer)?;
    let id = plan_id(&id)?;
    let (from, to) = q.versions()?;
    Ok(Json(s.engine.plan_diff(id, from, to).await?))
}
