//! [`Operator`]: what `cairn plans|steps|checkpoints …` does, on a local store or on a server.
//!
//! Both ways answer the same typed values (`cairn_core::view`), so the commands have one code
//! path and one renderer, and `--json` prints the same document whichever way it was read. A
//! local operator opens the store with an engine that records decisions but runs no attempt: a
//! step it starts (by resuming a plan, say) runs when `cairn run --resume` drives the plan.
//!
//! Exit codes over HTTP: a refusal, bad input or an auth failure (401/403) → 2 with the server's
//! message; the server unreachable or failing → 1.

use cairn_client::{Client, ClientError, PauseOptions};
use cairn_core::versions::{PlanDiff, VersionList, VersionedDefinition};
use cairn_core::view::{
    CheckpointSummary, CheckpointView, Page, PlanSummary, PlanView, RollbackAnswer, Snapshot,
};
use cairn_core::{Event, Intervention, InterventionRequest, PauseMode, PlanStatus, Timestamp};
use cairn_engine::{Engine, EngineError, EngineOptions};
use serde_json::Value;

use crate::run::open_store;
use crate::{exit, DbArgs, Fail};

/// What a command does to a local store, which decides how it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: the file opened read-only, no lock, so it works while another process
    /// drives it; a missing file is refused by name.
    Read,
    /// Changes an existing store: takes the engine lock (refused, naming the holder, while
    /// another process drives the file); a missing file is refused by name.
    Change,
    /// Adds a plan (register, import): like `Change`, but creates the store if there is none.
    Create,
}

/// Where commands go: the store in process, or a cairn server.
pub enum Operator {
    Local { engine: Engine, user: String },
    Remote(Client),
}

/// An intervention that was refused, with the record the refusal made (if one was made).
pub struct Refused {
    pub message: String,
    pub record: Option<Intervention>,
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        // Match on the server's stable error codes and classes, not on raw statuses alone.
        match &e {
            ClientError::Api { message, .. } if e.code() == Some("unauthorized") || e.status() == Some(401) => Fail::input(format!(
                "{message} (HTTP 401): set CAIRN_TOKEN (or --token) to a valid token; an admin creates one with `cairn token create --user NAME --role operator`"
            )),
            ClientError::Api { message, .. } if e.status() == Some(403) => Fail::input(format!(
                "{message} (HTTP 403): the token in CAIRN_TOKEN (or --token) lacks the role this needs"
            )),
            ClientError::Api { message, .. } if e.is_client_error() => Fail::input(message.clone()),
            _ => Fail {
                code: exit::FAILED,
                message: e.to_string(),
            },
        }
    }
}

impl Operator {
    /// The operator `db` asks for: a client when it names a server, else the store at `--db`.
    pub async fn open(db: &DbArgs, access: Access) -> Result<Operator, Fail> {
        if let Some(server) = db.server.as_deref().filter(|s| !s.is_empty()) {
            if !(server.starts_with("http://") || server.starts_with("https://")) {
                return Err(Fail::input(format!(
                    "--server {server:?} must be a URL like http://127.0.0.1:8080"
                )));
            }
            return Ok(Operator::Remote(Client::new(server, db.token.clone())?));
        }
        let store = match access {
            Access::Read => crate::store::open_read(&db.db)?,
            Access::Change => crate::store::open_existing(&db.db)?,
            Access::Create => open_store(&db.db, true)?,
        };
        let engine = Engine::open(
            store,
            cairn_engine::executor::Registry::with_builtins(),
            EngineOptions {
                recover: false,
                execute: false,
                ..EngineOptions::default()
            },
        )
        .await?;
        Ok(Operator::Local {
            engine,
            user: crate::user(),
        })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Operator::Local { .. })
    }

    /// The local engine, for what only a store can do (export and import files).
    pub fn engine(&self, what: &str) -> Result<(&Engine, &str), Fail> {
        match self {
            Operator::Local { engine, user } => Ok((engine, user)),
            Operator::Remote(_) => Err(Fail::input(format!(
                "{what} works on the store (--db), not over --server"
            ))),
        }
    }

    pub async fn plans(
        &self,
        state: Option<PlanStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<PlanSummary>, Fail> {
        match self {
            Operator::Local { engine, .. } => {
                engine
                    .plans(state, limit, cursor)
                    .await
                    .map_err(|e| match e {
                        EngineError::Store(cairn_store::StoreError::BadCursor(c)) => {
                            Fail::input(format!("invalid cursor {c:?}"))
                        }
                        other => other.into(),
                    })
            }
            Operator::Remote(c) => Ok(c
                .list_plans(state.map(PlanStatus::as_str), Some(limit), cursor)
                .await?),
        }
    }

    pub async fn plan(&self, plan_id: &str) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.view(plan_id).await?),
            Operator::Remote(c) => Ok(c.plan(plan_id).await?),
        }
    }

    pub async fn register(&self, plan: cairn_core::Plan) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => {
                Ok(PlanView::of(&engine.register(plan, user).await?))
            }
            Operator::Remote(c) => {
                let body = serde_json::to_value(&plan)
                    .map_err(|e| Fail::from(anyhow::anyhow!("cannot send the plan: {e}")))?;
                Ok(c.register(&body).await?)
            }
        }
    }

    pub async fn start(&self, plan_id: &str, reason: Option<String>) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => {
                Ok(PlanView::of(&*engine.start(plan_id, user, reason).await?))
            }
            Operator::Remote(c) => Ok(c.start(plan_id, reason).await?),
        }
    }

    pub async fn pause(
        &self,
        plan_id: &str,
        mode: PauseMode,
        resume_at: Option<Timestamp>,
        reason: Option<String>,
    ) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => Ok(PlanView::of(
                &*engine.pause(plan_id, mode, resume_at, user, reason).await?,
            )),
            Operator::Remote(c) => {
                let options = PauseOptions {
                    reason,
                    mode: (mode == PauseMode::Immediate).then(|| "immediate".to_owned()),
                    resume_at,
                };
                Ok(c.pause(plan_id, &options).await?)
            }
        }
    }

    pub async fn resume(&self, plan_id: &str, reason: Option<String>) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => {
                Ok(PlanView::of(&*engine.resume(plan_id, user, reason).await?))
            }
            Operator::Remote(c) => Ok(c.resume(plan_id, reason).await?),
        }
    }

    pub async fn cancel(&self, plan_id: &str, reason: Option<String>) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => {
                Ok(PlanView::of(&*engine.cancel(plan_id, user, reason).await?))
            }
            Operator::Remote(c) => Ok(c.cancel(plan_id, reason).await?),
        }
    }

    /// Cancels the plan and rolls back what it did; with `dry_run`, only answers the
    /// compensations it would run.
    pub async fn cancel_and_rollback(
        &self,
        plan_id: &str,
        dry_run: bool,
        reason: Option<String>,
    ) -> Result<RollbackAnswer, Fail> {
        match self {
            Operator::Local { engine, user } => {
                let (state, order) = engine
                    .cancel_and_rollback(plan_id, user, dry_run, reason)
                    .await?;
                Ok(RollbackAnswer::of(&state, order, dry_run))
            }
            Operator::Remote(c) => Ok(c.cancel_and_rollback(plan_id, dry_run, reason).await?),
        }
    }

    /// Rolls back a failed or cancelled plan (or continues a rollback that failed); with
    /// `dry_run`, only answers the compensations it would run.
    pub async fn rollback(
        &self,
        plan_id: &str,
        dry_run: bool,
        reason: Option<String>,
    ) -> Result<RollbackAnswer, Fail> {
        match self {
            Operator::Local { engine, user } => {
                let (state, order) = engine.rollback(plan_id, user, dry_run, reason).await?;
                Ok(RollbackAnswer::of(&state, order, dry_run))
            }
            Operator::Remote(c) => Ok(c.rollback(plan_id, dry_run, reason).await?),
        }
    }

    pub async fn delete(&self, plan_id: &str) -> Result<(), Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.delete(plan_id).await?),
            Operator::Remote(c) => Ok(c.delete_plan(plan_id).await?),
        }
    }

    pub async fn snapshot(&self, plan_id: &str) -> Result<Snapshot, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.snapshot(plan_id).await?),
            Operator::Remote(c) => Ok(c.snapshot(plan_id).await?),
        }
    }

    pub async fn events(
        &self,
        plan_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page<Event>, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.events_page(plan_id, after, limit).await?),
            Operator::Remote(c) => Ok(c.events(plan_id, after, Some(limit)).await?),
        }
    }

    pub async fn interventions(
        &self,
        plan_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Intervention>, Fail> {
        match self {
            Operator::Local { engine, .. } => engine
                .interventions_page(plan_id, cursor, limit)
                .await
                .map_err(cursor_fail),
            Operator::Remote(c) => Ok(c.interventions(plan_id, Some(limit), cursor).await?),
        }
    }

    /// Every version of a plan's definition with its cause.
    pub async fn plan_versions(&self, plan_id: &str) -> Result<VersionList, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(VersionList {
                plan_id: plan_id.to_owned(),
                versions: engine.plan_versions(plan_id).await?,
            }),
            Operator::Remote(c) => Ok(c.plan_versions(plan_id).await?),
        }
    }

    /// A version of a plan's definition: its cause and the definition then.
    pub async fn plan_version(
        &self,
        plan_id: &str,
        version: u64,
    ) -> Result<VersionedDefinition, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.plan_version(plan_id, version).await?),
            Operator::Remote(c) => Ok(c.plan_version(plan_id, version).await?),
        }
    }

    /// The diff of a plan's definition between two versions (defaults as the API's).
    pub async fn plan_diff(
        &self,
        plan_id: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<PlanDiff, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.plan_diff(plan_id, from, to).await?),
            Operator::Remote(c) => Ok(c.plan_diff(plan_id, from, to).await?),
        }
    }

    /// Sends an intervention body (the JSON of `POST /v1/plans/{id}/interventions`).
    pub async fn intervene(
        &self,
        plan_id: &str,
        body: Value,
    ) -> Result<Result<Intervention, Refused>, Fail> {
        match self {
            Operator::Local { engine, user } => {
                let request =
                    InterventionRequest::from_body(body).map_err(|e| Fail::input(e.to_string()))?;
                match engine.intervene(plan_id, request, user).await {
                    Ok(record) => Ok(Ok(record)),
                    Err(EngineError::Refused {
                        refusal,
                        intervention,
                    }) => Ok(Err(Refused {
                        message: refusal.to_string(),
                        record: intervention.map(|i| *i),
                    })),
                    Err(e) => Err(e.into()),
                }
            }
            Operator::Remote(c) => match c.intervene(plan_id, &body).await {
                Ok(record) => Ok(Ok(record)),
                Err(e @ ClientError::Api { .. })
                    if matches!(
                        e.code(),
                        Some("conflict" | "invalid_request" | "invalid_plan")
                    ) || e.refused_intervention().is_some() =>
                {
                    let record = e.refused_intervention();
                    let message = match &e {
                        ClientError::Api { message, .. } => message.clone(),
                        other => other.to_string(),
                    };
                    Ok(Err(Refused { message, record }))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    pub async fn checkpoints(
        &self,
        plan_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<CheckpointSummary>, Fail> {
        match self {
            Operator::Local { engine, .. } => engine
                .checkpoints_page(plan_id, cursor, limit)
                .await
                .map_err(cursor_fail),
            Operator::Remote(c) => Ok(c.checkpoints(plan_id, Some(limit), cursor).await?),
        }
    }

    pub async fn checkpoint(&self, plan_id: &str, cid: &str) -> Result<CheckpointView, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.checkpoint(plan_id, cid).await?),
            Operator::Remote(c) => Ok(c.checkpoint(plan_id, cid).await?),
        }
    }

    pub async fn create_checkpoint(
        &self,
        plan_id: &str,
        label: Option<String>,
    ) -> Result<CheckpointSummary, Fail> {
        match self {
            Operator::Local { engine, user } => {
                Ok(engine.create_checkpoint(plan_id, label, user, None).await?)
            }
            Operator::Remote(c) => Ok(c.create_checkpoint(plan_id, label).await?),
        }
    }

    pub async fn restore(
        &self,
        plan_id: &str,
        cid: &str,
        reason: Option<String>,
    ) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => Ok(PlanView::of(
                &*engine.restore(plan_id, cid, user, reason).await?,
            )),
            Operator::Remote(c) => Ok(c.restore(plan_id, cid, reason).await?),
        }
    }

    pub async fn fork(
        &self,
        plan_id: &str,
        cid: &str,
        new_plan_id: Option<String>,
    ) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => Ok(PlanView::of(
                &engine.fork(plan_id, cid, new_plan_id, user, None).await?,
            )),
            Operator::Remote(c) => Ok(c.fork(plan_id, cid, new_plan_id).await?),
        }
    }
}

/// A list cursor the engine could not read is bad input, like over HTTP.
pub(crate) fn cursor_fail(e: EngineError) -> Fail {
    match e {
        EngineError::Store(cairn_store::StoreError::BadCursor(c)) => {
            Fail::input(format!("invalid cursor {c:?}"))
        }
        other => other.into(),
    }
}
