//! Attempt history: every attempt of a plan's steps as its log tells it (start, end, outcome,
//! what it was sent, what it answered), for the dashboard and `GET /v1/plans/{id}/steps/{step}`.
//!
//! A plan's state keeps only the latest attempt of each step; the log keeps them all.
//! [`AttemptLog`] is a pure fold over the events of [`ATTEMPT_EVENTS`] (the only kinds that start,
//! end or describe an attempt), optionally kept to a few steps, so a reader of a large plan pays
//! for the steps it shows, not for every step.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attempt::{AttemptKind, Invocation};
use crate::event::{Event, EventKind, Timestamp};
use crate::gate::{FailedCriterion, Scores, VerdictKind};
use crate::plan::StepDef;
use crate::state::{PlanState, StepStatus};

/// The event kinds that start, end or describe a step's attempt: what [`AttemptLog`] reads.
pub const ATTEMPT_EVENTS: &[&str] = &[
    "step_started",
    "step_claimed",
    "step_recovered",
    "gate_evaluated",
    "step_completed",
    "review_opened",
    "step_failed",
    "step_interrupted",
    "step_skipped",
    "plan_cancelled",
    "checkpoint_restored",
    "intervention_applied",
];

/// How an attempt ended (or that it has not).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Handed to the remote-worker queue; no worker has claimed it yet.
    Queued,
    Running,
    Completed,
    /// Its error ended it (`retry_at` set when another attempt follows).
    Failed,
    /// Its scores failed the step's gate and another attempt followed.
    GateFailed,
    /// Held for a person's review.
    AwaitingReview,
    /// Held for review, then approved.
    Approved,
    /// Held for review, then rejected.
    Rejected,
    /// Stopped by an immediate pause, a recovery or a restore.
    Interrupted,
    /// Ended by an intervention that completed the step by hand.
    CompletedByHand,
    Skipped,
    Cancelled,
    /// Its step was removed from the plan.
    Removed,
    /// Ended otherwise (another attempt started without a recorded end).
    Ended,
}

/// One attempt of a step.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    /// The attempt's number (1, 2, …), counted across runs and restores.
    pub attempt: u32,
    /// The run it belongs to (bumped by retry and rerun interventions).
    pub run: u32,
    pub outcome: AttemptOutcome,
    pub started_at: Timestamp,
    /// `None` while it runs.
    pub ended_at: Option<Timestamp>,
    /// What the agent receives to deduplicate work: `plan_id/step_id/run`.
    pub idempotency_key: String,
    /// The remote worker that claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// What it was sent (absent in logs written before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<Invocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<HashMap<String, f64>>))]
    pub scores: Option<Scores>,
    /// The gate's verdict on its scores, for a gated step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictKind>,
    /// The gate criteria its scores failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedCriterion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due, for a failed attempt that is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// The review that held its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_id: Option<String>,
}

/// An attempt's span, for a timeline: number, outcome, start and end.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptSpan {
    pub attempt: u32,
    pub run: u32,
    pub outcome: AttemptOutcome,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

impl From<&AttemptView> for AttemptSpan {
    fn from(a: &AttemptView) -> AttemptSpan {
        AttemptSpan {
            attempt: a.attempt,
            run: a.run,
            outcome: a.outcome,
            started_at: a.started_at,
            ended_at: a.ended_at,
        }
    }
}

/// The attempt spans of one step (`GET /v1/plans/{id}/attempts`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepAttempts {
    pub step_id: String,
    /// Its position in the plan (0-based).
    pub index: usize,
    pub attempts: Vec<AttemptSpan>,
}

/// One step in full (`GET /v1/plans/{id}/steps/{step}`): its definition (with its gate's
/// bounds), its record, and every attempt.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDetail {
    pub plan_id: String,
    pub step_id: String,
    /// Its position in the plan (0-based).
    pub index: usize,
    pub definition: StepDef,
    /// The steps it waits for (the previous one when the definition names none).
    pub depends_on: Vec<String>,
    pub status: StepStatus,
    pub run: u32,
    /// The idempotency key of the current run.
    pub idempotency_key: String,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<HashMap<String, f64>>))]
    pub scores: Option<Scores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
    /// The step's compensation, once a rollback included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<crate::rollback::CompensationView>,
}

impl StepDetail {
    /// The step `index` of `state` with the attempts `log` folded for it.
    pub fn of(state: &PlanState, index: usize, attempts: Vec<AttemptView>) -> StepDetail {
        let s = &state.steps[index];
        StepDetail {
            plan_id: state.plan_id.clone(),
            step_id: s.def.step_id.clone(),
            index,
            definition: StepDef::clone(&s.def),
            depends_on: match &s.def.depends_on {
                Some(deps) => deps.clone(),
                None if index == 0 => Vec::new(),
                None => vec![state.steps[index - 1].def.step_id.clone()],
            },
            status: s.rec.status,
            run: s.rec.run,
            idempotency_key: crate::idempotency_key(&state.plan_id, &s.def.step_id, s.rec.run),
            started_at: s.rec.started_at,
            ended_at: s.rec.ended_at,
            output: s.rec.output.clone(),
            scores: s.rec.scores.as_deref().cloned(),
            error: s.rec.error.clone(),
            retry_at: s.rec.retry_at,
            attempts,
            compensation: s
                .rec
                .compensation
                .as_ref()
                .map(|c| crate::rollback::CompensationView::of(c)),
        }
    }
}

/// The attempts of a plan's steps, folded from its log ([`AttemptLog::apply`] each event of
/// [`ATTEMPT_EVENTS`] in order; other events are ignored).
#[derive(Debug, Clone, Default)]
pub struct AttemptLog {
    plan_id: String,
    /// Only these steps are kept (all when `None`).
    only: Option<HashSet<String>>,
    steps: HashMap<String, Vec<AttemptView>>,
    /// Steps whose latest attempt has not ended.
    open: HashSet<String>,
}

impl AttemptLog {
    /// A fold for the steps `only` (every step when `None`).
    pub fn new(plan_id: &str, only: Option<HashSet<String>>) -> AttemptLog {
        AttemptLog {
            plan_id: plan_id.to_owned(),
            only,
            ..AttemptLog::default()
        }
    }

    /// The attempts of `step_id`, oldest first (empty when it never started).
    pub fn attempts(&self, step_id: &str) -> &[AttemptView] {
        self.steps.get(step_id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Takes the attempts of `step_id` out of the fold.
    pub fn take(&mut self, step_id: &str) -> Vec<AttemptView> {
        self.steps.remove(step_id).unwrap_or_default()
    }

    fn wanted(&self, step_id: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(step_id))
    }

    fn numbered(&mut self, step_id: &str, attempt: u32) -> Option<&mut AttemptView> {
        self.steps
            .get_mut(step_id)?
            .iter_mut()
            .rev()
            .find(|a| a.attempt == attempt)
    }

    /// Ends `step_id`'s open attempt, if it has one.
    fn end(&mut self, step_id: &str, at: Timestamp, outcome: AttemptOutcome) {
        if !self.open.remove(step_id) {
            return;
        }
        if let Some(a) = self.steps.get_mut(step_id).and_then(|v| v.last_mut()) {
            a.outcome = outcome;
            a.ended_at = Some(at);
        }
    }

    /// Ends `step_id`'s attempt number `attempt` (a result names its attempt; a late one for
    /// an attempt already ended changes nothing).
    fn end_numbered(
        &mut self,
        step_id: &str,
        attempt: u32,
        at: Timestamp,
        outcome: AttemptOutcome,
    ) -> Option<&mut AttemptView> {
        let is_open_one = self.open.contains(step_id)
            && self
                .steps
                .get(step_id)
                .and_then(|v| v.last())
                .is_some_and(|a| a.attempt == attempt);
        if !is_open_one {
            return None;
        }
        self.open.remove(step_id);
        let a = self.steps.get_mut(step_id)?.last_mut()?;
        a.outcome = outcome;
        a.ended_at = Some(at);
        Some(a)
    }

    pub fn apply(&mut self, event: &Event) {
        let at = event.at;
        match &event.kind {
            EventKind::StepStarted {
                step_id,
                kind: AttemptKind::Step,
                attempt,
                run,
                queued,
                invocation,
            } if self.wanted(step_id) => {
                // An attempt still open when the next starts ended without its own event: a
                // gate retry (its verdict said so) or an end the log does not spell out.
                let gate_failed = self
                    .steps
                    .get(step_id)
                    .and_then(|v| v.last())
                    .is_some_and(|a| a.verdict == Some(VerdictKind::Failed));
                self.end(
                    step_id,
                    at,
                    if gate_failed {
                        AttemptOutcome::GateFailed
                    } else {
                        AttemptOutcome::Ended
                    },
                );
                self.steps
                    .entry(step_id.clone())
                    .or_default()
                    .push(AttemptView {
                        attempt: *attempt,
                        run: *run,
                        outcome: if *queued {
                            AttemptOutcome::Queued
                        } else {
                            AttemptOutcome::Running
                        },
                        started_at: at,
                        ended_at: None,
                        idempotency_key: crate::idempotency_key(&self.plan_id, step_id, *run),
                        worker_id: None,
                        invocation: invocation.as_deref().cloned(),
                        output: None,
                        scores: None,
                        verdict: None,
                        failed: Vec::new(),
                        error: None,
                        retry_at: None,
                        review_id: None,
                    });
                self.open.insert(step_id.clone());
            }
            EventKind::StepClaimed {
                step_id,
                attempt,
                worker_id,
            } => {
                if let Some(a) = self.numbered(step_id, *attempt) {
                    a.worker_id = Some(worker_id.clone());
                    if a.outcome == AttemptOutcome::Queued {
                        a.outcome = AttemptOutcome::Running;
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
                // Recovery after a restart sends the same attempt again: it stays open, queued
                // for a worker again or running here (and a worker that claimed it is gone).
                let open = self.open.contains(step_id);
                if let Some(a) = self.numbered(step_id, *attempt) {
                    if open && a.ended_at.is_none() {
                        if *queued {
                            a.outcome = AttemptOutcome::Queued;
                            a.worker_id = None;
                        } else {
                            a.outcome = AttemptOutcome::Running;
                        }
                        if invocation.is_some() {
                            a.invocation = invocation.as_deref().cloned();
                        }
                    }
                }
            }
            EventKind::GateEvaluated {
                step_id,
                attempt,
                scores,
                verdict,
                failed,
            } => {
                if let Some(a) = self.numbered(step_id, *attempt) {
                    a.scores = Some(scores.clone());
                    a.verdict = Some(*verdict);
                    a.failed = failed.clone();
                }
            }
            EventKind::StepCompleted {
                step_id,
                attempt,
                output,
                scores,
            } => {
                if let Some(a) = self.end_numbered(step_id, *attempt, at, AttemptOutcome::Completed)
                {
                    a.output = Some(output.clone());
                    if scores.is_some() {
                        a.scores = scores.clone();
                    }
                }
            }
            EventKind::ReviewOpened {
                review_id,
                step_id,
                attempt,
                output,
                ..
            } => {
                if let Some(a) =
                    self.end_numbered(step_id, *attempt, at, AttemptOutcome::AwaitingReview)
                {
                    a.output = Some(output.clone());
                    a.review_id = Some(review_id.clone());
                }
            }
            EventKind::StepFailed {
                step_id,
                attempt,
                error,
                retry_at,
            } => {
                if let Some(a) = self.end_numbered(step_id, *attempt, at, AttemptOutcome::Failed) {
                    a.error = Some(error.clone());
                    a.retry_at = *retry_at;
                }
            }
            EventKind::StepInterrupted {
                step_id,
                kind: AttemptKind::Step,
                attempt,
                cause,
            } => {
                if let Some(a) =
                    self.end_numbered(step_id, *attempt, at, AttemptOutcome::Interrupted)
                {
                    a.error = Some(cause.clone());
                }
            }
            EventKind::StepSkipped { step_id, .. } => {
                self.end(step_id, at, AttemptOutcome::Skipped)
            }
            EventKind::PlanCancelled { .. } => {
                for id in self.open.iter().cloned().collect::<Vec<_>>() {
                    self.end(&id, at, AttemptOutcome::Cancelled);
                }
            }
            EventKind::CheckpointRestored { .. } => {
                for id in self.open.iter().cloned().collect::<Vec<_>>() {
                    self.end(&id, at, AttemptOutcome::Interrupted);
                }
            }
            EventKind::InterventionApplied {
                effect: Some(effect),
                ..
            } => {
                for id in &effect.removed {
                    self.end(id, at, AttemptOutcome::Removed);
                }
                for s in &effect.set {
                    let id = &s.def.step_id;
                    let status = s.rec.status;
                    if self.open.contains(id) && !status.is_active() {
                        let outcome = match status {
                            StepStatus::Completed => AttemptOutcome::CompletedByHand,
                            StepStatus::Skipped => AttemptOutcome::Skipped,
                            StepStatus::Failed => AttemptOutcome::Failed,
                            StepStatus::Cancelled => AttemptOutcome::Cancelled,
                            _ => AttemptOutcome::Interrupted,
                        };
                        self.end(id, at, outcome);
                        if status == StepStatus::Completed {
                            if let Some(a) = self.steps.get_mut(id).and_then(|v| v.last_mut()) {
                                a.output = s.rec.output.clone();
                            }
                        }
                    } else if status != StepStatus::AwaitingReview {
                        // A review decided: the attempt it held was approved or rejected.
                        if let Some(a) = self.steps.get_mut(id).and_then(|v| v.last_mut()) {
                            if a.outcome == AttemptOutcome::AwaitingReview {
                                a.outcome = if status == StepStatus::Completed {
                                    AttemptOutcome::Approved
                                } else {
                                    AttemptOutcome::Rejected
                                };
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: u64, kind: EventKind) -> Event {
        Event {
            id: seq,
            seq,
            plan_id: "p".into(),
            at: Timestamp::from_micros(seq as i64 * 1_000_000),
            actor: "engine".into(),
            kind,
            checkpoint: None,
        }
    }

    fn started(seq: u64, step: &str, attempt: u32, run: u32, queued: bool) -> Event {
        ev(
            seq,
            EventKind::StepStarted {
                step_id: step.into(),
                kind: AttemptKind::Step,
                attempt,
                run,
                queued,
                invocation: Some(std::sync::Arc::new(Invocation {
                    action: "echo".into(),
                    agent_type: "builtin".into(),
                    params: json!({"n": attempt}),
                    gate_feedback: None,
                })),
            },
        )
    }

    #[test]
    fn every_attempt_is_kept_with_its_end_outcome_and_invocation() {
        let mut log = AttemptLog::new("p", None);
        log.apply(&started(2, "a", 1, 1, false));
        log.apply(&ev(
            3,
            EventKind::StepFailed {
                step_id: "a".into(),
                attempt: 1,
                error: "boom".into(),
                retry_at: Some(Timestamp::from_micros(9_000_000)),
            },
        ));
        log.apply(&started(4, "a", 2, 1, true));
        log.apply(&ev(
            5,
            EventKind::StepClaimed {
                step_id: "a".into(),
                attempt: 2,
                worker_id: "w1".into(),
            },
        ));
        // A late result of attempt 1 changes nothing.
        log.apply(&ev(
            6,
            EventKind::StepCompleted {
                step_id: "a".into(),
                attempt: 1,
                output: json!("late"),
                scores: None,
            },
        ));
        assert_eq!(log.attempts("a")[1].outcome, AttemptOutcome::Running);
        // A restart hands it to the queue again; a worker claims it again.
        log.apply(&ev(
            6,
            EventKind::StepRecovered {
                step_id: "a".into(),
                kind: AttemptKind::Step,
                attempt: 2,
                queued: true,
                invocation: None,
            },
        ));
        assert_eq!(log.attempts("a")[1].outcome, AttemptOutcome::Queued);
        assert_eq!(log.attempts("a")[1].worker_id, None);
        log.apply(&ev(
            6,
            EventKind::StepClaimed {
                step_id: "a".into(),
                attempt: 2,
                worker_id: "w1".into(),
            },
        ));
        log.apply(&ev(
            7,
            EventKind::StepCompleted {
                step_id: "a".into(),
                attempt: 2,
                output: json!({"ok": true}),
                scores: None,
            },
        ));
        let a = log.attempts("a");
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].outcome, a[0].error.as_deref(), a[0].ended_at),
            (
                AttemptOutcome::Failed,
                Some("boom"),
                Some(Timestamp::from_micros(3_000_000))
            )
        );
        assert_eq!(a[0].retry_at, Some(Timestamp::from_micros(9_000_000)));
        assert_eq!(a[1].outcome, AttemptOutcome::Completed);
        assert_eq!(a[1].worker_id.as_deref(), Some("w1"));
        assert_eq!(a[1].output, Some(json!({"ok": true})));
        assert_eq!(a[1].idempotency_key, "p/a/1");
        assert_eq!(a[1].invocation.as_ref().unwrap().params, json!({"n": 2}));
    }

    #[test]
    fn the_kinds_read_from_the_store_are_the_kinds_the_fold_handles() {
        let handled = [
            started(1, "a", 1, 1, false).kind,
            EventKind::StepClaimed {
                step_id: "a".into(),
                attempt: 1,
                worker_id: "w".into(),
            },
            EventKind::StepRecovered {
                step_id: "a".into(),
                kind: AttemptKind::Step,
                attempt: 1,
                queued: false,
                invocation: None,
            },
            EventKind::GateEvaluated {
                step_id: "a".into(),
                attempt: 1,
                scores: Scores::default(),
                verdict: VerdictKind::Passed,
                failed: Vec::new(),
            },
            EventKind::StepCompleted {
                step_id: "a".into(),
                attempt: 1,
                output: Value::Null,
                scores: None,
            },
            EventKind::StepFailed {
                step_id: "a".into(),
                attempt: 1,
                error: "e".into(),
                retry_at: None,
            },
            EventKind::StepInterrupted {
                step_id: "a".into(),
                kind: Default::default(),
                attempt: 1,
                cause: "c".into(),
            },
            EventKind::PlanCancelled {
                reason: None,
                rollback: false,
            },
        ];
        for kind in &handled {
            assert!(
                ATTEMPT_EVENTS.contains(&kind.type_name()),
                "{}",
                kind.type_name()
            );
        }
        for name in [
            "review_opened",
            "step_skipped",
            "checkpoint_restored",
            "intervention_applied",
        ] {
            assert!(ATTEMPT_EVENTS.contains(&name), "{name}");
        }
    }

    #[test]
    fn a_gate_retry_cancel_and_the_step_filter() {
        let mut log = AttemptLog::new("p", Some(HashSet::from(["a".to_owned()])));
        log.apply(&started(2, "a", 1, 1, false));
        log.apply(&started(3, "b", 1, 1, false));
        log.apply(&ev(
            4,
            EventKind::GateEvaluated {
                step_id: "a".into(),
                attempt: 1,
                scores: Scores::from_pairs([("q", 0.2)]),
                verdict: VerdictKind::Failed,
                failed: vec![FailedCriterion {
                    criterion: "min_scores.q".into(),
                    score: Some(0.2),
                    bound: 0.5,
                }],
            },
        ));
        log.apply(&started(4, "a", 2, 1, false));
        log.apply(&ev(
            5,
            EventKind::PlanCancelled {
                reason: None,
                rollback: false,
            },
        ));
        let a = log.attempts("a");
        assert_eq!(a[0].outcome, AttemptOutcome::GateFailed);
        assert_eq!(a[0].failed.len(), 1);
        assert_eq!(a[1].outcome, AttemptOutcome::Cancelled);
        assert_eq!(a[1].ended_at, Some(Timestamp::from_micros(5_000_000)));
        assert!(log.attempts("b").is_empty(), "b was not asked for");
    }
}
