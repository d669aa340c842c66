//! Reviews: a person's decision on an attempt a quality gate held back.
//!
//! A review opens with `review_opened` (its id is `rv-<seq>` of that event), collects votes from
//! `approve_step` / `reject_step` interventions, and closes once: approved (a quorum of distinct
//! approvers), rejected (the first rejection), timed out (the gate's `on_timeout`, decided by
//! `system:timeout`) or voided (the plan was cancelled or failed, the step modified, removed,
//! skipped or sent back by a rerun or a restore). A plan that has ended has none open, so the
//! inbox never lists a review nobody is asked to decide. Reviews are kept in the plan's state,
//! closed ones too, so the inbox and the audit can show them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gate::{FailedCriterion, Scores};
use crate::time::Timestamp;

/// The id of the review opened at log position `seq` of its plan.
pub fn review_id(seq: u64) -> String {
    format!("rv-{seq}")
}

#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    Open,
    Closed,
}

impl ReviewState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Open => "open",
            ReviewState::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<ReviewState> {
        match s {
            "open" => Some(ReviewState::Open),
            "closed" => Some(ReviewState::Closed),
            _ => None,
        }
    }
}

/// How a closed review ended.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewOutcome {
    /// A quorum approved: the step completed with the attempt's output (or a reviewer's).
    Approved,
    /// A reviewer rejected: the step failed, or runs again when the rejection asked for it.
    Rejected,
    /// Closed without a decision: the plan was cancelled or failed, or the step changed under
    /// it.
    Voided,
    /// Nobody decided in time: the gate's `on_timeout` was applied by `system:timeout`.
    TimedOut,
}

impl ReviewOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewOutcome::Approved => "approved",
            ReviewOutcome::Rejected => "rejected",
            ReviewOutcome::Voided => "voided",
            ReviewOutcome::TimedOut => "timed_out",
        }
    }
}

#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteDecision {
    Approve,
    Reject,
}

/// One user's decision on a review.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub user: String,
    pub decision: VoteDecision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: Timestamp,
    /// An approver's replacement of the attempt's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub output: Option<Value>,
    /// A rejection that asked for a new attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// A review of one attempt of one step.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// `rv-<seq>`, the log position of its `review_opened` event.
    pub review_id: String,
    pub plan_id: String,
    pub step_id: String,
    /// The attempt under review; a decision naming another one is stale.
    pub attempt: u32,
    pub scores: Scores,
    /// The criteria the attempt did not meet (empty when the gate reviews every result).
    #[serde(default)]
    pub failed: Vec<FailedCriterion>,
    /// The attempt's output, held here until the review approves it: dependents and templates
    /// never see it before.
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub output: Value,
    /// Distinct approvals needed.
    pub quorum: u32,
    #[serde(default)]
    pub votes: Vec<Vote>,
    /// When `on_timeout` decides; none: the review waits for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    pub state: ReviewState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ReviewOutcome>,
    pub opened_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
}

impl Review {
    pub fn is_open(&self) -> bool {
        self.state == ReviewState::Open
    }

    /// Distinct users who approved.
    pub fn approvals(&self) -> usize {
        self.votes
            .iter()
            .filter(|v| v.decision == VoteDecision::Approve)
            .count()
    }

    pub fn voted(&self, user: &str) -> bool {
        self.votes.iter().any(|v| v.user == user)
    }

    pub(crate) fn close(&mut self, outcome: ReviewOutcome, at: Timestamp) {
        self.state = ReviewState::Closed;
        self.outcome = Some(outcome);
        self.closed_at = Some(at);
    }
}
