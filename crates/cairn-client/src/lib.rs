//! A typed client for cairn's HTTP API: one method per endpoint, bearer-token auth, errors that
//! carry the server's `{"error": {"code", "message"}}` and HTTP status.
//!
//! Answers are the read models of `cairn_core::view` (the very types the server serialises), so
//! a caller holds the same values whether it reads a store in process or over HTTP, and writing
//! one back out as JSON gives the document the server sent.

use std::time::Duration;

use cairn_core::template::{Pushed, TemplateDetail, TemplateVersion};
use cairn_core::view::{
    CheckpointSummary, CheckpointView, Page, PlanSummary, PlanView, RollbackAnswer, Snapshot,
};
use cairn_core::{Event, Intervention, Timestamp};
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// The whole error body (it may carry details such as the refused intervention).
        body: Value,
    },
    /// Nothing answered at the address (connection refused, DNS, timeout while connecting).
    #[error("the cairn server is not reachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Any other transport failure (the connection dropped mid-answer, …).
    #[error("talking to {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The server answered 2xx with something that is not the expected JSON.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status, for errors the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error code, for errors the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// 401 or 403: the token is missing, wrong, revoked or lacks the role.
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// A 4xx the caller caused (a refusal, bad input, unknown id, auth).
    pub fn is_client_error(&self) -> bool {
        matches!(self.status(), Some(400..=499))
    }

    /// The recorded intervention a refusal carries (`error.intervention`), if any.
    pub fn refused_intervention(&self) -> Option<Intervention> {
        match self {
            ClientError::Api { body, .. } => body
                .get("error")
                .and_then(|e| e.get("intervention"))
                .and_then(|i| serde_json::from_value(i.clone()).ok()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// The answer of `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, `ready`, or what is wrong.
    pub status: String,
}

/// An API token as listed (never the secret nor its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    /// `viewer`, `operator`, `admin` or `worker`.
    pub role: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// A token just created: the secret is shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewToken {
    pub id: String,
    pub user: String,
    pub role: String,
    pub token: String,
    pub created_at: Timestamp,
}

/// Options of `POST /v1/plans/{id}/pause`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PauseOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `boundary` (default) or `immediate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// When the plan resumes by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<Timestamp>,
}

/// The plan states in which nothing more happens by itself (the core's
/// [`cairn_core::PlanStatus::is_terminal`], by name).
pub fn is_terminal_state(state: &str) -> bool {
    cairn_core::PlanStatus::parse(state).is_some_and(cairn_core::PlanStatus::is_terminal)
}

/// Event types after which a plan is in a terminal state.
pub fn is_terminal_event(kind: &str) -> bool {
    cairn_core::PlanStatus::entered_by(kind).is_some_and(cairn_core::PlanStatus::is_terminal)
}

/// A client for one server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn path_segment(s: &str) -> String {
    // Plan and checkpoint ids are [A-Za-z0-9_.-]; anything else is percent-encoded so it reaches
    // the server as one segment (which then answers 404 as it should).
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for the server at `base` (`http://127.0.0.1:8080`), authenticating with `token`.
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                url: self.base.clone(),
                reason: root_cause(&e),
            }
        } else {
            ClientError::Transport {
                url: self.base.clone(),
                reason: root_cause(&e),
            }
        }
    }

    /// Sends `r` and returns the JSON answer (`Value::Null` for 204), or the server's error.
    async fn send(&self, r: RequestBuilder) -> Result<(u16, Value)> {
        let resp = r.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok((status.as_u16(), Value::Null));
            }
            let v = serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Decode(format!("{e} in a {status} answer")))?;
            return Ok((status.as_u16(), v));
        }
        Err(api_error(status, &bytes))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self
            .send(self.request(Method::POST, path).json(body))
            .await?
            .1)
    }

    /// `GET path?query` read as a `T`.
    async fn get_as<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let v = self
            .send(self.request(Method::GET, path).query(query))
            .await?
            .1;
        decode(v)
    }

    async fn post_as<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        decode(self.post(path, body).await?)
    }

    fn plan_path(id: &str) -> String {
        format!("/v1/plans/{}", path_segment(id))
    }

    fn reason_body(reason: Option<String>) -> Value {
        match reason {
            Some(r) => json!({ "reason": r }),
            None => json!({}),
        }
    }

    // ---- health -------------------------------------------------------------------------------

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<Health> {
        self.get_as("/healthz", &[]).await
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> Result<Health> {
        self.get_as("/readyz", &[]).await
    }

    // ---- plans --------------------------------------------------------------------------------

    /// `POST /v1/plans`: register a plan document (JSON). Answers the plan's state.
    pub async fn register(&self, plan: &Value) -> Result<PlanView> {
        self.post_as("/v1/plans", plan).await
    }

    /// `POST /v1/templates`: a new version of the template (`created: false` when the content
    /// is the latest version's already).
    pub async fn push_template(&self, template: &Value) -> Result<Pushed> {
        self.post_as("/v1/templates", template).await
    }

    /// `GET /v1/templates?limit=&cursor=`: the latest version of each template, by name.
    pub async fn list_templates(
        &self,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<TemplateVersion>> {
        self.get_as("/v1/templates", &page_query(limit, cursor))
            .await
    }

    /// `GET /v1/templates/{name}`: the latest version and the version list.
    pub async fn template(&self, name: &str) -> Result<TemplateDetail> {
        self.get_as(&format!("/v1/templates/{}", path_segment(name)), &[])
            .await
    }

    /// `GET /v1/templates/{name}/versions/{v}`.
    pub async fn template_version(&self, name: &str, version: u64) -> Result<TemplateVersion> {
        self.get_as(
            &format!("/v1/templates/{}/versions/{version}", path_segment(name)),
            &[],
        )
        .await
    }

    /// `GET /v1/templates/{name}/diff?from=&to=`: the structural diff between two versions
    /// (`to` defaults to the latest, `from` to the one before `to`).
    pub async fn template_diff(
        &self,
        name: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<cairn_core::template::TemplateDiff> {
        let mut q = Vec::new();
        if let Some(f) = from {
            q.push(("from", f.to_string()));
        }
        if let Some(t) = to {
            q.push(("to", t.to_string()));
        }
        self.get_as(&format!("/v1/templates/{}/diff", path_segment(name)), &q)
            .await
    }

    /// `POST /v1/templates/{name}/instantiate`: a new plan of the template (the latest version
    /// unless `version`), started unless `start` is false.
    pub async fn instantiate_template(
        &self,
        name: &str,
        inputs: &Value,
        version: Option<u64>,
        plan_id: Option<&str>,
        start: bool,
    ) -> Result<PlanView> {
        let mut body = json!({"inputs": inputs, "start": start});
        if let Some(v) = version {
            body["version"] = json!(v);
        }
        if let Some(id) = plan_id {
            body["plan_id"] = json!(id);
        }
        self.post_as(
            &format!("/v1/templates/{}/instantiate", path_segment(name)),
            &body,
        )
        .await
    }

    /// `DELETE /v1/templates/{name}` (admin): no new plans of it; its versions are kept.
    pub async fn delete_template(&self, name: &str) -> Result<()> {
        self.send(self.request(
            Method::DELETE,
            &format!("/v1/templates/{}", path_segment(name)),
        ))
        .await
        .map(|_| ())
    }

    /// `GET /v1/plans?state=&limit=&cursor=`: newest first.
    pub async fn list_plans(
        &self,
        state: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<PlanSummary>> {
        let mut q = page_query(limit, cursor);
        if let Some(s) = state {
            q.push(("state", s.to_owned()));
        }
        self.get_as("/v1/plans", &q).await
    }

    /// `GET /v1/plans/{id}`: the plan's state.
    pub async fn plan(&self, id: &str) -> Result<PlanView> {
        self.get_as(&Self::plan_path(id), &[]).await
    }

    /// `DELETE /v1/plans/{id}` (admin; not while running).
    pub async fn delete_plan(&self, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &Self::plan_path(id)))
            .await
            .map(|_| ())
    }

    /// `POST /v1/plans/{id}/start`.
    pub async fn start(&self, id: &str, reason: Option<String>) -> Result<PlanView> {
        self.post_as(
            &format!("{}/start", Self::plan_path(id)),
            &Self::reason_body(reason),
        )
        .await
    }

    /// `POST /v1/plans/{id}/pause`.
    pub async fn pause(&self, id: &str, options: &PauseOptions) -> Result<PlanView> {
        let body = serde_json::to_value(options).unwrap_or_else(|_| json!({}));
        self.post_as(&format!("{}/pause", Self::plan_path(id)), &body)
            .await
    }

    /// `POST /v1/plans/{id}/resume`.
    pub async fn resume(&self, id: &str, reason: Option<String>) -> Result<PlanView> {
        self.post_as(
            &format!("{}/resume", Self::plan_path(id)),
            &Self::reason_body(reason),
        )
        .await
    }

    /// `POST /v1/plans/{id}/cancel`.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<PlanView> {
        self.post_as(
            &format!("{}/cancel", Self::plan_path(id)),
            &Self::reason_body(reason),
        )
        .await
    }

    /// `POST /v1/plans/{id}/cancel` with `{"rollback": true}`: cancels the plan and rolls back
    /// what it did (steps running are stopped first, and compensated once they ended). Answers
    /// the compensations in order and the plan's state. With `dry_run`, answers what it would
    /// run and changes nothing.
    pub async fn cancel_and_rollback(
        &self,
        id: &str,
        dry_run: bool,
        reason: Option<String>,
    ) -> Result<RollbackAnswer> {
        let mut body = Self::reason_body(reason);
        body["rollback"] = json!(true);
        if dry_run {
            body["dry_run"] = json!(true);
        }
        self.post_as(&format!("{}/cancel", Self::plan_path(id)), &body)
            .await
    }

    /// `POST /v1/plans/{id}/rollback`: rolls back a failed or cancelled plan, or continues a
    /// rollback that stopped on a failed compensation. With `dry_run`, answers the
    /// compensations it would run and changes nothing.
    pub async fn rollback(
        &self,
        id: &str,
        dry_run: bool,
        reason: Option<String>,
    ) -> Result<RollbackAnswer> {
        let mut body = Self::reason_body(reason);
        if dry_run {
            body["dry_run"] = json!(true);
        }
        self.post_as(&format!("{}/rollback", Self::plan_path(id)), &body)
            .await
    }

    /// `POST /v1/plans/{id}/interventions`: the body as the API reference describes it. Answers the
    /// intervention record (201, or 200 for a dry run).
    ///
    /// A refusal is an [`ClientError::Api`] whose body's `error.intervention` holds the failed
    /// record ([`ClientError::refused_intervention`]).
    pub async fn intervene(&self, id: &str, body: &Value) -> Result<Intervention> {
        self.post_as(&format!("{}/interventions", Self::plan_path(id)), body)
            .await
    }

    /// `GET /v1/plans/{id}/interventions?limit=&cursor=`: oldest first.
    pub async fn interventions(
        &self,
        id: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<Intervention>> {
        self.get_as(
            &format!("{}/interventions", Self::plan_path(id)),
            &page_query(limit, cursor),
        )
        .await
    }

    // ---- reviews ------------------------------------------------------------------------------

    /// `GET /v1/reviews?state=&plan_id=&limit=&cursor=`: the review inbox across plans, oldest
    /// opened first. `state` is `open` or `closed` (`None`: both); `plan_id` keeps one plan's.
    /// Decide a review with [`Client::intervene`] and an `approve_step` or `reject_step` body.
    pub async fn reviews(
        &self,
        state: Option<&str>,
        plan_id: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<cairn_core::Review>> {
        let mut q = page_query(limit, cursor);
        if let Some(s) = state {
            q.push(("state", s.to_owned()));
        }
        if let Some(p) = plan_id {
            q.push(("plan_id", p.to_owned()));
        }
        self.get_as("/v1/reviews", &q).await
    }

    /// `GET /v1/plans/{id}/checkpoints?limit=&cursor=`: oldest first.
    pub async fn checkpoints(
        &self,
        id: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<CheckpointSummary>> {
        self.get_as(
            &format!("{}/checkpoints", Self::plan_path(id)),
            &page_query(limit, cursor),
        )
        .await
    }

    /// `POST /v1/plans/{id}/checkpoints`: a manual checkpoint.
    pub async fn create_checkpoint(
        &self,
        id: &str,
        label: Option<String>,
    ) -> Result<CheckpointSummary> {
        let body = match label {
            Some(l) => json!({ "label": l }),
            None => json!({}),
        };
        self.post_as(&format!("{}/checkpoints", Self::plan_path(id)), &body)
            .await
    }

    /// `GET /v1/plans/{id}/checkpoints/{cid}`.
    pub async fn checkpoint(&self, id: &str, cid: &str) -> Result<CheckpointView> {
        self.get_as(
            &format!("{}/checkpoints/{}", Self::plan_path(id), path_segment(cid)),
            &[],
        )
        .await
    }

    /// `POST /v1/plans/{id}/checkpoints/{cid}/restore`.
    pub async fn restore(&self, id: &str, cid: &str, reason: Option<String>) -> Result<PlanView> {
        self.post_as(
            &format!(
                "{}/checkpoints/{}/restore",
                Self::plan_path(id),
                path_segment(cid)
            ),
            &Self::reason_body(reason),
        )
        .await
    }

    /// `POST /v1/plans/{id}/checkpoints/{cid}/fork`: answers the new plan's state.
    pub async fn fork(&self, id: &str, cid: &str, new_plan_id: Option<String>) -> Result<PlanView> {
        let body = match new_plan_id {
            Some(n) => json!({ "new_plan_id": n }),
            None => json!({}),
        };
        self.post_as(
            &format!(
                "{}/checkpoints/{}/fork",
                Self::plan_path(id),
                path_segment(cid)
            ),
            &body,
        )
        .await
    }

    /// `GET /v1/plans/{id}/versions`: every version of the plan's definition with its cause.
    pub async fn plan_versions(&self, id: &str) -> Result<cairn_core::versions::VersionList> {
        self.get_as(&format!("{}/versions", Self::plan_path(id)), &[])
            .await
    }

    /// `GET /v1/plans/{id}/versions/{v}`: a version's cause and the definition then.
    pub async fn plan_version(
        &self,
        id: &str,
        version: u64,
    ) -> Result<cairn_core::versions::VersionedDefinition> {
        self.get_as(&format!("{}/versions/{version}", Self::plan_path(id)), &[])
            .await
    }

    /// `GET /v1/plans/{id}/diff?from=&to=`: the structural diff between two versions (`to`
    /// defaults to the latest, `from` to the one before `to`).
    pub async fn plan_diff(
        &self,
        id: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<cairn_core::versions::PlanDiff> {
        let mut q = Vec::new();
        if let Some(f) = from {
            q.push(("from", f.to_string()));
        }
        if let Some(t) = to {
            q.push(("to", t.to_string()));
        }
        self.get_as(&format!("{}/diff", Self::plan_path(id)), &q)
            .await
    }

    /// `GET /v1/plans/{id}/snapshot`.
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot> {
        self.get_as(&format!("{}/snapshot", Self::plan_path(id)), &[])
            .await
    }

    /// `GET /v1/plans/{id}/events?after=&limit=`: oldest first; `next_cursor` is the `after`
    /// of the next page.
    pub async fn events(&self, id: &str, after: u64, limit: Option<usize>) -> Result<Page<Event>> {
        let mut q = vec![("after", after.to_string())];
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        self.get_as(&format!("{}/events", Self::plan_path(id)), &q)
            .await
    }

    /// `GET /v1/plans/{id}/steps/{step}`: one step with its definition, record, idempotency
    /// key and every attempt (start, end, outcome, invocation, output, scores, error).
    pub async fn step(&self, id: &str, step: &str) -> Result<cairn_core::history::StepDetail> {
        self.get_as(
            &format!("{}/steps/{}", Self::plan_path(id), path_segment(step)),
            &[],
        )
        .await
    }

    /// `GET /v1/plans/{id}/attempts?cursor=&limit=`: the attempt spans of a page of steps, in
    /// plan order; `cursor` is a step's position (the `next_cursor` of the previous page).
    pub async fn attempts(
        &self,
        id: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<cairn_core::history::StepAttempts>> {
        self.get_as(
            &format!("{}/attempts", Self::plan_path(id)),
            &page_query(limit, cursor),
        )
        .await
    }

    /// `GET /v1/plans/{id}/attempts?steps=a,b`: the attempt spans of the named steps (at most
    /// 1000), in plan order; ids the plan does not have are left out.
    pub async fn attempts_of(
        &self,
        id: &str,
        steps: &[&str],
    ) -> Result<Vec<cairn_core::history::StepAttempts>> {
        let page: Page<cairn_core::history::StepAttempts> = self
            .get_as(
                &format!("{}/attempts", Self::plan_path(id)),
                &[("steps", steps.join(","))],
            )
            .await?;
        Ok(page.items)
    }

    /// `GET /v1/plans?id_contains=&state=&limit=&cursor=`: plans whose id contains `part`,
    /// newest first.
    pub async fn search_plans(
        &self,
        part: &str,
        state: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<PlanSummary>> {
        let mut q = page_query(limit, cursor);
        q.push(("id_contains", part.to_owned()));
        if let Some(s) = state {
            q.push(("state", s.to_owned()));
        }
        self.get_as("/v1/plans", &q).await
    }

    // ---- tokens -------------------------------------------------------------------------------

    /// `POST /v1/tokens` (admin): answers the new token, secret included (shown once).
    pub async fn create_token(&self, user: &str, role: &str) -> Result<NewToken> {
        self.post_as("/v1/tokens", &json!({"user": user, "role": role}))
            .await
    }

    /// `GET /v1/workers`: the remote workers the server has seen.
    pub async fn workers(&self) -> Result<Vec<cairn_core::view::WorkerInfo>> {
        let page: Page<cairn_core::view::WorkerInfo> = self.get_as("/v1/workers", &[]).await?;
        Ok(page.items)
    }

    /// `GET /v1/nodes`: the nodes sharing the server's store, the answering one marked `self`.
    pub async fn nodes(&self) -> Result<Vec<cairn_core::view::NodeInfo>> {
        let list: cairn_core::view::NodeList = self.get_as("/v1/nodes", &[]).await?;
        Ok(list.nodes)
    }

    /// `GET /v1/tokens` (admin).
    pub async fn tokens(&self) -> Result<Page<TokenInfo>> {
        self.get_as("/v1/tokens", &[]).await
    }

    /// `DELETE /v1/tokens/{id}` (admin).
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/tokens/{}", path_segment(id))))
            .await
            .map(|_| ())
    }

    // ---- following a plan ---------------------------------------------------------------------

    /// Follows a plan's events from `after`: live over SSE (`GET …/events/stream`, resuming with
    /// `Last-Event-ID` on reconnect), reconnecting when the stream drops. Calls `on_event` for
    /// each event in seq order, and returns once the plan is completed, failed or cancelled
    /// (after its last event), or when `on_event` answers `false`.
    pub async fn follow_events(
        &self,
        id: &str,
        after: u64,
        mut on_event: impl FnMut(&Event) -> bool,
    ) -> Result<()> {
        let mut last = after;
        let mut sse = true;
        let mut failures = 0u32;
        loop {
            // Catch up (and learn whether the plan is already over) with the plain endpoint.
            loop {
                let page = self.events(id, last, Some(1000)).await?;
                for e in &page.items {
                    if e.seq <= last {
                        continue;
                    }
                    last = e.seq;
                    if !on_event(e) {
                        return Ok(());
                    }
                }
                if page.next_cursor.is_none() {
                    break;
                }
            }
            let plan = self.plan(id).await?;
            if plan.state.is_terminal() && plan.last_seq <= last {
                return Ok(());
            }
            if sse {
                match self.stream_once(id, &mut last, &mut on_event).await {
                    Ok(StreamEnd::Done) => return Ok(()),
                    Ok(StreamEnd::Dropped) => {
                        failures = 0;
                        continue;
                    }
                    Err(ClientError::Api {
                        status: 404, code, ..
                    }) if code != "plan_not_found" => {
                        // The route does not exist on this server: poll instead.
                        sse = false;
                    }
                    Err(e @ ClientError::Api { .. }) => return Err(e),
                    Err(e) => {
                        failures += 1;
                        if failures > 20 {
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn stream_once(
        &self,
        id: &str,
        last: &mut u64,
        on_event: &mut impl FnMut(&Event) -> bool,
    ) -> Result<StreamEnd> {
        let mut r = self
            .request(
                Method::GET,
                &format!("{}/events/stream", Self::plan_path(id)),
            )
            .header("Accept", "text/event-stream");
        if *last > 0 {
            r = r.header("Last-Event-ID", last.to_string());
        }
        let resp = r.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return Ok(StreamEnd::Dropped);
            };
            for frame in parser.feed(&chunk) {
                let event = serde_json::from_str::<Event>(&frame.data)
                    .map_err(|e| ClientError::Decode(format!("an event of the stream: {e}")))?;
                if event.seq <= *last {
                    continue;
                }
                *last = event.seq;
                if !on_event(&event) {
                    return Ok(StreamEnd::Done);
                }
                if event
                    .kind
                    .plan_status_after()
                    .is_some_and(cairn_core::PlanStatus::is_terminal)
                {
                    return Ok(StreamEnd::Done);
                }
            }
        }
        Ok(StreamEnd::Dropped)
    }
}

/// `limit` and `cursor` of a list request.
fn page_query(limit: Option<usize>, cursor: Option<&str>) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(l) = limit {
        q.push(("limit", l.to_string()));
    }
    if let Some(c) = cursor {
        q.push(("cursor", c.to_owned()));
    }
    q
}

/// Reads a 2xx answer as the type the endpoint documents.
fn decode<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))
}

enum StreamEnd {
    Done,
    Dropped,
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let err = body.get("error");
    let code = err
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("http_error")
        .to_owned();
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            if text.is_empty() {
                format!("the server answered {status}")
            } else {
                format!(
                    "the server answered {status}: {}",
                    text.chars().take(300).collect::<String>()
                )
            }
        });
    ClientError::Api {
        status: status.as_u16(),
        code,
        message,
        body,
    }
}

/// One server-sent event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An incremental `text/event-stream` parser (frames end with a blank line; `:` lines are
/// comments; CR, LF and CRLF line ends).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseFrame,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes and returns the frames they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A CR at the very end may be the first half of a CRLF: wait for more.
            if self.buf[pos] == b'\r' && pos + 1 == self.buf.len() {
                break;
            }
            let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
            let skip = if self.buf[pos] == b'\r' && self.buf.get(pos + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            self.buf.drain(..pos + skip);
            if line.is_empty() {
                if self.has_data {
                    let mut f = std::mem::take(&mut self.cur);
                    if f.data.ends_with('\n') {
                        f.data.pop();
                    }
                    out.push(f);
                } else {
                    self.cur = SseFrame::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "id" => self.cur.id = Some(value),
                "event" => self.cur.event = Some(value),
                "data" => {
                    self.cur.data.push_str(&value);
                    self.cur.data.push('\n');
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_split_anywhere() {
        let text = b": hello\nid: 1\nevent: plan_started\ndata: {\"seq\":1}\n\nid: 2\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\n";
        for cut in 0..text.len() {
            let mut p = SseParser::default();
            let mut frames = p.feed(&text[..cut]);
            frames.extend(p.feed(&text[cut..]));
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[0].id.as_deref(), Some("1"));
            assert_eq!(frames[0].event.as_deref(), Some("plan_started"));
            assert_eq!(frames[0].data, "{\"seq\":1}");
            assert_eq!(frames[1].data, "a\nb");
        }
    }

    #[test]
    fn ids_are_one_segment() {
        assert_eq!(path_segment("a_b.c-1"), "a_b.c-1");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn error_bodies_are_read() {
        let e = api_error(
            StatusCode::CONFLICT,
            br#"{"error": {"code": "conflict", "message": "no"}}"#,
        );
        assert_eq!(e.status(), Some(409));
        assert_eq!(e.code(), Some("conflict"));
        assert_eq!(e.to_string(), "no (HTTP 409, conflict)");
        let e = api_error(StatusCode::BAD_GATEWAY, b"oops");
        assert_eq!(e.code(), Some("http_error"));
    }
}
