//! Actions: what a decision requires the process running the plan to do, once its events are
//! durable. The core decides them ([`crate::decide::Decision::actions`]); the engine carries them
//! out and adds no rule of its own.
//!
//! This enum is where every kind of work the core can ask for goes: starting and stopping
//! attempts and the plan's next timer today; opening a review or running a compensation belong
//! here when the core decides them.

use serde_json::Value;

use crate::attempt::{AttemptId, Invocation};
use crate::time::Timestamp;

/// One thing to do after a decision is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run an attempt (new, or re-sent after a crash).
    Start(Box<StartAttempt>),
    /// Tell a running attempt the plan no longer wants it. Its late result is still recorded
    /// (and changes nothing).
    Stop { attempt: AttemptId, cause: String },
    /// The plan's next wake-up: when a retry's backoff ends or `resume_at` comes (`None`: no
    /// timer). Replaces any earlier timer of the plan; every decision ends with one.
    SetTimer { at: Option<Timestamp> },
}

/// Everything needed to run an attempt, decided by the core.
#[derive(Debug, Clone, PartialEq)]
pub struct StartAttempt {
    pub attempt: AttemptId,
    /// What the agent receives, as recorded in the log.
    /// Shared with the start's event and the step's record.
    pub invocation: std::sync::Arc<Invocation>,
    /// The step's run (changes only by retry or rerun interventions).
    pub run: u32,
    /// `plan_id/step_id/run` for a step's attempts: the same for every attempt of a run.
    pub idempotency_key: String,
    pub timeout_ms: Option<u64>,
    /// The plan's query, for agents that want the wider context.
    pub query: String,
    /// Handed to the remote-worker queue (the step is `queued` until a worker claims it).
    pub queued: bool,
}

impl Action {
    /// The attempt this action starts, if it starts one.
    pub fn started(&self) -> Option<&StartAttempt> {
        match self {
            Action::Start(s) => Some(s),
            _ => None,
        }
    }
}

/// The params of an invocation, for code that only needs them.
impl StartAttempt {
    pub fn params(&self) -> &Value {
        &self.invocation.params
    }
}
