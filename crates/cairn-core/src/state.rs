//! The state of a plan: a pure fold over its events ([`PlanState::apply`]).
//!
//! Invariant: for any log, folding it from [`PlanState::empty`] gives the same state the engine
//! held live when it wrote that log. Nothing here reads a clock or does IO.

use crate::fast::HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::attempt::{AttemptId, AttemptKind, Invocation};
use crate::event::{Event, EventKind, Micros, Timestamp};
use crate::gate::{GateFeedback, Scores};
use crate::plan::{OnFailure, Plan, StepDef, TemplateRef};
use crate::review::{Review, ReviewOutcome, ReviewState};
use crate::rollback::{
    CompensationRecord, CompensationStatus, Rollback, RollbackEnd, RollbackStatus,
};
use crate::step_index::StepIndex;
pub use crate::steps::Steps;

pub use crate::status::{PlanStatus, StepStatus};

/// Why a paused plan is paused.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    Operator,
    ReviewRequired,
    Restored,
    Intervention,
    Breakpoint,
}

/// What happened to one step so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: StepStatus,
    /// Attempts ever started, across runs and restores; the number of the latest attempt.
    pub attempts: u32,
    /// Bumped by retry and rerun interventions; part of the idempotency key.
    pub run: u32,
    /// Attempts that count against the retry policy in this run.
    pub run_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    // Boxed (in memory only), like `gate_feedback`, `invocation` and `compensation`: a
    // step's record is kept for every step of every live plan, and these are rare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Box<Scores>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Gate retries used in this run (against the gate's `max_retries`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gate_retries: u32,
    /// Why the previous attempt was not accepted (failed criteria, a reviewer's note): what the
    /// next attempt's task carries as `gate_feedback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_feedback: Option<Box<GateFeedback>>,
    /// A failed attempt waits until then before the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Micros>,
    /// The `pause_before` breakpoint of this step has already paused the plan once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub breakpoint_passed: bool,
    /// What the attempt in flight was sent (kept while it runs, so a recovery re-sends it).
    /// `None` for an attempt whose start recorded none (an older log) and once it ended.
    /// Shared with the start's event and the attempt it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<Arc<Invocation>>,
    /// The log position of the latest start of the step's own attempt: what orders a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_seq: Option<u64>,
    /// The step's compensation, once a rollback included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Box<CompensationRecord>>,
}

impl StepRecord {
    pub fn new() -> StepRecord {
        StepRecord {
            status: StepStatus::Pending,
            attempts: 0,
            run: 1,
            run_attempts: 0,
            started_at: None,
            ended_at: None,
            output: None,
            scores: None,
            error: None,
            gate_retries: 0,
            gate_feedback: None,
            retry_at: None,
            breakpoint_passed: false,
            invocation: None,
            start_seq: None,
            compensation: None,
        }
    }

    /// Back to pending for another run (retry and rerun interventions).
    pub(crate) fn rerun(&mut self) {
        self.status = StepStatus::Pending;
        self.run += 1;
        self.run_attempts = 0;
        self.output = None;
        self.scores = None;
        self.error = None;
        self.retry_at = None;
        self.ended_at = None;
        self.breakpoint_passed = false;
        self.gate_retries = 0;
        self.gate_feedback = None;
        self.invocation = None;
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for StepRecord {
    fn default() -> Self {
        StepRecord::new()
    }
}

/// A step: its definition and its record, kept together so they cannot drift apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Shared with the plan documents made of the state ([`PlanState::definition`]) and with
    /// the other states folded from it: a definition changes far less often than a record.
    #[serde(deserialize_with = "crate::plan::shared")]
    pub def: Arc<StepDef>,
    pub rec: StepRecord,
}

impl PartialEq for Step {
    /// Equal definitions are most often the same shared one: that is checked first.
    fn eq(&self, other: &Self) -> bool {
        (Arc::ptr_eq(&self.def, &other.def) || self.def == other.def) && self.rec == other.rec
    }
}

/// Which steps let their dependents run (see [`PlanState::satisfied`]): every step before
/// `base` (settled: completed), from `base` on as `done` says, none past its end (fresh steps,
/// which are pending).
pub(crate) struct Satisfied {
    base: usize,
    done: Vec<bool>,
}

impl Satisfied {
    fn is_done(&self, index: usize) -> bool {
        index < self.base || self.done.get(index - self.base).copied().unwrap_or(false)
    }
}

/// The part of a plan's state a checkpoint restores: definition, version and step records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Materialized {
    pub query: String,
    #[serde(default)]
    pub metadata: Value,
    pub max_parallel: u32,
    pub version: u64,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "crate::plan::no_inputs")]
    pub inputs: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
}

/// What a `checkpoint_restored` event brings back (log format 3): the checkpoint's plan-level
/// fields and version in full, and of its steps only what differs from the state the restore
/// replaces, which the fold has at hand (see [`Restored::between`]). A checkpoint of a
/// 1,000-step plan is thus not copied into the log on every restore.
///
/// Log format 2 carried the checkpoint's whole [`Materialized`] state; its upcaster lists every
/// step in full, with their order, so an old restore replays as it always did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub query: String,
    #[serde(default)]
    pub metadata: Value,
    pub max_parallel: u32,
    /// The checkpoint's version (the plan's becomes one more than this or its own).
    pub version: u64,
    #[serde(default, skip_serializing_if = "crate::plan::no_inputs")]
    pub inputs: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// The checkpoint's step ids in its order; absent when they are those of the replaced
    /// state, in the same order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// The checkpoint's steps that differ from the replaced state's step of the same id (or
    /// that it has not); a step not listed was at the checkpoint as the replaced state has it.
    /// Either way the fold brings it back by the same rules (running or cancelled steps back
    /// to pending, an open review's step to a new run, counters kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepChange>,
}

/// How a checkpoint's step differs from the step of the same id in the state a restore
/// replaces: its definition and record in full when they differ (both, for a step that state
/// has not), or only its attempt and run counters when nothing else differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepChange {
    pub step_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub def: Option<Arc<StepDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rec: Option<StepRecord>,
    /// The checkpoint's `attempts` and `run`, when `rec` is absent and only they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<(u32, u32)>,
}

impl Restored {
    /// What restoring `target` (the state at a checkpoint) changes in `current`.
    pub fn between(current: &PlanState, target: &PlanState) -> Restored {
        let same_order = current.same_order(target);
        let index: Option<HashMap<&str, &Step>> = (!same_order).then(|| {
            current
                .steps
                .iter()
                .map(|s| (s.def.step_id.as_str(), s))
                .collect()
        });
        let mut steps = Vec::new();
        for (i, t) in target.steps.iter().enumerate() {
            let c = match &index {
                None => Some(&current.steps[i]),
                Some(index) => index.get(t.def.step_id.as_str()).copied(),
            };
            let Some(c) = c else {
                steps.push(StepChange {
                    step_id: t.def.step_id.clone(),
                    def: Some(t.def.clone()),
                    rec: Some(t.rec.clone()),
                    counters: None,
                });
                continue;
            };
            // Most steps share their definition with the replaced state's (folded from the same
            // states): the pointer comparison spares comparing their contents.
            let def = (!Arc::ptr_eq(&t.def, &c.def) && t.def != c.def).then(|| t.def.clone());
            let (rec, counters) = if !t.rec.same_but_counters(&c.rec) {
                (Some(t.rec.clone()), None)
            } else if (t.rec.attempts, t.rec.run) != (c.rec.attempts, c.rec.run) {
                (None, Some((t.rec.attempts, t.rec.run)))
            } else {
                (None, None)
            };
            if def.is_some() || rec.is_some() || counters.is_some() {
                steps.push(StepChange {
                    step_id: t.def.step_id.clone(),
                    def,
                    rec,
                    counters,
                });
            }
        }
        Restored {
            query: target.query.clone(),
            metadata: target.metadata.clone(),
            max_parallel: target.max_parallel,
            version: target.version,
            inputs: target.inputs.clone(),
            template: target.template.clone(),
            order: (!same_order)
                .then(|| target.steps.iter().map(|s| s.def.step_id.clone()).collect()),
            steps,
        }
    }

    /// A whole materialised state as a restore brings it back (how log format 2 recorded it):
    /// every step listed in full, in its order.
    pub fn whole(m: Materialized) -> Restored {
        Restored {
            query: m.query,
            metadata: m.metadata,
            max_parallel: m.max_parallel,
            version: m.version,
            inputs: m.inputs,
            template: m.template,
            order: Some(m.steps.iter().map(|s| s.def.step_id.clone()).collect()),
            steps: m
                .steps
                .into_iter()
                .map(|s| StepChange {
                    step_id: s.def.step_id.clone(),
                    def: Some(s.def),
                    rec: Some(s.rec),
                    counters: None,
                })
                .collect(),
        }
    }
}

impl StepRecord {
    /// Equal but for `attempts` and `run` (every field named, so a new one is compared too).
    fn same_but_counters(&self, other: &StepRecord) -> bool {
        let StepRecord {
            status,
            attempts: _,
            run: _,
            run_attempts,
            started_at,
            ended_at,
            output,
            scores,
            error,
            gate_retries,
            gate_feedback,
            retry_at,
            breakpoint_passed,
            invocation,
            start_seq,
            compensation,
        } = self;
        *status == other.status
            && *run_attempts == other.run_attempts
            && *started_at == other.started_at
            && *ended_at == other.ended_at
            && *output == other.output
            && *scores == other.scores
            && *error == other.error
            && *gate_retries == other.gate_retries
            && *gate_feedback == other.gate_feedback
            && *retry_at == other.retry_at
            && *breakpoint_passed == other.breakpoint_passed
            && *invocation == other.invocation
            && *start_seq == other.start_seq
            && *compensation == other.compensation
    }
}

/// Everything the engine knows about a plan, derived from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanState {
    pub plan_id: String,
    pub query: String,
    pub metadata: Value,
    pub max_parallel: u32,
    pub steps: Steps,
    /// What the plan was started with (`inputs.*` in conditions and params); fixed at
    /// registration.
    #[serde(default, skip_serializing_if = "crate::plan::no_inputs")]
    pub inputs: Value,
    /// The template version the plan was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// Bumped by every change of the definition.
    pub version: u64,
    pub status: PlanStatus,
    pub pause_reason: Option<PauseReason>,
    /// A paused plan resumes by itself then.
    pub resume_at: Option<Micros>,
    /// Paused and no step still running.
    pub drained: bool,
    /// Last applied seq.
    pub seq: u64,
    pub created_at: Micros,
    pub updated_at: Micros,
    /// Why the plan failed.
    pub failure: Option<String>,
    pub origin: Option<OriginRef>,
    /// Attempt and run counters of steps that were removed (or dropped by a restore), by id, so
    /// a step added back under the same id never reuses an attempt number or idempotency key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired: BTreeMap<String, (u32, u32)>,
    /// Who started the plan (or forked it): the user `prevent_self_review` keeps from approving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// Every review opened in this plan, open and closed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<Review>,
    /// What a failure does (from the definition).
    #[serde(default, skip_serializing_if = "OnFailure::is_fail")]
    pub on_failure: OnFailure,
    /// The plan's rollback, once one started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// Positions of `steps` by id: a cache, never stored nor compared, checked against
    /// `steps` on every use (see [`StepIndex`]).
    #[serde(skip)]
    pub(crate) step_index: StepIndex,
}

/// Where a forked or imported plan came from (without the copied state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRef {
    pub how: String,
    pub plan_id: String,
    pub checkpoint_id: String,
}

impl PlanState {
    /// The state before any event.
    pub fn empty(plan_id: &str) -> PlanState {
        PlanState {
            plan_id: plan_id.to_owned(),
            query: String::new(),
            metadata: Value::Null,
            max_parallel: 8,
            steps: Steps::default(),
            inputs: Value::Null,
            template: None,
            version: 0,
            status: PlanStatus::Idle,
            pause_reason: None,
            resume_at: None,
            drained: true,
            seq: 0,
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            failure: None,
            origin: None,
            retired: BTreeMap::new(),
            started_by: None,
            reviews: Vec::new(),
            on_failure: OnFailure::Fail,
            rollback: None,
            step_index: StepIndex::default(),
        }
    }

    /// Folds a whole log.
    pub fn replay<'a>(plan_id: &str, events: impl IntoIterator<Item = &'a Event>) -> PlanState {
        let mut state = PlanState::empty(plan_id);
        for e in events {
            state.apply(e);
        }
        state
    }

    /// The position of a step by id: constant time through the step index once a lookup
    /// that can change the state built it (see [`StepIndex`]), else a scan.
    /// Whether `other` has the same steps, by id, in the same order: then two states' steps
    /// can be compared by position.
    pub fn same_order(&self, other: &PlanState) -> bool {
        self.steps.len() == other.steps.len()
            && self
                .steps
                .iter()
                .zip(&other.steps)
                .all(|(a, b)| a.def.step_id == b.def.step_id)
    }

    pub fn index_of(&self, step_id: &str) -> Option<usize> {
        self.step_index.find(&self.steps, step_id)
    }

    pub fn step(&self, step_id: &str) -> Option<&Step> {
        self.index_of(step_id).map(|i| &self.steps[i])
    }

    /// A step by id, to change it; builds the step index afresh when it is missing or stale.
    pub(crate) fn step_mut(&mut self, step_id: &str) -> Option<&mut Step> {
        let i = self.step_index.find_mut(&self.steps, step_id)?;
        Some(self.steps.touch(i))
    }

    /// The current definition as a plan document.
    pub fn definition(&self) -> Plan {
        Plan {
            plan_id: Some(self.plan_id.clone()),
            query: self.query.clone(),
            metadata: self.metadata.clone(),
            max_parallel: self.max_parallel,
            steps: self.steps.iter().map(|s| s.def.clone()).collect(),
            on_failure: self.on_failure,
            inputs: self.inputs.clone(),
            template: self.template.clone(),
        }
    }

    pub fn materialize(&self) -> Materialized {
        Materialized {
            query: self.query.clone(),
            metadata: self.metadata.clone(),
            max_parallel: self.max_parallel,
            version: self.version,
            steps: self.steps.to_vec(),
            inputs: self.inputs.clone(),
            template: self.template.clone(),
        }
    }

    /// Is `attempt` the attempt in flight of its step (queued for a worker, or running)?
    pub fn is_live(&self, attempt: &AttemptId) -> bool {
        let Some(s) = self.step(&attempt.step_id) else {
            return false;
        };
        match attempt.kind {
            AttemptKind::Step => s.rec.status.is_active() && s.rec.attempts == attempt.number,
            AttemptKind::Compensation => s.rec.compensation.as_ref().is_some_and(|c| {
                c.status == CompensationStatus::Running && c.attempts == attempt.number
            }),
        }
    }

    /// The attempts in flight (queued for a worker, or running), in step order; a step's own
    /// attempt before its compensation's.
    pub fn live_attempts(&self) -> Vec<AttemptId> {
        let mut out = Vec::new();
        // Settled and fresh steps have nothing in flight.
        for s in &self.steps[self.steps.live()] {
            if s.rec.status.is_active() {
                out.push(AttemptId::step(s.def.step_id.clone(), s.rec.attempts));
            }
            if let Some(c) = &s.rec.compensation {
                if c.status == CompensationStatus::Running {
                    out.push(AttemptId {
                        step_id: s.def.step_id.clone(),
                        kind: AttemptKind::Compensation,
                        number: c.attempts,
                    });
                }
            }
        }
        out
    }

    /// Attempts in flight, compensations included.
    pub fn running_count(&self) -> usize {
        // Settled and fresh steps have nothing in flight.
        self.steps[self.steps.live()]
            .iter()
            .map(|s| {
                usize::from(s.rec.status.is_active())
                    + usize::from(
                        s.rec
                            .compensation
                            .as_ref()
                            .is_some_and(|c| c.status == CompensationStatus::Running),
                    )
            })
            .sum()
    }

    /// Is a rollback under way (running, paused or not)?
    pub fn rolling_back(&self) -> bool {
        self.rollback
            .as_ref()
            .is_some_and(|r| r.status == RollbackStatus::Running)
    }

    pub fn ids_with(&self, status: StepStatus) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| s.rec.status == status)
            .map(|s| s.def.step_id.clone())
            .collect()
    }

    /// Index of the first step not yet completed or skipped (`total` when all are).
    pub fn current_step_index(&self) -> usize {
        self.steps
            .iter()
            .position(|s| !s.rec.status.satisfies())
            .unwrap_or(self.steps.len())
    }

    /// The next moment a timer must wake this plan (a retry backoff or `resume_at`).
    pub fn next_wake(&self) -> Option<Micros> {
        // Settled and fresh steps have no retry and no compensation due.
        let live = &self.steps[self.steps.live()];
        let retry = if self.status == PlanStatus::Running {
            live.iter()
                .filter(|s| s.rec.status == StepStatus::Pending)
                .filter_map(|s| s.rec.retry_at)
                .min()
        } else {
            None
        };
        let compensation = if self.status == PlanStatus::Running && self.rolling_back() {
            live.iter()
                .filter_map(|s| s.rec.compensation.as_ref())
                .filter(|c| c.status == CompensationStatus::Pending)
                .filter_map(|c| c.retry_at)
                .min()
        } else {
            None
        };
        let resume = if self.status == PlanStatus::Paused {
            self.resume_at
        } else {
            None
        };
        // A review's timeout runs on its own clock, whatever the plan's status.
        let review = self
            .reviews
            .iter()
            .filter(|r| r.is_open())
            .filter_map(|r| r.deadline)
            .min();
        [retry, compensation, resume, review]
            .into_iter()
            .flatten()
            .min()
    }

    /// The open review of a step, if any.
    pub fn open_review(&self, step_id: &str) -> Option<&Review> {
        self.reviews
            .iter()
            .rev()
            .find(|r| r.is_open() && r.step_id == step_id)
    }

    pub(crate) fn open_review_mut(&mut self, step_id: &str) -> Option<&mut Review> {
        self.reviews
            .iter_mut()
            .rev()
            .find(|r| r.is_open() && r.step_id == step_id)
    }

    /// Is any review of this plan open?
    pub fn has_open_review(&self) -> bool {
        self.reviews.iter().any(Review::is_open)
    }

    /// Voids every open review whose attempt no longer waits for it: the step was cancelled,
    /// modified, removed, skipped, rerun or restored under it.
    pub(crate) fn void_stale_reviews(&mut self, at: Micros) {
        let waiting: HashMap<&str, u32> = self
            .steps
            .iter()
            .filter(|s| s.rec.status == StepStatus::AwaitingReview)
            .map(|s| (s.def.step_id.as_str(), s.rec.attempts))
            .collect();
        let mut stale = Vec::new();
        for (i, r) in self.reviews.iter().enumerate() {
            if r.is_open() && waiting.get(r.step_id.as_str()) != Some(&r.attempt) {
                stale.push(i);
            }
        }
        for i in stale {
            self.reviews[i].close(ReviewOutcome::Voided, at);
        }
    }

    /// Voids the open reviews named by `ids` (a failed plan's), and sends each one's step,
    /// still awaiting it, back to pending as a new run, as a restore does: its held output is
    /// dropped, and the step runs again if the plan is reopened.
    fn void_reviews(&mut self, ids: &[String], at: Micros) {
        for id in ids {
            let Some(review) = self
                .reviews
                .iter_mut()
                .find(|r| r.is_open() && &r.review_id == id)
            else {
                continue;
            };
            review.close(ReviewOutcome::Voided, at);
            let (step_id, attempt) = (review.step_id.clone(), review.attempt);
            if let Some(s) = self.step_mut(&step_id) {
                if s.rec.status == StepStatus::AwaitingReview && s.rec.attempts == attempt {
                    s.rec.rerun();
                }
            }
        }
    }

    /// What `{{ }}` templates and `when:` conditions see.
    pub fn template_context(&self) -> Value {
        let mut steps = Map::new();
        for s in &self.steps {
            if s.rec.status.has_ended() {
                let mut m = Map::new();
                m.insert(
                    "status".into(),
                    serde_json::to_value(s.rec.status).unwrap_or(Value::Null),
                );
                m.insert("output".into(), s.rec.output.clone().unwrap_or(Value::Null));
                if let Some(scores) = &s.rec.scores {
                    m.insert("scores".into(), Value::Object(scores.as_map().clone()));
                }
                steps.insert(s.def.step_id.clone(), Value::Object(m));
            }
        }
        let mut ctx = Map::new();
        ctx.insert("plan_id".into(), Value::String(self.plan_id.clone()));
        ctx.insert("query".into(), Value::String(self.query.clone()));
        ctx.insert("metadata".into(), self.metadata.clone());
        ctx.insert(
            "inputs".into(),
            match &self.inputs {
                Value::Null => Value::Object(Map::new()),
                inputs => inputs.clone(),
            },
        );
        ctx.insert("steps".into(), Value::Object(steps));
        Value::Object(ctx)
    }

    /// Which steps let their dependents run, by position: a completed step does; a skipped step
    /// does once its own dependencies do, so skipping a step that was not ready yet never lets
    /// the steps after it overtake the steps before it.
    pub(crate) fn satisfied(&self) -> Satisfied {
        // Only the live steps are looked at: the settled ones before them are done, the fresh
        // ones after them pending (see `Steps`).
        let live = self.steps.live();
        let mut sat = Satisfied {
            base: live.start,
            done: self.steps[live.clone()]
                .iter()
                .map(|s| s.rec.status == StepStatus::Completed)
                .collect(),
        };
        if self.steps[live.clone()]
            .iter()
            .any(|s| s.rec.status == StepStatus::Skipped)
        {
            // Skipped steps chain through each other; iterate to a fixed point (the graph is
            // acyclic).
            loop {
                let mut changed = false;
                for i in live.clone() {
                    if self.steps[i].rec.status == StepStatus::Skipped
                        && !sat.is_done(i)
                        && self.deps_satisfied(i, &sat)
                    {
                        sat.done[i - sat.base] = true;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        sat
    }

    /// Are all of `steps[index]`'s dependencies satisfied?
    pub(crate) fn deps_satisfied(&self, index: usize, sat: &Satisfied) -> bool {
        match &self.steps[index].def.depends_on {
            Some(deps) => deps
                .iter()
                .all(|d| self.index_of(d).is_some_and(|j| sat.is_done(j))),
            None if index == 0 => true,
            None => sat.is_done(index - 1),
        }
    }

    /// The indices of the steps that depend, directly or not, on `steps[index]`.
    pub fn downstream_of(&self, index: usize) -> Vec<usize> {
        let position: HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.def.step_id.as_str(), i))
            .collect();
        // Who waits for whom, by position; then one walk from `index`.
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); self.steps.len()];
        for (i, s) in self.steps.iter().enumerate() {
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
        let mut marked = vec![false; self.steps.len()];
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
        (0..self.steps.len())
            .filter(|&i| i != index && marked[i])
            .collect()
    }

    /// Applies one event. Events are facts: applying never fails; an event that does not fit
    /// the state (which the engine never writes) changes nothing but `seq`.
    pub fn apply(&mut self, event: &Event) {
        self.seq = event.seq;
        self.updated_at = event.at;
        let at = event.at;
        match &event.kind {
            EventKind::PlanRegistered { definition, origin } => {
                self.created_at = at;
                self.query = definition.query.clone();
                self.metadata = definition.metadata.clone();
                self.max_parallel = definition.max_parallel;
                self.on_failure = definition.on_failure;
                self.inputs = definition.inputs.clone();
                self.template = definition.template.clone();
                self.version = 1;
                self.steps = definition
                    .steps
                    .iter()
                    .map(|d| Step {
                        def: d.clone(),
                        rec: StepRecord::new(),
                    })
                    .collect();
                if let Some(origin) = origin {
                    self.started_by = Some(event.actor.clone());
                    self.load(&origin.state);
                    self.version = origin.state.version;
                    self.status = PlanStatus::Paused;
                    self.pause_reason = Some(PauseReason::Restored);
                    self.origin = Some(OriginRef {
                        how: origin.how.clone(),
                        plan_id: origin.plan_id.clone(),
                        checkpoint_id: origin.checkpoint_id.clone(),
                    });
                }
            }
            EventKind::PlanStarted { .. } | EventKind::PlanResumed { .. } => {
                if matches!(event.kind, EventKind::PlanStarted { .. }) {
                    self.started_by = Some(event.actor.clone());
                }
                self.status = PlanStatus::Running;
                self.pause_reason = None;
                self.resume_at = None;
                self.drained = false;
            }
            EventKind::PlanPaused {
                reason,
                resume_at,
                step_id,
                ..
            } => {
                self.status = PlanStatus::Paused;
                self.pause_reason = Some(*reason);
                self.resume_at = *resume_at;
                self.drained = false;
                if let (PauseReason::Breakpoint, Some(id)) = (reason, step_id) {
                    if let Some(s) = self.step_mut(id) {
                        if s.rec.status == StepStatus::Pending {
                            s.rec.breakpoint_passed = true;
                        }
                    }
                }
            }
            EventKind::PlanDrained {} => self.drained = true,
            EventKind::PlanCancelled { rollback, .. } => {
                self.status = PlanStatus::Cancelled;
                self.pause_reason = None;
                self.resume_at = None;
                for s in &mut self.steps {
                    // Before a rollback, an attempt in flight stays until it ends.
                    if *rollback && s.rec.status.is_active() {
                        continue;
                    }
                    if !s.rec.status.has_ended() {
                        s.rec.status = StepStatus::Cancelled;
                        s.rec.ended_at = Some(at);
                        s.rec.retry_at = None;
                        s.rec.invocation = None;
                    }
                }
                self.void_stale_reviews(at);
            }
            EventKind::PlanCompleted {} => {
                self.status = PlanStatus::Completed;
                self.pause_reason = None;
            }
            EventKind::PlanFailed {
                error,
                step_id,
                voided_reviews,
            } => {
                self.status = PlanStatus::Failed;
                self.pause_reason = None;
                self.resume_at = None;
                self.failure = Some(format!("step {step_id} failed: {error}"));
                self.void_reviews(voided_reviews, at);
            }
            EventKind::StepStarted {
                step_id,
                kind: AttemptKind::Step,
                attempt,
                queued,
                invocation,
                ..
            } => {
                if let Some(s) = self.step_mut(step_id) {
                    s.rec.invocation = invocation.clone();
                    s.rec.status = if *queued {
                        StepStatus::Queued
                    } else {
                        StepStatus::Running
                    };
                    s.rec.attempts = *attempt;
                    s.rec.run_attempts += 1;
                    s.rec.started_at = Some(at);
                    s.rec.start_seq = Some(event.seq);
                    s.rec.ended_at = None;
                    s.rec.retry_at = None;
                }
            }
            EventKind::StepCompleted {
                step_id,
                output,
                scores,
                ..
            } => {
                if let Some(s) = self.step_mut(step_id) {
                    s.rec.status = StepStatus::Completed;
                    s.rec.output = Some(output.clone());
                    s.rec.scores = scores.clone().map(Box::new);
                    s.rec.error = None;
                    s.rec.ended_at = Some(at);
                    s.rec.gate_feedback = None;
                    s.rec.invocation = None;
                }
            }
            EventKind::GateEvaluated {
                step_id,
                attempt,
                failed,
                verdict,
                ..
            } => {
                // The step's status is what the next event of the same commit says; a failing
                // verdict is what the next attempt hears about, when the gate gives feedback.
                if let Some(s) = self.step_mut(step_id) {
                    let feedback = s.def.quality_gate.as_ref().is_none_or(|g| g.feedback);
                    if *verdict == crate::gate::VerdictKind::Failed && feedback {
                        s.rec.gate_feedback = Some(Box::new(GateFeedback {
                            attempt: *attempt,
                            failed: failed.clone(),
                            note: None,
                            reviewer: None,
                        }));
                    }
                }
            }
            EventKind::ReviewOpened {
                review_id,
                step_id,
                attempt,
                scores,
                failed,
                deadline,
                output,
                quorum,
            } => {
                if let Some(s) = self.step_mut(step_id) {
                    s.rec.status = StepStatus::AwaitingReview;
                    s.rec.error = None;
                    s.rec.ended_at = Some(at);
                    s.rec.retry_at = None;
                }
                let plan_id = self.plan_id.clone();
                self.reviews.push(Review {
                    review_id: review_id.clone(),
                    plan_id,
                    step_id: step_id.clone(),
                    attempt: *attempt,
                    scores: scores.clone(),
                    failed: failed.clone(),
                    output: output.clone(),
                    quorum: *quorum,
                    votes: Vec::new(),
                    deadline: *deadline,
                    state: ReviewState::Open,
                    outcome: None,
                    opened_at: at,
                    closed_at: None,
                });
            }
            EventKind::StepFailed {
                step_id,
                error,
                retry_at,
                ..
            } => {
                if let Some(s) = self.step_mut(step_id) {
                    s.rec.error = Some(error.clone());
                    s.rec.ended_at = Some(at);
                    s.rec.invocation = None;
                    match retry_at {
                        Some(t) => {
                            s.rec.status = StepStatus::Pending;
                            s.rec.retry_at = Some(*t);
                        }
                        None => s.rec.status = StepStatus::Failed,
                    }
                }
            }
            EventKind::StepInterrupted {
                step_id,
                kind: AttemptKind::Compensation,
                ..
            } => {
                if let Some(c) = self
                    .step_mut(step_id)
                    .and_then(|s| s.rec.compensation.as_mut())
                {
                    if c.status == CompensationStatus::Running {
                        c.status = CompensationStatus::Pending;
                        c.run_attempts = c.run_attempts.saturating_sub(1);
                        c.invocation = None;
                    }
                }
            }
            EventKind::StepInterrupted { step_id, .. } => {
                if let Some(s) = self.step_mut(step_id) {
                    if s.rec.status.is_active() {
                        s.rec.status = StepStatus::Pending;
                        s.rec.run_attempts = s.rec.run_attempts.saturating_sub(1);
                        s.rec.ended_at = Some(at);
                        s.rec.invocation = None;
                    }
                }
            }
            EventKind::StepSkipped { step_id, .. } => {
                if let Some(s) = self.step_mut(step_id) {
                    s.rec.status = StepStatus::Skipped;
                    s.rec.ended_at = Some(at);
                    s.rec.retry_at = None;
                    s.rec.invocation = None;
                }
            }
            EventKind::InterventionApplied {
                intervention,
                effect,
            } => match effect {
                // The recorded result, applied as it is: replay never re-decides.
                Some(effect) => effect.apply(self),
                // Log format 1 recorded only the request. Its rules predate recorded
                // invocations: an attempt they ended keeps none, as everywhere else.
                None => {
                    crate::log::v1::replay(self, &intervention.request, at);
                    for s in &mut self.steps {
                        if !s.rec.status.is_active() {
                            s.rec.invocation = None;
                        }
                    }
                }
            },
            EventKind::CheckpointRestored { restored, .. } => {
                let version = self.version.max(restored.version) + 1;
                self.restore(restored);
                self.void_stale_reviews(at);
                self.version = version;
                self.status = PlanStatus::Paused;
                self.pause_reason = Some(PauseReason::Restored);
                self.resume_at = None;
                self.failure = None;
                self.drained = true;
            }
            EventKind::StepClaimed {
                step_id, attempt, ..
            } => {
                if let Some(s) = self.step_mut(step_id) {
                    if s.rec.status == StepStatus::Queued && s.rec.attempts == *attempt {
                        s.rec.status = StepStatus::Running;
                    }
                }
            }
            EventKind::StepRecovered {
                step_id,
                kind: AttemptKind::Step,
                attempt,
                queued,
                invocation,
            } => {
                // A recovered attempt handed to the queue again waits for a worker; one run
                // in this process is running (as it was).
                if let Some(s) = self.step_mut(step_id) {
                    if s.rec.status.is_active() && s.rec.attempts == *attempt {
                        s.rec.status = if *queued {
                            StepStatus::Queued
                        } else {
                            StepStatus::Running
                        };
                        if invocation.is_some() {
                            s.rec.invocation = invocation.clone();
                        }
                    }
                }
            }
            EventKind::StepRecovered {
                step_id,
                kind: AttemptKind::Compensation,
                attempt,
                ..
            } => {
                if let Some(c) = self
                    .step_mut(step_id)
                    .and_then(|s| s.rec.compensation.as_mut())
                {
                    if c.attempts == *attempt {
                        c.status = CompensationStatus::Running;
                    }
                }
            }
            // Compensations start with their own event.
            EventKind::StepStarted { .. } => {}
            EventKind::RollbackStarted { then, order } => {
                self.status = PlanStatus::Running;
                self.pause_reason = None;
                self.resume_at = None;
                self.drained = false;
                for id in order {
                    if let Some(s) = self.step_mut(id) {
                        let c = s
                            .rec
                            .compensation
                            .get_or_insert_with(|| Box::new(CompensationRecord::new()));
                        // A rollback continued after one that failed tries again afresh.
                        c.status = CompensationStatus::Pending;
                        c.run_attempts = 0;
                        c.retry_at = None;
                    }
                }
                let done = self
                    .rollback
                    .as_ref()
                    .map(|r| r.done.clone())
                    .unwrap_or_default();
                self.rollback = Some(Rollback {
                    status: RollbackStatus::Running,
                    done,
                    pending: order.clone(),
                    then: *then,
                });
            }
            EventKind::CompensationStarted {
                step_id,
                attempt,
                invocation,
            } => {
                if let Some(c) = self
                    .step_mut(step_id)
                    .and_then(|s| s.rec.compensation.as_mut())
                {
                    c.status = CompensationStatus::Running;
                    c.attempts = *attempt;
                    c.run_attempts += 1;
                    c.retry_at = None;
                    c.invocation = Some(invocation.clone());
                }
            }
            EventKind::CompensationCompleted {
                step_id, output, ..
            } => {
                if let Some(c) = self
                    .step_mut(step_id)
                    .and_then(|s| s.rec.compensation.as_mut())
                {
                    c.status = CompensationStatus::Completed;
                    c.output = Some(output.clone());
                    c.error = None;
                    c.invocation = None;
                }
                if let Some(r) = &mut self.rollback {
                    r.pending.retain(|p| p != step_id);
                    r.done.push(step_id.clone());
                }
            }
            EventKind::CompensationFailed {
                step_id,
                error,
                retry_at,
                ..
            } => {
                if let Some(c) = self
                    .step_mut(step_id)
                    .and_then(|s| s.rec.compensation.as_mut())
                {
                    c.error = Some(error.clone());
                    c.invocation = None;
                    c.retry_at = *retry_at;
                    c.status = match retry_at {
                        Some(_) => CompensationStatus::Pending,
                        None => CompensationStatus::Failed,
                    };
                }
            }
            EventKind::RollbackCompleted { then } | EventKind::RollbackFailed { then, .. } => {
                if let Some(r) = &mut self.rollback {
                    r.status = if matches!(event.kind, EventKind::RollbackCompleted { .. }) {
                        RollbackStatus::Completed
                    } else {
                        RollbackStatus::Failed
                    };
                }
                self.status = match then {
                    RollbackEnd::Failed => PlanStatus::Failed,
                    RollbackEnd::Cancelled => PlanStatus::Cancelled,
                };
                // A cancelled plan ends every step: those whose attempt was stopped by the
                // rollback are left pending until then.
                if *then == RollbackEnd::Cancelled {
                    for s in &mut self.steps {
                        if !s.rec.status.has_ended() && !s.rec.status.is_active() {
                            s.rec.status = StepStatus::Cancelled;
                            s.rec.ended_at = Some(at);
                            s.rec.retry_at = None;
                            s.rec.invocation = None;
                        }
                    }
                }
                self.pause_reason = None;
                self.resume_at = None;
            }
            EventKind::StepResultIgnored { .. }
            | EventKind::InterventionFailed { .. }
            | EventKind::CheckpointCreated { .. }
            | EventKind::PlanForked { .. } => {}
        }
    }

    /// Loads a materialised state (a fork's or an import's origin); steps that were running in
    /// it go back to pending.
    fn load(&mut self, m: &Materialized) {
        self.query = m.query.clone();
        self.metadata = m.metadata.clone();
        self.max_parallel = m.max_parallel;
        self.inputs = m.inputs.clone();
        self.template = m.template.clone();
        self.steps = m.steps.clone().into();
        for s in &mut self.steps {
            bring_back(&mut s.rec, (0, 0));
        }
    }

    /// Brings back the checkpoint's definition and steps, each step from the replaced one and
    /// what the event says differs (see [`Restored`]).
    fn restore(&mut self, r: &Restored) {
        self.query = r.query.clone();
        self.metadata = r.metadata.clone();
        self.max_parallel = r.max_parallel;
        self.inputs = r.inputs.clone();
        self.template = r.template.clone();
        let changes: HashMap<&str, &StepChange> =
            r.steps.iter().map(|c| (c.step_id.as_str(), c)).collect();
        let old = std::mem::take(&mut self.steps);
        let mut steps = Vec::with_capacity(r.order.as_ref().map_or(old.len(), Vec::len));
        match &r.order {
            None => {
                for s in old {
                    let change = changes.get(s.def.step_id.as_str()).copied();
                    steps.push(restored_step(s, change));
                }
            }
            Some(order) => {
                let mut by_id: HashMap<String, Step> = old
                    .into_iter()
                    .map(|s| (s.def.step_id.clone(), s))
                    .collect();
                for id in order {
                    let change = changes.get(id.as_str()).copied();
                    match by_id.remove(id) {
                        Some(s) => steps.push(restored_step(s, change)),
                        // A step the replaced state has not: the event carries it whole, and
                        // counters the id had before it was removed keep counting.
                        None => {
                            let Some(StepChange {
                                def: Some(def),
                                rec: Some(rec),
                                ..
                            }) = change
                            else {
                                continue;
                            };
                            let counters = self.retired.get(id).copied().unwrap_or((0, 0));
                            let mut step = Step {
                                def: def.clone(),
                                rec: rec.clone(),
                            };
                            bring_back(&mut step.rec, counters);
                            steps.push(step);
                        }
                    }
                }
                // Steps the checkpoint has not keep their counters, so an id added back
                // never reuses an attempt number or idempotency key.
                for (id, s) in by_id {
                    self.retired.insert(id, (s.rec.attempts, s.rec.run));
                }
            }
        }
        self.steps = steps.into();
    }
}

/// The checkpoint's step over `current`, the replaced state's step of the same id: `current`
/// with what `change` says differs.
fn restored_step(current: Step, change: Option<&StepChange>) -> Step {
    let counters = (current.rec.attempts, current.rec.run);
    let mut step = current;
    if let Some(change) = change {
        if let Some(def) = &change.def {
            step.def = def.clone();
        }
        if let Some(rec) = &change.rec {
            step.rec = rec.clone();
        }
        if let Some((attempts, run)) = change.counters {
            step.rec.attempts = attempts;
            step.rec.run = run;
        }
    }
    bring_back(&mut step.rec, counters);
    step
}

/// A checkpoint's step record as a restore brings it back over a step whose counters were
/// `(attempts, run)`: running steps go back to pending, and the counters keep counting.
fn bring_back(rec: &mut StepRecord, (attempts, run): (u32, u32)) {
    match rec.status {
        status if status.is_active() => {
            rec.status = StepStatus::Pending;
            rec.run_attempts = rec.run_attempts.saturating_sub(1);
            rec.invocation = None;
        }
        // A restored plan is runnable again: what a cancel stopped is pending.
        StepStatus::Cancelled => {
            rec.status = StepStatus::Pending;
            rec.ended_at = None;
        }
        // An open review is never carried over: the step runs again, as a new run.
        StepStatus::AwaitingReview => {
            rec.rerun();
        }
        _ => {}
    }
    // Attempt and run numbers keep counting, so a late result of an attempt started before
    // the restore is never taken for a new one, and a step that will run again after attempts
    // made since the checkpoint gets a new run (a new idempotency key).
    let ran_since = attempts > rec.attempts;
    rec.attempts = rec.attempts.max(attempts);
    rec.run = rec.run.max(run);
    if ran_since && rec.status == StepStatus::Pending {
        rec.run += 1;
    }
}

#[cfg(test)]
mod size_tests {
    /// Every step of every live plan is one of these (and a registration holds two more in
    /// its event and its answer): what most steps lack (a gate, a compensation, scores, gate
    /// feedback, the invocation in flight) is boxed. 968 bytes before, 480 now.
    #[test]
    fn a_step_stays_small() {
        let size = std::mem::size_of::<super::Step>();
        assert!(size <= 512, "a state::Step is {size} bytes");
    }
}
