//! `cairn serve` + `cairn worker` (and `examples/worker.py`) as real processes on loopback: a plan
//! whose agent type has no local executor is run by the remote worker. The only waits are
//! bounded polls of another process's progress.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{
    self, cairn_command, kill_and_reap, make_token, try_output_within, Api, Run, Server, LIMIT,
};

/// Kills the child when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

struct Served {
    _server: Server,
    /// `http://127.0.0.1:PORT`
    url: String,
    db: PathBuf,
    dir: tempfile::TempDir,
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let server = Server::start(&db, &[]);
    Served {
        url: server.base.clone(),
        _server: server,
        db,
        dir,
    }
}

/// `POST` of JSON to the whole URL `url`: status and body.
async fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
    let r = Api::new("")
        .call(Method::POST, url, Some(token), Some(body))
        .await;
    (r.status, r.body)
}

/// `GET` of the whole URL `url`: the body.
async fn get(url: &str, token: &str) -> Value {
    Api::new("")
        .call(Method::GET, url, Some(token), None)
        .await
        .body
}

/// Registers and starts a plan of one `research` step, waits for it to end, and returns the
/// snapshot.
async fn run_plan(s: &Served, op: &str, plan_id: &str) -> Value {
    let (st, b) = post(
        &format!("{}/v1/plans", s.url),
        op,
        json!({"plan_id": plan_id, "query": "what is cairn", "steps": [
            {"step_id": "a", "action": "search", "agent_type": "research", "params": {"topic": "rust"}}
        ]}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let (st, b) = post(
        &format!("{}/v1/plans/{plan_id}/start", s.url),
        op,
        json!({}),
    )
    .await;
    assert!((200..300).contains(&st), "{b}");
    for _ in 0..600 {
        let state = get(&format!("{}/v1/plans/{plan_id}", s.url), op).await;
        match state["state"].as_str() {
            Some("running") | Some("idle") => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => {
                assert_eq!(state["state"], "completed", "{state}");
                return get(&format!("{}/v1/plans/{plan_id}/snapshot", s.url), op).await;
            }
        }
    }
    panic!("plan {plan_id} did not end");
}

fn worker(s: &Served, tok: &str, cmd: &[&str]) -> Proc {
    let mut args = vec![
        "worker",
        "--server",
        &s.url,
        "--agent-type",
        "research",
        "--agent-type",
        "other",
        "--worker-id",
        "w-test",
        "--",
    ];
    args.extend_from_slice(cmd);
    Proc(
        cairn_command(&args)
            .env("CAIRN_TOKEN", tok)
            .current_dir(s.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_worker_runs_a_command_per_task() {
    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    let wt = make_token(&s.db, "w", "worker");
    let _w = worker(
        &s,
        &wt,
        &[
            "sh",
            "-c",
            r#"cat > task.json; echo '{"output": {"found": 3}, "scores": {"q": 0.5}}'"#,
        ],
    );
    let snap = run_plan(&s, &op, "p1").await;
    let text = snap.to_string();
    assert!(text.contains(r#"{"found":3}"#), "{text}");
    assert!(text.contains(r#""q":0.5"#), "{text}");
    // The command got the task JSON on stdin.
    let task: Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("task.json")).unwrap()).unwrap();
    assert_eq!(task["plan_id"], "p1");
    assert_eq!(task["step_id"], "a");
    assert_eq!(task["idempotency_key"], "p1/a/1");
    assert_eq!(task["params"], json!({"topic": "rust"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_worker_refuses_bad_urls_and_tokens() {
    let args = [
        "worker",
        "--server",
        "not a url",
        "--agent-type",
        "research",
        "--",
        "true",
    ];
    let out = Run::of(&mut cairn_command(&args), &args);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--server"));

    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    for (tok, what) in [("cairn_bogus", "401"), (op.as_str(), "403")] {
        let args = [
            "worker",
            "--server",
            &s.url,
            "--agent-type",
            "research",
            "--token",
            tok,
            "--",
            "true",
        ];
        let out = Run::of(&mut cairn_command(&args), &args);
        let err = out.stderr;
        assert_eq!(out.code, 2, "{err}");
        assert!(
            err.contains("refused the token") && err.contains(what),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_worker_runs_a_task() {
    if try_output_within(Command::new("python3").arg("--version"), LIMIT).is_err() {
        eprintln!("python3 not found; skipping");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/worker.py");
    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    let wt = make_token(&s.db, "w", "worker");
    let _py = Proc(
        Command::new("python3")
            .arg(&script)
            .args(["--server", &s.url, "--agent-type", "research", "--once"])
            .env("CAIRN_TOKEN", &wt)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let snap = run_plan(&s, &op, "p2").await;
    let text = snap.to_string();
    assert!(text.contains(r#""found":3"#), "{text}");
    assert!(text.contains("https://example.org/rust/0"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_command_fails_the_attempt_with_its_stderr() {
    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    let wt = make_token(&s.db, "w", "worker");
    let _w = worker(
        &s,
        &wt,
        &[
            "sh",
            "-c",
            "cat >/dev/null; echo 'quota exceeded' >&2; exit 3",
        ],
    );
    let (st, b) = post(
        &format!("{}/v1/plans", s.url),
        &op,
        json!({"plan_id": "p3", "steps": [
            {"step_id": "a", "action": "search", "agent_type": "research",
             "retry": {"max_attempts": 2, "backoff_ms": 1}}
        ]}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let (st, b) = post(&format!("{}/v1/plans/p3/start", s.url), &op, json!({})).await;
    assert!((200..300).contains(&st), "{b}");
    for _ in 0..600 {
        let state = get(&format!("{}/v1/plans/p3", s.url), &op).await;
        if state["state"] == "running" || state["state"] == "idle" {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(state["state"], "failed", "{state}");
        let step = &state["steps"][0];
        assert_eq!(step["attempts"], 2, "{state}");
        let error = step["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("code 3") && error.contains("quota exceeded"),
            "{state}"
        );
        return;
    }
    panic!("plan p3 did not end");
}

/// The path of a file under `examples/`.
fn example(name: &str) -> String {
    common::example(name).display().to_string()
}

/// Runs `cairn ARGS --server URL` with the token; panics with its stderr unless it succeeds.
fn cli(s: &Served, tok: &str, args: &[&str]) -> String {
    cli_run(s, tok, args)
        .expect(0, &format!("cairn {args:?}"))
        .stdout
}

/// `cairn ARGS --server URL` with the token in `CAIRN_TOKEN`.
fn cli_run(s: &Served, tok: &str, args: &[&str]) -> Run {
    let mut shown = args.to_vec();
    shown.extend(["--server", &s.url]);
    Run::of(cairn_command(&shown).env("CAIRN_TOKEN", tok), &shown)
}

/// Polls the plan's state (bounded: 30 s) until `done` says so; answers the last state.
async fn wait_state(s: &Served, tok: &str, plan_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut state = Value::Null;
    for _ in 0..600 {
        state = get(&format!("{}/v1/plans/{plan_id}", s.url), tok).await;
        if done(&state) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("plan {plan_id} never reached the awaited state: {state}");
}

/// The README's remote-worker walkthrough, as written: `examples/remote.yaml` registered and
/// started with the CLI, run by `cairn worker` with `examples/agents/research.py`.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_worker_walkthrough_runs_with_the_shipped_agent() {
    if try_output_within(Command::new("python3").arg("--version"), LIMIT).is_err() {
        eprintln!("python3 not found; skipping");
        return;
    }
    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    let wt = make_token(&s.db, "w1", "worker");
    cli(&s, &op, &["plans", "register", &example("remote.yaml")]);
    cli(&s, &op, &["plans", "start", "remote_001"]);
    let agent = example("agents/research.py");
    let _w = worker(&s, &wt, &["python3", &agent]);
    let state = wait_state(&s, &op, "remote_001", |v| {
        !matches!(v["state"].as_str(), Some("running") | Some("idle"))
    })
    .await;
    assert_eq!(state["state"], "completed", "{state}");
    let snap = get(&format!("{}/v1/plans/remote_001/snapshot", s.url), &op).await;
    let text = snap.to_string();
    assert!(
        text.contains("3 sources on What do researchers say"),
        "{text}"
    );
}

/// The README's HTTP walkthrough, as written: `examples/steer.yaml` pauses at its breakpoint,
/// so the skip that follows is applied, and the plan completes after the resume.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_server_walkthrough_can_be_followed() {
    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    cli(&s, &op, &["plans", "register", &example("steer.yaml")]);
    cli(&s, &op, &["plans", "start", "steer_001"]);
    let state = wait_state(&s, &op, "steer_001", |v| v["state"] == "paused").await;
    assert_eq!(state["pause_reason"], "breakpoint", "{state}");
    cli(&s, &op, &["plans", "show", "steer_001"]);
    cli(
        &s,
        &op,
        &[
            "steps",
            "skip",
            "steer_001",
            "step_2",
            "--reason",
            "source down",
        ],
    );
    cli(&s, &op, &["plans", "resume", "steer_001"]);
    let events = cli(&s, &op, &["plans", "events", "steer_001", "--follow"]);
    assert!(events.contains("plan_completed"), "{events}");
    let state = wait_state(&s, &op, "steer_001", |v| v["state"] == "completed").await;
    assert_eq!(state["skipped_steps"], json!(["step_2"]), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workers_command_gets_a_clean_environment_without_its_token() {
    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    let wt = make_token(&s.db, "w", "worker");
    let _w = Proc(
        cairn_command(&[
            "worker",
            "--server",
            &s.url,
            "--agent-type",
            "research",
            "--env",
            "KEEP_ME",
            "--",
            "sh",
            "-c",
            "cat >/dev/null; env > env.txt; echo null",
        ])
        .env("CAIRN_TOKEN", &wt)
        .env("KEEP_ME", "kept")
        .env("DROP_ME", "dropped")
        .current_dir(s.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap(),
    );
    run_plan(&s, &op, "penv").await;
    let text = std::fs::read_to_string(s.dir.path().join("env.txt")).unwrap();
    let env: std::collections::BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env.get("KEEP_ME"), Some(&"kept"), "{text}");
    assert_eq!(env.get("CAIRN_PLAN_ID"), Some(&"penv"), "{text}");
    assert_eq!(env.get("CAIRN_STEP_ID"), Some(&"a"), "{text}");
    assert_eq!(env.get("CAIRN_ATTEMPT"), Some(&"1"), "{text}");
    assert_eq!(
        env.get("CAIRN_IDEMPOTENCY_KEY"),
        Some(&"penv/a/1"),
        "{text}"
    );
    assert!(env.contains_key("PATH"), "{text}");
    for leaked in ["CAIRN_TOKEN", "DROP_ME"] {
        assert!(!env.contains_key(leaked), "{leaked} leaked:\n{text}");
    }
}

/// Runs `cairn ARGS --server URL` with the token; answers (exit code, stdout, stderr).
fn cli_output(s: &Served, tok: &str, args: &[&str]) -> (i32, String, String) {
    cli_run(s, tok, args).parts()
}

/// A mistyped agent type: register and start warn, naming it; the step is `queued` (never
/// `running`) and says what it waits for; a worker for that type claims it (recorded with the
/// worker's id) and appears in `GET /v1/workers` and `cairn workers list`.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_for_remote_workers_is_queued_until_one_claims_it() {
    let s = serve();
    let op = make_token(&s.db, "op", "operator");
    let wt = make_token(&s.db, "w", "worker");
    let plan = s.dir.path().join("typo.json");
    std::fs::write(
        &plan,
        json!({"plan_id": "typo", "query": "q", "steps": [
            {"step_id": "a", "action": "search", "agent_type": "reserch", "params": {"topic": "x"}}
        ]})
        .to_string(),
    )
    .unwrap();
    let (code, _, err) = cli_output(&s, &op, &["plans", "register", plan.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning:") && err.contains("agent type reserch"),
        "{err}"
    );
    let (st, body) = post(&format!("{}/v1/plans/typo/start", s.url), &op, json!({})).await;
    assert_eq!(st, 200, "{body}");
    let warnings = body["warnings"].to_string();
    assert!(warnings.contains("reserch"), "{body}");
    let view = get(&format!("{}/v1/plans/typo", s.url), &op).await;
    assert_eq!(view["steps"][0]["status"], "queued", "{view}");
    assert_eq!(
        view["steps"][0]["waiting_for"],
        "a worker of agent type reserch"
    );
    assert_eq!(view["queued_steps"], json!(["a"]));
    assert_eq!(view["running_steps"], json!([]));
    let (code, out, _) = cli_output(&s, &op, &["workers", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("no worker"), "{out}");

    // A worker for the mistyped type: it claims the task, and the claim is in the log.
    let (st, task) = post(
        &format!("{}/v1/tasks/poll", s.url),
        &wt,
        json!({"worker_id": "w-typo", "agent_types": ["reserch"], "wait_ms": 5000}),
    )
    .await;
    assert_eq!(st, 200, "{task}");
    let view = get(&format!("{}/v1/plans/typo", s.url), &op).await;
    assert_eq!(view["steps"][0]["status"], "running", "{view}");
    let events = get(&format!("{}/v1/plans/typo/events", s.url), &op).await;
    let claimed: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "step_claimed")
        .collect();
    assert_eq!(claimed.len(), 1, "{events}");
    assert_eq!(claimed[0]["data"]["worker_id"], "w-typo");
    assert_eq!(claimed[0]["actor"], "w");
    let workers = get(&format!("{}/v1/workers", s.url), &op).await;
    assert_eq!(workers["items"][0]["worker_id"], "w-typo", "{workers}");
    assert_eq!(workers["items"][0]["agent_types"], json!(["reserch"]));
    assert_eq!(workers["items"][0]["tasks"], json!([task["task_id"]]));
    let (code, out, _) = cli_output(&s, &op, &["workers", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("w-typo") && out.contains("reserch"), "{out}");
    // Locally there are no workers: the command says to use --server.
    let out = Run::of(
        &mut cairn_command(&["workers", "list"]),
        &["workers", "list"],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--server"));

    let (st, _) = post(
        &format!(
            "{}/v1/tasks/{}/complete",
            s.url,
            task["task_id"].as_str().unwrap()
        ),
        &wt,
        json!({"worker_id": "w-typo", "output": {"ok": true}}),
    )
    .await;
    assert_eq!(st, 204);
    let state = wait_state(&s, &op, "typo", |v| v["state"] != "running").await;
    assert_eq!(state["state"], "completed", "{state}");
}
