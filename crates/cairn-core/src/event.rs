//! Events: every change to a plan is one, appended to its log. The log is the source of truth;
//! [`crate::state::PlanState`] is a fold over it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::sync::Arc;

use crate::attempt::{AttemptKind, Invocation};
use crate::gate::{FailedCriterion, Scores, VerdictKind};
use crate::intervention::Intervention;
use crate::log::Effect;
use crate::plan::Plan;
use crate::rollback::RollbackEnd;
use crate::state::{Materialized, PauseReason, Restored};

pub use crate::time::Timestamp;

/// The former name of [`Timestamp`], kept so code written against it still reads.
pub type Micros = Timestamp;

/// One entry of a plan's log.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Global id across all plans, assigned by the store (0 before it is stored).
    pub id: u64,
    pub seq: u64,
    pub plan_id: String,
    pub at: Timestamp,
    pub actor: String,
    #[serde(flatten)]
    pub kind: EventKind,
    /// Set when this event is also a checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointMark>,
}

/// Events read back from their JSON (a client reading an API answer): the same fields, so a
/// value read and written again is the document the server sent.
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            id: u64,
            seq: u64,
            plan_id: String,
            at: Timestamp,
            actor: String,
            #[serde(flatten)]
            kind: EventKind,
            #[serde(default)]
            checkpoint: Option<CheckpointMark>,
        }
        let w = Wire::deserialize(deserializer)?;
        Ok(Event {
            id: w.id,
            seq: w.seq,
            plan_id: w.plan_id,
            at: w.at,
            actor: w.actor,
            kind: w.kind,
            checkpoint: w.checkpoint,
        })
    }
}

impl Event {
    /// The id of the checkpoint this event carries, if any.
    pub fn checkpoint_id(&self) -> Option<String> {
        self.checkpoint.as_ref().map(|_| checkpoint_id(self.seq))
    }
}

/// The id of the checkpoint at log position `seq` of its plan.
pub fn checkpoint_id(seq: u64) -> String {
    format!("cp-{seq}")
}

/// The log position a checkpoint id names, if it is well formed.
pub fn checkpoint_seq(id: &str) -> Option<u64> {
    id.strip_prefix("cp-")?.parse().ok().filter(|s| *s > 0)
}

/// Why a checkpoint was taken.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointTrigger {
    Initial,
    Step,
    Pause,
    Manual,
    /// After an applied intervention, so restoring the latest checkpoint keeps the change.
    Intervention,
}

impl CheckpointTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointTrigger::Initial => "initial",
            CheckpointTrigger::Step => "step",
            CheckpointTrigger::Pause => "pause",
            CheckpointTrigger::Manual => "manual",
            CheckpointTrigger::Intervention => "intervention",
        }
    }

    pub fn parse(s: &str) -> Option<CheckpointTrigger> {
        Some(match s {
            "initial" => CheckpointTrigger::Initial,
            "step" => CheckpointTrigger::Step,
            "pause" => CheckpointTrigger::Pause,
            "manual" => CheckpointTrigger::Manual,
            "intervention" => CheckpointTrigger::Intervention,
            _ => return None,
        })
    }
}

#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMark {
    pub trigger: CheckpointTrigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// How a pause treats steps already running.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseMode {
    /// Running steps finish and their results are recorded.
    #[default]
    Boundary,
    /// Running steps are interrupted and go back to `pending`.
    Immediate,
}

/// Where a plan that did not start from scratch came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// `fork` or `import`.
    pub how: String,
    pub plan_id: String,
    pub checkpoint_id: String,
    pub state: Materialized,
}

/// What happened. Serialised as `{"type": ..., "data": {...}}`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventKind {
    PlanRegistered {
        definition: Plan,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// Where a forked or imported plan came from (its source and the state it started in).
        #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
        origin: Option<Box<Origin>>,
    },
    PlanStarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    PlanPaused {
        reason: PauseReason,
        #[serde(default)]
        mode: PauseMode,
        /// The step a breakpoint paused at.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_at: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The last step running when the plan paused has ended: the plan is quiet.
    PlanDrained {},
    PlanResumed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    PlanCancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A rollback follows (`cancel` with `rollback: true`): the steps still running keep
        /// their attempt, which is told to stop; each is compensated once its attempt ended.
        /// Absent: false (every step not ended is cancelled at once).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rollback: bool,
    },
    PlanCompleted {},
    PlanFailed {
        step_id: String,
        error: String,
        /// The reviews still open when the plan failed, voided by this event (their steps go
        /// back to pending, as a new run): a plan that has ended asks nobody for a decision.
        /// Absent in logs written before the rule, which replay as they always did.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        voided_reviews: Vec<String>,
    },
    StepStarted {
        step_id: String,
        /// What kind of work the attempt runs; absent (`step`) for a step's own action.
        #[serde(default, skip_serializing_if = "AttemptKind::is_step")]
        kind: AttemptKind,
        attempt: u32,
        run: u32,
        /// Handed to the remote-worker queue: the step is `queued` until a worker claims it
        /// (`step_claimed`). Absent (false) in logs written before the queue had a status.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        queued: bool,
        /// What the agent is sent: action, agent type and rendered params. A recovered attempt
        /// is sent exactly this again. Absent in logs written before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "utoipa", schema(value_type = Option<Invocation>))]
        invocation: Option<Arc<Invocation>>,
    },
    /// A remote worker took a queued attempt: the step is `running` from now on.
    StepClaimed {
        step_id: String,
        attempt: u32,
        worker_id: String,
    },
    StepCompleted {
        step_id: String,
        attempt: u32,
        output: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scores: Option<Scores>,
    },
    /// A gated step's attempt succeeded and its gate judged the scores; what follows in the
    /// same commit says what the verdict led to (`step_completed`, a gate retry, a review,
    /// `step_failed`).
    GateEvaluated {
        step_id: String,
        attempt: u32,
        scores: Scores,
        verdict: VerdictKind,
        #[serde(default)]
        failed: Vec<FailedCriterion>,
    },
    /// A gated step waits for a person: the step is `awaiting_review` and the attempt's output
    /// is held on the review (`rv-<seq>` of this event) until it is approved.
    ReviewOpened {
        review_id: String,
        step_id: String,
        attempt: u32,
        scores: Scores,
        #[serde(default)]
        failed: Vec<FailedCriterion>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<Timestamp>,
        output: Value,
        quorum: u32,
    },
    StepFailed {
        step_id: String,
        attempt: u32,
        error: String,
        /// Set when the step will be tried again at that time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Timestamp>,
    },
    /// A running attempt was stopped by an immediate pause or by recovery of a quiet plan.
    StepInterrupted {
        step_id: String,
        /// Absent (`step`) for a step's own attempt.
        #[serde(default, skip_serializing_if = "AttemptKind::is_step")]
        kind: AttemptKind,
        attempt: u32,
        cause: String,
    },
    StepSkipped {
        step_id: String,
        reason: String,
    },
    /// A step that was running when the process died is being run again (same attempt, same
    /// idempotency key).
    StepRecovered {
        step_id: String,
        #[serde(default, skip_serializing_if = "AttemptKind::is_step")]
        kind: AttemptKind,
        attempt: u32,
        /// Handed to the remote-worker queue again: `queued` until a worker claims it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        queued: bool,
        /// Set only when the attempt's start recorded no invocation (a log written before
        /// starts recorded one): what was rendered now and is sent. Otherwise the attempt is
        /// sent its recorded invocation unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "utoipa", schema(value_type = Option<Invocation>))]
        invocation: Option<Arc<Invocation>>,
    },
    /// A result that arrived after its attempt stopped counting (interrupted, cancelled,
    /// restored): recorded for the audit trail, changes nothing.
    StepResultIgnored {
        step_id: String,
        /// Absent (`step`) for a step's own attempt.
        #[serde(default, skip_serializing_if = "AttemptKind::is_step")]
        kind: AttemptKind,
        attempt: u32,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    InterventionApplied {
        intervention: Box<Intervention>,
        /// What the intervention changed, applied as it is on replay. Absent in events of log
        /// format 1, which replay by the rules of the release that wrote them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
        effect: Option<Box<Effect>>,
    },
    InterventionFailed {
        intervention: Box<Intervention>,
    },
    CheckpointCreated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    CheckpointRestored {
        checkpoint_id: String,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// What the restore brings back: the checkpoint's `query`, `metadata`, `max_parallel`,
        /// `version`, `inputs` and `template`; `order`, its step ids, when they differ from
        /// the plan's before the restore; and `steps`, only the steps that differ from the
        /// plan's before the restore (`step_id` with `def` and `rec` when they differ, or
        /// `counters`, `[attempts, run]`, when only these do). Events written before log
        /// format 3 list every step in full.
        #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
        restored: Box<Restored>,
    },
    PlanForked {
        checkpoint_id: String,
        new_plan_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The plan rolls back: it runs again (`running`) until the compensations of `order` have
    /// run, one at a time in that order, then takes the state `then`. The order is decided
    /// when the rollback starts and replayed as recorded.
    RollbackStarted {
        then: RollbackEnd,
        order: Vec<String>,
    },
    /// A compensation attempt of `step_id` started, sent `invocation`.
    CompensationStarted {
        step_id: String,
        attempt: u32,
        #[cfg_attr(feature = "utoipa", schema(value_type = Invocation))]
        invocation: Arc<Invocation>,
    },
    CompensationCompleted {
        step_id: String,
        attempt: u32,
        output: Value,
    },
    /// A compensation attempt failed; with `retry_at`, another starts then.
    CompensationFailed {
        step_id: String,
        attempt: u32,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Timestamp>,
    },
    /// Every compensation ran: the plan takes its final state `then` with `rollback.status:
    /// completed`.
    RollbackCompleted {
        then: RollbackEnd,
    },
    /// The compensation of `step_id` exhausted its retries: the rollback stops there (the rest
    /// stay pending) and the plan takes its final state with `rollback.status: failed`.
    RollbackFailed {
        step_id: String,
        error: String,
        then: RollbackEnd,
    },
}

impl EventKind {
    /// The snake_case type name, e.g. `step_completed`.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::PlanRegistered { .. } => "plan_registered",
            EventKind::PlanStarted { .. } => "plan_started",
            EventKind::PlanPaused { .. } => "plan_paused",
            EventKind::PlanDrained {} => "plan_drained",
            EventKind::PlanResumed { .. } => "plan_resumed",
            EventKind::PlanCancelled { .. } => "plan_cancelled",
            EventKind::PlanCompleted {} => "plan_completed",
            EventKind::PlanFailed { .. } => "plan_failed",
            EventKind::StepStarted { .. } => "step_started",
            EventKind::StepClaimed { .. } => "step_claimed",
            EventKind::StepCompleted { .. } => "step_completed",
            EventKind::GateEvaluated { .. } => "gate_evaluated",
            EventKind::ReviewOpened { .. } => "review_opened",
            EventKind::StepFailed { .. } => "step_failed",
            EventKind::StepInterrupted { .. } => "step_interrupted",
            EventKind::StepSkipped { .. } => "step_skipped",
            EventKind::StepRecovered { .. } => "step_recovered",
            EventKind::StepResultIgnored { .. } => "step_result_ignored",
            EventKind::InterventionApplied { .. } => "intervention_applied",
            EventKind::InterventionFailed { .. } => "intervention_failed",
            EventKind::CheckpointCreated { .. } => "checkpoint_created",
            EventKind::CheckpointRestored { .. } => "checkpoint_restored",
            EventKind::PlanForked { .. } => "plan_forked",
            EventKind::RollbackStarted { .. } => "rollback_started",
            EventKind::CompensationStarted { .. } => "compensation_started",
            EventKind::CompensationCompleted { .. } => "compensation_completed",
            EventKind::CompensationFailed { .. } => "compensation_failed",
            EventKind::RollbackCompleted { .. } => "rollback_completed",
            EventKind::RollbackFailed { .. } => "rollback_failed",
        }
    }

    /// The event's `data` as a JSON string (what a store keeps beside the type name).
    pub fn data_json(&self) -> String {
        // Adjacently tagged enums serialise as {"type":"…","data":…} in that order.
        // The data is cut out of the whole in place: no second string, no formatted prefix
        // (this runs for every event every plan commits).
        let mut whole = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        let name = self.type_name();
        let (open, close) = ("{\"type\":\"", "\",\"data\":");
        let prefix = open.len() + name.len() + close.len();
        let framed = whole.len() > prefix
            && whole.starts_with(open)
            && whole[open.len()..].starts_with(name)
            && whole[open.len() + name.len()..].starts_with(close)
            && whole.ends_with('}');
        if framed {
            whole.truncate(whole.len() - 1);
            whole.drain(..prefix);
            return whole;
        }
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("data").map(Value::to_string))
            .unwrap_or_else(|| "{}".into())
    }

    /// Rebuilds a kind from its type name and data JSON of the current log format (see
    /// [`crate::log::decode`] for stored events of any format).
    pub fn from_parts(kind: &str, data: &str) -> Result<EventKind, String> {
        crate::log::decode(kind, crate::log::FORMAT, data).map_err(|e| e.to_string())
    }

    /// The step an event is about, if any.
    pub fn step_id(&self) -> Option<&str> {
        match self {
            EventKind::StepStarted { step_id, .. }
            | EventKind::StepClaimed { step_id, .. }
            | EventKind::StepCompleted { step_id, .. }
            | EventKind::GateEvaluated { step_id, .. }
            | EventKind::ReviewOpened { step_id, .. }
            | EventKind::StepFailed { step_id, .. }
            | EventKind::StepInterrupted { step_id, .. }
            | EventKind::StepSkipped { step_id, .. }
            | EventKind::StepRecovered { step_id, .. }
            | EventKind::StepResultIgnored { step_id, .. }
            | EventKind::CompensationStarted { step_id, .. }
            | EventKind::CompensationCompleted { step_id, .. }
            | EventKind::CompensationFailed { step_id, .. }
            | EventKind::RollbackFailed { step_id, .. }
            | EventKind::PlanFailed { step_id, .. } => Some(step_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_through_parts() {
        let kind = EventKind::StepFailed {
            step_id: "s".into(),
            attempt: 2,
            error: "boom \"quoted\"".into(),
            retry_at: Some(Timestamp::from_micros(1_796_159_669_123_456)),
        };
        let data = kind.data_json();
        assert_eq!(
            data,
            r#"{"step_id":"s","attempt":2,"error":"boom \"quoted\"","retry_at":"2026-12-01T21:14:29.123456Z"}"#
        );
        assert_eq!(
            EventKind::from_parts(kind.type_name(), &data).unwrap(),
            kind
        );
        let drained = EventKind::PlanDrained {};
        assert_eq!(
            EventKind::from_parts("plan_drained", &drained.data_json()).unwrap(),
            drained
        );
    }

    /// Logs written before timestamps became RFC 3339 strings carry integers of microseconds;
    /// they must read to the same values.
    #[test]
    fn integer_times_of_older_logs_still_read() {
        let old = EventKind::from_parts(
            "step_failed",
            r#"{"step_id":"s","attempt":1,"error":"e","retry_at":1796159669123456}"#,
        )
        .unwrap();
        let new = EventKind::from_parts(
            "step_failed",
            r#"{"step_id":"s","attempt":1,"error":"e","retry_at":"2026-12-01T21:14:29.123456Z"}"#,
        )
        .unwrap();
        assert_eq!(old, new);
        let paused = EventKind::from_parts(
            "plan_paused",
            r#"{"reason":"operator","mode":"immediate","resume_at":1796159669000000}"#,
        )
        .unwrap();
        let EventKind::PlanPaused { resume_at, .. } = paused else {
            panic!("not a pause: {paused:?}");
        };
        assert_eq!(
            resume_at,
            Some(Timestamp::from_micros(1_796_159_669_000_000))
        );
    }

    #[test]
    fn events_read_back_as_written() {
        let e = Event {
            id: 7,
            seq: 3,
            plan_id: "p".into(),
            at: Timestamp::from_micros(1_796_159_669_123_456),
            actor: "ann".into(),
            kind: EventKind::StepCompleted {
                step_id: "s".into(),
                attempt: 1,
                output: serde_json::json!({"z": 1, "a": [1.5, "x"]}),
                scores: None,
            },
            checkpoint: Some(CheckpointMark {
                trigger: CheckpointTrigger::Step,
                label: None,
            }),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            text.contains(r#""at":"2026-12-01T21:14:29.123456Z""#),
            "{text}"
        );
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    /// The rollback events read from their stored form (format 2, the current one), and the
    /// optional `kind` added to `step_interrupted` and `step_result_ignored` reads as `step`
    /// when absent, so older logs replay unchanged.
    #[test]
    fn rollback_events_decode_from_their_stored_form() {
        let stored = [
            ("rollback_started", r#"{"then":"failed","order":["b","a"]}"#),
            (
                "compensation_started",
                r#"{"step_id":"b","attempt":1,"invocation":{"action":"undo","agent_type":"t","params":{"ref":"H1"}}}"#,
            ),
            (
                "compensation_failed",
                r#"{"step_id":"b","attempt":1,"error":"closed","retry_at":"2026-12-01T21:14:29.123456Z"}"#,
            ),
            (
                "compensation_completed",
                r#"{"step_id":"b","attempt":2,"output":{"ok":true}}"#,
            ),
            (
                "rollback_failed",
                r#"{"step_id":"a","error":"closed","then":"cancelled"}"#,
            ),
            ("rollback_completed", r#"{"then":"failed"}"#),
            (
                "step_interrupted",
                r#"{"step_id":"b","kind":"compensation","attempt":1,"cause":"immediate pause"}"#,
            ),
        ];
        for (kind, data) in stored {
            let read = crate::log::decode(kind, crate::log::FORMAT, data)
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(read.type_name(), kind);
            assert_eq!(read.data_json(), data, "{kind} writes back what it read");
        }
        let old = EventKind::from_parts(
            "step_interrupted",
            r#"{"step_id":"s","attempt":1,"cause":"c"}"#,
        )
        .unwrap();
        assert!(matches!(
            old,
            EventKind::StepInterrupted {
                kind: AttemptKind::Step,
                ..
            }
        ));
        assert_eq!(
            old.data_json(),
            r#"{"step_id":"s","attempt":1,"cause":"c"}"#
        );
    }

    #[test]
    fn checkpoint_ids_name_their_position() {
        assert_eq!(checkpoint_seq(&checkpoint_id(42)), Some(42));
        assert_eq!(checkpoint_seq("cp-0"), None);
        assert_eq!(checkpoint_seq("42"), None);
    }
}
