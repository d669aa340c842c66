//! Rollback through the engine: compensations dispatched as attempts of kind `compensation`,
//! `Engine::rollback` (dry run and real), and a restart in the middle of a rollback that runs no
//! compensation twice and loses none.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn_core::attempt::AttemptKind;
use cairn_core::rollback::RollbackStatus;
use cairn_core::{Event, EventKind, PlanStatus};
use cairn_engine::executor::{ExecError, ExecOutput, Executor, Registry, StopSignal, Task};
use cairn_engine::{Engine, EngineOptions};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;
use tokio::sync::mpsc;

use crate::common::{plan, settled, within};

/// Records every task it gets and answers its params.
#[derive(Default)]
struct Recorder {
    tasks: Mutex<Vec<Task>>,
}

#[async_trait]
impl Executor for Recorder {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        self.tasks.lock().unwrap().push(task.clone());
        Ok(ExecOutput {
            output: task.params,
            scores: None,
        })
    }
}

/// Reports each task and never ends it (the process dies with it in flight).
struct Stuck(mpsc::UnboundedSender<Task>);

#[async_trait]
impl Executor for Stuck {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let _ = self.0.send(task);
        std::future::pending().await
    }
}

async fn open_at(path: &Path, registry: Registry) -> Engine {
    let store = SqliteStore::open(path, SqliteOptions::default()).unwrap();
    Engine::open(Arc::new(store), registry, EngineOptions::default())
        .await
        .unwrap()
}

async fn all_events(engine: &Engine, plan_id: &str) -> Vec<Event> {
    engine.events(plan_id, 0, 100_000).await.unwrap()
}

fn count(events: &[Event], kind: &str, step: &str) -> usize {
    events
        .iter()
        .filter(|e| e.kind.type_name() == kind && e.kind.step_id() == Some(step))
        .count()
}

const TRIP: &str = "plan_id: trip
on_failure: rollback
steps:
  - {step_id: flight, action: book, agent_type: builtin.echo, params: {ref: F1}, compensate: {action: cancel, agent_type: undo, params: {ref: '{{ this.output.ref }}'}}}
  - {step_id: hotel, action: book, agent_type: builtin.echo, params: {ref: H1}, compensate: {action: cancel, agent_type: slow, params: {ref: '{{ this.output.ref }}'}}}
  - {step_id: pay, action: pay, agent_type: builtin.fail}
";

#[tokio::test]
async fn a_failing_plan_rolls_back_and_a_restart_mid_rollback_runs_no_compensation_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let undo = Arc::new(Recorder::default());
    let registry = Registry::with_builtins();
    registry.register("slow", Arc::new(Stuck(tx)));
    registry.register("undo", undo.clone());
    let first = open_at(&path, registry).await;
    first.register(plan(TRIP), "op").await.unwrap();
    first.start("trip", "op", None).await.unwrap();
    // hotel started last, so its compensation runs first; the process dies while it runs.
    let task = within("hotel's compensation", seen.recv()).await.unwrap();
    assert_eq!(task.step_id, "hotel");
    assert_eq!(task.kind, AttemptKind::Compensation);
    assert_eq!(task.action, "cancel");
    assert_eq!(task.params, json!({"ref": "H1"}));
    assert_eq!(task.idempotency_key, "trip/hotel/compensate/1");
    let state = first.state("trip").await.unwrap();
    assert_eq!(state.status, PlanStatus::Running);
    assert_eq!(
        state.rollback.as_ref().unwrap().pending,
        ["hotel", "flight"]
    );
    first.shutdown().await;
    drop(first);

    let again = Arc::new(Recorder::default());
    let registry = Registry::with_builtins();
    registry.register("slow", again.clone());
    registry.register("undo", undo.clone());
    let second = open_at(&path, registry).await;
    let done = settled(&second, "trip").await;
    assert_eq!(done.status, PlanStatus::Failed);
    let rollback = done.rollback.clone().unwrap();
    assert_eq!(rollback.status, RollbackStatus::Completed);
    assert_eq!(rollback.done, ["hotel", "flight"]);
    // hotel's compensation was sent again as it was (same attempt, same key); flight's ran once.
    let resent = again.tasks.lock().unwrap().clone();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].attempt, task.attempt);
    assert_eq!(resent[0].idempotency_key, task.idempotency_key);
    assert_eq!(resent[0].params, task.params);
    let ran = undo.tasks.lock().unwrap().clone();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].step_id, "flight");
    assert_eq!(ran[0].params, json!({"ref": "F1"}));
    let events = all_events(&second, "trip").await;
    for step in ["hotel", "flight"] {
        assert_eq!(count(&events, "compensation_started", step), 1, "{step}");
        assert_eq!(count(&events, "compensation_completed", step), 1, "{step}");
    }
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::StepRecovered { step_id, kind: AttemptKind::Compensation, .. } if step_id == "hotel"
    )));
    // Rolled back once: a second rollback is refused, dry run or not.
    assert!(second.rollback("trip", "op", true, None).await.is_err());
    assert!(second.rollback("trip", "op", false, None).await.is_err());
    second.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_plan_is_rolled_back_on_request_after_a_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let undo = Arc::new(Recorder::default());
    let registry = Registry::with_builtins();
    registry.register("undo", undo.clone());
    registry.register("slow", undo.clone());
    let engine = open_at(&dir.path().join("cairn.db"), registry).await;
    let yaml = TRIP.replace("on_failure: rollback\n", "").replace(
        "agent_type: builtin.fail}",
        "agent_type: builtin.latch, params: {name: rollback-pay}}",
    );
    engine.register(plan(&yaml), "op").await.unwrap();
    engine.start("trip", "op", None).await.unwrap();
    within(
        "pay to hold",
        cairn_engine::executor::latch::held("rollback-pay"),
    )
    .await;
    engine.cancel("trip", "op", None).await.unwrap();
    let (state, order) = engine.rollback("trip", "op", true, None).await.unwrap();
    assert_eq!(order, ["hotel", "flight"]);
    assert_eq!(state.status, PlanStatus::Cancelled);
    assert!(
        undo.tasks.lock().unwrap().is_empty(),
        "a dry run runs nothing"
    );
    let (_, order) = engine.rollback("trip", "op", false, None).await.unwrap();
    assert_eq!(order, ["hotel", "flight"]);
    let done = settled(&engine, "trip").await;
    assert_eq!(done.status, PlanStatus::Cancelled);
    assert_eq!(
        done.rollback.as_ref().unwrap().status,
        RollbackStatus::Completed
    );
    let ran: Vec<String> = undo
        .tasks
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.step_id.clone())
        .collect();
    assert_eq!(ran, ["hotel", "flight"]);
    engine.shutdown().await;
}
