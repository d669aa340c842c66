//! Templates over the engine's store: push a version, read them, make plans from them. The
//! checks are `cairn_core::template`'s; here they meet the store and the engine, so the server
//! and a local CLI answer the same.

use std::sync::Arc;

use cairn_core::decide::Starts;
use cairn_core::template::{
    Pushed, Template, TemplateDetail, TemplateDiff, TemplateVersion, VersionInfo,
};
use cairn_core::upgrade::UpgradeSource;
use cairn_core::view::Page;
use cairn_core::{
    Command, Ctx, InterventionKind, InterventionRequest, Invalid, Plan, PlanState, Refusal,
    RefusalKind,
};
use cairn_store::{CreatePlan, NewTemplateVersion, StoreError, TemplateRow};
use serde_json::Value;

use crate::{now_micros, Engine, EngineError};

/// Why a template call failed. No HTTP here: the server maps these to status codes.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {0} not found")]
    NotFound(String),
    #[error("template {name} has no version {version}")]
    VersionNotFound { name: String, version: u64 },
    /// Deleted templates keep their versions but make no new plans.
    #[error("template {0} was deleted; push it again to use it")]
    Deleted(String),
    /// The pushed template is not valid (each fault with its path).
    #[error("invalid template: {0}")]
    InvalidTemplate(Invalid),
    /// The instantiation inputs do not fit the template's parameters (each input named).
    #[error("invalid inputs: {0}")]
    InvalidInputs(Invalid),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for TemplateError {
    fn from(e: StoreError) -> Self {
        TemplateError::Engine(e.into())
    }
}

/// What to make a plan of: `POST /v1/templates/{name}/instantiate`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Instantiate {
    /// The inputs, checked against the template's parameters (their defaults filled in).
    #[serde(default)]
    pub inputs: Value,
    /// A version to use; the latest when absent.
    #[serde(default)]
    pub version: Option<u64>,
    /// The new plan's id; a fresh one when absent.
    #[serde(default)]
    pub plan_id: Option<String>,
    /// Start the plan at once (the default), or leave it idle.
    #[serde(default)]
    pub start: Option<bool>,
}

fn version_of(row: TemplateRow) -> Result<TemplateVersion, TemplateError> {
    let template = Template::from_canonical(&row.content)
        .map_err(|e| TemplateError::Engine(EngineError::Corrupt(e)))?;
    Ok(TemplateVersion::of(
        template,
        row.version,
        row.created_at,
        row.created_by,
        row.deleted_at,
    ))
}

impl Engine {
    /// Checks a template document and stores it as the next version of its name (or answers
    /// the latest, `created: false`, when it is the same content).
    pub async fn push_template(&self, body: Value, user: &str) -> Result<Pushed, TemplateError> {
        let template = Template::from_value(body).map_err(TemplateError::InvalidTemplate)?;
        self.store_template(template, user).await
    }

    /// Stores an already checked template (see [`Engine::push_template`]).
    pub async fn store_template(
        &self,
        template: Template,
        user: &str,
    ) -> Result<Pushed, TemplateError> {
        let (row, created) = self
            .store()
            .put_template_version(NewTemplateVersion {
                name: template.name.clone(),
                content: template.canonical(),
                created_at: now_micros(),
                created_by: user.to_owned(),
            })
            .await?;
        Ok(Pushed {
            version: version_of(row)?,
            created,
        })
    }

    /// The latest version of each live template, by name.
    pub async fn templates(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<TemplateVersion>, TemplateError> {
        let page = self.store().list_templates(limit, cursor).await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(version_of)
                .collect::<Result<_, _>>()?,
            next_cursor: page.next_cursor,
        })
    }

    /// A template's latest version and its version list (also of a deleted template).
    pub async fn template(&self, name: &str) -> Result<TemplateDetail, TemplateError> {
        let rows = self.store().template_versions(name).await?;
        let versions = rows
            .iter()
            .map(|r| VersionInfo {
                version: r.version,
                created_at: cairn_core::Timestamp::from_micros(r.created_at),
                created_by: r.created_by.clone(),
            })
            .collect();
        let latest = rows
            .into_iter()
            .last()
            .ok_or_else(|| TemplateError::NotFound(name.to_owned()))?;
        Ok(TemplateDetail {
            latest: version_of(latest)?,
            versions,
        })
    }

    /// One version of a template (the latest when `None`), deleted or not.
    pub async fn template_version(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<TemplateVersion, TemplateError> {
        match self.store().get_template(name, version).await? {
            Some(row) => version_of(row),
            None => match version {
                Some(version) if self.store().get_template(name, None).await?.is_some() => {
                    Err(TemplateError::VersionNotFound {
                        name: name.to_owned(),
                        version,
                    })
                }
                _ => Err(TemplateError::NotFound(name.to_owned())),
            },
        }
    }

    /// Hides a template from listings and new plans, keeping every version.
    pub async fn delete_template(&self, name: &str) -> Result<(), TemplateError> {
        if self.store().delete_template(name, now_micros()).await? {
            Ok(())
        } else {
            Err(TemplateError::NotFound(name.to_owned()))
        }
    }

    /// Makes a plan of a live template's version: the inputs checked (every failing one named)
    /// with the schema's defaults filled in; the plan records the template and version. Started
    /// unless `start` is `Some(false)`.
    pub async fn instantiate(
        &self,
        name: &str,
        req: Instantiate,
        user: &str,
    ) -> Result<Arc<PlanState>, TemplateError> {
        let version = self.template_version(name, req.version).await?;
        if version.deleted_at.is_some() {
            return Err(TemplateError::Deleted(name.to_owned()));
        }
        let plan = version
            .template()
            .instantiate(version.version, req.inputs, req.plan_id)
            .map_err(TemplateError::InvalidInputs)?;
        if req.start == Some(false) {
            return Ok(Arc::new(self.register(plan, user).await?));
        }
        Ok(self.register_and_start(plan, user, None).await?)
    }

    /// The structural diff of a template between two versions (deleted or not). `to` defaults
    /// to the latest, `from` to the version before `to` (`to` itself when it is the first).
    pub async fn template_diff(
        &self,
        name: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<TemplateDiff, TemplateError> {
        let after = self.template_version(name, to).await?;
        let from = from.unwrap_or(after.version.saturating_sub(1).max(1));
        let before = if from == after.version {
            after.clone()
        } else {
            self.template_version(name, Some(from)).await?
        };
        Ok(TemplateDiff {
            name: name.to_owned(),
            from: before.version,
            to: after.version,
            diff: before.template().diff(&after.template()),
        })
    }

    /// Registers a plan and starts it in one commit: its registration, its start and its first
    /// steps' starts are one append, and this node drives it from there (the actor carries out
    /// the start's actions). Every guarantee of [`Engine::register`] then [`Engine::start`]
    /// holds: the answer comes once it is all durable, and a crash after the commit leaves a
    /// running plan that recovery continues.
    pub async fn register_and_start(
        &self,
        mut plan: Plan,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Arc<PlanState>, EngineError> {
        plan.validate()?;
        let plan_id = plan
            .plan_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        plan.plan_id = Some(plan_id.clone());
        let inner = self.inner();
        let now = inner.now();
        let ctx = Ctx { now, actor };
        let mut state = PlanState::empty(&plan_id);
        let registered = cairn_core::handle(
            &mut state,
            Command::Register {
                definition: plan,
                origin: None,
            },
            ctx,
        )?;
        let route = |agent_type: &str| crate::actor::route(inner, agent_type);
        let started = cairn_core::decide::handle_starting(
            &mut state,
            Command::Start { reason },
            ctx,
            if inner.opts.execute {
                Starts::Route(&route)
            } else {
                Starts::None
            },
        )?;
        let events: Vec<_> = registered
            .events
            .into_iter()
            .chain(started.events)
            .collect();
        // The lease is taken in the same transaction where the store can (SQLite), so the
        // plan is driven from this one commit.
        let (stored, fence) = self
            .store()
            .create_plan_leased(
                CreatePlan {
                    plan_id: plan_id.clone(),
                    created_at: now.as_micros(),
                    state: state.status.as_str().to_owned(),
                    events: events.iter().map(crate::convert::to_new).collect(),
                    reviews: crate::reviews::all(&state),
                },
                &inner.opts.node_id,
                inner.opts.lease_ms,
                now.as_micros(),
            )
            .await?;
        let published: Vec<Arc<cairn_core::Event>> = events
            .into_iter()
            .zip(stored)
            .map(|(mut e, s)| {
                e.id = s.id;
                Arc::new(e)
            })
            .collect();
        inner.publish(published);
        let answer = Arc::new(state.clone());
        // The plan is durable and running from here. Should this node fail to take it (its
        // lease cannot be claimed now, or a read loaded it meanwhile), recovery sends its
        // attempts (same attempt, same invocation, same key), as after a restart.
        let claimed = match fence {
            Some(fence) => Ok(fence),
            None => {
                self.store()
                    .claim(
                        &plan_id,
                        &inner.opts.node_id,
                        inner.opts.lease_ms,
                        now.as_micros(),
                    )
                    .await
            }
        };
        let driven = match claimed {
            Ok(fence) => self.drive_new(state, fence, started.actions)?,
            Err(_) => false,
        };
        if !driven {
            self.recover_plan(&plan_id).await?;
        }
        Ok(answer)
    }

    /// Adds to an `upgrade` request the plan's template rendered at the version the plan
    /// records and at the target version, with the plan's inputs (the core reads no store), or
    /// why they cannot be (an unknown version, inputs the new version refuses): the core then
    /// records the refusal like any refused intervention. Other requests are left as they are.
    pub(crate) async fn with_upgrade_source(
        &self,
        plan_id: &str,
        mut request: InterventionRequest,
    ) -> Result<InterventionRequest, EngineError> {
        let InterventionKind::Upgrade { template_version } = request.kind else {
            return Ok(request);
        };
        let state = self.state(plan_id).await?;
        let Some(current) = state.template.clone() else {
            // The core refuses it, naming why.
            return Ok(request);
        };
        let refused = |kind, message: String| UpgradeSource::Refused {
            refusal: Refusal::new(kind, message),
        };
        let render = |version: &TemplateVersion| {
            version.template().instantiate(
                version.version,
                state.inputs.clone(),
                Some(plan_id.to_owned()),
            )
        };
        let source = match (
            self.template_version(&current.name, Some(current.version))
                .await,
            self.template_version(&current.name, Some(template_version))
                .await,
        ) {
            (Err(TemplateError::Engine(e)), _) | (_, Err(TemplateError::Engine(e))) => {
                return Err(e)
            }
            (Err(e), _) => refused(
                RefusalKind::Conflict,
                format!(
                    "the plan's template version cannot be read ({e}); an upgrade needs it to know what the plan was made of"
                ),
            ),
            (_, Err(e)) => refused(RefusalKind::Invalid, e.to_string()),
            (Ok(_), Ok(to)) if to.deleted_at.is_some() => refused(
                RefusalKind::Conflict,
                format!("template {} was deleted; push it again to upgrade plans to it", current.name),
            ),
            (Ok(from), Ok(to)) => match (render(&from), render(&to)) {
                (Ok(from), Ok(to)) => UpgradeSource::Ready {
                    from: Box::new(from),
                    to: Box::new(to),
                },
                (Err(e), _) => refused(
                    RefusalKind::Conflict,
                    format!(
                        "the plan no longer renders from version {} of template {}: {e}",
                        current.version, current.name
                    ),
                ),
                (_, Err(e)) => refused(
                    RefusalKind::Invalid,
                    format!(
                        "the plan's inputs do not fit version {template_version} of template {}: {e}",
                        current.name
                    ),
                ),
            },
        };
        request.upgrade = Some(Box::new(source));
        Ok(request)
    }
}
