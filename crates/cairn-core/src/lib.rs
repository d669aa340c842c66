//! cairn's pure core.
//!
//! - [`plan`]: the plan document and its validation.
//! - [`event`]: the events a plan's log is made of.
//! - [`state`]: a plan's state as a fold over its events.
//! - [`status`]: what each plan state and step status means, defined once.
//! - [`decide`]: commands in, events and the [`action`]s they require (or a refusal) out.
//! - [`attempt`]: attempt ids `(step_id, kind, number)` and the invocation an attempt is sent.
//! - [`intervention`]: operator changes to a plan, their records and diffs.
//! - [`versions`]: a plan's definition history (each version and its cause), folded from its log.
//! - [`diff`]: structural diffs of plan definitions and template parameters, and applying them.
//! - [`history`]: every attempt of a plan's steps, folded from its log, for readers.
//! - [`gate`]: quality gates, typed scores and the verdict, a pure function of both.
//! - [`review`]: reviews of the attempts a gate held back, their votes and outcomes.
//! - [`log`]: how events are stored: the log format, upcasters, and what replay applies.
//! - [`expr`]: `{{ }}` templates and `when:` conditions.
//! - [`template`]: templates (a plan with a JSON Schema of its inputs) and instantiation.
//! - [`upgrade`]: moving a plan made from a template to another version of it.
//! - [`suggest`]: "did you mean …?" for misspelt names.
//! - [`time`]: timestamps, stored as microseconds and written as RFC 3339.
//!
//! Architecture invariant: nothing in this crate does IO, reads a clock or draws a random number.
//! Time comes in as [`decide::Ctx::now`]; ids are derived from log positions. Replaying the same
//! events always gives the same state.

pub mod action;
pub mod attempt;
pub mod decide;
pub mod diff;
mod document;
pub mod event;
pub mod expr;
mod fast;
pub mod gate;
pub mod history;
pub mod intervention;
pub mod log;
pub mod plan;
pub mod review;
pub mod rollback;
pub mod state;
pub mod status;
mod step_index;
pub mod steps;
pub mod suggest;
pub mod template;
pub mod time;
pub mod upgrade;
pub mod versions;
pub mod view;

pub use action::{Action, StartAttempt};
pub use attempt::{AttemptId, AttemptKind, Invocation};
pub use decide::{handle, Command, Ctx, Decision, Route, StepResult};
pub use event::{CheckpointMark, CheckpointTrigger, Event, EventKind, Micros, PauseMode};
pub use gate::{FailedCriterion, GateFeedback, QualityGate, Scores, Verdict};
pub use intervention::{Intervention, InterventionKind, InterventionRequest};
pub use plan::{Fault, Format, Invalid, Plan, StepDef, TemplateRef};
pub use review::{Review, ReviewOutcome, ReviewState, Vote, VoteDecision};
pub use state::{
    Materialized, PauseReason, PlanState, PlanStatus, Restored, StepChange, StepStatus,
};
pub use template::Template;
pub use time::Timestamp;

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The plan's state does not allow it (HTTP 409).
    Conflict,
    /// The request itself is malformed or would make the plan invalid (HTTP 422).
    Invalid,
    /// The caller may not make this decision, whatever the plan's state: not among a gate's
    /// `reviewers`, or approving a plan they started under `prevent_self_review` (HTTP 403).
    Forbidden,
}

/// A refused command: its kind and a message that names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
}

/// The idempotency key of a step's run: `plan_id/step_id/run`.
pub fn idempotency_key(plan_id: &str, step_id: &str, run: u32) -> String {
    format!("{plan_id}/{step_id}/{run}")
}

/// The idempotency key of a step's compensation: `plan_id/step_id/compensate/run`, the same
/// for every attempt of it.
pub fn compensation_key(plan_id: &str, step_id: &str, run: u32) -> String {
    format!("{plan_id}/{step_id}/compensate/{run}")
}
