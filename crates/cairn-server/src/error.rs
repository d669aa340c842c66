//! The one place that knows HTTP status codes: every refusal becomes a 4xx with
//! `{"error": {"code": "snake_case", "message": "human sentence"}}`. Domain errors know nothing
//! of HTTP; internal details are logged, not sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_core::{Invalid, RefusalKind};
use cairn_engine::{EngineError, TemplateError};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields for the body (e.g. the refused intervention record, the plan faults; for a
    /// 429, `retry_after_ms`, which also sets the `Retry-After` header).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Whole seconds, rounded up: a client that waits that long is not refused for waiting
        // too little.
        let retry_after = self
            .details
            .as_ref()
            .and_then(|d| d.get("retry_after_ms"))
            .and_then(serde_json::Value::as_u64)
            .map(|ms| ms.div_ceil(1000).max(1));
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.details, error.as_object_mut())
        {
            for (k, v) in extra {
                obj.insert(k, v);
            }
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        resp
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        let faults = serde_json::to_value(&invalid.faults).unwrap_or_default();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
            invalid.to_string(),
        )
        .with_details(json!({ "faults": faults }))
    }
}

impl From<TemplateError> for ApiError {
    fn from(e: TemplateError) -> Self {
        let invalid = |code: &'static str, invalid: Invalid| {
            let faults = serde_json::to_value(&invalid.faults).unwrap_or_default();
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, invalid.to_string())
                .with_details(json!({ "faults": faults }))
        };
        match e {
            TemplateError::NotFound(_) | TemplateError::Deleted(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "template_not_found", e.to_string())
            }
            TemplateError::VersionNotFound { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "template_version_not_found",
                e.to_string(),
            ),
            TemplateError::InvalidTemplate(i) => invalid("invalid_template", i),
            TemplateError::InvalidInputs(i) => invalid("invalid_inputs", i),
            TemplateError::Engine(e) => e.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::PlanNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "plan_not_found", e.to_string())
            }
            EngineError::CheckpointNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "checkpoint_not_found", e.to_string())
            }
            EngineError::VersionNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "version_not_found", e.to_string())
            }
            EngineError::PlanExists(_) => ApiError::conflict("plan_exists", e.to_string()),
            EngineError::Invalid(invalid) => invalid.into(),
            EngineError::Refused {
                refusal,
                intervention,
            } => {
                let (status, code) = match refusal.kind {
                    RefusalKind::Conflict => (StatusCode::CONFLICT, "conflict"),
                    RefusalKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
                    RefusalKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
                };
                let err = ApiError::new(status, code, refusal.message);
                match intervention {
                    Some(i) => err.with_details(json!({ "intervention": i })),
                    None => err,
                }
            }
            EngineError::NotOwner { .. } => ApiError::conflict("not_owner", e.to_string()),
            EngineError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; try again shortly",
            ),
            EngineError::StorageUnavailable(why) => {
                tracing::warn!(error = %why, "storage unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    format!(
                        "the store cannot take this change now ({why}); nothing was changed, try again later"
                    ),
                )
            }
            EngineError::Overloaded { retry_after_ms, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
                    .with_details(json!({ "retry_after_ms": retry_after_ms }))
            }
            EngineError::Corrupt(_) | EngineError::Store(_) => {
                tracing::error!(error = %e, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the server failed to complete the request; it has been logged",
                )
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Response middleware: an error answer that is not already our JSON error body (the rejections
/// of axum's own extractors, e.g. a path segment that is not UTF-8, or 405) is rewritten into
/// `{"error": {"code", "message"}}` with the same status and headers.
pub async fn json_errors(resp: Response) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let code = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "invalid_request",
        429 => "overloaded",
        431 => "headers_too_large",
        s if s >= 500 => "internal",
        _ => "http_error",
    };
    // A 413 comes from the framework's body limit: its text names the framework, not the limit.
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        crate::extract::too_large().message
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_owned()
    } else {
        text
    };
    let mut out = (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    for (k, v) in parts.headers.iter() {
        if k != CONTENT_TYPE && k != CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
