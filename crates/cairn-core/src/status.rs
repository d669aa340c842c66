//! What each plan state and step status means, defined once.
//!
//! Everything that asks "is this plan finished?", "does this step let its dependents run?",
//! "which states does the metrics gauge list?" or "did this event change the plan's status?"
//! asks here: the fold, the scheduler, interventions, the engine, observers, metrics, the client
//! and the CLI. A new status is added here, with its meaning, and every user follows.

use serde::{Deserialize, Serialize};

use crate::event::EventKind;
use crate::state::PlanState;

/// The six plan states.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// Registered, not started.
    Idle,
    Running,
    /// Stopped for a reason ([`crate::state::PauseReason`]); resumes when told (or at `resume_at`).
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl PlanStatus {
    /// Every plan state, in the order of a plan's life.
    pub const ALL: [PlanStatus; 6] = [
        PlanStatus::Idle,
        PlanStatus::Running,
        PlanStatus::Paused,
        PlanStatus::Completed,
        PlanStatus::Failed,
        PlanStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Idle => "idle",
            PlanStatus::Running => "running",
            PlanStatus::Paused => "paused",
            PlanStatus::Completed => "completed",
            PlanStatus::Failed => "failed",
            PlanStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<PlanStatus> {
        PlanStatus::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Every state's name, comma separated (for messages that list them).
    pub fn names() -> String {
        PlanStatus::ALL.map(PlanStatus::as_str).join(", ")
    }

    /// Completed, failed or cancelled: nothing more happens by itself. (An intervention may
    /// still reopen a failed or completed plan; nothing reopens a cancelled one.)
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PlanStatus::Completed | PlanStatus::Failed | PlanStatus::Cancelled
        )
    }

    /// Started and not ended (running or paused): a plan the engine drives, or whose timers
    /// run, and so loads again after a restart.
    pub fn is_active(self) -> bool {
        matches!(self, PlanStatus::Running | PlanStatus::Paused)
    }

    /// The states of [`PlanStatus::is_active`] plans, by name (what a store's index is asked).
    pub fn active_names() -> Vec<&'static str> {
        PlanStatus::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .map(PlanStatus::as_str)
            .collect()
    }

    /// The status every event of type `type_name` leaves a plan in, whatever its data (`None`
    /// for types that leave it unchanged or whose data decides; see
    /// [`EventKind::plan_status_after`]).
    pub fn entered_by(type_name: &str) -> Option<PlanStatus> {
        Some(match type_name {
            "plan_started" | "plan_resumed" => PlanStatus::Running,
            "plan_paused" | "checkpoint_restored" => PlanStatus::Paused,
            "plan_cancelled" => PlanStatus::Cancelled,
            "plan_completed" => PlanStatus::Completed,
            "plan_failed" => PlanStatus::Failed,
            _ => return None,
        })
    }
}

/// What a step is doing.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies, its condition, a retry backoff or the plan to run.
    Pending,
    /// Handed to the remote-worker queue, not claimed by a worker yet.
    Queued,
    Running,
    Completed,
    Failed,
    Skipped,
    /// Its attempt answered, and a quality gate holds the result for a person to decide.
    AwaitingReview,
    Cancelled,
}

impl StepStatus {
    /// Every step status.
    pub const ALL: [StepStatus; 8] = [
        StepStatus::Pending,
        StepStatus::Queued,
        StepStatus::Running,
        StepStatus::Completed,
        StepStatus::Failed,
        StepStatus::Skipped,
        StepStatus::AwaitingReview,
        StepStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Queued => "queued",
            StepStatus::Running => "running",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::AwaitingReview => "awaiting_review",
            StepStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<StepStatus> {
        StepStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Has the step ended (for `rerun_from`, for templates, for a cancel that stops the rest)?
    /// A step awaiting review has not: its result is not decided yet.
    pub fn has_ended(self) -> bool {
        matches!(
            self,
            StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }

    /// Does the step count as done for its dependents (let them run)? A skipped step does
    /// once its own dependencies do (see the scheduler).
    pub fn satisfies(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Skipped)
    }

    /// Does an attempt of the step exist that has not reported (queued for a worker, or
    /// running)? Such a step counts against `max_parallel` and its result is awaited.
    pub fn is_active(self) -> bool {
        matches!(self, StepStatus::Queued | StepStatus::Running)
    }

    /// May `skip_step` skip it?
    pub fn may_skip(self) -> bool {
        matches!(
            self,
            StepStatus::Pending | StepStatus::Failed | StepStatus::AwaitingReview
        )
    }

    /// May `retry_step` run it again?
    pub fn may_retry(self) -> bool {
        matches!(
            self,
            StepStatus::Failed | StepStatus::Cancelled | StepStatus::Completed
        )
    }

    /// May `modify_step` change its definition? (A step under review may: its review is voided
    /// and it runs again.)
    pub fn may_modify(self) -> bool {
        matches!(
            self,
            StepStatus::Pending | StepStatus::Failed | StepStatus::AwaitingReview
        )
    }

    /// May `remove_step` remove it, or `reorder_steps` move it?
    pub fn may_move(self) -> bool {
        self == StepStatus::Pending
    }

    /// May `complete_step` supply its result by hand?
    pub fn may_complete(self) -> bool {
        matches!(
            self,
            StepStatus::Pending | StepStatus::Queued | StepStatus::Running | StepStatus::Failed
        )
    }
}

impl PlanState {
    /// Settled for someone waiting on it: ended, or paused with nothing running.
    pub fn is_settled(&self) -> bool {
        self.status.is_terminal() || (self.status == PlanStatus::Paused && self.drained)
    }
}

/// Event types that may change a plan's status (see [`EventKind::plan_status_after`]).
pub const PLAN_STATUS_EVENTS: &[&str] = &[
    "plan_registered",
    "plan_started",
    "plan_paused",
    "plan_resumed",
    "plan_cancelled",
    "plan_completed",
    "plan_failed",
    "checkpoint_restored",
    "intervention_applied",
    "rollback_started",
    "rollback_completed",
    "rollback_failed",
];

impl EventKind {
    /// The plan's status right after this event, when the event sets it, read from the event
    /// alone (no fold needed): what observers report as a state change.
    pub fn plan_status_after(&self) -> Option<PlanStatus> {
        match self {
            EventKind::PlanRegistered { origin, .. } => Some(match origin {
                // A fork or an import starts paused, as restored.
                Some(_) => PlanStatus::Paused,
                None => PlanStatus::Idle,
            }),
            EventKind::InterventionApplied {
                intervention,
                effect,
            } => match effect {
                Some(effect) => effect.plan.as_ref().map(|p| p.status),
                // Log format 1: the record's diff says whether the status changed.
                None => intervention
                    .diff
                    .iter()
                    .find(|c| c.path == "status")
                    .and_then(|c| c.after.as_str())
                    .and_then(PlanStatus::parse),
            },
            EventKind::RollbackStarted { .. } => Some(PlanStatus::Running),
            EventKind::RollbackCompleted { then } | EventKind::RollbackFailed { then, .. } => {
                Some(match then {
                    crate::rollback::RollbackEnd::Failed => PlanStatus::Failed,
                    crate::rollback::RollbackEnd::Cancelled => PlanStatus::Cancelled,
                })
            }
            other => PlanStatus::entered_by(other.type_name()),
        }
    }

    /// Can this event leave a plan settled (ended, or paused with nothing running)? Someone
    /// waiting for a plan to settle looks again only after such an event.
    pub fn may_settle(&self) -> bool {
        match self {
            EventKind::PlanDrained {}
            | EventKind::InterventionApplied { .. }
            | EventKind::RollbackCompleted { .. }
            | EventKind::RollbackFailed { .. } => true,
            other => other
                .plan_status_after()
                .is_some_and(|s| s.is_terminal() || s == PlanStatus::Paused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_serialised_form() {
        for s in PlanStatus::ALL {
            assert_eq!(PlanStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in StepStatus::ALL {
            assert_eq!(StepStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(PlanStatus::parse("done"), None);
        assert_eq!(
            PlanStatus::names(),
            "idle, running, paused, completed, failed, cancelled"
        );
        assert_eq!(PlanStatus::active_names(), ["running", "paused"]);
    }

    /// The meanings fit together: what is active has not ended, what satisfies has ended, and a
    /// step awaiting review neither runs nor has ended nor lets its dependents run.
    #[test]
    fn step_meanings_are_consistent() {
        for s in StepStatus::ALL {
            assert!(!(s.is_active() && s.has_ended()), "{s:?}");
            assert!(!s.satisfies() || s.has_ended(), "{s:?}");
            assert!(!s.may_move() || s.may_modify(), "{s:?}");
        }
        let r = StepStatus::AwaitingReview;
        assert!(!r.is_active() && !r.has_ended() && !r.satisfies() && r.may_skip());
    }

    /// Exactly the listed event types may change a plan's status.
    #[test]
    fn only_the_listed_events_change_a_plan_status() {
        for name in [
            "plan_started",
            "plan_paused",
            "plan_resumed",
            "plan_cancelled",
            "plan_completed",
            "plan_failed",
            "checkpoint_restored",
        ] {
            assert!(PLAN_STATUS_EVENTS.contains(&name), "{name}");
            assert!(PlanStatus::entered_by(name).is_some(), "{name}");
        }
        for name in ["step_started", "plan_drained", "checkpoint_created"] {
            assert!(!PLAN_STATUS_EVENTS.contains(&name), "{name}");
            assert_eq!(PlanStatus::entered_by(name), None);
        }
        let terminal: Vec<_> = PlanStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                PlanStatus::Completed,
                PlanStatus::Failed,
                PlanStatus::Cancelled
            ]
        );
    }
}
