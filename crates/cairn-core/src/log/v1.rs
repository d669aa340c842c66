//! How an `intervention_applied` of log format 1 replays.
//!
//! Format-1 events record the request, not its result. They replay by applying the request with
//! the rules cairn had when format 1 was current, frozen here. THIS FILE MUST NEVER CHANGE: it is
//! how logs written by releases up to log format 1 replay, and any change to it changes what
//! those logs mean. The live rules (`crate::intervention::mutate`) may evolve freely, since
//! newer events record their [`super::Effect`] instead.
//!
//! Only accepted interventions were recorded as applied, so nothing here validates: the checks
//! the request passed when it was decided are not re-run, and a request that no longer fits
//! (which cairn never wrote) changes what it can and leaves the rest. Everything this needs of
//! the state's helpers is copied in, so a later change to them cannot reach old logs either.
//! The request is read through today's `InterventionKind`: if that type ever changes shape, the
//! upcaster from format 1 rewrites old payloads into the new shape, and only the patterns below
//! follow the rename.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::event::Timestamp;
use crate::intervention::InterventionKind;
use crate::plan::StepDef;
use crate::state::{PauseReason, PlanState, PlanStatus, Step, StepRecord, StepStatus};

/// Applies a format-1 applied intervention to `state`.
pub fn replay(state: &mut PlanState, kind: &InterventionKind, at: Timestamp) {
    match kind {
        InterventionKind::SkipStep { step_id, .. } => {
            if let Some(i) = state.index_of(step_id) {
                let rec = &mut state.steps[i].rec;
                rec.status = StepStatus::Skipped;
                rec.retry_at = None;
            }
            reopen_if_settled(state);
        }
        InterventionKind::RetryStep { step_id, .. } => {
            if let Some(i) = state.index_of(step_id) {
                rerun(&mut state.steps[i].rec);
            }
            reopen_if_settled(state);
        }
        InterventionKind::RerunFrom { step_id } => {
            if let Some(i) = state.index_of(step_id) {
                let mut targets = downstream_of(state, i);
                targets.push(i);
                for j in targets {
                    let rec = &mut state.steps[j].rec;
                    if rec.status != StepStatus::Pending || rec.retry_at.is_some() {
                        rerun(rec);
                    }
                }
            }
            reopen_if_settled(state);
        }
        InterventionKind::ModifyStep { step_id, patch } => {
            if let Some(i) = state.index_of(step_id) {
                if let Ok(mut doc) = serde_json::to_value(&state.steps[i].def) {
                    merge_patch(&mut doc, patch);
                    if let Ok(def) = serde_json::from_value::<StepDef>(doc) {
                        state.steps[i].def = Arc::new(def);
                    }
                }
            }
            state.version += 1;
        }
        InterventionKind::AddStep {
            step,
            after,
            before,
        } => {
            if let Ok(def) = serde_json::from_value::<StepDef>(step.clone()) {
                let position = match (after, before) {
                    (Some(a), _) => state.index_of(a).map(|i| i + 1),
                    (None, Some(b)) => state.index_of(b),
                    (None, None) => None,
                }
                .unwrap_or(state.steps.len());
                let mut rec = StepRecord::new();
                if let Some(&(attempts, run)) = state.retired.get(&def.step_id) {
                    rec.attempts = attempts;
                    rec.run = run + 1;
                }
                state.steps.insert(
                    position,
                    Step {
                        def: Arc::new(def),
                        rec,
                    },
                );
            }
            state.version += 1;
            if state.status == PlanStatus::Paused && state.pause_reason.is_none() {
                state.pause_reason = Some(PauseReason::Intervention);
            }
        }
        InterventionKind::RemoveStep { step_id } => {
            if let Some(i) = state.index_of(step_id) {
                let removed = state.steps.remove(i);
                state.retired.insert(
                    removed.def.step_id.clone(),
                    (removed.rec.attempts, removed.rec.run),
                );
            }
            state.version += 1;
        }
        InterventionKind::ReorderSteps { order } => {
            let pending: Vec<usize> = (0..state.steps.len())
                .filter(|&i| state.steps[i].rec.status == StepStatus::Pending)
                .collect();
            let moved: Vec<Step> = order
                .iter()
                .filter_map(|id| state.index_of(id).map(|i| state.steps[i].clone()))
                .collect();
            if moved.len() == pending.len() {
                for (slot, step) in pending.iter().zip(moved) {
                    state.steps[*slot] = step;
                }
            }
            state.version += 1;
        }
        InterventionKind::CompleteStep { step_id, output } => {
            if let Some(i) = state.index_of(step_id) {
                let rec = &mut state.steps[i].rec;
                rec.status = StepStatus::Completed;
                rec.output = Some(output.clone());
                rec.scores = None;
                rec.error = None;
                rec.retry_at = None;
                rec.ended_at = Some(at);
            }
            reopen_if_settled(state);
        }
        // Refused by every release of format 1: never recorded as applied.
        InterventionKind::ApproveStep { .. } | InterventionKind::RejectStep { .. } => {}
        // Did not exist in format 1: never recorded by it.
        InterventionKind::Upgrade { .. } => {}
    }
}

/// Back to pending for another run.
fn rerun(rec: &mut StepRecord) {
    rec.status = StepStatus::Pending;
    rec.run += 1;
    rec.run_attempts = 0;
    rec.output = None;
    rec.scores = None;
    rec.error = None;
    rec.retry_at = None;
    rec.ended_at = None;
    rec.breakpoint_passed = false;
}

/// A failed or completed plan with no failed step left pauses (reason `intervention`).
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
        state.drained = !state
            .steps
            .iter()
            .any(|s| matches!(s.rec.status, StepStatus::Queued | StepStatus::Running));
        state.resume_at = None;
    }
}

/// The positions of the steps that depend, directly or not, on `steps[index]` (a step without
/// `depends_on` depends on the one before it).
fn downstream_of(state: &PlanState, index: usize) -> Vec<usize> {
    let position: crate::fast::HashMap<&str, usize> = state
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.def.step_id.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); state.steps.len()];
    for (i, s) in state.steps.iter().enumerate() {
        match &s.def.depends_on {
            Some(deps) => {
                for d in deps {
                    if let Some(&j) = position.get(d.as_str()) {
                        dependents[j].push(i);
                    }
                }
            }
            None if i > 0 => dependents[i - 1].push(i),
            None => {}
        }
    }
    let mut marked = vec![false; state.steps.len()];
    let mut todo = vec![index];
    marked[index] = true;
    while let Some(j) = todo.pop() {
        for &i in &dependents[j] {
            if !marked[i] {
                marked[i] = true;
                todo.push(i);
            }
        }
    }
    (0..state.steps.len())
        .filter(|&i| i != index && marked[i])
        .collect()
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
