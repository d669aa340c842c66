//! The OpenAPI document (`GET /openapi.json`), generated from the handlers' `#[utoipa::path]`
//! annotations and the types' `ToSchema` derives. `docs/openapi.json` is a committed copy; the
//! `openapi` test fails when it drifts (`CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn-server
//! --test openapi` rewrites it).
//!
//! Endpoints served by other modules that carry no annotation of their own yet (the event
//! streams, the WebSocket and the remote-worker task queue) are declared here on stub functions
//! that are never routed: see [`streams`] and [`tasks`]. When those handlers get their own
//! `#[utoipa::path]`, move the annotation onto them and drop the stub.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::{plans, tokens};

/// `{"error": {"code", "message"}}`: the body of every refusal.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "plan_not_found", "message": "plan \"p1\" not found"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// snake_case, stable: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `plan_not_found`, `checkpoint_not_found`, `token_not_found`, `plan_exists`, `conflict`,
    /// `not_owner`, `invalid_request`, `invalid_plan`.
    pub code: String,
    /// A human sentence.
    pub message: String,
}

/// A schema that is an object described in words (types whose shape is documented in DESIGN.md
/// rather than derived).
macro_rules! free_form {
    ($(#[doc = $doc:literal])* $ty:ident, $name:literal) => {
        $(#[doc = $doc])*
        pub struct $ty;

        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                let doc = [$($doc),*].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .description(Some(doc))
                    .into()
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

free_form!(
    /// One entry of a plan's log: `id` (global), `seq` (per plan), `plan_id`, `at` (an RFC 3339
    /// UTC time with microseconds), `actor`, `type` (e.g. `step_completed`), `data` (by type) and, when the
    /// event is also a checkpoint, `checkpoint: {trigger, label?}`.
    EventDoc,
    "Event"
);
free_form!(
    /// An intervention record: `intervention_id`, `plan_id`, `type`, `step_id?`, `payload`,
    /// `user`, `reason?`, `created_at` (RFC 3339 UTC), `status` (`applied` or `failed`), `error?`,
    /// `plan_version`, `diff: [{path, before, after}]`, `dry_run?`.
    InterventionDoc,
    "Intervention"
);
free_form!(
    /// A task handed to a remote worker: the step to run (plan id, step id, attempt,
    /// agent type, action, rendered params, idempotency key) and its lease.
    TaskDoc,
    "Task"
);
free_form!(
    /// A step's result from a remote worker: `output` (any JSON) and optional `scores`.
    TaskCompleteDoc,
    "TaskComplete"
);
free_form!(
    /// A step's failure from a remote worker: `error` (a sentence) and whether it may be
    /// retried.
    TaskFailDoc,
    "TaskFail"
);

/// `{"items": [...], "next_cursor": …}`, newest first.
#[derive(ToSchema)]
pub struct PlanList {
    pub items: Vec<cairn_core::view::PlanSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// `{"items": [...], "next_cursor": …}`, oldest first.
#[derive(ToSchema)]
pub struct InterventionList {
    pub items: Vec<InterventionDoc>,
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

#[derive(ToSchema)]
pub struct EventList {
    pub items: Vec<EventDoc>,
    /// The `seq` to pass as `after` (or `cursor`) for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct TokenList {
    pub items: Vec<crate::auth::TokenInfo>,
    pub next_cursor: Option<String>,
}

/// The body of `POST /v1/plans/{id}/interventions` (DESIGN §4). Which fields apply depends on
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
}

/// The body of `POST /v1/tasks/poll`.
#[derive(ToSchema)]
pub struct PollBody {
    pub worker_id: String,
    pub agent_types: Vec<String>,
    /// How long to wait for a task before answering 204.
    pub wait_ms: Option<u64>,
}

/// Declarations of endpoints that live in other modules, for the document only.
pub mod streams {
    use super::ErrorBody;

    /// Server-sent events of one plan: `id:` is the event's `seq`, `event:` its type, `data:`
    /// the event JSON. Resumes after `Last-Event-ID`.
    #[utoipa::path(get, operation_id = "stream_plan_events", path = "/v1/plans/{id}/events/stream", tag = "events",
        params(("id" = String, Path, description = "Plan id"),
               ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq")),
        responses(
            (status = 200, description = "An SSE stream of the plan's events", content_type = "text/event-stream", body = String),
            (status = 404, description = "No such plan", body = ErrorBody)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    pub fn plan_events_stream() {}

    /// Server-sent events of all plans: `id:` is the event's global id.
    #[utoipa::path(get, operation_id = "stream_events", path = "/v1/events/stream", tag = "events",
        params(("Last-Event-ID" = Option<u64>, Header, description = "Resume after this global id")),
        responses(
            (status = 200, description = "An SSE stream of every plan's events", content_type = "text/event-stream", body = String)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    pub fn events_stream() {}

    /// WebSocket: send `{"subscribe": [plan ids or "*"], "after": id}`; receive event JSON.
    #[utoipa::path(get, operation_id = "websocket", path = "/v1/ws", tag = "events",
        responses(
            (status = 101, description = "Switching to the WebSocket protocol"),
            (status = 400, description = "Not a WebSocket upgrade", body = ErrorBody)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    pub fn ws() {}
}

/// Declarations of the remote-worker queue endpoints (role `worker`), for the document only.
pub mod tasks {
    use super::{ErrorBody, PollBody, TaskCompleteDoc, TaskDoc, TaskFailDoc};

    /// Long-polls for a task of one of `agent_types`.
    #[utoipa::path(post, operation_id = "poll_task", path = "/v1/tasks/poll", tag = "tasks",
        request_body = PollBody,
        responses(
            (status = 200, description = "A task to run", body = TaskDoc),
            (status = 204, description = "No task within `wait_ms`"),
            (status = 422, description = "Invalid body", body = ErrorBody)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    pub fn poll() {}

    /// Extends the lease of a task being worked on.
    #[utoipa::path(post, operation_id = "heartbeat_task", path = "/v1/tasks/{task_id}/heartbeat", tag = "tasks",
        params(("task_id" = String, Path, description = "Task id")),
        responses(
            (status = 204, description = "Lease extended"),
            (status = 404, description = "No such task", body = ErrorBody),
            (status = 409, description = "The task's lease was lost", body = ErrorBody)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    pub fn heartbeat() {}

    /// Reports a task's result.
    #[utoipa::path(post, operation_id = "complete_task", path = "/v1/tasks/{task_id}/complete", tag = "tasks",
        params(("task_id" = String, Path, description = "Task id")),
        request_body = TaskCompleteDoc,
        responses(
            (status = 204, description = "Result recorded"),
            (status = 404, description = "No such task", body = ErrorBody),
            (status = 409, description = "The task's lease was lost", body = ErrorBody),
            (status = 422, description = "Invalid body", body = ErrorBody)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    pub fn complete() {}

    /// Reports a task's failure.
    #[utoipa::path(post, operation_id = "fail_task", path = "/v1/tasks/{task_id}/fail", tag = "tasks",
        params(("task_id" = String, Path, description = "Task id")),
        request_body = TaskFailDoc,
        responses(
            (status = 204, description = "Failure recorded"),
            (status = 404, description = "No such task", body = ErrorBody),
            (status = 409, description = "The task's lease was lost", body = ErrorBody),
            (status = 422, description = "Invalid body", body = ErrorBody)),
        security(("bearer" = [])))]
    #[allow(dead_code)]
    pub fn fail() {}
}

/// Unauthenticated root endpoints.
pub mod root {
    /// Liveness.
    #[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "operations",
        responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
    #[allow(dead_code)]
    pub fn healthz() {}

    /// Readiness: the store answers.
    #[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "operations",
        responses((status = 200, description = "`{\"status\": \"ready\"}`"),
                  (status = 503, description = "The store does not answer")))]
    #[allow(dead_code)]
    pub fn readyz() {}

    /// Prometheus metrics in the text exposition format.
    #[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "operations",
        responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
    #[allow(dead_code)]
    pub fn metrics() {}

    /// This document.
    #[utoipa::path(get, operation_id = "openapi", path = "/openapi.json", tag = "operations",
        responses((status = 200, description = "The OpenAPI document")))]
    #[allow(dead_code)]
    pub fn openapi() {}
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cairn",
        description = "A durable orchestrator for multi-step agent research plans (DESIGN §4). \
            Every refusal is a 4xx with `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        plans::register, plans::list, plans::get, plans::delete,
        plans::start, plans::pause, plans::resume, plans::cancel,
        plans::intervene, plans::interventions,
        plans::checkpoints, plans::create_checkpoint, plans::checkpoint,
        plans::restore, plans::fork, plans::snapshot, plans::events,
        streams::plan_events_stream, streams::events_stream, streams::ws,
        tasks::poll, tasks::heartbeat, tasks::complete, tasks::fail,
        tokens::create, tokens::list, tokens::revoke,
        root::healthz, root::readyz, root::metrics, root::openapi,
    ),
    components(schemas(ErrorBody, EventDoc, InterventionDoc, TaskDoc)),
    modifiers(&Security),
    tags(
        (name = "plans", description = "Registration, state and control"),
        (name = "interventions", description = "Changing a plan while it runs"),
        (name = "checkpoints", description = "Checkpoints: list, create, restore, fork"),
        (name = "events", description = "Plan logs and live streams"),
        (name = "tasks", description = "The remote worker queue (role worker)"),
        (name = "tokens", description = "API tokens (role admin)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    ),
)]
pub struct ApiDoc;

/// Adds the bearer scheme, and 401/403 answers to every operation that needs a token.
struct Security;

impl Modify for Security {
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
                let r = &mut op.responses.responses;
                r.entry("401".into())
                    .or_insert_with(|| error("Missing, unknown or revoked token"));
                r.entry("403".into())
                    .or_insert_with(|| error("The token's role may not do this"));
            }
        }
    }
}

/// The document as pretty JSON with a final newline (what `docs/openapi.json` holds).
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut s = ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    })
}

/// `GET /openapi.json`.
pub async fn endpoint() -> Response {
    ([(CONTENT_TYPE, "application/json")], json()).into_response()
}
