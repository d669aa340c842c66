//! `/v1/reviews`: the review inbox across plans. Reviews are decided through the plans'
//! interventions (`approve_step`, `reject_step` at `POST /v1/plans/{id}/interventions`).

use axum::extract::State;
use axum::{Extension, Json};
use cairn_core::view::Page;
use cairn_core::{Review, ReviewState};
use cairn_engine::ReviewFilter;
use serde::Deserialize;

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::plans::{cursor_error, limit_of, plan_id};
use crate::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuery {
    /// Only `open` or only `closed` reviews (default: both).
    state: Option<String>,
    /// Only the reviews of this plan.
    plan_id: Option<String>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    operation_id = "list_reviews",
    path = "/v1/reviews",
    tag = "reviews",
    summary = "The review inbox: reviews across plans, oldest opened first",
    description = "Each review names its plan, step and attempt, the scores and the failed \
        criteria (score against bound) that held it, the output waiting on it, the votes so far, \
        its deadline and state. Decide one with an `approve_step` or `reject_step` intervention \
        on its plan.",
    params(ReviewQuery),
    responses(
        (status = 200, description = "One page", body = crate::openapi::ReviewList),
        (status = 400, description = "Unknown state, bad limit or cursor", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ReviewQuery>,
) -> ApiResult<Json<Page<Review>>> {
    p.require(Role::Viewer)?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(st) => Some(ReviewState::parse(st).ok_or_else(|| {
            ApiError::bad_request(format!("unknown review state {st:?}; one of open, closed"))
        })?),
    };
    let limit = limit_of(q.limit, 50)?;
    let plan_id = match q.plan_id.as_deref() {
        None | Some("") => None,
        // An id no plan could have lists nothing, like an unknown plan.
        Some(id) => match plan_id(id) {
            Ok(id) => Some(id.to_owned()),
            Err(_) => {
                return Ok(Json(Page {
                    items: Vec::new(),
                    next_cursor: None,
                }))
            }
        },
    };
    let filter = ReviewFilter { state, plan_id };
    let page = s
        .engine
        .reviews(&filter, limit, q.cursor.as_deref())
        .await
        .map_err(cursor_error)?;
    Ok(Json(page))
}
