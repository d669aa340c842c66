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

/// Three versions of a template whose first step holds (a long sleep) while the plan runs:
/// version 2 changes a pending step and adds one, version 3 changes the holding step.
fn versioned(dir: &std::path::Path) -> [String; 3] {
    let hold = |action: &str| {
        format!("    - {{step_id: hold, action: {action}, agent_type: builtin.sleep, params: {{ms: 600000}}}}\n")
    };
    let head = "name: staged\nparameters:\n  type: object\n  properties:\n    topic: {type: string, default: moss}\nplan:\n  steps:\n";
    let read = "    - {step_id: read, action: read, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}'}}\n";
    let read2 = "    - {step_id: read, action: read, agent_type: builtin.echo, params: {q: '{{ inputs.topic }}', depth: 3}}\n";
    let publish = "    - {step_id: publish, action: publish, agent_type: builtin.echo}\n";
    let texts = [
        format!("{head}{}{read}", hold("hold")),
        format!("{head}{}{read2}{publish}", hold("hold")),
        format!("{head}{}{read2}{publish}", hold("hold_longer")),
    ];
    let mut paths = [String::new(), String::new(), String::new()];
    for (i, text) in texts.iter().enumerate() {
        let path = dir.join(format!("staged-v{}.yaml", i + 1));
        std::fs::write(&path, text).unwrap();
        paths[i] = path.to_str().unwrap().to_owned();
    }
    paths
}

/// `cairn templates diff` and `cairn plans upgrade`, on a local store and over `--server`
/// (the same JSON both ways); an upgrade refused naming the step that has started (exit 2),
/// then applied, a version of the plan's history with its cause.
#[test]
fn template_diffs_and_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let files = versioned(dir.path());
    for f in &files {
        local(&["templates", "push", f], &db).expect(0, "push");
    }
    let again = local(&["templates", "push", &files[2]], &db).expect(0, "identical push");
    assert!(again.stdout.contains("no new version"), "{}", again.stdout);

    let text = local(
        &["templates", "diff", "staged", "--from", "1", "--to", "2"],
        &db,
    )
    .expect(0, "diff")
    .stdout;
    assert!(
        text.starts_with("template staged version 1 → 2\n"),
        "{text}"
    );
    assert!(text.contains("+ step publish at 3"), "{text}");
    assert!(text.contains("step read params.depth: 3"), "{text}");
    let latest = local(&["templates", "diff", "staged", "--json"], &db)
        .expect(0, "diff of the latest")
        .json();
    assert_eq!(
        (latest["from"].as_u64(), latest["to"].as_u64()),
        (Some(2), Some(3))
    );
    let bad =
        local(&["templates", "diff", "staged", "--from", "7"], &db).expect(2, "unknown version");
    assert!(bad.stderr.contains("has no version 7"), "{}", bad.stderr);
    local(&["templates", "diff", "nope"], &db).expect(2, "unknown template");
    local(&["templates", "diff", "staged", "--to", "0"], &db).expect(2, "version 0");

    // Locally: a plan of version 1, upgraded to 2 before it runs.
    local(
        &[
            "templates",
            "run",
            "staged",
            "--version",
            "1",
            "--no-start",
            "--plan-id",
            "l1",
        ],
        &db,
    )
    .expect(0, "run");
    let dry = local(
        &[
            "plans",
            "upgrade",
            "l1",
            "--template-version",
            "2",
            "--dry-run",
            "--json",
        ],
        &db,
    )
    .expect(0, "dry run")
    .json();
    assert_eq!(dry["status"], "would_apply");
    let done = local(
        &[
            "plans",
            "upgrade",
            "l1",
            "--template-version",
            "2",
            "--expected-version",
            "1",
            "--reason",
            "deeper",
            "--json",
        ],
        &db,
    )
    .expect(0, "upgrade")
    .json();
    assert_eq!(
        (done["type"].as_str(), done["plan_version"].as_u64()),
        (Some("upgrade"), Some(2))
    );
    let shown = local(&["plans", "show", "l1", "--json"], &db)
        .expect(0, "show")
        .json();
    assert_eq!(shown["template"]["version"], 2);
    let versions = local(&["plans", "versions", "l1", "--json"], &db)
        .expect(0, "versions")
        .json();
    assert_eq!(versions["versions"][1]["cause"]["type"], "upgrade");
    assert_eq!(versions["versions"][1]["cause"]["reason"], "deeper");
    let diff = local(&["plans", "diff", "l1"], &db)
        .expect(0, "plan diff")
        .stdout;
    assert!(diff.contains("+ step publish"), "{diff}");
    assert!(diff.contains("template.version: 1 → 2"), "{diff}");
    // A plan not made of a template is refused, saying so.
    std::fs::write(
        dir.path().join("plain.yaml"),
        "plan_id: plain\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n",
    )
    .unwrap();
    local(
        &[
            "plans",
            "register",
            dir.path().join("plain.yaml").to_str().unwrap(),
        ],
        &db,
    )
    .expect(0, "register");
    let refused = local(
        &["plans", "upgrade", "plain", "--template-version", "2"],
        &db,
    )
    .expect(2, "not from a template");
    assert!(
        refused.stderr.contains("was not made from a template"),
        "{}",
        refused.stderr
    );

    // Over a server, which runs the steps: the holding step has started.
    let operator = make_token(&db, "olga", "operator");
    let server = Server::start(&db, &[]);
    let base = server.base.as_str();
    let remote_diff = remote(
        &["templates", "diff", "staged", "--json"],
        base,
        Some(&operator),
    )
    .expect(0, "diff over the server")
    .json();
    assert_eq!(remote_diff, latest, "the same diff both ways");
    let plan = remote(
        &[
            "templates",
            "run",
            "staged",
            "--version",
            "2",
            "--plan-id",
            "s1",
            "--json",
        ],
        base,
        Some(&operator),
    )
    .expect(0, "run")
    .json();
    assert_eq!(plan["state"], "running");
    // Started in the same commit: the holding step is running in the answer.
    assert_eq!(plan["steps"][0]["status"], "running", "{plan}");
    let refused = remote(
        &["plans", "upgrade", "s1", "--template-version", "3"],
        base,
        Some(&operator),
    )
    .expect(2, "refused");
    assert!(
        refused
            .stderr
            .contains("step hold is running; version 3 of template staged changes it"),
        "{}",
        refused.stderr
    );
    let log = remote(
        &["plans", "interventions", "s1", "--json"],
        base,
        Some(&operator),
    )
    .expect(0, "interventions")
    .json();
    assert_eq!(log["items"][0]["status"], "failed", "{log}");
    assert_eq!(log["items"][0]["user"], "olga");
    // Back to version 1: the pending steps change, the running one is left alone.
    let done = remote(
        &[
            "plans",
            "upgrade",
            "s1",
            "--template-version",
            "1",
            "--json",
        ],
        base,
        Some(&operator),
    )
    .expect(0, "upgrade applied")
    .json();
    assert_eq!(done["status"], "applied");
    let shown = remote(&["plans", "show", "s1", "--json"], base, Some(&operator))
        .expect(0, "show")
        .json();
    assert_eq!(shown["template"]["version"], 1);
    let ids: Vec<&str> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hold", "read"]);
    remote(&["plans", "cancel", "s1"], base, Some(&operator)).expect(0, "cancel");
}
