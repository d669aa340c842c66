//! The `upgrade` intervention: a plan made from a template moves to another version of it.
//!
//! The caller (the engine, which reads the store) renders the plan's template at the version the
//! plan records and at the target version, both with the plan's own inputs, and hands both
//! definitions in as an [`UpgradeSource`]. The core takes the structural diff between them
//! ([`Diff::between`]) and applies it to the plan *as it is now*, which may differ from what
//! the template made (operators modify, add, remove and reorder steps):
//!
//! - a step the new version removes is removed, a step it changes gets the changed fields, only
//!   if that step has not started (it is `pending`); otherwise the upgrade is refused, naming the
//!   step. A step an operator already removed is left removed; a field an operator changed since
//!   differs from what the diff expects, and the upgrade is refused naming the field.
//! - the template's steps take the new version's order in the places they hold in the plan, so
//!   a step an operator added keeps its place; a step that has started must keep its place.
//! - a step the new version adds goes right after the step before it in the new version (first
//!   when it comes first), and must not come before a started step that follows the previous one
//!   implicitly (whose dependency it would change).
//! - plan-level fields (`query`, `metadata`, `max_parallel`, `on_failure`, `inputs`, and the
//!   `template` version itself) take the new version's values, checked like step fields.
//!
//! The result must be a valid plan; its version is bumped once. Like every intervention the
//! result is recorded as facts (`Effect`), so replay never renders a template.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::diff::{self, Diff};
use crate::plan::{Plan, StepDef, TemplateRef};
use crate::state::{PlanState, Step, StepRecord, StepStatus};
use crate::{Refusal, RefusalKind};

/// The two renderings an upgrade is decided on, or why the caller could not make them (the
/// template or version is unknown, the plan's inputs do not fit the new version's parameters).
/// Travels with the request; never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UpgradeSource {
    Ready {
        /// The template at the version the plan records, with the plan's inputs.
        from: Box<Plan>,
        /// The template at the target version, with the plan's inputs.
        to: Box<Plan>,
    },
    Refused {
        refusal: Refusal,
    },
}

fn conflict(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalKind::Conflict, message)
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalKind::Invalid, message)
}

/// Has the step started (anything but pending, or pending waiting out a retry's backoff)?
fn started(step: &Step) -> bool {
    step.rec.status != StepStatus::Pending || step.rec.retry_at.is_some()
}

fn status_of(step: &Step) -> &'static str {
    if step.rec.status == StepStatus::Pending {
        "waiting to retry"
    } else {
        step.rec.status.as_str()
    }
}

/// Moves `state` to `template_version` of its template, as `source` renders it.
pub fn apply(
    state: &mut PlanState,
    template_version: u64,
    source: Option<&UpgradeSource>,
) -> Result<(), Refusal> {
    let Some(current) = state.template.clone() else {
        return Err(conflict(format!(
            "plan {} was not made from a template; upgrade moves a plan made from a template to another version of it",
            state.plan_id
        )));
    };
    if template_version == 0 {
        return Err(invalid(
            "template_version must be a version number (1, 2, …)",
        ));
    }
    if template_version == current.version {
        return Err(conflict(format!(
            "plan {} is at version {template_version} of template {} already",
            state.plan_id, current.name
        )));
    }
    let (from, to) = match source {
        None => {
            return Err(invalid(
                "the upgrade was not given the template's versions to move between",
            ))
        }
        Some(UpgradeSource::Refused { refusal }) => return Err(refusal.clone()),
        Some(UpgradeSource::Ready { from, to }) => (from, to),
    };
    if from.template.as_ref() != Some(&current) {
        return Err(conflict(format!(
            "plan {} moved to another version of template {} meanwhile; send the upgrade again",
            state.plan_id, current.name
        )));
    }
    let target = TemplateRef {
        name: current.name.clone(),
        version: template_version,
    };
    if to.template.as_ref() != Some(&target) {
        return Err(invalid(format!(
            "the rendering given for the upgrade is not version {template_version} of template {}",
            current.name
        )));
    }
    let diff = Diff::between(from, to);
    let version = format!("version {template_version} of template {}", current.name);
    let at = |id: &str, state: &PlanState| state.index_of(id);

    // Removed steps: only pending ones; one an operator removed already stays removed.
    let mut removed: HashSet<&str> = HashSet::new();
    for r in &diff.removed {
        if let Some(i) = at(&r.step_id, state) {
            let s = &state.steps[i];
            if started(s) {
                return Err(conflict(format!(
                    "step {} is {}; {version} removes it, and a step that has started cannot be removed",
                    r.step_id,
                    status_of(s)
                )));
            }
            removed.insert(r.step_id.as_str());
        }
    }
    // Changed steps: the fields the diff changes, checked against the step as it is now.
    let mut defs: HashMap<String, StepDef> = HashMap::new();
    for c in &diff.changed {
        let Some(i) = at(&c.step_id, state) else {
            return Err(conflict(format!(
                "step {} is no longer in plan {}; {version} changes it",
                c.step_id, state.plan_id
            )));
        };
        let s = &state.steps[i];
        if started(s) {
            return Err(conflict(format!(
                "step {} is {}; {version} changes it ({}), and a step that has started cannot be changed",
                c.step_id,
                status_of(s),
                c.fields
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut doc = match serde_json::to_value(&s.def) {
            Ok(Value::Object(o)) => o,
            _ => return Err(invalid(format!("step {} cannot be read", c.step_id))),
        };
        for f in &c.fields {
            diff::set(&mut doc, &f.path, f, &format!("steps.{}.", c.step_id)).map_err(|e| {
                conflict(format!(
                    "step {} was changed since the plan was made from version {} ({}); {version} cannot be applied to it",
                    c.step_id, current.version, e.0
                ))
            })?;
        }
        let def = StepDef::from_value(&Value::Object(doc))
            .map_err(|e| invalid(format!("step {} would be invalid: {e}", c.step_id)))?;
        defs.insert(c.step_id.clone(), def);
    }
    // Added steps: new ids only.
    for a in &diff.added {
        if at(&a.step_id, state).is_some() {
            return Err(conflict(format!(
                "step {} is in plan {} already (added by an operator?); {version} adds a step of that id",
                a.step_id, state.plan_id
            )));
        }
    }
    // The order: the template's steps in the new version's order, in the places they hold.
    let kept: Vec<&Step> = state
        .steps
        .iter()
        .filter(|s| !removed.contains(s.def.step_id.as_str()))
        .collect();
    let in_new: HashMap<&str, usize> = to
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.step_id.as_str(), i))
        .collect();
    let mut template_steps: Vec<&str> = kept
        .iter()
        .map(|s| s.def.step_id.as_str())
        .filter(|id| in_new.contains_key(id))
        .collect();
    template_steps.sort_by_key(|id| in_new[id]);
    let mut next = template_steps.into_iter();
    let mut order: Vec<&str> = Vec::with_capacity(kept.len() + diff.added.len());
    for s in &kept {
        let id = s.def.step_id.as_str();
        let placed = if in_new.contains_key(id) {
            next.next().unwrap_or(id)
        } else {
            id
        };
        if placed != id {
            let moved = [id, placed]
                .into_iter()
                .filter_map(|m| at(m, state).map(|i| &state.steps[i]))
                .find(|s| started(s));
            if let Some(s) = moved {
                return Err(conflict(format!(
                    "step {} is {}; {version} moves it, and a step that has started cannot be moved",
                    s.def.step_id,
                    status_of(s)
                )));
            }
        }
        order.push(placed);
    }
    for a in &diff.added {
        let slot = match a.position.checked_sub(1) {
            None => 0,
            Some(p) => {
                let before = to.steps[p].step_id.as_str();
                match order.iter().position(|id| *id == before) {
                    Some(i) => i + 1,
                    // The step before it is not in the plan (an operator removed it): after
                    // the last of the template's earlier steps that is.
                    None => to.steps[..p]
                        .iter()
                        .rev()
                        .find_map(|s| order.iter().position(|id| *id == s.step_id))
                        .map_or(0, |i| i + 1),
                }
            }
        };
        if let Some(follower) = order.get(slot).and_then(|id| at(id, state)) {
            let f = &state.steps[follower];
            if started(f) && f.def.depends_on.is_none() {
                return Err(conflict(format!(
                    "step {} is {}; {version} adds step {} before it, which would change what it depends on",
                    f.def.step_id,
                    status_of(f),
                    a.step_id
                )));
            }
        }
        order.insert(slot, a.step_id.as_str());
    }
    // The plan-level fields, checked like a step's.
    let mut top = match serde_json::to_value(state.definition()) {
        Ok(Value::Object(mut o)) => {
            o.remove("steps");
            o
        }
        _ => Map::new(),
    };
    for f in &diff.plan {
        diff::set(&mut top, &f.path, f, "").map_err(|e| {
            conflict(format!(
                "plan {} was changed since it was made from version {} ({}); {version} cannot be applied to it",
                state.plan_id, current.version, e.0
            ))
        })?;
    }
    let added: HashMap<&str, &Value> = diff
        .added
        .iter()
        .map(|a| (a.step_id.as_str(), &a.definition))
        .collect();
    let mut steps = Vec::with_capacity(order.len());
    for id in &order {
        let doc = match (added.get(id), defs.get(*id), at(id, state)) {
            (Some(def), _, _) => (*def).clone(),
            (None, Some(def), _) => serde_json::to_value(def).unwrap_or(Value::Null),
            (None, None, Some(i)) => {
                serde_json::to_value(&state.steps[i].def).unwrap_or(Value::Null)
            }
            (None, None, None) => return Err(invalid(format!("step {id} was lost"))),
        };
        steps.push(doc);
    }
    top.insert("steps".into(), Value::Array(steps));
    let plan = Plan::from_value(Value::Object(top)).map_err(|e| {
        conflict(format!(
            "the plan upgraded to {version} would be invalid: {e}"
        ))
    })?;

    // Apply: records kept by id, new ones for added steps (their counters continue when the id
    // was used before), removed steps retired.
    let mut records: HashMap<String, StepRecord> = std::mem::take(&mut state.steps)
        .into_iter()
        .map(|s| (s.def.step_id.clone(), s.rec))
        .collect();
    for id in &removed {
        if let Some(rec) = records.remove(*id) {
            state
                .retired
                .insert((*id).to_owned(), (rec.attempts, rec.run));
        }
    }
    state.steps = plan
        .steps
        .into_iter()
        .map(|def| {
            let rec = records.remove(&def.step_id).unwrap_or_else(|| {
                let mut rec = StepRecord::new();
                if let Some(&(attempts, run)) = state.retired.get(&def.step_id) {
                    rec.attempts = attempts;
                    rec.run = run + 1;
                }
                rec
            });
            Step { def, rec }
        })
        .collect();
    state.query = plan.query;
    state.metadata = plan.metadata;
    state.max_parallel = plan.max_parallel;
    state.on_failure = plan.on_failure;
    state.inputs = plan.inputs;
    state.template = Some(target);
    state.version += 1;
    Ok(())
}
