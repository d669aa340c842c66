//! End-to-end tests of the `cairn` binary: every test runs the real executable in its own
//! temporary directory (database, plan files, `cairn.toml`) and looks at exit codes, stderr and
//! the store as the CLI reports it (`--json`).
//!
//! No assertion is about time; sleeps appear only where waiting for a child process is inherent
//! (bounded polling of a log file, and the random delays before a `kill -9`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{
    cairn_command, exit_within, kill_and_reap, output_within, signal, wait_with_output_within,
    wait_within, Run, LIMIT, USER,
};

/// One test's world: a temporary directory holding the database, plans and `cairn.toml`.
struct World {
    dir: TempDir,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::Builder::new()
                .prefix("cairn-e2e-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn db(&self) -> PathBuf {
        self.path("cairn.db")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// A `cairn` command running in the world's directory with a clean environment of its own.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = cairn_command(args);
        c.current_dir(self.dir.path());
        c
    }

    /// Runs `cairn ARGS` as is.
    fn raw(&self, args: &[&str]) -> Run {
        Run::of(&mut self.command(args), args)
    }

    /// Runs `cairn ARGS --db <world db>`.
    fn cairn(&self, args: &[&str]) -> Run {
        let db = self.db();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", db.to_str().unwrap()]);
        self.raw(&all)
    }

    /// Runs `cairn ARGS --db … --json`, expects exit 0 and parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        self.cairn(&all)
            .expect(0, &format!("cairn {}", args.join(" ")))
            .json()
    }

    /// Spawns `cairn ARGS --db …` with stderr captured (stdout discarded).
    fn spawn(&self, args: &[&str]) -> Child {
        let db = self.db();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", db.to_str().unwrap()]);
        self.command(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairn")
    }

    fn show(&self, plan_id: &str) -> Value {
        self.json(&["plans", "show", plan_id])
    }

    fn plan_ids(&self) -> Vec<String> {
        // No database file: nothing was registered (and listing refuses a missing file).
        if !self.db().exists() {
            return Vec::new();
        }
        self.json(&["plans", "list"])["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| p["plan_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Every event of a plan, paginating with `--after`.
    fn events(&self, plan_id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0u64;
        loop {
            let after_s = after.to_string();
            let page = self.json(&[
                "plans", "events", plan_id, "--after", &after_s, "--limit", "100",
            ]);
            let items = page["items"].as_array().expect("items").clone();
            if items.is_empty() {
                break;
            }
            after = items.last().unwrap()["seq"].as_u64().expect("seq");
            all.extend(items);
        }
        all
    }

    /// Polls (bounded) until `pred` holds on the contents of file `name`.
    fn wait_for_file(&self, name: &str, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if pred(&self.read(name)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; {name}:\n{}",
                self.read(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn step<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step_id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {view}"))
}

fn step_ids(view: &Value) -> Vec<String> {
    view["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The step ids of the events of type `kind`, in log order.
fn steps_of(events: &[Value], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["data"]["step_id"].as_str().unwrap().to_owned())
        .collect()
}

/// xorshift64*: a small deterministic generator, seeded per test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A `cairn.toml` with one `command` agent, `logger`, that appends
/// `start STEP KEY ATTEMPT` to `agent.log`, sleeps `params.sleep_s` seconds (a string such as
/// "0.045"; none = no sleep), appends `end STEP KEY ATTEMPT` and prints `{"ok": true}`.
const LOGGER_TOML: &str = r#"
[agents.logger]
executor = "command"
command = ["sh", "-c", '''
in=$(cat)
s=$(printf '%s' "$in" | sed -n 's/.*"sleep_s":"\([0-9.]*\)".*/\1/p')
echo "start $CAIRN_STEP_ID $CAIRN_IDEMPOTENCY_KEY $CAIRN_ATTEMPT" >> agent.log
if [ -n "$s" ]; then sleep "$s"; fi
echo "end $CAIRN_STEP_ID $CAIRN_IDEMPOTENCY_KEY $CAIRN_ATTEMPT" >> agent.log
echo '{"ok": true}'
''']
"#;

/// One line of `agent.log`.
#[derive(Debug, Clone, PartialEq)]
struct LogLine {
    what: String,
    step: String,
    key: String,
    attempt: u32,
}

fn agent_log(world: &World) -> Vec<LogLine> {
    world
        .read("agent.log")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(parts.len(), 4, "malformed agent.log line {l:?}");
            LogLine {
                what: parts[0].to_owned(),
                step: parts[1].to_owned(),
                key: parts[2].to_owned(),
                attempt: parts[3].parse().expect("attempt"),
            }
        })
        .collect()
}

// ---- 1. validate ---------------------------------------------------------------------------

#[test]
fn validate_accepts_a_good_plan_and_names_the_faults_of_bad_ones() {
    let w = World::new();
    let good = examples_dir().join("research.yaml");
    let run = w
        .raw(&["validate", good.to_str().unwrap()])
        .expect(0, "validate research.yaml");
    assert!(
        run.stdout.contains("valid plan research_001 with 3 steps"),
        "{}",
        run.stdout
    );
    let json_plan = w.write(
        "good.json",
        r#"{"plan_id": "j", "steps": [{"step_id": "a", "action": "x", "agent_type": "builtin.echo"}]}"#,
    );
    w.raw(&["validate", json_plan.to_str().unwrap()])
        .expect(0, "validate a JSON plan");

    // (file name, document, what stderr must contain)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "dup.yaml",
            "steps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n  - {step_id: a, action: y, agent_type: builtin.echo}\n",
            &["steps.a.step_id", "more than once"],
        ),
        (
            "unknown_dep.yaml",
            "steps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n  - {step_id: b, action: x, agent_type: builtin.echo, depends_on: [nope]}\n",
            &["steps.b.depends_on", "nope"],
        ),
        (
            "cycle.yaml",
            "steps:\n  - {step_id: a, action: x, agent_type: builtin.echo, depends_on: [b]}\n  - {step_id: b, action: x, agent_type: builtin.echo, depends_on: [a]}\n",
            &["cycle", "a -> b -> a"],
        ),
        (
            "unknown_field.yaml",
            "steps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n  - {step_id: b, action: x, agent_type: builtin.echo, colour: red}\n",
            &["unknown field `colour`", "line 3"],
        ),
        (
            "bad_template.yaml",
            "query: q\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, params: {q: \"{{ query \"}}\n",
            &["steps.a.params.q", "template"],
        ),
        (
            "bad_when.yaml",
            "steps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n  - {step_id: b, action: x, agent_type: builtin.echo, when: \"steps.a.output >\"}\n",
            &["steps.b.when"],
        ),
        (
            "quality_gate.yaml",
            "steps:\n  - {step_id: a, action: x, agent_type: builtin.echo, quality_gate: {min_scores: {accuracy: high}, on_fial: review}}\n",
            &[
                "steps.a.quality_gate.min_scores.accuracy: the bound must be a finite number",
                "unknown field `on_fial`; did you mean `on_fail`?",
            ],
        ),
        (
            "bad_id.yaml",
            "steps:\n  - {step_id: \"bad id!\", action: x, agent_type: builtin.echo}\n",
            &["step_id", "bad id!"],
        ),
    ];
    for (name, doc, needles) in cases {
        let path = w.write(name, doc);
        let run = w
            .raw(&["validate", path.to_str().unwrap()])
            .expect(2, &format!("validate {name}"));
        assert!(
            run.stderr.contains("is not a valid plan"),
            "{name}: {}",
            run.stderr
        );
        for needle in *needles {
            assert!(
                run.stderr.contains(needle),
                "{name}: stderr should mention {needle:?}:\n{}",
                run.stderr
            );
        }
        // `cairn run` refuses the same file before registering anything.
        w.cairn(&["run", path.to_str().unwrap()])
            .expect(2, &format!("run {name}"));
    }
    w.raw(&["validate", w.path("missing.yaml").to_str().unwrap()])
        .expect(2, "validate a missing file");
    assert!(w.plan_ids().is_empty(), "an invalid plan was registered");
}

/// `cairn validate` on files with several faults lists them all at once, each at its line and
/// column, with a suggestion for a likely typo; a tab is reported where it is.
#[test]
fn validate_lists_every_fault_at_its_line_with_suggestions() {
    let w = World::new();
    let typo = w.write(
        "typo.yaml",
        "plan_id: typo\nsteps:\n  - step_id: s1\n    action: search\n    agent_typ: builtin.echo\n    parms: {q: x}\n  - step_id: s2\n    action: analyze\n    agent_type: builtin.echo\n    dependson: [s1]\n    retry:\n      max_attempt: 3\n",
    );
    let run = w
        .raw(&["validate", typo.to_str().unwrap()])
        .expect(2, "validate typo.yaml");
    let faults: Vec<&str> = run
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    assert_eq!(
        faults,
        [
            "steps.s1: unknown field `agent_typ`; did you mean `agent_type`? (line 5, column 5)",
            "steps.s1: unknown field `parms`; did you mean `params`? (line 6, column 5)",
            "steps.s2: unknown field `dependson`; did you mean `depends_on`? (line 10, column 5)",
            "steps.s2.retry: unknown field `max_attempt`; did you mean `max_attempts`? (line 12, column 7)",
        ],
        "{}",
        run.stderr
    );

    let deps = w.write(
        "deps.yaml",
        "steps:\n  - {step_id: step_1, action: x, agent_type: builtin.echo}\n  - {step_id: s2, action: x, agent_type: builtin.echo, depends_on: [s3]}\n  - {step_id: s3, action: x, agent_type: builtin.echo, depends_on: [s2, stpe_1]}\n  - {step_id: step_1, action: x, agent_type: builtin.echo, depends_on: []}\n  - {step_id: 'bad id', action: x, agent_type: builtin.echo}\n",
    );
    let run = w
        .raw(&["validate", deps.to_str().unwrap()])
        .expect(2, "validate deps.yaml");
    for needle in [
        "steps: the dependencies form a cycle: s2 -> s3 -> s2 (line 3, column 68)",
        "steps.s3.depends_on: unknown step \"stpe_1\"; did you mean `step_1`? (line 4, column 73)",
        "steps.step_1.step_id: step id step_1 is used more than once (line 5, column 15)",
        "steps[4].step_id: \"bad id\" is not a valid id",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }

    let tab = w.write(
        "tab.yaml",
        "plan_id: tab\nsteps:\n  - step_id: s1\n\taction: x\n    agent_type: builtin.echo\n",
    );
    let run = w
        .raw(&["validate", tab.to_str().unwrap()])
        .expect(2, "validate tab.yaml");
    assert!(run.stderr.contains("tab"), "{}", run.stderr);
    assert!(run.stderr.contains("(line 4, column 1)"), "{}", run.stderr);

    let json = w.write(
        "typo.json",
        "{\n  \"steps\": [\n    {\"step_id\": \"a\", \"action\": \"x\", \"agent_typ\": \"builtin.echo\"}\n  ]\n}\n",
    );
    let run = w
        .raw(&["validate", json.to_str().unwrap()])
        .expect(2, "validate typo.json");
    assert!(
        run.stderr.contains(
            "steps.a: unknown field `agent_typ`; did you mean `agent_type`? (line 3, column 37)"
        ),
        "{}",
        run.stderr
    );
}

/// An undefined name in a template or a `when:` condition fails the step (without retry) with a
/// message naming the name, also when the template is one expression that would keep its type.
#[test]
fn an_undefined_name_in_a_template_or_condition_fails_the_step_naming_it() {
    let w = World::new();
    // (plan id, the second step's extra fields, what the error must name)
    let cases: &[(&str, &str, &str)] = &[
        (
            "bare",
            r#"params: {y: "{{ nope }}"}"#,
            "`nope` is undefined",
        ),
        (
            "field",
            r#"params: {y: "{{ steps.s1.output.nope }}"}"#,
            "`steps.s1.output.nope` is undefined (steps.s1.output has hits)",
        ),
        (
            "cond",
            r#"when: "steps.s1.output.ok""#,
            "`steps.s1.output.ok` is undefined",
        ),
    ];
    for (id, extra, needle) in cases {
        let file = format!("{id}.yaml");
        w.write(
            &file,
            &format!(
                "plan_id: {id}\nsteps:\n  - {{step_id: s1, action: x, agent_type: builtin.echo, params: {{hits: 3}}}}\n  - {{step_id: s2, action: x, agent_type: builtin.echo, retry: {{max_attempts: 3, backoff_ms: 1}}, {extra}}}\n"
            ),
        );
        let run = w.cairn(&["run", &file]).expect(1, id);
        assert!(run.stderr.contains(needle), "{id}: {}", run.stderr);
        let view = w.show(id);
        assert_eq!(view["state"], "failed", "{id}");
        let s2 = step(&view, "s2");
        assert_eq!(s2["status"], "failed", "{id}: {s2}");
        assert!(
            s2["error"].as_str().unwrap_or("").contains(needle),
            "{id}: {s2}"
        );
        assert!(
            s2["attempts"].as_u64().unwrap_or(0) <= 1,
            "{id}: retried: {s2}"
        );
        assert!(
            steps_of(&w.events(id), "step_completed") == ["s1"],
            "{id}: s2 must not complete"
        );
    }
}

/// `cairn steps complete`: an operator supplies a failed step's result by hand; the plan pauses
/// for them (reason `intervention`, with a checkpoint of that trigger) and runs on that output.
#[test]
fn steps_complete_supplies_a_result_by_hand_and_the_plan_runs_on_it() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: hand\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.fail, params: {times: 9}}\n  - {step_id: b, action: x, agent_type: builtin.echo, params: {got: \"{{ steps.a.output.n }}\"}}\n",
    );
    w.cairn(&["run", "plan.yaml"]).expect(1, "a fails");
    // Bad input is refused by name and changes nothing.
    let run = w
        .cairn(&["steps", "complete", "hand", "a", "--output", "{nope"])
        .expect(2, "output that is not JSON");
    assert!(
        run.stderr.contains("--output is not valid JSON"),
        "{}",
        run.stderr
    );
    let dry = w.json(&[
        "steps",
        "complete",
        "hand",
        "a",
        "--output",
        r#"{"n": 1}"#,
        "--dry-run",
    ]);
    assert_eq!(dry["status"], "would_apply");
    assert!(dry.get("intervention_id").is_none(), "{dry}");
    assert_eq!(w.show("hand")["state"], "failed");

    let rec = w.json(&[
        "steps",
        "complete",
        "hand",
        "a",
        "--output",
        r#"{"n": 42}"#,
        "--reason",
        "looked it up",
    ]);
    assert_eq!(rec["status"], "applied");
    assert_eq!(rec["user"], USER);
    let view = w.show("hand");
    assert_eq!(view["state"], "paused");
    assert_eq!(view["pause_reason"], "intervention");
    assert_eq!(step(&view, "a")["status"], "completed");
    let cps = w.json(&["checkpoints", "list", "hand"]);
    let last = cps["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["trigger"], "intervention", "{cps}");

    let done = w
        .cairn(&["run", "--resume", "hand", "--json"])
        .expect(0, "resume")
        .json();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["outputs"]["a"], json!({"n": 42}));
    assert_eq!(done["outputs"]["b"], json!({"got": 42}));
    // A step that has ended cannot be completed again.
    let run = w
        .cairn(&["steps", "complete", "hand", "b", "--output", "1"])
        .expect(2, "complete a completed step");
    assert!(
        run.stderr
            .contains("only a pending, queued, running or failed step"),
        "{}",
        run.stderr
    );
}

// ---- 2. run the example --------------------------------------------------------------------

#[test]
fn run_the_research_example_then_refuse_it_twice_then_run_it_under_another_id() {
    let w = World::new();
    for f in ["research.yaml", "cairn.toml"] {
        std::fs::copy(examples_dir().join(f), w.path(f)).expect("copy example");
    }
    let run = w.cairn(&["run", "research.yaml"]).expect(0, "run research");
    assert!(run.stderr.contains("completed"), "{}", run.stderr);

    let view = w.show("research_001");
    assert_eq!(view["state"], "completed");
    assert_eq!(
        strs(&view["completed_steps"]),
        ["step_1", "step_2", "step_3"]
    );
    for s in view["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["attempts"], 1, "{s}");
    }
    let cps = w.json(&["checkpoints", "list", "research_001"]);
    let cps = cps["items"].as_array().unwrap();
    assert_eq!(cps.len(), 4, "initial + one per step: {cps:?}");
    let triggers: Vec<&str> = cps.iter().map(|c| c["trigger"].as_str().unwrap()).collect();
    assert_eq!(triggers, ["initial", "step", "step", "step"]);

    let again = w.cairn(&["run", "research.yaml"]).expect(2, "run it again");
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("--plan-id"),
        "{}",
        again.stderr
    );
    assert_eq!(w.plan_ids(), ["research_001"]);

    let other = w
        .cairn(&["run", "research.yaml", "--plan-id", "other", "--json"])
        .expect(0, "run it as other");
    let done = other.json();
    assert_eq!(done["plan_id"], "other");
    assert_eq!(done["state"], "completed");
    // The templates rendered against the earlier outputs.
    assert_eq!(
        done["outputs"]["step_3"]["summary_of"],
        "12 sources on Market analysis"
    );
    let mut ids = w.plan_ids();
    ids.sort();
    assert_eq!(ids, ["other", "research_001"]);
    w.cairn(&["run", "research.yaml", "--plan-id", "bad id!"])
        .expect(2, "a malformed --plan-id");
}

/// The gated example as its header describes it: the gate retries the writer once, then holds
/// the step for review; `cairn run` says so and prints the commands that decide it; the printed
/// approve command works as printed, and the plan runs on to the end with the approved output.
#[test]
fn the_gated_example_holds_a_step_for_review_and_the_printed_approval_lets_it_finish() {
    let w = World::new();
    std::fs::create_dir(w.path("agents")).unwrap();
    for f in ["gated.yaml", "cairn.toml", "agents/writer.py"] {
        std::fs::copy(examples_dir().join(f), w.path(f)).expect("copy example");
    }
    let run = w.cairn(&["run", "gated.yaml"]).expect(3, "run gated");
    assert!(
        run.stderr
            .contains("step draft (attempt 2) awaits review: coverage 0.75 is not >= 0.8"),
        "{}",
        run.stderr
    );
    let view = w.show("gated_001");
    assert_eq!(view["state"], "paused");
    assert_eq!(view["pause_reason"], "review_required");
    assert_eq!(step(&view, "draft")["status"], "awaiting_review");
    assert_eq!(step(&view, "publish")["status"], "pending");
    // The gate retry is in the audit trail as a retry_step by system:quality_gate.
    let audit = w.json(&["plans", "interventions", "gated_001"]);
    let by_gate: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["user"] == "system:quality_gate")
        .collect();
    assert_eq!(by_gate.len(), 1, "{audit}");
    assert_eq!(by_gate[0]["type"], "retry_step");

    let inbox = w.json(&["reviews", "list", "--state", "open"]);
    assert_eq!(inbox["items"][0]["attempt"], 2, "{inbox}");
    assert_eq!(inbox["items"][0]["output"]["missing"], json!(["risks"]));

    // The approve command exactly as `cairn run` printed it.
    let printed = run
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("approve: cairn "))
        .unwrap_or_else(|| panic!("no approve command printed:\n{}", run.stderr))
        .to_owned();
    let mut args: Vec<&str> = printed.split_whitespace().collect();
    args.extend(["--reason", "good enough"]);
    w.raw(&args).expect(0, "the printed approve command");
    // A second decision on the closed review is refused with a reason.
    let again = w.raw(&args).expect(2, "approve twice");
    assert!(again.stderr.contains("refused"), "{}", again.stderr);

    let resume = w
        .cairn(&["run", "--resume", "gated_001", "--json"])
        .expect(0, "resume after the approval");
    let done = resume.json();
    assert_eq!(done["state"], "completed", "{done}");
    let brief = done["outputs"]["publish"]["brief"].as_str().unwrap();
    assert!(
        brief.contains("attempt 2") && brief.contains("regulation"),
        "{brief}"
    );
    let closed = w.json(&["reviews", "list", "--state", "closed"]);
    assert_eq!(closed["items"][0]["outcome"], "approved", "{closed}");
    assert_eq!(closed["items"][0]["votes"][0]["reason"], "good enough");
}

// ---- 3. agent types without an executor ----------------------------------------------------

#[test]
fn a_plan_whose_agent_type_has_no_executor_is_refused_before_it_starts() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n  - {step_id: b, action: x, agent_type: mystery}\n",
    );
    let run = w.cairn(&["run", "plan.yaml"]).expect(2, "unknown agent");
    for needle in ["step b", "\"mystery\"", "[agents.mystery]", "executor ="] {
        assert!(
            run.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{}",
            run.stderr
        );
    }
    assert!(w.plan_ids().is_empty(), "nothing may be registered");

    // Configured, the same plan runs.
    w.write(
        "cairn.toml",
        "[agents.mystery]\nexecutor = \"builtin\"\nbuiltin = \"echo\"\n",
    );
    w.cairn(&["run", "plan.yaml"]).expect(0, "configured agent");

    // A broken configuration is bad input too, and names the key.
    w.write(
        "cairn.toml",
        "[agents.mystery]\nexecutor = \"command\"\ncommand = []\n",
    );
    let run = w
        .cairn(&["run", "plan.yaml", "--plan-id", "p2"])
        .expect(2, "empty command");
    assert!(run.stderr.contains("agents.mystery"), "{}", run.stderr);
}

// ---- 4. failure, retry, resume -------------------------------------------------------------

#[test]
fn a_failed_plan_suggests_retry_and_completes_after_retry_and_resume() {
    let w = World::new();
    // b fails on attempts 1..=3; with max_attempts 2 it exhausts its retries.
    w.write(
        "plan.yaml",
        r#"
plan_id: f
steps:
  - {step_id: a, action: x, agent_type: builtin.echo, params: {v: 1}}
  - {step_id: b, action: x, agent_type: builtin.fail, params: {times: 3}, retry: {max_attempts: 2, backoff_ms: 1}}
  - {step_id: c, action: x, agent_type: builtin.echo, params: {v: 3}}
"#,
    );
    let run = w.cairn(&["run", "plan.yaml"]).expect(1, "failing plan");
    assert!(
        run.stderr.contains("cairn steps retry f b"),
        "stderr should suggest the retry:\n{}",
        run.stderr
    );
    let view = w.show("f");
    assert_eq!(view["state"], "failed");
    assert_eq!(strs(&view["failed_steps"]), ["b"]);
    assert_eq!(step(&view, "b")["attempts"], 2);
    assert_eq!(step(&view, "c")["status"], "pending");

    // Resuming a failed plan without an intervention does not run anything.
    w.cairn(&["run", "--resume", "f"])
        .expect(1, "resume a failed plan");

    // Attempt 3 still fails (times = 3), attempt 4 succeeds: the retry budget is per run.
    w.cairn(&["steps", "retry", "f", "b"]).expect(0, "retry b");
    assert_eq!(w.show("f")["state"], "paused");
    let done = w
        .cairn(&["run", "--resume", "f", "--json"])
        .expect(0, "resume after retry")
        .json();
    assert_eq!(done["state"], "completed");
    assert_eq!(step(&done, "b")["attempts"], 4);
    assert_eq!(step(&done, "b")["run"], 2);
    assert_eq!(done["outputs"]["b"], json!({"times": 3}));
    assert_eq!(done["outputs"]["c"], json!({"v": 3}));

    // A non-retryable failure fails at once, whatever the retry policy.
    w.write(
        "cairn.toml",
        "[agents.broken]\nexecutor = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; echo not json\"]\n",
    );
    w.write(
        "fatal.yaml",
        "plan_id: g\nsteps:\n  - {step_id: only, action: x, agent_type: broken, retry: {max_attempts: 5, backoff_ms: 1}}\n",
    );
    let run = w.cairn(&["run", "fatal.yaml"]).expect(1, "fatal failure");
    assert!(run.stderr.contains("non-JSON"), "{}", run.stderr);
    assert!(
        run.stderr.contains("cairn steps retry g only"),
        "{}",
        run.stderr
    );
    assert_eq!(step(&w.show("g"), "only")["attempts"], 1);
    // Reopened with a retry (the plan pauses, the step is pending again), fixed with a modify,
    // then resumed.
    w.cairn(&["steps", "retry", "g", "only"])
        .expect(0, "retry g");
    assert_eq!(w.show("g")["pause_reason"], "intervention");
    w.cairn(&[
        "steps",
        "modify",
        "g",
        "only",
        "--patch",
        r#"{"agent_type": "builtin.echo", "params": {"fixed": true}}"#,
    ])
    .expect(0, "modify the retried step");
    let done = w
        .cairn(&["run", "--resume", "g", "--json"])
        .expect(0, "resume g")
        .json();
    assert_eq!(done["outputs"]["only"], json!({"fixed": true}));
}

/// The contract: `modify_step` is allowed on a "pending or failed step". A failed step only exists in
/// a failed plan (a step failing after its retries fails the plan), and the engine refuses every
/// structural intervention on a failed plan, so a failed step can never be modified: the fix has
/// to go through `retry_step` first. Reported; ignored until the core decides.
#[test]
fn modify_is_allowed_on_a_failed_step() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: m\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.fail, params: {times: 9}}\n",
    );
    w.cairn(&["run", "plan.yaml"]).expect(1, "failing plan");
    assert_eq!(step(&w.show("m"), "a")["status"], "failed");
    w.cairn(&[
        "steps",
        "modify",
        "m",
        "a",
        "--patch",
        r#"{"agent_type": "builtin.echo"}"#,
    ])
    .expect(0, "modify a failed step");
}

// ---- 5. interventions ----------------------------------------------------------------------

#[test]
fn interventions_at_a_breakpoint_shape_the_rest_of_the_run_and_are_all_audited() {
    let w = World::new();
    w.write(
        "plan.yaml",
        r#"
plan_id: iv
query: q
steps:
  - {step_id: s1, action: x, agent_type: builtin.echo, params: {v: 1}, pause_after: true}
  - {step_id: s2, action: x, agent_type: builtin.echo, params: {v: 2}}
  - {step_id: s3, action: x, agent_type: builtin.echo, params: {v: 3, keep: k}}
  - {step_id: s4, action: x, agent_type: builtin.echo, params: {v: 4}}
  - {step_id: s5, action: x, agent_type: builtin.echo, params: {v: 5, from: "{{ steps.s4.output.v }}"}, depends_on: [s4]}
  - {step_id: s6, action: x, agent_type: builtin.echo, params: {v: 6}}
"#,
    );
    let run = w.cairn(&["run", "plan.yaml"]).expect(3, "breakpoint");
    assert!(
        run.stderr.contains("breakpoint") && run.stderr.contains("cairn run --resume iv"),
        "{}",
        run.stderr
    );
    let view = w.show("iv");
    assert_eq!(view["state"], "paused");
    assert_eq!(view["pause_reason"], "breakpoint");
    assert_eq!(strs(&view["completed_steps"]), ["s1"]);
    let v0 = view["version"].as_u64().unwrap();

    // Every refusal: exit 2, a message saying why. (args, what stderr must contain)
    let refusals: &[(&[&str], &str)] = &[
        (&["steps", "skip", "iv", "s1"], "completed"),
        (&["steps", "skip", "iv", "nope"], "does not exist"),
        (
            &[
                "steps",
                "modify",
                "iv",
                "s1",
                "--patch",
                r#"{"params": {}}"#,
            ],
            "s1",
        ),
        (&["steps", "remove", "iv", "s4"], "s5 depends on s4"),
        (&["steps", "remove", "iv", "s1"], "s1"),
        (&["steps", "retry", "iv", "s2"], "pending"),
        (&["steps", "rerun", "iv", "s2"], "s2"),
        (&["steps", "reorder", "iv", "s3", "s2"], "permutation"),
        (
            &["steps", "reorder", "iv", "s2", "s3", "s5", "s4", "s6"],
            "s5 would come before s4",
        ),
        (
            &[
                "steps",
                "add",
                "iv",
                "--step",
                r#"{"step_id": "s2", "action": "a", "agent_type": "builtin.echo"}"#,
            ],
            "s2",
        ),
        (
            &[
                "steps",
                "add",
                "iv",
                "--after",
                "nope",
                "--step",
                r#"{"step_id": "zz", "action": "a", "agent_type": "builtin.echo"}"#,
            ],
            "nope",
        ),
    ];
    let mut refused_kinds = Vec::new();
    for (args, needle) in refusals {
        let run = w.cairn(args).expect(2, &args.join(" "));
        assert!(
            run.stderr.contains("refused") && run.stderr.contains(needle),
            "{}: stderr should say refused and mention {needle:?}:\n{}",
            args.join(" "),
            run.stderr
        );
        refused_kinds.push(args[1]);
    }
    // Malformed requests are bad input as well (not recorded: they never reach the plan).
    w.cairn(&["steps", "modify", "iv", "s3", "--patch", "{not json"])
        .expect(2, "a patch that is not JSON");
    w.cairn(&["steps", "skip", "nope-plan", "s1"])
        .expect(2, "an unknown plan");
    let view = w.show("iv");
    assert_eq!(
        view["version"].as_u64().unwrap(),
        v0,
        "refusals changed nothing"
    );
    assert_eq!(view["state"], "paused");

    // A dry run answers with the diff and changes nothing.
    let dry = w
        .cairn(&["steps", "remove", "iv", "s6", "--dry-run"])
        .expect(0, "dry-run remove");
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    let after_dry = w.show("iv");
    assert_eq!(after_dry["version"], view["version"]);
    assert_eq!(step_ids(&after_dry), step_ids(&view));

    // Applied interventions.
    w.cairn(&["steps", "skip", "iv", "s2", "--reason", "not needed"])
        .expect(0, "skip s2");
    let rec = w.json(&[
        "steps",
        "modify",
        "iv",
        "s3",
        "--patch",
        r#"{"params": {"v": 33, "extra": "x"}}"#,
    ]);
    assert_eq!(rec["status"], "applied");
    assert_eq!(rec["user"], USER);
    let version = rec["plan_version"].as_u64().unwrap();
    // A stale expected version is refused; the current one is accepted.
    let stale = (version - 1).to_string();
    let run = w
        .cairn(&[
            "steps",
            "modify",
            "iv",
            "s3",
            "--patch",
            r#"{"params": {"v": 0}}"#,
            "--expected-version",
            &stale,
        ])
        .expect(2, "stale expected version");
    assert!(run.stderr.contains("version"), "{}", run.stderr);
    w.cairn(&[
        "steps",
        "add",
        "iv",
        "--after",
        "s3",
        "--expected-version",
        &version.to_string(),
        "--step",
        r#"{"step_id": "n1", "action": "a", "agent_type": "builtin.echo", "params": {"v": "n1"}}"#,
    ])
    .expect(0, "add n1 after s3");
    w.cairn(&[
        "steps",
        "add",
        "iv",
        "--before",
        "s3",
        "--step",
        r#"{"step_id": "n2", "action": "a", "agent_type": "builtin.echo", "params": {"v": "n2"}}"#,
    ])
    .expect(0, "add n2 before s3");
    w.cairn(&[
        "steps",
        "add",
        "iv",
        "--step",
        r#"{"step_id": "n3", "action": "a", "agent_type": "builtin.echo", "params": {"v": "n3", "after5": "{{ steps.s5.output.from }}"}}"#,
    ])
    .expect(0, "add n3 at the end");
    w.cairn(&["steps", "remove", "iv", "s6"])
        .expect(0, "remove s6");
    let view = w.show("iv");
    assert_eq!(
        step_ids(&view),
        ["s1", "s2", "n2", "s3", "n1", "s4", "s5", "n3"]
    );
    // Reorder the pending steps (all of them, a permutation that respects s5 -> s4).
    w.cairn(&["steps", "reorder", "iv", "n1", "s3", "n2", "s4", "s5", "n3"])
        .expect(0, "reorder");
    let view = w.show("iv");
    assert_eq!(
        step_ids(&view),
        ["s1", "s2", "n1", "s3", "n2", "s4", "s5", "n3"]
    );
    assert_eq!(step(&view, "s2")["status"], "skipped");

    let done = w
        .cairn(&["run", "--resume", "iv", "--json"])
        .expect(0, "resume the modified plan")
        .json();
    assert_eq!(done["state"], "completed");
    assert_eq!(
        done["outputs"],
        json!({
            "s1": {"v": 1},
            "n1": {"v": "n1"},
            "s3": {"v": 33, "keep": "k", "extra": "x"},
            "n2": {"v": "n2"},
            "s4": {"v": 4},
            // A template that is a whole string keeps the type of what it names.
            "s5": {"v": 5, "from": 4},
            "n3": {"v": "n3", "after5": 4},
        })
    );
    assert_eq!(strs(&done["skipped_steps"]), ["s2"]);
    // The reordered plan ran in its new order (a plain list runs in sequence).
    let events = w.events("iv");
    assert_eq!(
        steps_of(&events, "step_started"),
        ["s1", "n1", "s3", "n2", "s4", "s5", "n3"]
    );

    // After completion: rerun from s4 (s4 and everything downstream of it), retry n1 alone.
    w.cairn(&["steps", "skip", "iv", "s4"])
        .expect(2, "skip a completed step");
    w.cairn(&["steps", "rerun", "iv", "s4"])
        .expect(0, "rerun s4");
    let view = w.show("iv");
    assert_eq!(view["state"], "paused");
    assert_eq!(view["pause_reason"], "intervention");
    for s in ["s4", "s5", "n3"] {
        assert_eq!(step(&view, s)["status"], "pending", "{s}");
        assert_eq!(step(&view, s)["run"], 2, "{s}");
    }
    for s in ["s1", "n1", "s3", "n2"] {
        assert_eq!(step(&view, s)["status"], "completed", "{s}");
    }
    w.cairn(&["steps", "retry", "iv", "n1"])
        .expect(0, "retry n1");
    w.cairn(&["run", "--resume", "iv"])
        .expect(0, "resume after rerun");
    let events = w.events("iv");
    let started = steps_of(&events, "step_started");
    assert_eq!(started.len(), 11, "{started:?}");
    let mut tail = started[7..].to_vec();
    tail.sort();
    assert_eq!(tail, ["n1", "n3", "s4", "s5"], "{started:?}");

    // The audit trail: every request, applied or refused, with its actor.
    let snap = w.json(&["plans", "snapshot", "iv"]);
    assert_eq!(snap["state"], "completed");
    let ivs = snap["interventions"].as_array().expect("interventions");
    for i in ivs {
        assert_eq!(i["user"], USER, "{i}");
    }
    let failed: Vec<&Value> = ivs.iter().filter(|i| i["status"] == "failed").collect();
    let applied: Vec<&Value> = ivs.iter().filter(|i| i["status"] == "applied").collect();
    // Refused on the plan: the 11 above, the stale version, the skip of a completed s4.
    assert_eq!(
        failed.len(),
        refusals.len() + 2,
        "refused interventions recorded: {failed:#?}"
    );
    for f in &failed {
        assert!(
            f["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a refused intervention says why: {f}"
        );
    }
    let kinds: Vec<&str> = applied
        .iter()
        .map(|i| i["type"].as_str().or(i["kind"].as_str()).unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "skip_step",
            "modify_step",
            "add_step",
            "add_step",
            "add_step",
            "remove_step",
            "reorder_steps",
            "rerun_from",
            "retry_step"
        ],
        "applied interventions: {applied:#?}"
    );
    let skip = applied[0];
    assert_eq!(skip["reason"], "not needed");
    // The dry run was not recorded as applied: nothing about removing s6 twice.
    assert_eq!(
        ivs.iter()
            .filter(|i| i["step_id"] == "s6" && i["status"] == "applied")
            .count(),
        1
    );
    // Every event this process wrote on behalf of the operator carries the operator.
    for e in &events {
        if e["type"] == "intervention_applied" || e["type"] == "intervention_failed" {
            assert_eq!(e["actor"], USER, "{e}");
        }
    }
}

// ---- 6. checkpoints ------------------------------------------------------------------------

#[test]
fn checkpoints_restore_fork_export_and_import() {
    let w = World::new();
    w.write("cairn.toml", LOGGER_TOML);
    w.write(
        "plan.yaml",
        "plan_id: cp\nsteps:\n  - {step_id: a, action: x, agent_type: logger}\n  - {step_id: b, action: x, agent_type: logger}\n  - {step_id: c, action: x, agent_type: logger}\n",
    );
    w.cairn(&["run", "plan.yaml"]).expect(0, "first run");
    let starts = |w: &World| -> Vec<(String, String)> {
        agent_log(w)
            .into_iter()
            .filter(|l| l.what == "start")
            .map(|l| (l.step, l.key))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        starts(&w),
        pairs(&[("a", "cp/a/1"), ("b", "cp/b/1"), ("c", "cp/c/1")])
    );
    let list = w.json(&["checkpoints", "list", "cp"]);
    let cps: Vec<Value> = list["items"].as_array().unwrap().clone();
    assert_eq!(cps.len(), 4, "{cps:?}");
    let second = cps[1]["checkpoint_id"].as_str().unwrap().to_owned();
    let third = cps[2]["checkpoint_id"].as_str().unwrap().to_owned();
    let shown = w.json(&["checkpoints", "show", "cp", &second]);
    assert_eq!(strs(&shown["completed_steps"]), ["a"]);
    assert_eq!(shown["context"], json!({"a": {"ok": true}}));

    // Restore to the checkpoint after step a: b and c run again, a does not.
    let view = w.json(&["checkpoints", "restore", "cp", &second]);
    assert_eq!(view["state"], "paused");
    assert_eq!(view["pause_reason"], "restored");
    assert_eq!(strs(&view["completed_steps"]), ["a"]);
    assert_eq!(step(&view, "b")["status"], "pending");
    assert_eq!(step(&view, "c")["status"], "pending");
    let done = w
        .cairn(&["run", "--resume", "cp", "--json"])
        .expect(0, "resume after restore")
        .json();
    assert_eq!(done["state"], "completed");
    assert_eq!(
        starts(&w)[3..].to_vec(),
        // A step that ran since the checkpoint and runs again gets a new run, so an agent
        // deduplicating on the key does not skip the work the operator rewound.
        pairs(&[("b", "cp/b/2"), ("c", "cp/c/2")]),
        "only the steps after the checkpoint run again, under new idempotency keys"
    );
    // History is never erased: the old checkpoints are still listed, and newer ones follow.
    let after = w.json(&["checkpoints", "list", "cp"]);
    let after = after["items"].as_array().unwrap();
    assert!(after.len() > cps.len(), "{after:?}");
    assert_eq!(after[..4].to_vec(), cps);
    let events = w.events("cp");
    let restored: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "checkpoint_restored")
        .collect();
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["data"]["checkpoint_id"], second.as_str());
    assert_eq!(restored[0]["actor"], USER);

    // Manual checkpoint.
    let manual = w.json(&["checkpoints", "create", "cp", "--label", "mine"]);
    assert_eq!(manual["trigger"], "manual");
    assert_eq!(manual["label"], "mine");

    // Fork: a new paused plan equal to the checkpoint.
    let forked = w.json(&["checkpoints", "fork", "cp", &second, "--new-plan-id", "f1"]);
    assert_eq!(forked["plan_id"], "f1");
    assert_eq!(forked["state"], "paused");
    assert_eq!(strs(&forked["completed_steps"]), ["a"]);
    w.cairn(&["checkpoints", "fork", "cp", &second, "--new-plan-id", "f1"])
        .expect(2, "fork onto an existing id");
    w.cairn(&["run", "--resume", "f1"])
        .expect(0, "run the fork");
    assert_eq!(
        starts(&w)[5..].to_vec(),
        pairs(&[("b", "f1/b/1"), ("c", "f1/c/1")])
    );
    assert_eq!(w.show("cp")["state"], "completed", "the fork left cp alone");

    // Export to a file, import as a new paused plan.
    let file = w.path("cp.json");
    w.cairn(&[
        "checkpoints",
        "export",
        "cp",
        &third,
        "-o",
        file.to_str().unwrap(),
    ])
    .expect(0, "export");
    let exported: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).expect("export is JSON");
    assert_eq!(exported["checkpoint"]["checkpoint_id"], third.as_str());
    let imported = w.json(&[
        "checkpoints",
        "import",
        file.to_str().unwrap(),
        "--new-plan-id",
        "imp",
    ]);
    assert_eq!(imported["plan_id"], "imp");
    assert_eq!(imported["state"], "paused");
    assert_eq!(strs(&imported["completed_steps"]), ["a", "b"]);
    w.cairn(&["run", "--resume", "imp"])
        .expect(0, "run the import");
    assert_eq!(starts(&w)[7..].to_vec(), pairs(&[("c", "imp/c/1")]));

    // Bad input.
    w.cairn(&["checkpoints", "restore", "cp", "cp-999"])
        .expect(2, "restore to an unknown checkpoint");
    w.cairn(&["checkpoints", "show", "cp", "nonsense"])
        .expect(2, "show a malformed checkpoint id");
    let junk = w.write("junk.json", "{\"hello\": 1}");
    let run = w
        .cairn(&["checkpoints", "import", junk.to_str().unwrap()])
        .expect(2, "import junk");
    assert!(
        run.stderr.contains("not a cairn checkpoint export"),
        "{}",
        run.stderr
    );
}

#[test]
fn plan_versions_and_diffs_after_interventions_and_a_restore() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: hv\nsteps:\n  - {step_id: a, action: say, agent_type: builtin.echo, params: {q: old}}\n  - {step_id: b, action: say, agent_type: builtin.echo}\n  - {step_id: c, action: say, agent_type: builtin.echo}\n",
    );
    w.cairn(&["plans", "register", "plan.yaml"])
        .expect(0, "register");
    let cp = w.json(&["checkpoints", "create", "hv", "--label", "start"]);
    let cp = cp["checkpoint_id"].as_str().unwrap().to_owned();
    w.cairn(&[
        "steps",
        "modify",
        "hv",
        "a",
        "--patch",
        r#"{"params": {"q": "new"}}"#,
        "--reason",
        "sharper",
    ])
    .expect(0, "modify");
    w.cairn(&[
        "steps",
        "add",
        "hv",
        "--step",
        r#"{"step_id": "d", "action": "say", "agent_type": "builtin.echo"}"#,
        "--after",
        "a",
    ])
    .expect(0, "add");
    w.cairn(&["steps", "reorder", "hv", "a", "d", "c", "b"])
        .expect(0, "reorder");
    w.cairn(&["steps", "remove", "hv", "b"]).expect(0, "remove");
    w.cairn(&["checkpoints", "restore", "hv", &cp])
        .expect(0, "restore");

    let list = w.json(&["plans", "versions", "hv"]);
    let causes: Vec<(u64, String)> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["cause"]["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = [
        "registered",
        "modify_step",
        "add_step",
        "reorder_steps",
        "remove_step",
        "restore",
    ]
    .iter()
    .enumerate()
    .map(|(i, c)| (i as u64 + 1, c.to_string()))
    .collect();
    assert_eq!(causes, expected);
    assert_eq!(list["versions"][1]["user"], USER);
    assert_eq!(list["versions"][1]["cause"]["reason"], "sharper");

    let text = w
        .cairn(&["plans", "versions", "hv"])
        .expect(0, "versions")
        .stdout;
    assert!(text.starts_with("VERSION"), "{text}");
    assert!(
        text.contains("modify_step") && text.contains("step a (sharper)"),
        "{text}"
    );
    assert!(text.contains(&format!("restore        {cp}")), "{text}");

    let v2 = w.json(&["plans", "versions", "hv", "--show", "2"]);
    assert_eq!(v2["definition"]["steps"][0]["params"], json!({"q": "new"}));

    // The latest change by default: the restore put b back, took d out and a's params back.
    let text = w.cairn(&["plans", "diff", "hv"]).expect(0, "diff").stdout;
    assert!(text.starts_with("plan hv version 5 → 6\n"), "{text}");
    assert!(text.contains("+ step b at 2"), "{text}");
    assert!(text.contains("- step d (was at 2)"), "{text}");
    assert!(
        text.contains("~ step a params.q: \"new\" → \"old\""),
        "{text}"
    );
    let text = w
        .cairn(&["plans", "diff", "hv", "--from", "3", "--to", "4"])
        .expect(0, "diff of the reorder")
        .stdout;
    assert!(text.contains("↕ step b: 3 → 4"), "{text}");
    let d = w.json(&["plans", "diff", "hv", "--to", "2"]);
    assert_eq!((d["from"].as_u64(), d["to"].as_u64()), (Some(1), Some(2)));
    assert_eq!(
        d["diff"]["changed"][0],
        json!({"step_id": "a", "fields": [{"path": "params.q", "before": "old", "after": "new"}]})
    );
    let same = w
        .cairn(&["plans", "diff", "hv", "--from", "1", "--to", "6"])
        .expect(0, "no change");
    assert!(same.stdout.contains("no changes"), "{}", same.stdout);

    let run = w
        .cairn(&["plans", "diff", "hv", "--to", "9"])
        .expect(2, "unknown version");
    assert!(
        run.stderr
            .contains("plan hv has no version 9 (its versions: 1-6)"),
        "{}",
        run.stderr
    );
    w.cairn(&["plans", "versions", "nope"])
        .expect(2, "unknown plan");
    w.cairn(&["plans", "diff", "hv", "--from", "0"])
        .expect(2, "version 0");
    w.cairn(&["plans", "diff", "hv", "--from", "x"])
        .expect(2, "not a number");
}

// ---- 7. kill -9 and Ctrl-C -----------------------------------------------------------------

/// The plan of the crash test: `n` logger steps, some independent of the previous one, each
/// sleeping a random 0–80 ms.
fn crash_plan(rng: &mut Rng, n: usize) -> String {
    let mut doc = String::from("plan_id: crash\nquery: crash test\nmax_parallel: 3\nsteps:\n");
    for i in 0..n {
        let sleep = format!("0.{:03}", rng.range(0, 80));
        let deps = if i % 4 == 1 || i % 7 == 3 {
            ", depends_on: []"
        } else {
            ""
        };
        doc.push_str(&format!(
            "  - {{step_id: s{i:02}, action: work, agent_type: logger, params: {{sleep_s: \"{sleep}\"}}{deps}}}\n"
        ));
    }
    doc
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_never_reruns_a_completed_step() {
    const STEPS: usize = 48;
    const KILLS: usize = 8;
    let w = World::new();
    let mut rng = Rng(0x00C0_FFEE_D00D_F00D);
    w.write("cairn.toml", LOGGER_TOML);
    w.write("plan.yaml", &crash_plan(&mut rng, STEPS));
    w.raw(&["validate", "plan.yaml"]).expect(0, "crash plan");

    let mut kills = 0; // processes actually killed while alive
    let mut finished_early = 0;
    for round in 0..KILLS {
        let registered = w.plan_ids().contains(&"crash".to_owned());
        let mut child = if registered {
            w.spawn(&["run", "--resume", "crash", "--quiet"])
        } else {
            w.spawn(&["run", "plan.yaml", "--quiet"])
        };
        let delay = rng.range(10, 300);
        std::thread::sleep(Duration::from_millis(delay));
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                // It finished by itself before the kill: it must have completed the plan.
                let out = wait_with_output_within(child, LIMIT, "cairn run");
                assert_eq!(
                    status.code(),
                    Some(0),
                    "round {round}: cairn exited by itself: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                finished_early += 1;
                eprintln!("round {round}: cairn finished before the kill at {delay} ms");
            }
            None => {
                child.kill().expect("SIGKILL");
                let status = wait_within(&mut child, LIMIT);
                assert_eq!(status.code(), None, "killed by a signal");
                kills += 1;
                eprintln!(
                    "round {round}: killed after {delay} ms (registered before: {registered})"
                );
            }
        }
    }
    let last = if w.plan_ids().contains(&"crash".to_owned()) {
        w.cairn(&["run", "--resume", "crash", "--quiet", "--json"])
    } else {
        w.cairn(&["run", "plan.yaml", "--quiet", "--json"])
    };
    let done = last.expect(0, "the final run").json();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["completed_steps"].as_array().unwrap().len(), STEPS);
    let view = w.show("crash");
    assert_eq!(view["state"], "completed");

    // The log: seq contiguous from 1; the plan completed exactly once, at the end.
    let events = w.events("crash");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "seq gap at {e}");
        assert_eq!(e["plan_id"], "crash");
    }
    assert_eq!(events.last().unwrap()["type"], "plan_completed");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "plan_completed")
            .count(),
        1
    );
    for bad in [
        "step_failed",
        "plan_failed",
        "step_interrupted",
        "plan_paused",
    ] {
        assert!(
            !events.iter().any(|e| e["type"] == bad),
            "unexpected {bad} event"
        );
    }

    // Replay the log: a step is dispatched by `step_started` (once) and re-dispatched by
    // `step_recovered` only while it was running (same attempt), completed exactly once, and
    // never dispatched after its completion. Recoveries come in batches (one per restart) that
    // name exactly the steps running at that moment.
    let mut running: BTreeMap<String, u64> = BTreeMap::new(); // step -> attempt
    let mut completed: BTreeSet<String> = BTreeSet::new();
    let mut dispatches: BTreeMap<String, usize> = BTreeMap::new();
    let mut recovered: BTreeMap<String, usize> = BTreeMap::new();
    let mut batches = 0;
    let mut i = 0;
    while i < events.len() {
        let e = &events[i];
        let ty = e["type"].as_str().unwrap();
        let step_id = e["data"]["step_id"].as_str().map(str::to_owned);
        match ty {
            "step_started" => {
                let s = step_id.unwrap();
                assert!(!completed.contains(&s), "{s} started after completing");
                assert!(!running.contains_key(&s), "{s} started twice");
                assert_eq!(e["data"]["attempt"], 1, "no failures, so attempt 1: {e}");
                running.insert(s.clone(), 1);
                assert!(running.len() <= 3, "max_parallel 3 exceeded: {running:?}");
                *dispatches.entry(s).or_default() += 1;
            }
            "step_recovered" => {
                batches += 1;
                let mut batch = BTreeMap::new();
                while i < events.len() && events[i]["type"] == "step_recovered" {
                    let s = events[i]["data"]["step_id"].as_str().unwrap().to_owned();
                    if batch.contains_key(&s) {
                        // A restart killed before it wrote anything else: the next recovery
                        // follows at once and names the same steps again.
                        assert_eq!(batch, running, "a recovery re-dispatches the running steps");
                        batch.clear();
                        batches += 1;
                    }
                    let attempt = events[i]["data"]["attempt"].as_u64().unwrap();
                    assert!(!completed.contains(&s), "{s} recovered after completing");
                    batch.insert(s.clone(), attempt);
                    *dispatches.entry(s.clone()).or_default() += 1;
                    *recovered.entry(s).or_default() += 1;
                    i += 1;
                }
                assert_eq!(
                    batch, running,
                    "a recovery must re-dispatch exactly the steps that were running"
                );
                continue;
            }
            "step_completed" => {
                let s = step_id.unwrap();
                assert!(
                    running.remove(&s).is_some(),
                    "{s} completed while not running"
                );
                assert!(completed.insert(s.clone()), "{s} completed twice");
            }
            _ => {}
        }
        i += 1;
    }
    assert!(running.is_empty(), "still running at the end: {running:?}");
    assert_eq!(completed.len(), STEPS);
    assert!(
        batches <= kills,
        "{batches} recoveries but only {kills} processes were killed"
    );
    // The first delays (34, 169, 102 ms after the seed) fall well inside a run of several
    // hundred milliseconds of sleeping steps: the test did exercise recovery.
    assert!(
        kills >= 2 && batches >= 1,
        "kills {kills}, recoveries {batches}"
    );

    // The agent's side: every run of a step saw the same idempotency key and attempt; a step ran
    // at most as often as it was dispatched (so never after its completion was recorded); a step
    // that ran more than once was recovered; the completing run ended.
    let log = agent_log(&w);
    let mut starts: BTreeMap<String, usize> = BTreeMap::new();
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for l in &log {
        assert_eq!(l.key, format!("crash/{}/1", l.step), "{l:?}");
        assert_eq!(l.attempt, 1, "{l:?}");
        let m = if l.what == "start" {
            &mut starts
        } else {
            &mut ends
        };
        *m.entry(l.step.clone()).or_default() += 1;
    }
    for s in &completed {
        let started = starts.get(s).copied().unwrap_or(0);
        let ended = ends.get(s).copied().unwrap_or(0);
        let dispatched = dispatches[s];
        assert!(
            started >= 1 && ended >= 1,
            "{s}: the completing run is logged"
        );
        assert!(ended <= started, "{s}: ended {ended} > started {started}");
        assert!(
            started <= dispatched,
            "{s} ran {started} times but was dispatched {dispatched} times"
        );
        if ended > 1 {
            assert!(recovered.get(s).copied().unwrap_or(0) >= ended - 1, "{s}");
        }
    }
    assert_eq!(starts.len(), STEPS, "no unknown step ran");
    let reruns: usize = starts.values().map(|n| n - 1).sum();
    eprintln!(
        "{kills} kills, {finished_early} early finishes, {batches} recoveries, {} recovered dispatches, {reruns} re-executions, {} events",
        recovered.values().sum::<usize>(),
        events.len()
    );
}

#[test]
fn after_kill_9_an_operator_can_pause_and_modify_offline_then_resume() {
    let w = World::new();
    w.write("cairn.toml", LOGGER_TOML);
    let mut doc = String::from("plan_id: k\nsteps:\n");
    for id in ["a", "b", "c"] {
        doc.push_str(&format!(
            "  - {{step_id: {id}, action: x, agent_type: logger, params: {{sleep_s: \"0.3\"}}}}\n"
        ));
    }
    w.write("plan.yaml", &doc);
    let mut child = w.spawn(&["run", "plan.yaml"]);
    w.wait_for_file("agent.log", "step b to start", |log| {
        log.contains("start b ")
    });
    kill_and_reap(&mut child);

    // The store still says running (nobody drives it); the operator pauses it and changes c.
    let view = w.show("k");
    assert_eq!(view["state"], "running");
    assert_eq!(step(&view, "a")["status"], "completed");
    let paused = w.json(&["plans", "pause", "k", "--reason", "after the crash"]);
    assert_eq!(paused["state"], "paused");
    w.cairn(&[
        "steps",
        "modify",
        "k",
        "c",
        "--patch",
        r#"{"params": {"changed": 1}}"#,
    ])
    .expect(0, "modify c offline");
    let done = w
        .cairn(&["run", "--resume", "k", "--json"])
        .expect(0, "resume")
        .json();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["outputs"]["c"], json!({"ok": true}));
    // The attempt that died with the process was interrupted and b ran again under the same
    // idempotency key (a new attempt); a ran once.
    let events = w.events("k");
    let interrupted = steps_of(&events, "step_interrupted");
    assert_eq!(interrupted, ["b"]);
    let log: Vec<(String, String)> = agent_log(&w)
        .into_iter()
        .filter(|l| l.what == "start")
        .map(|l| (l.step, l.key))
        .collect();
    let count = |s: &str| log.iter().filter(|(step, _)| step == s).count();
    assert_eq!((count("a"), count("b"), count("c")), (1, 2, 1), "{log:?}");
    assert!(log.iter().all(|(s, k)| k == &format!("k/{s}/1")), "{log:?}");
    let snap = w.json(&["plans", "snapshot", "k"]);
    let c = snap["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "c")
        .unwrap()
        .clone();
    assert_eq!(
        c["params"]["changed"], 1,
        "the acknowledged modify survived: {c}"
    );
}

#[test]
fn ctrl_c_pauses_durably_and_resume_finishes_the_plan() {
    let w = World::new();
    w.write("cairn.toml", LOGGER_TOML);
    let mut doc = String::from("plan_id: sig\nsteps:\n");
    for i in 0..5 {
        doc.push_str(&format!(
            "  - {{step_id: t{i}, action: work, agent_type: logger, params: {{sleep_s: \"0.3\"}}}}\n"
        ));
    }
    w.write("plan.yaml", &doc);
    let child = w.spawn(&["run", "plan.yaml"]);
    // Wait until the second step has started: the run loop (and its Ctrl-C handler) is live.
    w.wait_for_file("agent.log", "step t1 to start", |log| {
        log.contains("start t1 ")
    });
    signal(&child.id().to_string(), "INT");
    let out = wait_with_output_within(child, LIMIT, "the interrupted cairn run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("stderr of the interrupted run:\n{stderr}");
    assert_eq!(out.status.code(), Some(3), "paused: {stderr}");
    assert!(stderr.contains("cairn run --resume sig"), "{stderr}");

    let view = w.show("sig");
    assert_eq!(view["state"], "paused");
    assert_eq!(view["pause_reason"], "operator");
    assert!(view["running_steps"].as_array().unwrap().is_empty());
    // The step running at Ctrl-C finished and was recorded; nothing started after it.
    let done_before = strs(&view["completed_steps"]);
    assert!(done_before.contains(&"t1".to_owned()), "{view}");
    let log_before = agent_log(&w);
    let events = w.events("sig");
    let paused = events
        .iter()
        .find(|e| e["type"] == "plan_paused")
        .expect("plan_paused");
    assert_eq!(paused["actor"], USER);
    assert!(events.iter().any(|e| e["type"] == "plan_drained"));

    w.cairn(&["run", "--resume", "sig"]).expect(0, "resume");
    assert_eq!(w.show("sig")["state"], "completed");
    let log = agent_log(&w);
    let starts: Vec<&str> = log
        .iter()
        .filter(|l| l.what == "start")
        .map(|l| l.step.as_str())
        .collect();
    assert_eq!(starts, ["t0", "t1", "t2", "t3", "t4"], "each step ran once");
    // Steps done before the pause did not run again.
    for l in &log[log_before.len()..] {
        assert!(!done_before.contains(&l.step), "{l:?} ran again");
    }
}

// ---- plans operations ----------------------------------------------------------------------

#[test]
fn plans_commands_control_and_list_plans() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: p1\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, pause_before: true}\n  - {step_id: b, action: x, agent_type: builtin.echo}\n",
    );
    w.cairn(&["run", "plan.yaml"])
        .expect(3, "pause_before breakpoint");
    let view = w.show("p1");
    assert_eq!(view["pause_reason"], "breakpoint");
    assert_eq!(step(&view, "a")["status"], "pending");
    w.cairn(&["plans", "start", "p1"])
        .expect(2, "start a paused plan");
    w.cairn(&["plans", "pause", "p1"])
        .expect(2, "pause a paused plan");
    w.cairn(&["plans", "show", "nope"])
        .expect(2, "show an unknown plan");
    w.cairn(&["plans", "list", "--state", "sleepy"])
        .expect(2, "unknown state filter");
    let paused = w.json(&["plans", "list", "--state", "paused"]);
    assert_eq!(paused["items"].as_array().unwrap().len(), 1);
    w.cairn(&["plans", "delete", "p1"]).expect(0, "delete");
    assert!(w.plan_ids().is_empty());

    w.cairn(&["run", "plan.yaml", "--plan-id", "p2"])
        .expect(3, "p2 breakpoint");
    let resumed = w.json(&["plans", "resume", "p2", "--reason", "go"]);
    assert_eq!(resumed["state"], "running");
    // The resume is recorded; the steps run when a process drives the plan.
    w.cairn(&["run", "--resume", "p2"]).expect(0, "drive p2");

    w.cairn(&["run", "plan.yaml", "--plan-id", "p3"])
        .expect(3, "p3 breakpoint");
    let cancelled = w.json(&["plans", "cancel", "p3", "--reason", "done with it"]);
    assert_eq!(cancelled["state"], "cancelled");
    w.cairn(&["plans", "cancel", "p3"])
        .expect(2, "cancel a cancelled plan");
    w.cairn(&["run", "--resume", "p3"])
        .expect(4, "resume a cancelled plan");
    w.cairn(&["run", "--resume", "nope"])
        .expect(2, "resume an unknown plan");
    let events = w.events("p3");
    let c = events
        .iter()
        .find(|e| e["type"] == "plan_cancelled")
        .expect("plan_cancelled");
    assert_eq!(c["actor"], USER);
    assert_eq!(c["data"]["reason"], "done with it");
}

// ---- 8. bench ------------------------------------------------------------------------------

#[test]
fn bench_prints_one_json_object_per_workload() {
    let w = World::new();
    let run = w
        .raw(&[
            "bench",
            "--plans",
            "20",
            "--steps",
            "3",
            "--long-steps",
            "20",
            "--big-steps",
            "40",
            "--paused",
            "50",
            "--requests",
            "5",
            "--subscribers",
            "10",
            "--idle-plans",
            "30",
            "--history-runs",
            "1",
        ])
        .expect(0, "bench");
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    let mut workloads = BTreeSet::new();
    for l in &lines {
        for key in [
            "workload",
            "steps",
            "wall_s",
            "steps_per_sec",
            "peak_rss_mb",
        ] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
        assert!(l["wall_s"].as_f64().is_some_and(|x| x >= 0.0), "{l}");
        assert!(l["peak_rss_mb"].as_f64().is_some_and(|x| x > 0.0), "{l}");
        workloads.insert(l["workload"].as_str().unwrap().to_owned());
    }
    for wl in [
        "plans",
        "one_plan",
        "restore",
        "restore_history",
        "paused",
        "idle",
        "big_plan_intervention",
    ] {
        assert!(workloads.contains(wl), "{wl} missing: {workloads:?}");
    }
    let find = |wl: &str| lines.iter().find(|l| l["workload"] == wl).unwrap();
    let plans = find("plans");
    assert_eq!(plans["steps"], 60);
    // Each figure beside the limit it is bound by, measured in the same run.
    for key in ["fsyncs_per_sec", "of_commit_limit"] {
        assert!(
            plans[key].as_f64().is_some_and(|x| x > 0.0),
            "{key}: {plans}"
        );
    }
    // A run this small may use less CPU than the clock resolves: present, and a fraction.
    assert!(
        plans["of_cpu_limit"]
            .as_f64()
            .is_some_and(|x| (0.0..=1.0).contains(&x)),
        "of_cpu_limit: {plans}"
    );
    assert!(
        ["commits", "cpu"].contains(&plans["bound_by"].as_str().unwrap_or("")),
        "{plans}"
    );
    let one = find("one_plan");
    assert!(
        one["of_fsync_limit"].as_f64().is_some_and(|x| x > 0.0),
        "{one}"
    );
    // The long history: the first run and one more, its oldest checkpoints read.
    let history = find("restore_history");
    assert_eq!(history["runs"], 2, "{history}");
    assert!(
        history["read_oldest_ms_p50"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{history}"
    );
    // Control requests beside the store's commits while they were timed (the requests'
    // own among them), read from the writer's histogram of batch times.
    for wl in [
        "control_pause",
        "control_intervention",
        "control_resume",
        "control_cancel",
    ] {
        let c = find(wl);
        let p50 = c["commit_p50_ms"].as_f64();
        let p99 = c["commit_p99_ms"].as_f64();
        assert!(p50.is_some_and(|x| x > 0.0), "{c}");
        assert!(p99.is_some_and(|x| Some(x) >= p50), "{c}");
    }
    let idle = find("idle");
    assert_eq!(idle["plans"], 30, "{idle}");
    for key in ["server_rss_fresh_mb", "server_rss_after_mb"] {
        assert!(idle[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {idle}");
    }
    w.raw(&["bench", "--workload", "nope"])
        .expect(2, "unknown workload");
}

// ---- the local `cairn run` experience: signals, agents, output ----------------------------

/// A `command` agent held open by a latch: it records its pid (`STEP.pid`) and `start STEP KEY
/// ATTEMPT` in `agent.log`, waits until the file `go` exists, then records `end …` and prints
/// `{"ok": true}`.
const LATCHED_TOML: &str = r#"
[agents.latched]
executor = "command"
command = ["sh", "-c", '''
cat >/dev/null
echo $$ > "$CAIRN_STEP_ID.pid"
echo "start $CAIRN_STEP_ID $CAIRN_IDEMPOTENCY_KEY $CAIRN_ATTEMPT" >> agent.log
while [ ! -e go ]; do sleep 0.01; done
echo "end $CAIRN_STEP_ID $CAIRN_IDEMPOTENCY_KEY $CAIRN_ATTEMPT" >> agent.log
echo '{"ok": true}'
''']
"#;

/// A `cairn` process leading a process group of its own, as a shell runs a foreground job, so
/// that a signal to the group is what a terminal's Ctrl-C is; its stderr is read as it comes.
struct Job {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Job {
    fn start(w: &World, args: &[&str]) -> Job {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let db = w.db();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", db.to_str().unwrap()]);
        let mut child = w
            .command(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn cairn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Job {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line of stderr containing `needle`.
    fn wait_line(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "gave up waiting for {needle:?} on stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGINT to the whole process group: what Ctrl-C in a terminal does.
    fn ctrl_c(&self) {
        let group = format!("-{}", self.child.id());
        signal(&group, "INT");
    }

    /// Waits (bounded) for the process to exit: its exit code and all of its stderr.
    fn finish(mut self) -> (i32, String) {
        let Some(status) = exit_within(&mut self.child, LIMIT) else {
            kill_and_reap(&mut self.child);
            panic!(
                "cairn did not exit within {LIMIT:?}; killed it. Its stderr so far:\n{}",
                self.seen.join("\n")
            );
        };
        // The reader thread ends at end of file, which came with the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        let stderr = self.seen.join("\n");
        eprintln!("stderr of the job:\n{stderr}");
        (status.code().unwrap_or(-1), stderr)
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet: dead all the same).
fn process_gone(pid: &str) -> bool {
    assert!(pid.trim().parse::<u32>().is_ok(), "not a pid: {pid:?}");
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (bounded) until process `pid` is gone.
fn wait_gone(pid: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {}) is still running",
            pid.trim()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctrl_c_to_the_terminal_group_pauses_and_the_running_command_step_finishes() {
    let w = World::new();
    w.write("cairn.toml", LATCHED_TOML);
    w.write(
        "plan.yaml",
        "plan_id: cc\nsteps:\n  - {step_id: a, action: x, agent_type: latched}\n  - {step_id: b, action: x, agent_type: latched}\n",
    );
    let mut job = Job::start(&w, &["run", "plan.yaml"]);
    w.wait_for_file("agent.log", "step a to start", |log| {
        log.contains("start a ")
    });
    job.ctrl_c();
    job.wait_line("pausing plan cc (durable); 1 running step will finish first");
    // The pause is durable; now let the agent finish. It never saw the SIGINT.
    w.write("go", "");
    let (code, stderr) = job.finish();
    assert_eq!(code, 3, "paused: {stderr}");
    assert!(
        stderr.contains("plan cc paused (operator) after 1/2 steps"),
        "{stderr}"
    );

    let view = w.show("cc");
    assert_eq!(view["state"], "paused");
    assert_eq!(step(&view, "a")["status"], "completed");
    assert_eq!(step(&view, "b")["status"], "pending");
    let events = w.events("cc");
    assert!(steps_of(&events, "step_failed").is_empty(), "{events:#?}");
    assert_eq!(steps_of(&events, "step_completed"), ["a"]);
    let log: Vec<(String, String)> = agent_log(&w)
        .into_iter()
        .map(|l| (l.what, l.step))
        .collect();
    assert_eq!(
        log,
        [("start".into(), "a".into()), ("end".into(), "a".into())]
    );
    w.cairn(&["run", "--resume", "cc"]).expect(0, "resume");
    assert_eq!(w.show("cc")["state"], "completed");
}

#[test]
fn a_second_ctrl_c_stops_the_agent_at_once_and_the_step_is_not_left_running() {
    let w = World::new();
    w.write("cairn.toml", LATCHED_TOML);
    w.write(
        "plan.yaml",
        "plan_id: cc2\nsteps:\n  - {step_id: a, action: x, agent_type: latched}\n",
    );
    let mut job = Job::start(&w, &["run", "plan.yaml"]);
    w.wait_for_file("a.pid", "step a to start", |pid| pid.ends_with('\n'));
    let pid = w.read("a.pid");
    job.ctrl_c();
    job.wait_line("Ctrl-C again to stop now");
    job.ctrl_c();
    let (code, stderr) = job.finish();
    assert_eq!(code, 3, "paused: {stderr}");
    assert!(stderr.contains("stopped a"), "{stderr}");
    // The agent's whole process group was killed: it never ends its work.
    wait_gone(&pid, "the cut-off agent");
    assert!(!w.read("agent.log").contains("end a"));

    // The store does not show a step running that nothing runs.
    let view = w.show("cc2");
    assert_eq!(view["state"], "paused");
    assert_eq!(step(&view, "a")["status"], "pending");
    assert!(
        view["running_steps"].as_array().unwrap().is_empty(),
        "{view}"
    );
    let events = w.events("cc2");
    assert_eq!(steps_of(&events, "step_interrupted"), ["a"]);
    let cut = events
        .iter()
        .find(|e| e["type"] == "step_interrupted")
        .unwrap();
    assert_eq!(cut["actor"], USER, "{cut}");
    assert_eq!(cut["data"]["cause"], "Ctrl-C: stopped at once", "{cut}");

    // It runs again on resume, and this time finishes.
    w.write("go", "");
    w.cairn(&["run", "--resume", "cc2"]).expect(0, "resume");
    let starts: Vec<u32> = agent_log(&w)
        .iter()
        .filter(|l| l.what == "start")
        .map(|l| l.attempt)
        .collect();
    assert_eq!(starts, [1, 2]);
}

#[test]
fn a_step_timeout_kills_the_agents_grandchildren_too() {
    let w = World::new();
    w.write(
        "cairn.toml",
        r#"
[agents.forker]
executor = "command"
command = ["sh", "-c", 'cat >/dev/null; sleep 1000 & echo $! > grandchild.pid; wait']
"#,
    );
    w.write(
        "plan.yaml",
        "plan_id: to\nsteps:\n  - {step_id: a, action: x, agent_type: forker, timeout_ms: 1000, retry: {max_attempts: 1}}\n",
    );
    let run = w.cairn(&["run", "plan.yaml"]).expect(1, "timed out");
    assert!(
        run.stderr.contains("timed out after 1000 ms"),
        "{}",
        run.stderr
    );
    let pid = w.read("grandchild.pid");
    assert!(!pid.trim().is_empty(), "the agent recorded its child");
    wait_gone(&pid, "the agent's `sleep 1000`");
}

#[test]
fn a_step_that_fails_while_another_runs_waits_for_it_and_records_it() {
    let w = World::new();
    w.write("cairn.toml", LATCHED_TOML);
    w.write(
        "plan.yaml",
        r#"
plan_id: inflight
steps:
  - {step_id: slow, action: x, agent_type: latched}
  - {step_id: bad, action: x, agent_type: builtin.fail, depends_on: [], retry: {max_attempts: 1}}
  - {step_id: after, action: x, agent_type: builtin.echo, depends_on: [slow, bad]}
"#,
    );
    let mut job = Job::start(&w, &["run", "plan.yaml"]);
    job.wait_line("waiting for the step still in flight to finish and be recorded (slow)");
    assert!(!w.read("agent.log").contains("end slow"));
    w.write("go", "");
    let (code, stderr) = job.finish();
    assert_eq!(code, 1, "failed: {stderr}");
    assert!(stderr.contains("plan inflight failed"), "{stderr}");

    // The step in flight finished and was recorded before cairn exited.
    let view = w.show("inflight");
    assert_eq!(view["state"], "failed");
    assert_eq!(step(&view, "slow")["status"], "completed");
    assert!(
        view["running_steps"].as_array().unwrap().is_empty(),
        "{view}"
    );
    // Skipping the failed step and resuming does not run `slow` again: one side effect.
    w.cairn(&["steps", "skip", "inflight", "bad"])
        .expect(0, "skip bad");
    w.cairn(&["run", "--resume", "inflight"])
        .expect(0, "resume");
    let ends = agent_log(&w).iter().filter(|l| l.what == "end").count();
    assert_eq!(ends, 1, "{:?}", agent_log(&w));
}

#[test]
fn a_ctrl_c_while_a_failed_plan_waits_stops_the_steps_in_flight() {
    let w = World::new();
    w.write("cairn.toml", LATCHED_TOML);
    w.write(
        "plan.yaml",
        r#"
plan_id: inflight2
steps:
  - {step_id: slow, action: x, agent_type: latched}
  - {step_id: bad, action: x, agent_type: builtin.fail, depends_on: [], retry: {max_attempts: 1}}
"#,
    );
    let mut job = Job::start(&w, &["run", "plan.yaml"]);
    job.wait_line("Ctrl-C stops it now");
    w.wait_for_file("slow.pid", "the agent to start", |pid| pid.ends_with('\n'));
    let pid = w.read("slow.pid");
    job.ctrl_c();
    let (code, stderr) = job.finish();
    assert_eq!(code, 1, "failed: {stderr}");
    assert!(stderr.contains("interrupted: stopped slow"), "{stderr}");
    wait_gone(&pid, "the stopped agent");
    let view = w.show("inflight2");
    assert_eq!(view["state"], "failed");
    assert_eq!(step(&view, "slow")["status"], "pending", "{view}");
    assert!(
        view["running_steps"].as_array().unwrap().is_empty(),
        "{view}"
    );
    assert!(!w.read("agent.log").contains("end slow"));
}

#[test]
fn a_local_plans_start_records_no_attempt_that_nothing_runs() {
    let w = World::new();
    w.write("cairn.toml", LOGGER_TOML);
    w.write(
        "plan.yaml",
        "plan_id: ls\nsteps:\n  - {step_id: a, action: x, agent_type: logger}\n  - {step_id: b, action: x, agent_type: logger}\n",
    );
    w.cairn(&["plans", "register", "plan.yaml"])
        .expect(0, "register");
    let started = w.json(&["plans", "start", "ls"]);
    assert_eq!(started["state"], "running");
    let view = w.show("ls");
    assert_eq!(step(&view, "a")["status"], "pending", "{view}");
    assert_eq!(step(&view, "a")["attempts"], 0, "{view}");
    assert!(
        view["running_steps"].as_array().unwrap().is_empty(),
        "{view}"
    );
    assert!(steps_of(&w.events("ls"), "step_started").is_empty());

    // Driving it starts the steps; the first real attempt is attempt 1.
    w.cairn(&["run", "--resume", "ls"]).expect(0, "drive");
    let attempts: Vec<(String, u32)> = agent_log(&w)
        .into_iter()
        .filter(|l| l.what == "start")
        .map(|l| (l.step, l.attempt))
        .collect();
    assert_eq!(attempts, [("a".into(), 1), ("b".into(), 1)]);
    assert!(steps_of(&w.events("ls"), "step_interrupted").is_empty());
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: pipe\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, params: {v: 1}}\n",
    );
    let db = w.db();
    let db = db.to_str().unwrap();
    let cases: [(&[&str], i32); 6] = [
        (&["run", "plan.yaml", "--json", "--db", db], 0),
        (&["validate", "plan.yaml"], 0),
        (&["plans", "list", "--db", db], 0),
        (&["plans", "show", "pipe", "--json", "--db", db], 0),
        (&["plans", "events", "pipe", "--db", db], 0),
        (&["checkpoints", "list", "pipe", "--db", db], 0),
    ];
    for (args, code) in cases {
        // The reading end is closed before cairn writes anything: every write meets EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let child = w
            .command(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cairn");
        let out = wait_with_output_within(child, LIMIT, "cairn into a closed pipe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "cairn {args:?} into a closed pipe: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "cairn {args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "cairn {args:?}: {stderr}");
    }
    // The run whose output nobody read still happened.
    assert_eq!(w.show("pipe")["state"], "completed");
}

#[test]
fn logs_into_a_pipe_carry_no_colour_escapes() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: nc\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n",
    );
    let db = w.db();
    let out = output_within(
        w.command(&["run", "plan.yaml", "--db", db.to_str().unwrap()])
            .env("CAIRN_LOG", "debug"),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG"), "debug logs expected: {stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour escapes in a pipe: {stderr:?}"
    );
}

#[test]
fn command_agents_get_a_clean_environment() {
    let w = World::new();
    w.write(
        "cairn.toml",
        r#"
[agents.envdump]
executor = "command"
command = ["sh", "-c", 'cat >/dev/null; env > env.txt; echo null']
env = ["PASSED_ON"]
"#,
    );
    w.write(
        "plan.yaml",
        "plan_id: env\nsteps:\n  - {step_id: a, action: x, agent_type: envdump}\n",
    );
    let db = w.db();
    let out = output_within(
        w.command(&["run", "plan.yaml", "--db", db.to_str().unwrap()])
            .env("CAIRN_TOKEN", "secret-token")
            .env("UNRELATED", "x")
            .env("PASSED_ON", "yes"),
        LIMIT,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env: BTreeMap<String, String> = w
        .read("env.txt")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(env.get("PASSED_ON").map(String::as_str), Some("yes"));
    assert_eq!(env.get("CAIRN_STEP_ID").map(String::as_str), Some("a"));
    assert_eq!(env.get("CAIRN_PLAN_ID").map(String::as_str), Some("env"));
    assert_eq!(env.get("CAIRN_ATTEMPT").map(String::as_str), Some("1"));
    assert!(env.contains_key("PATH"), "{env:?}");
    for leaked in ["CAIRN_TOKEN", "UNRELATED", "USER"] {
        assert!(!env.contains_key(leaked), "{leaked} leaked: {env:?}");
    }
    // A malformed passthrough list is refused when the file is read.
    w.write(
        "cairn.toml",
        "[agents.envdump]\nexecutor = \"command\"\ncommand = [\"true\"]\nenv = [\"NOT-A-NAME\"]\n",
    );
    let run = w
        .cairn(&["run", "plan.yaml", "--plan-id", "env2"])
        .expect(2, "bad env");
    assert!(
        run.stderr.contains("agents.envdump: `env[0]`"),
        "{}",
        run.stderr
    );
}

#[test]
fn exit_codes_follow_the_table_and_the_cluster_options_are_offered() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: ec\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n",
    );
    // A store that cannot be used: 1.
    w.raw(&["run", "plan.yaml", "--db", "nodir/x.db"])
        .expect(1, "missing --db directory");
    // Bad input: 2.
    w.raw(&["run", "missing.yaml"])
        .expect(2, "missing plan file");
    w.raw(&["run"]).expect(2, "usage");
    w.cairn(&["run", "plan.yaml"]).expect(0, "completed");
    w.cairn(&["run", "plan.yaml"]).expect(2, "plan id exists");
    w.cairn(&["run", "--resume", "nope"])
        .expect(2, "unknown plan");
    // The PostgreSQL store and the node options are offered (their env values never shown).
    let help = w.raw(&["serve", "--help"]).expect(0, "serve --help");
    for option in ["--database-url", "--node-id", "--lease-ms", "--advertise"] {
        assert!(help.stdout.contains(option), "{option}: {}", help.stdout);
    }
}

/// A local command records `--user NAME` as its actor, else the operating-system user (never a
/// fixed name); `cairn plans interventions` lists who changed what.
#[test]
fn local_commands_record_the_user() {
    let w = World::new();
    w.write(
        "plan.yaml",
        "plan_id: u\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, pause_before: true}\n  - {step_id: b, action: x, agent_type: builtin.echo}\n",
    );
    w.cairn(&["run", "plan.yaml"]).expect(3, "breakpoint");
    w.cairn(&[
        "--user", "alice", "steps", "skip", "u", "b", "--reason", "r1",
    ])
    .expect(0, "skip as alice");
    // The flag is global: it may follow the subcommand too.
    w.cairn(&["steps", "skip", "u", "b", "--user", "bob"])
        .expect(2, "skip a skipped step: refused, and recorded");
    w.cairn(&["checkpoints", "create", "u"])
        .expect(0, "a checkpoint as the OS user");
    w.cairn(&["--user", "has space", "plans", "show", "u"])
        .expect(2, "a user name with a space");

    let page = w.json(&["plans", "interventions", "u"]);
    let who: Vec<(&str, &str)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["user"].as_str().unwrap(), i["status"].as_str().unwrap()))
        .collect();
    assert_eq!(who, [("alice", "applied"), ("bob", "failed")]);
    assert!(page["next_cursor"].is_null());
    let created = page["items"][0]["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 27, "{created}");
    let table = w.cairn(&["plans", "interventions", "u"]).expect(0, "table");
    let text = table.stdout.clone();
    assert!(text.starts_with("INTERVENTION"), "{text}");
    assert!(text.contains("alice") && text.contains("r1"), "{text}");
    let events = w.events("u");
    let manual = events
        .iter()
        .find(|e| e["type"] == "checkpoint_created")
        .expect("checkpoint_created");
    assert_eq!(manual["actor"], USER);
    assert!(events.iter().all(|e| e["actor"] != "cli"), "{events:?}");
}

/// The product's docs stand alone: nothing the repository ships (README, docs/, the OpenAPI
/// document, examples, source and `--help`) cites a design file that is not in it.
#[test]
fn the_docs_and_messages_cite_no_file_outside_the_repository() {
    fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(&path, found);
                }
            } else if [".rs", ".md", ".toml", ".json", ".yaml", ".py", ".sql"]
                .iter()
                .any(|ext| name.ends_with(ext))
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (i, line) in text.lines().enumerate() {
                    if line.contains("DESIGN.md") || line.contains("DESIGN §") {
                        found.push(format!("{}:{}: {line}", path.display(), i + 1));
                    }
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut found = Vec::new();
    for part in [
        "README.md",
        "BENCHMARKS.md",
        "docs",
        "examples",
        "crates",
        "deploy",
    ] {
        let path = root.join(part);
        if path.is_dir() {
            walk(&path, &mut found);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            for (i, line) in text.lines().enumerate() {
                if line.contains("DESIGN.md") || line.contains("DESIGN §") {
                    found.push(format!("{part}:{}: {line}", i + 1));
                }
            }
        }
    }
    // This test names the pattern it looks for; nothing else may.
    found.retain(|l| !l.contains("tests/cairn_cli/cli.rs"));
    assert!(
        found.is_empty(),
        "citations of a file outside the repository:\n{}",
        found.join("\n")
    );
    for args in [&["--help"][..], &["serve", "--help"], &["bench", "--help"]] {
        let out = output_within(&mut cairn_command(args), LIMIT);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("DESIGN"), "cairn {args:?}:\n{text}");
    }
}

// ---- a database written by an earlier release ---------------------------------------------

/// The plans of `tests/fixtures/e3d0955`, a database written by cairn as released at commit
/// e3d0955 (`make.sh` beside it wrote it, and recorded that release's `plans show --json` of
/// each plan under `expected/`).
const OLD_PLANS: [&str; 10] = [
    "done1",
    "failed1",
    "retried1",
    "idle1",
    "cancelled1",
    "iv1",
    "rerun1",
    "restored1",
    "forked1",
    "paused1",
];

/// What must not change between releases: the state, progress, version and each step's
/// record. Times are compared as instants (that release wrote integers, this one RFC 3339).
fn comparable(view: &Value) -> Value {
    let time = |v: &Value| -> Value {
        serde_json::from_value::<Option<cairn_core::Timestamp>>(v.clone())
            .unwrap_or_else(|e| panic!("not a time: {v}: {e}"))
            .map_or(Value::Null, |t| json!(t.as_micros()))
    };
    let mut out = serde_json::Map::new();
    for k in [
        "plan_id",
        "query",
        "state",
        "pause_reason",
        "version",
        "total_steps",
        "current_step_index",
        "completed_steps",
        "failed_steps",
        "skipped_steps",
        "running_steps",
        "failure",
    ] {
        out.insert(k.into(), view.get(k).cloned().unwrap_or(Value::Null));
    }
    for k in ["created_at", "updated_at", "resume_at"] {
        out.insert(k.into(), time(view.get(k).unwrap_or(&Value::Null)));
    }
    let steps: Vec<Value> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            json!({
                "step_id": s["step_id"], "action": s["action"], "agent_type": s["agent_type"],
                "status": s["status"], "attempts": s["attempts"], "run": s["run"],
                "depends_on": s["depends_on"], "error": s["error"],
                "started_at": time(&s["started_at"]), "ended_at": time(&s["ended_at"]),
            })
        })
        .collect();
    out.insert("steps".into(), Value::Array(steps));
    Value::Object(out)
}

/// The log outlives its build: a database written by the release at e3d0955 opens with today's
/// code, every plan answers the state that release answered, and the plans run on to the end.
#[test]
fn a_database_written_by_release_e3d0955_opens_answers_the_same_and_runs_on() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e3d0955");
    let w = World::new();
    std::fs::copy(fixture.join("cairn.db"), w.db()).unwrap();
    for id in OLD_PLANS {
        let text = std::fs::read_to_string(fixture.join(format!("expected/{id}.json"))).unwrap();
        let then: Value = serde_json::from_str(&text).unwrap();
        let now = w.json(&["plans", "show", id]);
        assert_eq!(
            comparable(&now),
            comparable(&then),
            "plan {id} reads differently"
        );
        w.cairn(&["plans", "events", id]).expect(0, "the log reads");
    }
    // Every plan that can go on does, under today's code.
    w.cairn(&["plans", "start", "idle1"])
        .expect(0, "start idle1");
    for id in [
        "idle1",
        "paused1",
        "iv1",
        "rerun1",
        "restored1",
        "forked1",
        "retried1",
    ] {
        w.cairn(&["run", "--resume", id, "-q"])
            .expect(0, &format!("{id} runs to the end"));
        assert_eq!(w.show(id)["state"], "completed", "{id}");
    }
    // The failed plan's step still fails (its agent fails nine times), recorded as before.
    w.cairn(&["steps", "retry", "failed1", "s2"])
        .expect(0, "retry failed1");
    w.cairn(&["run", "--resume", "failed1", "-q"])
        .expect(1, "failed1 fails again");
    let failed = w.show("failed1");
    assert_eq!(failed["state"], "failed");
    assert_eq!(step(&failed, "s2")["attempts"], 4, "{failed}");
    assert_eq!(w.show("cancelled1")["state"], "cancelled");
    // The interventions of that release read back, applied and refused alike.
    let ivs = w.json(&["plans", "interventions", "iv1"]);
    let kinds: Vec<&str> = ivs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    for k in [
        "modify_step",
        "add_step",
        "skip_step",
        "remove_step",
        "reorder_steps",
    ] {
        assert!(kinds.contains(&k), "{k} missing in {ivs}");
    }
    assert!(
        ivs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["status"] == "failed"),
        "{ivs}"
    );
}

/// `CAIRN_MALLOC_ARENAS=1` reaches glibc: the `cairn` process starts again with
/// `GLIBC_TUNABLES=glibc.malloc.arena_max=1` in its environment (its pid's initial environment,
/// as a `command` agent's parent, shows it), and the agents it starts inherit neither variable;
/// without it nothing is set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn malloc_arenas_asked_for_reach_glibc_and_not_the_agents() {
    let w = World::new();
    w.write(
        "cairn.toml",
        r#"
[agents.env]
executor = "command"
command = ["sh", "-c", '''
cat >/dev/null
mine=$(env | grep -c -e '^GLIBC_TUNABLES=' -e '^CAIRN_MALLOC_TUNED=')
parent=$(tr '\0' '\n' < /proc/$PPID/environ | grep -c '^GLIBC_TUNABLES=glibc.malloc.arena_max=1$')
echo "{\"mine\": $mine, \"parent\": $parent}"
''']
"#,
    );
    for (id, arenas, parent) in [("tuned", Some("1"), 1), ("plain", None, 0)] {
        w.write(
            &format!("{id}.yaml"),
            &format!("plan_id: {id}\nsteps:\n  - {{step_id: s, action: x, agent_type: env}}\n"),
        );
        let db = w.db();
        let file = format!("{id}.yaml");
        let args = ["run", file.as_str(), "--json", "--db", db.to_str().unwrap()];
        let mut c = w.command(&args);
        if let Some(n) = arenas {
            c.env("CAIRN_MALLOC_ARENAS", n);
        }
        let done = Run::of(&mut c, &args)
            .expect(0, &format!("run {id}"))
            .json();
        assert_eq!(
            done["outputs"]["s"],
            json!({"mine": 0, "parent": parent}),
            "plan {id} (CAIRN_MALLOC_ARENAS={arenas:?})"
        );
    }
}
