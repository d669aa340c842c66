//! Replay of stored logs: format-1 events as releases before the format wrote them, and
//! effects that today's rules would refuse.

use serde_json::json;

use super::*;
use crate::event::{Event, Timestamp};
use crate::intervention::{self, InterventionKind};
use crate::state::{PauseReason, PlanState, PlanStatus, StepStatus};

const PLAN: &str = "p";

/// A log as stored rows: `(type, format, data)`, given seqs from 1.
fn log(rows: &[(&str, u32, serde_json::Value)]) -> Vec<Event> {
    rows.iter()
        .enumerate()
        .map(|(i, (kind, format, data))| Event {
            id: i as u64 + 1,
            seq: i as u64 + 1,
            plan_id: PLAN.into(),
            at: Timestamp::from_micros(1_000_000 + i as i64),
            actor: "ann".into(),
            kind: decode(kind, *format, &data.to_string()).expect("row decodes"),
            checkpoint: None,
        })
        .collect()
}

fn registered() -> (&'static str, u32, serde_json::Value) {
    (
        "plan_registered",
        1,
        json!({"definition": {"query": "q", "steps": [
            {"step_id": "a", "action": "x", "agent_type": "t"},
            {"step_id": "b", "action": "x", "agent_type": "t"},
            {"step_id": "c", "action": "x", "agent_type": "t"}
        ]}}),
    )
}

/// The record of an applied intervention as format 1 wrote it.
fn applied_v1(seq: u64, payload: serde_json::Value) -> (&'static str, u32, serde_json::Value) {
    let kind = payload["type"].as_str().unwrap().to_owned();
    (
        "intervention_applied",
        1,
        json!({"intervention": {
            "intervention_id": format!("iv-{seq}"), "plan_id": PLAN, "type": kind,
            "payload": payload, "user": "ann", "created_at": 1_000_000,
            "status": "applied", "plan_version": 1, "diff": []
        }}),
    )
}

fn ids(state: &PlanState) -> Vec<&str> {
    state.steps.iter().map(|s| s.def.step_id.as_str()).collect()
}

#[test]
fn format_1_interventions_replay_by_the_frozen_rules() {
    let events = log(&[
        registered(),
        ("plan_started", 1, json!({})),
        (
            "step_started",
            1,
            json!({"step_id": "a", "attempt": 1, "run": 1}),
        ),
        (
            "step_failed",
            1,
            json!({"step_id": "a", "attempt": 1, "error": "boom"}),
        ),
        ("plan_failed", 1, json!({"step_id": "a", "error": "boom"})),
        applied_v1(6, json!({"type": "retry_step", "step_id": "a"})),
        applied_v1(
            7,
            json!({"type": "add_step", "insert_after": "a",
                   "step": {"step_id": "d", "action": "y", "agent_type": "t"}}),
        ),
        applied_v1(8, json!({"type": "remove_step", "step_id": "c"})),
        applied_v1(
            9,
            json!({"type": "modify_step", "step_id": "b", "patch": {"params": {"k": 1}}}),
        ),
        applied_v1(
            10,
            json!({"type": "reorder_steps", "order": ["b", "a", "d"]}),
        ),
        applied_v1(11, json!({"type": "skip_step", "step_id": "d"})),
    ]);
    let st = PlanState::replay(PLAN, &events);
    assert_eq!(ids(&st), ["b", "a", "d"]);
    assert_eq!(st.status, PlanStatus::Paused);
    assert_eq!(st.pause_reason, Some(PauseReason::Intervention));
    assert_eq!(st.failure, None);
    assert_eq!(
        st.version, 5,
        "add, remove, modify and reorder each bump it"
    );
    let a = &st.step("a").unwrap().rec;
    assert_eq!((a.status, a.run, a.attempts), (StepStatus::Pending, 2, 1));
    assert_eq!(st.step("b").unwrap().def.params, json!({"k": 1}));
    assert_eq!(st.step("d").unwrap().rec.status, StepStatus::Skipped);
    assert_eq!(st.retired.get("c"), Some(&(0, 1)));
}

const ANN: intervention::By<'static> = intervention::By {
    user: "ann",
    reason: None,
    upgrade: None,
};

/// What an old log replays to cannot depend on today's rules: an effect is applied as it is, even
/// one that the rules of this build would refuse.
#[test]
fn a_changed_rule_cannot_change_what_an_old_log_replays_to() {
    let events = log(&[registered()]);
    let mut st = PlanState::replay(PLAN, &events);
    // A step today's rules refuse (an empty action), as an earlier release may have accepted.
    let step = json!({"step_id": "d", "action": "", "agent_type": "t"});
    let kind = InterventionKind::AddStep {
        step: step.clone(),
        after: Some("a".into()),
        before: None,
    };
    let refused = intervention::mutate(&mut st.clone(), &kind, Timestamp::EPOCH, &ANN);
    assert!(refused.is_err(), "today's rules must refuse the step");
    let mut after = st.clone();
    after.steps.insert(
        1,
        crate::state::Step {
            def: serde_json::from_value(step).unwrap(),
            rec: crate::state::StepRecord::new(),
        },
    );
    after.version += 1;
    let effect = Effect::between(&st, &after);
    assert_eq!(effect.order.as_deref().map(|o| o.len()), Some(4));
    let stored = json!({
        "intervention": {
            "intervention_id": "iv-2", "plan_id": PLAN, "type": "add_step",
            "payload": {"type": "add_step", "step": {"step_id": "d", "action": "", "agent_type": "t"}, "after": "a"},
            "user": "ann", "created_at": 1_000_000, "status": "applied", "plan_version": 2,
            "diff": []
        },
        "effect": effect,
    });
    let event = log(&[registered(), ("intervention_applied", FORMAT, stored)])
        .pop()
        .unwrap();
    st.apply(&event);
    assert_eq!(ids(&st), ["a", "d", "b", "c"]);
    assert_eq!(st.step("d").unwrap().def.action, "");
    assert_eq!(st.version, 2);
}

/// A format-1 event cannot smuggle in an effect: it would be applied instead of the rules the
/// release that wrote it had.
#[test]
fn a_format_1_intervention_with_an_effect_is_refused() {
    let (kind, _, mut data) = applied_v1(2, json!({"type": "skip_step", "step_id": "a"}));
    data["effect"] = json!({"version": 1});
    let err = decode(kind, 1, &data.to_string()).unwrap_err();
    assert!(err.to_string().contains("cannot carry an effect"), "{err}");
}

/// Every kind of applied intervention records an effect that reproduces it exactly.
#[test]
fn effects_reproduce_every_intervention() {
    let base = PlanState::replay(PLAN, &log(&[registered()]));
    let at = Timestamp::from_micros(5);
    let kinds = [
        json!({"type": "skip_step", "step_id": "b"}),
        json!({"type": "complete_step", "step_id": "a", "output": {"x": 1}}),
        json!({"type": "add_step", "before": "a", "step": {"step_id": "z", "action": "y", "agent_type": "t"}}),
        json!({"type": "remove_step", "step_id": "c"}),
        json!({"type": "modify_step", "step_id": "c", "patch": {"timeout_ms": 5}}),
        json!({"type": "reorder_steps", "order": ["a", "c", "b"]}),
    ];
    for body in kinds {
        let kind: InterventionKind = serde_json::from_value(body.clone()).unwrap();
        let mut after = base.clone();
        intervention::mutate(&mut after, &kind, at, &ANN).unwrap_or_else(|e| panic!("{body}: {e}"));
        let effect = Effect::between(&base, &after);
        let text = serde_json::to_string(&effect).unwrap();
        let mut replayed = base.clone();
        serde_json::from_str::<Effect>(&text)
            .unwrap()
            .apply(&mut replayed);
        assert_eq!(replayed, after, "{body}");
    }
}

/// Registrations, forks, imports and restores carry their state: replay loads it as recorded,
/// whatever today's validation would say of it.
#[test]
fn registrations_and_restores_replay_without_validation() {
    // A definition today's rules refuse twice over: an empty action and a dependency cycle.
    let steps = json!([
        {"step_id": "a", "action": "", "agent_type": "t", "depends_on": ["b"]},
        {"step_id": "b", "action": "x", "agent_type": "t", "depends_on": ["a"]}
    ]);
    let definition: crate::plan::Plan =
        serde_json::from_value(json!({"query": "q", "steps": steps})).unwrap();
    assert!(
        definition.validate().is_err(),
        "today's rules must refuse it"
    );
    let state = json!({"query": "q", "max_parallel": 2, "version": 4, "steps": [
        {"def": steps[0], "rec": {"status": "completed", "attempts": 1, "run": 1, "run_attempts": 1}},
        {"def": steps[1], "rec": {"status": "pending", "attempts": 0, "run": 1, "run_attempts": 0}}
    ]});
    let events = log(&[
        (
            "plan_registered",
            1,
            json!({"definition": {"query": "q", "steps": steps},
                   "origin": {"how": "import", "plan_id": "src", "checkpoint_id": "cp-3",
                              "state": state}}),
        ),
        (
            "checkpoint_restored",
            1,
            json!({"checkpoint_id": "cp-1", "seq": 1, "restored": state}),
        ),
    ]);
    let imported = PlanState::replay(PLAN, &events[..1]);
    assert_eq!(ids(&imported), ["a", "b"]);
    assert_eq!(imported.version, 4);
    assert_eq!(
        imported.step("a").unwrap().rec.status,
        StepStatus::Completed
    );
    assert_eq!(imported.step("a").unwrap().def.action, "");
    let restored = PlanState::replay(PLAN, &events);
    assert_eq!(restored.version, 5);
    assert_eq!(restored.status, PlanStatus::Paused);
    assert_eq!(
        restored.step("b").unwrap().def.depends_on,
        Some(vec!["a".into()])
    );
}

/// A cancel with rollback as stored before `plan_cancelled` carried `rollback`: the step in
/// flight was cancelled at once and compensated at once. It replays so, and a cancel written
/// today (`rollback: true`) leaves the step running until its attempt ends.
#[test]
fn a_cancel_with_rollback_written_before_plan_cancelled_carried_rollback_replays_unchanged() {
    let definition = json!({"definition": {"query": "q", "steps": [
        {"step_id": "a", "action": "x", "agent_type": "t",
         "compensate": {"action": "undo", "agent_type": "t"}}
    ]}});
    let invocation = json!({"action": "undo", "agent_type": "t", "params": null});
    let events = log(&[
        ("plan_registered", 2, definition.clone()),
        ("plan_started", 2, json!({})),
        (
            "step_started",
            2,
            json!({"step_id": "a", "attempt": 1, "run": 1}),
        ),
        ("plan_cancelled", 2, json!({"reason": "off"})),
        (
            "rollback_started",
            2,
            json!({"then": "cancelled", "order": ["a"]}),
        ),
        (
            "compensation_started",
            2,
            json!({"step_id": "a", "attempt": 1, "invocation": invocation}),
        ),
        (
            "compensation_completed",
            2,
            json!({"step_id": "a", "attempt": 1, "output": null}),
        ),
        ("rollback_completed", 2, json!({"then": "cancelled"})),
    ]);
    let mid = PlanState::replay(PLAN, &events[..6]);
    assert_eq!(mid.step("a").unwrap().rec.status, StepStatus::Cancelled);
    assert_eq!(mid.running_count(), 1, "only the compensation runs");
    let end = PlanState::replay(PLAN, &events);
    assert_eq!(end.status, PlanStatus::Cancelled);
    assert_eq!(end.step("a").unwrap().rec.status, StepStatus::Cancelled);
    assert_eq!(
        end.rollback.as_ref().unwrap().status,
        crate::rollback::RollbackStatus::Completed
    );
    // Today's form: the step stays running until its attempt ended.
    let today = log(&[
        ("plan_registered", 2, definition),
        ("plan_started", 2, json!({})),
        (
            "step_started",
            2,
            json!({"step_id": "a", "attempt": 1, "run": 1}),
        ),
        (
            "plan_cancelled",
            2,
            json!({"reason": "off", "rollback": true}),
        ),
        (
            "rollback_started",
            2,
            json!({"then": "cancelled", "order": ["a"]}),
        ),
    ]);
    let state = PlanState::replay(PLAN, &today);
    assert_eq!(state.step("a").unwrap().rec.status, StepStatus::Running);
    assert_eq!(state.status, PlanStatus::Running);
}

/// An `upgrade` is recorded within format 2 as an effect with the optional `template`, `inputs`
/// and `on_failure` it may change; an effect stored before they existed has none of them and
/// leaves the plan's template, inputs and failure policy as they were.
#[test]
fn upgrade_effects_replay_and_older_effects_leave_the_template_alone() {
    let made = json!({"definition": {"query": "q", "inputs": {"topic": "rust"},
        "template": {"name": "t", "version": 1},
        "steps": [{"step_id": "a", "action": "x", "agent_type": "t"}]}});
    // An effect as stored before the upgrade existed (a modify_step's).
    let old_effect = json!({"version": 2, "set": [{"def": {"step_id": "a", "action": "y", "agent_type": "t"},
        "rec": {"status": "pending", "attempts": 0, "run": 1, "run_attempts": 0}}]});
    let events = log(&[
        ("plan_registered", 2, made.clone()),
        (
            "intervention_applied",
            2,
            json!({"intervention": {"plan_id": PLAN, "type": "modify_step", "step_id": "a",
                "payload": {"type": "modify_step", "step_id": "a", "patch": {"action": "y"}},
                "user": "ann", "created_at": "2026-12-01T00:00:00.000000Z", "status": "applied",
                "plan_version": 2, "diff": []},
                "effect": old_effect}),
        ),
    ]);
    let st = PlanState::replay(PLAN, &events);
    assert_eq!(st.version, 2);
    assert_eq!(st.step("a").unwrap().def.action, "y");
    assert_eq!(
        st.template,
        Some(crate::plan::TemplateRef {
            name: "t".into(),
            version: 1
        })
    );
    assert_eq!(st.inputs, json!({"topic": "rust"}));
    // An upgrade's effect as this build writes it.
    let upgraded = json!({"version": 3, "template": {"name": "t", "version": 2},
        "inputs": {"topic": "rust", "depth": 2}, "on_failure": "rollback"});
    let mut rows = vec![("plan_registered", 2, made)];
    rows.push((
        "intervention_applied",
        2,
        json!({"intervention": {"plan_id": PLAN, "type": "upgrade",
            "payload": {"type": "upgrade", "template_version": 2},
            "user": "ann", "created_at": "2026-12-01T00:00:00.000000Z", "status": "applied",
            "plan_version": 3, "diff": []},
            "effect": upgraded}),
    ));
    let st = PlanState::replay(PLAN, &log(&rows));
    assert_eq!(st.version, 3);
    assert_eq!(st.template.as_ref().map(|t| t.version), Some(2));
    assert_eq!(st.inputs, json!({"topic": "rust", "depth": 2}));
    assert_eq!(st.on_failure, crate::plan::OnFailure::Rollback);
}

/// A restore as log format 2 wrote it, carrying the checkpoint's whole state (here reordered,
/// with a step dropped and one the plan never had), replays as it always did: the steps in the
/// checkpoint's order, counters kept, the dropped step's retired; and the same restores as
/// format 3 records them (only what differs) replay to the same state.
#[test]
fn a_format_2_restore_carrying_the_whole_state_replays_as_it_did() {
    let step = |id: &str, rec: serde_json::Value| json!({"def": {"step_id": id, "action": "x", "agent_type": "t"}, "rec": rec});
    let pending = json!({"status": "pending", "attempts": 0, "run": 1, "run_attempts": 0});
    let first = json!({"query": "q2", "max_parallel": 3, "version": 1, "steps": [
        step("c", pending.clone()),
        step("a", json!({"status": "completed", "attempts": 1, "run": 1, "run_attempts": 1,
                         "output": {"v": 1}, "start_seq": 3})),
        step("d", json!({"status": "running", "attempts": 1, "run": 1, "run_attempts": 1})),
    ]});
    let second = json!({"query": "q", "max_parallel": 8, "version": 1, "steps": [
        step("a", pending.clone()), step("b", pending.clone()), step("c", pending),
    ]});
    let rows = [
        ("plan_registered", 2, registered().2),
        ("plan_started", 2, json!({})),
        (
            "step_started",
            2,
            json!({"step_id": "a", "attempt": 1, "run": 1}),
        ),
        (
            "step_completed",
            2,
            json!({"step_id": "a", "attempt": 1, "output": {"v": 1}}),
        ),
        (
            "step_started",
            2,
            json!({"step_id": "b", "attempt": 1, "run": 1}),
        ),
        ("plan_cancelled", 2, json!({})),
        (
            "checkpoint_restored",
            2,
            json!({"checkpoint_id": "cp-4", "seq": 4, "restored": first}),
        ),
        (
            "checkpoint_restored",
            2,
            json!({"checkpoint_id": "cp-1", "seq": 1, "restored": second}),
        ),
    ];
    let events = log(&rows);
    let once = PlanState::replay(PLAN, &events[..7]);
    assert_eq!(ids(&once), ["c", "a", "d"]);
    assert_eq!(
        (once.query.as_str(), once.max_parallel, once.version),
        ("q2", 3, 2)
    );
    assert_eq!(
        (once.status, once.pause_reason),
        (PlanStatus::Paused, Some(PauseReason::Restored))
    );
    let a = &once.step("a").unwrap().rec;
    assert_eq!(
        (a.status, a.attempts, a.output.clone()),
        (StepStatus::Completed, 1, Some(json!({"v": 1})))
    );
    let d = &once.step("d").unwrap().rec;
    assert_eq!(
        (d.status, d.attempts, d.run, d.run_attempts),
        (StepStatus::Pending, 1, 1, 0)
    );
    // b had an attempt: its counters are kept for an id added back.
    assert_eq!(once.retired.get("b"), Some(&(1, 1)));
    let twice = PlanState::replay(PLAN, &events);
    assert_eq!(ids(&twice), ["a", "b", "c"]);
    assert_eq!(twice.version, 3);
    // a and b ran after the checkpoint: a new run each, attempt numbers never reused.
    let (a, b) = (&twice.step("a").unwrap().rec, &twice.step("b").unwrap().rec);
    assert_eq!(
        (a.status, a.attempts, a.run, a.output.clone()),
        (StepStatus::Pending, 1, 2, None)
    );
    assert_eq!((b.status, b.attempts, b.run), (StepStatus::Pending, 1, 2));
    assert_eq!(twice.retired.get("d"), Some(&(1, 1)));

    // The same two restores as this build writes them: only what differs.
    let mut now = PlanState::replay(PLAN, &events[..6]);
    let mut written = events[..6].to_vec();
    for (i, whole) in [(6, &rows[6].2), (7, &rows[7].2)] {
        let m: crate::state::Materialized =
            serde_json::from_value(whole["restored"].clone()).unwrap();
        let mut target = now.clone();
        target.query = m.query;
        target.metadata = m.metadata;
        target.max_parallel = m.max_parallel;
        target.version = m.version;
        target.steps = m.steps.into();
        let restored = crate::state::Restored::between(&now, &target);
        let kind = EventKind::CheckpointRestored {
            checkpoint_id: whole["checkpoint_id"].as_str().unwrap().into(),
            seq: whole["seq"].as_u64().unwrap(),
            reason: None,
            restored: Box::new(restored),
        };
        let e = encode(&kind);
        assert_eq!(e.format, 3);
        let event = Event {
            kind: decode(e.kind, e.format, &e.data).unwrap(),
            ..events[i].clone()
        };
        now.apply(&event);
        written.push(event);
    }
    assert_eq!(now, twice);
    assert_eq!(PlanState::replay(PLAN, &written), twice);
}

/// A restore records only the steps that differ from the plan's, and of a step whose record
/// differs only by its counters, just those.
#[test]
fn a_restore_records_only_what_differs() {
    let events = log(&[
        registered(),
        ("plan_started", 2, json!({})),
        (
            "step_started",
            2,
            json!({"step_id": "a", "attempt": 1, "run": 1}),
        ),
        (
            "step_completed",
            2,
            json!({"step_id": "a", "attempt": 1, "output": {"v": 1}}),
        ),
    ]);
    let at_start = PlanState::replay(PLAN, &events[..2]);
    let now = PlanState::replay(PLAN, &events);
    // Back to the start: a differs (completed then), b and c are as they were.
    let r = crate::state::Restored::between(&now, &at_start);
    assert_eq!(r.order, None);
    assert_eq!(r.steps.len(), 1);
    assert_eq!(r.steps[0].step_id, "a");
    assert_eq!(r.steps[0].def, None);
    assert_eq!(
        r.steps[0].rec.as_ref().map(|r| r.status),
        Some(StepStatus::Pending)
    );
    let mut restored = now.clone();
    restored.apply(&Event {
        seq: 5,
        kind: EventKind::CheckpointRestored {
            checkpoint_id: "cp-2".into(),
            seq: 2,
            reason: None,
            restored: Box::new(r),
        },
        ..events[3].clone()
    });
    let a = &restored.step("a").unwrap().rec;
    assert_eq!((a.status, a.attempts, a.run), (StepStatus::Pending, 1, 2));
    // From there back to the start again: a differs only by its counters.
    let r = crate::state::Restored::between(&restored, &at_start);
    assert_eq!(r.steps.len(), 1);
    assert_eq!(
        (r.steps[0].def.as_ref(), r.steps[0].rec.as_ref()),
        (None, None)
    );
    assert_eq!(r.steps[0].counters, Some((0, 1)));
    let data = encode(&EventKind::CheckpointRestored {
        checkpoint_id: "cp-2".into(),
        seq: 2,
        reason: None,
        restored: Box::new(r),
    })
    .data;
    assert!(
        data.contains(r#""steps":[{"step_id":"a","counters":[0,1]}]"#),
        "{data}"
    );
}
