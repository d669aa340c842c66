//! The OpenAPI document (`GET /openapi.json`), generated from the routed handlers themselves:
//! the router is built from `utoipa_axum::routes!` lists ([`crate::document`]), so every routed
//! path carries the `#[utoipa::path]` annotation of the handler that serves it, and nothing else
//! is in the document. This module adds what is common to every operation (security, the
//! statuses every body or query can produce) and the shared schemas. `docs/openapi.json` is a
//! committed copy; the `openapi` test fails when it drifts (`CAIRN_UPDATE_OPENAPI=1 cargo test
//! -p cairn-server --test cairn_server openapi` rewrites it).

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// `{"error": {"code", "message"}}`: the body of every refusal.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "plan_not_found", "message": "plan \"p1\" not found"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// snake_case and stable; clients match on it.
    pub code: ErrorCode,
    /// A human sentence.
    pub message: String,
    /// `invalid_plan`: every fault of the plan, each with its path and, for documents, its
    /// line and column.
    #[schema(value_type = Option<Vec<Object>>)]
    pub faults: Option<()>,
    /// A refused intervention: its record, as stored in the audit trail.
    #[schema(value_type = Option<Object>)]
    pub intervention: Option<()>,
}

/// Every error code the server answers.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    PlanNotFound,
    CheckpointNotFound,
    StepNotFound,
    TokenNotFound,
    TaskNotFound,
    MethodNotAllowed,
    RequestTimeout,
    PlanExists,
    Conflict,
    NotOwner,
    NotLeaseHolder,
    PayloadTooLarge,
    UnsupportedMediaType,
    UriTooLong,
    InvalidRequest,
    InvalidPlan,
    HeadersTooLarge,
    HttpError,
    ShuttingDown,
    StorageUnavailable,
    Overloaded,
    TemplateNotFound,
    TemplateVersionNotFound,
    InvalidTemplate,
    InvalidInputs,
    VersionNotFound,
}

/// `{"status": …}`: what `/healthz` and `/readyz` answer.
#[derive(ToSchema)]
pub struct Status {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    /// Why the server is not ready.
    pub error: Option<String>,
}

/// One server-sent event as the stream frames it: `id` (the event's `seq` on a plan's stream,
/// its global id on the all-plans stream), `event` (the event type, or `lagged` when the
/// subscriber fell behind), and `data` (the event JSON, or `{"missed": n}`). Keep-alive
/// comments carry none of these.
#[derive(ToSchema)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
}

/// `{"items": [...], "next_cursor": …}`, by name.
#[derive(ToSchema)]
pub struct TemplateList {
    pub items: Vec<cairn_core::template::TemplateVersion>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// `{"items": [...], "next_cursor": …}`, newest first.
#[derive(ToSchema)]
pub struct PlanList {
    pub items: Vec<cairn_core::view::PlanSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// `{"items": [...], "next_cursor": …}`, oldest opened first.
#[derive(ToSchema)]
pub struct ReviewList {
    pub items: Vec<cairn_core::Review>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// `{"items": [...], "next_cursor": …}`, oldest first.
#[derive(ToSchema)]
pub struct InterventionList {
    pub items: Vec<cairn_core::Intervention>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// `{"items": [...], "next_cursor": …}`, oldest first.
#[derive(ToSchema)]
pub struct CheckpointList {
    pub items: Vec<cairn_core::view::CheckpointSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// `{"items": [...], "next_cursor": …}`, steps in plan order.
#[derive(ToSchema)]
pub struct AttemptList {
    pub items: Vec<cairn_core::history::StepAttempts>,
    /// The position of the next step, to pass as `cursor`; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct EventList {
    pub items: Vec<cairn_core::Event>,
    /// The `seq` to pass as `after` (or `cursor`) for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/workers`: every worker seen since the server started (one page), and the tasks
/// waiting for one.
#[derive(ToSchema, Serialize)]
pub struct WorkerList {
    pub items: Vec<cairn_engine::remote::WorkerInfo>,
    pub next_cursor: Option<String>,
    /// Tasks no worker has claimed yet, by agent type (types with none waiting left out).
    pub queued: Vec<QueuedTasks>,
}

/// How many tasks of one agent type wait for a worker.
#[derive(ToSchema, Serialize)]
pub struct QueuedTasks {
    pub agent_type: String,
    pub tasks: usize,
}

#[derive(ToSchema)]
pub struct TokenList {
    pub items: Vec<crate::auth::TokenInfo>,
    pub next_cursor: Option<String>,
}

/// The body of `POST /v1/plans/{id}/interventions`. Which fields apply depends on
/// `type`; unknown fields are refused, `user` is ignored (the token's user is recorded).
#[derive(Serialize, ToSchema)]
pub struct InterventionBody {
    /// `skip_step`, `retry_step`, `add_step`, `modify_step`, `reorder_steps`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub step_id: Option<String>,
    /// Refuse (409) unless the plan is at this version.
    pub expected_version: Option<u64>,
    pub reason: Option<String>,
    /// `add_step`: the new step.
    pub step: Option<cairn_core::StepDef>,
    /// `add_step`: insert after this step id.
    pub after: Option<String>,
    /// `add_step`: insert before this step id.
    pub before: Option<String>,
    /// `modify_step`: fields of the step to change.
    #[schema(value_type = Option<Object>)]
    pub patch: Option<serde_json::Value>,
    /// `reorder_steps`: every pending step id in the new order.
    pub order: Option<Vec<String>>,
    /// Validate and answer the record (200) without applying it.
    pub dry_run: Option<bool>,
    /// `skip_step` / `retry_step`: act on the step's compensation that stopped a rollback
    /// (the plan failed or cancelled with `rollback.status: failed`); the rollback continues.
    pub compensation: Option<bool>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cairn",
        description = "A durable orchestrator for multi-step agent research plans \
            Every refusal is a 4xx with `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, cairn_core::Event, cairn_core::Intervention)),
    tags(
        (name = "plans", description = "Registration, state and control"),
        (name = "interventions", description = "Changing a plan while it runs"),
        (name = "checkpoints", description = "Checkpoints: list, create, restore, fork"),
        (name = "history", description = "A plan's definition history and diffs between its versions"),
        (name = "reviews", description = "The review inbox across plans (quality gates)"),
        (name = "templates", description = "Versioned plan templates and the plans made of them"),
        (name = "events", description = "Plan logs and live streams"),
        (name = "tasks", description = "The remote worker queue (role worker)"),
        (name = "tokens", description = "API tokens (role admin)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    ),
)]
pub struct ApiDoc;

/// The whole document: the info, tags and shared schemas of [`ApiDoc`], the operations of the
/// routed handlers (`/v1` and the root), and the answers common to every operation.
pub fn finish(
    v1: utoipa::openapi::OpenApi,
    root: utoipa::openapi::OpenApi,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(v1);
    doc.merge(root);
    Common.modify(&mut doc);
    doc
}

/// Adds the bearer scheme, and to every operation the answers it can give besides its own:
/// 401/403 where a token is needed, 400 where it reads a query or a body, 413/415 where it
/// reads a body, 503 where it reaches the store.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`; roles viewer, operator, admin, worker",
                    ))
                    .build(),
            ),
        );
        // The plan types read leniently from the stored log, but a plan document sent to the
        // server is checked by hand and refuses unknown fields: the schema says so.
        for name in ["Plan", "StepDef", "RetryPolicy"] {
            if let Some(RefOr::T(utoipa::openapi::Schema::Object(o))) =
                components.schemas.get_mut(name)
            {
                o.additional_properties = Some(Box::new(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ));
            }
        }
        let error = |what: &str| -> RefOr<utoipa::openapi::Response> {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        };
        for item in doc.paths.paths.values_mut() {
            let ops: [&mut Option<Operation>; 4] = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                if op.security.is_none() {
                    continue;
                }
                let has_query = op.parameters.iter().flatten().any(|p| {
                    matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query)
                        || matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Header)
                });
                let has_body = op.request_body.is_some();
                if let Some(body) = op.request_body.as_mut() {
                    not_nullable(body);
                }
                let r = &mut op.responses.responses;
                r.entry("401".into())
                    .or_insert_with(|| error("Missing, unknown, expired or revoked token"));
                r.entry("403".into())
                    .or_insert_with(|| error("The token's role may not do this"));
                if has_query || has_body {
                    r.entry("400".into())
                        .or_insert_with(|| error("A malformed body, query or header"));
                }
                if has_body {
                    r.entry("413".into()).or_insert_with(|| {
                        error("The body is larger than 1 MiB (`payload_too_large`)")
                    });
                    r.entry("415".into()).or_insert_with(|| {
                        error("The body is not `application/json` (`unsupported_media_type`)")
                    });
                }
                r.entry("503".into()).or_insert_with(|| {
                    error("The store cannot be used (`storage_unavailable`) or the server is shutting down")
                });
                if op.operation_id.as_deref().is_some_and(takes_commands) {
                    r.entry("429".into()).or_insert_with(|| {
                        error("`overloaded`: too many commands are waiting to be decided; nothing was changed, try again after the `Retry-After` header's seconds")
                    });
                }
            }
            for op in [&mut item.post, &mut item.put, &mut item.delete]
                .into_iter()
                .flatten()
            {
                if op.security.is_none() {
                    continue;
                }
                op.responses.responses.entry("503".into()).or_insert_with(|| {
                    error("`storage_unavailable`: the store cannot write now (a full disk, an I/O error); nothing was changed")
                });
            }
        }
    }
}

/// An optional body is sent or left out, never sent as JSON `null` (which is refused):
/// `Option<T>` bodies are documented as `T` in a body that is not required.
fn not_nullable(body: &mut utoipa::openapi::request_body::RequestBody) {
    use utoipa::openapi::schema::SchemaType;
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        if one_of.items.len() == 2 && one_of.items.iter().any(is_null) {
            let inner = one_of.items.iter().find(|s| !is_null(s)).cloned();
            content.schema = inner;
        }
    }
}

/// The operations that send a command to a plan's actor, which the engine refuses with 429
/// `overloaded` when too many commands are waiting.
fn takes_commands(operation_id: &str) -> bool {
    matches!(
        operation_id,
        "start_plan"
            | "pause_plan"
            | "resume_plan"
            | "cancel_plan"
            | "create_intervention"
            | "create_checkpoint"
            | "restore_checkpoint"
            | "instantiate_template"
    )
}

/// The document as pretty JSON with a final newline (what `docs/openapi.json` holds).
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut s = crate::document()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, operation_id = "openapi", path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn endpoint() -> Response {
    ([(CONTENT_TYPE, "application/json")], json()).into_response()
}
