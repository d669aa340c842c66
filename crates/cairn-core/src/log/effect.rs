//! The recorded result of an applied intervention.
//!
//! `decide` runs an intervention on a copy of the state and records, as an [`Effect`], every way
//! the copy differs from the state before: the steps added or changed (definition and record),
//! the steps removed, the new order, the plan-level fields and the counters of retired steps. The
//! fold applies the effect as it is and never re-runs the intervention or any validation, so a
//! later change to the rules or defaults of an intervention cannot change what a log replays to.

use crate::fast::HashMap;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Timestamp;
use crate::plan::{OnFailure, TemplateRef};
use crate::review::Review;
use crate::rollback::Rollback;
use crate::state::{PauseReason, PlanState, PlanStatus, Step};

/// What an applied intervention changed. Fields other than `version` are present only when
/// something of theirs changed. What an intervention cannot change is not recorded: the plan's
/// id, origin and creation time, and the log position and time (which the event itself sets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// The plan version after the intervention.
    pub version: u64,
    /// Steps added or changed, each whole (definition and record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Step>,
    /// Ids of the steps removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Every step id in its new order, when the order changed (a step added anywhere changes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// The plan's status fields, all of them, when any changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanFields>,
    /// The plan's own definition fields, all of them, when any changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<DefinitionFields>,
    /// The attempt and run counters of retired steps, all of them, when any changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<BTreeMap<String, (u32, u32)>>,
    /// Reviews changed (a vote, a close), each whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<Review>,
    /// The plan's rollback, whole, when an intervention changed it (a failed compensation
    /// retried or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// The template version the plan now records, when an `upgrade` moved it (added within
    /// format 2: absent in every older effect, which changed no template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// The plan's inputs, whole, when an `upgrade` changed them (a new version's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// What a failure does, when an `upgrade` changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// A plan's status and what goes with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanFields {
    pub status: PlanStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<PauseReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<Timestamp>,
    #[serde(default)]
    pub drained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A plan's definition apart from its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionFields {
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub metadata: Value,
    pub max_parallel: u32,
}

impl PlanFields {
    fn of(state: &PlanState) -> PlanFields {
        PlanFields {
            status: state.status,
            pause_reason: state.pause_reason,
            resume_at: state.resume_at,
            drained: state.drained,
            failure: state.failure.clone(),
        }
    }
}

impl DefinitionFields {
    fn of(state: &PlanState) -> DefinitionFields {
        DefinitionFields {
            query: state.query.clone(),
            metadata: state.metadata.clone(),
            max_parallel: state.max_parallel,
        }
    }
}

impl Effect {
    /// Everything that differs between `before` and `after` (the same plan).
    pub fn between(before: &PlanState, after: &PlanState) -> Effect {
        // Every field of the state, named so that a field added to `PlanState` fails to compile
        // here until its author says whether an intervention can change it (and records it).
        let PlanState {
            plan_id: _,
            query: _,
            metadata: _,
            max_parallel: _,
            steps: _,
            version: _,
            status: _,
            pause_reason: _,
            resume_at: _,
            drained: _,
            seq: _,
            created_at: _,
            updated_at: _,
            failure: _,
            origin: _,
            retired: _,
            // No intervention changes who started the plan.
            started_by: _,
            // Recorded below: only an `upgrade` changes them.
            inputs: _,
            template: _,
            // Recorded below (`reviews`).
            reviews: _,
            // Recorded below: only an `upgrade` changes it.
            on_failure: _,
            // Recorded below (`rollback`).
            rollback: _,
            // A cache of positions (follows `steps`).
            step_index: _,
        } = after;
        // Linear in the plan's size: an intervention on a 10,000-step plan compares each step
        // once (by position when the order did not change, else through an index by id).
        let same_order = before.same_order(after);
        let (set, removed, order) = if same_order {
            let set = before
                .steps
                .iter()
                .zip(&after.steps)
                .filter(|(b, a)| b != a)
                .map(|(_, a)| a.clone())
                .collect();
            (set, Vec::new(), None)
        } else {
            fn by_id(s: &PlanState) -> HashMap<&str, &Step> {
                s.steps
                    .iter()
                    .map(|s| (s.def.step_id.as_str(), s))
                    .collect()
            }
            let (was, is) = (by_id(before), by_id(after));
            let set = after
                .steps
                .iter()
                .filter(|s| was.get(s.def.step_id.as_str()) != Some(s))
                .cloned()
                .collect();
            let removed = before
                .steps
                .iter()
                .filter(|s| !is.contains_key(s.def.step_id.as_str()))
                .map(|s| s.def.step_id.clone())
                .collect();
            let order = after.steps.iter().map(|s| s.def.step_id.clone()).collect();
            (set, removed, Some(order))
        };
        let plan = (PlanFields::of(before) != PlanFields::of(after)).then(|| PlanFields::of(after));
        let definition = (DefinitionFields::of(before) != DefinitionFields::of(after))
            .then(|| DefinitionFields::of(after));
        let retired = (before.retired != after.retired).then(|| after.retired.clone());
        let reviews = after
            .reviews
            .iter()
            .filter(|r| before.reviews.iter().find(|b| b.review_id == r.review_id) != Some(*r))
            .cloned()
            .collect();
        let rollback = (before.rollback != after.rollback)
            .then(|| after.rollback.clone())
            .flatten();
        Effect {
            version: after.version,
            set,
            removed,
            order,
            plan,
            definition,
            retired,
            reviews,
            rollback,
            template: (before.template != after.template)
                .then(|| after.template.clone())
                .flatten(),
            inputs: (before.inputs != after.inputs).then(|| after.inputs.clone()),
            on_failure: (before.on_failure != after.on_failure).then_some(after.on_failure),
        }
    }

    /// Applies the recorded facts to `state`. Never fails and checks nothing: an effect is what
    /// happened.
    pub fn apply(&self, state: &mut PlanState) {
        state
            .steps
            .retain(|s| !self.removed.contains(&s.def.step_id));
        for step in &self.set {
            match state.index_of(&step.def.step_id) {
                Some(i) => state.steps[i] = step.clone(),
                None => state.steps.push(step.clone()),
            }
        }
        if let Some(order) = &self.order {
            let position: HashMap<&str, usize> = order
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            // A stable sort: a step the order does not name (none, in a log cairn wrote) keeps
            // its place after the named ones. Each step's position is looked up once, not at
            // every comparison.
            state.steps.sort_by_cached_key(|s| {
                position
                    .get(s.def.step_id.as_str())
                    .copied()
                    .unwrap_or(usize::MAX)
            });
        }
        if let Some(r) = &self.rollback {
            state.rollback = Some(r.clone());
        }
        if let Some(p) = &self.plan {
            state.status = p.status;
            state.pause_reason = p.pause_reason;
            state.resume_at = p.resume_at;
            state.drained = p.drained;
            state.failure = p.failure.clone();
        }
        if let Some(d) = &self.definition {
            state.query = d.query.clone();
            state.metadata = d.metadata.clone();
            state.max_parallel = d.max_parallel;
        }
        if let Some(retired) = &self.retired {
            state.retired = retired.clone();
        }
        if let Some(t) = &self.template {
            state.template = Some(t.clone());
        }
        if let Some(inputs) = &self.inputs {
            state.inputs = inputs.clone();
        }
        if let Some(f) = self.on_failure {
            state.on_failure = f;
        }
        for review in &self.reviews {
            match state
                .reviews
                .iter_mut()
                .find(|r| r.review_id == review.review_id)
            {
                Some(r) => *r = review.clone(),
                None => state.reviews.push(review.clone()),
            }
        }
        state.version = self.version;
    }
}
