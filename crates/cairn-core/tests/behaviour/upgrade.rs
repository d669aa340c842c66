//! The `upgrade` intervention: a plan made from a template moves to another version of it,
//! refused (naming the step) where the new version changes, removes or moves a step that has
//! started; replay of its log gives the same state (the `Sim` checks that after every command).

use super::*;
use cairn_core::upgrade::UpgradeSource;
use cairn_core::{InterventionKind, Template, TemplateRef};

/// A template whose plan is `steps` (YAML flow mappings), with one input `topic`.
fn template(steps: &[&str]) -> Template {
    let mut y = String::from(
        "name: research\nparameters:\n  type: object\n  properties:\n    topic: {type: string, default: rust}\nplan:\n  query: q\n  steps:\n",
    );
    for s in steps {
        y += &format!("    - {s}\n");
    }
    Template::parse(&y, cairn_core::Format::Yaml).expect("test template is valid")
}

fn v1() -> Template {
    template(&[
        "{step_id: a, action: search, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}'}}",
        "{step_id: b, action: read, agent_type: builtin.echo}",
        "{step_id: c, action: write, agent_type: builtin.echo}",
    ])
}

/// A plan made from version 1 of `v1()`.
fn sim() -> Sim {
    let definition = v1()
        .instantiate(1, json!({}), Some(PLAN.into()))
        .expect("instantiates");
    let mut sim = Sim {
        st: PlanState::empty(PLAN),
        log: Vec::new(),
        now: cairn_core::Timestamp::from_micros(1_000_000),
    };
    sim.ok(Command::Register {
        definition,
        origin: None,
    });
    sim
}

/// The upgrade request of `sim`'s plan to version `to` of template `t`, rendered as the engine
/// renders it (both versions with the plan's inputs).
fn upgrade(sim: &Sim, t: &Template, to: u64, dry_run: bool) -> Command {
    let inputs = sim.st.inputs.clone();
    let from = sim
        .st
        .template
        .as_ref()
        .expect("made from a template")
        .version;
    let render = |t: &Template, v| {
        Box::new(
            t.instantiate(v, inputs.clone(), Some(PLAN.into()))
                .expect("renders"),
        )
    };
    Command::Intervene(InterventionRequest {
        kind: InterventionKind::Upgrade {
            template_version: to,
        },
        expected_version: None,
        reason: Some("new version".into()),
        dry_run,
        upgrade: Some(Box::new(UpgradeSource::Ready {
            from: render(&v1(), from),
            to: render(t, to),
        })),
    })
}

#[test]
fn an_upgrade_applies_the_new_versions_diff_to_pending_steps() {
    let mut sim = sim();
    sim.start();
    sim.complete("a", json!({"hits": 1}));
    assert_eq!(sim.status("b"), StepStatus::Running);
    // Version 2 changes c and adds d after it.
    let v2 = template(&[
        "{step_id: a, action: search, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}'}}",
        "{step_id: b, action: read, agent_type: builtin.echo}",
        "{step_id: c, action: write, agent_type: builtin.echo, params: {style: long}}",
        "{step_id: d, action: publish, agent_type: builtin.echo}",
    ]);
    let version = sim.st.version;
    // A dry run answers the diff and changes nothing.
    let dry = sim.ok(upgrade(&sim, &v2, 2, true));
    let record = dry.intervention.expect("a record");
    assert_eq!(record.status, InterventionStatus::WouldApply);
    assert!(
        record.diff.iter().any(|c| c.path == "steps.c.params"),
        "{:?}",
        record.diff
    );
    assert_eq!(sim.st.version, version);
    assert_eq!(sim.st.template.as_ref().unwrap().version, 1);

    let done = sim.ok(upgrade(&sim, &v2, 2, false));
    let record = done.intervention.expect("a record");
    assert_eq!(record.status, InterventionStatus::Applied);
    assert_eq!(record.kind, "upgrade");
    assert_eq!(sim.st.version, version + 1);
    assert_eq!(
        sim.st.template,
        Some(TemplateRef {
            name: "research".into(),
            version: 2
        })
    );
    assert_eq!(sim.order(), ["a", "b", "c", "d"]);
    assert_eq!(
        sim.st.step("c").unwrap().def.params,
        json!({"style": "long"})
    );
    // The running step was left alone; the plan runs on to the new step.
    assert_eq!(sim.status("b"), StepStatus::Running);
    sim.complete("b", json!(1));
    sim.complete("c", json!(2));
    sim.complete("d", json!(3));
    assert_eq!(sim.st.status, PlanStatus::Completed);
}

#[test]
fn an_upgrade_that_touches_a_started_step_is_refused_naming_it() {
    let mut sim = sim();
    sim.start();
    sim.complete("a", json!({}));
    // b runs: changing it, removing it or moving it is refused, each naming b.
    let changes_b = template(&[
        "{step_id: a, action: search, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}'}}",
        "{step_id: b, action: read_more, agent_type: builtin.echo}",
        "{step_id: c, action: write, agent_type: builtin.echo}",
    ]);
    let removes_a = template(&[
        "{step_id: b, action: read, agent_type: builtin.echo}",
        "{step_id: c, action: write, agent_type: builtin.echo}",
    ]);
    let moves_b = template(&[
        "{step_id: a, action: search, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}'}}",
        "{step_id: c, action: write, agent_type: builtin.echo}",
        "{step_id: b, action: read, agent_type: builtin.echo}",
    ]);
    for (t, step, what) in [
        (&changes_b, "b", "changes it"),
        (&removes_a, "a", "removes it"),
        (&moves_b, "b", "moves it"),
    ] {
        let n = sim.log.len();
        let d = sim.ok(upgrade(&sim, t, 2, false));
        let refusal = d.refusal.expect("refused");
        assert_eq!(refusal.kind, RefusalKind::Conflict, "{}", refusal.message);
        assert!(
            refusal.message.starts_with(&format!("step {step} is "))
                && refusal.message.contains(what),
            "{}",
            refusal.message
        );
        // Recorded as a failed intervention, and nothing else changed.
        assert_eq!(sim.log.len(), n + 1);
        assert_eq!(d.intervention.unwrap().status, InterventionStatus::Failed);
        assert_eq!(sim.st.template.as_ref().unwrap().version, 1);
    }
}

#[test]
fn an_upgrade_keeps_operator_changes_and_refuses_to_overwrite_them() {
    let mut sim = sim();
    // An operator adds a step of their own and modifies c.
    sim.intervene(json!({"type": "add_step", "after": "a",
        "step": {"step_id": "mine", "action": "x", "agent_type": "builtin.echo"}}));
    sim.intervene(json!({"type": "modify_step", "step_id": "c", "patch": {"action": "draft"}}));
    // Version 2 changes b and reverses b and c: operator's step keeps its place.
    let v2 = template(&[
        "{step_id: a, action: search, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}'}}",
        "{step_id: c, action: write, agent_type: builtin.echo}",
        "{step_id: b, action: read, agent_type: builtin.echo, timeout_ms: 5000}",
    ]);
    sim.ok(upgrade(&sim, &v2, 2, false));
    assert_eq!(sim.order(), ["a", "mine", "c", "b"]);
    assert_eq!(sim.st.step("c").unwrap().def.action, "draft");
    assert_eq!(sim.st.step("b").unwrap().def.timeout_ms, Some(5000));
    // Version 3 changes c's action, which the operator changed: refused, naming the field.
    let mut v3 = v2.clone();
    v3.plan["steps"][1]["action"] = json!("write_more");
    let render = |t: &Template, v: u64| {
        Box::new(
            t.instantiate(v, json!({}), Some(PLAN.into()))
                .expect("renders"),
        )
    };
    let d = sim.ok(Command::Intervene(InterventionRequest {
        kind: InterventionKind::Upgrade {
            template_version: 3,
        },
        expected_version: None,
        reason: None,
        dry_run: false,
        upgrade: Some(Box::new(UpgradeSource::Ready {
            from: render(&v2, 2),
            to: render(&v3, 3),
        })),
    }));
    let refusal = d.refusal.expect("refused");
    assert!(
        refusal.message.contains("step c was changed since")
            && refusal.message.contains("steps.c.action is \"draft\""),
        "{}",
        refusal.message
    );
}

#[test]
fn a_plan_not_made_from_a_template_cannot_be_upgraded() {
    let mut sim = Sim::linear(&["a", "b"]);
    let d = sim.intervene(json!({"type": "upgrade", "template_version": 2}));
    let refusal = d.refusal.expect("refused");
    assert_eq!(refusal.kind, RefusalKind::Conflict);
    assert!(
        refusal.message.contains("was not made from a template"),
        "{}",
        refusal.message
    );
    // A template version the engine could not find is refused as the engine said.
    let mut made = sim_from_template();
    let d = made.ok(Command::Intervene(InterventionRequest {
        kind: InterventionKind::Upgrade {
            template_version: 9,
        },
        expected_version: None,
        reason: None,
        dry_run: false,
        upgrade: Some(Box::new(UpgradeSource::Refused {
            refusal: Refusal::new(RefusalKind::Invalid, "template research has no version 9"),
        })),
    }));
    assert_eq!(
        d.refusal.unwrap().message,
        "template research has no version 9"
    );
    // Upgrading to the version it has is a conflict.
    let same = v1();
    let d = made.ok(upgrade(&made, &same, 1, false));
    assert!(d
        .refusal
        .unwrap()
        .message
        .contains("is at version 1 of template research already"));
}

fn sim_from_template() -> Sim {
    sim()
}

#[test]
fn an_upgrade_back_to_an_earlier_version_brings_a_removed_step_back_as_a_new_run() {
    let mut sim = sim();
    let v2 = template(&[
        "{step_id: a, action: search, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}'}}",
        "{step_id: c, action: write, agent_type: builtin.echo}",
    ]);
    sim.ok(upgrade(&sim, &v2, 2, false));
    assert_eq!(sim.order(), ["a", "c"]);
    assert_eq!(sim.st.retired.get("b"), Some(&(0, 1)));
    // Back to version 1: b comes back where it was, a new run of its id.
    let d = {
        let inputs = sim.st.inputs.clone();
        let render = |t: &Template, v: u64| {
            Box::new(t.instantiate(v, inputs.clone(), Some(PLAN.into())).unwrap())
        };
        Command::Intervene(InterventionRequest {
            kind: InterventionKind::Upgrade {
                template_version: 1,
            },
            expected_version: Some(sim.st.version),
            reason: None,
            dry_run: false,
            upgrade: Some(Box::new(UpgradeSource::Ready {
                from: render(&v2, 2),
                to: render(&v1(), 1),
            })),
        })
    };
    sim.ok(d);
    assert_eq!(sim.order(), ["a", "b", "c"]);
    assert_eq!(sim.rec("b").run, 2);
    assert_eq!(sim.st.template.as_ref().unwrap().version, 1);
    sim.start();
    sim.complete("a", json!({}));
    sim.complete("b", json!({}));
    sim.complete("c", json!({}));
    assert_eq!(sim.st.status, PlanStatus::Completed);
}
