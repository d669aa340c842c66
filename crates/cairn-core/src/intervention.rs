//! Interventions: an operator changing a plan while it exists.
//!
//! [`mutate`] is the one function that applies an intervention to a state. `decide` runs it on a
//! copy to validate the request and compute the diff; the fold runs it again on the live state
//! when it applies `intervention_applied`. One function, so the two can never disagree.

use crate::fast::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Micros;
use crate::gate::{GateFeedback, GATE_USER, TIMEOUT_USER};
use crate::plan::{Invalid, StepDef};
use crate::review::{ReviewOutcome, Vote, VoteDecision};
use crate::state::{PauseReason, PlanState, PlanStatus, Step, StepRecord, StepStatus};
use crate::suggest::did_you_mean;
use crate::{Refusal, RefusalKind};

/// What an operator asks. Serialised with a `type` tag, e.g. `{"type": "skip_step", "step_id": "s"}`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InterventionKind {
    SkipStep {
        step_id: String,
        /// Acts on the step's compensation in a rollback that failed (absent: false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        compensation: bool,
    },
    RetryStep {
        step_id: String,
        /// Acts on the step's compensation in a rollback that failed (absent: false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        compensation: bool,
    },
    ModifyStep {
        step_id: String,
        /// Fields of the step to change (a JSON merge patch).
        #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
        patch: Value,
    },
    AddStep {
        /// The new step, as a step of a plan document.
        #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
        step: Value,
        /// `insert_after` and `insert_before` are the prototype's names, read as aliases.
        #[serde(
            default,
            alias = "insert_after",
            skip_serializing_if = "Option::is_none"
        )]
        after: Option<String>,
        #[serde(
            default,
            alias = "insert_before",
            skip_serializing_if = "Option::is_none"
        )]
        before: Option<String>,
    },
    RemoveStep {
        step_id: String,
    },
    ReorderSteps {
        order: Vec<String>,
    },
    RerunFrom {
        step_id: String,
    },
    /// A vote to accept the attempt under review (the review names it; a decision for another
    /// attempt is stale).
    ApproveStep {
        step_id: String,
        /// The attempt the reviewer saw; absent: the one under review now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        /// Replaces the attempt's output (a reason is then required).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
        output: Option<Value>,
    },
    /// Rejects the attempt under review (a reason is required): the step fails, or with
    /// `retry` runs again with the reason as its `gate_feedback`.
    RejectStep {
        step_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retry: bool,
    },
    /// The operator supplies the step's result by hand.
    CompleteStep {
        step_id: String,
        output: Value,
    },
    /// Moves a plan made from a template to another version of that template (see
    /// [`crate::upgrade`]).
    Upgrade {
        template_version: u64,
    },
}

impl InterventionKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            InterventionKind::SkipStep { .. } => "skip_step",
            InterventionKind::RetryStep { .. } => "retry_step",
            InterventionKind::ModifyStep { .. } => "modify_step",
            InterventionKind::AddStep { .. } => "add_step",
            InterventionKind::RemoveStep { .. } => "remove_step",
            InterventionKind::ReorderSteps { .. } => "reorder_steps",
            InterventionKind::RerunFrom { .. } => "rerun_from",
            InterventionKind::ApproveStep { .. } => "approve_step",
            InterventionKind::RejectStep { .. } => "reject_step",
            InterventionKind::CompleteStep { .. } => "complete_step",
            InterventionKind::Upgrade { .. } => "upgrade",
        }
    }

    /// The step the intervention is about (for `add_step`, the new step's id).
    pub fn step_id(&self) -> Option<String> {
        match self {
            InterventionKind::SkipStep { step_id, .. }
            | InterventionKind::RetryStep { step_id, .. }
            | InterventionKind::ModifyStep { step_id, .. }
            | InterventionKind::RemoveStep { step_id }
            | InterventionKind::RerunFrom { step_id }
            | InterventionKind::ApproveStep { step_id, .. }
            | InterventionKind::RejectStep { step_id, .. }
            | InterventionKind::CompleteStep { step_id, .. } => Some(step_id.clone()),
            InterventionKind::AddStep { step, .. } => step
                .get("step_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            InterventionKind::ReorderSteps { .. } | InterventionKind::Upgrade { .. } => None,
        }
    }
}

/// An intervention request with its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterventionRequest {
    pub kind: InterventionKind,
    pub expected_version: Option<u64>,
    pub reason: Option<String>,
    pub dry_run: bool,
    /// For `upgrade`: the plan's template rendered at both versions, which the caller (the
    /// engine, which reads the store) adds; absent in a request as sent. Never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<Box<crate::upgrade::UpgradeSource>>,
}

impl InterventionRequest {
    /// Parses the HTTP/CLI body: `{"type", "step_id"?, "expected_version"?, "reason"?,
    /// "dry_run"?, ...}`. A `user` field is accepted and ignored (the caller's identity is not
    /// the caller's to claim).
    pub fn from_body(body: Value) -> Result<InterventionRequest, Invalid> {
        let Value::Object(mut map) = body else {
            return Err(Invalid::one("", "an intervention must be a JSON object"));
        };
        map.remove("user");
        let expected_version = match map.remove("expected_version") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                Invalid::one("expected_version", "must be a non-negative integer")
            })?),
        };
        let reason = match map.remove("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= 4096 => Some(s),
            Some(Value::String(_)) => {
                return Err(Invalid::one("reason", "is longer than 4096 bytes"))
            }
            Some(_) => return Err(Invalid::one("reason", "must be a string")),
        };
        let dry_run = match map.remove("dry_run") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(Invalid::one("dry_run", "must be true or false")),
        };
        if !map.contains_key("type") {
            return Err(Invalid::one(
                "type",
                "missing; one of skip_step, retry_step, modify_step, add_step, remove_step, reorder_steps, rerun_from, complete_step, approve_step, reject_step, upgrade",
            ));
        }
        // Strictness belongs to input: the stored type reads leniently (see `crate::log`), so
        // unknown fields are refused here, by name.
        if let Some(known) = map.get("type").and_then(Value::as_str).and_then(fields_of) {
            for key in map.keys().filter(|k| *k != "type") {
                if !known.contains(&key.as_str()) {
                    let hint = did_you_mean(key, known.iter().copied());
                    let message = if hint.is_empty() {
                        format!("unknown field `{key}` (known: {})", known.join(", "))
                    } else {
                        format!("unknown field `{key}`{hint}")
                    };
                    return Err(Invalid::one(key.clone(), message));
                }
            }
        }
        let kind: InterventionKind = serde_json::from_value(Value::Object(map))
            .map_err(|e| Invalid::one("", format!("not a valid intervention: {e}")))?;
        Ok(InterventionRequest {
            kind,
            expected_version,
            reason,
            dry_run,
            upgrade: None,
        })
    }
}

/// The fields of an intervention of type `type_name` besides `type` and the envelope (`None` for
/// an unknown type, which deserialisation names).
fn fields_of(type_name: &str) -> Option<&'static [&'static str]> {
    Some(match type_name {
        "skip_step" | "retry_step" => &["step_id", "compensation"],
        "remove_step" | "rerun_from" => &["step_id"],
        "approve_step" => &["step_id", "attempt", "output"],
        "reject_step" => &["step_id", "attempt", "retry"],
        "modify_step" => &["step_id", "patch"],
        "add_step" => &["step", "after", "before", "insert_after", "insert_before"],
        "reorder_steps" => &["order"],
        "complete_step" => &["step_id", "output"],
        "upgrade" => &["template_version"],
        _ => return None,
    })
}

/// `applied` or `failed`; a dry run answers `would_apply` or `would_fail` (and is not recorded).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionStatus {
    Applied,
    Failed,
    WouldApply,
    WouldFail,
}

impl InterventionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InterventionStatus::Applied => "applied",
            InterventionStatus::Failed => "failed",
            InterventionStatus::WouldApply => "would_apply",
            InterventionStatus::WouldFail => "would_fail",
        }
    }
}

/// One field that an intervention changed.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub before: Value,
    pub after: Value,
}

/// The record of an intervention, applied or refused.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intervention {
    /// `iv-<seq>`, the log position of its record; empty (and left out of the JSON) for a dry
    /// run, which is not recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intervention_id: String,
    pub plan_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    #[serde(rename = "payload")]
    pub request: InterventionKind,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: Micros,
    pub status: InterventionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The plan version after the intervention (unchanged when refused).
    pub plan_version: u64,
    pub diff: Vec<Change>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

fn conflict(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalKind::Conflict, message)
}

fn forbidden(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalKind::Forbidden, message)
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalKind::Invalid, message)
}

fn find(state: &PlanState, step_id: &str) -> Result<usize, Refusal> {
    state.index_of(step_id).ok_or_else(|| {
        invalid(format!(
            "step {step_id} does not exist in plan {}",
            state.plan_id
        ))
    })
}

fn status_name(s: StepStatus) -> &'static str {
    s.as_str()
}

/// After retry, skip, rerun or complete on a failed or completed plan: if no failed step is left, the plan
/// pauses (reason `intervention`) so the operator resumes it when ready.
fn reopen_if_settled(state: &mut PlanState) {
    if matches!(state.status, PlanStatus::Failed | PlanStatus::Completed)
        && !state
            .steps
            .iter()
            .any(|s| s.rec.status == StepStatus::Failed)
    {
        state.status = PlanStatus::Paused;
        state.pause_reason = Some(PauseReason::Intervention);
        state.failure = None;
        state.drained = state.running_count() == 0;
        state.resume_at = None;
    }
}

fn revalidate(state: &PlanState) -> Result<(), Refusal> {
    state
        .definition()
        .validate()
        .map_err(|e| invalid(format!("the plan would be invalid: {e}")))
}

fn parse_step(value: &Value) -> Result<StepDef, Refusal> {
    StepDef::from_value(value).map_err(|e| invalid(format!("not a valid step: {e}")))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

const PATCHABLE: &[&str] = &[
    "action",
    "agent_type",
    "params",
    "retry",
    "timeout_ms",
    "when",
    "depends_on",
    "quality_gate",
    "pause_before",
    "pause_after",
];

/// Who asks for an intervention, and why: decisions on reviews depend on both.
#[derive(Debug, Clone, Copy)]
pub struct By<'a> {
    pub user: &'a str,
    pub reason: Option<&'a str>,
    /// What an `upgrade` moves between (see [`InterventionRequest::upgrade`]).
    pub upgrade: Option<&'a crate::upgrade::UpgradeSource>,
}

/// Is `user` one of the system's own users (`system:…`), which decide by rule, not by vote?
fn is_system(user: &str) -> bool {
    user == GATE_USER || user == TIMEOUT_USER
}

/// Applies an intervention to `state`. On `Err` the state may be half changed: callers run it on
/// a copy first (decide) and only replay accepted ones on the live state (fold).
pub fn mutate(
    state: &mut PlanState,
    kind: &InterventionKind,
    at: Micros,
    by: &By<'_>,
) -> Result<(), Refusal> {
    apply_kind(state, kind, at, by)?;
    // A review whose attempt no longer waits for it (skipped, modified, removed, rerun) is void.
    state.void_stale_reviews(at);
    Ok(())
}

/// `retry_step` / `skip_step` with `compensation: true`: on a plan whose rollback failed (failed
/// or cancelled), the failed compensation runs again (a fresh try of its retry policy) or is
/// skipped, and the rollback continues from there: the plan runs again until it ends.
fn act_on_compensation(state: &mut PlanState, step_id: &str, retry: bool) -> Result<(), Refusal> {
    let failed = state
        .rollback
        .as_ref()
        .is_some_and(|r| r.status == crate::rollback::RollbackStatus::Failed);
    if !failed {
        return Err(conflict(format!(
            "plan {} has no failed rollback; only a compensation that stopped a rollback can be retried or skipped",
            state.plan_id
        )));
    }
    let i = find(state, step_id)?;
    let comp = state.steps[i]
        .rec
        .compensation
        .as_mut()
        .filter(|c| c.status == crate::rollback::CompensationStatus::Failed);
    let Some(comp) = comp else {
        return Err(conflict(format!(
            "the compensation of step {step_id} has not failed; only the failed compensation can be retried or skipped"
        )));
    };
    if retry {
        comp.status = crate::rollback::CompensationStatus::Pending;
        comp.run_attempts = 0;
        comp.retry_at = None;
    } else {
        comp.status = crate::rollback::CompensationStatus::Skipped;
        comp.retry_at = None;
    }
    if let Some(r) = &mut state.rollback {
        r.status = crate::rollback::RollbackStatus::Running;
        if !retry {
            r.pending.retain(|p| p != step_id);
        }
    }
    state.status = PlanStatus::Running;
    state.pause_reason = None;
    state.resume_at = None;
    state.drained = false;
    Ok(())
}

fn apply_kind(
    state: &mut PlanState,
    kind: &InterventionKind,
    at: Micros,
    by: &By<'_>,
) -> Result<(), Refusal> {
    match kind {
        InterventionKind::SkipStep {
            step_id,
            compensation: true,
        } => return act_on_compensation(state, step_id, false),
        InterventionKind::RetryStep {
            step_id,
            compensation: true,
        } => return act_on_compensation(state, step_id, true),
        _ => {}
    }
    if state.status == PlanStatus::Cancelled {
        return Err(conflict(format!(
            "plan {} is cancelled; a cancelled plan cannot be changed",
            state.plan_id
        )));
    }
    let structural = matches!(
        kind,
        InterventionKind::ModifyStep { .. }
            | InterventionKind::AddStep { .. }
            | InterventionKind::RemoveStep { .. }
            | InterventionKind::ReorderSteps { .. }
            | InterventionKind::Upgrade { .. }
    );
    // A failed step may be modified in a failed plan (then retried); otherwise a terminal plan's
    // definition is settled.
    let modify_in_failed =
        matches!(kind, InterventionKind::ModifyStep { .. }) && state.status == PlanStatus::Failed;
    if structural && state.status.is_terminal() && !modify_in_failed {
        return Err(conflict(format!(
            "plan {} is {}; its definition can no longer change (retry_step, skip_step or rerun_from reopen it)",
            state.plan_id,
            state.status.as_str()
        )));
    }
    match kind {
        InterventionKind::SkipStep { step_id, .. } => {
            let i = find(state, step_id)?;
            let rec = &mut state.steps[i].rec;
            if !rec.status.may_skip() {
                return Err(conflict(format!(
                    "step {step_id} is {}; only a pending, failed or awaiting_review step can be skipped",
                    status_name(rec.status)
                )));
            }
            rec.status = StepStatus::Skipped;
            rec.retry_at = None;
            reopen_if_settled(state);
        }
        InterventionKind::RetryStep { step_id, .. } => {
            let i = find(state, step_id)?;
            let rec = &mut state.steps[i].rec;
            if !rec.status.may_retry() {
                return Err(conflict(format!(
                    "step {step_id} is {}; only a failed, cancelled or completed step can be retried",
                    status_name(rec.status)
                )));
            }
            // A gate retry keeps counting against the gate's max_retries and carries the
            // verdict to the next attempt; an operator's retry starts the gate afresh.
            let kept = (rec.gate_retries, rec.gate_feedback.take());
            rec.rerun();
            if by.user == GATE_USER {
                rec.gate_retries = kept.0 + 1;
                rec.gate_feedback = kept.1;
            }
            reopen_if_settled(state);
        }
        InterventionKind::RerunFrom { step_id } => {
            let i = find(state, step_id)?;
            let status = state.steps[i].rec.status;
            if !status.has_ended() {
                return Err(conflict(format!(
                    "step {step_id} is {}; rerun_from needs a step that has ended",
                    status_name(status)
                )));
            }
            let mut targets = state.downstream_of(i);
            targets.push(i);
            for j in targets {
                let rec = &mut state.steps[j].rec;
                if rec.status != StepStatus::Pending || rec.retry_at.is_some() {
                    rec.rerun();
                }
            }
            reopen_if_settled(state);
        }
        InterventionKind::ModifyStep { step_id, patch } => {
            let i = find(state, step_id)?;
            let status = state.steps[i].rec.status;
            if !status.may_modify() {
                return Err(conflict(format!(
                    "step {step_id} is {}; only a pending, failed or awaiting_review step can be modified",
                    status_name(status)
                )));
            }
            let Value::Object(fields) = patch else {
                return Err(invalid("patch must be a JSON object"));
            };
            if fields.is_empty() {
                return Err(invalid("patch is empty"));
            }
            for key in fields.keys() {
                if !PATCHABLE.contains(&key.as_str()) {
                    return Err(invalid(format!(
                        "patch field {key:?} cannot be modified; allowed: {}",
                        PATCHABLE.join(", ")
                    )));
                }
            }
            let mut doc = serde_json::to_value(&state.steps[i].def)
                .map_err(|e| invalid(format!("step {step_id}: {e}")))?;
            merge_patch(&mut doc, patch);
            let def = parse_step(&doc)?;
            let faults = def.check();
            if !faults.is_empty() {
                return Err(invalid(format!(
                    "the modified step is invalid: {}",
                    Invalid { faults }
                )));
            }
            state.steps[i].def = Arc::new(def);
            // The attempt under review was made under the old definition: the modified step
            // runs again (its review is voided).
            if status == StepStatus::AwaitingReview {
                state.steps[i].rec.rerun();
            }
            revalidate(state)?;
            state.version += 1;
        }
        InterventionKind::AddStep {
            step,
            after,
            before,
        } => {
            let def = parse_step(step)?;
            let faults = def.check();
            if !faults.is_empty() {
                return Err(invalid(format!(
                    "the new step is invalid: {}",
                    Invalid { faults }
                )));
            }
            if state.index_of(&def.step_id).is_some() {
                return Err(conflict(format!(
                    "step {} already exists in plan {}",
                    def.step_id, state.plan_id
                )));
            }
            let at = match (after, before) {
                (Some(_), Some(_)) => {
                    return Err(invalid("give one of after and before, not both"))
                }
                (Some(a), None) => find(state, a)? + 1,
                (None, Some(b)) => find(state, b)?,
                (None, None) => state.steps.len(),
            };
            let mut rec = StepRecord::new();
            if let Some(&(attempts, run)) = state.retired.get(&def.step_id) {
                rec.attempts = attempts;
                rec.run = run + 1;
            }
            state.steps.insert(
                at,
                Step {
                    def: Arc::new(def),
                    rec,
                },
            );
            revalidate(state)?;
            state.version += 1;
            if state.status == PlanStatus::Paused && state.pause_reason.is_none() {
                state.pause_reason = Some(PauseReason::Intervention);
            }
        }
        InterventionKind::RemoveStep { step_id } => {
            let i = find(state, step_id)?;
            let status = state.steps[i].rec.status;
            if !(status.may_move() || status == StepStatus::AwaitingReview) {
                return Err(conflict(format!(
                    "step {step_id} is {}; only a pending or awaiting_review step can be removed",
                    status_name(status)
                )));
            }
            if let Some(dependent) = state.steps.iter().find(|s| {
                s.def
                    .depends_on
                    .as_ref()
                    .is_some_and(|d| d.iter().any(|d| d == step_id))
            }) {
                return Err(conflict(format!(
                    "step {} depends on {step_id}; modify or remove it first",
                    dependent.def.step_id
                )));
            }
            if state.steps.len() == 1 {
                return Err(conflict("a plan needs at least one step"));
            }
            let removed = state.steps.remove(i);
            state.retired.insert(
                removed.def.step_id.clone(),
                (removed.rec.attempts, removed.rec.run),
            );
            revalidate(state)?;
            state.version += 1;
        }
        InterventionKind::ReorderSteps { order } => {
            let pending: Vec<usize> = (0..state.steps.len())
                .filter(|&i| state.steps[i].rec.status.may_move())
                .collect();
            let mut wanted: Vec<&str> = order.iter().map(String::as_str).collect();
            let mut have: Vec<&str> = pending
                .iter()
                .map(|&i| state.steps[i].def.step_id.as_str())
                .collect();
            wanted.sort_unstable();
            have.sort_unstable();
            if wanted != have {
                return Err(invalid(format!(
                    "order must be a permutation of the pending steps [{}]",
                    pending
                        .iter()
                        .map(|&i| state.steps[i].def.step_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let before = forward_deps(state);
            let mut moved: Vec<Step> = Vec::with_capacity(order.len());
            for id in order {
                if let Some(i) = state.index_of(id) {
                    moved.push(state.steps[i].clone());
                }
            }
            for (slot, step) in pending.iter().zip(moved) {
                state.steps[*slot] = step;
            }
            let after = forward_deps(state);
            if let Some((step, dep)) = after.iter().find(|v| !before.contains(v)) {
                return Err(invalid(format!(
                    "step {step} would come before {dep}, which it depends on"
                )));
            }
            revalidate(state)?;
            state.version += 1;
        }
        InterventionKind::CompleteStep { step_id, output } => {
            let i = find(state, step_id)?;
            let rec = &mut state.steps[i].rec;
            if !rec.status.may_complete() {
                return Err(conflict(format!(
                    "step {step_id} is {}; only a pending, queued, running or failed step can be completed by hand",
                    status_name(rec.status)
                )));
            }
            // As if its agent had answered: a running attempt stops counting (the engine stops
            // it, and its late result is recorded as ignored), dependents may run.
            rec.status = StepStatus::Completed;
            rec.output = Some(output.clone());
            rec.scores = None;
            rec.error = None;
            rec.retry_at = None;
            rec.ended_at = Some(at);
            reopen_if_settled(state);
        }
        InterventionKind::ApproveStep {
            step_id,
            attempt,
            output,
        } => decide_review(
            state,
            step_id,
            *attempt,
            Decided::Approve(output.as_ref()),
            at,
            by,
        )?,
        InterventionKind::RejectStep {
            step_id,
            attempt,
            retry,
        } => decide_review(
            state,
            step_id,
            *attempt,
            Decided::Reject { retry: *retry },
            at,
            by,
        )?,
        InterventionKind::Upgrade { template_version } => {
            crate::upgrade::apply(state, *template_version, by.upgrade)?;
            if state.status == PlanStatus::Paused && state.pause_reason.is_none() {
                state.pause_reason = Some(PauseReason::Intervention);
            }
        }
    }
    Ok(())
}

enum Decided<'a> {
    Approve(Option<&'a Value>),
    Reject { retry: bool },
}

/// A vote on the open review of `step_id`: refused (and so recorded as a failed intervention)
/// when it is malformed, stale, by someone who may not decide or who already voted. A quorum of
/// approvals completes the step with the attempt's output (or an approver's replacement); the
/// first rejection fails it or, with `retry`, runs it again with the reviewer's note. The
/// `system:timeout` user decides at once for the gate's `on_timeout`.
fn decide_review(
    state: &mut PlanState,
    step_id: &str,
    attempt: Option<u32>,
    decided: Decided<'_>,
    at: Micros,
    by: &By<'_>,
) -> Result<(), Refusal> {
    let verb = match decided {
        Decided::Approve(_) => "approve_step",
        Decided::Reject { .. } => "reject_step",
    };
    let reason = by.reason.filter(|r| !r.trim().is_empty());
    match decided {
        Decided::Approve(Some(_)) if reason.is_none() => {
            return Err(invalid(
                "approve_step with an output that replaces the attempt's needs a reason",
            ))
        }
        Decided::Reject { .. } if reason.is_none() => {
            return Err(invalid(
                "reject_step needs a reason (what is wrong with the result)",
            ))
        }
        _ => {}
    }
    let i = find(state, step_id)?;
    let status = state.steps[i].rec.status;
    let Some(review) = state.open_review(step_id).cloned() else {
        return Err(conflict(format!(
            "step {step_id} is {}; {verb} needs a step awaiting review, and no review of it is open",
            status_name(status)
        )));
    };
    if let Some(a) = attempt {
        if a != review.attempt {
            return Err(conflict(format!(
                "attempt {a} of step {step_id} is not under review (review {} is of attempt {}); the decision is stale",
                review.review_id, review.attempt
            )));
        }
    }
    let system = is_system(by.user);
    let policy = state.steps[i]
        .def
        .quality_gate
        .as_ref()
        .map(|g| g.review.clone())
        .unwrap_or_default();
    if !system {
        if !policy.reviewers.is_empty() && !policy.reviewers.iter().any(|r| r == by.user) {
            return Err(forbidden(format!(
                "{} may not decide review {} of step {step_id}; its reviewers are {}",
                by.user,
                review.review_id,
                policy.reviewers.join(", ")
            )));
        }
        if matches!(decided, Decided::Approve(_))
            && policy.prevent_self_review
            && state.started_by.as_deref() == Some(by.user)
        {
            return Err(forbidden(format!(
                "{} started plan {} and may not approve its own review {} (prevent_self_review)",
                by.user, state.plan_id, review.review_id
            )));
        }
        if review.voted(by.user) {
            return Err(conflict(format!(
                "{} already voted on review {} of step {step_id}; a vote counts once",
                by.user, review.review_id
            )));
        }
    }
    let (decision, output, retry) = match decided {
        Decided::Approve(output) => (VoteDecision::Approve, output.cloned(), false),
        Decided::Reject { retry } => (VoteDecision::Reject, None, retry),
    };
    let vote = Vote {
        user: by.user.to_owned(),
        decision,
        reason: by.reason.map(str::to_owned),
        at,
        output,
        retry,
    };
    let quorum = review.quorum.max(1) as usize;
    let Some(open) = state.open_review_mut(step_id) else {
        return Ok(());
    };
    open.votes.push(vote);
    let closes = system || decision == VoteDecision::Reject || open.approvals() >= quorum;
    if !closes {
        return Ok(());
    }
    let outcome = match (system, decision) {
        (true, _) => ReviewOutcome::TimedOut,
        (false, VoteDecision::Approve) => ReviewOutcome::Approved,
        (false, VoteDecision::Reject) => ReviewOutcome::Rejected,
    };
    open.close(outcome, at);
    let approved_output = open
        .votes
        .iter()
        .rev()
        .find_map(|v| v.output.clone())
        .unwrap_or_else(|| open.output.clone());
    let rec = &mut state.steps[i].rec;
    match decision {
        VoteDecision::Approve => {
            rec.status = StepStatus::Completed;
            rec.output = Some(approved_output);
            rec.scores = Some(Box::new(review.scores.clone()));
            rec.error = None;
            rec.ended_at = Some(at);
            rec.gate_feedback = None;
        }
        VoteDecision::Reject if retry => {
            rec.rerun();
            rec.gate_feedback = Some(Box::new(GateFeedback {
                attempt: review.attempt,
                failed: review.failed.clone(),
                note: by.reason.map(str::to_owned),
                reviewer: Some(by.user.to_owned()),
            }));
        }
        VoteDecision::Reject => {
            rec.status = StepStatus::Failed;
            rec.error = Some(match by.reason {
                Some(r) => format!("rejected by {}: {r}", by.user),
                None => format!("rejected by {}", by.user),
            });
            rec.ended_at = Some(at);
        }
    }
    Ok(())
}

/// Pairs (step, dependency) where a step comes before a step it explicitly depends on.
fn forward_deps(state: &PlanState) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (pos, s) in state.steps.iter().enumerate() {
        for dep in s.def.depends_on.iter().flatten() {
            if state.index_of(dep).is_some_and(|d| d > pos) {
                out.push((s.def.step_id.clone(), dep.clone()));
            }
        }
    }
    out
}

/// The plan's own fields that interventions can change, as a JSON object to diff.
fn head(state: &PlanState) -> Value {
    let mut view = Map::new();
    view.insert("status".into(), state.status.as_str().into());
    view.insert("version".into(), state.version.into());
    view.insert("template".into(), serde_json::json!(state.template));
    view.insert("inputs".into(), state.inputs.clone());
    Value::Object(view)
}

/// The diffable view of the steps `show` keeps (the others are equal in both states compared,
/// so leaving them out changes no diff and keeps a large plan's diff cheap), by id.
fn steps_view(state: &PlanState, show: impl Fn(&str) -> bool) -> Value {
    let mut steps = Map::new();
    for s in state.steps.iter().filter(|s| show(&s.def.step_id)) {
        let mut v = serde_json::to_value(&s.def).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("step_id");
            m.insert(
                "status".into(),
                Value::String(status_name(s.rec.status).into()),
            );
            m.insert("run".into(), Value::from(s.rec.run));
        }
        steps.insert(s.def.step_id.clone(), v);
    }
    Value::Object(steps)
}

/// Every field that differs between two states, as `path: before -> after`: the plan's own
/// fields (`status`, `version`, `template`, `inputs.…`), then `order` (the step ids in order,
/// whole, when they changed), then `steps.<id>.<field>`.
///
/// Linear in the plan's size: steps are compared by position when the order did not change
/// (most interventions), else through an index by id; only the steps that differ are turned
/// into JSON, and the order's lists are made once, for the change that carries them.
pub fn diff(before: &PlanState, after: &PlanState) -> Vec<Change> {
    fn by_id(s: &PlanState) -> HashMap<&str, &Step> {
        s.steps
            .iter()
            .map(|s| (s.def.step_id.as_str(), s))
            .collect()
    }
    fn order(s: &PlanState) -> Value {
        s.steps.iter().map(|s| s.def.step_id.as_str()).collect()
    }
    let same_order = before.same_order(after);
    // Steps added, changed or removed; every other step is equal in both.
    let changed: HashSet<&str> = if same_order {
        before
            .steps
            .iter()
            .zip(&after.steps)
            .filter(|(b, a)| b != a)
            .map(|(_, a)| a.def.step_id.as_str())
            .collect()
    } else {
        let (was, is) = (by_id(before), by_id(after));
        after
            .steps
            .iter()
            .filter(|s| was.get(s.def.step_id.as_str()) != Some(s))
            .chain(
                before
                    .steps
                    .iter()
                    .filter(|s| !is.contains_key(s.def.step_id.as_str())),
            )
            .map(|s| s.def.step_id.as_str())
            .collect()
    };
    let show = |id: &str| changed.contains(id);
    let mut out = Vec::new();
    diff_values("", &head(before), &head(after), &mut out);
    if !same_order {
        out.push(Change {
            path: "order".to_owned(),
            before: order(before),
            after: order(after),
        });
    }
    diff_values(
        "steps",
        &steps_view(before, show),
        &steps_view(after, show),
        &mut out,
    );
    out
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(&p, va, y.get(k).unwrap_or(&Value::Null), out);
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    diff_values(&p, &Value::Null, vb, out);
                }
            }
        }
        _ if a != b => out.push(Change {
            path: path.to_owned(),
            before: a.clone(),
            after: b.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The diff as it was made before it compared steps by position and made the order's lists
    /// once: one JSON view of each whole state, order included, diffed field by field.
    fn diff_of_whole_views(before: &PlanState, after: &PlanState) -> Vec<Change> {
        fn view(state: &PlanState, show: impl Fn(&str) -> bool, order: bool) -> Value {
            let mut view = match head(state) {
                Value::Object(m) => m,
                _ => unreachable!("the head is an object"),
            };
            if order {
                view.insert(
                    "order".into(),
                    state.steps.iter().map(|s| s.def.step_id.as_str()).collect(),
                );
            }
            view.insert("steps".into(), steps_view(state, show));
            Value::Object(view)
        }
        let ids = |s: &PlanState| -> Vec<String> {
            s.steps.iter().map(|s| s.def.step_id.clone()).collect()
        };
        let changed: HashSet<String> = after
            .steps
            .iter()
            .filter(|s| before.steps.iter().find(|b| b.def.step_id == s.def.step_id) != Some(s))
            .chain(
                before
                    .steps
                    .iter()
                    .filter(|s| !after.steps.iter().any(|a| a.def.step_id == s.def.step_id)),
            )
            .map(|s| s.def.step_id.clone())
            .collect();
        let show = |id: &str| changed.contains(id);
        let order = ids(before) != ids(after);
        let mut out = Vec::new();
        diff_values(
            "",
            &view(before, show, order),
            &view(after, show, order),
            &mut out,
        );
        out
    }

    #[test]
    fn a_diff_lists_the_same_changes_in_the_same_order_as_a_diff_of_whole_views() {
        let definition = crate::Plan::parse(
            "max_parallel: 1
steps:
  - {step_id: a, action: x, agent_type: t, params: {n: 1}}
  - {step_id: b, action: x, agent_type: t, params: {n: 2}, depends_on: [a]}
  - {step_id: c, action: x, agent_type: t}
  - {step_id: d, action: x, agent_type: t, params: {deep: {k: [1, 2]}}}
  - {step_id: e, action: x, agent_type: t}
",
            crate::Format::Yaml,
        )
        .expect("the plan is valid");
        let now = crate::Timestamp::from_micros(1_000_000);
        let ctx = || crate::decide::Ctx {
            now,
            actor: "alice",
        };
        let mut state = PlanState::empty("p");
        crate::decide::handle(
            &mut state,
            crate::decide::Command::Register {
                definition,
                origin: None,
            },
            ctx(),
        )
        .expect("registered");
        crate::decide::handle(
            &mut state,
            crate::decide::Command::Start { reason: None },
            ctx(),
        )
        .expect("started");
        let by = By {
            user: "alice",
            reason: None,
            upgrade: None,
        };
        let requests = [
            json!({"type": "add_step", "step": {"step_id": "f", "action": "x", "agent_type": "t"}}),
            json!({"type": "add_step", "after": "b", "step": {"step_id": "g", "action": "x", "agent_type": "t", "params": {"q": "?"}}}),
            json!({"type": "add_step", "before": "a", "step": {"step_id": "h", "action": "x", "agent_type": "t"}}),
            json!({"type": "remove_step", "step_id": "e"}),
            json!({"type": "reorder_steps", "order": ["e", "c", "b", "d"]}),
            json!({"type": "skip_step", "step_id": "c"}),
            json!({"type": "modify_step", "step_id": "d", "patch": {"params": {"deep": {"k": [3]}, "new": true}}}),
            json!({"type": "modify_step", "step_id": "e", "patch": {"action": "y"}}),
        ];
        let mut compared = 0;
        for body in requests {
            let request = InterventionRequest::from_body(body.clone()).expect("a valid request");
            let mut after = state.clone();
            mutate(&mut after, &request.kind, now, &by)
                .unwrap_or_else(|e| panic!("{body} was refused: {}", e.message));
            let changes = diff(&state, &after);
            assert!(!changes.is_empty(), "{body} changed nothing");
            assert_eq!(changes, diff_of_whole_views(&state, &after), "{body}");
            // Applied one after another too: the next request meets a changed plan.
            let next = diff(&after, &state);
            assert_eq!(next, diff_of_whole_views(&after, &state), "{body}, undone");
            compared += 1;
        }
        assert_eq!(compared, 8);
        assert!(diff(&state, &state).is_empty());
    }

    /// The stored type reads leniently, so input strictness is checked here, by name.
    #[test]
    fn unknown_fields_of_a_request_are_refused_by_name() {
        let err = InterventionRequest::from_body(json!({"type": "skip_step", "stepid": "a"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `stepid`; did you mean `step_id`?"),
            "{err}"
        );
        let err = InterventionRequest::from_body(
            json!({"type": "reorder_steps", "order": [], "colour": 1}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("unknown field `colour` (known: order)"),
            "{err}"
        );
        // The envelope's own fields and the prototype's aliases are known.
        InterventionRequest::from_body(json!({
            "type": "add_step", "insert_after": "a", "reason": "r", "user": "u",
            "expected_version": 1, "dry_run": true,
            "step": {"step_id": "d", "action": "x", "agent_type": "t"}
        }))
        .unwrap();
        // The stored form reads whatever a later build added.
        let stored: InterventionKind =
            serde_json::from_value(json!({"type": "skip_step", "step_id": "a", "later": 1}))
                .unwrap();
        assert_eq!(stored.step_id().as_deref(), Some("a"));
    }
}
