//! Attempts: one execution of a step's work, named by an [`AttemptId`], and the
//! [`Invocation`] it was sent.
//!
//! An attempt id says which step, what kind of work (the step itself, or later its
//! compensation) and which try it is. The engine keys everything it tracks about running work by
//! it (its in-flight attempts, the outcomes it matches, the remote-worker queue), so two kinds of
//! work on the same step never collide.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gate::GateFeedback;

/// What an attempt runs.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AttemptKind {
    /// The step's own action.
    #[default]
    Step,
    /// The step's compensation (rollback).
    Compensation,
}

impl AttemptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Step => "step",
            AttemptKind::Compensation => "compensation",
        }
    }

    /// For `skip_serializing_if`: the kind is written only when it is not the default, so
    /// records of step attempts read and write as they always did.
    pub fn is_step(&self) -> bool {
        *self == AttemptKind::Step
    }
}

/// One attempt: `(step_id, kind, number)`. `number` counts the attempts of that kind of work on
/// the step, across runs and restores, from 1. `kind` reads as `step` when absent.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId {
    pub step_id: String,
    #[serde(default, skip_serializing_if = "AttemptKind::is_step")]
    pub kind: AttemptKind,
    pub number: u32,
}

impl AttemptId {
    /// Attempt `number` of the step's own action.
    pub fn step(step_id: impl Into<String>, number: u32) -> AttemptId {
        AttemptId {
            step_id: step_id.into(),
            kind: AttemptKind::Step,
            number,
        }
    }
}

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            AttemptKind::Step => write!(f, "attempt {} of step {}", self.number, self.step_id),
            kind => write!(
                f,
                "{} attempt {} of step {}",
                kind.as_str(),
                self.number,
                self.step_id
            ),
        }
    }
}

/// What an attempt was sent, resolved when it started: the action, the agent type, the params
/// with every `{{ }}` template already rendered, and the quality gate's feedback on the attempt
/// before. Recorded in the log with the start, so an attempt sent again after a crash gets
/// exactly these bytes, and the audit shows what the agent received.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub action: String,
    pub agent_type: String,
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub params: Value,
    /// Why the previous attempt's result was not accepted (a gate retry, a rejection with
    /// retry). Absent when there is none, and in invocations recorded before it was part of
    /// them (those attempts were sent the step record's, which [`crate::decide`] falls back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_feedback: Option<GateFeedback>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_id_without_kind_reads_as_a_step_attempt_and_writes_back_the_same() {
        let id: AttemptId = serde_json::from_str(r#"{"step_id":"s","number":3}"#).unwrap();
        assert_eq!(id, AttemptId::step("s", 3));
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#"{"step_id":"s","number":3}"#
        );
        let comp = AttemptId {
            kind: AttemptKind::Compensation,
            ..id.clone()
        };
        let text = serde_json::to_string(&comp).unwrap();
        assert_eq!(text, r#"{"step_id":"s","kind":"compensation","number":3}"#);
        assert_eq!(serde_json::from_str::<AttemptId>(&text).unwrap(), comp);
        assert_ne!(
            comp, id,
            "a compensation never collides with the step's attempt"
        );
        assert_eq!(comp.to_string(), "compensation attempt 3 of step s");
    }
}
