//! Read models: what a client sees of a plan (`GET /v1/plans/{id}`), of a listing, of a
//! checkpoint and of the audit snapshot. Pure projections of [`PlanState`], shared by the CLI
//! (on a local store and over HTTP alike), the server and the library, so that both ways of
//! reading a plan answer the same typed values.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{checkpoint_id, CheckpointTrigger, Timestamp};
use crate::intervention::Intervention;
use crate::plan::Plan;
use crate::state::{OriginRef, PauseReason, PlanState, PlanStatus, StepStatus};

/// One page of a list: `{"items": [...], "next_cursor": "…" or null}`. `next_cursor` is
/// opaque; `None` on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page cut from `items` fetched with one more than `limit`: the extra item, if there,
    /// proves there is more, and the cursor is `cursor_of` the last item kept.
    pub fn cut(mut items: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> String) -> Page<T> {
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if more {
            items.last().map(cursor_of)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// How far a plan has got, in step counts.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub running: usize,
}

impl Progress {
    pub fn of(state: &PlanState) -> Progress {
        let count = |st: StepStatus| state.steps.iter().filter(|s| s.rec.status == st).count();
        Progress {
            total: state.steps.len(),
            completed: count(StepStatus::Completed),
            failed: count(StepStatus::Failed),
            skipped: count(StepStatus::Skipped),
            running: count(StepStatus::Running),
        }
    }
}

/// A plan as listed (`GET /v1/plans`): enough to see at a glance where it stands.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub plan_id: String,
    pub query: String,
    pub state: PlanStatus,
    pub pause_reason: Option<PauseReason>,
    pub version: u64,
    pub progress: Progress,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<Timestamp>,
    pub last_seq: u64,
}

impl PlanSummary {
    pub fn of(state: &PlanState) -> PlanSummary {
        PlanSummary {
            plan_id: state.plan_id.clone(),
            query: state.query.clone(),
            state: state.status,
            pause_reason: state.pause_reason,
            version: state.version,
            progress: Progress::of(state),
            created_at: state.created_at,
            updated_at: state.updated_at,
            resume_at: state.resume_at,
            last_seq: state.seq,
        }
    }
}

/// A checkpoint as listed (the state it implies is a [`CheckpointView`]).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub checkpoint_id: String,
    pub plan_id: String,
    pub seq: u64,
    pub trigger: CheckpointTrigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub created_at: Timestamp,
}

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
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// What a `queued` step waits for: `a worker of agent type X`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The step's compensation, once a rollback included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<crate::rollback::CompensationView>,
}

/// The state of a plan (`GET /v1/plans/{id}`).
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
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub last_seq: u64,
    /// The inputs the plan was started with (`inputs.*`); absent when it has none.
    #[serde(default, skip_serializing_if = "crate::plan::no_inputs")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub inputs: Value,
    /// The template version the plan was made from, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::plan::TemplateRef>,
    /// The plan's rollback, once one started: its status, the steps compensated (in the order
    /// they ran) and those still to compensate (next first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<crate::rollback::Rollback>,
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
                    compensation: s
                        .rec
                        .compensation
                        .as_ref()
                        .map(|c| crate::rollback::CompensationView::of(c)),
                })
                .collect(),
            created_at: state.created_at,
            updated_at: state.updated_at,
            resume_at: state.resume_at,
            failure: state.failure.clone(),
            last_seq: state.seq,
            inputs: state.inputs.clone(),
            template: state.template.clone(),
            rollback: state.rollback.clone(),
            warnings: Vec::new(),
        }
    }
}

/// One compensation a rollback runs.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedCompensation {
    /// The step it undoes.
    pub step_id: String,
    /// The compensation's action and agent type.
    pub action: String,
    pub agent_type: String,
}

/// What a rollback runs (or, for a dry run, would run): its compensations in order, and the
/// plan's state after the request (unchanged by a dry run).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackAnswer {
    pub dry_run: bool,
    /// Every compensation of the rollback, in the order they run (for a rollback continued
    /// after one that failed: those still to run).
    pub compensations: Vec<PlannedCompensation>,
    pub plan: PlanView,
}

impl RollbackAnswer {
    pub fn of(state: &PlanState, order: Vec<String>, dry_run: bool) -> RollbackAnswer {
        let compensations = order
            .into_iter()
            .map(|step_id| {
                let comp = state.step(&step_id).and_then(|s| s.def.compensate.as_ref());
                PlannedCompensation {
                    action: comp.map(|c| c.action.clone()).unwrap_or_default(),
                    agent_type: comp.map(|c| c.agent_type.clone()).unwrap_or_default(),
                    step_id,
                }
            })
            .collect();
        RollbackAnswer {
            dry_run,
            compensations,
            plan: PlanView::of(state),
        }
    }
}

/// A checkpoint with the state it implies.
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
    pub created_at: Timestamp,
}

impl CheckpointView {
    /// The checkpoint at `state.seq`, described from the state folded up to it.
    pub fn of(
        state: &PlanState,
        trigger: CheckpointTrigger,
        label: Option<String>,
        created_at: Timestamp,
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

/// One step of the audit snapshot: its definition's names and its record, flat.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotStep {
    pub step_id: String,
    pub action: String,
    pub agent_type: String,
    pub params: Value,
    pub depends_on: Vec<String>,
    pub status: StepStatus,
    pub attempts: u32,
    pub run: u32,
    pub output: Option<Value>,
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<HashMap<String, f64>>))]
    pub scores: Option<crate::gate::Scores>,
    pub error: Option<String>,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// The step's compensation, once a rollback included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<crate::rollback::CompensationView>,
}

/// Everything about a plan in one document, for audit. It keeps the names the
/// prototype's users read: `plan` (the definition, with `plan["steps"]`), `state`,
/// `current_step_index`, `completed_steps`, `failed_steps`, `skipped_steps`, `checkpoints`,
/// `interventions`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub plan_id: String,
    /// The definition as it stands (with its `steps`).
    pub plan: Plan,
    pub version: u64,
    pub state: PlanStatus,
    pub pause_reason: Option<PauseReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<Timestamp>,
    pub total_steps: usize,
    pub current_step_index: usize,
    pub completed_steps: Vec<String>,
    pub failed_steps: Vec<String>,
    pub skipped_steps: Vec<String>,
    pub running_steps: Vec<String>,
    /// Every step's record, in plan order.
    pub steps: Vec<SnapshotStep>,
    pub checkpoints: Vec<CheckpointSummary>,
    pub interventions: Vec<Intervention>,
    pub event_count: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub taken_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub origin: Option<OriginRef>,
    /// The plan's rollback, once one started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<crate::rollback::Rollback>,
}

impl Snapshot {
    pub fn of(
        state: &PlanState,
        checkpoints: Vec<CheckpointSummary>,
        interventions: Vec<Intervention>,
        taken_at: Timestamp,
    ) -> Snapshot {
        let view = PlanView::of(state);
        let steps = state
            .steps
            .iter()
            .zip(view.steps)
            .map(|(s, v)| SnapshotStep {
                step_id: v.step_id,
                action: v.action,
                agent_type: v.agent_type,
                params: s.def.params.clone(),
                depends_on: v.depends_on,
                status: v.status,
                attempts: v.attempts,
                run: v.run,
                output: s.rec.output.clone(),
                scores: s.rec.scores.as_deref().cloned(),
                error: v.error,
                started_at: v.started_at,
                ended_at: v.ended_at,
                retry_at: v.retry_at,
                compensation: v.compensation,
            })
            .collect();
        Snapshot {
            plan_id: view.plan_id,
            plan: state.definition(),
            version: view.version,
            state: view.state,
            pause_reason: view.pause_reason,
            resume_at: view.resume_at,
            total_steps: view.total_steps,
            current_step_index: view.current_step_index,
            completed_steps: view.completed_steps,
            failed_steps: view.failed_steps,
            skipped_steps: view.skipped_steps,
            running_steps: view.running_steps,
            steps,
            checkpoints,
            interventions,
            event_count: state.seq,
            created_at: state.created_at,
            updated_at: state.updated_at,
            taken_at,
            failure: view.failure,
            origin: state.origin.clone(),
            rollback: view.rollback,
        }
    }
}

/// Is the plan settled for someone waiting on it: ended, or paused with nothing running?
pub fn is_settled(state: &PlanState) -> bool {
    state.is_settled()
}

/// An engine node sharing the server's store, as `GET /v1/nodes` lists it.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    /// Where the other nodes reach it (`http://host:port`); absent for a node that serves no
    /// HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub started_at: Timestamp,
    /// Its latest heartbeat, by the store's clock.
    pub heartbeat_at: Timestamp,
    /// Plans whose lease it holds now.
    pub plans_owned: u64,
    /// The node that answered this request.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Its latest heartbeat is at most three lease periods old.
    pub alive: bool,
}

/// `GET /v1/nodes`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}

/// A remote worker as a server has seen it (`GET /v1/workers`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker_id: String,
    /// The agent types of its latest poll.
    pub agent_types: Vec<String>,
    /// When it last polled, µs since the Unix epoch.
    pub last_poll_at: Timestamp,
    /// The tasks it holds now (leased, not reported).
    pub tasks: Vec<String>,
}
