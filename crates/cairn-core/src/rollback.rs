//! Rollback: undoing what a plan did by running the compensations of its steps, one at a time,
//! newest start first.
//!
//! The order is decided once, when the rollback starts, and recorded in `rollback_started`:
//! replay applies it and never recomputes it. Each compensation is an attempt of kind
//! `compensation` on its step, with its own record ([`CompensationRecord`]) beside the step's.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attempt::Invocation;
use crate::event::Timestamp;
use crate::state::PlanState;
use crate::status::{PlanStatus, StepStatus};

/// Where a rollback stands.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStatus {
    Running,
    Completed,
    /// A compensation exhausted its retries: the rest are still pending.
    Failed,
}

/// The state a plan takes when its rollback ends.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackEnd {
    Failed,
    Cancelled,
}

/// A plan's rollback: what is compensated, what is left.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub status: RollbackStatus,
    /// Steps whose compensation completed, in the order they ran.
    pub done: Vec<String>,
    /// Steps still to compensate, next first.
    pub pending: Vec<String>,
    /// The plan's state once the rollback ends.
    pub then: RollbackEnd,
}

/// What a compensation is doing.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationStatus {
    Pending,
    Running,
    Completed,
    Failed,
    /// Skipped by an operator after it failed (`skip_step` with `compensation: true`).
    Skipped,
}

/// A step's compensation, beside the step's own record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationRecord {
    pub status: CompensationStatus,
    /// Compensation attempts ever started; the number of the latest.
    pub attempts: u32,
    /// Attempts counted against the compensation's retry policy since it last (re)started.
    pub run_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// What the attempt in flight was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<std::sync::Arc<Invocation>>,
}

impl CompensationRecord {
    pub fn new() -> CompensationRecord {
        CompensationRecord {
            status: CompensationStatus::Pending,
            attempts: 0,
            run_attempts: 0,
            output: None,
            error: None,
            retry_at: None,
            invocation: None,
        }
    }
}

impl Default for CompensationRecord {
    fn default() -> Self {
        CompensationRecord::new()
    }
}

/// A step's compensation as answers show it (the plan's state, its snapshot, the step in full).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationView {
    pub status: CompensationStatus,
    /// Compensation attempts ever started; the number of the latest.
    pub attempts: u32,
    /// What the last completed attempt answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub output: Option<Value>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a failed attempt is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
}

impl CompensationView {
    pub fn of(record: &CompensationRecord) -> CompensationView {
        CompensationView {
            status: record.status,
            attempts: record.attempts,
            output: record.output.clone(),
            error: record.error.clone(),
            retry_at: record.retry_at,
        }
    }
}

/// The steps a rollback starting now compensates, in the order it runs them: every step with a
/// `compensate` that completed, or whose last attempt started with an unknown outcome (in
/// flight, or interrupted), newest start in the log first. Skipped and never-started steps are
/// not compensated; nor is a step whose compensation already completed.
pub fn order(state: &PlanState) -> Vec<String> {
    let mut which: Vec<(u64, &str)> = state
        .steps
        .iter()
        .filter(|s| s.def.compensate.is_some())
        .filter(|s| {
            s.rec
                .compensation
                .as_ref()
                .is_none_or(|c| c.status != CompensationStatus::Completed)
        })
        .filter(|s| match s.rec.status {
            StepStatus::Completed => true,
            status if status.is_active() => true,
            // Interrupted: back to pending with no error of its own.
            StepStatus::Pending | StepStatus::Cancelled => {
                s.rec.attempts > 0 && s.rec.error.is_none()
            }
            _ => false,
        })
        .filter_map(|s| Some((s.rec.start_seq?, s.def.step_id.as_str())))
        .collect();
    which.sort_by_key(|w| std::cmp::Reverse(w.0));
    which.into_iter().map(|(_, id)| id.to_owned()).collect()
}

/// What a rollback of the plan now would do: the state it ends in and the compensations it runs,
/// in order. A failed or cancelled plan not rolled back yet rolls back what [`order`] says; one
/// whose rollback failed continues with the compensations still pending. `Err` says why the
/// plan cannot be rolled back.
pub fn would_run(state: &PlanState) -> Result<(RollbackEnd, Vec<String>), String> {
    let then = match state.status {
        PlanStatus::Failed => RollbackEnd::Failed,
        PlanStatus::Cancelled => RollbackEnd::Cancelled,
        status => {
            return Err(format!(
                "plan {} is {}; only a failed or cancelled plan can be rolled back",
                state.plan_id,
                status.as_str()
            ))
        }
    };
    match &state.rollback {
        None => Ok((then, order(state))),
        Some(r) if r.status == RollbackStatus::Failed => Ok((r.then, r.pending.clone())),
        Some(_) => Err(format!(
            "plan {} has already been rolled back",
            state.plan_id
        )),
    }
}
