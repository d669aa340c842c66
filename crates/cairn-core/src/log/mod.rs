//! How events are stored: the log's format version, and reading any format this build knows.
//!
//! The log is users' data and outlives the build that wrote it. Every stored event carries the
//! format it was written in ([`FORMAT`] for new ones). [`decode`] reads an event of any format up
//! to [`FORMAT`]: it first runs the upcasters of [`upcast`], one per format step, over the stored
//! JSON, then reads the result as today's [`EventKind`]. Reading is lenient: fields this build
//! does not know are ignored, so a field added later never makes a log unreadable. Strictness
//! belongs to input (plan documents, request bodies), which is checked by hand where it is parsed.
//!
//! A change to the shape of [`EventKind`] or of any type it contains is a change of the stored
//! format: an optional field with a default may be added freely; anything else needs a new
//! [`FORMAT`] and an upcaster from the previous one, with a test.
//!
//! Formats:
//! - 1: everything written before stored events carried a format. Its `intervention_applied`
//!   records the request only; replay re-applies it with the frozen rules of [`v1`].
//! - 2: `intervention_applied` also records its [`Effect`], the facts replay applies.
//! - 3: `checkpoint_restored` records only what the restore changes in the plan's state
//!   ([`crate::state::Restored`]: the checkpoint's plan-level fields, and its steps that differ
//!   from the plan's, or just their counters) instead of the checkpoint's whole state, so a
//!   restore of a large plan writes and replays little. Format 2's whole state upcasts to
//!   every step listed in full.
//!
//! Added within format 2 (new event types and optional fields, so no new format): the rollback
//! events `rollback_started`, `compensation_started`, `compensation_completed`,
//! `compensation_failed`, `rollback_completed`, `rollback_failed`, and an optional `kind`
//! (absent: `step`) on `step_interrupted` and `step_result_ignored`, an optional `rollback`
//! (absent: false) on `plan_cancelled` (a rollback follows: the steps in flight keep running
//! until they end), the `upgrade` intervention type, and the optional `template`, `inputs` and
//! `on_failure` of an [`Effect`] (what an upgrade changes). Older logs have none of them and
//! replay unchanged.

mod effect;
pub mod upcast;
pub mod v1;

pub use effect::{DefinitionFields, Effect, PlanFields};

use serde_json::Value;

use crate::event::EventKind;

/// The format new events are written in.
pub const FORMAT: u32 = 3;

/// The format of events stored before events carried one.
pub const FIRST_FORMAT: u32 = 1;

/// Why a stored event cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Written by a later build, in a format this one does not know.
    #[error(
        "event of type {kind} was written by a newer cairn (log format {format}); \
         this build reads up to {FORMAT}"
    )]
    Newer { kind: String, format: u32 },
    /// Format 0 does not exist.
    #[error("event of type {kind} has log format 0, which no cairn ever wrote")]
    NoFormat { kind: String },
    /// The data is not JSON, or not an event of its type.
    #[error("event of type {kind} (log format {format}): {message}")]
    Malformed {
        kind: String,
        format: u32,
        message: String,
    },
}

/// An event ready to store: its type name, format and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub kind: &'static str,
    pub format: u32,
    pub data: String,
}

/// Encodes an event for the log, in the current [`FORMAT`].
pub fn encode(kind: &EventKind) -> Encoded {
    Encoded {
        kind: kind.type_name(),
        format: FORMAT,
        data: kind.data_json(),
    }
}

/// Reads a stored event written in `format`, upcasting it to the current one.
pub fn decode(kind: &str, format: u32, data: &str) -> Result<EventKind, DecodeError> {
    let malformed = |message: String| DecodeError::Malformed {
        kind: kind.to_owned(),
        format,
        message,
    };
    if format == 0 {
        return Err(DecodeError::NoFormat {
            kind: kind.to_owned(),
        });
    }
    if format > FORMAT {
        return Err(DecodeError::Newer {
            kind: kind.to_owned(),
            format,
        });
    }
    if format == FORMAT || !upcast::changes(format, kind) {
        // Nothing to upcast: read the data straight into its type (no intermediate `Value`,
        // which loading a plan would pay for every event).
        let whole = format!("{{\"type\":{},\"data\":{}}}", Value::from(kind), data);
        return serde_json::from_str(&whole).map_err(|e| malformed(e.to_string()));
    }
    let mut value: Value = serde_json::from_str(data).map_err(|e| malformed(e.to_string()))?;
    for from in format..FORMAT {
        value = upcast::step(from, kind, value).map_err(malformed)?;
    }
    let whole = serde_json::json!({ "type": kind, "data": value });
    serde_json::from_value(whole).map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod replay_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;

    #[test]
    fn events_round_trip_through_the_current_format() {
        let kind = EventKind::StepFailed {
            step_id: "s".into(),
            attempt: 2,
            error: "boom".into(),
            retry_at: Some(Timestamp::from_micros(1_796_159_669_123_456)),
        };
        let e = encode(&kind);
        assert_eq!((e.kind, e.format), ("step_failed", FORMAT));
        assert_eq!(decode(e.kind, e.format, &e.data).unwrap(), kind);
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let err = decode("plan_started", FORMAT + 1, "{}").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "event of type plan_started was written by a newer cairn (log format {}); \
                 this build reads up to {FORMAT}",
                FORMAT + 1
            )
        );
        assert!(matches!(
            decode("plan_started", 0, "{}"),
            Err(DecodeError::NoFormat { .. })
        ));
    }

    #[test]
    fn malformed_data_names_type_and_format() {
        let err = decode("step_started", 1, r#"{"step_id": 3}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("event of type step_started (log format 1):"),
            "{text}"
        );
        let err = decode("no_such_event", FORMAT, "{}").unwrap_err();
        assert!(err.to_string().contains("no_such_event"), "{err}");
    }

    /// A `plan_failed` written before failing plans voided their reviews voids none.
    #[test]
    fn an_old_plan_failed_decodes_voiding_no_review() {
        for format in [FIRST_FORMAT, FORMAT] {
            let kind = decode(
                "plan_failed",
                format,
                r#"{"step_id": "a", "error": "boom"}"#,
            );
            assert_eq!(
                kind.unwrap(),
                EventKind::PlanFailed {
                    step_id: "a".into(),
                    error: "boom".into(),
                    voided_reviews: Vec::new(),
                }
            );
        }
    }

    /// A `step_started` whose invocation was recorded before the gate's feedback was part of it
    /// reads with none.
    #[test]
    fn an_old_invocation_decodes_without_gate_feedback() {
        let data = r#"{"step_id": "a", "attempt": 2, "run": 2,
            "invocation": {"action": "x", "agent_type": "t", "params": {"k": 1}}}"#;
        let EventKind::StepStarted {
            invocation: Some(invocation),
            ..
        } = decode("step_started", FORMAT, data).unwrap()
        else {
            panic!("not a start with an invocation");
        };
        assert_eq!(invocation.params, serde_json::json!({"k": 1}));
        assert_eq!(invocation.gate_feedback, None);
        // And one with it writes it back.
        let with = EventKind::StepStarted {
            step_id: "a".into(),
            kind: crate::attempt::AttemptKind::Step,
            attempt: 2,
            run: 2,
            queued: false,
            invocation: Some(std::sync::Arc::new(crate::attempt::Invocation {
                gate_feedback: Some(crate::gate::GateFeedback {
                    attempt: 1,
                    failed: Vec::new(),
                    note: Some("again".into()),
                    reviewer: None,
                }),
                ..(*invocation).clone()
            })),
        };
        let e = encode(&with);
        assert_eq!(decode(e.kind, e.format, &e.data).unwrap(), with);
    }

    /// A registration written before plans had inputs or a template decodes with neither, and
    /// encodes back without the fields; one with them keeps both.
    #[test]
    fn a_registration_from_before_inputs_decodes_and_writes_back_unchanged() {
        let old = r#"{"definition":{"query":"q","max_parallel":8,"steps":[{"step_id":"a","action":"x","agent_type":"t"}]}}"#;
        let kind = decode("plan_registered", 1, old).unwrap();
        let EventKind::PlanRegistered { definition, .. } = &kind else {
            panic!("not a registration");
        };
        assert_eq!(definition.inputs, serde_json::Value::Null);
        assert_eq!(definition.template, None);
        let again = encode(&kind);
        assert!(!again.data.contains("inputs"), "{}", again.data);
        assert!(!again.data.contains("template"), "{}", again.data);
        assert_eq!(decode(again.kind, again.format, &again.data).unwrap(), kind);

        let new = r#"{"definition":{"query":"q","steps":[{"step_id":"a","action":"x","agent_type":"t"}],
            "inputs":{"topic":"rust"},"template":{"name":"research","version":3}}}"#;
        let kind = decode("plan_registered", FORMAT, new).unwrap();
        let EventKind::PlanRegistered { definition, .. } = &kind else {
            panic!("not a registration");
        };
        assert_eq!(definition.inputs["topic"], "rust");
        assert_eq!(definition.template.as_ref().map(|t| t.version), Some(3));
        let again = encode(&kind);
        assert_eq!(decode(again.kind, again.format, &again.data).unwrap(), kind);
    }

    /// Fields a later build may add are ignored by this one, at every depth of the stored types.
    #[test]
    fn unknown_fields_in_stored_data_are_ignored() {
        let registered = r#"{
            "definition": {
                "query": "q", "later_plan_field": 1,
                "steps": [{"step_id": "a", "action": "x", "agent_type": "t",
                           "later_step_field": {"deep": true},
                           "retry": {"max_attempts": 3, "jitter": 0.5}}]
            },
            "later_event_field": "x"
        }"#;
        let EventKind::PlanRegistered { definition, .. } =
            decode("plan_registered", 1, registered).unwrap()
        else {
            panic!("not a registration");
        };
        assert_eq!(definition.steps[0].retry_policy().max_attempts, 3);
        let applied = r#"{"intervention": {
            "intervention_id": "iv-3", "plan_id": "p", "type": "skip_step", "step_id": "a",
            "payload": {"type": "skip_step", "step_id": "a", "later": 1},
            "user": "u", "created_at": 5, "status": "applied", "plan_version": 1, "diff": [],
            "later_record_field": []
        }, "effect": {"version": 1, "later_effect_field": 2,
                      "plan": {"status": "running", "drained": false, "later": 0}}}"#;
        let EventKind::InterventionApplied { effect, .. } =
            decode("intervention_applied", FORMAT, applied).unwrap()
        else {
            panic!("not an intervention");
        };
        assert_eq!(effect.unwrap().version, 1);
    }
}
