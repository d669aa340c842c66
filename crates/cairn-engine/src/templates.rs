//! Templates over the engine's store: push a version, read them, make plans from them. The
//! checks are `cairn_core::template`'s; here they meet the store and the engine, so the server
//! and a local CLI answer the same.

use std::sync::Arc;

use cairn_core::template::{Pushed, Template, TemplateDetail, TemplateVersion, VersionInfo};
use cairn_core::view::Page;
use cairn_core::{Invalid, PlanState};
use cairn_store::{NewTemplateVersion, StoreError, TemplateRow};
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
        let state = self.register(plan, user).await?;
        if req.start == Some(false) {
            return Ok(Arc::new(state));
        }
        Ok(self.start(&state.plan_id, user, None).await?)
    }
}
