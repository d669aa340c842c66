//! Plan validation: every fault at once, each at its line and column, in YAML and JSON, with a
//! "did you mean" for misspelt fields and step ids.

use cairn_core::{Fault, Format, Plan};

/// The faults of a document that must be refused.
fn faults(text: &str, format: Format) -> Vec<Fault> {
    match Plan::parse(text, format) {
        Ok(plan) => panic!("accepted: {plan:?}"),
        Err(invalid) => invalid.faults,
    }
}

/// `(line, column, path, message)` of each fault, in order.
fn located(text: &str, format: Format) -> Vec<(u32, u32, String, String)> {
    faults(text, format)
        .into_iter()
        .map(|f| {
            (
                f.line.expect("a line"),
                f.column.expect("a column"),
                f.path,
                f.message,
            )
        })
        .collect()
}

fn row(line: u32, column: u32, path: &str, message: &str) -> (u32, u32, String, String) {
    (line, column, path.to_owned(), message.to_owned())
}

/// Four typos in two steps, one of them in a nested mapping: all four at once, each at its own
/// line, with the field it was meant to be.
#[test]
fn every_unknown_field_at_its_own_line_with_a_suggestion() {
    let typo = "\
plan_id: typo
steps:
  - step_id: s1
    action: search
    agent_typ: builtin.echo
    parms: {q: x}
  - step_id: s2
    action: analyze
    agent_type: builtin.echo
    dependson: [s1]
    retry:
      max_attempt: 3
";
    assert_eq!(
        located(typo, Format::Yaml),
        [
            row(
                5,
                5,
                "steps.s1",
                "unknown field `agent_typ`; did you mean `agent_type`?"
            ),
            row(
                6,
                5,
                "steps.s1",
                "unknown field `parms`; did you mean `params`?"
            ),
            row(
                10,
                5,
                "steps.s2",
                "unknown field `dependson`; did you mean `depends_on`?"
            ),
            row(
                12,
                7,
                "steps.s2.retry",
                "unknown field `max_attempt`; did you mean `max_attempts`?"
            ),
        ]
    );
    // Without a likely candidate, the known fields are listed; a missing field is named.
    let msgs = located(
        "steps:\n  - {step_id: a, action: x, colour: red}\nstepz_extra: 1\n",
        Format::Yaml,
    );
    assert_eq!(msgs[0], row(2, 5, "steps.a", "missing field `agent_type`"));
    assert_eq!((msgs[1].0, msgs[1].1), (2, 29));
    assert!(
        msgs[1]
            .3
            .starts_with("unknown field `colour` (known: step_id, action"),
        "{msgs:?}"
    );
    assert_eq!((msgs[2].0, msgs[2].1), (3, 1));
    assert!(
        msgs[2].3.contains("unknown field `stepz_extra`"),
        "{msgs:?}"
    );
}

/// An unknown dependency (with a suggestion), a repeated id, a bad id and a cycle: all four, the
/// cycle included, each where it is written.
#[test]
fn rule_faults_and_a_cycle_are_reported_together() {
    let deps = "\
steps:
  - {step_id: step_1, action: x, agent_type: t}
  - {step_id: s2, action: x, agent_type: t, depends_on: [s3]}
  - {step_id: s3, action: x, agent_type: t, depends_on: [s2, stpe_1]}
  - {step_id: step_1, action: x, agent_type: t, depends_on: []}
  - {step_id: 'bad id', action: x, agent_type: t}
";
    assert_eq!(
        located(deps, Format::Yaml),
        [
            row(
                3,
                57,
                "steps",
                "the dependencies form a cycle: s2 -> s3 -> s2"
            ),
            row(
                4,
                62,
                "steps.s3.depends_on",
                "unknown step \"stpe_1\"; did you mean `step_1`?"
            ),
            row(
                5,
                15,
                "steps.step_1.step_id",
                "step id step_1 is used more than once"
            ),
            row(
                6,
                15,
                "steps[4].step_id",
                "\"bad id\" is not a valid id (1 to 128 of A-Z a-z 0-9 _ . -)"
            ),
        ]
    );
}

/// Shape faults and rule faults of other steps come together; a step that cannot be read (here a
/// list where its action should be) gets no rule faults on top.
#[test]
fn shape_faults_do_not_hide_the_rules_of_other_steps() {
    let text = "\
steps:
  - {step_id: a, action: x, agent_type: t, timeout_ms: soon}
  - {step_id: b, action: x, agent_type: t, timeout_ms: 0}
  - {step_id: c, action: [x], agent_type: t, depends_on: [nope]}
";
    let got = located(text, Format::Yaml);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        (got[0].0, got[0].1, got[0].2.as_str()),
        (2, 56, "steps.a.timeout_ms")
    );
    assert!(
        got[0].3.contains("invalid type: string \"soon\""),
        "{got:?}"
    );
    assert_eq!(
        got[1],
        row(
            3,
            56,
            "steps.b.timeout_ms",
            "0 is out of range 1..=604800000 (7 days)"
        )
    );
    assert_eq!(
        got[2],
        row(
            4,
            26,
            "steps.c.action",
            "invalid type: sequence, expected a string"
        )
    );
}

/// The same faults in JSON, at JSON positions.
#[test]
fn json_faults_carry_their_positions_too() {
    let text = r#"{
  "plan_id": "j",
  "steps": [
    {"step_id": "a", "action": "x", "agent_typ": "t"},
    {"step_id": "b", "action": "x", "agent_type": "t", "depends_on": ["A"], "timeout_ms": "1s"}
  ]
}"#;
    let got = located(text, Format::Json);
    assert_eq!(
        got[0],
        row(
            4,
            37,
            "steps.a",
            "unknown field `agent_typ`; did you mean `agent_type`?"
        )
    );
    assert_eq!(
        got[1],
        row(
            5,
            71,
            "steps.b.depends_on",
            "unknown step \"A\"; did you mean `a`?"
        )
    );
    assert_eq!(
        (got[2].0, got[2].1, got[2].2.as_str()),
        (5, 91, "steps.b.timeout_ms")
    );
    let syntax = faults("{\n  \"steps\": [\n}", Format::Json);
    assert_eq!((syntax[0].line, syntax[0].column), (Some(3), Some(1)));
    assert!(
        syntax[0].message.starts_with("not valid JSON: "),
        "{syntax:?}"
    );
    let dup = faults(r#"{"steps": [], "steps": []}"#, Format::Json);
    assert_eq!(dup[0].message, "not valid JSON: duplicate key `steps`");
    assert_eq!((dup[0].line, dup[0].column), (Some(1), Some(15)));
}

/// A tab used for indentation is reported where the tab is, not at the token before it.
#[test]
fn a_tab_is_reported_where_it_is() {
    let tab = "plan_id: tab\nsteps:\n  - step_id: s1\n\taction: x\n    agent_type: t\n";
    let f = &faults(tab, Format::Yaml)[0];
    assert!(f.message.starts_with("not valid YAML: "), "{f:?}");
    assert!(f.message.contains("tab"), "{f:?}");
    assert_eq!((f.line, f.column), (Some(4), Some(1)), "{f:?}");
}

/// Faults serialise with their line and column (the HTTP body lists them); a plan given as a
/// value has no text, so no position.
#[test]
fn faults_from_a_value_have_no_position() {
    let invalid = Plan::from_value(
        serde_json::json!({"steps": [{"step_id": "a", "action": "x", "agent_typ": "t"}]}),
    )
    .unwrap_err();
    let json = serde_json::to_value(&invalid.faults).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"path": "steps.a", "message": "unknown field `agent_typ`; did you mean `agent_type`?"}])
    );
}
