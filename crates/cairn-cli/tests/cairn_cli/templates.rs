//! `cairn templates …` end to end with the real binary: push the example template, push it
//! again (no new version), list, show, run with typed `--input`s (refused inputs exit 2 naming
//! each one), drive the plan to completion, delete; then the same over `--server`.

use serde_json::{json, Value};

use crate::common::{example, local, make_token, remote, Server};

#[test]
fn templates_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let file = example("templates/research.yaml");
    let file = file.to_str().unwrap();

    let pushed = local(&["templates", "push", file, "--json"], &db)
        .expect(0, "push")
        .json();
    assert_eq!(
        (pushed["version"].as_u64(), pushed["created"].as_bool()),
        (Some(1), Some(true))
    );
    let again = local(&["templates", "push", file], &db).expect(0, "push again");
    assert!(again.stdout.contains("no new version"), "{}", again.stdout);

    let list = local(&["templates", "list"], &db).expect(0, "list");
    assert!(list.stdout.contains("research"), "{}", list.stdout);
    let show = local(&["templates", "show", "research"], &db).expect(0, "show");
    for want in [
        "topic: string, required",
        "depth: integer, default 2",
        "steps: search, dig, summarise",
    ] {
        assert!(show.stdout.contains(want), "{want} in {}", show.stdout);
    }

    // Every bad input named, nothing registered.
    let bad = local(
        &[
            "templates",
            "run",
            "research",
            "--input",
            "depth=9",
            "--input",
            "colour=red",
            "--plan-id",
            "bad",
        ],
        &db,
    )
    .expect(2, "bad inputs");
    for want in [
        "inputs.colour: not an input",
        "inputs.depth:",
        "inputs.topic: missing",
    ] {
        assert!(bad.stderr.contains(want), "{want} in {}", bad.stderr);
    }
    local(&["plans", "show", "bad"], &db).expect(2, "no plan was made");
    local(
        &["templates", "run", "research", "--input", "nonsense"],
        &db,
    )
    .expect(2, "an --input without =");
    local(&["templates", "run", "nope", "--input", "topic=x"], &db).expect(2, "unknown template");

    // A string input stays a string even when it reads as a number; the others are typed.
    let plan = local(
        &[
            "templates",
            "run",
            "research",
            "--input",
            "topic=42",
            "--input",
            "depth=3",
            "--input",
            "deep=true",
            "--plan-id",
            "r1",
            "--json",
        ],
        &db,
    )
    .expect(0, "run")
    .json();
    assert_eq!(plan["template"], json!({"name": "research", "version": 1}));
    assert_eq!(
        plan["inputs"],
        json!({"topic": "42", "depth": 3, "deep": true, "style": "brief"})
    );
    assert_eq!(plan["state"], "running");
    let done = local(&["run", "--resume", "r1", "--json"], &db)
        .expect(0, "drive it")
        .json();
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["outputs"]["search"], json!({"q": "42", "rounds": 3}));
    assert_eq!(
        done["outputs"]["summarise"],
        json!({"summary": "brief summary of 42"})
    );

    // --inputs from a file, --no-start.
    let inputs = dir.path().join("inputs.json");
    std::fs::write(
        &inputs,
        json!({"topic": "tides", "style": "detailed"}).to_string(),
    )
    .unwrap();
    let at = format!("@{}", inputs.display());
    let idle = local(
        &[
            "templates",
            "run",
            "research",
            "--inputs",
            &at,
            "--no-start",
            "--plan-id",
            "r2",
            "--json",
        ],
        &db,
    )
    .expect(0, "run --no-start")
    .json();
    assert_eq!(idle["state"], "idle");
    assert_eq!(idle["inputs"]["style"], "detailed");

    local(&["templates", "delete", "research"], &db).expect(0, "delete");
    let list = local(&["templates", "list", "--json"], &db)
        .expect(0, "list")
        .json();
    assert_eq!(list["items"], json!([]));
    let gone = local(&["templates", "run", "research", "--input", "topic=x"], &db)
        .expect(2, "a deleted template makes no plan");
    assert!(gone.stderr.contains("deleted"), "{}", gone.stderr);
    // Its version is kept.
    let kept = local(
        &["templates", "show", "research", "--version", "1", "--json"],
        &db,
    )
    .expect(0, "show a deleted template's version")
    .json();
    assert!(kept["deleted_at"].is_string(), "{kept}");

    // A bad file: every fault, exit 2, nothing stored.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "name: broken\nparameters: {type: object, properties: {a: {type: string}}}\nplan:\n  steps:\n    - {step_id: s, action: x, agent_type: builtin.echo, params: {q: '{{ inputs.b }}'}}\n",
    )
    .unwrap();
    let refused =
        local(&["templates", "push", broken.to_str().unwrap()], &db).expect(2, "bad template");
    assert!(
        refused
            .stderr
            .contains("plan.steps.s.params.q: reads `inputs.b`, which is not declared"),
        "{}",
        refused.stderr
    );
}

#[test]
fn templates_over_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let operator = make_token(&db, "olga", "operator");
    let admin = make_token(&db, "ada", "admin");
    let server = Server::start(&db, &[]);
    let base = server.base.as_str();
    let file = example("templates/research.yaml");
    let file = file.to_str().unwrap();

    let pushed = remote(
        &["templates", "push", file, "--json"],
        base,
        Some(&operator),
    )
    .expect(0, "push")
    .json();
    assert_eq!(pushed["created_by"], "olga");
    let detail = remote(
        &["templates", "show", "research", "--json"],
        base,
        Some(&operator),
    )
    .expect(0, "show")
    .json();
    assert_eq!(detail["versions"].as_array().map(Vec::len), Some(1));

    let bad = remote(
        &["templates", "run", "research", "--input", "depth=0"],
        base,
        Some(&operator),
    )
    .expect(2, "bad inputs");
    assert!(
        bad.stderr.contains("inputs.depth") && bad.stderr.contains("inputs.topic"),
        "{}",
        bad.stderr
    );

    let plan: Value = remote(
        &[
            "templates",
            "run",
            "research",
            "--input",
            "topic=moss",
            "--no-start",
            "--plan-id",
            "s1",
            "--json",
        ],
        base,
        Some(&operator),
    )
    .expect(0, "run")
    .json();
    assert_eq!(plan["state"], "idle");
    assert_eq!(plan["template"]["version"], 1);
    let shown = remote(&["plans", "show", "s1", "--json"], base, Some(&operator))
        .expect(0, "plans show")
        .json();
    assert_eq!(shown["inputs"]["topic"], "moss");

    remote(&["templates", "delete", "research"], base, Some(&operator))
        .expect(2, "an operator cannot delete");
    remote(&["templates", "delete", "research"], base, Some(&admin)).expect(0, "an admin can");
    let list = remote(&["templates", "list", "--json"], base, Some(&operator))
        .expect(0, "list")
        .json();
    assert_eq!(list["items"], json!([]));
}
