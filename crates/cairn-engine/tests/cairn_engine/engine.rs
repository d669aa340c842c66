//! The engine end to end over a real SQLite store.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn_core::intervention::InterventionStatus;
use cairn_core::{
    CheckpointTrigger, Event, EventKind, Intervention, InterventionRequest, PauseMode, PauseReason,
    Plan, PlanStatus, RefusalKind, StepStatus,
};
use cairn_engine::executor::{latch, ExecError, ExecOutput, Executor, Registry, StopSignal, Task};
use cairn_engine::observe::{observe, Callbacks};
use cairn_engine::{CheckpointSummary, Engine, EngineError, EngineOptions, Notice};
use cairn_store_sqlite::{Durability, SqliteOptions, SqliteStore};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::common::{open_engine, plan, settled, wait_event, within};
use crate::faults::{Faulty, Rule};

async fn engine(dir: &tempfile::TempDir) -> Engine {
    open_engine(dir, Registry::with_builtins(), EngineOptions::default()).await
}

#[tokio::test]
async fn a_plan_runs_to_completion_with_three_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let p = plan(
        "plan_id: p1\nquery: q\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, params: {v: 1}}\n  - {step_id: b, action: y, agent_type: builtin.echo, params: {from_a: '{{ steps.a.output.v }}'}}\n",
    );
    engine.register(p, "tester").await.unwrap();
    engine.start("p1", "tester", None).await.unwrap();
    let state = settled(&engine, "p1").await;
    assert_eq!(state.status, PlanStatus::Completed);
    assert_eq!(
        state.steps[1].rec.output,
        Some(serde_json::json!({"from_a": 1}))
    );
    assert_eq!(engine.checkpoints("p1").await.unwrap().len(), 3);
    assert!(state
        .steps
        .iter()
        .all(|s| s.rec.status == StepStatus::Completed));
}

#[tokio::test]
async fn pause_stops_new_steps_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let p = plan(
        "plan_id: p2\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.latch, params: {name: engine-pause-p2}}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n",
    );
    engine.register(p, "tester").await.unwrap();
    engine.start("p2", "tester", None).await.unwrap();
    // Step a is running, held by its latch, when the pause arrives.
    within("step a to hold", latch::held("engine-pause-p2")).await;
    let paused = engine
        .pause("p2", PauseMode::Boundary, None, "op", Some("coffee".into()))
        .await
        .unwrap();
    assert_eq!(paused.status, PlanStatus::Paused);
    assert_eq!(paused.steps[0].rec.status, StepStatus::Running);
    latch::release("engine-pause-p2");
    let drained = settled(&engine, "p2").await;
    assert_eq!(drained.status, PlanStatus::Paused);
    assert_eq!(drained.steps[0].rec.status, StepStatus::Completed);
    assert_eq!(drained.steps[1].rec.status, StepStatus::Pending);
    engine.resume("p2", "op", None).await.unwrap();
    let done = settled(&engine, "p2").await;
    assert_eq!(done.status, PlanStatus::Completed);
}

#[tokio::test]
async fn an_agent_type_without_an_executor_fails_with_a_message_for_the_embedding_program() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    engine
        .register(
            plan("plan_id: nx\nsteps:\n  - {step_id: a, action: x, agent_type: nowhere}\n"),
            "tester",
        )
        .await
        .unwrap();
    engine.start("nx", "tester", None).await.unwrap();
    let state = settled(&engine, "nx").await;
    assert_eq!(state.status, PlanStatus::Failed);
    let error = state.steps[0].rec.error.clone().unwrap_or_default();
    assert_eq!(
        error,
        "no executor is registered for agent type \"nowhere\""
    );
}

#[tokio::test]
async fn an_engine_that_runs_no_attempt_starts_no_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let opts = EngineOptions {
        recover: false,
        execute: false,
        ..EngineOptions::default()
    };
    let admin = open_at(&db, Registry::with_builtins(), opts).await;
    admin
        .register(
            plan("plan_id: ne\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n"),
            "tester",
        )
        .await
        .unwrap();
    let started = admin.start("ne", "tester", None).await.unwrap();
    assert_eq!(started.status, PlanStatus::Running);
    assert_eq!(started.steps[0].rec.status, StepStatus::Pending);
    assert_eq!(started.steps[0].rec.attempts, 0);
    admin.shutdown().await;
    drop(admin);
    // A driver takes it over: the step runs as attempt 1.
    let driver = open_at(&db, Registry::with_builtins(), EngineOptions::default()).await;
    let done = settled(&driver, "ne").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.steps[0].rec.attempts, 1);
}

// ---- helpers -------------------------------------------------------------------------------

async fn open_at(path: &Path, registry: Registry, opts: EngineOptions) -> Engine {
    let store = SqliteStore::open(path, SqliteOptions::default()).unwrap();
    Engine::open(Arc::new(store), registry, opts).await.unwrap()
}

/// An engine over a fresh database with the builtins plus `extra` agents.
async fn engine_with(dir: &tempfile::TempDir, extra: &[(&str, Arc<dyn Executor>)]) -> Engine {
    let registry = Registry::with_builtins();
    for (agent_type, executor) in extra {
        registry.register(agent_type, executor.clone());
    }
    open_engine(dir, registry, EngineOptions::default()).await
}

fn iv(body: Value) -> InterventionRequest {
    InterventionRequest::from_body(body).unwrap()
}

async fn all_events(engine: &Engine, plan_id: &str) -> Vec<Event> {
    engine.events(plan_id, 0, 100_000).await.unwrap()
}

fn refused(result: Result<Intervention, EngineError>) -> (RefusalKind, Intervention) {
    match result {
        Err(EngineError::Refused {
            refusal,
            intervention: Some(record),
        }) => (refusal.kind, *record),
        other => panic!("expected a refused intervention, got {other:?}"),
    }
}

/// One attempt as a [`Recorder`] saw it.
#[derive(Debug, Clone)]
struct Run {
    step_id: String,
    attempt: u32,
    key: String,
    params: Value,
}

/// Records every attempt it runs (in order) and returns the params as its output.
#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<Run>>,
}

impl Recorder {
    fn order(&self) -> Vec<String> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.step_id.clone())
            .collect()
    }

    fn keys(&self) -> Vec<String> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.key.clone())
            .collect()
    }
}

#[async_trait]
impl Executor for Recorder {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        self.runs.lock().unwrap().push(Run {
            step_id: task.step_id.clone(),
            attempt: task.attempt,
            key: task.idempotency_key.clone(),
            params: task.params.clone(),
        });
        Ok(ExecOutput {
            output: task.params,
            scores: None,
        })
    }
}

/// Holds every attempt until the test hands out a permit (or the attempt is told to stop).
/// Reports each start on a channel and tracks how many attempts run at once.
struct Gate {
    started: mpsc::UnboundedSender<(String, u32)>,
    permits: Semaphore,
    current: AtomicUsize,
    max: AtomicUsize,
}

impl Gate {
    fn new() -> (Arc<Gate>, mpsc::UnboundedReceiver<(String, u32)>) {
        let (started, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Gate {
            started,
            permits: Semaphore::new(0),
            current: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
        });
        (gate, rx)
    }

    fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }
}

#[async_trait]
impl Executor for Gate {
    async fn execute(&self, task: Task, mut stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let _ = self.started.send((task.step_id.clone(), task.attempt));
        let result = tokio::select! {
            permit = self.permits.acquire() => {
                permit.unwrap().forget();
                Ok(ExecOutput { output: task.params, scores: None })
            }
            _ = stop.stopped() => Err(ExecError::retryable("stopped")),
        };
        self.current.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

const ABC: &str = "steps:\n  - {step_id: a, action: x, agent_type: rec, params: {n: 1}}\n  - {step_id: b, action: x, agent_type: rec, params: {n: 2}}\n  - {step_id: c, action: x, agent_type: rec, params: {n: 3}}\n";

fn abc(plan_id: &str) -> Plan {
    plan(&format!("plan_id: {plan_id}\nquery: q\n{ABC}"))
}

async fn recorder_engine(dir: &tempfile::TempDir) -> (Engine, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(dir, &[("rec", rec.clone() as Arc<dyn Executor>)]).await;
    (engine, rec)
}

async fn run_to_end(engine: &Engine, plan_id: &str) -> Arc<cairn_core::PlanState> {
    engine.start(plan_id, "op", None).await.unwrap();
    settled(engine, plan_id).await
}

fn status_of(state: &cairn_core::PlanState, step_id: &str) -> StepStatus {
    state.step(step_id).unwrap().rec.status
}

// ---- interventions -------------------------------------------------------------------------

#[tokio::test]
async fn skip_step_lets_dependents_run() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    let record = engine
        .intervene(
            "p",
            iv(json!({"type": "skip_step", "step_id": "b", "reason": "not needed"})),
            "admin@veritas.com",
        )
        .await
        .unwrap();
    assert_eq!(record.status, InterventionStatus::Applied);
    assert_eq!(record.user, "admin@veritas.com");
    assert_eq!(record.reason.as_deref(), Some("not needed"));
    assert!(record
        .diff
        .iter()
        .any(|c| c.path == "steps.b.status" && c.after == json!("skipped")));
    let done = run_to_end(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(status_of(&done, "b"), StepStatus::Skipped);
    assert_eq!(rec.order(), ["a", "c"]);
}

#[tokio::test]
async fn retry_after_failure_pauses_the_plan_then_resume_completes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.fail, params: {times: 1}}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n"),
            "op",
        )
        .await
        .unwrap();
    let failed = run_to_end(&engine, "p").await;
    assert_eq!(failed.status, PlanStatus::Failed);
    assert_eq!(status_of(&failed, "a"), StepStatus::Failed);

    let record = engine
        .intervene("p", iv(json!({"type": "retry_step", "step_id": "a"})), "op")
        .await
        .unwrap();
    assert!(record
        .diff
        .iter()
        .any(|c| c.path == "status" && c.before == json!("failed") && c.after == json!("paused")));
    let state = engine.state("p").await.unwrap();
    assert_eq!(state.status, PlanStatus::Paused);
    assert_eq!(state.pause_reason, Some(PauseReason::Intervention));

    engine.resume("p", "op", None).await.unwrap();
    let done = settled(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    let a = done.step("a").unwrap();
    assert_eq!(a.rec.attempts, 2, "attempts keep counting across runs");
    assert_eq!(a.rec.run, 2);
}

#[tokio::test]
async fn modify_step_changes_the_params_a_pending_step_runs_with() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    let record = engine
        .intervene(
            "p",
            iv(json!({"type": "modify_step", "step_id": "b", "patch": {"params": {"n": 20, "extra": true}}})),
            "op",
        )
        .await
        .unwrap();
    assert_eq!(record.plan_version, 2);
    let done = run_to_end(&engine, "p").await;
    assert_eq!(done.version, 2);
    assert_eq!(
        done.step("b").unwrap().rec.output,
        Some(json!({"n": 20, "extra": true}))
    );
    let runs = rec.runs.lock().unwrap().clone();
    assert_eq!(runs[1].params, json!({"n": 20, "extra": true}));
}

#[tokio::test]
async fn add_step_after_before_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    let step = |id: &str| json!({"step_id": id, "action": "validate", "agent_type": "rec"});
    for body in [
        json!({"type": "add_step", "step": step("x"), "after": "a"}),
        json!({"type": "add_step", "step": step("y"), "before": "a"}),
        json!({"type": "add_step", "step": step("z")}),
    ] {
        engine.intervene("p", iv(body), "op").await.unwrap();
    }
    let ids: Vec<String> = engine
        .view("p")
        .await
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.step_id)
        .collect();
    assert_eq!(ids, ["y", "a", "x", "b", "c", "z"]);
    let done = run_to_end(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.version, 4);
    assert_eq!(rec.order(), ["y", "a", "x", "b", "c", "z"]);
}

#[tokio::test]
async fn remove_step_relinks_the_implicit_order() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    engine
        .intervene(
            "p",
            iv(json!({"type": "remove_step", "step_id": "b"})),
            "op",
        )
        .await
        .unwrap();
    let done = run_to_end(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert!(done.step("b").is_none());
    assert_eq!(rec.order(), ["a", "c"]);
}

#[tokio::test]
async fn reorder_steps_changes_the_execution_order() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    engine
        .intervene(
            "p",
            iv(json!({"type": "reorder_steps", "order": ["c", "a", "b"]})),
            "op",
        )
        .await
        .unwrap();
    run_to_end(&engine, "p").await;
    assert_eq!(rec.order(), ["c", "a", "b"]);
}

#[tokio::test]
async fn rerun_from_reruns_downstream_with_new_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    assert_eq!(run_to_end(&engine, "p").await.status, PlanStatus::Completed);
    engine
        .intervene("p", iv(json!({"type": "rerun_from", "step_id": "b"})), "op")
        .await
        .unwrap();
    let state = engine.state("p").await.unwrap();
    assert_eq!(state.status, PlanStatus::Paused);
    assert_eq!(state.pause_reason, Some(PauseReason::Intervention));
    assert_eq!(status_of(&state, "a"), StepStatus::Completed);
    assert_eq!(status_of(&state, "b"), StepStatus::Pending);
    assert_eq!(status_of(&state, "c"), StepStatus::Pending);
    engine.resume("p", "op", None).await.unwrap();
    assert_eq!(settled(&engine, "p").await.status, PlanStatus::Completed);
    assert_eq!(rec.keys(), ["p/a/1", "p/b/1", "p/c/1", "p/b/2", "p/c/2"]);
}

#[tokio::test]
async fn refused_interventions_are_recorded_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec) = recorder_engine(&dir).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: rec}\n  - {step_id: b, action: x, agent_type: rec, depends_on: [a]}\n"),
            "op",
        )
        .await
        .unwrap();
    let cases = [
        (
            json!({"type": "skip_step", "step_id": "nope"}),
            RefusalKind::Invalid,
        ),
        (
            json!({"type": "retry_step", "step_id": "a"}),
            RefusalKind::Conflict,
        ),
        (
            json!({"type": "remove_step", "step_id": "a"}),
            RefusalKind::Conflict,
        ),
        (
            json!({"type": "reorder_steps", "order": ["a"]}),
            RefusalKind::Invalid,
        ),
        (
            json!({"type": "reorder_steps", "order": ["b", "a"]}),
            RefusalKind::Invalid,
        ),
        (
            json!({"type": "modify_step", "step_id": "a", "patch": {"step_id": "z"}}),
            RefusalKind::Invalid,
        ),
        (
            json!({"type": "add_step", "step": {"step_id": "a", "action": "x", "agent_type": "rec"}}),
            RefusalKind::Conflict,
        ),
        (
            json!({"type": "add_step", "step": {"step_id": "n", "action": "x", "agent_type": "rec"}, "after": "a", "before": "b"}),
            RefusalKind::Invalid,
        ),
        (
            json!({"type": "approve_step", "step_id": "a"}),
            RefusalKind::Conflict,
        ),
    ];
    for (body, kind) in cases.clone() {
        let (got, record) = refused(engine.intervene("p", iv(body.clone()), "op").await);
        assert_eq!(got, kind, "{body}");
        assert_eq!(record.status, InterventionStatus::Failed);
        assert!(record.error.is_some());
        assert_eq!(record.plan_version, 1);
    }
    // Refusals after the plan ran: ended steps cannot be skipped, modified or removed.
    run_to_end(&engine, "p").await;
    for body in [
        json!({"type": "skip_step", "step_id": "a"}),
        json!({"type": "modify_step", "step_id": "a", "patch": {"params": {}}}),
        json!({"type": "remove_step", "step_id": "b"}),
    ] {
        let (kind, _) = refused(engine.intervene("p", iv(body), "op").await);
        assert_eq!(kind, RefusalKind::Conflict);
    }
    let recorded = engine.interventions("p").await.unwrap();
    assert_eq!(recorded.len(), cases.len() + 3);
    assert!(recorded
        .iter()
        .all(|i| i.status == InterventionStatus::Failed));
    let state = engine.state("p").await.unwrap();
    assert_eq!(state.version, 1);
    assert_eq!(state.status, PlanStatus::Completed);
}

#[tokio::test]
async fn expected_version_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    engine
        .intervene(
            "p",
            iv(json!({"type": "skip_step", "step_id": "c", "expected_version": 1})),
            "op",
        )
        .await
        .unwrap();
    // Skipping does not change the definition: still version 1. A modify bumps it to 2.
    engine
        .intervene(
            "p",
            iv(json!({"type": "modify_step", "step_id": "b", "patch": {"action": "y"}, "expected_version": 1})),
            "op",
        )
        .await
        .unwrap();
    let (kind, record) = refused(
        engine
            .intervene(
                "p",
                iv(json!({"type": "modify_step", "step_id": "b", "patch": {"action": "z"}, "expected_version": 1})),
                "op",
            )
            .await,
    );
    assert_eq!(kind, RefusalKind::Conflict);
    assert!(record.error.unwrap().contains("version"));
    let state = engine.state("p").await.unwrap();
    assert_eq!(state.version, 2);
    assert_eq!(state.step("b").unwrap().def.action, "y");
}

#[tokio::test]
async fn complete_step_on_a_running_step_stops_its_attempt_and_the_plan_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, mut started) = Gate::new();
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(
        &dir,
        &[
            ("gate", gate.clone() as Arc<dyn Executor>),
            ("rec", rec.clone() as Arc<dyn Executor>),
        ],
    )
    .await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: gate}\n  - {step_id: b, action: x, agent_type: rec, params: {n: \"{{ steps.a.output.n }}\"}}\n"),
            "op",
        )
        .await
        .unwrap();
    engine.start("p", "op", None).await.unwrap();
    assert_eq!(
        within("the next started message", started.recv())
            .await
            .unwrap(),
        ("a".to_owned(), 1)
    );
    let record = engine
        .intervene(
            "p",
            iv(json!({"type": "complete_step", "step_id": "a", "output": {"n": 5}, "reason": "done by hand"})),
            "op",
        )
        .await
        .unwrap();
    assert_eq!(record.status, InterventionStatus::Applied);
    assert_eq!(record.user, "op");
    let state = settled(&engine, "p").await;
    assert_eq!(state.status, PlanStatus::Completed);
    assert_eq!(state.step("a").unwrap().rec.output, Some(json!({"n": 5})));
    // b ran on the output the operator gave, as if a's agent had answered.
    assert_eq!(state.step("b").unwrap().rec.output, Some(json!({"n": 5})));
    // The attempt the operator overtook was stopped, not left running.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while gate.current.load(Ordering::SeqCst) != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the running attempt of a was stopped");
    let triggers: Vec<_> = engine
        .checkpoints("p")
        .await
        .unwrap()
        .iter()
        .map(|c| c.trigger)
        .collect();
    assert!(
        triggers.contains(&CheckpointTrigger::Intervention),
        "{triggers:?}"
    );
    let ivs = engine.interventions("p").await.unwrap();
    assert_eq!(ivs.len(), 1);
    assert_eq!(ivs[0].kind, "complete_step");
    assert_eq!(ivs[0].reason.as_deref(), Some("done by hand"));
}

#[tokio::test]
async fn dry_run_answers_the_diff_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    let before = engine.state("p").await.unwrap();
    let record = engine
        .intervene(
            "p",
            iv(json!({"type": "remove_step", "step_id": "b", "dry_run": true})),
            "op",
        )
        .await
        .unwrap();
    assert!(record.dry_run);
    assert_eq!(record.status, InterventionStatus::WouldApply);
    assert!(
        record.intervention_id.is_empty(),
        "a dry run is not recorded"
    );
    assert_eq!(record.plan_version, 2, "the version it would have");
    assert!(!record.diff.is_empty());
    // A refused dry run is answered too, and not recorded either.
    refused(
        engine
            .intervene(
                "p",
                iv(json!({"type": "remove_step", "step_id": "nope", "dry_run": true})),
                "op",
            )
            .await,
    );
    let after = engine.state("p").await.unwrap();
    assert_eq!(*before, *after);
    assert!(engine.interventions("p").await.unwrap().is_empty());
}

// ---- execution -----------------------------------------------------------------------------

#[tokio::test]
async fn parallel_steps_respect_max_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, mut started) = Gate::new();
    let engine = engine_with(&dir, &[("gate", gate.clone() as Arc<dyn Executor>)]).await;
    let steps: String = (1..=6)
        .map(|i| format!("  - {{step_id: s{i}, action: x, agent_type: gate, depends_on: []}}\n"))
        .collect();
    engine
        .register(
            plan(&format!("plan_id: p\nmax_parallel: 2\nsteps:\n{steps}")),
            "op",
        )
        .await
        .unwrap();
    engine.start("p", "op", None).await.unwrap();
    within("the next started message", started.recv())
        .await
        .unwrap();
    within("the next started message", started.recv())
        .await
        .unwrap();
    let view = engine.view("p").await.unwrap();
    assert_eq!(view.running_steps.len(), 2);
    assert_eq!(
        view.steps
            .iter()
            .filter(|s| s.status == StepStatus::Pending)
            .count(),
        4
    );
    gate.release(6);
    let done = settled(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(gate.max.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn retries_with_backoff_succeed_on_the_third_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let doc = |id: &str, max: u32| {
        plan(&format!("plan_id: {id}\nsteps:\n  - {{step_id: a, action: x, agent_type: builtin.fail, params: {{times: 2}}, retry: {{max_attempts: {max}, backoff_ms: 5, backoff_factor: 2.0}}}}\n"))
    };
    engine.register(doc("ok", 3), "op").await.unwrap();
    let done = run_to_end(&engine, "ok").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.step("a").unwrap().rec.attempts, 3);
    let retries = all_events(&engine, "ok")
        .await
        .into_iter()
        .filter(|e| {
            matches!(
                &e.kind,
                EventKind::StepFailed {
                    retry_at: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(retries, 2);

    engine.register(doc("ko", 2), "op").await.unwrap();
    let failed = run_to_end(&engine, "ko").await;
    assert_eq!(failed.status, PlanStatus::Failed);
    assert_eq!(failed.step("a").unwrap().rec.attempts, 2);
    assert!(failed.failure.as_deref().unwrap().contains("attempt 2"));
}

#[tokio::test]
async fn timeout_fails_a_sleeping_step() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.sleep, params: {ms: 600000}, timeout_ms: 20}\n"),
            "op",
        )
        .await
        .unwrap();
    let failed = run_to_end(&engine, "p").await;
    assert_eq!(failed.status, PlanStatus::Failed);
    let a = failed.step("a").unwrap();
    assert_eq!(a.rec.status, StepStatus::Failed);
    assert!(a.rec.error.as_deref().unwrap().contains("timed out"));
}

#[tokio::test]
async fn a_false_when_skips_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, params: {hits: 0}}\n  - {step_id: b, action: y, agent_type: builtin.echo, when: 'steps.a.output.hits > 0'}\n  - {step_id: c, action: z, agent_type: builtin.echo, when: 'steps.a.output.hits == 0'}\n"),
            "op",
        )
        .await
        .unwrap();
    let done = run_to_end(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(status_of(&done, "b"), StepStatus::Skipped);
    assert_eq!(status_of(&done, "c"), StepStatus::Completed);
}

#[tokio::test]
async fn immediate_pause_interrupts_a_running_step_which_runs_again_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, mut started) = Gate::new();
    let engine = engine_with(&dir, &[("gate", gate.clone() as Arc<dyn Executor>)]).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: gate}\n"),
            "op",
        )
        .await
        .unwrap();
    engine.start("p", "op", None).await.unwrap();
    assert_eq!(
        within("the next started message", started.recv())
            .await
            .unwrap(),
        ("a".to_owned(), 1)
    );
    engine
        .pause("p", PauseMode::Immediate, None, "op", Some("now".into()))
        .await
        .unwrap();
    let paused = settled(&engine, "p").await;
    assert_eq!(paused.status, PlanStatus::Paused);
    assert_eq!(paused.pause_reason, Some(PauseReason::Operator));
    assert_eq!(status_of(&paused, "a"), StepStatus::Pending);
    wait_event(&engine, "p", |e| {
        matches!(&e.kind, EventKind::StepInterrupted { step_id, attempt: 1, .. } if step_id == "a")
    })
    .await;

    engine.resume("p", "op", None).await.unwrap();
    assert_eq!(
        within("the next started message", started.recv())
            .await
            .unwrap(),
        ("a".to_owned(), 2)
    );
    gate.release(1);
    let done = settled(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(done.step("a").unwrap().rec.attempts, 2);
}

#[tokio::test]
async fn cancel_stops_the_plan_and_records_late_results() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, mut started) = Gate::new();
    let engine = engine_with(&dir, &[("gate", gate.clone() as Arc<dyn Executor>)]).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: gate}\n  - {step_id: b, action: x, agent_type: gate}\n"),
            "op",
        )
        .await
        .unwrap();
    engine.start("p", "op", None).await.unwrap();
    within("the next started message", started.recv())
        .await
        .unwrap();
    let cancelled = engine
        .cancel("p", "op", Some("wrong query".into()))
        .await
        .unwrap();
    assert_eq!(cancelled.status, PlanStatus::Cancelled);
    assert_eq!(status_of(&cancelled, "a"), StepStatus::Cancelled);
    assert_eq!(status_of(&cancelled, "b"), StepStatus::Cancelled);
    // The running attempt is told to stop; its late result is recorded and changes nothing.
    wait_event(
        &engine,
        "p",
        |e| matches!(&e.kind, EventKind::StepResultIgnored { step_id, .. } if step_id == "a"),
    )
    .await;
    let e = wait_event(&engine, "p", |e| {
        matches!(e.kind, EventKind::PlanCancelled { .. })
    })
    .await;
    assert_eq!(e.actor, "op");
    assert_eq!(settled(&engine, "p").await.status, PlanStatus::Cancelled);
    assert!(matches!(
        engine.resume("p", "op", None).await,
        Err(EngineError::Refused { .. })
    ));
}

#[tokio::test]
async fn breakpoints_pause_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: rec, pause_after: true}\n  - {step_id: b, action: x, agent_type: rec, pause_before: true}\n  - {step_id: c, action: x, agent_type: rec}\n"),
            "op",
        )
        .await
        .unwrap();
    let first = run_to_end(&engine, "p").await;
    assert_eq!(first.status, PlanStatus::Paused);
    assert_eq!(first.pause_reason, Some(PauseReason::Breakpoint));
    assert_eq!(status_of(&first, "a"), StepStatus::Completed);
    assert_eq!(status_of(&first, "b"), StepStatus::Pending);

    engine.resume("p", "op", None).await.unwrap();
    let second = settled(&engine, "p").await;
    assert_eq!(second.status, PlanStatus::Paused);
    assert_eq!(second.pause_reason, Some(PauseReason::Breakpoint));
    assert_eq!(status_of(&second, "b"), StepStatus::Pending);
    assert_eq!(rec.order(), ["a"]);

    engine.resume("p", "op", None).await.unwrap();
    let done = settled(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    assert_eq!(rec.order(), ["a", "b", "c"]);
}

// ---- checkpoints ---------------------------------------------------------------------------

#[tokio::test]
async fn restore_is_refused_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, mut started) = Gate::new();
    let engine = engine_with(&dir, &[("gate", gate.clone() as Arc<dyn Executor>)]).await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: gate}\n"),
            "op",
        )
        .await
        .unwrap();
    engine.start("p", "op", None).await.unwrap();
    within("the next started message", started.recv())
        .await
        .unwrap();
    let cps = engine.checkpoints("p").await.unwrap();
    assert_eq!(cps[0].trigger, CheckpointTrigger::Initial);
    match engine.restore("p", &cps[0].checkpoint_id, "op", None).await {
        Err(e) => assert_eq!(e.refusal_kind(), Some(RefusalKind::Conflict)),
        Ok(_) => panic!("restore of a running plan must be refused"),
    }
    gate.release(1);
    assert_eq!(settled(&engine, "p").await.status, PlanStatus::Completed);
}

#[tokio::test]
async fn restore_then_resume_reruns_the_steps_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    run_to_end(&engine, "p").await;
    let cps = engine.checkpoints("p").await.unwrap();
    let triggers: Vec<_> = cps.iter().map(|c| c.trigger).collect();
    assert_eq!(
        triggers,
        [
            CheckpointTrigger::Initial,
            CheckpointTrigger::Step,
            CheckpointTrigger::Step,
            CheckpointTrigger::Step
        ]
    );
    let after_a = &cps[1];
    let view = engine
        .checkpoint("p", &after_a.checkpoint_id)
        .await
        .unwrap();
    assert_eq!(view.completed_steps, ["a"]);

    let restored = engine
        .restore(
            "p",
            &after_a.checkpoint_id,
            "op",
            Some("redo b and c".into()),
        )
        .await
        .unwrap();
    assert_eq!(restored.status, PlanStatus::Paused);
    assert_eq!(restored.pause_reason, Some(PauseReason::Restored));
    assert_eq!(status_of(&restored, "a"), StepStatus::Completed);
    assert_eq!(status_of(&restored, "b"), StepStatus::Pending);
    assert_eq!(
        restored.step("a").unwrap().rec.output,
        Some(json!({"n": 1}))
    );

    engine.resume("p", "op", None).await.unwrap();
    assert_eq!(settled(&engine, "p").await.status, PlanStatus::Completed);
    assert_eq!(rec.order(), ["a", "b", "c", "b", "c"]);
    // History is never erased: the later checkpoints are still listed.
    let now = engine.checkpoints("p").await.unwrap();
    assert!(now.len() > cps.len());
    assert_eq!(&now[..cps.len()], &cps[..]);
    wait_event(&engine, "p", |e| {
        matches!(e.kind, EventKind::CheckpointRestored { .. })
    })
    .await;
}

#[tokio::test]
async fn fork_creates_a_paused_plan_equal_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    run_to_end(&engine, "p").await;
    let cp = engine.checkpoints("p").await.unwrap()[2].clone();
    let view = engine.checkpoint("p", &cp.checkpoint_id).await.unwrap();
    let forked = engine
        .fork("p", &cp.checkpoint_id, Some("p-fork".into()), "op", None)
        .await
        .unwrap();
    assert_eq!(forked.plan_id, "p-fork");
    assert_eq!(forked.status, PlanStatus::Paused);
    assert_eq!(forked.pause_reason, Some(PauseReason::Restored));
    assert_eq!(forked.ids_with(StepStatus::Completed), view.completed_steps);
    assert_eq!(forked.ids_with(StepStatus::Completed), ["a", "b"]);
    for (id, output) in &view.context {
        assert_eq!(forked.step(id).unwrap().rec.output.as_ref(), Some(output));
    }
    let origin = forked.origin.clone().unwrap();
    assert_eq!(
        (origin.how.as_str(), origin.plan_id.as_str()),
        ("fork", "p")
    );
    assert_eq!(origin.checkpoint_id, cp.checkpoint_id);

    engine.resume("p-fork", "op", None).await.unwrap();
    assert_eq!(
        settled(&engine, "p-fork").await.status,
        PlanStatus::Completed
    );
    assert_eq!(rec.keys().last().unwrap(), "p-fork/c/1");
    // The source plan is untouched, and records the fork.
    assert_eq!(
        engine.state("p").await.unwrap().status,
        PlanStatus::Completed
    );
    wait_event(
        &engine,
        "p",
        |e| matches!(&e.kind, EventKind::PlanForked { new_plan_id, .. } if new_plan_id == "p-fork"),
    )
    .await;
}

/// A fork is one commit: when the store refuses the source's `plan_forked` the new plan is not
/// kept either, the source is as it was, and a later fork records exactly one of each.
#[tokio::test]
async fn a_fork_whose_source_record_fails_leaves_no_plan_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fenced = Arc::new(AtomicBool::new(true));
    let sqlite = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
    let store = Arc::new(Faulty::new(
        Arc::new(sqlite),
        Rule::ForkFenced(fenced.clone()),
    ));
    let registry = Registry::with_builtins();
    registry.register("rec", Arc::new(Recorder::default()));
    let engine = Engine::open(store.clone(), registry, EngineOptions::default())
        .await
        .unwrap();
    engine.register(abc("p"), "op").await.unwrap();
    engine.start("p", "op", None).await.unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), engine.wait_settled("p"))
        .await
        .expect("p settles")
        .unwrap();
    assert_eq!(done.status, PlanStatus::Completed);
    let cp = engine.checkpoints("p").await.unwrap()[1].clone();
    let before = all_events(&engine, "p").await;

    let failed = engine
        .fork("p", &cp.checkpoint_id, Some("p-fork".into()), "op", None)
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(cairn_store::PlanIndex::get_plan(&*store, "p-fork")
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        engine.state("p-fork").await,
        Err(EngineError::PlanNotFound(_))
    ));
    assert_eq!(
        all_events(&engine, "p").await,
        before,
        "the source log is unchanged"
    );
    assert_eq!(engine.state("p").await.unwrap().seq, before.len() as u64);

    fenced.store(false, Ordering::SeqCst);
    let forked = engine
        .fork("p", &cp.checkpoint_id, Some("p-fork".into()), "op", None)
        .await
        .unwrap();
    assert_eq!(forked.status, PlanStatus::Paused);
    let events = all_events(&engine, "p").await;
    let records: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::PlanForked { new_plan_id, .. } if new_plan_id == "p-fork"))
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(events.len(), before.len() + 1);
    let new_log = all_events(&engine, "p-fork").await;
    assert_eq!(new_log.len(), 1);
    assert!(
        new_log[0].id < records[0].id,
        "the new plan's registration comes first"
    );
    // A bad new id is refused by the core before anything is written.
    let bad = engine
        .fork("p", &cp.checkpoint_id, Some("no/slash".into()), "op", None)
        .await;
    assert!(
        matches!(&bad, Err(EngineError::Refused { refusal, .. }) if refusal.kind == RefusalKind::Invalid),
        "{bad:?}"
    );
    assert_eq!(all_events(&engine, "p").await.len(), events.len());
}

#[tokio::test]
async fn export_then_import_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    run_to_end(&engine, "p").await;
    let cp = engine.checkpoints("p").await.unwrap()[1].clone();
    let export = engine
        .export_checkpoint("p", &cp.checkpoint_id)
        .await
        .unwrap();
    let file = serde_json::to_string_pretty(&export).unwrap();
    let back: cairn_engine::CheckpointExport = serde_json::from_str(&file).unwrap();
    assert_eq!(back.format, "cairn.checkpoint.v1");
    let imported = engine
        .import_checkpoint(back, Some("p-imported".into()), "op")
        .await
        .unwrap();
    assert_eq!(imported.status, PlanStatus::Paused);
    assert_eq!(*imported.steps, export.state.steps);
    assert_eq!(imported.origin.as_ref().unwrap().how, "import");
    engine.resume("p-imported", "op", None).await.unwrap();
    assert_eq!(
        settled(&engine, "p-imported").await.status,
        PlanStatus::Completed
    );
    // An import under an existing id is refused; a foreign document too.
    let again = engine
        .export_checkpoint("p", &cp.checkpoint_id)
        .await
        .unwrap();
    assert!(matches!(
        engine.import_checkpoint(again.clone(), None, "op").await,
        Err(EngineError::PlanExists(_))
    ));
    let mut foreign = again;
    foreign.format = "something.else".into();
    assert!(matches!(
        engine
            .import_checkpoint(foreign, Some("x".into()), "op")
            .await,
        Err(EngineError::Invalid(_))
    ));
}

#[tokio::test]
async fn snapshot_contains_checkpoints_and_interventions() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    engine
        .intervene(
            "p",
            iv(json!({"type": "skip_step", "step_id": "c"})),
            "alice",
        )
        .await
        .unwrap();
    let _ = engine
        .intervene(
            "p",
            iv(json!({"type": "skip_step", "step_id": "zz"})),
            "bob",
        )
        .await;
    engine
        .create_checkpoint("p", Some("before start".into()), "op", None)
        .await
        .unwrap();
    let done = run_to_end(&engine, "p").await;
    let snap = engine.snapshot("p").await.unwrap();
    assert_eq!(snap.state, PlanStatus::Completed);
    assert_eq!(snap.event_count, done.seq);
    assert_eq!(snap.checkpoints, engine.checkpoints("p").await.unwrap());
    assert!(snap
        .checkpoints
        .iter()
        .any(|c| c.label.as_deref() == Some("before start")));
    let ivs: Vec<_> = snap
        .interventions
        .iter()
        .map(|i| (i.user.as_str(), i.status))
        .collect();
    assert_eq!(
        ivs,
        [
            ("alice", InterventionStatus::Applied),
            ("bob", InterventionStatus::Failed)
        ]
    );
    assert_eq!(snap.completed_steps, ["a", "b"]);
    assert_eq!(snap.skipped_steps, ["c"]);
    // The prototype's names, so that its users' scripts read the snapshot unchanged.
    let doc = serde_json::to_value(&snap).unwrap();
    for key in [
        "plan",
        "state",
        "current_step_index",
        "completed_steps",
        "failed_steps",
        "skipped_steps",
        "checkpoints",
        "interventions",
        "version",
        "pause_reason",
        "event_count",
        "taken_at",
    ] {
        assert!(doc.get(key).is_some(), "{key}");
    }
    let step_ids: Vec<&str> = doc["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(step_ids, ["a", "b", "c"]);
    assert_eq!(doc["state"], "completed");
    // Steps are flat records, not {def, rec}.
    let a = &doc["steps"][0];
    assert_eq!(a["step_id"], "a");
    assert_eq!(a["status"], "completed");
    assert_eq!(a["attempts"], 1);
    assert!(a.get("def").is_none() && a.get("rec").is_none(), "{a}");
    assert!(a["output"].is_object(), "{a}");
    for t in [&a["started_at"], &a["ended_at"], &doc["taken_at"]] {
        let text = t.as_str().unwrap();
        assert!(text.ends_with('Z') && text.len() == 27, "{text}");
    }
}

// ---- durability ----------------------------------------------------------------------------

/// Blocks forever, like an agent whose process died mid-step. Records what it was given.
struct Stuck(mpsc::UnboundedSender<Task>);

#[async_trait]
impl Executor for Stuck {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let _ = self.0.send(task);
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_reopened_engine_recovers_a_running_plan_with_the_same_attempt_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let registry = Registry::with_builtins();
    registry.register("agent", Arc::new(Stuck(tx)));
    let first = open_at(&path, registry, EngineOptions::default()).await;
    first
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n  - {step_id: b, action: y, agent_type: agent}\n"),
            "op",
        )
        .await
        .unwrap();
    first.start("p", "op", None).await.unwrap();
    let task = within("the next seen message", seen.recv()).await.unwrap();
    assert_eq!((task.step_id.as_str(), task.attempt), ("b", 1));
    first.shutdown().await;
    assert!(matches!(
        first.start("p", "op", None).await,
        Err(EngineError::ShuttingDown)
    ));
    drop(first);

    let rec = Arc::new(Recorder::default());
    let registry = Registry::with_builtins();
    registry.register("agent", rec.clone());
    let second = open_at(&path, registry, EngineOptions::default()).await;
    let done = settled(&second, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    let runs = rec.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "the completed step a is not run again");
    assert_eq!(runs[0].step_id, "b");
    assert_eq!(runs[0].attempt, task.attempt);
    assert_eq!(runs[0].key, task.idempotency_key);
    assert_eq!(runs[0].key, "p/b/1");
    assert_eq!(done.step("b").unwrap().rec.attempts, 1);
    assert!(all_events(&second, "p").await.iter().any(
        |e| matches!(&e.kind, EventKind::StepRecovered { step_id, attempt: 1, .. } if step_id == "b")
    ));
}

/// A recovered attempt is sent, byte for byte, what its first attempt was sent and what its
/// `step_started` recorded, even when the output its params were rendered from changed since
/// (here: while no process drove the plan, its upstream step was retried and completed by hand
/// with another output). Re-rendering would send other params under the same idempotency key.
#[tokio::test]
async fn a_recovered_attempt_is_sent_its_recorded_params_after_their_source_changed() {
    let limit = std::time::Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let registry = Registry::with_builtins();
    registry.register("agent", Arc::new(Stuck(tx)));
    let first = open_at(&path, registry, EngineOptions::default()).await;
    first
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo, params: {n: 1.5, text: 'héllo \"you\"'}}\n  - {step_id: b, action: y, agent_type: agent, params: {n: '{{ steps.a.output.n }}', text: 'said: {{ steps.a.output.text }}', whole: '{{ steps.a.output }}'}}\n"),
            "op",
        )
        .await
        .unwrap();
    first.start("p", "op", None).await.unwrap();
    let sent = tokio::time::timeout(limit, seen.recv())
        .await
        .expect("b starts")
        .unwrap();
    assert_eq!((sent.step_id.as_str(), sent.attempt), ("b", 1));
    let sent_bytes = serde_json::to_string(&sent.params).unwrap();
    assert_eq!(
        sent.params,
        json!({"n": 1.5, "text": "said: héllo \"you\"", "whole": {"n": 1.5, "text": "héllo \"you\""}})
    );
    first.shutdown().await;
    drop(first);

    // While nothing drives the plan, a's output changes.
    let admin = open_at(
        &path,
        Registry::with_builtins(),
        EngineOptions {
            recover: false,
            execute: false,
            ..EngineOptions::default()
        },
    )
    .await;
    admin
        .intervene("p", iv(json!({"type": "retry_step", "step_id": "a"})), "op")
        .await
        .unwrap();
    admin
        .intervene(
            "p",
            iv(json!({"type": "complete_step", "step_id": "a", "output": {"n": 2, "text": "changed"}, "reason": "by hand"})),
            "op",
        )
        .await
        .unwrap();
    let changed = admin.state("p").await.unwrap();
    assert_eq!(
        changed.step("a").unwrap().rec.output,
        Some(json!({"n": 2, "text": "changed"}))
    );
    assert_eq!(changed.step("b").unwrap().rec.status, StepStatus::Running);
    admin.shutdown().await;
    drop(admin);

    let (tx, mut again) = mpsc::unbounded_channel();
    let registry = Registry::with_builtins();
    registry.register("agent", Arc::new(Stuck(tx)));
    let second = open_at(&path, registry, EngineOptions::default()).await;
    let resent = tokio::time::timeout(limit, again.recv())
        .await
        .expect("b is sent again")
        .unwrap();
    assert_eq!((resent.step_id.as_str(), resent.attempt), ("b", 1));
    assert_eq!(resent.idempotency_key, sent.idempotency_key);
    assert_eq!(
        (resent.action.as_str(), resent.agent_type.as_str()),
        ("y", "agent")
    );
    assert_eq!(serde_json::to_string(&resent.params).unwrap(), sent_bytes);
    // The audit shows what the agent received: the start's recorded invocation.
    let events = all_events(&second, "p").await;
    let recorded = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StepStarted {
                step_id,
                invocation: Some(i),
                ..
            } if step_id == "b" => Some(i.clone()),
            _ => None,
        })
        .expect("b's start records its invocation");
    assert_eq!(serde_json::to_string(&recorded.params).unwrap(), sent_bytes);
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::StepRecovered { step_id, attempt: 1, invocation: None, .. } if step_id == "b"
    )));
    second.shutdown().await;
}

// ---- subscriptions -------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_from_zero_yields_every_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rec) = recorder_engine(&dir).await;
    engine.register(abc("p"), "op").await.unwrap();
    run_to_end(&engine, "p").await;
    let last = engine.store().last_event_id().await.unwrap();
    assert!(last > 5);
    let mut sub = engine.subscribe(Some(0));
    let mut seen = Vec::new();
    while seen.last().map(|e: &Arc<Event>| e.id) != Some(last) {
        if let Notice::Event(e) = within("the next notice of the subscription", sub.next())
            .await
            .unwrap()
        {
            seen.push(e);
        }
    }
    let ids: Vec<u64> = seen.iter().map(|e| e.id).collect();
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(ids, (1..=last).collect::<Vec<_>>());
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    assert_eq!(all_events(&engine, "p").await.len() as u64, last);
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_and_still_gets_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("cairn.db"),
        SqliteOptions {
            durability: Durability::Relaxed,
            ..SqliteOptions::default()
        },
    )
    .unwrap();
    let engine = Engine::open(
        Arc::new(store),
        Registry::with_builtins(),
        EngineOptions {
            stream_buffer: 16,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap();
    let mut sub = engine.subscribe(Some(0));
    // Read one event so the subscription is on the live stream, then stop reading.
    let steps: String = (0..100)
        .map(|i| format!("  - {{step_id: s{i}, action: x, agent_type: builtin.echo}}\n"))
        .collect();
    let ids: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    engine
        .register(plan(&format!("plan_id: {}\nsteps:\n{steps}", ids[0])), "op")
        .await
        .unwrap();
    let first = match within("the next notice of the subscription", sub.next())
        .await
        .unwrap()
    {
        Notice::Event(e) => e.id,
        other => panic!("{other:?}"),
    };
    for id in &ids[1..] {
        engine
            .register(plan(&format!("plan_id: {id}\nsteps:\n{steps}")), "op")
            .await
            .unwrap();
    }
    for id in &ids {
        engine.start(id, "op", None).await.unwrap();
    }
    for id in &ids {
        assert_eq!(settled(&engine, id).await.status, PlanStatus::Completed);
    }
    let last = engine.store().last_event_id().await.unwrap();
    assert!(last > 20_000, "{last}");

    let mut lagged = false;
    let mut expect = first + 1;
    while expect <= last {
        match within("the next notice of the subscription", sub.next())
            .await
            .unwrap()
        {
            Notice::Lagged { .. } => {
                assert_eq!(expect, first + 1, "the lag is reported before the catch-up");
                lagged = true;
            }
            Notice::Event(e) => {
                assert_eq!(e.id, expect, "no gap, no repeat");
                expect += 1;
            }
        }
    }
    assert!(lagged);
}

// ---- observers -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    State(String, PlanStatus, PlanStatus),
    Checkpoint(CheckpointSummary),
    Intervention(String, InterventionStatus),
}

fn recording_callbacks(tx: mpsc::UnboundedSender<Seen>) -> Callbacks {
    let (t1, t2, t3) = (tx.clone(), tx.clone(), tx);
    Callbacks::new()
        .on_state_change(move |plan_id, old, new| {
            let _ = t1.send(Seen::State(plan_id.to_owned(), old, new));
        })
        .on_checkpoint(move |cp| {
            let _ = t2.send(Seen::Checkpoint(cp));
        })
        .on_intervention_async(move |i| {
            let tx = t3.clone();
            async move {
                let _ = tx.send(Seen::Intervention(i.kind, i.status));
            }
        })
}

/// Collects what an observer reports until `until` has been seen.
async fn collect_until(rx: &mut mpsc::UnboundedReceiver<Seen>, until: &Seen) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.last() != Some(until) {
        out.push(within("the next rx message", rx.recv()).await.unwrap());
    }
    out
}

fn states(seen: &[Seen]) -> Vec<(PlanStatus, PlanStatus)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::State(_, a, b) => Some((*a, *b)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn observer_reports_state_changes_checkpoints_and_interventions() {
    use PlanStatus::*;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = observe(&engine, recording_callbacks(tx)).await.unwrap();
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.fail, params: {times: 1}}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n"),
            "op",
        )
        .await
        .unwrap();
    engine.start("p", "op", None).await.unwrap();
    let seen = collect_until(&mut rx, &Seen::State("p".into(), Running, Failed)).await;
    assert_eq!(states(&seen), [(Idle, Running), (Running, Failed)]);

    engine
        .intervene("p", iv(json!({"type": "retry_step", "step_id": "a"})), "op")
        .await
        .unwrap();
    let _ = engine
        .intervene(
            "p",
            iv(json!({"type": "skip_step", "step_id": "nope"})),
            "op",
        )
        .await;
    engine.resume("p", "op", None).await.unwrap();
    let more = collect_until(&mut rx, &Seen::State("p".into(), Running, Completed)).await;
    assert_eq!(
        states(&more),
        [(Failed, Paused), (Paused, Running), (Running, Completed)]
    );
    let ivs: Vec<_> = more
        .iter()
        .filter(|s| matches!(s, Seen::Intervention(..)))
        .cloned()
        .collect();
    assert_eq!(
        ivs,
        [
            Seen::Intervention("retry_step".into(), InterventionStatus::Applied),
            Seen::Intervention("skip_step".into(), InterventionStatus::Failed)
        ]
    );
    let cps: Vec<CheckpointSummary> = seen
        .iter()
        .chain(&more)
        .filter_map(|s| match s {
            Seen::Checkpoint(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(cps, engine.checkpoints("p").await.unwrap());
    assert!(handle.last_id() > 0);
    handle.stop();
}

#[tokio::test]
async fn observer_learns_the_status_of_plans_it_has_not_seen_yet() {
    use PlanStatus::*;
    let dir = tempfile::tempdir().unwrap();
    // The first step is held open until the plan is paused: the pause lands while it runs.
    let (gate, mut started) = Gate::new();
    let rec = Arc::new(Recorder::default());
    let engine = engine_with(
        &dir,
        &[
            ("gate", gate.clone() as Arc<dyn Executor>),
            ("rec", rec as Arc<dyn Executor>),
        ],
    )
    .await;
    engine
        .register(
            plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: gate}\n  - {step_id: b, action: x, agent_type: rec}\n"),
            "op",
        )
        .await
        .unwrap();
    engine.start("p", "op", None).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), started.recv()).await;
    assert_eq!(first.unwrap().unwrap().0, "a");
    engine
        .pause("p", PauseMode::Boundary, None, "op", None)
        .await
        .unwrap();
    gate.release(1);
    assert_eq!(settled(&engine, "p").await.status, Paused);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let _handle = observe(&engine, recording_callbacks(tx)).await.unwrap();
    engine.resume("p", "op", None).await.unwrap();
    let seen = collect_until(&mut rx, &Seen::State("p".into(), Running, Completed)).await;
    assert_eq!(states(&seen), [(Paused, Running), (Running, Completed)]);
    // Restore pauses a finished plan again.
    let cp = engine.checkpoints("p").await.unwrap()[0].clone();
    engine
        .restore("p", &cp.checkpoint_id, "op", None)
        .await
        .unwrap();
    collect_until(&mut rx, &Seen::State("p".into(), Completed, Paused)).await;
}

#[tokio::test]
async fn a_slow_observer_never_stalls_the_engine_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
    let engine = Engine::open(
        Arc::new(store),
        Registry::with_builtins(),
        EngineOptions {
            stream_buffer: 16,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap();
    // The checkpoint callback blocks until the test opens the gate.
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let callbacks = Callbacks::new().on_checkpoint_async({
        let gate = gate.clone();
        move |cp| {
            let (gate, tx) = (gate.clone(), tx.clone());
            async move {
                let _ = gate.acquire().await.map(|p| p.forget());
                let _ = tx.send(cp);
            }
        }
    });
    let handle = observe(&engine, callbacks).await.unwrap();
    let steps: String = (0..40)
        .map(|i| format!("  - {{step_id: s{i}, action: x, agent_type: builtin.echo}}\n"))
        .collect();
    engine
        .register(plan(&format!("plan_id: p\nsteps:\n{steps}")), "op")
        .await
        .unwrap();
    // The plan runs to the end while the observer is stuck in its first callback.
    let done = run_to_end(&engine, "p").await;
    assert_eq!(done.status, PlanStatus::Completed);
    let expected = engine.checkpoints("p").await.unwrap();
    assert_eq!(expected.len(), 41);
    gate.add_permits(expected.len());
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(within("the next rx message", rx.recv()).await.unwrap());
    }
    assert_eq!(got, expected, "every checkpoint, once, in order");
    drop(handle);
}

/// An ended plan is unloaded as soon as it is quiet; commands racing that unload are decided
/// by exactly one actor at a time: none fails, every checkpoint gets its own seq, and every
/// fork that answered exists and is recorded in the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_to_an_ended_plan_are_all_decided_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap();
    let engine = Engine::open(
        Arc::new(store),
        Registry::with_builtins(),
        EngineOptions {
            idle_unload_ms: 0,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap();
    engine
        .register(
            plan("plan_id: ended\nquery: q\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n"),
            "t",
        )
        .await
        .unwrap();
    engine.cancel("ended", "t", None).await.unwrap();
    let cp = engine
        .create_checkpoint("ended", None, "t", None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let engine = engine.clone();
        let cid = cp.checkpoint_id.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                engine
                    .create_checkpoint("ended", None, "t", None)
                    .await
                    .map(|c| c.seq)
            } else {
                engine
                    .fork("ended", &cid, Some(format!("f{i}")), "t", None)
                    .await
                    .map(|_| 0)
            }
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        let seq = r.unwrap_or_else(|e| panic!("a command to an ended plan failed: {e}"));
        if seq > 0 {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 150, "each checkpoint has its own seq");
    for i in (1..300).step_by(2) {
        engine.view(&format!("f{i}")).await.unwrap();
    }
    let forked = engine
        .events("ended", 0, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind.type_name() == "plan_forked")
        .count();
    assert_eq!(forked, 150);
}

// ---- timestamps written by earlier releases ------------------------------------------------

/// Turns every RFC 3339 string under a key ending in `_at` back into integer microseconds,
/// as releases before RFC 3339 timestamps wrote them.
fn integer_times(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if k.ends_with("_at") {
                    if let Some(t) = x
                        .as_str()
                        .and_then(|s| s.parse::<cairn_core::Timestamp>().ok())
                    {
                        *x = Value::from(t.as_micros());
                        continue;
                    }
                }
                integer_times(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integer_times),
        _ => {}
    }
}

/// A database whose events and state snapshots carry integer times (as written before times
/// became RFC 3339 strings) opens, and every plan reads and replays to the same state.
#[tokio::test]
async fn a_store_written_with_integer_times_reads_the_same() {
    use cairn_store::{CreatePlan, EventLog, NewEvent, PlanIndex, Snapshots};
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        snapshot_every: 3,
        ..EngineOptions::default()
    };
    let new = open_at(
        &dir.path().join("new.db"),
        Registry::with_builtins(),
        opts.clone(),
    )
    .await;
    new.register(
        plan("plan_id: p\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.fail, params: {times: 1}, retry: {max_attempts: 2, backoff_ms: 5}}\n  - {step_id: b, action: y, agent_type: builtin.echo}\n  - {step_id: c, action: z, agent_type: builtin.echo, pause_before: true}\n"),
        "op",
    )
    .await
    .unwrap();
    let paused = run_to_end(&new, "p").await;
    assert_eq!(paused.status, PlanStatus::Paused);
    new.shutdown().await;
    let source = SqliteStore::open(&dir.path().join("new.db"), SqliteOptions::default()).unwrap();

    // Copy the plan into another database with every time written the old way.
    let old = SqliteStore::open(&dir.path().join("old.db"), SqliteOptions::default()).unwrap();
    let rows = source.read_events("p", 0, None, 10_000).await.unwrap();
    assert!(
        rows.iter().any(|r| r.data.contains("retry_at")),
        "a retry was recorded"
    );
    let events = rows
        .iter()
        .map(|r| {
            let mut data: Value = serde_json::from_str(&r.data).unwrap();
            integer_times(&mut data);
            NewEvent {
                seq: r.seq,
                at: r.at,
                actor: r.actor.clone(),
                kind: r.kind.clone(),
                data: data.to_string(),
                format: r.format,
                checkpoint: r.checkpoint.clone(),
            }
        })
        .collect();
    let row = source.get_plan("p").await.unwrap().unwrap();
    old.create_plan(CreatePlan {
        plan_id: "p".into(),
        created_at: row.created_at,
        state: row.state,
        events,
        reviews: Vec::new(),
    })
    .await
    .unwrap();
    let (snap_seq, bytes) = source
        .get_snapshot("p", u64::MAX)
        .await
        .unwrap()
        .expect("a state snapshot was stored");
    let mut snap = serde_json::to_value(cairn_engine::snapshot::decode(&bytes).unwrap()).unwrap();
    integer_times(&mut snap);
    assert!(
        snap.to_string().contains("_at\":1"),
        "the copy has integer times"
    );
    old.put_snapshot("p", snap_seq, serde_json::to_vec(&snap).unwrap())
        .await
        .unwrap();
    drop(old);

    let fresh = open_at(
        &dir.path().join("new.db"),
        Registry::with_builtins(),
        opts.clone(),
    )
    .await;
    let aged = open_at(&dir.path().join("old.db"), Registry::with_builtins(), opts).await;
    let want = fresh.state("p").await.unwrap();
    assert_eq!(*aged.state("p").await.unwrap(), *want);
    assert_eq!(
        aged.view("p").await.unwrap(),
        fresh.view("p").await.unwrap()
    );
    assert_eq!(
        aged.events("p", 0, 1_000).await.unwrap(),
        fresh.events("p", 0, 1_000).await.unwrap()
    );
    // Replayed from the very first event, without the snapshot, too.
    let first = aged.checkpoints("p").await.unwrap();
    let last = first.last().unwrap();
    assert_eq!(
        aged.checkpoint("p", &last.checkpoint_id).await.unwrap(),
        fresh.checkpoint("p", &last.checkpoint_id).await.unwrap()
    );
    // And the plan goes on from there.
    aged.resume("p", "op", None).await.unwrap();
    assert_eq!(settled(&aged, "p").await.status, PlanStatus::Completed);
}

/// A log written by a newer cairn, in a format this build does not know, is refused by name
/// (never misread); the plans beside it still read.
#[tokio::test]
async fn a_log_format_newer_than_this_build_is_refused_by_name() {
    use cairn_store::{CreatePlan, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let definition = plan("steps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n");
    let registered = cairn_core::log::encode(&cairn_core::EventKind::PlanRegistered {
        definition,
        origin: None,
    });
    let row = |seq: u64, kind: &str, data: String, format: u32| NewEvent {
        seq,
        at: 1_000_000,
        actor: "op".into(),
        kind: kind.into(),
        data,
        format,
        checkpoint: None,
    };
    let next = cairn_core::log::FORMAT + 1;
    for (id, format) in [("future", next), ("today", cairn_core::log::FORMAT)] {
        cairn_store::EventLog::create_plan(
            &store,
            CreatePlan {
                plan_id: id.into(),
                created_at: 1_000_000,
                state: "idle".into(),
                events: vec![
                    row(
                        1,
                        registered.kind,
                        registered.data.clone(),
                        cairn_core::log::FORMAT,
                    ),
                    row(2, "checkpoint_created", "{}".into(), format),
                ],
                reviews: Vec::new(),
            },
        )
        .await
        .unwrap();
    }
    drop(store);
    let engine = open_at(&path, Registry::with_builtins(), EngineOptions::default()).await;
    let err = engine.state("future").await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "event of type checkpoint_created was written by a newer cairn (log format {next}); \
             this build reads up to {}",
            cairn_core::log::FORMAT
        )),
        "{err}"
    );
    assert_eq!(engine.state("today").await.unwrap().seq, 2);
}

/// A flood of commands at once: each is answered (done, or refused by the plan's state) or
/// refused with `Overloaded` before it reaches a mailbox, and the engine goes on working.
/// On one thread the flood's tasks all run before the actor does, so the first
/// `max_queued_commands` are admitted and the rest refused, deterministically.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_commands_is_answered_or_refused_and_mailboxes_stay_bounded() {
    const FLOOD: usize = 100_000;
    const LIMIT: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(
        &dir,
        Registry::with_builtins(),
        EngineOptions {
            max_queued_commands: LIMIT,
            ..EngineOptions::default()
        },
    )
    .await;
    for i in 0..10 {
        let id = format!("flood{i}");
        let p = plan(&format!(
            "plan_id: {id}\nsteps:\n  - {{step_id: a, action: x, agent_type: builtin.latch, params: {{name: engine-flood-{i}}}}}\n  - {{step_id: b, action: y, agent_type: builtin.echo}}\n"
        ));
        engine.register(p, "tester").await.unwrap();
        engine.start(&id, "tester", None).await.unwrap();
        within(
            "the step to hold",
            latch::held(&format!("engine-flood-{i}")),
        )
        .await;
    }
    let mut set = tokio::task::JoinSet::new();
    for n in 0..FLOOD {
        let engine = engine.clone();
        set.spawn(async move {
            let id = format!("flood{}", n % 10);
            // Each plan is paused, then resumed, then paused again...
            if (n / 10) % 2 == 0 {
                engine
                    .pause(&id, PauseMode::Boundary, None, "op", None)
                    .await
                    .map(|_| ())
            } else {
                engine.resume(&id, "op", None).await.map(|_| ())
            }
        });
    }
    let (mut done, mut conflict, mut overloaded) = (0, 0, 0);
    within("the flood to be answered", async {
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(()) => done += 1,
                Err(e) if e.refusal_kind() == Some(RefusalKind::Conflict) => conflict += 1,
                Err(EngineError::Overloaded {
                    limit,
                    retry_after_ms,
                }) => {
                    assert_eq!(limit, LIMIT);
                    assert!(retry_after_ms > 0);
                    overloaded += 1;
                }
                Err(e) => panic!("a command of the flood failed otherwise: {e}"),
            }
            // Never more admitted than the limit, whatever the moment.
            let queued = engine.node_stats().commands_queued;
            assert!(queued <= LIMIT as u64, "{queued} commands queued");
        }
    })
    .await;
    assert_eq!(done + conflict + overloaded, FLOOD);
    assert!(done >= 10, "every plan was paused at least once ({done})");
    assert!(
        overloaded >= FLOOD - LIMIT,
        "refused at once: {overloaded} of {FLOOD}"
    );
    let stats = engine.node_stats();
    assert_eq!(stats.overloaded_total, overloaded as u64);
    assert_eq!(stats.commands_queued, 0);
    assert_eq!(stats.inbox_depth, 0);
    // The engine goes on: every plan finishes once its step is let go.
    for i in 0..10 {
        let id = format!("flood{i}");
        latch::release(&format!("engine-flood-{i}"));
        let mut state = settled(&engine, &id).await;
        if state.status == PlanStatus::Paused {
            engine.resume(&id, "op", None).await.unwrap();
            state = settled(&engine, &id).await;
        }
        assert_eq!(state.status, PlanStatus::Completed, "{id}");
    }
}

/// An engine alone with its store starts a plan registered moments ago from the state its
/// registration decided, without reading it back; a plan deleted and registered again starts
/// from the new registration; and an engine that keeps no quiet plan (`idle_unload_ms` 0)
/// keeps no registered one either.
#[tokio::test]
async fn a_plan_started_just_after_its_registration_is_not_read_back() {
    let yaml = |id: &str, agent: &str| {
        format!("plan_id: {id}\nsteps:\n  - {{step_id: s1, action: x, agent_type: {agent}}}\n")
    };
    let dir = tempfile::tempdir().unwrap();
    let e = engine(&dir).await;
    let loads = |e: &Engine| e.node_stats().plan_loads_total;
    e.register(plan(&yaml("fresh", "builtin.echo")), "ann")
        .await
        .unwrap();
    e.start("fresh", "ann", None).await.unwrap();
    assert_eq!(settled(&e, "fresh").await.status, PlanStatus::Completed);
    assert_eq!(loads(&e), 0, "the start read the plan back");

    e.register(plan(&yaml("again", "builtin.echo")), "ann")
        .await
        .unwrap();
    e.delete("again").await.unwrap();
    e.register(plan(&yaml("again", "builtin.fail")), "ann")
        .await
        .unwrap();
    e.start("again", "ann", None).await.unwrap();
    assert_eq!(
        settled(&e, "again").await.status,
        PlanStatus::Failed,
        "ran the deleted plan's definition"
    );
    drop(e);

    let dir = tempfile::tempdir().unwrap();
    let e = open_engine(
        &dir,
        Registry::with_builtins(),
        EngineOptions {
            idle_unload_ms: 0,
            ..EngineOptions::default()
        },
    )
    .await;
    e.register(plan(&yaml("cold", "builtin.echo")), "ann")
        .await
        .unwrap();
    e.start("cold", "ann", None).await.unwrap();
    assert_eq!(settled(&e, "cold").await.status, PlanStatus::Completed);
    assert_eq!(loads(&e), 1);
}

/// A caller waiting for its command's answer (an HTTP handler, a bench's task: a thousand of
/// them when a thousand plans start at once) holds its call's future for the whole wait, so
/// what only a delivery, a fork or a forward to another node needs is boxed for as long as it
/// runs instead of being part of every caller's future.
#[tokio::test]
async fn waiting_callers_hold_small_futures() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let start = engine.start("p", "u", None);
    let start_size = std::mem::size_of_val(&start);
    drop(start);
    let pause = engine.pause("p", PauseMode::Boundary, None, "u", None);
    let pause_size = std::mem::size_of_val(&pause);
    drop(pause);
    // 2,568 and 2,584 bytes with the delivery boxed; a bench task waiting on a start was
    // 5,888 bytes (dhat) without.
    assert!(
        start_size <= 3_000,
        "a start's future is {start_size} bytes"
    );
    assert!(
        pause_size <= 3_000,
        "a pause's future is {pause_size} bytes"
    );
}
