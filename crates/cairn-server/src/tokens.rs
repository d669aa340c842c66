//! `/v1/tokens`: admins create, list and revoke API tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{create_expiring_token, valid_user, Principal, Role, TokenInfo};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CreateTokenBody)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// 1 to 128 printable characters without spaces.
    user: String,
    /// viewer, operator, admin or worker.
    role: String,
    /// Seconds until the token stops being accepted (1 to 10 years' worth); absent: never.
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The longest `expires_in` accepted: ten years.
const MAX_EXPIRES_IN: u64 = 10 * 366 * 86_400;

fn store_error(e: cairn_store::StoreError) -> ApiError {
    cairn_engine::EngineError::from(e).into()
}

#[utoipa::path(
    post,
    operation_id = "create_token",
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Create a token (admin); the token is shown only here",
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new token", body = crate::auth::NewToken),
        (status = 400, description = "Malformed JSON or query", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid body", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(b): ApiJson<CreateBody>,
) -> ApiResult<Response> {
    p.require(Role::Admin)?;
    if !valid_user(&b.user) {
        return Err(ApiError::unprocessable(
            "user must be 1 to 128 printable characters without spaces",
        ));
    }
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::unprocessable(format!(
            "unknown role {:?}; one of viewer, operator, admin, worker",
            b.role
        ))
    })?;
    let expires_at = match b.expires_in {
        None => None,
        Some(secs @ 1..=MAX_EXPIRES_IN) => {
            Some(cairn_engine::now_micros() + (secs as i64) * 1_000_000)
        }
        Some(_) => {
            return Err(ApiError::unprocessable(format!(
                "expires_in must be between 1 and {MAX_EXPIRES_IN} seconds"
            )))
        }
    };
    let t = create_expiring_token(&**s.engine.store(), &b.user, role, expires_at)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

#[utoipa::path(
    get,
    operation_id = "list_tokens",
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Every token, revoked ones included (admin)",
    responses(
        (status = 200, description = "Tokens, without their secrets", body = crate::openapi::TokenList)
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    p.require(Role::Admin)?;
    let items: Vec<TokenInfo> = s
        .engine
        .store()
        .list_tokens()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(TokenInfo::from)
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[utoipa::path(
    delete,
    operation_id = "revoke_token",
    path = "/v1/tokens/{id}",
    tag = "tokens",
    summary = "Revoke a token (admin)",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No live token with this id", body = crate::openapi::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn revoke(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    p.require(Role::Admin)?;
    let found = s
        .engine
        .store()
        .revoke_token(&id, cairn_engine::now_micros())
        .await
        .map_err(store_error)?;
    s.auth.forget_all();
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "token_not_found",
            format!(
                "no live token with id {:?}",
                id.chars().take(140).collect::<String>()
            ),
        ))
    }
}

/// Who the caller is: the user and role of the token sent (under `--no-auth`, the open user as
/// admin). The dashboard asks this to sign in and to enable the controls the role may use.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's user.
    user: String,
    /// viewer, operator, admin or worker.
    role: Role,
}

#[utoipa::path(
    get,
    operation_id = "whoami",
    path = "/v1/whoami",
    tag = "tokens",
    summary = "The caller's user and role",
    responses((status = 200, description = "The caller", body = WhoAmI)),
    security(("bearer" = []))
)]
pub async fn whoami(Extension(p): Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: p.user,
        role: p.role,
    })
}
