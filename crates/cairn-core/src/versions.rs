//! A plan's definition history, folded from its log.
//!
//! Every change of a plan's definition bumps its version, and every such change is already an
//! event of the log: the registration (version 1, or the source's version for a fork or an
//! import), an applied intervention that changed the definition (`modify_step`, `add_step`,
//! `remove_step`, `reorder_steps`), or a restore (which brings a checkpoint's definition back as
//! a new version). So the history needs no stored data of its own: [`VersionFold`] replays the
//! log and notes each event after which the version changed, with its cause; the definition at a
//! version is the fold's state at that point.

use serde::{Deserialize, Serialize};

use crate::diff::Diff;
use crate::event::{Event, EventKind};
use crate::plan::Plan;
use crate::state::PlanState;
use crate::time::Timestamp;

/// One version of a plan's definition and what made it.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanVersion {
    pub version: u64,
    /// The log position of the event that made it.
    pub seq: u64,
    pub at: Timestamp,
    /// Who made it: the intervention's or restore's user, or who registered the plan.
    pub user: String,
    pub cause: Cause,
}

/// What made a version.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    /// `registered`, `forked`, `imported`, `restore`, or the intervention's type (`modify_step`,
    /// `add_step`, `remove_step`, `reorder_steps`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The intervention (`iv-<seq>`), for a version an intervention made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervention_id: Option<String>,
    /// The step the intervention was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// The checkpoint restored, or the one a fork or import started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
    /// The plan a fork or import came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Cause {
    fn of(kind: impl Into<String>) -> Cause {
        Cause {
            kind: kind.into(),
            intervention_id: None,
            step_id: None,
            checkpoint_id: None,
            source_plan_id: None,
            reason: None,
        }
    }
}

/// Replays a plan's log, oldest first, noting every version of its definition.
#[derive(Debug, Clone)]
pub struct VersionFold {
    state: PlanState,
    versions: Vec<PlanVersion>,
}

impl VersionFold {
    pub fn new(plan_id: &str) -> VersionFold {
        VersionFold {
            state: PlanState::empty(plan_id),
            versions: Vec::new(),
        }
    }

    /// Applies the next event; answers the version it made, if it made one.
    pub fn apply(&mut self, event: &Event) -> Option<&PlanVersion> {
        let before = self.state.version;
        let registered = self.state.seq == 0;
        self.state.apply(event);
        if !registered && self.state.version == before {
            return None;
        }
        let cause = match &event.kind {
            EventKind::PlanRegistered { origin, .. } => match origin {
                Some(o) => Cause {
                    checkpoint_id: Some(o.checkpoint_id.clone()),
                    source_plan_id: Some(o.plan_id.clone()),
                    ..Cause::of(match o.how.as_str() {
                        "fork" => "forked",
                        "import" => "imported",
                        other => other,
                    })
                },
                None => Cause::of("registered"),
            },
            EventKind::InterventionApplied { intervention, .. } => Cause {
                intervention_id: Some(intervention.intervention_id.clone())
                    .filter(|i| !i.is_empty()),
                step_id: intervention.step_id.clone(),
                reason: intervention.reason.clone(),
                ..Cause::of(intervention.kind.clone())
            },
            EventKind::CheckpointRestored {
                checkpoint_id,
                reason,
                ..
            } => Cause {
                checkpoint_id: Some(checkpoint_id.clone()),
                reason: reason.clone(),
                ..Cause::of("restore")
            },
            other => Cause::of(other.type_name()),
        };
        let user = match &event.kind {
            EventKind::InterventionApplied { intervention, .. } => intervention.user.clone(),
            _ => event.actor.clone(),
        };
        self.versions.push(PlanVersion {
            version: self.state.version,
            seq: event.seq,
            at: event.at,
            user,
            cause,
        });
        self.versions.last()
    }

    /// The versions so far, oldest first.
    pub fn versions(&self) -> &[PlanVersion] {
        &self.versions
    }

    pub fn into_versions(self) -> Vec<PlanVersion> {
        self.versions
    }

    /// The plan's version after the events applied so far.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The definition after the events applied so far.
    pub fn definition(&self) -> Plan {
        self.state.definition()
    }
}

/// A plan's versions, oldest first (`GET /v1/plans/{id}/versions`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionList {
    pub plan_id: String,
    pub versions: Vec<PlanVersion>,
}

/// A version of a plan's definition with the definition itself
/// (`GET /v1/plans/{id}/versions/{v}`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionedDefinition {
    #[serde(flatten)]
    pub version: PlanVersion,
    pub definition: Plan,
}

/// The diff between two versions of a plan's definition (`GET /v1/plans/{id}/diff`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanDiff {
    pub plan_id: String,
    pub from: u64,
    pub to: u64,
    pub diff: Diff,
}
