//! Read models: what a client sees of a plan (`GET /v1/plans/{id}`) and of a checkpoint. Pure
//! projections of [`PlanState`], shared by the CLI, the server and the library.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{checkpoint_id, CheckpointTrigger, Micros};
use crate::plan::Plan;
use crate::state::{PauseReason, PlanState, PlanStatus, StepStatus};

/// One step as listed in a plan's state.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub step_id: String,
    pub action: String,
    pub agent_type: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub run: u32,
    pub depends_on: Vec<String>,
    pub started_at: Option<Micros>,
    pub ended_at: Option<Micros>,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Micros>,
    /// What a `queued` step waits for: `a worker of agent type X`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// The state of a plan (DESIGN §4 `GET /v1/plans/{id}`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub plan_id: String,
    pub query: String,
    pub state: PlanStatus,
    pub pause_reason: Option<PauseReason>,
    pub version: u64,
    pub total_steps: usize,
    pub current_step_index: usize,
    pub completed_steps: Vec<String>,
    pub failed_steps: Vec<String>,
    pub skipped_steps: Vec<String>,
    pub running_steps: Vec<String>,
    /// Steps handed to the remote-worker queue that no worker has claimed yet.
    #[serde(default)]
    pub queued_steps: Vec<String>,
    pub steps: Vec<StepView>,
    pub created_at: Micros,
    pub updated_at: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub last_seq: u64,
    /// Things the caller should know about the answer (e.g. agent types nothing will run),
    /// set by the server on register and start; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl PlanView {
    pub fn of(state: &PlanState) -> PlanView {
        PlanView {
            plan_id: state.plan_id.clone(),
            query: state.query.clone(),
            state: state.status,
            pause_reason: state.pause_reason,
            version: state.version,
            total_steps: state.steps.len(),
            current_step_index: state.current_step_index(),
            completed_steps: state.ids_with(StepStatus::Completed),
            failed_steps: state.ids_with(StepStatus::Failed),
            skipped_steps: state.ids_with(StepStatus::Skipped),
            running_steps: state.ids_with(StepStatus::Running),
            queued_steps: state.ids_with(StepStatus::Queued),
            steps: state
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepView {
                    step_id: s.def.step_id.clone(),
                    action: s.def.action.clone(),
                    agent_type: s.def.agent_type.clone(),
                    status: s.rec.status,
                    attempts: s.rec.attempts,
                    run: s.rec.run,
                    depends_on: match &s.def.depends_on {
                        Some(deps) => deps.clone(),
                        None if i == 0 => Vec::new(),
                        None => vec![state.steps[i - 1].def.step_id.clone()],
                    },
                    started_at: s.rec.started_at,
                    ended_at: s.rec.ended_at,
                    error: s.rec.error.clone(),
                    retry_at: s.rec.retry_at,
                    waiting_for: (s.rec.status == StepStatus::Queued)
                        .then(|| format!("a worker of agent type {}", s.def.agent_type)),
                })
                .collect(),
            created_at: state.created_at,
            updated_at: state.updated_at,
            resume_at: state.resume_at,
            failure: state.failure.clone(),
            last_seq: state.seq,
            warnings: Vec::new(),
        }
    }
}

/// A checkpoint with the state it implies (DESIGN §1).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointView {
    pub checkpoint_id: String,
    pub plan_id: String,
    pub seq: u64,
    pub trigger: CheckpointTrigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub step_index: usize,
    pub completed_steps: Vec<String>,
    pub failed_steps: Vec<String>,
    pub skipped_steps: Vec<String>,
    /// The definition at that moment.
    pub plan: Plan,
    /// Outputs of the steps that had completed, by step id.
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub context: Map<String, Value>,
    pub created_at: Micros,
}

impl CheckpointView {
    /// The checkpoint at `state.seq`, described from the state folded up to it.
    pub fn of(
        state: &PlanState,
        trigger: CheckpointTrigger,
        label: Option<String>,
        created_at: Micros,
    ) -> CheckpointView {
        let context = state
            .steps
            .iter()
            .filter(|s| s.rec.status == StepStatus::Completed)
            .map(|s| {
                (
                    s.def.step_id.clone(),
                    s.rec.output.clone().unwrap_or(Value::Null),
                )
            })
            .collect();
        CheckpointView {
            checkpoint_id: checkpoint_id(state.seq),
            plan_id: state.plan_id.clone(),
            seq: state.seq,
            trigger,
            label,
            step_index: state.current_step_index(),
            completed_steps: state.ids_with(StepStatus::Completed),
            failed_steps: state.ids_with(StepStatus::Failed),
            skipped_steps: state.ids_with(StepStatus::Skipped),
            plan: state.definition(),
            context,
            created_at,
        }
    }
}

/// Is the plan settled for someone waiting on it: ended, or paused with nothing running?
pub fn is_settled(state: &PlanState) -> bool {
    state.status.is_terminal() || (state.status == PlanStatus::Paused && state.drained)
}

/// A remote worker as a server has seen it (`GET /v1/workers`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker_id: String,
    /// The agent types of its latest poll.
    pub agent_types: Vec<String>,
    /// When it last polled, µs since the Unix epoch.
    pub last_poll_at: Micros,
    /// The tasks it holds now (leased, not reported).
    pub tasks: Vec<String>,
}
